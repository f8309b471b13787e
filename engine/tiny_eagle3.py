"""Tiny EAGLE-3 heads for a tiny Llama target (engine/tiny_model.py), in EAGLE-3's own checkpoint layout
(config.json with architectures LlamaForCausalLMEigen3, `draft_vocab_size` and the auxiliary layer ids;
model.safetensors with `fc.weight` [hidden, 3 hidden], `midlayer.*` with its 2-hidden-wide q/k/v and
`hidden_norm`, `norm.weight`, a draft-vocabulary `lm_head.weight`, `d2t` and `t2d`).

`make_tiny_eagle3_head` writes random weights; `train_eagle3_head` fits one on the target's own greedy
continuations as EAGLE-3 is trained: the draft vocabulary is the continuations' most frequent tokens, the
loss a cross-entropy on the next token (no feature regression), and besides the teacher-forced pass a second
one that reads the head's own outputs as features ("training-time test"), as its later drafts do. The body
is transformers' Llama attention, MLP and norms, widened as EAGLE-3's code widens them."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn


class TrainingHead(nn.Module):
    """EAGLE-3's head over whole sequences (causal, positions from 0), for training."""

    def __init__(self, config: dict, draft_vocab: int) -> None:
        from transformers import LlamaConfig
        from transformers.models.llama import modeling_llama

        super().__init__()
        llama = LlamaConfig(**config)
        llama._attn_implementation = "sdpa"
        hidden, q, kv = llama.hidden_size, llama.num_attention_heads, llama.num_key_value_heads
        head_dim = hidden // q
        self.fc = nn.Linear(3 * hidden, hidden, bias=False)
        self.midlayer = modeling_llama.LlamaDecoderLayer(llama, 0)
        attention = self.midlayer.self_attn
        attention.q_proj = nn.Linear(2 * hidden, q * head_dim, bias=False)
        attention.k_proj = nn.Linear(2 * hidden, kv * head_dim, bias=False)
        attention.v_proj = nn.Linear(2 * hidden, kv * head_dim, bias=False)
        self.midlayer.hidden_norm = modeling_llama.LlamaRMSNorm(hidden, llama.rms_norm_eps)
        self.norm = modeling_llama.LlamaRMSNorm(hidden, llama.rms_norm_eps)
        self.lm_head = nn.Linear(hidden, draft_vocab, bias=False)
        self.rotary = modeling_llama.LlamaRotaryEmbedding(llama)

    def forward(self, embeds: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """[B, T, hidden] outputs before the final norm, row j reading embeds[j] and features[j]."""
        layer = self.midlayer
        x = torch.cat([layer.input_layernorm(embeds), layer.hidden_norm(features)], dim=-1)
        cos_sin = self.rotary(x, torch.arange(x.shape[1])[None])
        hidden = features + layer.self_attn(hidden_states=x, position_embeddings=cos_sin, attention_mask=None)[0]
        return hidden + layer.mlp(layer.post_attention_layernorm(hidden))


def _head_config(target_dir: Path, draft_vocab: int, aux_layer_ids: list[int] | None) -> dict:
    config = json.loads((target_dir / "config.json").read_text()) | {"num_hidden_layers": 1}
    config |= {"architectures": ["LlamaForCausalLMEigen3"], "draft_vocab_size": draft_vocab}
    if aux_layer_ids is not None:
        config["eagle_config"] = {"eagle_aux_hidden_state_layer_ids": aux_layer_ids}
    return config


def _save(out_dir: Path, head: TrainingHead, config: dict, draft_ids: torch.Tensor) -> Path:
    """`draft_ids`: the target id of each draft id, ascending (d2t holds their offsets, t2d marks them)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = {name: t.detach().contiguous() for name, t in head.state_dict().items() if not name.startswith("rotary")}
    weights["d2t"] = draft_ids - torch.arange(len(draft_ids))
    t2d = torch.zeros(config["vocab_size"], dtype=torch.bool)
    t2d[draft_ids] = True
    weights["t2d"] = t2d
    save_file(weights, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    return out_dir


def make_tiny_eagle3_head(target_dir: str | Path, out_dir: str | Path, draft_vocab: int = 256, seed: int = 0,
                          aux_layer_ids: list[int] | None = None) -> Path:
    """A random head drafting over every fourth target id (`draft_vocab` of them); its config names
    `aux_layer_ids`, or none (the default layers)."""
    config = _head_config(Path(target_dir), draft_vocab, aux_layer_ids)
    torch.manual_seed(seed)
    head = TrainingHead(config, draft_vocab)
    for norm in (head.midlayer.input_layernorm, head.midlayer.hidden_norm, head.norm):
        nn.init.uniform_(norm.weight, 0.5, 1.5)  # not all ones: a norm left out shows
    draft_ids = torch.arange(draft_vocab) * (config["vocab_size"] // draft_vocab)
    return _save(Path(out_dir), head, config, draft_ids)


def aux_features(target: nn.Module, tokens: torch.Tensor, layer_ids: list[int]) -> torch.Tensor:
    """[B, T, 3 hidden]: the inputs of the target's layers `layer_ids` (transformers' hidden_states[i])."""
    with torch.no_grad():
        states = target.model(tokens, output_hidden_states=True).hidden_states
    return torch.cat([states[i] for i in layer_ids], dim=-1)


def train_eagle3_head(target_dir: str | Path, out_dir: str | Path, prompts: list[list[int]],
                      aux_layer_ids: list[int], new_tokens: int = 48, steps: int = 150, draft_vocab: int = 256,
                      seed: int = 0, lr: float = 3e-3) -> Path:
    """A head fitted to the target's greedy continuations of `prompts` (all of one length)."""
    from transformers import LlamaForCausalLM

    from engine.tiny_eagle import greedy_continuations

    target = LlamaForCausalLM.from_pretrained(target_dir).eval().requires_grad_(False)
    tokens = greedy_continuations(target, torch.tensor(prompts), new_tokens)
    counts = torch.bincount(tokens[:, len(prompts[0]):].flatten(), minlength=target.config.vocab_size)
    draft_ids = counts.topk(draft_vocab).indices.sort().values  # the most frequent, as EAGLE-3 picks
    to_draft = torch.full((target.config.vocab_size,), -100)  # cross-entropy's ignore index off the draft vocab
    to_draft[draft_ids] = torch.arange(draft_vocab)
    features = aux_features(target, tokens, aux_layer_ids)
    with torch.no_grad():
        embeds = target.model.embed_tokens(tokens)
    config = _head_config(Path(target_dir), draft_vocab, aux_layer_ids)
    torch.manual_seed(seed)
    head = TrainingHead(config, draft_vocab)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr)
    for _ in range(steps):
        # Row j reads token j + 1 and feature j and predicts token j + 2; the second pass's row j reads token
        # j + 2 and the first pass's output at j, predicting token j + 3 (a second draft).
        first = head(embeds[:, 1:-2], head.fc(features[:, :-3]))
        second = head(embeds[:, 2:-1], first)
        loss = sum(nn.functional.cross_entropy(head.lm_head(head.norm(out)).flatten(0, 1),
                                               to_draft[tokens[:, shift:shift + out.shape[1]]].flatten())
                   for out, shift in ((first, 2), (second, 3)))
        optimizer.zero_grad()
        loss.backward()  # type: ignore[union-attr]
        optimizer.step()
    return _save(Path(out_dir), head, config, draft_ids)
