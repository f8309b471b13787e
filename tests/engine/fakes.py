"""A model runner that only counts: lets scheduler and engine tests run without a model."""

from __future__ import annotations

from engine.batch import ScheduledBatch


class CountingRunner:
    """Samples token = (position * 7 + 3) % vocab, never EOS unless asked; records every batch."""

    def __init__(self, vocab_size: int = 1000, eos_token_ids: tuple[int, ...] = (), eos_at: int | None = None):
        self.vocab_size = vocab_size
        self.eos_token_ids = eos_token_ids
        self.eos_at = eos_at  # emit the first EOS id at this output position
        self.batches: list[list[tuple[str, int, int]]] = []

    def execute(self, batch: ScheduledBatch) -> list[int]:
        self.batches.append([(s.request_id, s.num_computed_tokens, n)
                             for s, n in zip(batch.seqs, batch.num_new_tokens, strict=True)])
        out = []
        for i in batch.sampling_indices:
            seq = batch.seqs[i]
            if self.eos_at is not None and seq.num_output_tokens == self.eos_at:
                out.append(self.eos_token_ids[0])
            else:
                out.append((seq.num_tokens * 7 + 3) % self.vocab_size)
        return out


class ScriptedRunner(CountingRunner):
    """Answers every sequence with the same token ids (`script`), then its first EOS id."""

    def __init__(self, script: list[int], eos_token_id: int, vocab_size: int) -> None:
        super().__init__(vocab_size=vocab_size, eos_token_ids=(eos_token_id,))
        self.script = script
        # Passes for a runner with logits, so the engine holds answers to grammars: the script is then
        # checked token by token against them (the masks themselves are the torch runner's).
        self.step_logprobs: dict = {}

    def execute(self, batch: ScheduledBatch) -> list[int]:
        super().execute(batch)  # records the batch
        outputs = [batch.seqs[i].num_output_tokens for i in batch.sampling_indices]
        return [self.script[k] if k < len(self.script) else self.eos_token_ids[0] for k in outputs]
