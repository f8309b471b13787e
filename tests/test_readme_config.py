"""Every ```yaml block of README.md and bench/README.md is a config the gateway accepts: parsed and
validated by gateway.config.parse_settings, what `pitstop serve` runs on its file before it builds anything
(no model is loaded, no host is called), so a key renamed or misspelt in the code or the docs fails here
with the README line of the block and the field. Config keys the prose names (`storage.store_text`,
`hedging.max_extra_share`) must exist too.

Most blocks are fragments. The first block of "## Configuration" (the main example) must stand alone;
each other block is checked inside it: its top-level sections replace the main example's, its model_list
entries replace the main example's of the same model_name and join it under new names. Models a block adds
under new names stay for the blocks below it, as for a reader (the guardrails block names the wildcard
block's patterns). `os.environ/NAME` values are set, so models with API keys are checked, not left out.
A block that is not the gateway's config is marked `<!-- not-config -->` on the line before it."""

from __future__ import annotations

import copy
import dataclasses
import re
import typing
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from gateway.config import ConfigError, Settings, parse_settings
from gateway.model_list_config import ModelEntry
from tests.readme_examples import READMES, Block, code_spans, fenced_blocks, read

BLOCKS = [b for path in READMES for b in fenced_blocks(read(path), path)]
YAML_BLOCKS = [b for b in BLOCKS if b.lang in ("yaml", "yml")]
CONFIG_BLOCKS = [b for b in YAML_BLOCKS if not b.not_config]
# OpenAI SDK calls the prose names, not the `responses:` section's keys.
SDK_CALLS = {"responses.create", "responses.parse"}


def main_example(blocks: list[Block]) -> Block:
    section = read("README.md").split("\n## Configuration\n", 1)
    assert len(section) == 2, "README.md has no '## Configuration' section"
    first_line = section[0].count("\n") + 2
    return next(b for b in blocks if b.path == "README.md" and b.line > first_line)


def _load(block: Block) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(block.text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = block.where(mark.line) if mark is not None else block.where()
        raise AssertionError(f"{where}: not valid YAML: {exc}") from None
    assert isinstance(raw, dict), f"{block.where()}: a ```yaml block that is not a mapping of config sections"
    return raw


def _models(raw: dict[str, Any]) -> list[dict[str, Any]]:
    entries = raw.get("model_list") or []
    return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []


def config_for(block: Block, blocks: list[Block]) -> dict[str, Any]:
    """The config `block` is checked as (see the module's docstring)."""
    main = main_example(blocks)
    config = copy.deepcopy(_load(main))
    if block == main:
        return config
    models = _models(config)
    for earlier in blocks[:blocks.index(block)]:
        if earlier != main:  # its new names stay; its entries for the main example's names were its own
            names = {m.get("model_name") for m in models}
            models += [e for e in _models(_load(earlier)) if e.get("model_name") not in names]
    raw = _load(block)
    own = _models(raw)
    names = {e.get("model_name") for e in own}
    return {**config, **copy.deepcopy(raw), "model_list": [m for m in models if m.get("model_name") not in names]
            + copy.deepcopy(own)}


def _env_names(value: Any) -> set[str]:
    if isinstance(value, str) and value.startswith("os.environ/"):
        return {value.removeprefix("os.environ/")}
    if isinstance(value, dict):
        return set().union(*map(_env_names, value.values()))
    if isinstance(value, list):
        return set().union(*map(_env_names, value))
    return set()


def _key_line(block: Block, where: str) -> str:
    """The README line of the key an error names (`hedging.max_hedgs` -> the block's line with
    `max_hedgs:`) where the block has it once, else the block's."""
    key = next((part for part in reversed(where.split(".")) if not part.isdigit()), "")
    lines = [i for i, line in enumerate(block.text.splitlines())
             if re.search(rf"(^|[\s{{,-]){re.escape(key)}\s*:", line)]
    return block.where(lines[0]) if len(lines) == 1 else block.name  # a key on several lines: which is it?


def config_problem(block: Block, blocks: list[Block], monkeypatch: pytest.MonkeyPatch) -> str | None:
    """The gateway's refusal of `block` as a config, naming README lines; None when it accepts it."""
    main = main_example(blocks)
    if block != main and config_problem(main, blocks, monkeypatch) is not None:
        return f"{block.name} is checked inside the main example, which fails: see {main.name}"
    config = config_for(block, blocks)
    for name in _env_names(config):
        monkeypatch.setenv(name, f"set-for-{name.lower()}")
    try:
        parse_settings(config)
    except ConfigError as exc:
        message = str(exc).removeprefix("invalid config: ")
        wheres = re.findall(r"(?:^|; )(?:config: Value error, )?([\w.*-]+): ", message)
        lines = ", ".join(dict.fromkeys(_key_line(block, w) for w in wheres)) or block.where()
        return f"the ```yaml block at {block.name} is not a config the gateway accepts ({lines}): {message}"
    return None


@pytest.mark.parametrize("block", CONFIG_BLOCKS, ids=lambda b: b.name)
def test_a_readme_yaml_block_is_a_config_the_gateway_accepts(block: Block, monkeypatch: pytest.MonkeyPatch) -> None:
    problem = config_problem(block, CONFIG_BLOCKS, monkeypatch)
    assert problem is None, problem


def test_the_not_config_marker_comes_before_a_yaml_block_only() -> None:
    """A marker elsewhere would exempt nothing (or a block no one meant to exempt): say where it is."""
    for path in READMES:
        lines = read(path).splitlines()
        for n, line in enumerate(lines):
            if line.strip() == "<!-- not-config -->":
                after = next((later.strip() for later in lines[n + 1:] if later.strip()), "")
                assert after in ("```yaml", "```yml"), f"{path}:{n + 1}: the not-config marker is not before a ```yaml block"


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def key_path_exists(parts: list[str]) -> bool:
    """Whether a dotted path of config keys (`cache.semantic.encoder`, `route_groups.0.models`) is in
    the schema; a mapping of free keys (litellm_params passes unknown ones to litellm) takes any."""
    roots = {**Settings.model_fields, **ModelEntry.model_fields}
    annotations = [roots[parts[0]].annotation]
    for part in parts[1:]:
        if part.isdigit():
            continue
        models = [m for a in annotations for m in _models_in(a)]
        if not models:
            return True  # a dict or list of values: no keys to check
        annotations = [m.model_fields[part].annotation for m in models if part in m.model_fields]
        if not annotations:
            return any(m.model_config.get("extra") != "forbid" for m in models)
    return True


def test_config_keys_the_readmes_name_exist() -> None:
    roots = {**Settings.model_fields, **ModelEntry.model_fields}
    named, missing = 0, []
    for path in READMES:
        for where, span in code_spans(read(path), path):
            found = re.fullmatch(r"([a-z_]+(?:\.[a-z0-9_]+)+)(?::.*)?", span)
            if found is None or found.group(1) in SDK_CALLS or found.group(1).split(".")[0] not in roots:
                continue
            named += 1
            if not key_path_exists(found.group(1).split(".")):
                missing.append(f"{where}: `{span}` is not a config key")
    assert named > 20, "the READMEs' config keys were not found: has the span syntax changed?"
    assert not missing, "\n".join(missing)


def test_a_misspelt_key_fails_naming_its_readme_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check can fail, and says where: `store_text` misspelt in the main example's storage section."""
    main = main_example(CONFIG_BLOCKS)
    assert "  store_text:" in main.text, "pick another key to misspell: the main example has no store_text"
    typo = dataclasses.replace(main, text=main.text.replace("  store_text:", "  store_txet:", 1))
    line = main.text.splitlines().index(next(x for x in main.text.splitlines() if "  store_text:" in x))
    blocks = [typo if b == main else b for b in CONFIG_BLOCKS]
    problem = config_problem(typo, blocks, monkeypatch)
    assert problem is not None and "storage.store_txet" in problem, problem
    assert main.where(line) in problem and main.name in problem, problem


def test_an_unknown_section_in_a_fragment_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    fragment = CONFIG_BLOCKS[-1]
    typo = dataclasses.replace(fragment, text=fragment.text + "\nhedgin: {enabled: true}")
    problem = config_problem(typo, [typo if b == fragment else b for b in CONFIG_BLOCKS], monkeypatch)
    assert problem is not None and "hedgin" in problem and fragment.name in problem, problem



def test_a_misspelt_engine_key_fails_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """litellm_params passes unknown keys to litellm, but not on Pitstop's own models (the main example's
    in-process engine): there `num_block` would be a silent default."""
    main = main_example(CONFIG_BLOCKS)
    assert "      num_blocks:" in main.text, "pick another engine key to misspell"
    typo = dataclasses.replace(main, text=main.text.replace("      num_blocks:", "      num_block:", 1))
    problem = config_problem(typo, [typo if b == main else b for b in CONFIG_BLOCKS], monkeypatch)
    assert problem is not None and "unknown key(s) num_block" in problem, problem
