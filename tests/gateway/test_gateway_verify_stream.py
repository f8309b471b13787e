"""A route group's `verify:` on streamed requests, over real sockets with the openai SDK (the setup of
tests/gateway/test_gateway_verify.py): the pick's stream is held back while its reply could still be a
short answer; one that ends inside the hold is verified, and the client gets the pick's chunks or the
escalation model's stream; one that runs past the hold, or whose start no short answer has, streams
on unchecked; a stream that breaks while held fails the request as a whole, before anything reached
the client."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.gateway.harness import Gateway, running_gateway, wait_until
from tests.gateway.test_gateway_verify import Trio, calls, config, cost, group, verify_of


def ask_streaming(gw: Gateway, prompt: str, kind: str = "chat") -> tuple[str, httpx.Headers, dict | None]:
    """The streamed text, the response headers, and the usage of the last chunk."""
    client = gw.openai()
    options: dict[str, Any] = {"model": "auto", "stream": True, "stream_options": {"include_usage": True}}
    if kind == "chat":
        call = client.chat.completions.with_streaming_response.create(
            messages=[{"role": "user", "content": prompt}], **options)
    else:
        call = client.completions.with_streaming_response.create(prompt=prompt, **options)
    text, usage = "", None
    with call as streamed:
        for chunk in streamed.parse():
            for choice in chunk.choices:
                text += (choice.delta.content or "") if kind == "chat" else choice.text
            usage = chunk.usage.model_dump() if chunk.usage else usage
    return text, streamed.headers, usage


def test_a_streamed_short_answer_is_verified_and_served_by_the_pick(tmp_path: Path, trio: Trio) -> None:
    prompt = "Which planet is largest? [answer:B]"
    with running_gateway(config(tmp_path, trio)) as gw:
        text, headers, usage = ask_streaming(gw, prompt)
        row, verify = verify_of(gw, headers)
    assert text == "B" and usage is not None and usage["completion_tokens"] == 1
    assert (headers["x-pitstop-model"], headers["x-pitstop-verify"]) == ("weak", "accepted")
    assert calls(trio) == (1, 1, 0)
    assert (row["model"], row["routed_model"], row["verify_outcome"], row["status"]) == ("weak", "weak", "accepted",
                                                                                      "ok")
    assert row["cost_usd"] == pytest.approx(cost("weak", prompt, 1) + cost("judge", prompt, 1))
    assert row["ttft_s"] is not None
    assert verify["verifiers"] == {"judge": "B"}
    assert trio[1].stats()["bodies"][-1].get("stream") in (None, False)  # the verifier is asked for a whole answer


@pytest.mark.parametrize("kind", ["chat", "completion"])
def test_a_streamed_disagreement_streams_the_escalation_models_answer(tmp_path: Path, trio: Trio, kind: str) -> None:
    prompt = "Which planet is largest? [answer:B] [answer:C@b] [answer:D@c]"
    with running_gateway(config(tmp_path, trio)) as gw:
        text, headers, usage = ask_streaming(gw, prompt, kind)
        row, verify = verify_of(gw, headers)
    assert text == "D" and usage is not None
    assert (headers["x-pitstop-model"], headers["x-pitstop-verify"]) == ("strong", "escalated")
    assert calls(trio) == (1, 1, 1)
    assert (row["model"], row["deployment"], row["routed_model"]) == ("strong", "strong#0", "weak")
    total = cost("weak", prompt, 1) + cost("judge", prompt, 1) + cost("strong", prompt, 1)
    assert row["cost_usd"] == pytest.approx(total)
    assert (verify["pick_answer"], verify["verifiers"], verify["escalated_to"]) == ("B", {"judge": "C"}, "strong")


def test_a_reply_longer_than_the_hold_streams_on_unchecked(tmp_path: Path, trio: Trio) -> None:
    long_prompt, short_prompt = "Tell me about Jupiter. [words:40]", "Say hi. [words:2]"
    with running_gateway(config(tmp_path, trio)) as gw:
        long_text, long_headers, _ = ask_streaming(gw, long_prompt)
        short_text, short_headers, _ = ask_streaming(gw, short_prompt)  # inside the hold, not a short answer
        (long_row, long_verify), (_, short_verify) = verify_of(gw, long_headers), verify_of(gw, short_headers)
    assert long_text == "from-a " + " ".join(f"w{i}" for i in range(1, 40)) and short_text == "from-a w1"
    for headers in (long_headers, short_headers):
        assert (headers["x-pitstop-model"], headers["x-pitstop-verify"]) == ("weak", "unchecked")
    assert calls(trio) == (2, 0, 0)
    assert long_row["cost_usd"] == pytest.approx(cost("weak", long_prompt, 40))
    assert long_verify["pick_answer"] is None and short_verify["pick_answer"] is None


def test_a_failing_escalation_still_streams_the_picks_answer(tmp_path: Path, trio: Trio) -> None:
    prompt = "Which planet is largest? [answer:B] [answer:C@b]"
    trio[2].set_fail(500)
    with running_gateway(config(tmp_path, trio)) as gw:
        text, headers, _ = ask_streaming(gw, prompt)
        row, verify = verify_of(gw, headers)
    assert text == "B"
    assert (headers["x-pitstop-model"], headers["x-pitstop-verify"]) == ("weak", "escalation_failed")
    assert (row["status"], row["http_status"]) == ("ok", 200) and "injected 500" in verify["errors"]["strong"]
    assert row["cost_usd"] == pytest.approx(cost("weak", prompt, 1) + cost("judge", prompt, 1))


def test_a_stream_that_breaks_while_held_fails_before_anything_is_sent(tmp_path: Path, trio: Trio) -> None:
    prompt = "Which planet is largest? [answer:B] [break:1@a]"  # "B", then the connection drops
    with running_gateway(config(tmp_path, trio)) as gw:
        with gw.http() as http:
            response = http.post("/v1/chat/completions", json={
                "model": "auto", "stream": True, "messages": [{"role": "user", "content": prompt}]})
        rows = gw.rows()
        weak = gw.state.pool.by_model["weak"][0]
        assert weak.outstanding == 0  # its admission slot was given back
    assert response.status_code >= 500 and response.headers["content-type"].startswith("application/json")
    assert response.json()["error"]["message"]
    assert [(r["status"], r["model"]) for r in rows] == [("error", "weak")]
    assert calls(trio) == (1, 0, 0)


def test_free_text_is_let_go_at_its_first_word(tmp_path: Path, trio: Trio) -> None:
    """"from-a" cannot start a short answer: the stream goes to the client at once, so a break after its
    first word reaches the client as a broken stream (an error event after the words), not as an error
    response, which is what a reply still held gets (the test above)."""
    prompt = "Tell me about Jupiter. [words:3] [break:1@a]"
    with running_gateway(config(tmp_path, trio)) as gw, gw.http() as http:
        response = http.post("/v1/chat/completions", json={
            "model": "auto", "stream": True, "messages": [{"role": "user", "content": prompt}]})
    assert response.status_code == 200 and response.headers["x-pitstop-verify"] == "unchecked"
    events = [line for line in response.text.splitlines() if line.startswith("data: ")]
    assert '"content": "from-a"' in events[0].replace('":"', '": "') and '"error"' in events[-1]
    assert calls(trio) == (1, 0, 0)


def test_the_groups_hold_decides_how_long_a_reply_can_be_checked(tmp_path: Path, trio: Trio) -> None:
    """A 50-character reply that commits to a letter first: past the default hold of 32 it streams on
    unchecked; inside a hold of 400 it is read whole and verified."""
    prompt = "Which planet is largest? [answer:D)Jupiter_is_the_largest_planet_of_the_eight] [answer:D@b]"
    groups = [group("auto"), group("patient", hold_chars=400)]
    with running_gateway(config(tmp_path, trio, groups)) as gw:
        default_text, default_headers, _ = ask_streaming(gw, prompt)
        assert calls(trio) == (1, 0, 0) and default_headers["x-pitstop-verify"] == "unchecked"
        client = gw.openai()
        with client.chat.completions.with_streaming_response.create(
                model="patient", stream=True, messages=[{"role": "user", "content": prompt}]) as streamed:
            patient_text = "".join(c.choices[0].delta.content or "" for c in streamed.parse() if c.choices)
    assert default_text == patient_text == "D)Jupiter_is_the_largest_planet_of_the_eight"
    assert streamed.headers["x-pitstop-verify"] == "accepted" and calls(trio) == (2, 1, 0)


def test_a_client_leaving_while_its_stream_is_held_cancels_the_verification(tmp_path: Path, trio: Trio) -> None:
    prompt = "Which planet is largest? [answer:B] [delay:3@b]"
    with running_gateway(config(tmp_path, trio)) as gw:
        with gw.http() as http, pytest.raises(httpx.ReadTimeout):
            http.post("/v1/chat/completions", timeout=0.5, json={
                "model": "auto", "stream": True, "messages": [{"role": "user", "content": prompt}]})
        rows = wait_until(gw.rows, what="the aborted row")
        pool = gw.state.pool.by_model
        assert pool["judge"][0].outstanding == pool["weak"][0].outstanding == 0  # nothing left running
    assert [(r["status"], r["http_status"], r["model"]) for r in rows] == [("aborted", 499, "weak")]
    assert rows[0]["cost_usd"] == pytest.approx(cost("weak", prompt, 1))  # the pick's answer was paid for
    assert calls(trio) == (1, 1, 0)
