"""An engine in the gateway's process with `litellm_params.speculative_config` (vLLM's field): the chat
answers are plain decoding's, and the engine checked and accepted drafts (engine/speculation.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.tiny_model import make_tiny_model
from tests.gateway.harness import gateway_config, running_gateway

BIAS = {str(t): 30 for t in (300, 301, 302, 303)}  # four tokens: the random model's answers repeat


def local(name: str, model_dir: Path, **params: object) -> dict:
    return {"model_name": name, "litellm_params": {"model": f"pitstop-local/{name}", "model_dir": str(model_dir),
                                                   "num_blocks": 128, "max_model_len": 512, **params}}


def test_a_local_engine_speculates_and_answers_as_without(tmp_path: Path) -> None:
    model_dir = make_tiny_model(tmp_path / "tiny")
    models = [local("plain", model_dir),
              local("fast", model_dir, speculative_config={"method": "ngram", "num_speculative_tokens": 5,
                                                           "prompt_lookup_max": 3})]
    with running_gateway(gateway_config(tmp_path, models)) as gateway, gateway.openai() as client:
        answers = {}
        for model in ("plain", "fast"):
            answers[model] = [client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": text}], max_tokens=48, temperature=0,
                logit_bias=BIAS).choices[0].message.content for text in ("Hello there", "What is a KV cache?")]
        assert gateway.state is not None
        engines = {d.model_name: d.backend.engine.engine for d in gateway.state.pool.deployments}  # type: ignore[attr-defined]
    assert answers["fast"] == answers["plain"] and all(answers["fast"])
    assert engines["plain"].config.speculative is None and engines["plain"].stats().spec.draft_tokens == 0
    speculative = engines["fast"].config.speculative
    assert speculative is not None and (speculative.num_speculative_tokens, speculative.prompt_lookup_max) == (5, 3)
    assert engines["fast"].stats().spec.accepted_tokens > 0


def test_goodput_draft_lengths_read_a_profile_beside_the_config(tmp_path: Path) -> None:
    """`draft_policy: goodput` with `step_time_profile` relative to the config file; a profile that is not
    there stops the gateway at start, naming the model."""
    from engine.step_time import LinearStepTime, save_profile
    from gateway.config import ConfigError, parse_settings
    from gateway.deployment_build import make_backend

    model_dir = make_tiny_model(tmp_path / "tiny")
    save_profile(tmp_path / "cpu-profile.json", LinearStepTime(c0=1e-3, c_prefill_token=2.5e-4))
    spec = {"draft_policy": "goodput", "step_time_profile": "cpu-profile.json"}
    settings = parse_settings(gateway_config(tmp_path, [local("fast", model_dir, speculative_config=spec)]),
                              base_dir=tmp_path)
    engine = make_backend(settings.model_list[0], settings).engine.engine  # type: ignore[attr-defined]
    assert engine.scheduler.draft_length is not None
    assert engine.config.speculative.step_time_profile == str(tmp_path / "cpu-profile.json")
    missing = parse_settings(gateway_config(tmp_path, [local("lost", model_dir, speculative_config={
        **spec, "step_time_profile": "nowhere.json"})]), base_dir=tmp_path)
    with pytest.raises(ConfigError, match="model lost: step_time_profile .*nowhere.json"):
        make_backend(missing.model_list[0], missing)


def test_a_local_engine_drafts_with_a_draft_model_beside_the_config(tmp_path: Path) -> None:
    """`speculative_config: {model: ...}` (vLLM's field; the method follows) names a draft model folder relative
    to the config file: the answers are plain decoding's, the draft's passes counted; a goodput policy reads
    the draft's profile beside the target's, and without it stops the gateway at start, naming the model."""
    from engine.tiny_model import make_truncated_model
    from gateway.config import ConfigError, parse_settings
    from gateway.deployment_build import make_backend

    model_dir = make_tiny_model(tmp_path / "tiny")
    draft = make_truncated_model(model_dir, tmp_path / "draft", 1)
    models = [local("plain", model_dir), local("drafted", model_dir, speculative_config={
        "model": str(draft), "acceptance_method": "coupled"})]  # coupled: seeded answers are plain decoding's
    with running_gateway(gateway_config(tmp_path, models)) as gateway, gateway.openai() as client:
        answers = {model: [client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": text}], max_tokens=32, temperature=temperature,
            seed=3).choices[0].message.content for text, temperature in (("Hello there", 0), ("A cache?", 0.8))]
            for model in ("plain", "drafted")}
        assert gateway.state is not None
        engines = {d.model_name: d.backend.engine.engine for d in gateway.state.pool.deployments}  # type: ignore[attr-defined]
    assert answers["drafted"] == answers["plain"] and all(answers["drafted"])
    assert engines["drafted"].config.speculative.method == "draft_model"
    assert engines["drafted"].config.speculative.acceptance_method == "coupled"
    assert engines["drafted"].stats().spec.draft_passes > 0
    from engine.step_time import LinearStepTime, save_profile

    save_profile(tmp_path / "target.json", LinearStepTime(c0=1e-3, c_decode_seq=1e-4))
    save_profile(tmp_path / "draft.json", LinearStepTime(c0=2e-4))
    beside = parse_settings(gateway_config(tmp_path, [local("near", model_dir, speculative_config={
        "model": "draft", "draft_policy": "goodput", "step_time_profile": "target.json",
        "draft_step_time_profile": "draft.json"})]), base_dir=tmp_path)
    engine = make_backend(beside.model_list[0], beside).engine.engine  # type: ignore[attr-defined]
    assert engine.config.speculative.model == str(draft)
    assert engine.config.speculative.draft_step_time_profile == str(tmp_path / "draft.json")
    assert engine.scheduler.draft_length.draft_step_time is not None
    bad = parse_settings(gateway_config(tmp_path, [local("odd", model_dir, speculative_config={
        "model": "draft", "draft_policy": "goodput"})]), base_dir=tmp_path)
    with pytest.raises(ConfigError, match="model odd: .*give draft_step_time_profile"):
        make_backend(bad.model_list[0], bad)


def test_a_local_engine_drafts_with_an_eagle_head_beside_the_config(tmp_path: Path) -> None:
    """`speculative_config: {method: eagle, model: ...}` (vLLM's fields) names an EAGLE head's folder relative
    to the config file; a head made for another model stops the gateway at start, naming the model."""
    import json

    from engine.eagle import EagleProposer
    from engine.tiny_eagle import make_tiny_eagle_head
    from gateway.config import ConfigError, parse_settings
    from gateway.deployment_build import make_backend

    model_dir = make_tiny_model(tmp_path / "tiny")
    head = make_tiny_eagle_head(model_dir, tmp_path / "head")
    settings = parse_settings(gateway_config(tmp_path, [local("eagle", model_dir, speculative_config={
        "method": "eagle", "model": "head", "num_speculative_tokens": 2})]), base_dir=tmp_path)
    engine = make_backend(settings.model_list[0], settings).engine.engine  # type: ignore[attr-defined]
    assert isinstance(engine.scheduler.drafter, EagleProposer) and engine.config.speculative.model == str(head)
    wide = tmp_path / "wide"
    wide.mkdir()
    (wide / "config.json").write_text(json.dumps(json.loads((head / "config.json").read_text()) | {"hidden_size": 128}))
    bad = parse_settings(gateway_config(tmp_path, [local("odd", model_dir, speculative_config={
        "method": "eagle", "model": "wide"})]), base_dir=tmp_path)
    with pytest.raises(ConfigError, match="model odd: .*hidden_size \\(128\\) is not the target's \\(64\\)"):
        make_backend(bad.model_list[0], bad)
