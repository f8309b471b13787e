"""Log-probabilities in OpenAI's shapes: a chat's `content` entries (token, logprob, bytes,
top_logprobs), a completion's parallel lists (tokens, token_logprobs, top_logprobs as token -> logprob,
text_offset), and an echoed prompt's in the completion lists, its first token with none. With vLLM's
`return_tokens_as_token_ids`, a token is written `token_id:N`: tokens that are parts of one character
(or decode alike) stay apart, and a client maps them back to ids without the tokenizer."""

from __future__ import annotations

from engine.detokenizer import Decoder
from engine.logprobs import TokenLogprobs

# A log-probability the JSON can carry (a token the model rules out has -inf), as vLLM clamps it.
_LOWEST_LOGPROB = -9999.0


class LogprobShapes:
    """One choice's log-probabilities, a block at a time. A token's text is its own decoding, as vLLM
    gives it; a completion's text_offset runs on across blocks (an echoed prompt's first)."""

    def __init__(self, tokenizer: Decoder | None, chat: bool, as_token_ids: bool = False) -> None:
        self.tokenizer = tokenizer
        self.chat = chat
        self.as_token_ids = as_token_ids
        self.offset = 0  # a completion's text_offset runs on across chunks
        self._texts: dict[int, str] = {}

    def _token(self, token_id: int) -> str:
        text = self._texts.get(token_id)
        if text is None:
            text = self.tokenizer.decode([token_id], skip_special_tokens=False) if self.tokenizer else ""
            self._texts[token_id] = text
        return text

    def _name(self, token_id: int) -> str:
        """How the token is written: its text, or `token_id:N`."""
        return f"token_id:{token_id}" if self.as_token_ids else self._token(token_id)

    def _entry(self, token_id: int, logprob: float) -> dict:
        return {"token": self._name(token_id), "logprob": max(logprob, _LOWEST_LOGPROB),
                "bytes": list(self._token(token_id).encode("utf-8", "surrogatepass"))}

    def block(self, token_ids: list[int], logprobs: list[TokenLogprobs]) -> dict:
        if self.chat:
            return {"content": [self._entry(t, lp.logprob) | {"top_logprobs": [
                self._entry(i, v) for i, v in zip(lp.top_ids, lp.top_logprobs, strict=True)]}
                for t, lp in zip(token_ids, logprobs, strict=True)], "refusal": None}
        offsets = []
        for token_id in token_ids:  # offsets into the text, however the tokens are written
            offsets.append(self.offset)
            self.offset += len(self._token(token_id))
        return {"tokens": [self._name(t) for t in token_ids], "token_logprobs": [max(lp.logprob, _LOWEST_LOGPROB) for lp in logprobs],
                "top_logprobs": [self._top(lp) for lp in logprobs], "text_offset": offsets}

    def prompt_block(self, token_ids: list[int], logprobs: list[TokenLogprobs]) -> dict:
        """An echoed prompt's block (completions), before any other: every token, each scored but the
        first (null)."""
        assert not self.chat and self.offset == 0 and len(logprobs) == len(token_ids) - 1
        self.offset = len(self._token(token_ids[0]))
        block = self.block(token_ids[1:], logprobs)
        return {"tokens": [self._name(token_ids[0]), *block["tokens"]], "token_logprobs": [None, *block["token_logprobs"]],
                "top_logprobs": [None, *block["top_logprobs"]], "text_offset": [0, *block["text_offset"]]}

    def _top(self, logprobs: TokenLogprobs) -> dict[str, float]:
        """token -> logprob; where two tokens decode alike (parts of one character), the likelier stays."""
        top: dict[str, float] = {}
        for token_id, value in zip(logprobs.top_ids, logprobs.top_logprobs, strict=True):
            top.setdefault(self._name(token_id), max(value, _LOWEST_LOGPROB))
        return top


def joined(first: dict | None, second: dict | None) -> dict | None:
    """Two completion blocks as one (an echoed prompt's, then the answer's)."""
    if first is None or second is None:
        return first or second
    return {key: first[key] + second[key] for key in first}
