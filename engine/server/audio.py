"""OpenAI's audio endpoints on the engine server, served by a Whisper model (engine/whisper_runner.py), as vLLM serves
them:

    POST /v1/audio/transcriptions   multipart: file, model, language, prompt, response_format, temperature, stream,
                                    max_completion_tokens (vLLM's: a window's most tokens)
    POST /v1/audio/translations     the same, the task <|translate|> (into English)

The file is decoded to 16 kHz mono and cut into 30 s windows (engine/audio_decode.py); each window is a request
of its own, all submitted at once and so batched by the scheduler with each other and with other requests; their
texts are joined in order. The language, where not given, is detected on the first window and used for all; the
prompt conditions every window (engine/transcription.py). `response_format`: engine/transcript_formats.py.
`stream=true`: OpenAI's events, `transcript.text.delta` as the text comes (window after window), then
`transcript.text.done` with the whole text and token usage. Bad input (no file, audio that does not decode,
an unknown format or language, a text-only model) is a 400 in OpenAI's error shape."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import suppress

import numpy as np
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from engine.async_engine import AsyncEngine
from engine.audio_decode import AudioError, DecodedAudio, decode_audio, log_mel, windows
from engine.audio_inputs import AudioInput, audio_input
from engine.outputs import RequestOutput
from engine.sampling_params import SamplingParams
from engine.server.errors import bad_request
from engine.server.sse import SSEResponse, sse_event
from engine.transcript_formats import FORMATS, MEDIA_TYPES, Transcript, WindowTranscript, rendered
from engine.transcription import WhisperTokens, detect_language, language_name, transcribe_window

_TOKENS_KEY = "whisper_tokens"  # the WhisperTokens, read once per app


async def transcriptions(request: Request) -> Response:
    return await _serve(request, "transcribe")


async def translations(request: Request) -> Response:
    return await _serve(request, "translate")


class _Job:
    """One upload's windows, each running as its own engine request, their outputs queued in window order."""

    def __init__(self, engine: AsyncEngine, tokens: WhisperTokens, task: str, prompt_ids: list[int],
                 params: SamplingParams, audio: DecodedAudio, model_dir: str) -> None:
        self.engine, self.tokens, self.task, self.prompt_ids, self.params = engine, tokens, task, prompt_ids, params
        self.seconds = audio.seconds
        cut = windows(audio.samples)
        self.inputs: list[AudioInput] = [audio_input(_tensor(log_mel(model_dir, w))) for w in cut]
        self.windows = [WindowTranscript(30.0 * i, min(30.0 * (i + 1), audio.seconds), temperature=params.temperature)
                        for i in range(len(cut))]
        self.queues: list[asyncio.Queue[RequestOutput | BaseException | None]] = [asyncio.Queue() for _ in cut]
        self.tasks: list[asyncio.Task] = []
        self.request_id = f"audio-{uuid.uuid4().hex}"

    async def start(self, language: str | None) -> str:
        """Detects the language where not given, then submits every window; returns the language's code."""
        if language is None:
            language = await detect_language(self.engine, self.tokens, self.inputs[0], f"{self.request_id}-lang")
        self.tasks = [asyncio.create_task(self._run(i, language)) for i in range(len(self.inputs))]
        return language

    async def _run(self, index: int, language: str) -> None:
        queue = self.queues[index]
        try:
            async for out in transcribe_window(self.engine, self.tokens, self.inputs[index], self.task, language,
                                               self.prompt_ids, self.params, f"{self.request_id}-{index}"):
                queue.put_nowait(out)
        except BaseException as exc:
            queue.put_nowait(exc)
            raise
        finally:
            queue.put_nowait(None)

    async def outputs(self) -> AsyncIterator[tuple[WindowTranscript, RequestOutput]]:
        """Every window's outputs, window after window, each window's transcript filled in as they come."""
        for window, queue in zip(self.windows, self.queues, strict=True):
            while (out := await queue.get()) is not None:
                if isinstance(out, BaseException):
                    raise out
                window.text += out.text_delta
                window.token_ids += out.new_token_ids
                window.prompt_tokens = out.num_prompt_tokens
                yield window, out

    async def close(self) -> None:
        """Cancels what still runs (a client that left): each engine request is aborted as its task ends."""
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with suppress(BaseException):
                await task

    def transcript(self, language: str) -> Transcript:
        positions = len(self.inputs) * (self.inputs[0].features.shape[-1] // 2)
        return Transcript(self.task, language_name(language), self.seconds, self.windows, positions)


async def _serve(request: Request, task: str) -> Response:
    state = request.app.state.pitstop
    engine: AsyncEngine = state.engine
    if not getattr(engine.engine.runner, "takes_audio", False):
        raise bad_request(f"the model {state.model_name!r} does not transcribe audio (it is a text model): "
                          "serve a Whisper model for /v1/audio/transcriptions and /translations", "model",
                          "model_not_supported")
    tokens = _tokens(request, engine)
    tokens.check_task(task)
    try:
        form = await request.form(max_files=1, max_fields=32)
    except Exception as exc:  # not multipart, or a malformed body
        raise bad_request(f"the body must be multipart/form-data with the audio as 'file': {exc}") from exc
    try:
        fields = {key: value for key, value in form.multi_items() if isinstance(value, str)}
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise bad_request("'file' is required: the audio to transcribe (WAV)", "file", "missing_required_parameter")
        data = await upload.read()
    finally:
        await form.close()
    if "model" in fields:
        state.adapter_for(fields["model"])  # a 404 for a model this server does not serve
    response_format = fields.get("response_format", "json")
    if response_format not in FORMATS:
        raise bad_request(f"unsupported response_format {response_format!r}; one of {', '.join(FORMATS)}",
                          "response_format", "invalid_value")
    if fields.get("timestamp_granularities[]", "segment") != "segment":
        raise bad_request("only segment timestamps (a segment a 30 s window) are served", "timestamp_granularities[]",
                          "invalid_value")
    temperature = _temperature(fields.get("temperature"))
    stream = fields.get("stream", "false").lower() == "true"
    language = tokens.language_code(fields["language"]) if fields.get("language") else None
    prompt_ids = engine.encode(" " + fields["prompt"].strip()) if fields.get("prompt", "").strip() else []
    try:
        audio = await asyncio.to_thread(decode_audio, data)
    except AudioError as exc:
        raise bad_request(str(exc), "file", "invalid_audio") from exc
    params = SamplingParams(max_tokens=_max_tokens(fields.get("max_completion_tokens"), tokens.max_target_positions),
                            temperature=temperature)
    model_dir = str(engine.engine.runner.model_dir)
    job = await asyncio.to_thread(_Job, engine, tokens, task, prompt_ids, params, audio, model_dir)
    try:
        language = await job.start(language)
    except BaseException:
        await job.close()
        raise
    if stream:
        return SSEResponse(_events(job, language), on_close=job.close)
    try:
        async for _ in job.outputs():
            pass
    finally:
        await job.close()
    body = rendered(job.transcript(language), response_format)
    if isinstance(body, dict):
        return JSONResponse(body)
    return Response(body, media_type=MEDIA_TYPES[response_format])


async def _events(job: _Job, language: str) -> AsyncIterator[bytes]:
    first = True
    async for _, out in job.outputs():
        delta = out.text_delta.lstrip() if first else out.text_delta
        if delta:
            first = False
            yield sse_event({"type": "transcript.text.delta", "delta": delta})
    transcript = job.transcript(language)
    yield sse_event({"type": "transcript.text.done", "text": transcript.text, "usage": transcript.token_usage()})


def _temperature(raw: str | None) -> float:
    if raw is None or raw == "":
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        raise bad_request(f"temperature must be a number, got {raw!r}", "temperature", "invalid_value") from None
    if not 0.0 <= value <= 1.0:
        raise bad_request("temperature must be between 0 and 1", "temperature", "invalid_value")
    return value


def _max_tokens(raw: str | None, context: int) -> int:
    """vLLM's `max_completion_tokens` field: at most that many tokens a window (else what the context leaves)."""
    if raw is None or raw == "":
        return context
    if not raw.isdigit() or int(raw) < 1:
        raise bad_request(f"max_completion_tokens must be a positive integer, got {raw!r}", "max_completion_tokens",
                          "invalid_value")
    return int(raw)


def _tokens(request: Request, engine: AsyncEngine) -> WhisperTokens:
    tokens = getattr(request.app.state, _TOKENS_KEY, None)
    if tokens is None:
        runner = engine.engine.runner
        tokens = WhisperTokens.from_folder(runner.model_dir, engine.tokenizer, runner.max_model_len)
        setattr(request.app.state, _TOKENS_KEY, tokens)
    return tokens


def _tensor(features: np.ndarray) -> object:
    import torch

    return torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
