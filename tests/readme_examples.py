"""The README's examples as the tests that keep them true read them (tests/test_readme_config.py,
tests/test_readme_commands.py): fenced blocks and inline code spans with their line numbers, the shell
command lines in them, and what an argparse parser makes of a command line, checked without running it."""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
READMES = ("README.md", "bench/README.md")
# Put right before a ```yaml block that is not the gateway's config (a docker-compose or Kubernetes file):
# the config test leaves it out, by name. Keep such blocks few.
NOT_CONFIG = "<!-- not-config -->"
SHELLS = ("bash", "sh", "shell", "console")
FENCE = re.compile(r"^ {0,3}```\s*([\w+-]*)")
# A placeholder the prose puts where a value goes: N, FILE, ISO_TIME, DIR.
PLACEHOLDER = re.compile(r"[A-Z][A-Z0-9_]*")


@dataclass(frozen=True)
class Block:
    """A fenced code block: `line` is the README line of its first line of code."""

    path: str
    line: int
    lang: str
    text: str
    not_config: bool = False

    def where(self, offset: int = 0) -> str:
        """The README line `offset` lines into the block's code."""
        return f"{self.path}:{self.line + offset}"

    @property
    def name(self) -> str:
        """The block by its opening fence's line, as an editor shows it."""
        return self.where(-1)


@dataclass(frozen=True)
class Command:
    """One shell command line as the README writes it: `complete` when it is a block's line, to be run as
    it is; an inline mention in the prose (`pitstop eval router-logs`) may leave required arguments out."""

    where: str
    text: str
    words: tuple[str, ...]
    complete: bool

    @property
    def program(self) -> str:
        return self.words[0] if self.words else ""


def read(path: str) -> str:
    return (REPO_ROOT / path).read_text()


def fenced_blocks(text: str, path: str) -> list[Block]:
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if re.match(r"^ {0,3}```\s*$", lines[j])), len(lines))
        before = next((line.strip() for line in reversed(lines[:i]) if line.strip()), "")
        blocks.append(Block(path, i + 2, opening.group(1).lower(), "\n".join(lines[i + 1:end]),
                            not_config=before == NOT_CONFIG))
        i = end + 1
    return blocks


def prose(text: str) -> str:
    """The text with its fenced blocks blanked (line numbers kept), for inline code spans."""
    lines = text.splitlines()
    for block in fenced_blocks(text, ""):
        for n in range(block.line - 2, min(block.line + block.text.count("\n") + 1, len(lines))):
            lines[n] = ""
    return "\n".join(lines)


def code_spans(text: str, path: str) -> list[tuple[str, str]]:
    """(where, the span's text with its line breaks as spaces) for each `inline code` span in the prose."""
    body = prose(text)
    return [(f"{path}:{body.count(chr(10), 0, m.start()) + 1}", " ".join(m.group(1).split()))
            for m in re.finditer(r"(?<!`)`([^`]+)`(?!`)", body)]


def _words(text: str, shell: bool = True) -> list[list[str]]:
    """A shell line's simple commands (split at ;, &&, ||, |, &), words unquoted and comments dropped; the
    docs' `[--optional ARG]` brackets and `...` are not words. Not `shell`: one command, whose `a|b` is a
    choice between two values, as the prose writes it."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|" if shell else False)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for word in lexer:
        if word and set(word) <= set(";&|"):
            commands.append([])
            continue
        word = word.strip("[]")
        if word and word != "...":
            commands[-1].append(word)
    for command in commands:  # VAR=value before the program sets its environment
        while command and re.match(r"^[A-Za-z_]\w*=", command[0]):
            command.pop(0)
    return [c for c in commands if c]


def block_commands(block: Block) -> list[Command]:
    """The command lines of a shell block, a line ending in a backslash joined to the next."""
    commands: list[Command] = []
    pending, start = "", 0
    for n, line in enumerate(block.text.splitlines()):
        if not pending:
            start = n
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        text = (pending + line).strip()
        pending = ""
        commands += [Command(block.where(start), text, tuple(words), True) for words in _words(text)]
    return commands


def readme_commands() -> list[Command]:
    """Every command line of the READMEs' shell blocks, and every inline span that is a command."""
    commands: list[Command] = []
    for path in READMES:
        text = read(path)
        for block in fenced_blocks(text, path):
            if block.lang in SHELLS:
                commands += block_commands(block)
        for where, span in code_spans(text, path):
            # a command's name, then a word (`pitstop + verify` names a router, not a command)
            if re.match(r"^(\S*/)?(pitstop|python3?|make) [a-z.-]", span) or re.match(r"^bench/\w+\.py\b", span):
                commands += [Command(where, span, tuple(words), False) for words in _words(span, shell=False)]
    return commands


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _bad_choice(action: argparse.Action, value: str) -> str | None:
    """The alternative of `value` (the docs write `jsonl|parquet`) that is not one of the option's choices."""
    if action.choices is None or PLACEHOLDER.fullmatch(value):
        return None
    choices = {str(c) for c in action.choices}
    return next((v for v in value.split("|") if v not in choices), None)


def parser_problems(parser: argparse.ArgumentParser, words: Sequence[str], complete: bool) -> list[str]:
    """What is wrong with `words` (the arguments after the program's name) for `parser`, parsed and never
    run: a subcommand or option it does not have, a value outside an option's choices; when `complete`,
    whatever else argparse refuses (a required option missing, a value of the wrong type). Options must be
    named in full, since argparse would take the prefix a renamed flag's old name may be."""
    problems: list[str] = []
    current, taking = parser, None  # the option whose values follow, with its action
    for word in words:
        if re.match(r"^--?[A-Za-z]", word):
            name, _, value = word.partition("=")
            action = current._option_string_actions.get(name)
            if action is None:
                problems.append(f"`{current.prog}` has no option {name}")
                taking = None
            elif value and (bad := _bad_choice(action, value)) is not None:
                problems.append(f"{name}: {bad!r} is not one of {list(action.choices or ())}")
            else:
                taking = None if value or action.nargs == 0 else (name, action)
            continue
        if taking is not None:
            name, action = taking
            if (bad := _bad_choice(action, word)) is not None:
                problems.append(f"{name}: {bad!r} is not one of {list(action.choices or ())}")
            if action.nargs in (None, 1, "?"):
                taking = None
            continue
        subcommands = _subcommands(current)
        if subcommands:
            if word not in subcommands:
                problems.append(f"`{current.prog}` has no subcommand {word!r} (it has {', '.join(subcommands)})")
                return problems
            current = subcommands[word]
    if complete and not problems:
        refusal = io.StringIO()
        try:
            with contextlib.redirect_stderr(refusal), contextlib.redirect_stdout(io.StringIO()):
                parser.parse_args(list(words))
        except SystemExit as exit_:
            if exit_.code:
                problems.append(refusal.getvalue().strip().splitlines()[-1])
    return problems
