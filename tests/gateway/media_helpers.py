"""Model entries and audio for the audio and image endpoints' tests and bench: OpenAI's models at a fake
upstream's api_base (`openai/` with an api_base goes over the direct transport; `transport: litellm` through
litellm), priced by unit, and WAV files of a chosen size."""

from __future__ import annotations

import io
import wave

SECOND_PRICE = 0.001  # a transcription's audio, $ a second
CHARACTER_PRICE = 0.00002  # a speech's input, $ a character
IMAGE_PRICE = 0.04  # $ an image
WAV_RATE = 16_000  # 16-bit mono: 32,000 bytes a second


def media_entry(name: str, mode: str, api_base: str, provider_model: str, **params: str) -> dict:
    prices = {"audio_transcription": {"input_cost_per_second": SECOND_PRICE},
              "audio_speech": {"input_cost_per_character": CHARACTER_PRICE},
              "image_generation": {"output_cost_per_image": IMAGE_PRICE}}[mode]
    return {"model_name": name,
            "litellm_params": {"model": f"openai/{provider_model}", "api_base": api_base, "api_key": "k", **params},
            "model_info": {"mode": mode, **prices}}


def media_models(api_base: str, suffix: str = "") -> list[dict]:
    """whisper (transcriptions), tts (speech), img (images) at `api_base`."""
    return [media_entry("whisper" + suffix, "audio_transcription", api_base, "whisper-1"),
            media_entry("tts" + suffix, "audio_speech", api_base, "tts-1"),
            media_entry("img" + suffix, "image_generation", api_base, "dall-e-3")]


def wav_bytes(size: int, seed: int = 0) -> bytes:
    """A 16 kHz 16-bit mono WAV of about `size` bytes, its samples a pattern of `seed`."""
    frames = max(1, (size - 44) // 2)
    pattern = bytes((seed + i * 7) % 256 for i in range(4096))
    samples = (pattern * (2 * frames // len(pattern) + 1))[:2 * frames]
    out = io.BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(WAV_RATE)
        writer.writeframes(samples)
    return out.getvalue()


def wav_duration(content: bytes) -> float:
    return (len(content) - 44) / (2 * WAV_RATE)
