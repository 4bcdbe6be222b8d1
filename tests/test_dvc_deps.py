"""dvc.yaml cannot drift from the code: each stage depends on exactly the files it imports and the params it reads."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml
from helpers import REPO, shipped_params

SOURCE_ROOTS = {"petseg": REPO / "src", "stages": REPO}

# The params sections each stage reads (stages/<module>.py and what it calls); the rest change no stage's results.
NEUTRAL_SECTIONS = {"resources", "tracking", "promote"}
STAGE_READS = {
    "prepare": ["prepare"],
    "train@unet": ["train.common", "train.unet"],
    "train@res34": ["train.common", "train.res34"],
    "evaluate": ["evaluate"],
    "infer": ["infer"],
    "export": [],
}


def module_file(name: str) -> Path | None:
    """The source file of an importable module of ours (a package's __init__.py), or None."""
    root = SOURCE_ROOTS.get(name.split(".")[0])
    if root is None:
        return None
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path) -> set[str]:
    """Every module an import statement in ``path`` can load, function-level imports included."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)  # `from pkg import submodule`
    # Importing a.b.c runs a/__init__.py and a/b/__init__.py first.
    return {".".join(name.split(".")[:i]) for name in names for i in range(1, name.count(".") + 2)}


def import_closure(module: str) -> set[str]:
    """Repo-relative paths of every source file that ``python -m <module>`` can execute."""
    seen: set[Path] = set()
    todo = [".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 2)]  # stages/__init__.py runs first
    while todo:
        path = module_file(todo.pop())
        if path is None or path in seen:
            continue
        seen.add(path)
        todo.extend(imported_modules(path))
    return {str(path.relative_to(REPO)) for path in seen}


def dvc_stages() -> dict:
    """dvc.yaml's stages, a `foreach` stage expanded as DVC names them (<stage>@<item>)."""
    stages = {}
    for name, spec in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"].items():
        if "foreach" not in spec:
            stages[name] = spec
            continue
        for item in spec["foreach"]:
            stages[f"{name}@{item}"] = yaml.safe_load(yaml.safe_dump(spec["do"]).replace("${item}", item))
    return stages


def stage_module(cmd: str) -> str:
    words = cmd.split()
    return words[words.index("-m") + 1]


def leaf_keys(raw: dict, prefix: str = "") -> list[str]:
    keys = []
    for name, value in raw.items():
        dotted = f"{prefix}{name}"
        keys += leaf_keys(value, dotted + ".") if isinstance(value, dict) and value else [dotted]
    return keys


def section_keys(section: str) -> list[str]:
    return [key for key in leaf_keys(shipped_params()) if key == section or key.startswith(section + ".")]


@pytest.mark.parametrize("stage", list(STAGE_READS))
def test_stage_code_deps_are_its_import_closure(stage):
    spec = dvc_stages()[stage]
    declared = {dep for dep in spec["deps"] if dep.startswith(("src/", "stages/"))}
    closure = import_closure(stage_module(spec["cmd"]))
    assert not closure - declared, f"{stage}: dvc.yaml misses {sorted(closure - declared)}"
    assert not declared - closure, f"{stage}: dvc.yaml lists code it never imports: {sorted(declared - closure)}"


@pytest.mark.parametrize("stage", list(STAGE_READS))
def test_stage_params_are_the_sections_it_reads(stage):
    declared = set(dvc_stages()[stage].get("params", []))
    expected = set(STAGE_READS[stage])
    assert declared == expected, f"{stage}: missing {sorted(expected - declared)}, extra {sorted(declared - expected)}"
    assert all(section_keys(section) for section in declared), f"{stage}: names no section of params.yaml"


def test_the_sections_no_stage_depends_on_are_the_rest():
    """Speed (resources), names (tracking) and `petseg promote` settings re-run nothing; every other key is read."""
    read = {key for sections in STAGE_READS.values() for section in sections for key in section_keys(section)}
    unread = {key.split(".")[0] for key in leaf_keys(shipped_params()) if key not in read}
    assert unread == NEUTRAL_SECTIONS


def test_every_stage_is_checked():
    assert set(dvc_stages()) == set(STAGE_READS)


def test_a_deleted_dep_is_named(monkeypatch):
    """The check itself can fail: drop one file the train stage imports and it names the stage and the file."""
    stages = dvc_stages()
    stages["train@unet"]["deps"].remove("src/petseg/training/losses.py")
    monkeypatch.setattr("test_dvc_deps.dvc_stages", lambda: stages)
    with pytest.raises(AssertionError, match=r"train@unet: dvc.yaml misses \['src/petseg/training/losses.py'\]"):
        test_stage_code_deps_are_its_import_closure("train@unet")


def test_closure_follows_function_level_and_submodule_imports():
    closure = import_closure("petseg.cli")
    assert "src/petseg/bench/train.py" in closure  # imported inside main()
    assert "src/petseg/training/__init__.py" in closure  # a package runs its __init__ first
