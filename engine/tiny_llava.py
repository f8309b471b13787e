"""make_tiny_llava: a small random LLaVA (LlavaForConditionalGeneration: a CLIP or SigLIP vision tower, the
two-layer projector, a Llama language model) as a real Hugging Face folder, offline: config.json and safetensors
saved by transformers itself, its tensors named in transformers 5's layout (`model.language_model.*`) or the
older one (`language_model.model.*`, what transformers 5.25's save_pretrained itself writes), the
locally trained tokenizer of engine/tiny_model.py with `<image>` added as a special token, a chat template that
renders image parts as it, and a CLIP image processor config of the tower's small image size. transformers and
the engine both load it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tokenizers import AddedToken

from engine.tiny_model import BOS, CHAT_TEMPLATE, EOS, PAD, train_tokenizer

IMAGE = "<image>"
CHAT_TEMPLATE_WITH_IMAGES = CHAT_TEMPLATE.replace(
    "{%- elif content -%}{%- for part in content if part.type == 'text' -%}{{ part.text }}{%- endfor -%}",
    "{%- elif content -%}{%- for part in content -%}{%- if part.type == 'text' -%}{{ part.text }}"
    "{%- elif part.type == 'image' -%}" + IMAGE + "{%- endif -%}{%- endfor -%}")
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
# transformers 5's tensor names -> the older layout (llava-hf's checkpoints before transformers 4.52).
LEGACY_PREFIXES = {"model.language_model.": "language_model.model.", "lm_head.": "language_model.lm_head.",
                   "model.vision_tower.": "vision_tower.", "model.multi_modal_projector.": "multi_modal_projector."}


def make_tiny_llava(out_dir: str | Path, *, hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                    vocab_size: int = 1024, image_size: int = 28, patch_size: int = 14, vision_hidden: int = 32,
                    vision_layers: int = 2, tower: str = "clip", select_strategy: str = "default",
                    feature_layer: int | list[int] = -2, legacy_layout: bool = False, seed: int = 0) -> Path:
    """Writes the folder and returns its path. An image is (image_size / patch_size)^2 feature tokens (plus CLIP's
    CLS under select_strategy "full", minus one under "default")."""
    import transformers as hf

    if tower not in ("clip", "siglip"):
        raise ValueError("tower must be 'clip' or 'siglip'")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(vocab_size - 1)
    tokenizer.add_special_tokens([AddedToken(IMAGE, special=True, normalized=False)])
    tokenizer.save(str(out / "tokenizer.json"))
    ids = {token: tokenizer.token_to_id(token) for token in (BOS, EOS, PAD, IMAGE)}
    text = {"model_type": "llama", "vocab_size": vocab_size, "hidden_size": hidden, "intermediate_size": 2 * hidden,
            "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
            "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "bos_token_id": ids[BOS],
            "eos_token_id": ids[EOS], "pad_token_id": ids[PAD]}
    vision = {"model_type": f"{tower}_vision_model", "hidden_size": vision_hidden, "intermediate_size": 2 * vision_hidden,
              "num_hidden_layers": vision_layers, "num_attention_heads": 2, "image_size": image_size,
              "patch_size": patch_size}
    config = hf.LlavaConfig(text_config=text, vision_config=vision, image_token_index=ids[IMAGE],
                            vision_feature_layer=feature_layer, vision_feature_select_strategy=select_strategy,
                            image_seq_length=(image_size // patch_size) ** 2, pad_token_id=ids[PAD])
    torch.manual_seed(seed)
    model = _spread(hf.LlavaForConditionalGeneration(config))
    model.save_pretrained(out)
    path = out / "model.safetensors"
    tensors = {_renamed(name, legacy_layout): t.contiguous() for name, t in load_file(str(path)).items()}
    save_file(tensors, str(path), metadata={"format": "pt"})
    _write(out / "generation_config.json", {"bos_token_id": ids[BOS], "eos_token_id": ids[EOS], "pad_token_id": ids[PAD]})
    _write(out / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": BOS, "eos_token": EOS, "pad_token": PAD,
        "image_token": IMAGE, "model_max_length": 2048, "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE_WITH_IMAGES})  # fmt: skip
    _write(out / "preprocessor_config.json", {
        "image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": image_size},
        "crop_size": {"height": image_size, "width": image_size}, "do_resize": True, "do_center_crop": True,
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": CLIP_MEAN,
        "image_std": CLIP_STD, "do_convert_rgb": True, "resample": 3})  # fmt: skip
    return out


def _renamed(name: str, legacy: bool) -> str:
    for new, old in LEGACY_PREFIXES.items():
        source, target = (new, old) if legacy else (old, new)
        if name.startswith(source):
            return target + name.removeprefix(source)
    return name


def _spread(model: torch.nn.Module) -> torch.nn.Module:
    """Weights of unit-scale activations, so greedy answers have no near-ties and images change them."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 1:
                param.normal_(1.0 if "norm" in name else 0.0, 0.3)
            elif "embed_tokens" in name or "position_embedding" in name:
                param.normal_(0.0, 1.0)
            else:
                param.normal_(0.0, 1.0 / math.sqrt(param[0].numel()))
    return model.eval()


def _write(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
