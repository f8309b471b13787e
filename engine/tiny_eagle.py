"""Tiny EAGLE heads for a tiny Llama target (engine/tiny_model.py), in EAGLE's checkpoint layout: config.json
(the target's, one layer) and model.safetensors with `fc.weight`, `layers.0.*` (no input norm) and, with
`embed`, the target's `embed_tokens.weight`. `make_tiny_eagle_head` writes random weights (drafts that
rarely hold); `train_eagle_head` fits one on the target's own greedy continuations, as EAGLE is trained:
teacher-forced on the target's features, a cross-entropy on the next token through the target's lm_head
plus a regression on the next feature. The training body is transformers' own Llama layer, so the engine's
head (engine/eagle_head.py) is checked against another implementation of the same checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn


def _head_body(target_dir: Path, seed: int) -> tuple[nn.Module, nn.Linear, dict]:
    """transformers' one-layer LlamaModel with EAGLE's changes (no input norm, no final norm), and the fc."""
    from transformers import LlamaConfig, LlamaModel

    config = json.loads((target_dir / "config.json").read_text()) | {"num_hidden_layers": 1}
    torch.manual_seed(seed)
    body = LlamaModel(LlamaConfig(**config))
    body.layers[0].input_layernorm = nn.Identity()
    body.norm = nn.Identity()
    hidden = config["hidden_size"]
    return body, nn.Linear(2 * hidden, hidden, bias=False), config


def training_body(target_dir: str | Path, head_dir: str | Path) -> tuple[nn.Module, nn.Linear]:
    """The head in `head_dir` as transformers' layer runs it (the body it is trained as), with its fc."""
    from safetensors.torch import load_file

    body, fc, _ = _head_body(Path(target_dir), 0)
    weights = load_file(str(Path(head_dir) / "model.safetensors"))
    body.load_state_dict({k: v for k, v in weights.items() if k.startswith("layers.")}, strict=False)
    fc.load_state_dict({"weight": weights["fc.weight"]})
    return body.eval(), fc


def _save(out_dir: Path, body: nn.Module, fc: nn.Linear, config: dict, embed: torch.Tensor | None) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = {name: t.detach().contiguous() for name, t in body.state_dict().items() if name.startswith("layers.")}
    weights["fc.weight"] = fc.weight.detach().contiguous()
    if embed is not None:
        weights["embed_tokens.weight"] = embed.detach().contiguous()
    save_file(weights, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    (out_dir / "config.json").write_text(json.dumps(config | {"architectures": ["LlamaForCausalLM"]}, indent=2))
    return out_dir


def make_tiny_eagle_head(target_dir: str | Path, out_dir: str | Path, seed: int = 0, embed: bool = False) -> Path:
    """A random head for the target in `target_dir`; with `embed`, carrying the target's embedding table."""
    from transformers import LlamaForCausalLM

    body, fc, config = _head_body(Path(target_dir), seed)
    table = LlamaForCausalLM.from_pretrained(target_dir).model.embed_tokens.weight if embed else None
    return _save(Path(out_dir), body, fc, config, table)


def greedy_continuations(target: nn.Module, prompts: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """[batch, prompt + new_tokens]: each prompt and the target's greedy continuation (its end token held off)."""
    with torch.no_grad():
        return target.generate(prompts, attention_mask=torch.ones_like(prompts), do_sample=False,
                               max_new_tokens=new_tokens, min_new_tokens=new_tokens)


def random_prompts(count: int, length: int, vocab: int, seed: int = 0) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (count, length), generator=generator).tolist()


def train_eagle_head(target_dir: str | Path, out_dir: str | Path, prompts: list[list[int]], new_tokens: int = 48,
                     steps: int = 120, seed: int = 0, lr: float = 3e-3) -> Path:
    """A head fitted to the target's greedy continuations of `prompts` (all of one length): a few seconds on a
    CPU for a few dozen prompts. A random target's continuations follow no pattern a head could learn from
    so little, so it is these prompts' continuations that its drafts get right."""
    from transformers import LlamaForCausalLM

    target = LlamaForCausalLM.from_pretrained(target_dir).eval().requires_grad_(False)
    tokens = greedy_continuations(target, torch.tensor(prompts), new_tokens)
    with torch.no_grad():
        features = target.model(tokens).last_hidden_state  # after the final norm: what lm_head reads
        embeds = target.model.embed_tokens(tokens)
    body, fc, config = _head_body(Path(target_dir), seed)
    optimizer = torch.optim.AdamW([*body.parameters(), *fc.parameters()], lr=lr)
    # Row j reads token j + 1 and feature j; it predicts feature j + 1 and, through lm_head, token j + 2.
    inputs = torch.cat([embeds[:, 1:-1], features[:, :-2]], dim=-1)
    for _ in range(steps):
        out = body(inputs_embeds=fc(inputs)).last_hidden_state
        loss = (nn.functional.cross_entropy(target.lm_head(out).flatten(0, 1), tokens[:, 2:].flatten())
                + nn.functional.smooth_l1_loss(out, features[:, 1:-1]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return _save(Path(out_dir), body, fc, config, None)
