"""The README and docs/ cannot point at what is not there: links resolve, named make targets and petseg commands
exist (with the flags they are shown with)."""

from __future__ import annotations

import re
import shlex

import pytest
from helpers import REPO

from petseg.cli import build_parser

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def code_lines(text: str) -> list[str]:
    """The command lines of the fenced code blocks (comments cut off)."""
    blocks = re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)
    return [line.split(" #")[0].strip() for block in blocks for line in block.splitlines()]


def code_spans(text: str) -> list[str]:
    """Inline code outside the fenced blocks."""
    return re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))


def test_the_readme_is_a_front_door():
    assert (REPO / "README.md").stat().st_size <= 10 * 1024


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(page):
    for target in LINK.findall(page.read_text()):
        if target.startswith(("http://", "https://", "#", "mailto:")):
            continue
        assert (page.parent / target.split("#")[0]).exists(), f"{page.name}: broken link {target}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_make_target_named_exists(page):
    makefile = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"(?m)^([a-z][a-z-]*):", makefile))
    text = page.read_text()
    lines = code_lines(text) + code_spans(text)
    named = {m for line in lines for m in re.findall(r"(?:^|\s)make ([a-z][a-z-]*)", line)}
    assert named <= targets, f"{page.name} names make targets the Makefile lacks: {sorted(named - targets)}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_petseg_command_shown_parses(page):
    parser = build_parser()
    commands = [line for line in code_lines(page.read_text()) if line.startswith("petseg ")]
    for line in commands:
        words = shlex.split(line.replace("$(", "").replace("...", "x"))[1:]
        if "--help" in words or "-h" in words:
            continue
        try:
            parser.parse_args(words)
        except SystemExit:
            pytest.fail(f"{page.name}: `{line}` is not a valid petseg command")
    commands = parser._subparsers._group_actions[0].choices  # the subcommands, and bench's own
    benches = commands["bench"]._subparsers._group_actions[0].choices
    for span in code_spans(page.read_text()):
        words = span.split()
        if words[:1] == ["petseg"] and len(words) > 1 and not words[1].startswith("-"):
            assert words[1] in commands, f"{page.name}: `{span}` names no petseg command"
            if words[1] == "bench" and len(words) > 2:
                assert words[2] in benches, f"{page.name}: `{span}` names no petseg bench"


def test_the_readme_names_the_two_newcomer_commands_and_they_exist():
    text = (REPO / "README.md").read_text()
    assert "make repro " in text and "make test " in text
