"""The moderation guardrail (gateway/moderation_guardrail.py) over real sockets: guarded chats (whole and
streamed) and embeddings go to the fake upstream `a`, the moderation model is on `b`
(tests/gateway/upstream_moderation.py: `[flag:violence]` is flagged). A flagged text is refused with the
blocklist's 400 naming the guardrail, the category and the field, never the text, and nothing reaches the
guarded model; a clean one passes after one moderation call holding the request's texts; categories and
thresholds decide what blocks; a moderation model that fails or is too slow is a 503 unless `fail_open`;
the row keeps each check and adds its cost; the moderation model's own guardrails apply to its call;
bad guardrail configs are refused."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from gateway.config import ConfigError, parse_settings
from tests.gateway.harness import PRICE_IN, PRICE_OUT, Gateway, gateway_config, model_entry, running_gateway
from tests.gateway.test_gateway_moderation import MODEL, estimated_cost, moderation_entry
from tests.gateway.test_gateway_rerank import embedding_model
from tests.gateway.upstream import UpstreamProcess

GUARDRAILS = [
    {"name": "moderate", "kind": "moderation", "model": MODEL, "timeout_s": 1.0, "models": ["ext", "emb"]},
    {"name": "picky", "kind": "moderation", "model": MODEL, "categories": ["violence", "hate"],
     "thresholds": {"violence": 0.2, "hate": 0.95}, "models": ["strict"]},
    {"name": "lenient", "kind": "moderation", "model": MODEL, "fail_open": True, "timeout_s": 0.5,
     "models": ["lenient"]},
    {"name": "mask", "kind": "pii", "entities": ["email"], "models": [MODEL]},  # on the moderation call itself
]


def config(tmp_path: Path, a: UpstreamProcess, b: UpstreamProcess) -> dict:
    models = [*(model_entry(name, a.api_base) for name in ("ext", "open", "strict", "lenient")),
              embedding_model("emb", a.api_base), moderation_entry(MODEL, b.api_base)]
    return gateway_config(tmp_path, models, guardrails=GUARDRAILS)


@pytest.fixture
def gw(upstreams: tuple[UpstreamProcess, UpstreamProcess], tmp_path: Path) -> Iterator[Gateway]:
    with running_gateway(config(tmp_path, *upstreams)) as gateway:
        yield gateway


def ask(client: openai.OpenAI, model: str, text: str) -> str:
    answer = client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}])
    return answer.choices[0].message.content or ""


def moderated(b: UpstreamProcess) -> list:
    """What each moderation call held (the guardrail sends the texts as a list)."""
    return [body["input"] for body in b.stats()["bodies"]]


def metric(gw: Gateway, guardrail: str, action: str, kind: str) -> float:
    line = f'pitstop_guardrail_actions_total{{action="{action}",guardrail="{guardrail}",kind="{kind}"}} '
    found = [row for row in httpx.get(gw.url + "/metrics").text.splitlines() if row.startswith(line)]
    return float(found[0].split()[-1]) if found else 0.0


def test_a_flagged_chat_is_refused_and_nothing_is_sent(gw: Gateway, upstreams: tuple) -> None:
    a, b = upstreams
    text = "tell me how [flag:violence] to do it"
    with gw.openai() as client:
        with pytest.raises(openai.BadRequestError) as whole:
            ask(client, "ext", text)
        with pytest.raises(openai.BadRequestError) as streamed:  # refused before the stream's first byte
            client.chat.completions.create(model="ext", stream=True, messages=[{"role": "user", "content": text}])
    for refused in (whole, streamed):
        error = refused.value.body
        assert isinstance(error, dict) and (error["code"], error["param"]) == ("guardrail_blocked", "messages")
        assert "'moderate'" in error["message"] and "violence" in error["message"]
        assert "tell me" not in error["message"] and "[flag" not in error["message"]  # never the text
    assert a.stats()["requests"] == 0 and moderated(b) == [[text], [text]]
    row = gw.row(whole.value.response.headers["x-pitstop-request-id"])
    assert (row["status"], row["http_status"], row["extra"]["code"]) == ("error", 400, "guardrail_blocked")
    assert row["extra"]["moderation"] == [{"guardrail": "moderate", "model": MODEL, "deployment": f"{MODEL}#0",
                                           "flagged": True, "fired": ["violence"], "cost_usd": estimated_cost(text)}]
    assert row["cost_usd"] == pytest.approx(estimated_cost(text))  # the check's cost, nothing else
    assert metric(gw, "moderate", "block", "violence") == 2.0


def test_a_clean_chat_passes_after_one_check_whole_or_streamed(gw: Gateway, upstreams: tuple) -> None:
    a, b = upstreams
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "a calm question"}]
    with gw.openai() as client:
        whole = client.chat.completions.with_raw_response.create(model="ext", messages=messages)  # type: ignore[arg-type]
        stream = client.chat.completions.create(model="ext", stream=True, messages=messages)  # type: ignore[arg-type]
        streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
        plain = ask(client, "open", "[flag:violence] unguarded")
    assert whole.parse().choices[0].message.content == streamed == "from-a w1 w2 w3 w4"
    assert plain.startswith("from-a")  # a model without the guardrail: no check
    assert moderated(b) == [["be brief", "a calm question"]] * 2  # every text the other guardrails read
    row = gw.row(whole.headers["x-pitstop-request-id"])
    check = estimated_cost("be brief", "a calm question")
    assert row["extra"]["moderation"] == [{"guardrail": "moderate", "model": MODEL, "deployment": f"{MODEL}#0",
                                           "flagged": False, "fired": [], "cost_usd": check}]
    served = row["prompt_tokens"] * PRICE_IN + row["completion_tokens"] * PRICE_OUT
    assert row["cost_usd"] == pytest.approx(served + check) and served > 0  # the call's and the check's


def test_embeddings_are_checked_input_by_input(gw: Gateway, upstreams: tuple) -> None:
    a, b = upstreams
    with gw.http() as http:
        refused = http.post("/v1/embeddings", json={"model": "emb", "input": ["fine", "x [flag:hate] y"]})
        passed = http.post("/v1/embeddings", json={"model": "emb", "input": "fine too"})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "input[1]"
    assert passed.status_code == 200 and a.stats()["requests"] == 1
    assert moderated(b) == [["fine", "x [flag:hate] y"], ["fine too"]]


@pytest.mark.parametrize("text, blocked", [
    ("[flag:sexual] not watched", None),
    ("[flag:violence=0.3] under the model's cut, past the threshold", "violence"),
    ("[flag:violence=0.1] under both", None),
    ("[flag:hate] flagged, under the threshold", None),
    ("[flag:hate=0.97] past it", "hate"),
])
def test_categories_and_thresholds_decide(gw: Gateway, upstreams: tuple, text: str, blocked: str | None) -> None:
    with gw.openai() as client:
        if blocked is None:
            assert ask(client, "strict", text).startswith("from-a")
            return
        with pytest.raises(openai.BadRequestError) as refused:
            ask(client, "strict", text)
    assert isinstance(refused.value.body, dict) and f"flagged {blocked}" in refused.value.body["message"]
    assert upstreams[0].stats()["requests"] == 0


def test_a_failing_moderation_model_is_a_503_unless_the_guardrail_fails_open(gw: Gateway, upstreams: tuple) -> None:
    a, b = upstreams
    with gw.openai() as client:
        b.set_fail(500)
        with pytest.raises(openai.InternalServerError) as closed:
            ask(client, "ext", "anything")
        opened = ask(client, "lenient", "anything")
        b.set_fail(None)
        with pytest.raises(openai.InternalServerError) as slow:  # timeout_s 1: past it, as a failure
            ask(client, "ext", "[delay:3@b] slow to judge")
        slow_open = ask(client, "lenient", "[delay:3@b] slow to judge")
        with pytest.raises(openai.InternalServerError) as short:  # an answer one result short is none
            client.chat.completions.create(model="ext", messages=[{"role": "system", "content": "[short]"},
                                                                  {"role": "user", "content": "x"}])
    for failed in (closed, slow, short):
        error = failed.value.body
        assert failed.value.status_code == 503 and isinstance(error, dict)
        assert error["code"] == "guardrail_unavailable" and "'moderate'" in error["message"]
    assert "(504: " in slow.value.body["message"]  # type: ignore[index]
    assert opened.startswith("from-a") and slow_open.startswith("from-a")
    assert a.stats()["requests"] == 2  # only the fail-open guardrail's calls went on
    row = gw.row(closed.value.response.headers["x-pitstop-request-id"])
    assert row["extra"]["moderation"][0]["error"].startswith("500: ") and row["cost_usd"] == 0
    assert gw.rows(gw.request_ids[1:2])[0]["extra"]["moderation"][0]["fail_open"] is True
    assert (metric(gw, "moderate", "unavailable", "moderation"), metric(gw, "lenient", "fail_open", "moderation")) \
        == (3.0, 2.0)


def test_the_moderation_models_own_guardrails_apply_to_its_call(gw: Gateway, upstreams: tuple) -> None:
    """Its guardrails read a moderation's texts, text parts too, as an embeddings request's (one numbering);
    a moderation, the guardrail's or a client's, is never moderated itself."""
    image = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
    with gw.openai() as client:
        assert ask(client, "ext", "write to jane@example.com").startswith("from-a")
        client.moderations.create(input=[{"type": "text", "text": "mail bob@home.net"}, image])  # type: ignore[list-item]
        client.moderations.create(input=["bob@home.net", "and bob@home.net [flag:violence]"])
    assert moderated(upstreams[1]) == [["write to [EMAIL_1]"], [{"type": "text", "text": "mail [EMAIL_1]"}, image],
                                       ["[EMAIL_1]", "and [EMAIL_1] [flag:violence]"]]
    assert "jane@example.com" in json.dumps(upstreams[0].stats()["bodies"])  # ext itself is not masked


def test_a_guardrail_on_every_model_does_not_moderate_moderations(upstreams: tuple, tmp_path: Path) -> None:
    """Without `models` it guards every model, its moderation model too: whose calls, and the clients'
    /v1/moderations, it does not check (else each check would call for another)."""
    a, b = upstreams
    raw = gateway_config(tmp_path, [model_entry("chat", a.api_base), moderation_entry(MODEL, b.api_base)],
                         guardrails=[{"name": "all", "kind": "moderation", "model": MODEL, "timeout_s": 2}])
    with running_gateway(raw) as gateway, gateway.openai() as client:
        assert ask(client, "chat", "hello").startswith("from-a")
        assert client.moderations.create(input="[flag:hate] asked directly").results[0].flagged
    assert moderated(b) == [["hello"], "[flag:hate] asked directly"]


GOOD = {"name": "g", "kind": "moderation", "model": "mod"}


@pytest.mark.parametrize("guard, message", [
    ({"name": "g", "kind": "moderation"}, "needs model"),
    ({**GOOD, "model": "chat"}, "guardrails.0.model: 'chat' is not a model_name with model_info.mode: moderation"),
    ({**GOOD, "categories": ["violent"]}, "categories"),
    ({**GOOD, "thresholds": {"violence": 1.5}}, "a threshold is a score in (0, 1]"),
    ({**GOOD, "categories": ["hate"], "thresholds": {"violence": 0.5}}, "violence not among the guardrail's categories"),
    ({**GOOD, "patterns": ["x"]}, "no action: mask, entities or patterns"),
    ({**GOOD, "timeout_s": 0}, "timeout_s"),
    ({**GOOD, "models": ["mod"]}, "'mod' is a moderation model, whose calls a moderation guardrail does not check"),
    ({"name": "g", "kind": "pii", "fail_open": True}, "fail_open: for kind: moderation only"),
    ({"name": "g", "kind": "blocklist", "patterns": ["x"], "model": "mod"}, "model: for kind: moderation only"),
])
def test_bad_moderation_guardrails_are_refused(tmp_path: Path, guard: dict, message: str) -> None:
    models = [moderation_entry("mod", "http://127.0.0.1:9/v1"), model_entry("chat", "http://127.0.0.1:9/v1")]
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_settings(gateway_config(tmp_path, models, guardrails=[guard]))
