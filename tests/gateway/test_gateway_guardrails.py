"""Guardrails (gateway/guardrails.py) over real sockets: a model that must not see personal data gets
placeholders and the client gets its values back (whole, streamed, in tool calls, after a fallback to it);
a model without the guardrail gets the text as sent; blocklists and blocking PII refuse with OpenAI's
error shape; the metric counts; bad configs are refused."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import openai
import pytest

from gateway.config import ConfigError, parse_settings
from tests.gateway.harness import gateway_config, model_entry, running_gateway
from tests.gateway.upstream import UpstreamProcess

GUARDRAILS = [
    {"name": "mask-pii", "kind": "pii", "models": ["ext"]},
    {"name": "no-codename", "kind": "blocklist", "patterns": ["(?i)project\\s+bluebird"], "models": ["ext"]},
    {"name": "no-cards", "kind": "pii", "action": "block", "entities": ["credit_card"], "models": ["vault"]},
]
SECRET_TEXT = "[echo:1] mail jane.doe@example.com or call (415) 555-0132"


def config(tmp_path: Path, a: UpstreamProcess, b: UpstreamProcess) -> dict:
    models = [model_entry("ext", a.api_base), model_entry("local", b.api_base), model_entry("vault", b.api_base)]
    return gateway_config(tmp_path, models, guardrails=GUARDRAILS, fallbacks={"on_error": {"local": ["ext"]}})


def sent_texts(upstream: UpstreamProcess) -> list[str]:
    return [json.dumps(body["messages"]) for body in upstream.stats()["bodies"]]


def chat(client: openai.OpenAI, model: str, text: str, **extra: object) -> str:
    answer = client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}], **extra)  # type: ignore[call-overload]
    return answer.choices[0].message.content or ""


def test_a_guarded_model_gets_placeholders_and_the_client_the_values(
        tmp_path: Path, upstreams: tuple[UpstreamProcess, UpstreamProcess]) -> None:
    a, b = upstreams
    with running_gateway(config(tmp_path, a, b)) as gateway, gateway.openai() as client:
        whole = chat(client, "ext", SECRET_TEXT)
        stream = client.chat.completions.create(model="ext", stream=True,
                                                messages=[{"role": "user", "content": SECRET_TEXT}])
        streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
        plain = chat(client, "local", SECRET_TEXT)
        tool = {"type": "function", "function": {"name": "send", "parameters": {
            "type": "object", "required": ["to"], "properties": {"to": {"type": "string"}}}}}
        called = client.chat.completions.create(model="ext", tools=[tool],  # type: ignore[list-item]
                                                messages=[{"role": "user", "content": "write bob@home.net"}])
        metrics = httpx.get(gateway.url + "/metrics").text
    to_ext, to_local = sent_texts(a), sent_texts(b)
    assert len(to_ext) == 3 and all("jane.doe@example.com" not in t and "bob@home.net" not in t for t in to_ext)
    assert "[EMAIL_1]" in to_ext[0] and "[PHONE_1]" in to_ext[0] and "write [EMAIL_1]" in to_ext[2]
    assert "jane.doe@example.com" in to_local[0]  # no guardrail on local
    expected = "mail jane.doe@example.com or call (415) 555-0132"
    assert whole == streamed == plain == expected
    arguments = called.choices[0].message.tool_calls[0].function.arguments  # type: ignore[index, union-attr]
    assert json.loads(arguments) == {"to": "write bob@home.net"}  # the upstream's call quotes the prompt it read
    assert 'pitstop_guardrail_actions_total{action="mask",guardrail="mask-pii",kind="email"} 3.0' in metrics
    assert 'pitstop_guardrail_actions_total{action="mask",guardrail="mask-pii",kind="phone"} 2.0' in metrics


def test_a_fallback_to_a_guarded_model_is_masked_too(
        tmp_path: Path, upstreams: tuple[UpstreamProcess, UpstreamProcess]) -> None:
    a, b = upstreams
    with running_gateway(config(tmp_path, a, b)) as gateway, gateway.http() as http:
        answer = http.post("/v1/chat/completions", json={"model": "local", "messages": [
            {"role": "user", "content": "[fail:500@b] " + SECRET_TEXT}]})
    assert answer.status_code == 200 and answer.headers["x-pitstop-fallback-from"] == "local"
    assert answer.json()["choices"][0]["message"]["content"] == "mail jane.doe@example.com or call (415) 555-0132"
    assert "jane.doe@example.com" in sent_texts(b)[0]  # the first model has no guardrail
    assert "jane.doe@example.com" not in sent_texts(a)[0] and "[EMAIL_1]" in sent_texts(a)[0]


def test_blocking_guardrails_refuse_in_openais_shape_and_send_nothing(
        tmp_path: Path, upstreams: tuple[UpstreamProcess, UpstreamProcess]) -> None:
    a, b = upstreams
    with running_gateway(config(tmp_path, a, b)) as gateway, gateway.openai() as client:
        with pytest.raises(openai.BadRequestError) as codename:
            chat(client, "ext", "status of Project  Bluebird?")
        with pytest.raises(openai.BadRequestError) as card:
            client.chat.completions.create(model="vault", stream=True, messages=[
                {"role": "user", "content": "charge 4111-1111-1111-1111"}])
        assert chat(client, "local", "status of project bluebird?")  # not guarded there
        assert chat(client, "vault", "order 12345")  # nothing to block
        rows = gateway.rows()
    assert codename.value.body["code"] == "guardrail_blocked"  # type: ignore[index]
    assert "guardrail 'no-codename'" in codename.value.message and "Bluebird" not in codename.value.message
    assert "credit card values" in card.value.message
    assert a.stats()["requests"] == 0 and b.stats()["requests"] == 2
    refused = [row for row in rows if row["http_status"] == 400]
    assert len(refused) == 2 and all("guardrail" in row["error"] for row in refused)


@pytest.mark.parametrize(("guard", "message"), [
    ({"name": "g", "kind": "pii", "models": ["ghost"]}, "guardrails.0.models: 'ghost' is neither"),
    ({"name": "g", "kind": "blocklist"}, "a blocklist needs patterns"),
    ({"name": "g", "kind": "blocklist", "patterns": ["(unclosed"]}, "is not a regular expression"),
    ({"name": "g", "kind": "blocklist", "patterns": ["x"], "action": "mask"}, "no action: mask"),
    ({"name": "g", "kind": "pii", "patterns": ["x"]}, "patterns are for kind: blocklist"),
    ({"name": "g", "kind": "pii", "entities": ["passport"]}, "entities"),
])
def test_bad_guardrails_are_refused(tmp_path: Path, guard: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_settings(gateway_config(tmp_path, [model_entry("m", "http://x/v1")], guardrails=[guard]))


def test_a_route_groups_guardrail_covers_its_models(tmp_path: Path) -> None:
    settings = parse_settings(gateway_config(
        tmp_path, [model_entry("m1", "http://x/v1"), model_entry("m2", "http://x/v1"), model_entry("m3", "http://x/v1")],
        route_groups=[{"name": "g", "models": ["m1", "m2"]}],
        guardrails=[{"name": "p", "kind": "pii", "models": ["g"]}]))
    from gateway.guardrails import Guardrails

    guards = Guardrails(settings.guardrails)
    assert [bool(guards.applying(m)) for m in ("m1", "m2", "m3")] == [True, True, False]


def test_the_responses_api_is_guarded_as_chat_is(tmp_path: Path, upstreams: tuple[UpstreamProcess, UpstreamProcess]) -> None:
    a, b = upstreams
    with running_gateway(config(tmp_path, a, b)) as gateway, gateway.openai() as client:
        response = client.responses.create(model="ext", input=SECRET_TEXT)
    assert response.output_text == "mail jane.doe@example.com or call (415) 555-0132"
    assert "jane.doe@example.com" not in sent_texts(a)[0] and "[EMAIL_1]" in sent_texts(a)[0]
