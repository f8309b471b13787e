"""make_tiny_qwen2_5_vl: a small random Qwen2.5-VL (Qwen2_5_VLForConditionalGeneration: transformers' own vision
transformer with window attention, 2D rotary and the patch merger, before a Qwen2 language model on M-RoPE) as a
real Hugging Face folder, offline: config.json and safetensors saved by transformers itself, the locally trained
tokenizer of engine/tiny_model.py with Qwen's `<|vision_start|>`, `<|image_pad|>`, `<|vision_end|>` (and
`<|video_pad|>`) added as special tokens, a chat template rendering an image part as
`<|vision_start|><|image_pad|><|vision_end|>`, and a Qwen2-VL image processor config of 4-pixel patches, so a
picture of a few dozen pixels a side is a handful of tokens (dynamic resolution: (h / 8) * (w / 8) tokens for
merge size 2). transformers and the engine both load it."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import AddedToken

from engine.tiny_llava import _spread
from engine.tiny_model import BOS, CHAT_TEMPLATE, EOS, PAD, train_tokenizer

VISION_START, IMAGE_PAD, VISION_END, VIDEO_PAD = "<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<|video_pad|>"
CHAT_TEMPLATE_WITH_IMAGES = CHAT_TEMPLATE.replace(
    "{%- elif content -%}{%- for part in content if part.type == 'text' -%}{{ part.text }}{%- endfor -%}",
    "{%- elif content -%}{%- for part in content -%}{%- if part.type == 'text' -%}{{ part.text }}"
    "{%- elif part.type == 'image' -%}" + VISION_START + IMAGE_PAD + VISION_END + "{%- endif -%}{%- endfor -%}")
PATCH, MERGE = 4, 2
PROJ = 4.0


def make_tiny_qwen2_5_vl(out_dir: str | Path, *, hidden: int = 64, layers: int = 2, vocab_size: int = 1024,
                         heads: int = 4, kv_heads: int = 2,
                         vision_hidden: int = 32, vision_depth: int = 2, window_size: int = 16,
                         max_pixels: int = 64 * 64, patch_size: int = PATCH, seed: int = 0) -> Path:
    """Writes the folder and returns its path. head_dim is hidden / heads (16: 8 rotary frequencies, split
    2 / 3 / 3 over time, height and width by `mrope_section`, a quarter and three eighths each as Qwen's 16 / 24 /
    24 of 64). The tower's second block attends to the whole
    image, the first within windows of `window_size` pixels (2 x 2 merged tokens)."""
    import transformers as hf

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(vocab_size - 4)
    specials = (VISION_START, IMAGE_PAD, VISION_END, VIDEO_PAD)
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tokenizer.save(str(out / "tokenizer.json"))
    ids = {token: tokenizer.token_to_id(token) for token in (BOS, EOS, PAD, *specials)}
    half = hidden // heads // 2
    mrope_section = (half // 4, (half - half // 4) // 2, half - half // 4 - (half - half // 4) // 2)
    text = {"vocab_size": vocab_size, "hidden_size": hidden, "intermediate_size": 2 * hidden,
            "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
            "max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000.0, "mrope_section": list(mrope_section)},
            "bos_token_id": ids[BOS], "eos_token_id": ids[EOS], "pad_token_id": ids[PAD]}
    vision = {"depth": vision_depth, "hidden_size": vision_hidden, "intermediate_size": 2 * vision_hidden,
              "num_heads": 2, "out_hidden_size": hidden, "patch_size": patch_size, "spatial_merge_size": MERGE,
              "temporal_patch_size": 2, "window_size": window_size, "fullatt_block_indexes": [vision_depth - 1]}
    config = hf.Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=ids[IMAGE_PAD],
                                 video_token_id=ids[VIDEO_PAD], vision_start_token_id=ids[VISION_START],
                                 vision_end_token_id=ids[VISION_END], tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = _spread(hf.Qwen2_5_VLForConditionalGeneration(config))
    with torch.no_grad():  # features well above the text embeddings' scale, so a picture changes the answer
        model.model.visual.merger.mlp[2].weight.mul_(PROJ)
    model.save_pretrained(out)
    _write(out / "generation_config.json", {"bos_token_id": ids[BOS], "eos_token_id": ids[EOS], "pad_token_id": ids[PAD]})
    _write(out / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": BOS, "eos_token": EOS, "pad_token": PAD,
        "extra_special_tokens": {"image_token": IMAGE_PAD, "video_token": VIDEO_PAD},
        "model_max_length": 2048, "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE_WITH_IMAGES})  # fmt: skip
    _write(out / "preprocessor_config.json", {
        "image_processor_type": "Qwen2VLImageProcessor", "patch_size": patch_size, "merge_size": MERGE,
        "temporal_patch_size": 2, "min_pixels": (patch_size * MERGE) ** 2, "max_pixels": max_pixels,
        "do_resize": True, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
        "resample": 3, "do_convert_rgb": True})  # fmt: skip
    return out


def _write(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
