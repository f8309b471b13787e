"""Whisper's decoder prompts and one window's transcription through the engine, as transformers' `generate` makes
them: <|startoftranscript|><|lang|><|transcribe or translate|><|notimestamps|>, after <|startofprev|> and a
prompt's tokens (" " + the prompt, stripped, as WhisperTokenizer.get_prompt_ids encodes it; its last
max_target_positions // 2 - 1 tokens, as openai-whisper keeps them) where one is given. Without a language, it is
detected as `generate` detects it: the decoder run on <|startoftranscript|> alone, the likeliest language token
taken (here a one-token request held to the language tokens, scheduled as any other, sharing the window's
encoder output with the transcription after it). An English-only model (`is_multilingual: false` in its generation
config: the `.en` releases) is prompted <|startoftranscript|><|notimestamps|>, as `generate` prompts it, takes
English only and does not translate."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

from engine.async_engine import AsyncEngine
from engine.audio_inputs import AudioInput
from engine.outputs import RequestOutput
from engine.sampling_params import InvalidRequestError, SamplingParams
from engine.tokenizer import Tokenizer

TASKS = ("transcribe", "translate")


@dataclass(frozen=True)
class WhisperTokens:
    start: int  # <|startoftranscript|>
    previous: int  # <|startofprev|>
    no_timestamps: int
    languages: dict[str, int]  # code ("en") -> its token's id
    tasks: dict[str, int]
    max_target_positions: int
    multilingual: bool = True

    @classmethod
    def from_folder(cls, model_dir: str | Path, tokenizer: Tokenizer, max_target_positions: int) -> WhisperTokens:
        """From generation_config.json (lang_to_id, task_to_id), else the tokenizer's <|xx|> tokens."""
        path = Path(model_dir) / "generation_config.json"
        generation = json.loads(path.read_text()) if path.exists() else {}

        def token(name: str) -> int:
            found = tokenizer.token_to_id(name)
            if found is None:
                raise ValueError(f"{model_dir}: the tokenizer has no {name} token, which Whisper's prompts need")
            return found

        from transformers.models.whisper.tokenization_whisper import LANGUAGES

        languages = {code.strip("<|>"): i for code, i in (generation.get("lang_to_id") or {}).items()} or {
            code: i for code in LANGUAGES if (i := tokenizer.token_to_id(f"<|{code}|>")) is not None}
        tasks = generation.get("task_to_id") or {task: token(f"<|{task}|>") for task in TASKS}
        if generation.get("is_multilingual") is False:
            return cls(token("<|startoftranscript|>"), token("<|startofprev|>"), token("<|notimestamps|>"),
                       {"en": -1}, {}, max_target_positions, multilingual=False)
        return cls(token("<|startoftranscript|>"), token("<|startofprev|>"), token("<|notimestamps|>"),
                   languages, tasks, max_target_positions)

    def language_code(self, language: str) -> str:
        """An ISO-639-1 code ("en"), a name ("english") or a token ("<|en|>") -> the code; else a 400."""
        from transformers.models.whisper.tokenization_whisper import TO_LANGUAGE_CODE

        asked = language.strip().lower().strip("<|>")
        code = TO_LANGUAGE_CODE.get(asked, asked)
        if code not in self.languages:
            raise InvalidRequestError(f"unsupported language {language!r}; this model knows "
                                      f"{', '.join(sorted(self.languages))}", "language", "invalid_value")
        return code

    def check_task(self, task: str) -> None:
        if task not in self.tasks and not (task == "transcribe" and not self.multilingual):
            raise InvalidRequestError("this model is English-only: it transcribes English and does not translate",
                                      "model", "model_not_supported")

    def decoder_prompt(self, language: str, task: str, prompt_ids: list[int]) -> list[int]:
        previous = [self.previous, *prompt_ids[-(self.max_target_positions // 2 - 1):]] if prompt_ids else []
        if not self.multilingual:
            return [*previous, self.start, self.no_timestamps]
        return [*previous, self.start, self.languages[language], self.tasks[task], self.no_timestamps]


def language_name(code: str) -> str:
    """"en" -> "english", as OpenAI's verbose_json names it."""
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    return LANGUAGES.get(code, code)


async def detect_language(engine: AsyncEngine, tokens: WhisperTokens, audio: AudioInput, request_id: str) -> str:
    """The window's language code, the decoder's likeliest language token after <|startoftranscript|>."""
    if not tokens.multilingual:
        return "en"
    params = SamplingParams(max_tokens=1, temperature=0.0, allowed_token_ids=tuple(tokens.languages.values()))
    chosen = None
    async for out in engine.generate([tokens.start], params, request_id=request_id, audio=audio):
        chosen = out.new_token_ids[-1] if out.new_token_ids else chosen
    return next(code for code, i in tokens.languages.items() if i == chosen)


async def transcribe_window(engine: AsyncEngine, tokens: WhisperTokens, audio: AudioInput, task: str,
                            language: str, prompt_ids: list[int], params: SamplingParams,
                            request_id: str) -> AsyncIterator[RequestOutput]:
    """The window's outputs as the engine steps them (`params.max_tokens`: at most what the context leaves)."""
    prompt = tokens.decoder_prompt(language, task, prompt_ids)
    room = tokens.max_target_positions - len(prompt)
    params = replace(params, max_tokens=max(1, min(params.max_tokens, room)))
    async for out in engine.generate(prompt, params, request_id=request_id, audio=audio):
        yield out
