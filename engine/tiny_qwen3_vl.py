"""make_tiny_qwen3_vl: a small random Qwen3-VL (Qwen3VLForConditionalGeneration, or with `moe` its MoE,
Qwen3VLMoeForConditionalGeneration) as a real Hugging Face folder, offline, as engine/tiny_qwen2_5_vl.py writes
Qwen2.5-VL's: transformers' own vision model (learned position embeddings interpolated to the grid, 2D rotary,
the patch merger and DeepStack mergers after its first `deepstack` blocks) before a Qwen3 (or Qwen3-MoE) language
model on interleaved M-RoPE; the locally trained tokenizer with Qwen's vision tokens, a chat template rendering an
image part as `<|vision_start|><|image_pad|><|vision_end|>`, and a Qwen2-VL image processor config of 4-pixel
patches (`size`'s shortest_edge / longest_edge, as the Qwen3-VL releases write it), so a picture of a few dozen
pixels a side is a handful of tokens ((h / 8) * (w / 8) for merge size 2). transformers and the engine both load
it."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import AddedToken

from engine.tiny_llava import _spread
from engine.tiny_model import BOS, EOS, PAD, train_tokenizer
from engine.tiny_qwen2_5_vl import (
    CHAT_TEMPLATE_WITH_IMAGES,
    IMAGE_PAD,
    MERGE,
    PATCH,
    VIDEO_PAD,
    VISION_END,
    VISION_START,
    _write,
)

PROJ = 4.0  # the mergers' output scale: features well above the text embeddings', so a picture changes the answer


def make_tiny_qwen3_vl(out_dir: str | Path, *, moe: bool = False, hidden: int = 64, layers: int = 3,
                       vocab_size: int = 1024, heads: int = 4, kv_heads: int = 2, vision_hidden: int = 32,
                       vision_depth: int = 3, deepstack: int = 2, max_pixels: int = 64 * 64,
                       patch_size: int = PATCH, seed: int = 0) -> Path:
    """Writes the folder and returns its path. head_dim is hidden / heads (16: 8 rotary frequencies, split
    4 / 2 / 2 over time, height and width by `mrope_section` as Qwen's 24 / 20 / 20 of 64); DeepStack features from
    the first `deepstack` vision blocks go into as many first language-model layers. `moe`: 4 experts of width
    hidden / 2, 2 a token, in every layer."""
    import transformers as hf

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(vocab_size - 4)
    specials = (VISION_START, IMAGE_PAD, VISION_END, VIDEO_PAD)
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tokenizer.save(str(out / "tokenizer.json"))
    ids = {token: tokenizer.token_to_id(token) for token in (BOS, EOS, PAD, *specials)}
    half = hidden // heads // 2
    spatial = round(half * 20 / 64)
    text = {"vocab_size": vocab_size, "hidden_size": hidden, "intermediate_size": 2 * hidden,
            "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
            "head_dim": hidden // heads, "max_position_embeddings": 2048, "rms_norm_eps": 1e-6,
            "rope_parameters": {"rope_type": "default", "rope_theta": 5000.0, "mrope_interleaved": True,
                                "mrope_section": [half - 2 * spatial, spatial, spatial]},
            "bos_token_id": ids[BOS], "eos_token_id": ids[EOS], "pad_token_id": ids[PAD]}
    if moe:
        text |= {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": hidden // 2,
                 "decoder_sparse_step": 1}
    vision = {"depth": vision_depth, "hidden_size": vision_hidden, "intermediate_size": 2 * vision_hidden,
              "num_heads": 2, "out_hidden_size": hidden, "patch_size": patch_size, "spatial_merge_size": MERGE,
              "temporal_patch_size": 2, "num_position_embeddings": 64,
              "deepstack_visual_indexes": list(range(deepstack))}
    kind = hf.Qwen3VLMoeConfig if moe else hf.Qwen3VLConfig
    config = kind(text_config=text, vision_config=vision, image_token_id=ids[IMAGE_PAD], video_token_id=ids[VIDEO_PAD],
                  vision_start_token_id=ids[VISION_START], vision_end_token_id=ids[VISION_END],
                  tie_word_embeddings=False)
    torch.manual_seed(seed)
    model_class = hf.Qwen3VLMoeForConditionalGeneration if moe else hf.Qwen3VLForConditionalGeneration
    model = _spread(model_class(config))
    with torch.no_grad():
        for name, param in model.model.visual.named_parameters():  # biases that would drown the picture's signal
            if name.endswith("bias"):
                param.zero_()
        for merger in (model.model.visual.merger, *model.model.visual.deepstack_merger_list):
            merger.linear_fc2.weight.mul_(PROJ)
    model.save_pretrained(out)
    _write(out / "generation_config.json", {"bos_token_id": ids[BOS], "eos_token_id": ids[EOS], "pad_token_id": ids[PAD]})
    _write(out / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": BOS, "eos_token": EOS, "pad_token": PAD,
        "extra_special_tokens": {"image_token": IMAGE_PAD, "video_token": VIDEO_PAD},
        "model_max_length": 2048, "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE_WITH_IMAGES})  # fmt: skip
    _write(out / "preprocessor_config.json", {
        "image_processor_type": "Qwen2VLImageProcessor", "patch_size": patch_size, "merge_size": MERGE,
        "temporal_patch_size": 2, "size": {"shortest_edge": (patch_size * MERGE) ** 2, "longest_edge": max_pixels},
        "do_resize": True, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "resample": 3, "do_convert_rgb": True})  # fmt: skip
    return out
