"""gpt-oss's Harmony answers split into OpenAI's `reasoning_content`, `content` and `tool_calls` (vLLM's
`--reasoning-parser openai_gptoss` and `--tool-call-parser openai`; a gpt-oss model is served with both unless
told otherwise). The model writes messages, each a header and a body between special tokens:

    <|channel|>analysis<|message|>thinking...<|end|>
    <|start|>assistant<|channel|>final<|message|>the answer<|return|>
    <|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city": "Oslo"}<|call|>

(the prompt ends with `<|start|>assistant`, so the first header starts at `<|channel|>`; the recipient may also
stand before it, `<|start|>assistant to=functions.NAME<|channel|>commentary json<|message|>`). `<|return|>` and
`<|call|>` end the answer (the checkpoint's generation_config lists them as eos tokens); `<|end|>` only ends a
message.

`HarmonyText` reads the answer's token ids (the special tokens are gone from the detokenized text) and writes
what they say in the conventions the engine's answer parsers already read, so one implementation splits thinking
and streams calls for every model: analysis bodies inside `<think>...</think>` (engine/reasoning.py), a message
to `functions.NAME` as `<tool_call>{"name": NAME, "arguments": BODY}</tool_call>` (the `hermes` parser,
engine/tool_parsers.py and engine/call_stream.py, which stream its arguments as they are written), final and
commentary bodies as the content. A body's text is decoded as a whole and sent as it grows, so a character
split across tokens goes out once complete."""

from __future__ import annotations

import json
import re
from dataclasses import replace

from engine.outputs import RequestOutput
from engine.tokenizer import Tokenizer

REASONING_PARSER = "openai_gptoss"
TOOL_CALL_PARSER = "openai"
# The parsers the translated text is read with.
INNER_REASONING, INNER_TOOLS = "think", "hermes"
SPECIALS = ("<|start|>", "<|channel|>", "<|constrain|>", "<|message|>", "<|end|>", "<|call|>", "<|return|>")
ENDS = ("<|end|>", "<|call|>", "<|return|>")
_RECIPIENT = re.compile(r"\bto=(\S+)")
_INCOMPLETE = "\ufffd"  # what decoding shows for a character whose bytes have not all arrived


def parsers_for(model_type: str, reasoning_parser: str | None, tool_call_parser: str | None) -> tuple[str | None, str | None]:
    """The server's parsers: a gpt-oss model's default to Harmony's."""
    if model_type == "gpt_oss":
        return reasoning_parser or REASONING_PARSER, tool_call_parser or TOOL_CALL_PARSER
    return reasoning_parser, tool_call_parser


def check_tokenizer(tokenizer: Tokenizer | None) -> None:
    """Harmony's parsers read special tokens: a model whose tokenizer lacks them is refused at start."""
    missing = [name for name in SPECIALS if tokenizer is None or tokenizer.token_to_id(name) is None]
    if missing:
        raise ValueError(f"--reasoning-parser openai_gptoss / --tool-call-parser openai read gpt-oss's Harmony "
                         f"tokens, and this model's tokenizer lacks {', '.join(missing)}")


def is_harmony(reasoning_parser: str | None, tool_call_parser: str | None) -> bool:
    return reasoning_parser == REASONING_PARSER or tool_call_parser == TOOL_CALL_PARSER


class HarmonyText:
    """Feed an answer's token ids in order; each call returns the translated text now certain."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self._names = {tokenizer.token_to_id(name): name for name in SPECIALS}
        self._header: list[int] = []  # the current header's tokens (before <|message|>)
        self._body: list[int] | None = None  # the current body's tokens, None while in a header
        self._sent = 0  # characters of the body's text already sent
        self._kind = ""  # the current body: "analysis", "call" or "content"
        self._thinking = False  # a <think> block is open
        self._spoke = False  # a message has begun (an answer that never opens one is plain text)

    def translated(self, out: RequestOutput) -> RequestOutput:
        """An engine output with its text delta as the translation of its tokens."""
        text = self.feed(out.new_token_ids) + (self.finish(out.finish_reason == "stop") if out.finished else "")
        return replace(out, text_delta=text)

    def feed(self, token_ids: list[int]) -> str:
        out = []
        for token in token_ids:
            name = self._names.get(token)
            if self._body is None:
                if name == "<|message|>":
                    out.append(self._open())
                elif name == "<|start|>":
                    self._header = []
                elif name not in ENDS:
                    self._header.append(token)
                continue
            if name in ENDS:
                out.append(self._body_text(final=True) + self._close())
            elif name is None:
                self._body.append(token)
            # Any other special token inside a body is not text; it is dropped, as the detokenizer drops it.
        out.append(self._body_text(final=False) if self._body is not None else "")
        return "".join(out)

    def finish(self, stopped: bool = True) -> str:
        """The end of the answer: `stopped` at an end token (the engine may not show it), else cut, where a
        call left open is no call. An answer that opened no message is its text as it is."""
        if self._body is not None:
            return self._body_text(final=True) + (self._close() if stopped else "")
        if not self._spoke:
            return self._tokenizer.decode(self._header)
        return ""

    def _open(self) -> str:
        header = self._tokenizer.decode(self._header, skip_special_tokens=False)
        recipient = _RECIPIENT.search(header)
        channel = header.split("<|channel|>", 1)[1] if "<|channel|>" in header else ""
        channel = channel.split("<|constrain|>", 1)[0].split()
        self._body, self._sent, self._header, self._spoke = [], 0, [], True
        prefix = ""
        if recipient is not None:
            self._kind = "call"
            name = recipient.group(1).removeprefix("functions.").split("<|")[0]
            prefix = f'<tool_call>{{"name": {json.dumps(name)}, "arguments": '
        else:
            self._kind = "analysis" if channel[:1] == ["analysis"] else "content"
        if self._kind == "analysis" and not self._thinking:
            self._thinking = True
            return "<think>"
        if self._kind != "analysis" and self._thinking:
            self._thinking = False
            return "</think>" + prefix
        return prefix

    def _body_text(self, final: bool) -> str:
        assert self._body is not None
        text = self._tokenizer.decode(self._body, skip_special_tokens=False)
        end = len(text) if final else len(text.rstrip(_INCOMPLETE))
        new, self._sent = text[self._sent:end], max(self._sent, end)
        return new

    def _close(self) -> str:
        kind, self._body = self._kind, None
        return "}</tool_call>" if kind == "call" else ""
