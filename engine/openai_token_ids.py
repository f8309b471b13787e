"""vLLM's `return_token_ids`: the token ids behind a response's text, so that a training job (RL
rollouts, distillation) reads what the model saw and wrote instead of re-tokenizing text, which need not
give the same ids back.

As vLLM writes them: a chat response has the prompt's ids at the top (`prompt_token_ids`) and each choice
its answer's (`token_ids`); a text completion has both on each choice, since a batch has several prompts.
Streamed, each chunk's choice carries the ids of the tokens that arrived since its previous chunk, and the
prompt's ids come once: on the first chunk (chat), or on each choice's first chunk (completions). With
`echo`, a completion choice's first chunk is its prompt's text, so it carries the prompt's ids and none of
the answer's: those go with the chunks that carry the answer's text."""

from __future__ import annotations


class TokenIds:
    """The ids of one response, choice by choice: the prompts' (a choice's is prompt `choice // n`),
    and the answers' as they arrive, handed out whole or chunk by chunk."""

    def __init__(self, chat: bool, prompt_ids: list[list[int]], n: int, num_choices: int,
                 echo: bool = False) -> None:
        self.chat, self.prompt_ids, self.n, self.echo = chat, prompt_ids, n, echo
        self.answers: list[list[int]] = [[] for _ in range(num_choices)]
        self._handed = [0] * num_choices  # of each answer's ids, how many went out in chunks
        self._prompt_sent = [False] * num_choices

    def arrived(self, choice: int, token_ids: list[int]) -> None:
        self.answers[choice].extend(token_ids)

    def prompt_of(self, choice: int) -> list[int]:
        return self.prompt_ids[choice // self.n]

    def response(self, response: dict) -> dict:
        """A whole response with its ids."""
        for choice in response["choices"]:
            choice["token_ids"] = list(self.answers[choice["index"]])
            if not self.chat:
                choice["prompt_token_ids"] = self.prompt_of(choice["index"])
        if self.chat:
            response["prompt_token_ids"] = self.prompt_of(0)
        return response

    def chunk(self, chunk: dict) -> dict:
        """A streamed chunk with the ids that arrived for its choice since that choice's last chunk."""
        for choice in chunk["choices"]:
            index = choice["index"]
            if self.echo and not self._prompt_sent[index]:
                choice["token_ids"] = []  # the echo: the prompt's text only
            else:
                choice["token_ids"] = self.answers[index][self._handed[index]:]
                self._handed[index] = len(self.answers[index])
            if not self._prompt_sent[index]:
                self._prompt_sent[index] = True
                if self.chat and index == 0:
                    chunk["prompt_token_ids"] = self.prompt_of(0)
                elif not self.chat:
                    choice["prompt_token_ids"] = self.prompt_of(index)
        return chunk
