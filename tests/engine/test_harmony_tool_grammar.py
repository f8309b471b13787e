"""The grammars that hold gpt-oss's tool calls in Harmony messages (engine/harmony_tools.py), mask by mask against
hand-built expectations on the tiny gpt-oss's tokenizer: a forced call (tool_choice "required", a named function,
allowed_tools in mode "required") after free analysis messages; strict or allowed tools under "auto", where only a
call's arguments are held and the final message stays free."""

from __future__ import annotations

import pytest
import torch

from engine.forced_tools import forced_tools
from engine.harmony_tools import forced_call, held_calls, in_harmony
from engine.structured_output import GrammarCompiler, GrammarMatcher, OutputConstraint, mask_disallowed
from engine.tokenizer import Tokenizer
from tests.engine.gpt_oss_checkpoints import save_serving_gpt_oss

WEATHER = {"type": "object", "properties": {"city": {"enum": ["oslo", "rome"]},
                                            "days": {"type": "integer", "minimum": 1, "maximum": 7}},
           "required": ["city", "days"], "additionalProperties": False}
ZONE = {"type": "object", "properties": {"zone": {"enum": ["utc", "cet"]}}, "required": ["zone"],
        "additionalProperties": False}
WX = {"type": "function", "function": {"name": "wx", "parameters": WEATHER, "strict": True}}
TZ = {"type": "function", "function": {"name": "tz", "parameters": ZONE}}  # not strict
TOOLS = [WX, TZ]
MORE = "<|end|><|start|>assistant"
CALL_WX = "<|channel|>commentary to=functions.wx <|constrain|>json<|message|>"
CALL_TZ = "<|channel|>commentary to=functions.tz <|constrain|>json<|message|>"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    return Tokenizer(save_serving_gpt_oss(tmp_path_factory.mktemp("harmony_tool_grammar") / "tiny-gpt-oss"))


@pytest.fixture(scope="module")
def compiler(tokenizer: Tokenizer) -> GrammarCompiler:
    return GrammarCompiler(tokenizer.to_json(), tokenizer.vocab_size, tokenizer.eos_token_ids)


class Masks:
    """Walks text through a grammar and reads the mask where it stands."""

    def __init__(self, tokenizer: Tokenizer, compiler: GrammarCompiler) -> None:
        self.tokenizer, self.compiler = tokenizer, compiler
        self.specials = {tokenizer.token_to_id(name) for name in tokenizer.added_tokens}

    def id(self, name: str) -> int:
        token = self.tokenizer.token_to_id(name)
        assert token is not None
        return token

    def fed(self, constraint: OutputConstraint, text: str) -> GrammarMatcher:
        matcher = self.compiler.matcher(constraint)
        assert all(matcher.consume(t) for t in self.tokenizer.encode(text)), text
        return matcher

    def accepts(self, constraint: OutputConstraint, text: str) -> bool:
        matcher = self.compiler.matcher(constraint)
        return all(matcher.consume(t) for t in self.tokenizer.encode(text))

    def barred(self, constraint: OutputConstraint, text: str) -> torch.Tensor:
        """True for each token the grammar does not allow after `text`."""
        logits = torch.zeros(1, self.compiler.vocab_size)
        mask_disallowed(logits, [self.fed(constraint, text) if text else self.compiler.matcher(constraint)])
        return torch.isinf(logits[0])

    def allowed(self, constraint: OutputConstraint, text: str) -> set[int]:
        return set((~self.barred(constraint, text)).nonzero().flatten().tolist())

    def free_text_up_to(self, constraint: OutputConstraint, text: str, end: str) -> None:
        """Inside a free body: every special token barred but `end` (lone UTF-8 continuation bytes aside)."""
        barred = set(self.barred(constraint, text).nonzero().flatten().tolist())
        assert barred & self.specials == self.specials - {self.id(end)}
        assert all(self.tokenizer.decode([t]) == "\ufffd" for t in barred - self.specials)

    def schema_at(self, constraint: OutputConstraint, text: str, schema: dict) -> bool:
        """The mask after `text` is exactly the plain schema's first mask."""
        plain = self.barred(OutputConstraint.json_schema(schema), "")
        return torch.equal(self.barred(constraint, text), plain)


@pytest.fixture(scope="module")
def masks(tokenizer: Tokenizer, compiler: GrammarCompiler) -> Masks:
    return Masks(tokenizer, compiler)


def test_a_forced_call_is_thinking_then_one_call_message_held_to_its_schema(masks: Masks) -> None:
    forced = forced_tools("required", TOOLS, None)
    assert forced is not None and in_harmony(forced)
    held = forced_call(forced, TOOLS)
    assert masks.allowed(held, "") == {masks.id("<|channel|>")}  # a header, from its first token
    headers = ("analysis", "commentary to=functions.wx ", "commentary to=functions.tz ")
    after_channel = masks.allowed(held, "<|channel|>")
    assert after_channel and all(any(h.startswith(masks.tokenizer.decode([t])) for h in headers) for t in after_channel)
    assert masks.id("f") not in after_channel and {masks.id("a"), masks.id("c")} <= after_channel  # no final message
    masks.free_text_up_to(held, "<|channel|>analysis<|message|>Need the weather", "<|end|>")
    assert masks.allowed(held, "<|channel|>analysis<|message|>Hm." + MORE) == {masks.id("<|channel|>")}
    assert masks.schema_at(held, "<|channel|>analysis<|message|>Hm." + MORE + CALL_WX, WEATHER)
    assert masks.schema_at(held, CALL_WX, WEATHER)  # no thinking
    assert masks.schema_at(held, CALL_TZ, ZONE)  # a forced call holds every tool's arguments, strict or not
    assert masks.barred(held, CALL_WX + '{"city":"oslo"')[masks.id("<|call|>")]
    whole = CALL_WX + '{"city":"oslo","days":3}'
    assert masks.allowed(held, whole) == {masks.id("<|call|>")}
    assert masks.fed(held, whole + "<|call|>").complete
    for wrong in ("<|channel|>final<|message|>", "<|channel|>commentary<|message|>Let me check.",
                  "<|channel|>commentary to=functions.nope ", CALL_WX + '{"city":"paris"', CALL_WX + '{"city":"oslo","days":9',
                  "<|channel|>commentary to=functions.wx<|message|>", CALL_WX + '{"city":"oslo","days":3}<|return|>'):
        assert not masks.accepts(held, wrong), wrong


@pytest.mark.parametrize("tool_choice", [
    {"type": "function", "function": {"name": "tz"}},
    {"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": [{"type": "function", "function": {"name": "tz"}}]}},
])  # fmt: skip
def test_a_named_or_allowed_function_is_the_only_call(masks: Masks, tool_choice: dict) -> None:
    forced = forced_tools(tool_choice, TOOLS, None)
    assert forced is not None
    held = forced_call(forced, TOOLS)
    assert not masks.accepts(held, "<|channel|>commentary to=functions.w")
    assert masks.schema_at(held, CALL_TZ, ZONE)
    assert masks.fed(held, CALL_TZ + '{"zone":"cet"}<|call|>').complete


def test_strict_tools_hold_a_call_made_and_leave_the_rest_free(masks: Masks) -> None:
    assert held_calls([TZ], None) is None  # nothing strict, nothing only allowed: no grammar
    held = held_calls(TOOLS, None)
    assert held is not None
    start = masks.allowed(held, "")
    space = masks.tokenizer.encode(" ")
    assert masks.id("<|channel|>") in start and space[0] in start  # a header, or the recipient in the role
    assert not start & {masks.id(name) for name in ("<|end|>", "<|return|>", "<|call|>", "<|message|>")}
    masks.free_text_up_to(held, "<|channel|>analysis<|message|>Thinking", "<|end|>")
    masks.free_text_up_to(held, "<|channel|>final<|message|>It is sunny", "<|return|>")
    masks.free_text_up_to(held, "<|channel|>commentary<|message|>Checking", "<|end|>")
    assert masks.fed(held, "<|channel|>final<|message|>It is sunny.<|return|>").complete
    preamble = "<|channel|>analysis<|message|>Hm." + MORE + "<|channel|>commentary<|message|>Checking." + MORE
    assert masks.schema_at(held, preamble + CALL_WX, WEATHER)
    role_form = " to=functions.wx<|channel|>commentary json<|message|>"  # the recipient first, as templates render
    assert masks.schema_at(held, role_form, WEATHER)
    assert masks.schema_at(held, preamble + " to=functions.wx<|channel|>commentary <|constrain|>json<|message|>",
                           WEATHER)
    assert masks.schema_at(held, CALL_TZ, {"type": "object"})  # not strict: any object
    assert masks.schema_at(held, " to=functions.tz<|channel|>commentary json<|message|>", {"type": "object"})
    assert masks.fed(held, CALL_WX + '{"city":"rome","days":1}<|call|>').complete
    for wrong in (CALL_WX + '{"city":"paris"', role_form + '{"days":3}', "<|channel|>commentary to=functions.nope ",
                  "<|channel|>commentary to=browser.search", " to=browser.search", "<|channel|>final<|message|>Hi<|call|>",
                  "<|channel|>analysis<|message|>Hm.<|return|>", "<|channel|>draft<|message|>"):
        assert not masks.accepts(held, wrong), wrong


def test_allowed_tools_in_auto_mode_call_only_those(masks: Masks) -> None:
    held = held_calls(TOOLS, frozenset({"tz"}))
    assert held is not None
    assert masks.fed(held, CALL_TZ + '{"any":[1]}<|call|>').complete
    assert masks.fed(held, "<|channel|>final<|message|>No call.<|return|>").complete
    for wrong in ("<|channel|>commentary to=functions.w", " to=functions.w"):
        assert not masks.accepts(held, wrong), wrong


def test_a_forced_custom_tool_keeps_its_raw_input_grammar() -> None:
    from engine.custom_tools import CustomTool

    patch = CustomTool("patch", None, "text")
    forced = forced_tools({"type": "function", "function": {"name": "patch"}}, [patch.as_function()], None,
                          {"patch": patch})
    assert not in_harmony(forced) and in_harmony(forced_tools("required", TOOLS, None)) and in_harmony(None)
