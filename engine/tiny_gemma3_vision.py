"""make_tiny_gemma3_vision: a small random Gemma 3 with images (Gemma3ForConditionalGeneration: a SigLIP tower,
the pooling projector, a Gemma 3 language model of a sliding and a full layer) as a real Hugging Face folder,
offline: config.json and safetensors saved by transformers itself, the locally trained tokenizer of
engine/tiny_model.py with Gemma's `<start_of_image>`, `<end_of_image>` and `<image_soft_token>` added as special
tokens (named in tokenizer_config.json as Gemma's are, so transformers' Gemma3Processor reads them), a chat
template that renders image parts as `<start_of_image>`, and a Gemma 3 image processor config of the tower's small
image size. transformers and the engine both load it."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import AddedToken

from engine.tiny_llava import _spread
from engine.tiny_model import BOS, CHAT_TEMPLATE, EOS, PAD, train_tokenizer

# Random weights that make a greedy answer depend on the picture (and on how an image attends to itself):
# Gemma's RMSNorm weights about 0 (it scales by 1 + weight), text embeddings of std 0.3 (2.4 after the
# sqrt(hidden) scale), the projection 4x its fan-in's scale, sharp attention (query_pre_attn_scalar 4).
NORM, EMBED, PROJ = 0.3, 0.3, 4.0
BOI, EOI, IMAGE = "<start_of_image>", "<end_of_image>", "<image_soft_token>"
CHAT_TEMPLATE_WITH_IMAGES = CHAT_TEMPLATE.replace(
    "{%- elif content -%}{%- for part in content if part.type == 'text' -%}{{ part.text }}{%- endfor -%}",
    "{%- elif content -%}{%- for part in content -%}{%- if part.type == 'text' -%}{{ part.text }}"
    "{%- elif part.type == 'image' -%}" + BOI + "{%- endif -%}{%- endfor -%}")


def make_tiny_gemma3_vision(out_dir: str | Path, *, hidden: int = 64, layers: int = 2, vocab_size: int = 1024,
                            image_size: int = 56, patch_size: int = 7, tokens_per_image: int = 16,
                            vision_hidden: int = 32, vision_layers: int = 2, sliding_window: int = 24,
                            heads: int = 4, kv_heads: int = 2, head_dim: int = 16, seed: int = 0) -> Path:
    """Writes the folder and returns its path. An image is `tokens_per_image` tokens: the (image_size /
    patch_size)^2 patches average-pooled to that many (16 from 8 x 8 patches by default). Every second layer
    attends to all of the context, the others to their last `sliding_window` tokens."""
    import transformers as hf

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(vocab_size - 3)
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (BOI, EOI, IMAGE)])
    tokenizer.save(str(out / "tokenizer.json"))
    ids = {token: tokenizer.token_to_id(token) for token in (BOS, EOS, PAD, BOI, EOI, IMAGE)}
    text = {"vocab_size": vocab_size, "hidden_size": hidden, "intermediate_size": 2 * hidden,
            "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
            "head_dim": head_dim,
            "query_pre_attn_scalar": 4, "sliding_window": sliding_window, "sliding_window_pattern": 2,
            "rope_local_base_freq": 100.0, "tie_word_embeddings": False, "max_position_embeddings": 2048,
            "rms_norm_eps": 1e-6,
            "bos_token_id": ids[BOS], "eos_token_id": ids[EOS], "pad_token_id": ids[PAD]}
    vision = {"model_type": "siglip_vision_model", "hidden_size": vision_hidden,
              "intermediate_size": 2 * vision_hidden, "num_hidden_layers": vision_layers, "num_attention_heads": 2,
              "image_size": image_size, "patch_size": patch_size, "vision_use_head": False}
    config = hf.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=tokens_per_image,
                             boi_token_index=ids[BOI], eoi_token_index=ids[EOI], image_token_index=ids[IMAGE],
                             tie_word_embeddings=False)  # tied, a random model repeats its last token
    torch.manual_seed(seed)
    model = _spread(hf.Gemma3ForConditionalGeneration(config))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name and param.dim() == 1 and "vision_tower" not in name:
                param.normal_(0.0, NORM)
        model.model.language_model.embed_tokens.weight.mul_(EMBED)
        model.model.multi_modal_projector.mm_input_projection_weight.mul_(PROJ)
    model.save_pretrained(out)
    _write(out / "generation_config.json", {"bos_token_id": ids[BOS], "eos_token_id": ids[EOS], "pad_token_id": ids[PAD]})
    _write(out / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": BOS, "eos_token": EOS, "pad_token": PAD,
        "extra_special_tokens": {"boi_token": BOI, "eoi_token": EOI, "image_token": IMAGE},
        "model_max_length": 2048, "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE_WITH_IMAGES})  # fmt: skip
    _write(out / "preprocessor_config.json", {
        "image_processor_type": "Gemma3ImageProcessor", "size": {"height": image_size, "width": image_size},
        "do_resize": True, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "resample": 2, "do_convert_rgb": True,
        "do_pan_and_scan": False, "image_seq_length": tokens_per_image})  # fmt: skip
    _write(out / "processor_config.json", {"processor_class": "Gemma3Processor", "image_seq_length": tokens_per_image})
    return out


def _write(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
