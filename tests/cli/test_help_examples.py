"""The examples we print and document run as written.

`VAR=value cmd1 & cmd2` sets VAR for cmd1 only: the second command starts without it
(`safespot worker` without SAFESPOT_REDIS_URL has no queue to read).  Such lines must
`export` the variable, or set it on every command."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from safespot_cli.main import build_parser

REPO = Path(__file__).resolve().parents[2]
# One or more leading assignments, then a command, then an operator that starts another one.
PREFIX_THEN_SECOND_COMMAND = re.compile(
    r"^\s*(?:[A-Z_][A-Z0-9_]*=\S+\s+)+[^&;|]*?(?:&&|\|\||[;|]|&(?!\d|>))\s*[\w./$]")


def help_texts() -> dict[str, str]:
    parser = build_parser()
    texts = {"safespot --help": parser.format_help()}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                texts[f"safespot {name} --help"] = sub.format_help()
    return texts


def documents() -> dict[str, str]:
    paths = [REPO / "README.md", REPO / "deploy" / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    return {str(p.relative_to(REPO)): p.read_text() for p in paths}


def misleading_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if PREFIX_THEN_SECOND_COMMAND.search(line)]


@pytest.mark.parametrize("line", [
    "SAFESPOT_REDIS_URL=redis://localhost:6379 safespot serve & safespot worker",
    "A=1 B=2 safespot serve && safespot worker",
    "SAFESPOT_REDIS_URL=x safespot serve; safespot worker",
])
def test_the_check_catches_a_prefix_that_reaches_one_command_only(line: str) -> None:
    assert misleading_lines(line) == [line]


@pytest.mark.parametrize("line", [
    "export SAFESPOT_REDIS_URL=redis://localhost:6379/0",
    "SAFESPOT_REDIS_URL=redis://localhost:6379/0 safespot serve --port 8000 &",
    "SAFESPOT_REDIS_URL=x safespot worker 2>&1 >log",
    "safespot serve & safespot worker",
])
def test_the_check_passes_what_runs_as_written(line: str) -> None:
    assert misleading_lines(line) == []


def test_no_help_text_sets_a_variable_for_only_the_first_of_two_commands() -> None:
    texts = help_texts()
    assert "safespot worker --help" in texts and "safespot serve --help" in texts
    found = {name: misleading_lines(text) for name, text in texts.items()}
    assert not {k: v for k, v in found.items() if v}
    assert "export SAFESPOT_REDIS_URL" in texts["safespot --help"]


def test_no_document_sets_a_variable_for_only_the_first_of_two_commands() -> None:
    found = {name: misleading_lines(text) for name, text in documents().items()}
    assert not {k: v for k, v in found.items() if v}
