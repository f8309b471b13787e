"""IncrementalDetokenizer: UTF-8-safe deltas and stop strings (OpenAI truncation, held-back prefixes),
with a byte-per-token tokenizer for exact control and with the tiny model's BPE tokenizer."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.detokenizer import IncrementalDetokenizer
from engine.tokenizer import Tokenizer


class ByteTokenizer:
    """One token per UTF-8 byte: every multi-byte character is split across tokens."""

    def encode(self, text: str) -> list[int]:
        return list(text.encode())

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        return bytes(token_ids).decode("utf-8", errors="replace")


def feed(det: IncrementalDetokenizer, token_ids: list[int]) -> list[str]:
    deltas = []
    for token_id in token_ids:
        deltas.append(det.add([token_id]).text)
        if det.stopped:
            break
    else:
        deltas.append(det.flush())
    return deltas


def test_multibyte_characters_are_never_split() -> None:
    tok = ByteTokenizer()
    text = "a€b😀c日本"
    det = IncrementalDetokenizer(tok)
    deltas = feed(det, tok.encode(text))
    assert "".join(deltas) == det.text == text
    assert all("\ufffd" not in d for d in deltas)
    assert deltas[:6] == ["a", "", "", "€", "b", ""]  # "€" is three bytes: two empty steps, then the char


def test_incomplete_character_at_the_end_is_flushed_as_replacement() -> None:
    det = IncrementalDetokenizer(ByteTokenizer())
    assert det.add(list(b"ok")).text == "ok"
    assert det.add([0xE2, 0x82]).text == ""
    assert det.flush() == "\ufffd"


def test_stop_string_across_tokens_is_cut_and_reported() -> None:
    tok = ByteTokenizer()
    det = IncrementalDetokenizer(tok, stop=["STOP"])
    deltas = feed(det, tok.encode("go STOP and more"))
    assert deltas == ["g", "o", " ", "", "", "", ""]
    assert det.stop == "STOP" and det.text == "go "
    assert det.add(tok.encode("more")).text == "" and det.flush() == ""


def test_false_start_of_a_stop_string_is_released_once_disambiguated() -> None:
    tok = ByteTokenizer()
    det = IncrementalDetokenizer(tok, stop=["STOP"])
    deltas = feed(det, tok.encode("STOAST"))
    # "STO" is held; "A" rules it out; the final "ST" is held until flush releases it.
    assert deltas == ["", "", "", "STOA", "", "", "ST"]
    assert det.stop is None and det.text == "STOAST"


def test_earliest_completed_stop_wins_and_stop_at_start_gives_empty_text() -> None:
    tok = ByteTokenizer()
    det = IncrementalDetokenizer(tok, stop=["cd", "bcdef"])
    feed(det, tok.encode("abcdefg"))
    assert (det.stop, det.text) == ("cd", "ab")
    det = IncrementalDetokenizer(tok, stop=["\n\n"])
    feed(det, tok.encode("\n\nrest"))
    assert (det.stop, det.text) == ("\n\n", "")


def test_multi_token_step_containing_a_stop() -> None:
    tok = ByteTokenizer()
    det = IncrementalDetokenizer(tok, stop=["</s>", "é!"])
    delta = det.add(tok.encode("hello é! world </s>"))
    assert (delta.text, delta.stop) == ("hello ", "é!")


def test_under_min_tokens_a_stop_string_is_kept_but_one_completed_after_it_ends_the_text() -> None:
    """The first 6 bytes are under min_tokens: "END" inside them is text; "EN" at their end is held, and
    the "D" that completes it once stops are armed ends the output there (as vLLM's look-back does)."""
    tok = ByteTokenizer()
    det = IncrementalDetokenizer(tok, stop=["END"])
    deltas = [det.add([token_id], check_stop=i >= 6).text for i, token_id in enumerate(tok.encode("ENDaEND!"))]
    assert deltas == ["", "", "END", "a", "", "", ""] + [""] and det.stop == "END" and det.text == "ENDa"
    det = IncrementalDetokenizer(tok, stop=["END"])
    deltas = [det.add([token_id], check_stop=i >= 4).text for i, token_id in enumerate(tok.encode("xENDy"))]
    assert det.stop is None and "".join(deltas) + det.flush() == "xENDy"  # all of "END" came under min_tokens


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(alphabet="abé€😀\n", max_size=30),
    stops=st.lists(st.text(alphabet="abé€😀\n", min_size=1, max_size=3), max_size=3),
)
def test_streaming_equals_truncating_the_whole_text(text: str, stops: list[str]) -> None:
    tok = ByteTokenizer()
    det = IncrementalDetokenizer(tok, stop=stops)
    deltas = feed(det, tok.encode(text))
    # Expected: the first stop to be completed while reading left to right (the longest if several end
    # at the same character), output cut just before it.
    hits = [(i + len(s), -len(s), i, s) for s in stops for i in range(len(text)) if text.startswith(s, i)]
    if hits:
        _, _, start, stop = min(hits)
        assert (det.stop, det.text) == (stop, text[:start])
    else:
        assert (det.stop, det.text) == (None, text)
    assert "".join(deltas) == det.text
    assert all("\ufffd" not in d for d in deltas)


def test_with_the_tiny_bpe_tokenizer(tiny_model_dir: Path) -> None:
    tok = Tokenizer(tiny_model_dir)
    text = "The value 🙂 is returned. Otherwise raise an error."
    ids = tok.encode(text) + [tok.eos_token_ids[0]]
    assert any(tok.decode([i]) == "\ufffd" for i in ids)  # the emoji really is split across tokens
    det = IncrementalDetokenizer(tok, prompt_token_ids=tok.encode("Question: "))
    deltas = feed(det, ids)
    assert "".join(deltas) == text  # the special eos token is skipped
    assert all("\ufffd" not in d for d in deltas)

    det = IncrementalDetokenizer(tok, stop=[". Other"])
    feed(det, ids)
    assert (det.stop, det.text) == (". Other", "The value 🙂 is returned")
