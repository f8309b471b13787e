"""Passages for vector stores (gateway/passages.py, gateway/vector_search.py): chunks cut at token
boundaries with the asked overlap, the int8 ONNX encoder agreeing with all-MiniLM-L6-v2 in torch, PDF and
UTF-16 text read and binary refused, and the hybrid ranking's two halves."""

from __future__ import annotations

import numpy as np
import pytest

from engine.server.errors import APIError
from gateway.passages import WINDOW_TOKENS, Chunking, PassageEncoder, chunking_of, decode_text
from gateway.vector_search import Ranking, StoreIndex, filter_of, ranking_of
from storage.vector_stores import StoredChunks

TEXT = " ".join(f"Sentence number {i} says something about topic {i % 7}." for i in range(300))


@pytest.fixture(scope="module")
def encoder() -> PassageEncoder:
    return PassageEncoder()


def test_chunks_are_token_windows_with_the_asked_overlap(encoder: PassageEncoder) -> None:
    from routers.tokens import count_tokens

    chunking = Chunking(max_chunk_size_tokens=120, chunk_overlap_tokens=40)
    chunks = encoder.chunks(TEXT, chunking)
    sizes = count_tokens(chunks)
    assert len(chunks) > 10 and max(sizes) <= 120 and min(sizes[:-1]) >= 110  # cut at token bounds, +- merges
    for chunk in chunks:  # cut where words start: no chunk opens or ends inside a word
        at, end = TEXT.index(chunk), TEXT.index(chunk) + len(chunk)
        assert not (TEXT[at - 1:at].isalnum() and chunk[0].isalnum())
        assert not (TEXT[end:end + 1].isalnum() and chunk[-1].isalnum())
    for before, after in zip(chunks, chunks[1:], strict=False):
        assert before in TEXT and after in TEXT
        # The next chunk starts inside this one: the longest end of this one that begins the next.
        shared = max(k for k in range(1, len(before)) if after.startswith(before[-k:].lstrip()))
        assert count_tokens([before[-shared:]])[0] in range(35, 46)  # about 40 tokens repeat
    assert chunks[0].startswith("Sentence number 0") and chunks[-1].endswith("topic 5.")
    # Words of many WordPiece tokens: still never cut inside one.
    rare = " ".join(f"pseudohypoparathyroidism counterrevolutionaries{i} floccinaucinihilipilification"
                    for i in range(60))
    for chunk in encoder.chunks(rare, chunking):
        at, end = rare.index(chunk), rare.index(chunk) + len(chunk)
        assert rare[at - 1:at] in ("", " ") and rare[end:end + 1] in ("", " "), chunk[:40]
    assert encoder.chunks("   \n  ", Chunking()) == [] and encoder.chunks("one", Chunking()) == ["one"]


def test_the_int8_encoder_agrees_with_minilm_in_torch(encoder: PassageEncoder) -> None:
    from routers.features.minilm import encode

    texts = ["How do tides work?", "Sourdough needs a starter and a long rise.", TEXT[:900]]
    ours, reference = encoder.encode(texts), encode(texts)
    assert ours.shape == (3, 384) and np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    assert (ours * reference).sum(axis=1).min() > 0.98
    # A text past one window is read whole: its end moves its embedding.
    long = TEXT[:4000]
    assert len(encoder._tokenizer.encode(long).ids) > 2 * WINDOW_TOKENS
    changed = encoder.encode([long, long + " Volcanoes erupt molten lava and ash."])
    assert float(changed[0] @ changed[1]) < 0.999


def _pdf(text: str) -> bytes:
    stream = f"BT /F1 18 Tf 30 70 Td ({text}) Tj ET".encode()
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 400 144] /Contents 4 0 R "
               b"/Resources << /Font << /F1 5 0 R >> >> >>",
               b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream),
               b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Root 1 0 R /Size %d >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def test_files_are_read_as_text() -> None:
    assert "Hello from a PDF" in decode_text(_pdf("Hello from a PDF"), "doc.pdf")
    assert decode_text("naïve café".encode("utf-16"), "u16.txt") == "naïve café"
    assert decode_text("\ufeffbom".encode(), "bom.txt") == "bom"
    for content, why in ((b"\x89PNG\r\n\x1a\n\xff\xfe\x00", "neither text"), (b"a\x00b", "binary"),
                         (b"%PDF-1.4 truncated", "PDF")):
        with pytest.raises(ValueError, match=why):
            decode_text(content, "x.bin")


def test_chunking_and_ranking_options_are_checked() -> None:
    assert chunking_of(None) == chunking_of({"type": "auto"}) == Chunking()
    assert chunking_of({"type": "static", "static": {"max_chunk_size_tokens": 800, "chunk_overlap_tokens": 400}}) \
        == Chunking(800, 400)
    for bad in ({"type": "static"}, {"type": "static", "static": {"max_chunk_size_tokens": 99, "chunk_overlap_tokens": 0}},
                {"type": "static", "static": {"max_chunk_size_tokens": 200, "chunk_overlap_tokens": 101}}, {"type": "x"}):
        with pytest.raises(APIError):
            chunking_of(bad)
    assert ranking_of({"ranker": "auto", "hybrid_search": {"embedding_weight": 2, "text_weight": 1}}) == Ranking(2, 1)
    for bad in ({"ranker": "best"}, {"score_threshold": 2}, {"hybrid_search": {"embedding_weight": -1, "text_weight": 1}},
                {"other": 1}):
        with pytest.raises(APIError):
            ranking_of(bad)
    only_docs = filter_of({"type": "in", "key": "team", "value": ["docs", "web"]})
    assert only_docs is not None and only_docs({"team": "web"}) and not only_docs({"team": "ops"}) and not only_docs({})


def test_hybrid_scores_mix_meaning_and_keywords(encoder: PassageEncoder) -> None:
    texts = ["The cat sat on the mat.", "Felines enjoy resting on rugs.", "Quarterly revenue grew by nine percent."]
    chunks = StoredChunks(1, ["f1", "f2", "f3"], [0, 0, 0], texts, encoder.encode(texts))
    index = StoreIndex.build(chunks)
    query = "cat"
    vector = encoder.encode([query])[0]
    keyword = index.scores(vector, query, Ranking(0, 1))
    assert keyword[0] == pytest.approx(1.0) and keyword[1] == keyword[2] == 0  # only the chunk with the word
    semantic = index.scores(vector, query, Ranking(1, 0))
    assert semantic[1] > semantic[2]  # "felines" means cats; revenue does not
    mixed = index.scores(vector, query, Ranking(0.5, 0.5))
    assert np.allclose(mixed, (keyword + semantic) / 2, atol=1e-6)
    assert StoreIndex.build(StoredChunks(0, [], [], [], np.zeros((0, 384), np.float32))).scores(
        vector, query, Ranking()).shape == (0,)


def test_an_index_brought_up_to_date_ranks_as_one_built_whole(encoder: PassageEncoder) -> None:
    """A store's index follows its files without reading the others again: a file removed, one added
    again (a new ingestion), one new, and the result ranks exactly as an index built from scratch."""
    from datetime import UTC, datetime, timedelta

    texts = {"a": ["Tides follow the Moon.", "Spring tides at full moon."], "b": ["Bread needs flour and water."],
             "c": ["Rockets reach orbit sideways."], "d": ["Cats sleep most of the day."]}

    def stored(files: list[str], version: int) -> StoredChunks:
        if version == 2:  # c ingested again: another text (a file replaced under the same id)
            texts["c"] = ["Rockets reach orbit by going sideways fast enough to keep missing the Earth."]
        rows = [(f, i, t) for f in sorted(files) for i, t in enumerate(texts[f])]
        return StoredChunks(version, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows],
                            encoder.encode([r[2] for r in rows]))

    t0 = datetime.now(UTC)
    first = {"a": t0, "b": t0, "c": t0}
    empty = StoreIndex.assemble(0, {}, encoder.dim)
    assert empty.missing(first) == ["a", "b", "c"]
    old = empty.updated(1, first, stored(["a", "b", "c"], 1))  # as the gateway makes a store's first index
    assert old.missing(first) == [] and old.chunks.version == 1
    now = {"a": t0, "c": t0 + timedelta(seconds=5), "d": t0}  # b removed, c added again, d new
    assert old.missing(now) == ["c", "d"]
    grown = old.updated(2, now, stored(["c", "d"], 2))
    whole = StoreIndex.build(stored(["a", "c", "d"], 2))
    assert grown.chunks.file_ids == whole.chunks.file_ids == ["a", "a", "c", "d"] and grown.chunks.version == 2
    assert "missing the Earth" in grown.chunks.texts[2]
    for query in ("moon tides", "orbit", "cats"):
        vector = encoder.encode([query])[0]
        assert np.allclose(grown.scores(vector, query, Ranking()), whole.scores(vector, query, Ranking()), atol=1e-6)


def test_citations_mark_each_mention_of_a_searched_file() -> None:
    from gateway.file_search import citations

    files = [("f1", "s.md"), ("f2", "notes.md")]
    found = citations("See notes.md and s.md, then notes.md again.", files)
    assert [(a["file_id"], a["index"]) for a in found] == [("f2", 12), ("f1", 21), ("f2", 36)]  # no s.md in notes.md
    assert citations("nothing cited", files) == [] and citations("s.md", []) == []
