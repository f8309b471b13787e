"""Searching a vector store: hybrid ranking of its chunks, and attribute filters on its files.

A chunk's score is a weighted mean of two relevances in [0, 1]: semantic, the cosine of its embedding
with the query's (negative cosines as 0), and keyword, its BM25 score for the query's words divided by
the best chunk's (k1 1.2, b 0.75; words are lower-cased \\w+ runs, hashed). `ranking_options.hybrid_search`
sets the weights (OpenAI's `embedding_weight` and `text_weight`); `score_threshold` drops chunks below
it, and a chunk scoring 0 (nothing of the query, by either measure) is never a hit. A store's index
(embedding matrix, term weights) is kept in memory and brought to each new version of the store's
chunks by reading only the files it lacks (a store filling up is not read whole again at each file),
so a search that finds it current reads the store's version and nothing else."""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.server.errors import bad_request
from storage.vector_stores import StoredChunks

EMBEDDING_WEIGHT, TEXT_WEIGHT = 0.7, 0.3  # the default mix (bench/vector_search.py measured the choice)
BM25_K1, BM25_B = 1.2, 0.75
MAX_RESULTS = 50
INDEXES_KEPT = 32  # stores whose index a replica keeps in memory (least recently searched go first)
COMPARISONS = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "nin")
HASHED_TERMS = 1 << 20  # words are hashed into this many columns: no vocabulary to grow as files come

if TYPE_CHECKING:
    from scipy import sparse
    from sklearn.feature_extraction.text import HashingVectorizer


@functools.cache
def _hasher() -> HashingVectorizer:
    """Built on first use: scikit-learn and SciPy take over a second to import, and a gateway whose
    vector stores are never searched should not start slower for them."""
    from sklearn.feature_extraction.text import HashingVectorizer

    return HashingVectorizer(n_features=HASHED_TERMS, alternate_sign=False, norm=None, lowercase=True,
                             token_pattern=r"(?u)\w+", dtype=np.float32)


@dataclass(frozen=True)
class Ranking:
    embedding_weight: float = EMBEDDING_WEIGHT
    text_weight: float = TEXT_WEIGHT
    score_threshold: float = 0.0


def ranking_of(value: Any, param: str = "ranking_options") -> Ranking:
    """`{"ranker": "auto" | "default-2024-11-15" | "none", "score_threshold": 0-1, "hybrid_search":
    {"embedding_weight", "text_weight"}}`, every key optional; a 400 naming the field otherwise. The
    rankers are one ranking here (no model reranks the hybrid scores)."""
    if value is None:
        return Ranking()
    if not isinstance(value, dict) or set(value) - {"ranker", "score_threshold", "hybrid_search"}:
        raise bad_request(f"'{param}' may have ranker, score_threshold and hybrid_search", param, "invalid_value")
    if value.get("ranker") not in (None, "auto", "default-2024-11-15", "none"):
        raise bad_request(f"'{param}.ranker' must be auto, default-2024-11-15 or none", f"{param}.ranker",
                          "invalid_value")
    threshold = value.get("score_threshold", 0.0)
    if not _number(threshold) or not 0 <= threshold <= 1:
        raise bad_request(f"'{param}.score_threshold' must be a number from 0 to 1", f"{param}.score_threshold",
                          "invalid_value")
    hybrid = value.get("hybrid_search")
    if hybrid is None:
        return Ranking(score_threshold=float(threshold))
    weights = (hybrid.get("embedding_weight"), hybrid.get("text_weight")) if isinstance(hybrid, dict) else (None,)
    if len(weights) != 2 or not all(_number(w) and w >= 0 for w in weights) or not sum(weights):  # type: ignore[misc]
        raise bad_request(f"'{param}.hybrid_search' must have embedding_weight and text_weight, non-negative and "
                          "not both 0", f"{param}.hybrid_search", "invalid_value")
    return Ranking(float(weights[0]), float(weights[1]), float(threshold))  # type: ignore[arg-type]


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def max_results_of(value: Any, param: str = "max_num_results", default: int = 10) -> int:
    if value is None:
        return default
    if type(value) is not int or not 1 <= value <= MAX_RESULTS:
        raise bad_request(f"'{param}' must be an integer from 1 to {MAX_RESULTS}", param, "invalid_value")
    return value


Filter = Callable[[dict[str, Any]], bool]


def filter_of(value: Any, param: str = "filters") -> Filter | None:
    """A comparison (`{"type": eq|ne|gt|gte|lt|lte|in|nin, "key", "value"}`) or a compound (`{"type": and|or,
    "filters": [...]}`) on a file's attributes, as a predicate; None for no filter; a 400 otherwise."""
    if value is None:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind in ("and", "or") and isinstance(value.get("filters"), list) and value["filters"]:
        parts = [filter_of(part, f"{param}.filters[{i}]") for i, part in enumerate(value["filters"])]
        combine = all if kind == "and" else any
        return lambda attributes: combine(part(attributes) for part in parts if part is not None)
    if kind not in COMPARISONS or not isinstance(value.get("key"), str) or "value" not in value:
        raise bad_request(f"'{param}' must be a comparison ({', '.join(COMPARISONS)}) with a key and a value, or "
                          "an and/or of filters", param, "invalid_value")
    key, target = value["key"], value["value"]
    if kind in ("in", "nin"):
        if not isinstance(target, list):
            raise bad_request(f"'{param}.value' must be a list for {kind}", f"{param}.value", "invalid_value")
        return lambda attributes: (attributes.get(key) in target) == (kind == "in")

    def compare(attributes: dict[str, Any]) -> bool:
        have = attributes.get(key)
        if kind == "eq":
            return bool(have == target)
        if kind == "ne":
            return bool(have != target)
        if have is None or _number(have) != _number(target):  # an order only within numbers, or within strings
            return False
        try:
            return {"gt": have > target, "gte": have >= target, "lt": have < target, "lte": have <= target}[kind]
        except TypeError:
            return False

    return compare


@dataclass(frozen=True)
class Segment:
    """One file's chunks in an index: kept across versions while the file stays (same `added_at`)."""

    added_at: datetime | None
    positions: list[int]
    texts: list[str]
    embeddings: np.ndarray  # [chunks, dim]
    counts: sparse.csr_matrix  # [chunks, HASHED_TERMS] word counts


def segments_of(chunks: StoredChunks, added: Mapping[str, datetime] | None = None) -> dict[str, Segment]:
    """`chunks` (ordered by file) as one segment per file; its words counted once, here."""
    counts = _hasher().transform(chunks.texts).tocsr() if chunks.texts else None
    segments, start = {}, 0
    while start < len(chunks.file_ids):
        file_id = chunks.file_ids[start]
        end = start
        while end < len(chunks.file_ids) and chunks.file_ids[end] == file_id:
            end += 1
        assert counts is not None
        segments[file_id] = Segment((added or {}).get(file_id), chunks.positions[start:end], chunks.texts[start:end],
                                    chunks.embeddings[start:end], counts[start:end])
        start = end
    return segments


@dataclass
class StoreIndex:
    """One store's chunks at one version, ready to rank: per-file segments, and their concatenation
    with its BM25 term weights (which depend on every chunk: document frequencies, mean length)."""

    chunks: StoredChunks
    segments: dict[str, Segment]
    term_weights: sparse.csc_matrix | None  # [chunks, HASHED_TERMS]; None: no words in the store

    @classmethod
    def build(cls, chunks: StoredChunks) -> StoreIndex:
        return cls.assemble(chunks.version, segments_of(chunks), chunks.embeddings.shape[1])

    @classmethod
    def assemble(cls, version: int, segments: Mapping[str, Segment], dim: int) -> StoreIndex:
        order = sorted(segments)
        parts = [segments[file_id] for file_id in order]
        chunks = StoredChunks(
            version, [f for f, part in zip(order, parts, strict=True) for _ in part.texts],
            [p for part in parts for p in part.positions], [t for part in parts for t in part.texts],
            np.concatenate([part.embeddings for part in parts]) if parts else np.zeros((0, dim), np.float32))
        if not parts or not sum(part.counts.nnz for part in parts):
            return cls(chunks, dict(segments), None)
        from scipy import sparse  # imported with the hasher that made the counts

        counts = sparse.vstack([part.counts for part in parts], format="csr", dtype=np.float32)
        lengths = np.asarray(counts.sum(axis=1)).ravel()
        documents = np.bincount(counts.indices, minlength=HASHED_TERMS)  # chunks each term is in
        idf = np.log1p((len(lengths) - documents + 0.5) / (documents + 0.5)).astype(np.float32)
        norm = BM25_K1 * (1 - BM25_B + BM25_B * lengths / max(lengths.mean(), 1e-9))
        rows = np.repeat(np.arange(counts.shape[0]), np.diff(counts.indptr))
        tf = counts.data
        weights = sparse.csr_matrix(((tf * (BM25_K1 + 1) / (tf + norm[rows]) * idf[counts.indices]).astype(np.float32),
                                     counts.indices, counts.indptr), shape=counts.shape)
        return cls(chunks, dict(segments), weights.tocsc())

    def missing(self, completed: Mapping[str, datetime]) -> list[str]:
        """The completed files this index lacks, or holds from an earlier time they were added."""
        return sorted(f for f, at in completed.items() if f not in self.segments or self.segments[f].added_at != at)

    def updated(self, version: int, completed: Mapping[str, datetime], fresh: StoredChunks) -> StoreIndex:
        """This index at `version`: files no longer completed dropped, `fresh` (the missing files'
        chunks) added; the other files' chunks, embeddings and word counts are not read again."""
        kept = {f: seg for f, seg in self.segments.items() if f in completed}  # fresh replaces re-added ones
        kept.update(segments_of(fresh, completed))
        return StoreIndex.assemble(version, kept, self.chunks.embeddings.shape[1])

    def scores(self, query_vector: np.ndarray, query: str, ranking: Ranking) -> np.ndarray:
        if not self.chunks.texts:
            return np.zeros(0, np.float32)
        semantic = np.clip(self.chunks.embeddings @ query_vector, 0.0, 1.0)
        keyword = np.zeros_like(semantic)
        if self.term_weights is not None and ranking.text_weight:
            terms = np.unique(_hasher().transform([query]).indices)
            if len(terms):
                keyword = np.asarray(self.term_weights[:, terms].sum(axis=1)).ravel()
                keyword = keyword / max(float(keyword.max()), 1e-9)
        total = ranking.embedding_weight + ranking.text_weight
        return ((ranking.embedding_weight * semantic + ranking.text_weight * keyword) / total).astype(np.float32)


class SearchIndexes:
    """The indexes this replica keeps, by store id (least recently searched dropped first)."""

    def __init__(self, kept: int = INDEXES_KEPT) -> None:
        self.kept = kept
        self._indexes: OrderedDict[str, StoreIndex] = OrderedDict()

    def get(self, store_id: str) -> StoreIndex | None:
        index = self._indexes.get(store_id)
        if index is not None:
            self._indexes.move_to_end(store_id)
        return index

    def keep(self, store_id: str, index: StoreIndex) -> None:
        self._indexes[store_id] = index
        self._indexes.move_to_end(store_id)
        while len(self._indexes) > self.kept:
            self._indexes.popitem(last=False)

    def forget(self, store_id: str) -> None:
        self._indexes.pop(store_id, None)


def _best_first(scores: np.ndarray, limit: int) -> Iterator[int]:
    """Chunk indexes by falling score: the best few found without sorting them all (argpartition), the
    rest sorted only if filters turned those down."""
    few = min(len(scores), 4 * limit)
    top = np.argpartition(-scores, few - 1)[:few] if 0 < few < len(scores) else np.arange(len(scores))
    top = top[np.argsort(-scores[top], kind="stable")]
    yield from top.tolist()
    if few < len(scores):
        rest = np.setdiff1d(np.arange(len(scores)), top, assume_unique=True)
        yield from rest[np.argsort(-scores[rest], kind="stable")].tolist()


@dataclass(frozen=True)
class Hit:
    store_id: str
    file_id: str
    position: int
    score: float
    text: str


def top_hits(scored: Sequence[tuple[str, StoreIndex, np.ndarray]], allowed: Callable[[str, str], bool],
             limit: int, threshold: float) -> list[Hit]:
    """The best `limit` chunks over several stores' scores, those of files `allowed(store, file)` only."""
    hits = []
    for store_id, index, scores in scored:
        taken = 0
        for i in _best_first(scores, limit):
            score = float(scores[i])
            if score < threshold or score <= 0.0 or taken == limit:  # a chunk with nothing of the query: no hit
                break
            file_id = index.chunks.file_ids[i]
            if allowed(store_id, file_id):
                hits.append(Hit(store_id, file_id, index.chunks.positions[i], score, index.chunks.texts[i]))
                taken += 1
    hits.sort(key=lambda hit: -hit.score)
    return hits[:limit]
