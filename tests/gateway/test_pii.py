"""Finding personal data and secrets (gateway/pii.py), masking them and putting them back, whole and in a
stream cut anywhere (gateway/guardrails.py)."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.guardrails import StreamRestorer, edit_request, restore_answer, restored
from gateway.pii import Masker, find, luhn_valid

TEXT = ("Mail jane.doe@example.com or call (415) 555-0132 / +44 20 7946 0958; card 4111 1111 1111 1111, "
        "SSN 123-45-6789, host 10.0.0.254, key sk-proj-abcdefghijklmnopqrstuvwxyz123456 and AKIAIOSFODNN7EXAMPLE.")


def kinds(text: str) -> list[tuple[str, str]]:
    return [(kind, text[start:end]) for start, end, kind in find(text)]


def test_each_kind_is_found_with_its_checks() -> None:
    assert kinds(TEXT) == [
        ("email", "jane.doe@example.com"), ("phone", "(415) 555-0132"), ("phone", "+44 20 7946 0958"),
        ("credit_card", "4111 1111 1111 1111"), ("ssn", "123-45-6789"), ("ip_address", "10.0.0.254"),
        ("secret", "sk-proj-abcdefghijklmnopqrstuvwxyz123456"), ("secret", "AKIAIOSFODNN7EXAMPLE")]
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    # near misses: a card number failing Luhn, impossible SSN areas, an octet past 255, a date, a version
    assert kinds("4111 1111 1111 1112, 000-12-3456, 666-12-3456, 300.1.2.3, 2024-06-01, v1.2.3") == []
    assert kinds("Order 12345 shipped on 2024-06-01 at 10:30.") == []


def test_masking_numbers_values_and_restores_them() -> None:
    masker = Masker()
    masked = masker.mask("write to a@x.io, then b@y.io, then a@x.io again")
    assert masked == "write to [EMAIL_1], then [EMAIL_2], then [EMAIL_1] again"
    assert masker.counts == {"email": 3}
    assert masker.restore("Sent to [EMAIL_2] and [EMAIL_1]; [EMAIL_9] is not one") == \
        "Sent to b@y.io and a@x.io; [EMAIL_9] is not one"
    only_email = Masker(("email",))
    assert only_email.mask(TEXT).count("[") == 1 and "4111 1111" in only_email.mask(TEXT)


def test_a_request_is_masked_in_every_text_a_model_reads() -> None:
    masker = Masker()
    body = {"model": "m", "messages": [
        {"role": "system", "content": "Operator: ops@corp.com"},
        {"role": "user", "content": [{"type": "text", "text": "I am bob@home.net"}, {"type": "image_url"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "mail", "arguments": '{"to": "bob@home.net"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sent to bob@home.net"}]}
    masked = edit_request(body, masker.mask)
    assert masked["messages"][0]["content"] == "Operator: [EMAIL_1]"
    assert masked["messages"][1]["content"][0]["text"] == "I am [EMAIL_2]"
    assert masked["messages"][2]["tool_calls"][0]["function"]["arguments"] == '{"to": "[EMAIL_2]"}'
    assert masked["messages"][3]["content"] == "sent to [EMAIL_2]"
    assert body["messages"][0]["content"] == "Operator: ops@corp.com"  # the caller's body is not changed
    answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi [EMAIL_2]", "tool_calls": [
        {"id": "c2", "type": "function", "function": {"name": "mail", "arguments": '{"to": "[EMAIL_1]"}'}}]}}]}
    back = restore_answer(answer, masker)["choices"][0]["message"]
    assert back["content"] == "Hi bob@home.net" and back["tool_calls"][0]["function"]["arguments"] == \
        '{"to": "ops@corp.com"}'


def stream_of(text: str, cuts: list[int]) -> list[dict]:
    points = sorted({c for c in cuts if 0 < c < len(text)})
    pieces = [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]
    return [{"id": "x", "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
            for piece in pieces]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=80), max_size=12), st.booleans())
def test_a_stream_cut_anywhere_restores_as_the_whole_answer_does(cuts: list[int], finish: bool) -> None:
    masker = Masker()
    masker.mask("a@x.io and 4111 1111 1111 1111 and b@y.io")
    text = "Reply to [EMAIL_1], card [CREDIT_CARD_1]; cc [EMAIL_2] [not a placeholder] [EMAIL_"
    chunks = stream_of(text, cuts)
    if finish:
        chunks.append({"id": "x", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})

    async def collect() -> list[dict]:
        async def source():  # noqa: ANN202
            for chunk in chunks:
                yield chunk
        return [chunk async for chunk in restored(source(), masker)]

    out = asyncio.run(collect())
    streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in out for _ in [0] if c["choices"])
    assert streamed == masker.restore(text)
    assert "a@x.io" in streamed and "4111 1111 1111 1111" in streamed and streamed.endswith("[EMAIL_")


def test_tool_call_arguments_streamed_in_pieces_are_restored() -> None:
    masker = Masker()
    masker.mask("bob@home.net")
    restorer = StreamRestorer(masker)
    pieces = ['{"to": "[EM', 'AIL_1', ']"}']
    got = ""
    for i, piece in enumerate(pieces):
        chunk = {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]},
                              "finish_reason": "tool_calls" if i == len(pieces) - 1 else None}]}
        for call in restorer.chunk(chunk)["choices"][0]["delta"]["tool_calls"]:
            got += call["function"]["arguments"]
    assert got == '{"to": "bob@home.net"}'
