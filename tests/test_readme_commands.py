"""The commands README.md and bench/README.md show are ones that exist, parsed and never run: each
`pitstop ...` line of a shell block parses with the real CLI's parser (gateway.cli.build_parser), and each
inline `pitstop ...` the prose names has its subcommands and options (its required arguments may be left
out there); each `python -m bench.X` names a module that is there, and where flags are shown the bench's own
argparse takes them (its parser caught as its main() asks it to parse, before anything runs); each
`make X` names a Makefile target. The failure names the README line and the word that is wrong."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import inspect
import re
from functools import cache
from unittest import mock

import pytest

from gateway.cli import build_parser
from tests.readme_examples import (
    READMES,
    REPO_ROOT,
    Command,
    block_commands,
    fenced_blocks,
    parser_problems,
    read,
    readme_commands,
)

COMMANDS = readme_commands()
PITSTOP = [c for c in COMMANDS if c.program.split("/")[-1] == "pitstop"]
PYTHON_MODULES = [c for c in COMMANDS if re.fullmatch(r"(\S*/)?python3?", c.program) and c.words[1:2] == ("-m",)]
SCRIPTS = [c for c in COMMANDS if re.fullmatch(r"bench/\w+\.py", c.program)]
MAKE = [c for c in COMMANDS if c.program == "make"]


def _id(command: Command) -> str:
    return f"{command.where} {' '.join(command.words[:4])}"


@cache
def pitstop_parser() -> argparse.ArgumentParser:
    return build_parser()  # what `pitstop` parses its command line with (gateway/cli.py)


@pytest.mark.parametrize("command", PITSTOP, ids=_id)
def test_a_pitstop_command_in_the_readmes_parses(command: Command) -> None:
    problems = parser_problems(pitstop_parser(), command.words[1:], command.complete)
    assert not problems, f"{command.where}: `{command.text}`: " + "; ".join(problems)


class _Parsing(Exception):
    """Raised in place of a bench parser's parse_args: its main() stops there, having run nothing yet."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__(parser.prog)
        self.parser = parser


@cache
def bench_parser(module: str) -> argparse.ArgumentParser | None:
    """The parser `python -m module` reads its flags with, or None when its main() has none."""
    main = getattr(importlib.import_module(module), "main", None)
    if main is None or "parse_args(" not in inspect.getsource(main):
        return None  # calling it would run the bench

    def caught(parser: argparse.ArgumentParser, *_: object, **__: object) -> argparse.Namespace:
        raise _Parsing(parser)

    with mock.patch.object(argparse.ArgumentParser, "parse_args", caught):
        try:
            main()
        except _Parsing as parsing:
            parsing.parser.prog = f"python -m {module}"  # not sys.argv[0], pytest's
            return parsing.parser
    return None


def _module_file(module: str) -> bool:
    path = REPO_ROOT.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__main__.py").is_file()


def _bench_problems(module: str, flags: tuple[str, ...], complete: bool) -> list[str]:
    if not flags:
        return []
    parser = bench_parser(module)
    if parser is None:
        return [f"{module}'s main() reads no flags"]
    return parser_problems(parser, flags, complete)


@pytest.mark.parametrize("command", PYTHON_MODULES, ids=_id)
def test_a_python_module_the_readmes_run_is_there(command: Command) -> None:
    assert len(command.words) > 2, f"{command.where}: `{command.text}` names no module"
    module, flags = command.words[2], command.words[3:]
    top = module.split(".")[0]
    if not (REPO_ROOT / top).is_dir() and not (REPO_ROOT / f"{top}.py").is_file():
        assert importlib.util.find_spec(top) is not None, f"{command.where}: no module {module!r}"
        return  # an installed tool's (pytest, pip)
    assert _module_file(module), f"{command.where}: `{command.text}`: there is no module {module!r} in the repo"
    problems = _bench_problems(module, flags, command.complete)
    assert not problems, f"{command.where}: `{command.text}`: " + "; ".join(problems)


@pytest.mark.parametrize("command", SCRIPTS, ids=_id)
def test_a_bench_script_the_readmes_run_is_there(command: Command) -> None:
    module = command.program.removesuffix(".py").replace("/", ".")
    assert _module_file(module), f"{command.where}: `{command.text}`: there is no {command.program}"
    problems = _bench_problems(module, command.words[1:], command.complete)
    assert not problems, f"{command.where}: `{command.text}`: " + "; ".join(problems)


def _make_targets() -> set[str]:
    return set(re.findall(r"^([\w.-]+)\s*:(?!=)", read("Makefile"), re.MULTILINE))


@pytest.mark.parametrize("command", MAKE, ids=_id)
def test_a_make_target_the_readmes_name_is_there(command: Command) -> None:
    targets = [w for w in command.words[1:] if not w.startswith("-") and "=" not in w]
    missing = [t for t in targets if t not in _make_targets()]
    assert not missing, f"{command.where}: `{command.text}`: no Makefile target {', '.join(missing)}"


def test_the_readmes_commands_are_found() -> None:
    """An extraction that found nothing would pass every test above by having nothing to check."""
    assert len([c for c in PITSTOP if c.complete]) >= 10 and len(PITSTOP) >= 30, len(PITSTOP)
    assert len(PYTHON_MODULES) >= 30 and MAKE


def test_a_bogus_flag_fails_naming_its_readme_line_and_the_flag() -> None:
    block = next(b for path in READMES for b in fenced_blocks(read(path), path)
                 if b.lang == "bash" and "pitstop engine serve" in b.text)
    first = next(i for i, line in enumerate(block.text.splitlines()) if "pitstop engine serve" in line)
    lines = block.text.splitlines()
    lines[first] = lines[first].replace(" serve ", " serve --bogus-flag 3 ", 1)
    command = next(c for c in block_commands(dataclasses.replace(block, text="\n".join(lines)))
                   if "--bogus-flag" in c.words)
    problems = parser_problems(pitstop_parser(), command.words[1:], command.complete)
    assert command.where == block.where(first)
    assert problems == ["`pitstop engine serve` has no option --bogus-flag"], problems


def test_a_flag_argparse_would_take_as_an_abbreviation_fails() -> None:
    """`--host-kv` parses (argparse takes a prefix of `--host-kv-memory`): a flag renamed to a longer name
    would hide behind it, so options must be written in full."""
    assert parser_problems(pitstop_parser(), ["engine", "serve", "--model", "m", "--host-kv", "1GiB"], True)
    assert not parser_problems(pitstop_parser(), ["engine", "serve", "--model", "m", "--host-kv-memory", "1GiB"], True)


def test_a_wrong_subcommand_or_choice_fails() -> None:
    parser = pitstop_parser()
    assert parser_problems(parser, ["engine", "sreve"], False) == [
        f"`pitstop engine` has no subcommand 'sreve' (it has {', '.join(_sub(parser, 'engine'))})"]
    assert parser_problems(parser, ["export", "outcomes", "--format", "jsonl|csv"], False) == [
        "--format: 'csv' is not one of ['jsonl', 'parquet']"]
    assert parser_problems(parser, ["export", "outcomes", "--format", "FORMAT"], False) == []  # a placeholder


def _sub(parser: argparse.ArgumentParser, name: str) -> list[str]:
    group = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
    return list(next(a for a in group._actions if isinstance(a, argparse._SubParsersAction)).choices)


def test_a_bench_flag_that_is_not_there_fails() -> None:
    """The bench's parser is caught before its main() runs anything: a flag it lacks is named."""
    problems = _bench_problems("bench.startup", ("--repeats", "5", "--bogus-flag"), True)
    assert problems == ["`python -m bench.startup` has no option --bogus-flag"], problems
