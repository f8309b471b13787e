"""make_tiny_whisper: a small random Whisper (WhisperForConditionalGeneration) as a real Hugging Face folder,
offline: config.json and model.safetensors saved by transformers itself, a byte-level BPE tokenizer trained on
local text (engine/tiny_model.py) with Whisper's special tokens after it in Whisper's order (<|endoftext|>,
<|startoftranscript|>, the languages, <|translate|>, <|transcribe|>, <|startoflm|>, <|startofprev|>,
<|nospeech|>, <|notimestamps|>), a generation_config.json as the Hub's multilingual checkpoints carry it
(lang_to_id, task_to_id, suppress_tokens, begin_suppress_tokens) and the WhisperFeatureExtractor's
preprocessor_config.json (80 mel bins, 30 s windows). transformers and the engine both load it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from tokenizers import AddedToken

from engine.tiny_model import train_tokenizer

EOT, SOT, PREV = "<|endoftext|>", "<|startoftranscript|>", "<|startofprev|>"
TRANSLATE, TRANSCRIBE, NO_TIMESTAMPS = "<|translate|>", "<|transcribe|>", "<|notimestamps|>"
LANGUAGES = ("en", "zh", "de", "es", "fr")  # the first five of Whisper's, in its order
SPECIAL = [EOT, SOT, *(f"<|{code}|>" for code in LANGUAGES), TRANSLATE, TRANSCRIBE, "<|startoflm|>", PREV,
           "<|nospeech|>", NO_TIMESTAMPS]


def make_tiny_whisper(out_dir: str | Path, *, d_model: int = 64, layers: int = 2, heads: int = 4,
                      base_vocab: int = 500, num_mel_bins: int = 80, max_target_positions: int = 448,
                      ffn_dim: int | None = None, multilingual: bool = True, seed: int = 0) -> Path:
    """Writes the folder and returns its path; same arguments, same bytes (but for transformers' own
    metadata). The vocabulary is `base_vocab` BPE tokens and Whisper's 13 special ones here; `ffn_dim`: the
    MLPs' width (2 * d_model by default; whisper-tiny's shape is d_model 384, 4 layers, 6 heads, ffn_dim 1536).
    `multilingual=False`: an English-only model's generation config, as the `.en` releases' (no lang_to_id or
    task_to_id, `is_multilingual: false`)."""
    import transformers as hf

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(base_vocab)
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL])
    tokenizer.save(str(out / "tokenizer.json"))
    ids = {token: tokenizer.token_to_id(token) for token in SPECIAL}
    vocab_size = tokenizer.get_vocab_size()
    space = tokenizer.token_to_id("Ġ")  # " " alone, which Whisper never begins a transcript with
    # A few ordinary tokens and the task tokens, as the Hub's suppress_tokens list punctuation and specials.
    suppress = [tokenizer.token_to_id(t) for t in ("#", "(", ")", "*")] + [
        ids[t] for t in (TRANSLATE, TRANSCRIBE, "<|startoflm|>", PREV, "<|nospeech|>")]
    config = hf.WhisperConfig(
        vocab_size=vocab_size, num_mel_bins=num_mel_bins, d_model=d_model, encoder_layers=layers,
        decoder_layers=layers, encoder_attention_heads=heads, decoder_attention_heads=heads,
        encoder_ffn_dim=ffn_dim or 2 * d_model, decoder_ffn_dim=ffn_dim or 2 * d_model, max_source_positions=1500,
        max_target_positions=max_target_positions, decoder_start_token_id=ids[SOT], bos_token_id=ids[EOT],
        eos_token_id=ids[EOT], pad_token_id=ids[EOT], begin_suppress_tokens=None, suppress_tokens=None,
        tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = hf.WhisperForConditionalGeneration(config)
    _spread(model)
    model.save_pretrained(out)
    generation = {
        "decoder_start_token_id": ids[SOT], "bos_token_id": ids[EOT], "eos_token_id": ids[EOT],
        "pad_token_id": ids[EOT], "max_length": max_target_positions, "is_multilingual": multilingual,
        "lang_to_id": {f"<|{code}|>": ids[f"<|{code}|>"] for code in LANGUAGES},
        "task_to_id": {"transcribe": ids[TRANSCRIBE], "translate": ids[TRANSLATE]},
        "no_timestamps_token_id": ids[NO_TIMESTAMPS], "prev_sot_token_id": ids[PREV],
        "suppress_tokens": suppress, "begin_suppress_tokens": [space, ids[EOT]]}
    if not multilingual:
        del generation["lang_to_id"], generation["task_to_id"]
    _write(out / "generation_config.json", generation)
    _write(out / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": EOT, "eos_token": EOT, "pad_token": EOT,
        "unk_token": EOT, "model_max_length": max_target_positions, "clean_up_tokenization_spaces": False})
    hf.WhisperFeatureExtractor(feature_size=num_mel_bins).save_pretrained(out)
    return out


def _spread(model: torch.nn.Module) -> None:
    """Weights whose greedy transcripts depend on the audio, the task and the position: with tied embeddings,
    small token embeddings beside layers of gain 2 keep a token from predicting itself over and over (the
    fixed point of unit-scale embeddings), and unit-scale learned positions tell the steps apart. The
    encoder's positions stay the sinusoids transformers made, as every Whisper's."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "encoder.embed_positions" in name:
                continue
            if param.dim() == 1:
                param.normal_(1.0 if "layer_norm.weight" in name else 0.0, 0.1)
            elif "decoder.embed_positions" in name:
                param.normal_(0.0, 1.0)
            elif "embed_tokens" in name:
                param.normal_(0.0, 0.2)
            else:
                param.normal_(0.0, 2.0 / math.sqrt(param[0].numel()))
    model.eval()


def _write(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
