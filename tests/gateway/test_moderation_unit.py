"""The moderation pieces without a server: any JSON a moderation upstream may answer is refused as a 502 or
read whole by what the endpoint and the guardrail read (gateway/backends/answers.py `checked_moderation`,
fuzzed by hypothesis); which categories make a guardrail block (`fired`: its categories, its thresholds in
place of the model's flag, a flag with no category); what a request body holds (`parse_moderation_request`)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.backends.answers import checked_moderation
from gateway.backends.base import BackendError
from gateway.guardrails_config import GuardrailConfig
from gateway.moderation_guardrail import fired
from gateway.moderation_request import DEFAULT_MODEL, parse_moderation_request
from tests.gateway.test_upstream_answers import anything, maybe
from tests.gateway.upstream_moderation import moderation_result

names = st.sampled_from(["violence", "hate", "self-harm", "odd"])
results = st.lists(maybe(st.fixed_dictionaries({}, optional={
    "flagged": maybe(st.booleans()), "categories": maybe(st.dictionaries(names, maybe(st.booleans()), max_size=3)),
    "category_scores": maybe(st.dictionaries(names, maybe(st.floats(0, 1)), max_size=3))})), max_size=3)
moderation_answers = maybe(st.fixed_dictionaries({}, optional={
    "id": anything, "results": maybe(results), "error": maybe(st.fixed_dictionaries({"message": st.text(max_size=5)}))}))
WATCHING = GuardrailConfig(name="g", kind="moderation", model="m", categories=["violence", "hate"],
                           thresholds={"hate": 0.5})


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=moderation_answers)
def test_any_moderation_answer_is_refused_or_read_whole(body: Any) -> None:
    try:
        checked = checked_moderation(copy.deepcopy(body))
    except BackendError as error:
        assert error.status == 502 and error.retryable
        return
    assert checked["results"]
    for result in checked["results"]:  # what gateway/moderation.py reads for the row
        assert isinstance(result["flagged"], bool)
        assert all(isinstance(on, bool) for on in result["categories"].values())
        for guard in (WATCHING, GuardrailConfig(name="h", kind="moderation", model="m")):
            assert all(isinstance(category, str) for category in fired(guard, result))


def result(flags: dict[str, float]) -> dict:
    return moderation_result(" ".join(f"[flag:{category}={score}]" for category, score in flags.items()))


@pytest.mark.parametrize("guard, flags, expected", [
    ({}, {}, []),
    ({}, {"violence": 0.9, "hate": 0.6}, ["hate", "violence"]),  # every category the model flags
    ({}, {"violence": 0.4}, []),  # under the model's own cut
    ({"categories": ["hate"]}, {"violence": 0.9}, []),  # not watched
    ({"thresholds": {"violence": 0.3}}, {"violence": 0.4}, ["violence"]),  # past the threshold, unflagged
    ({"thresholds": {"violence": 0.95}}, {"violence": 0.9}, []),  # flagged, under the threshold
    ({"thresholds": {"violence": 0.95}}, {"violence": 0.9, "sexual": 0.8}, ["sexual"]),  # the others: the flag
    ({"categories": ["violence"], "thresholds": {"violence": 0.5}}, {"violence": 0.5}, ["violence"]),  # at it
])
def test_which_categories_fire(guard: dict, flags: dict[str, float], expected: list[str]) -> None:
    config = GuardrailConfig(name="g", kind="moderation", model="m", **guard)
    assert fired(config, result(flags)) == expected


def test_a_flag_without_a_category_fires_only_where_every_category_is_watched() -> None:
    odd = {"flagged": True, "categories": {"own-category": False}, "category_scores": {}}
    assert fired(GuardrailConfig(name="g", kind="moderation", model="m"), odd) == ["flagged"]
    assert fired(WATCHING, odd) == []


def test_what_a_body_holds() -> None:
    parts = [{"type": "text", "text": "ab"}, {"type": "image_url", "image_url": {"url": "u"}},
             {"type": "text", "text": "cde"}]
    asked = parse_moderation_request({"input": parts, "priority": 3, "user": "u1"})
    assert (asked.model, asked.texts, asked.results, asked.priority) == (DEFAULT_MODEL, ["ab", "cde"], 1, 3)
    assert asked.as_request().body == {"user": "u1", "model": DEFAULT_MODEL, "input": parts}  # priority held back
    assert asked.as_request().prompt_chars == 5
    listed = parse_moderation_request({"model": "m", "input": ["a", "bb"]})
    assert (listed.results, listed.texts, listed.as_request().kind) == (2, ["a", "bb"], "embedding")
