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
    """Lines of the fenced code blocks and of inline code spans."""
    blocks = re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)
    spans = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    return [line.split(" #")[0].strip() for block in blocks for line in block.splitlines()] + spans


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
    named = {m for line in code_lines(page.read_text()) for m in re.findall(r"(?:^|\s)make ([a-z][a-z-]*)", line)}
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


def test_the_readme_names_the_two_newcomer_commands_and_they_exist():
    text = (REPO / "README.md").read_text()
    assert "make repro " in text and "make test " in text
