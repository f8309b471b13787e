"""A transcription's answer in each of OpenAI's `response_format`s: json ({text, usage}), text, verbose_json (task,
language, duration, one segment a 30 s window, usage), srt and vtt (a cue a window). Timestamps are the windows'
bounds: the engine decodes with <|notimestamps|>, as vLLM does, so there are no finer ones. `usage` is OpenAI's
whisper-1 shape, {type: duration, seconds} (whole seconds, rounded up, as vLLM reports them); a stream's
done event carries the token shape instead, {type: tokens, input_tokens, output_tokens, total_tokens}."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

FORMATS = ("json", "text", "verbose_json", "srt", "vtt")
MEDIA_TYPES = {"json": "application/json", "verbose_json": "application/json", "text": "text/plain; charset=utf-8",
               "srt": "application/x-subrip; charset=utf-8", "vtt": "text/vtt; charset=utf-8"}


@dataclass
class WindowTranscript:
    start_s: float
    end_s: float
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    prompt_tokens: int = 0  # the decoder prompt's (the task's tokens and any prompt)
    temperature: float = 0.0


@dataclass
class Transcript:
    task: str  # "transcribe" or "translate"
    language: str  # the full name, "english"
    seconds: float
    windows: list[WindowTranscript]
    audio_tokens: int  # the encoder positions the windows filled (1,500 each)

    @property
    def text(self) -> str:
        return "".join(w.text for w in self.windows).strip()

    def duration_usage(self) -> dict:
        return {"type": "duration", "seconds": math.ceil(self.seconds)}

    def token_usage(self) -> dict:
        text_tokens = sum(w.prompt_tokens for w in self.windows)
        output = sum(len(w.token_ids) for w in self.windows)
        return {"type": "tokens", "input_tokens": text_tokens + self.audio_tokens,
                "input_token_details": {"text_tokens": text_tokens, "audio_tokens": self.audio_tokens},
                "output_tokens": output, "total_tokens": text_tokens + self.audio_tokens + output}


def rendered(transcript: Transcript, response_format: str) -> str | dict:
    """The answer's body: a dict for the JSON formats, else its text."""
    if response_format == "json":
        return {"text": transcript.text, "usage": transcript.duration_usage()}
    if response_format == "verbose_json":
        return {"task": transcript.task, "language": transcript.language, "duration": round(transcript.seconds, 3),
                "text": transcript.text, "segments": [_segment(i, w) for i, w in enumerate(transcript.windows)],
                "usage": transcript.duration_usage()}
    if response_format == "text":
        return transcript.text + "\n"
    cues = [(w.start_s, w.end_s, w.text.strip()) for w in transcript.windows if w.text.strip()]
    if response_format == "srt":
        return "".join(f"{i}\n{_stamp(s, ',')} --> {_stamp(e, ',')}\n{text}\n\n" for i, (s, e, text) in enumerate(cues, 1))
    return "WEBVTT\n\n" + "".join(f"{_stamp(s, '.')} --> {_stamp(e, '.')}\n{text}\n\n" for s, e, text in cues)


def _segment(index: int, w: WindowTranscript) -> dict:
    return {"id": index, "seek": round(w.start_s * 100), "start": round(w.start_s, 3), "end": round(w.end_s, 3),
            "text": w.text, "tokens": w.token_ids, "temperature": w.temperature}


def _stamp(seconds: float, separator: str) -> str:
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"
