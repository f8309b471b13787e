"""Tokenizer: a thin wrapper over a local `tokenizer.json` (the `tokenizers` library) that also reads
special tokens and the chat template from `tokenizer_config.json` / `chat_template.jinja`, and renders
that template with a sandboxed jinja2 environment set up the way transformers sets it up."""

from __future__ import annotations

import json
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer as HFTokenizer

# `tokenizers`' `encode` holds the GIL while it runs, so a long prompt tokenized on a worker thread
# still stops every other thread, the event loop included (4.3 s for 7 MB of text on a Zen 2 VM);
# `encode_batch` lets it go. Short texts keep `encode`, which costs less to call.
GIL_FREE_ENCODE_CHARS = 32 << 10


class Tokenizer:
    def __init__(self, model_dir: str | Path) -> None:
        model_dir = Path(model_dir)
        self.model_dir = model_dir
        self._tok = HFTokenizer.from_file(str(model_dir / "tokenizer.json"))
        self._config = _read_json(model_dir / "tokenizer_config.json")
        self.bos_token = _token_text(self._config.get("bos_token"))
        self.eos_token = _token_text(self._config.get("eos_token"))
        self.pad_token = _token_text(self._config.get("pad_token"))
        self.unk_token = _token_text(self._config.get("unk_token"))
        # Named templates ("default", "tool_use", ...); a plain template is stored as "default".
        self.chat_templates = _read_chat_templates(model_dir, self._config)

    @property
    def chat_template(self) -> str | None:
        return self.chat_templates.get("default") or next(iter(self.chat_templates.values()), None)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @cached_property
    def added_tokens(self) -> frozenset[str]:
        """The added tokens' texts, special or not (a grammar matches each as one token: engine/held_calls.py)."""
        return frozenset(token.content for token in self._tok.get_added_tokens_decoder().values())

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tok.id_to_token(token_id)

    @property
    def bos_token_id(self) -> int | None:
        return self.token_to_id(self.bos_token) if self.bos_token else None

    @property
    def bos(self) -> int | None:
        """Alias of `bos_token_id`."""
        return self.bos_token_id

    @cached_property
    def eos_token_ids(self) -> tuple[int, ...]:
        """The tokenizer's eos token plus every eos id from generation_config.json / config.json."""
        ids: list[int] = []
        if self.eos_token and (eos_id := self.token_to_id(self.eos_token)) is not None:
            ids.append(eos_id)
        for name in ("generation_config.json", "config.json"):
            value = _read_json(self.model_dir / name).get("eos_token_id")
            for token_id in [value] if isinstance(value, int) else value or []:
                if token_id not in ids:
                    ids.append(token_id)
        return tuple(ids)

    def to_json(self) -> str:
        """The tokenizer.json text (what other libraries, e.g. llguidance, build their own view from)."""
        return self._tok.to_str()

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Off by default: chat templates already render the BOS token themselves."""
        if len(text) > GIL_FREE_ENCODE_CHARS:  # the same tokens, without holding the GIL (above)
            return self._tok.encode_batch([text], add_special_tokens=add_special_tokens)[0].ids
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(token_ids, skip_special_tokens=skip_special_tokens)

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        **extra: Any,
    ) -> str:
        source = (tools and self.chat_templates.get("tool_use")) or self.chat_template
        if not source:
            raise ValueError(f"{self.model_dir} has no chat_template")
        template = _compile(source)
        return template.render(
            messages=messages,
            tools=tools,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "",
            eos_token=self.eos_token or "",
            pad_token=self.pad_token or "",
            unk_token=self.unk_token or "",
            **extra,
        )


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys: bool = False
) -> str:
    # jinja's own tojson HTML-escapes; templates expect plain JSON (as transformers renders it).
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


_compiled: dict[str, jinja2.Template] = {}


def _compile(source: str) -> jinja2.Template:
    if source not in _compiled:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        _compiled[source] = env.from_string(source)
    return _compiled[source]


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _token_text(value: str | dict | None) -> str | None:
    # Older tokenizer_config files store special tokens as serialized AddedToken dicts.
    return value.get("content") if isinstance(value, dict) else value


def _read_chat_templates(model_dir: Path, config: dict) -> dict[str, str]:
    jinja_file = model_dir / "chat_template.jinja"  # transformers 5 saves the template beside the config
    if jinja_file.exists():
        return {"default": jinja_file.read_text()}
    template = config.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
        return {t["name"]: t["template"] for t in template}
    return {"default": template} if template else {}
