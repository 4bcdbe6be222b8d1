from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers import SAMPLE, make_tree, pack, run_stage, write_params


@pytest.fixture(scope="session")
def synthetic_tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic-tree")
    make_tree(root)
    return root


@pytest.fixture(scope="session")
def synthetic_archives(tmp_path_factory, synthetic_tree) -> tuple[Path, dict[str, str]]:
    out = tmp_path_factory.mktemp("synthetic-archives")
    return out, pack(synthetic_tree, out)


@pytest.fixture(scope="session")
def prepared_project(tmp_path_factory, synthetic_archives) -> Path:
    """A project directory whose prepare stage already ran on the synthetic archives (32 px)."""
    project = tmp_path_factory.mktemp("prepared-project")
    write_params(project, {"prepare": {"source": str(synthetic_archives[0])}})
    result = run_stage("prepare", project, env={"PETSEG_MLFLOW": "0"})
    assert result.returncode == 0, result.stderr
    return project


@pytest.fixture
def project(tmp_path, prepared_project) -> Path:
    """A fresh project directory with a copy of the prepared synthetic data."""
    shutil.copytree(prepared_project / "data" / "prepared", tmp_path / "data" / "prepared")
    shutil.copy(prepared_project / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


@pytest.fixture
def real_data() -> Path:
    """The bundled sample of real Oxford-IIIT Pet photos, packed like the official archives."""
    return SAMPLE


@pytest.fixture(scope="session")
def trained(tmp_path_factory, prepared_project):
    """Both tiny models trained and evaluated once on the synthetic data (infer picks its grids from the evaluation);
    tests copy what they need."""
    project = tmp_path_factory.mktemp("trained")
    shutil.copytree(prepared_project / "data", project / "data")
    shutil.copy(prepared_project / "params.yaml", project / "params.yaml")
    for stage, *args in (("train", "--model", "unet"), ("train", "--model", "res34"), ("evaluate",)):
        result = run_stage(stage, project, *args, env={"PETSEG_MLFLOW": "0"})
        assert result.returncode == 0, result.stderr
    return project
