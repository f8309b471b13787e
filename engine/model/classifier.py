"""A decoder as a classifier (vLLM's sequence-classification models, engine/classifier_config.py): the causal
LM's decoder stack with a `score` linear [num_labels, hidden] in place of lm_head, applied to the final norm of
the last token's hidden state, as transformers' *ForSequenceClassification pools it. The engine runs it as any
model (paged KV, prefix cache, batches without padding); an embedding request (SamplingParams.embed) gets the
raw label logits back (`pool`). A head made from lm_head's rows (vLLM's `classifier_from_token`) is built after
the causal checkpoint loads (`head_from_tokens`)."""

from __future__ import annotations

import torch
from torch import nn

from engine.classifier_config import ClassifierHead
from engine.model.config import ModelConfig
from engine.model.llama import CausalLM
from engine.model.parallel import SINGLE, TPGroup


class SequenceClassifier(CausalLM):
    """`keep_lm_head`: the checkpoint is a causal LM whose head `head_from_tokens` turns into the score rows."""

    def __init__(self, config: ModelConfig, num_labels: int, tp: TPGroup = SINGLE, keep_lm_head: bool = False) -> None:
        super().__init__(config, tp)
        if tp.size > 1:
            raise ValueError("a classifier (a *ForSequenceClassification, or a head from tokens) is served on one rank")
        if not keep_lm_head:
            del self.lm_head  # a classifier's checkpoint holds `score`, never a vocab-sized head
        self.score = nn.Linear(config.hidden_size, num_labels, bias=False)

    def tie_weights(self) -> None:
        if hasattr(self, "lm_head"):
            super().tie_weights()

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """float32 label logits [rows, num_labels]."""
        return self.score(self.model.norm(hidden)).float()

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.compute_logits(hidden)

    @torch.no_grad()
    def head_from_tokens(self, head: ClassifierHead, token_ids: list[int]) -> None:
        """vLLM's conversion: the score rows are lm_head's rows of `token_ids` (two-way: the second's minus the
        first's); lm_head is dropped after."""
        rows = self.lm_head.weight[torch.tensor(token_ids, device=self.lm_head.weight.device)].float()
        weight = (rows[1] - rows[0]).unsqueeze(0) if head.two_way else rows
        self.score.weight.copy_(weight.to(self.score.weight.dtype))
        del self.lm_head


def build_model(config: ModelConfig, head: ClassifierHead | None, tp: TPGroup = SINGLE) -> CausalLM:
    """The model a folder's checkpoint fills: a causal LM, or a classifier (keeping lm_head until
    `head_from_tokens` when its head comes from tokens)."""
    if head is None and config.hybrid is not None:  # a Mamba-2 hybrid (engine/model/hybrid.py)
        from engine.model.hybrid import HybridCausalLM

        return HybridCausalLM(config)
    if head is None and config.llama4 is not None:
        from engine.model.llama4 import Llama4CausalLM

        return Llama4CausalLM(config, tp)
    if head is None:
        return CausalLM(config, tp)
    return SequenceClassifier(config, head.num_labels, tp, keep_lm_head=bool(head.from_tokens))


def token_ids_of(model_dir: str, tokens: tuple[str, ...]) -> list[int]:
    """Each token's id in the folder's vocabulary, as vLLM reads them (`convert_tokens_to_ids`)."""
    from engine.tokenizer import Tokenizer

    tokenizer = Tokenizer(model_dir)
    ids = [tokenizer.token_to_id(token) for token in tokens]
    missing = [token for token, token_id in zip(tokens, ids, strict=True) if token_id is None]
    if missing:
        raise ValueError(f"classifier_from_token names tokens that are not in the vocabulary: {missing}")
    return [token_id for token_id in ids if token_id is not None]
