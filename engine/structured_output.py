"""Structured outputs: an answer held to a JSON schema, to any JSON object, to a regex, to a context-free
grammar (Lark or GBNF) or to one of a list of strings. At every step the tokens the grammar does not
allow next are masked out of the logits, so even a random model writes text that parses; the grammar
also ends the answer once it is complete.

Grammars and masks come from llguidance (the library behind vLLM's `guidance` backend): one tokenizer
view per engine, built once; a matcher per sequence, advanced by each token it samples. JSON is
compact (no free whitespace between tokens), as a model's answer is best kept: a model free to write
whitespace can fill max_tokens with it."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from functools import cache, lru_cache
from typing import TYPE_CHECKING, Any, Literal

from engine.sampling_params import InvalidRequestError

if TYPE_CHECKING:
    import llguidance
    import torch

ConstraintKind = Literal["json_object", "json_schema", "regex", "choice", "grammar"]
_JSON_OPTIONS = {"whitespace_flexible": False}


@dataclass(frozen=True)
class OutputConstraint:
    """What the answer must match, as llguidance's grammar text; `param` names the request field."""

    kind: ConstraintKind
    grammar: str
    param: str = "response_format"

    @classmethod
    def json_schema(cls, schema: dict, param: str = "response_format") -> OutputConstraint:
        import llguidance

        try:
            return cls("json_schema", llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=_JSON_OPTIONS),
                       param)
        except ValueError as exc:
            raise InvalidRequestError(f"the JSON schema is not usable: {exc}", param) from None

    @classmethod
    def json_object(cls, param: str = "response_format") -> OutputConstraint:
        constraint = cls.json_schema({"type": "object"}, param)
        return cls("json_object", constraint.grammar, param)

    @classmethod
    def regex(cls, pattern: str, param: str) -> OutputConstraint:
        import llguidance

        return cls("regex", llguidance.LLMatcher.grammar_from_regex(pattern), param)

    @classmethod
    def grammar(cls, text: str, param: str) -> OutputConstraint:
        """A context-free grammar in Lark's syntax (llguidance's), or in llama.cpp's GBNF, converted."""
        from llguidance.gbnf_to_lark import GbnfToLarkError, any_to_lark

        try:
            lark = any_to_lark(text)
        except GbnfToLarkError as exc:
            raise InvalidRequestError(f"the grammar is neither Lark nor GBNF: {exc}", param) from None
        import llguidance

        return cls("grammar", llguidance.LLMatcher.grammar_from_lark(lark), param)

    def after_thinking(self, inside: bool) -> OutputConstraint:
        """The same answer after an optional `<think>` block, free text up to `</think>` (one the prompt
        already opened when `inside`): a reasoning model thinks freely, then answers in the grammar, as
        vLLM arms its grammar at `</think>` (engine/reasoning.py splits the two)."""
        grammars = self._grammars()
        answer = grammars[0].get("name") or "answer"
        grammars[0] = {**grammars[0], "name": answer}
        body = 'thought[stop="</think>"]: /(.|\\n)*/'
        lark = (f"start: thought /[ \\t\\n]*/ @{answer}\n{body}\n" if inside else
                f'start: thinking? @{answer}\nthinking: "<think>" thought /[ \\t\\n]*/\n{body}\n')
        top = {"grammars": [{"name": "pitstop_thinking", "lark_grammar": lark}, *grammars], "max_tokens": None}
        return replace(self, grammar=json.dumps(top))

    def in_harmony_final(self) -> OutputConstraint:
        """The same answer as gpt-oss's Harmony final message (engine/harmony.py): any analysis messages,
        free text up to `<|end|>` each, then `<|channel|>final<|message|>`, the answer's grammar and
        `<|return|>` (the prompt ends at `<|start|>assistant`). The `<|...|>` are the special tokens
        themselves, which free text cannot hold, so a thought ends only at its `<|end|>`."""
        grammars = self._grammars()
        answer = grammars[0].get("name") or "answer"
        grammars[0] = {**grammars[0], "name": answer}
        lark = (f'start: analysis* <|channel|> "final" <|message|> @{answer} <|return|>\n'
                'analysis: <|channel|> "analysis" <|message|> /(.|\\n)*/ <|end|> <|start|> "assistant"\n')
        top = {"grammars": [{"name": "pitstop_harmony", "lark_grammar": lark}, *grammars], "max_tokens": None}
        return replace(self, grammar=json.dumps(top))

    def _grammars(self) -> list[dict]:
        """llguidance's list of grammars this one is, its entry first."""
        try:
            return list(json.loads(self.grammar)["grammars"])  # llguidance's top-level grammar (JSON, regex)
        except (ValueError, KeyError, TypeError):
            return [{"lark_grammar": self.grammar}]  # Lark text (grammars, choices)

    @classmethod
    def alternatives(cls, options: list[tuple[str, OutputConstraint]], param: str) -> OutputConstraint:
        """An answer that is one of `options`: its literal prefix, then what its constraint allows (a forced
        call of a function or of one of several custom tools: engine/forced_tools.py)."""
        grammars, refs = [], []
        for i, (prefix, constraint) in enumerate(options):
            own = constraint._grammars()
            own[0] = {**own[0], "name": f"option_{i}"}
            grammars += own
            refs.append(f"{json.dumps(prefix)} @option_{i}" if prefix else f"@option_{i}")
        top = {"grammars": [{"name": "pitstop_options", "lark_grammar": "start: " + " | ".join(refs)}, *grammars],
               "max_tokens": None}
        return cls("grammar", json.dumps(top), param)

    @classmethod
    def choice(cls, options: list[str], param: str) -> OutputConstraint:
        import llguidance

        # Lark string literals take JSON's escapes: any option, quotes and newlines included, is literal.
        return cls("choice", llguidance.LLMatcher.grammar_from_lark(
            "start: " + " | ".join(json.dumps(option) for option in options)), param)


def constraint_from_fields(response_format: Any, structured_outputs: Any) -> OutputConstraint | None:
    """OpenAI's `response_format` (text, json_object, json_schema) or vLLM's `structured_outputs`
    (json, regex, choice, grammar, json_object); InvalidRequestError for anything else."""
    if response_format is not None and structured_outputs is not None:
        raise InvalidRequestError("send one of 'response_format' and 'structured_outputs'", "structured_outputs")
    if structured_outputs is not None:
        return _vllm_constraint(structured_outputs)
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return OutputConstraint.json_object()
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema", {}) if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise InvalidRequestError("'response_format.json_schema' must be {\"name\", \"schema\": {...}}",
                                      "response_format")
        return OutputConstraint.json_schema(schema)
    raise InvalidRequestError("'response_format' must be {\"type\": \"text\"}, {\"type\": \"json_object\"} or "
                              "{\"type\": \"json_schema\", \"json_schema\": {...}}", "response_format")


def _vllm_constraint(fields: Any) -> OutputConstraint:
    param = "structured_outputs"
    given = {k: v for k, v in fields.items() if v not in (None, False)} if isinstance(fields, dict) else None
    if not given or len(given) != 1 or not set(given) <= {"json", "regex", "choice", "grammar", "json_object"}:
        raise InvalidRequestError("'structured_outputs' takes one of json (a schema), regex, choice, grammar (Lark "
                                  "or GBNF) or json_object", param)
    (kind, value), = given.items()
    if kind == "json_object":
        return OutputConstraint.json_object(param)
    if kind == "json":
        try:
            schema = json.loads(value) if isinstance(value, str) else value
        except ValueError:
            schema = None
        if not isinstance(schema, dict):
            raise InvalidRequestError("'structured_outputs.json' must be a JSON schema", param)
        return OutputConstraint.json_schema(schema, param)
    if kind in ("regex", "grammar"):
        if not isinstance(value, str) or not value:
            raise InvalidRequestError(f"'structured_outputs.{kind}' must be a non-empty string", param)
        return OutputConstraint.regex(value, param) if kind == "regex" else OutputConstraint.grammar(value, param)
    if not (isinstance(value, list) and value and all(isinstance(c, str) and c for c in value)):
        raise InvalidRequestError("'structured_outputs.choice' must be a list of non-empty strings", param)
    return OutputConstraint.choice(value, param)


@lru_cache(maxsize=8)
def shared_compiler(tokenizer_json: str, vocab_size: int, eos_token_ids: tuple[int, ...]) -> GrammarCompiler:
    """One compiler per tokenizer, shared by the engines that load it: llguidance's view of a 128k
    vocabulary takes about a second to build (matchers are per sequence, so sharing is safe)."""
    return GrammarCompiler(tokenizer_json, vocab_size, eos_token_ids)


class GrammarCompiler:
    """One engine's grammar side: its tokenizer as llguidance sees it (the model's vocabulary, which may
    be larger than the tokenizer's: those ids are never allowed) and its EOS ids. A grammar is compiled
    once, when its request is checked (off the event loop), into a matcher kept as a template: each
    sequence starts from a copy (microseconds), so the engine's step thread never compiles."""

    MAX_TEMPLATES = 64

    def __init__(self, tokenizer_json: str, vocab_size: int, eos_token_ids: tuple[int, ...]) -> None:
        import llguidance

        self.vocab_size = vocab_size
        self._tokenizer = llguidance.LLTokenizer(tokenizer_json, n_vocab=vocab_size,
                                                 eos_token=list(eos_token_ids) or None)
        self._executor = llguidance.LLExecutor()  # fills many rows' masks at once, on its own threads
        self._templates: OrderedDict[str, llguidance.LLMatcher] = OrderedDict()
        self._lock = threading.Lock()  # checks run on worker threads, matchers are made on the engine's

    def check(self, constraint: OutputConstraint) -> None:
        """InvalidRequestError (a 400) naming what is wrong with the grammar, before any work starts."""
        self._template(constraint)

    def matcher(self, constraint: OutputConstraint) -> GrammarMatcher:
        return GrammarMatcher(self._template(constraint).deep_copy(), self._executor)

    def _template(self, constraint: OutputConstraint) -> llguidance.LLMatcher:
        import llguidance

        with self._lock:
            template = self._templates.get(constraint.grammar)
            if template is not None:
                self._templates.move_to_end(constraint.grammar)
                return template
        template = llguidance.LLMatcher(self._tokenizer, constraint.grammar, log_level=0)
        if template.is_error():
            raise InvalidRequestError(f"the {_WHAT[constraint.kind]} cannot be used: {template.get_error()}",
                                      constraint.param)
        with self._lock:
            self._templates[constraint.grammar] = template
            if len(self._templates) > self.MAX_TEMPLATES:
                self._templates.popitem(last=False)
        return template


_WHAT = {"json_object": "JSON grammar", "json_schema": "JSON schema", "regex": "regex", "choice": "list of choices",
         "grammar": "grammar"}


class GrammarMatcher:
    """One sequence's place in its grammar."""

    def __init__(self, matcher: llguidance.LLMatcher, executor: llguidance.LLExecutor) -> None:
        self._matcher = matcher
        self._executor = executor

    def consume(self, token_id: int) -> bool:
        """Advance by a sampled token; False when the grammar did not allow it (the matcher is then spent)."""
        return self._matcher.consume_token(token_id)

    def valid_prefix(self, tokens: list[int]) -> int:
        """How many of `tokens`, in order, the grammar allows from here (nothing is consumed)."""
        return self._matcher.validate_tokens(tokens)

    @property
    def complete(self) -> bool:
        """Nothing may follow: the answer is whole."""
        return self._matcher.is_stopped()

    @property
    def error(self) -> str | None:
        return self._matcher.get_error() if self._matcher.is_error() else None


def mask_disallowed(logits: torch.Tensor, matchers: list[GrammarMatcher | None],
                    drafts: list[list[int]] | None = None) -> None:
    """In place: -inf for every token row i's grammar does not allow next (rows without one untouched).

    `drafts[i]`, for a row with a grammar: draft tokens (engine/speculation.py) the grammar allows, whose
    rows follow row i, one after each; each of those is masked as the grammar stands after the drafts
    before it (llguidance advances the matcher through them and rolls it back)."""
    import torch

    rows = []
    entries = []
    for i, matcher in enumerate(matchers):
        if matcher is not None:
            after = drafts[i] if drafts else []
            entries.append((matcher, len(rows), after))
            rows += range(i, i + len(after) + 1)
    if not rows:
        return
    vocab, words = logits.shape[1], (logits.shape[1] + 31) // 32
    # All ones where nothing is written: a draft row past the grammar's end is never kept (the answer
    # ends at the token that completes it), so it needs no mask.
    bitmask = torch.full((len(rows), words), -1, dtype=torch.int32)
    executor = entries[0][0]._executor
    if drafted := [(m._matcher, k, after) for m, k, after in entries if after]:
        executor.unsafe_compute_mask_ptr_with_draft_token(drafted, bitmask.data_ptr(), words * 4, len(rows))
    if undrafted := [(m._matcher, k) for m, k, after in entries if not after]:
        executor.unsafe_compute_mask_ptr(undrafted, bitmask.data_ptr(), words * 4, len(rows))
    # Bit b of little-endian byte j is token 8j + b: a table of 256 bytes x 8 bits turns the mask into
    # 0 / -inf addends, one lookup per byte (shifting every word 32 ways and a boolean masked_fill_ took
    # 5 ms a step for 32 rows of a 32,000-token vocabulary on one core; this, under 1).
    addends = torch.nn.functional.embedding(bitmask.view(torch.uint8).long().to(logits.device),
                                            _bit_addends(logits.device, logits.dtype))
    addends = addends.reshape(len(rows), words * 32)[:, :vocab]
    if len(rows) == logits.shape[0]:
        logits.add_(addends)
    else:
        logits.index_add_(0, torch.tensor(rows, device=logits.device), addends)


@cache
def _bit_addends(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """[256, 8]: for each byte value, 0 for its set bits (lowest first) and -inf for its clear ones."""
    import torch

    clear = (torch.arange(256)[:, None] >> torch.arange(8)) & 1 == 0
    return torch.zeros(256, 8, dtype=dtype).masked_fill_(clear, -torch.inf).to(device)
