"""The tiny model folder is a real Hugging Face model: transformers loads it, our Tokenizer agrees with
transformers' tokenizer (ids and chat template rendering), and generation is reproducible."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from engine.model.config import ModelConfig
from engine.prompt_tokens import tokenize
from engine.server.protocol import parse_chat
from engine.tiny_model import make_tiny_model
from engine.tokenizer import GIL_FREE_ENCODE_CHARS, Tokenizer

TEXTS = [
    "Return the lowest index in the list where the value is found.",
    "  leading spaces,\ttabs and\nnewlines  ",
    "naïve café — 日本語 🙂 ≈ π",
    "def f(x):\n    return {'a': [1, 2, 3]}",
]

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
        ],
    },
    {"role": "tool", "tool_call_id": "c1", "content": "sunny, 21°C"},
]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]


def test_loads_in_transformers(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert type(model).__name__ == "LlamaForCausalLM"
    config = ModelConfig.from_dir(tiny_model_dir)
    assert sum(p.numel() for p in model.parameters()) == config.num_params()
    hf_tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert len(hf_tokenizer) == config.vocab_size
    assert hf_tokenizer.eos_token == "<|end|>"
    logits = model(torch.tensor([hf_tokenizer.encode("hello world")])).logits
    assert logits.shape[-1] == config.vocab_size
    assert logits[0, -1].std() > 0.5  # a spread-out distribution, not near-uniform noise


def test_tokenizer_matches_transformers_and_round_trips(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    ours = Tokenizer(tiny_model_dir)
    theirs = AutoTokenizer.from_pretrained(tiny_model_dir)
    for text in TEXTS:
        ids = ours.encode(text)
        assert ids == theirs.encode(text, add_special_tokens=False)
        assert ours.decode(ids) == text
    assert len(ours.encode(TEXTS[0])) < len(TEXTS[0]) / 2  # real merges, not bytes
    assert ours.bos_token == "<|begin|>" and ours.bos == ours.token_to_id("<|begin|>")
    assert ours.eos_token_ids == (ours.token_to_id("<|end|>"),)
    assert ours.vocab_size == 1024
    # Tool-call markers are single, ordinary tokens: they survive skip_special_tokens.
    call = ours.encode('<tool_call>{"name": "f"}</tool_call><|end|>')
    assert call[0] == ours.token_to_id("<tool_call>")
    assert ours.decode(call) == '<tool_call>{"name": "f"}</tool_call>'


def test_a_long_prompt_is_tokenized_alike_and_lets_other_threads_run(tiny_model_dir: Path) -> None:
    """Past GIL_FREE_ENCODE_CHARS the tokenizer gives the GIL up while it works (a server tokenizes
    long prompts on a worker thread, and held, the GIL stopped the event loop for seconds): the same
    ids as transformers', while another Python thread counts on."""
    from transformers import AutoTokenizer

    ours, theirs = Tokenizer(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)
    text = " ".join(TEXTS) * 6000  # ~900 KB: a few hundred ms of tokenizing
    assert len(text) > GIL_FREE_ENCODE_CHARS
    encoding, counted = threading.Event(), [0]

    def count() -> None:
        encoding.wait()
        while encoding.is_set():
            counted[0] += 1
            time.sleep(0)  # hands the GIL back at once

    counter = threading.Thread(target=count)
    counter.start()
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1.0)  # the counter then runs only where this thread gives the GIL up itself
    try:
        encoding.set()
        ids = ours.encode(text)
        during = counted[0]  # read before the counter can run again
        encoding.clear()
    finally:
        sys.setswitchinterval(interval)
    counter.join()
    assert ids == theirs.encode(text, add_special_tokens=False)
    assert during > 0, "no other thread ran while the prompt was tokenized"


def test_chat_template_renders_like_transformers(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    ours = Tokenizer(tiny_model_dir)
    theirs = AutoTokenizer.from_pretrained(tiny_model_dir)
    for messages, tools, generation_prompt in [
        (MESSAGES, TOOLS, True),
        (MESSAGES[1:2], None, True),
        (MESSAGES[:2], None, False),
        (MESSAGES[1:], TOOLS, True),
    ]:
        rendered = ours.apply_chat_template(messages, tools=tools, add_generation_prompt=generation_prompt)
        expected = theirs.apply_chat_template(
            messages, tools=tools, add_generation_prompt=generation_prompt, tokenize=False
        )
        assert rendered == expected
    full = ours.apply_chat_template(MESSAGES, tools=TOOLS)
    assert full.startswith("<|begin|><|start|>system\nYou are terse.\n\n# Tools\n")
    assert '{"name": "get_weather", "description": "Current weather for a city"' in full
    assert '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call><|end|>' in full
    assert "<|start|>tool\nsunny, 21°C<|end|>\n" in full
    assert full.endswith("<|start|>assistant\n")
    parts = ours.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}])
    assert "<|start|>user\nab<|end|>" in parts


def test_template_errors_surface(tiny_model_dir: Path, tmp_path: Path) -> None:
    import jinja2

    for name in ("tokenizer.json", "config.json"):
        (tmp_path / name).write_bytes((tiny_model_dir / name).read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(
        '{"eos_token": "<|end|>", "chat_template": "{{ raise_exception(\'no \' + messages[0].role) }}"}'
    )
    with pytest.raises(jinja2.exceptions.TemplateError, match="no user"):
        Tokenizer(tmp_path).apply_chat_template([{"role": "user", "content": "x"}])


def test_same_seed_same_bytes_other_seed_other_weights(tiny_model_dir: Path, tmp_path: Path) -> None:
    again = make_tiny_model(tmp_path / "again")
    for name in ("model.safetensors", "tokenizer.json", "config.json", "tokenizer_config.json"):
        assert (again / name).read_bytes() == (tiny_model_dir / name).read_bytes(), name
    # A vocabulary beyond what the corpus can merge is topped up with reserved special tokens.
    other = make_tiny_model(tmp_path / "other", layers=1, hidden=32, heads=2, kv_heads=1, vocab_size=12000, seed=1)
    config = ModelConfig.from_dir(other)
    assert (config.num_layers, config.hidden_size, config.num_kv_heads, config.vocab_size) == (1, 32, 1, 12000)
    tokenizer = Tokenizer(other)
    assert tokenizer.vocab_size == 12000
    assert tokenizer.id_to_token(11999).startswith("<|reserved_") and tokenizer.decode([11999]) == ""
    assert (other / "model.safetensors").read_bytes() != (again / "model.safetensors").read_bytes()


@pytest.mark.parametrize("messages", [2, 200])
def test_a_long_chat_is_rendered_off_the_event_loop_to_the_same_ids(tiny_model_dir: Path, messages: int) -> None:
    """A chat of more than 64 messages is rendered (jinja, Python) on a worker thread; a short one on
    the loop. Either way the ids are those of the template rendered and tokenized in one piece."""
    tokenizer = Tokenizer(tiny_model_dir)
    threads: list[str] = []

    class Engine:  # what tokenize() uses of an AsyncEngine
        def __init__(self) -> None:
            self.tokenizer = self

        def apply_chat_template(self, *args: object, **kwargs: object) -> str:
            threads.append(threading.current_thread().name)
            return tokenizer.apply_chat_template(*args, **kwargs)  # type: ignore[arg-type]

        def encode(self, text: str) -> list[int]:
            return tokenizer.encode(text)

    chat = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i}"} for i in range(messages - 1)]
    chat.append({"role": "user", "content": "and now?"})
    parsed = parse_chat({"model": "tiny", "messages": chat})
    [ids] = asyncio.run(tokenize(Engine(), parsed))  # type: ignore[arg-type]
    assert ids == tokenizer.encode(tokenizer.apply_chat_template(chat, add_generation_prompt=True))
    on_loop = threads == [threading.main_thread().name]
    assert on_loop == (messages <= 64), threads
