"""Prompt embeddings as input (vLLM's `prompt_embeds`, behind `--enable-prompt-embeds`): a completion's
`prompt_embeds` is base64 of a `torch.save`d float tensor [n, hidden_size] (or a batch of one, [1, n, hidden])
that stands in for the embeddings of an n-token prompt, as the model's input embedding layer gives them
(Gemma 3's scaled: transformers' `get_input_embeddings()`). Its sequence carries n placeholder token ids
(0, as vLLM's), so it is scheduled, chunked, batched, preempted and recomputed as any prompt, and the runner
splices the rows in where the token embeddings would be (engine/encoder_cache.py's `spliced_embeddings`, as
image features). Each of its blocks is keyed by a hash of its rows' bytes in the prefix cache's chain
(engine/prefix_match.py), never by the placeholders: embeddings that begin with the same rows (a soft prompt, a
shared instruction) share those blocks, and `n` > 1 samples take the first one's prompt blocks.

Decoding trusts nothing: `torch.load(weights_only=True)` under sparse-tensor invariant checks, and every check
(a dense tensor of float16/bfloat16/float32, its shape, at least one row, fewer than the context, finite
values) a 400 naming `prompt_embeds`; the shape is checked before anything is copied, so a tensor of zero
strides cannot claim more memory than the context holds."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import io
from typing import TYPE_CHECKING

import torch

from engine.sampling_params import InvalidRequestError

if TYPE_CHECKING:
    from engine.async_engine import AsyncEngine
    from engine.encoder_cache import Span

PLACEHOLDER_TOKEN_ID = 0  # each embedding row's token id: what penalties and the prefix cache never read
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_INLINE_DECODE_CHARS = 64 << 10  # larger payloads decode on a worker thread, off the event loop
# A completions body with prompt embeddings may hold a float32 tensor filling the context, up to this.
MAX_PROMPT_EMBEDS_BODY_BYTES = 256 << 20
PARAM = "prompt_embeds"


def model_shape(engine: AsyncEngine) -> tuple[int, torch.dtype]:
    """(hidden_size, dtype) of the engine's model; a 400 where prompt embeddings are off or there is no model."""
    if not engine.engine.config.enable_prompt_embeds:
        raise InvalidRequestError("prompt embeddings are disabled: start the engine with --enable-prompt-embeds "
                                  "(litellm_params.enable_prompt_embeds in the gateway) to send 'prompt_embeds'",
                                  PARAM, "unsupported")
    runner = engine.engine.runner
    config = getattr(runner, "full_config", None)
    if config is None:
        raise InvalidRequestError("this engine runs no model (a simulation): it takes no 'prompt_embeds'",
                                  PARAM, "unsupported")
    return config.hidden_size, runner.dtype


def body_limit(engine: AsyncEngine) -> int:
    """The largest completions body the server reads: with prompt embeddings on, one float32 tensor filling the
    context in base64 (plus a MiB of the rest), at least the usual limit and at most MAX_PROMPT_EMBEDS_BODY_BYTES."""
    # Imported here: the runner imports this module, and needs no server module.
    from engine.server.json_body import MAX_BODY_BYTES

    config = getattr(engine.engine.runner, "full_config", None)
    if not engine.engine.config.enable_prompt_embeds or config is None:
        return MAX_BODY_BYTES
    tensor = engine.max_model_len * config.hidden_size * 4
    return min(MAX_PROMPT_EMBEDS_BODY_BYTES, max(MAX_BODY_BYTES, tensor * 4 // 3 + (1 << 20)))


async def decode_all(engine: AsyncEngine, values: list[str], keep: int | None = None) -> list[torch.Tensor]:
    """Each payload decoded and checked for the engine's model (large ones on a worker thread); `keep`: only
    each one's last rows (truncate_prompt_tokens)."""
    hidden, dtype = model_shape(engine)
    max_rows = engine.max_model_len - 1  # at least one token of answer, as a prompt of token ids

    def decode() -> list[torch.Tensor]:
        return [decode_prompt_embeds(v, hidden, dtype, max_rows, f"{PARAM}[{i}]" if len(values) > 1 else PARAM, keep)
                for i, v in enumerate(values)]

    if sum(map(len, values)) <= _INLINE_DECODE_CHARS:
        return decode()
    return await asyncio.to_thread(decode)


def decode_prompt_embeds(payload: str, hidden_size: int, dtype: torch.dtype, max_rows: int,
                         param: str = PARAM, keep: int | None = None) -> torch.Tensor:
    """The tensor [n, hidden_size] (its last `keep` rows) in `dtype`, contiguous on the CPU; an
    InvalidRequestError for anything else."""
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequestError(f"'{param}' is not valid base64", param, "invalid_value") from None
    try:
        with torch.sparse.check_sparse_tensor_invariants():
            tensor = torch.load(io.BytesIO(raw), weights_only=True, map_location="cpu")
    except (torch.OutOfMemoryError, MemoryError):
        raise
    except Exception as exc:  # the bytes are the caller's: whatever torch says of them is a 400
        raise InvalidRequestError(f"'{param}' is not a tensor saved with torch.save: {str(exc)[:200]}", param,
                                  "invalid_value") from None
    if not isinstance(tensor, torch.Tensor) or tensor.layout != torch.strided:
        raise InvalidRequestError(f"'{param}' must hold one dense tensor", param, "invalid_value")
    if tensor.dtype not in _DTYPES:
        raise InvalidRequestError(f"'{param}' must be float16, bfloat16 or float32, not {tensor.dtype}", param,
                                  "invalid_value")
    if tensor.dim() == 3 and tensor.shape[0] == 1:  # a batch of one, as transformers' embedding layer returns
        tensor = tensor[0]
    if tensor.dim() != 2 or tensor.shape[1] != hidden_size:
        raise InvalidRequestError(f"'{param}' must have the shape [num_tokens, {hidden_size}] (the model's hidden "
                                  f"size), not {list(tensor.shape)}", param, "invalid_value")
    if keep is not None:
        tensor = tensor[-keep:]
    if not 1 <= tensor.shape[0] <= max_rows:
        raise InvalidRequestError(f"'{param}' has {tensor.shape[0]} rows; a prompt takes 1 to {max_rows} (this "
                                  "model's context, less one token for the answer)", param,
                                  "context_length_exceeded" if tensor.shape[0] else "invalid_value")
    if not torch.isfinite(tensor).all():
        raise InvalidRequestError(f"'{param}' holds NaN or infinite values", param, "invalid_value")
    return tensor.to(dtype).contiguous()


def content_hash(embeds: torch.Tensor) -> int:
    """63 bits of BLAKE2b over the rows' bytes: stable across processes, as the disk tier's keys must be."""
    digest = hashlib.blake2b(embeds.view(torch.uint8).numpy().tobytes(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def step_rows(spans: list[Span]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(flat rows [R], embeddings [R, hidden]) of the prompt positions these spans compute (a span's first flat
    row, and the positions [start, end) it computes: decoded tokens past the prompt are real tokens)."""
    rows: list[torch.Tensor] = []
    values: list[torch.Tensor] = []
    for seq, row, start, end in spans:
        assert seq.prompt_embeds is not None
        last = min(end, seq.num_prompt_tokens)
        if start < last:
            rows.append(torch.arange(row, row + last - start))
            values.append(seq.prompt_embeds[start:last])
    if not rows:
        return None
    return torch.cat(rows), torch.cat(values)


def with_step_rows(spliced: tuple[torch.Tensor, torch.Tensor] | None, spans: list[Span],
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A step's image rows (`spliced`) and its prompt embeddings' rows together, on `device`."""
    embedded = step_rows(spans) if spans else None
    if embedded is None:
        return spliced
    rows, values = embedded[0].to(device), embedded[1].to(device)
    if spliced is None:
        return rows, values
    # Qwen3-VL's image rows carry DeepStack features after theirs: prompt embeddings add none (zeros)
    values = torch.nn.functional.pad(values, (0, spliced[1].shape[1] - values.shape[1]))
    return torch.cat([spliced[0], rows]), torch.cat([spliced[1], values.to(spliced[1].dtype)])
