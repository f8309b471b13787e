"""Log-probabilities in OpenAI's shapes: a chat's `content` entries (token, logprob, bytes,
top_logprobs), a completion's parallel lists (tokens, token_logprobs, top_logprobs as token -> logprob,
text_offset), and an echoed prompt's in the completion lists, its first token with none."""

from __future__ import annotations

from engine.detokenizer import Decoder
from engine.logprobs import TokenLogprobs

# A log-probability the JSON can carry (a token the model rules out has -inf), as vLLM clamps it.
_LOWEST_LOGPROB = -9999.0


class LogprobShapes:
    """One choice's log-probabilities, a block at a time. A token's text is its own decoding, as vLLM
    gives it; a completion's text_offset runs on across blocks (an echoed prompt's first)."""

    def __init__(self, tokenizer: Decoder | None, chat: bool) -> None:
        self.tokenizer = tokenizer
        self.chat = chat
        self.offset = 0  # a completion's text_offset runs on across chunks
        self._texts: dict[int, str] = {}

    def _token(self, token_id: int) -> str:
        text = self._texts.get(token_id)
        if text is None:
            text = self.tokenizer.decode([token_id], skip_special_tokens=False) if self.tokenizer else ""
            self._texts[token_id] = text
        return text

    def _entry(self, token_id: int, logprob: float) -> dict:
        token = self._token(token_id)
        return {"token": token, "logprob": max(logprob, _LOWEST_LOGPROB),
                "bytes": list(token.encode("utf-8", "surrogatepass"))}

    def block(self, token_ids: list[int], logprobs: list[TokenLogprobs]) -> dict:
        if self.chat:
            return {"content": [self._entry(t, lp.logprob) | {"top_logprobs": [
                self._entry(i, v) for i, v in zip(lp.top_ids, lp.top_logprobs, strict=True)]}
                for t, lp in zip(token_ids, logprobs, strict=True)], "refusal": None}
        tokens = [self._token(t) for t in token_ids]
        offsets = []
        for token in tokens:
            offsets.append(self.offset)
            self.offset += len(token)
        return {"tokens": tokens, "token_logprobs": [max(lp.logprob, _LOWEST_LOGPROB) for lp in logprobs],
                "top_logprobs": [self._top(lp) for lp in logprobs], "text_offset": offsets}

    def prompt_block(self, token_ids: list[int], logprobs: list[TokenLogprobs]) -> dict:
        """An echoed prompt's block (completions), before any other: every token, each scored but the
        first (null)."""
        assert not self.chat and self.offset == 0 and len(logprobs) == len(token_ids) - 1
        first = self._token(token_ids[0])
        self.offset = len(first)
        block = self.block(token_ids[1:], logprobs)
        return {"tokens": [first, *block["tokens"]], "token_logprobs": [None, *block["token_logprobs"]],
                "top_logprobs": [None, *block["top_logprobs"]], "text_offset": [0, *block["text_offset"]]}

    def _top(self, logprobs: TokenLogprobs) -> dict[str, float]:
        """token -> logprob; where two tokens decode alike (parts of one character), the likelier stays."""
        top: dict[str, float] = {}
        for token_id, value in zip(logprobs.top_ids, logprobs.top_logprobs, strict=True):
            top.setdefault(self._token(token_id), max(value, _LOWEST_LOGPROB))
        return top


def joined(first: dict | None, second: dict | None) -> dict | None:
    """Two completion blocks as one (an echoed prompt's, then the answer's)."""
    if first is None or second is None:
        return first or second
    return {key: first[key] + second[key] for key in first}
