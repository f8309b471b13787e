"""A decoder classifier (engine/model/classifier.py) as a scorer of pairs and texts, over an AsyncEngine: each
pair or text is one engine request that computes its prompt and returns its label logits (SamplingParams.embed
on a classifier), so a call's prompts are batched by the scheduler without padding, and a prefix already cached
(a rerank's shared query, Qwen3-Reranker's instruction) is not computed again.

A pair is the query's tokens (with the tokenizer's special tokens) then the document's, or, for Qwen3-Reranker
(`is_original_qwen3_reranker`), its prompt template with the query part first, so the query's tokens are a
prefix every document of a rerank shares. A one-label model's score is sigmoid(logit), as vLLM's. Lengths as
vLLM's for decoders: a prompt longer than the model reads is a 400, unless `truncate_prompt_tokens` keeps its
last n tokens (-1: the model's length)."""

from __future__ import annotations

import asyncio
import math
import uuid
from pathlib import Path

from engine.async_engine import AsyncEngine
from engine.classifier_config import ClassifierHead
from engine.cross_encoder import ScoredPairs, truncation_limit
from engine.sampling_params import InvalidRequestError, SamplingParams

# Qwen3-Reranker's prompt (its model card's, and vLLM's example template).
QWEN3_RERANKER_PREFIX = ('<|im_start|>system\nJudge whether the Document meets the requirements based on the Query '
                         'and the Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n'
                         '<|im_start|>user\n')
QWEN3_RERANKER_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
QWEN3_RERANKER_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
_POOL = SamplingParams(max_tokens=1, temperature=0.0, embed=True)


def qwen3_reranker_parts(query: str, document: str,
                         instruction: str = QWEN3_RERANKER_INSTRUCTION) -> tuple[str, str]:
    """The template's two texts: the query's (shared by a rerank's pairs) and the document's."""
    return (f"{QWEN3_RERANKER_PREFIX}<Instruct>: {instruction}\n<Query>: {query}\n",
            f"<Document>: {document}{QWEN3_RERANKER_SUFFIX}")


class DecoderScorer:
    def __init__(self, engine: AsyncEngine, model_dir: str | Path, head: ClassifierHead) -> None:
        if engine.tokenizer is None:
            raise ValueError("a classifier needs its folder's tokenizer")
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.model_dir = Path(model_dir)
        self.head = head

    @property
    def max_model_len(self) -> int:
        """The longest prompt: the engine keeps a slot for the one token a pooling request still samples."""
        return self.engine.max_model_len - 1

    async def start(self) -> None:
        await self.engine.start()

    async def shutdown(self) -> None:
        await self.engine.shutdown()

    def pair_ids(self, query: str, document: str) -> list[int]:
        if self.head.qwen3_reranker:
            first, second = qwen3_reranker_parts(query, document)
            return self.tokenizer.encode(first) + self.tokenizer.encode(second)
        return self.tokenizer.encode(query, add_special_tokens=True) + self.tokenizer.encode(document)

    def text_ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=True)

    async def score(self, pairs: list[tuple[str, str]], truncate_prompt_tokens: int | None = None) -> ScoredPairs:
        """sigmoid(logit) of each pair (a one-label model's); an InvalidRequestError (a 400) otherwise."""
        if self.head.num_labels != 1:
            raise InvalidRequestError(f"this model classifies into {self.head.num_labels} labels: it serves "
                                      "/classify; score and rerank need a one-label model", "model",
                                      "model_not_supported")
        prompts = self.truncated([self.pair_ids(q, d) for q, d in pairs], truncate_prompt_tokens)
        logits = await self.logits(prompts, "documents" if len(pairs) > 1 else None)
        return ScoredPairs([sigmoid(row[0]) for row in logits], sum(map(len, prompts)))

    def truncated(self, prompts: list[list[int]], truncate_prompt_tokens: int | None) -> list[list[int]]:
        """Each prompt's last `truncate_prompt_tokens` tokens (vLLM's for decoders); None: whole."""
        limit = self._truncation(truncate_prompt_tokens)
        return prompts if limit is None else [ids[-limit:] for ids in prompts]

    async def logits(self, prompts: list[list[int]], param: str | None = None) -> list[list[float]]:
        """Each prompt's label logits, in order; an InvalidRequestError naming `param` for one the engine refuses."""
        for i, ids in enumerate(prompts):
            try:
                if not ids:
                    raise InvalidRequestError("an input must not be empty")
                self.engine.validate_request(ids, None, _POOL)
            except InvalidRequestError as exc:
                where = f" (input {i})" if len(prompts) > 1 else ""
                raise InvalidRequestError(f"{exc}{where}. Shorten it, or set truncate_prompt_tokens.",
                                          param) from None
        call = uuid.uuid4().hex
        return list(await asyncio.gather(*(self._one(ids, f"cls-{call}-{i}") for i, ids in enumerate(prompts))))

    async def _one(self, prompt_ids: list[int], request_id: str) -> list[float]:
        last = None
        async for out in self.engine.generate(prompt_ids, _POOL, request_id=request_id):
            last = out
        assert last is not None and last.embedding is not None, "a pooling request ends with its logits"
        return last.embedding

    def _truncation(self, truncate_prompt_tokens: int | None) -> int | None:
        return truncation_limit(truncate_prompt_tokens, self.max_model_len)


def sigmoid(x: float) -> float:
    """Overflow-free for any logit."""
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))
