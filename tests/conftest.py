from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from helpers import MINI_DATA, make_tree, pack, run_stage

TINY_PARAMS = {
    "prepare": {"image_size": 32, "workers": 2},
    "train": {
        "common": {"num_workers": 0, "threads": 1},
        "unet": {"base_channels": 4, "epochs": 2, "batch_size": 8, "lr": 0.003},
        "res34": {"epochs": 1, "batch_size": 8, "lr": 0.003},
    },
    "evaluate": {"batch_size": 8},
    "infer": {"limit": 6, "grid_rows": 2},
}


def deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = deep_merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def write_params(directory: Path, overrides: dict) -> None:
    (directory / "params.yaml").write_text(yaml.safe_dump(deep_merge(TINY_PARAMS, overrides)))


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
def mini_data() -> Path:
    if not (MINI_DATA / "images.tar.gz").exists():
        pytest.skip("../shared/data/oxford-pets-mini not present (CI has it)")
    return MINI_DATA
