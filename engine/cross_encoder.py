"""A cross-encoder (a reranker) on the engine: a sequence-classification checkpoint with one label (BERT's
cross-encoder/ms-marco-*, XLM-RoBERTa's BAAI/bge-reranker-*, any *ForSequenceClassification that
transformers' AutoModelForSequenceClassification loads), run with transformers' own classes: an encoder
has no KV to page, so a request's pairs are one padded batch (or a few) through the model.

A pair is tokenized as its checkpoint's tokenizer pairs texts (`tokenizer(query, document)`: [CLS] q [SEP]
d [SEP] for BERT), and scored as vLLM scores it: the single logit through the activation the checkpoint
names (sentence-transformers' `activation_fn`, or `sbert_ce_default_activation_function`), else a sigmoid.
Lengths as vLLM: a pair longer than the model reads is a 400, unless the request sets
`truncate_prompt_tokens` (-1: the model's length), which cuts the longer text of the pair first
(transformers' `longest_first`). Calls run one at a time on a worker thread of their own (off the event
loop), on `threads` torch threads (1 by default; per thread, so the process's other torch work keeps its own)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.cross_encoder_config import cross_encoder_config
from engine.sampling_params import InvalidRequestError

# Families that count positions from padding_idx + 1 (two of max_position_embeddings are never read).
_OFFSET_POSITIONS = {"roberta", "xlm-roberta", "camembert", "xlm-roberta-xl"}
# Padded tokens a forward pass at most (at least one pair): bounded activations whatever a request's size. On
# a CPU thread a bigger batch is no faster (the matrices of one 100-token pair already fill it) and past ~2k
# tokens slower, its activations out of cache (bench/cross_encoder_rerank.py); a GPU wants many pairs at once.
BATCH_TOKENS = {"cpu": 1024, "cuda": 16384}


@dataclass(frozen=True)
class ScoredPairs:
    scores: list[float]  # each pair's, in the pairs' order
    tokens: int  # the pairs' tokens, summed (vLLM's usage)


class CrossEncoder:
    def __init__(self, model_dir: str | Path, device: str | None = None, threads: int = 1) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        config = cross_encoder_config(model_dir)
        if config is None:
            raise ValueError(f"{model_dir} is not a cross-encoder (a *ForSequenceClassification with one label)")
        self.model_dir = Path(model_dir)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForSequenceClassification.from_pretrained(model_dir).to(self.device).eval()
        self.max_model_len = _max_model_len(config, self.tokenizer.model_max_length)
        self.activation = _activation(config)
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="cross-encoder", initializer=torch.set_num_threads,
                                          initargs=(threads,))

    async def score(self, pairs: list[tuple[str, str]], truncate_prompt_tokens: int | None = None) -> ScoredPairs:
        """Off the event loop; an InvalidRequestError (a 400) for a pair the model cannot read whole."""
        return await asyncio.get_running_loop().run_in_executor(self._worker, self.score_now, pairs,
                                                                truncate_prompt_tokens)

    def score_now(self, pairs: list[tuple[str, str]], truncate_prompt_tokens: int | None = None,
                  batch_tokens: int | None = None) -> ScoredPairs:
        limit = self._truncation(truncate_prompt_tokens)
        encoded = self.tokenizer([q for q, _ in pairs], [d for _, d in pairs], truncation=limit is not None,
                                 max_length=limit, verbose=False)
        lengths = [len(ids) for ids in encoded["input_ids"]]
        for i, length in enumerate(lengths):
            if length > self.max_model_len:
                raise InvalidRequestError(
                    f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                    f"{length} tokens in the input for score (pair {i}). Please reduce the length of the input, "
                    "or set truncate_prompt_tokens.", "documents" if len(pairs) > 1 else None)
        scores = [0.0] * len(pairs)
        budget = batch_tokens or BATCH_TOKENS.get(self.device.type, BATCH_TOKENS["cpu"])
        for chunk in _batches(lengths, budget):
            batch = self.tokenizer.pad({name: [values[i] for i in chunk] for name, values in encoded.items()},
                                       return_tensors="pt")
            with torch.inference_mode():
                logits = self.model(**{k: v.to(self.device) for k, v in batch.items()}).logits[:, 0]
                for i, score in zip(chunk, self.activation(logits.float()).tolist(), strict=True):
                    scores[i] = score
        return ScoredPairs(scores, sum(lengths))

    def _truncation(self, truncate_prompt_tokens: int | None) -> int | None:
        return truncation_limit(truncate_prompt_tokens, self.max_model_len)

    async def start(self) -> None:
        pass  # loaded when built

    async def shutdown(self) -> None:
        self.close()

    def close(self) -> None:
        self._worker.shutdown(wait=False)


def truncation_limit(truncate_prompt_tokens: int | None, max_model_len: int) -> int | None:
    """The tokens a scored input keeps under vLLM's `truncate_prompt_tokens` (-1: the model's length); None: all."""
    if truncate_prompt_tokens is None:
        return None
    if truncate_prompt_tokens == -1:
        return max_model_len
    if truncate_prompt_tokens < 1 or truncate_prompt_tokens > max_model_len:
        raise InvalidRequestError(f"'truncate_prompt_tokens' must be -1 (the model's length) or 1 to "
                                  f"{max_model_len}, the model's maximum context length",
                                  "truncate_prompt_tokens", "invalid_value")
    return truncate_prompt_tokens


def _batches(lengths: list[int], budget: int) -> list[list[int]]:
    """Pair indexes in batches of similar lengths (sorted: little padding), each at most `budget` tokens
    padded to its longest pair, or one pair alone."""
    batches: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        if batches and (len(batches[-1]) + 1) * lengths[i] <= budget:  # sorted: pair i is the batch's longest
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def _max_model_len(config: dict, tokenizer_limit: int) -> int:
    positions = int(config.get("max_position_embeddings", 512))
    if config.get("model_type") in _OFFSET_POSITIONS:
        positions -= int(config.get("pad_token_id", 1)) + 1
    return min(positions, tokenizer_limit) if tokenizer_limit < 10**9 else positions  # a tokenizer with no limit


def _activation(config: dict) -> torch.nn.Module:
    """vLLM's choice: the checkpoint's named activation (torch.nn.modules only: a config names no other
    code), else a sigmoid for the single label."""
    name = (config.get("sentence_transformers") or {}).get("activation_fn") \
        or config.get("sbert_ce_default_activation_function")
    if name is None:
        return torch.nn.Sigmoid()
    module = getattr(torch.nn, name.rsplit(".", 1)[-1], None)
    if not name.startswith("torch.nn.modules.") or not (isinstance(module, type) and issubclass(module, torch.nn.Module)):
        raise ValueError(f"the checkpoint's activation {name!r} is not a torch.nn.modules class")
    return module()
