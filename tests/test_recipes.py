"""The shipped recipe and the reference report's, one documented command apart."""

from __future__ import annotations

import shlex
import subprocess

import yaml
from helpers import REPO, shipped_params_file

from petseg.config import OFFICIAL_SOURCE, load_params
from petseg.schema import to_flat_dict

# The report's recipe as published (with the mask flipped along with the photo: its one bug is never copied).
REPORT = {
    "train.common.select_by": "dice",
    "train.common.validate_every": 1,  # ReduceLROnPlateau and the best epoch look at every epoch's validation
    "train.common.amp": False,
    "train.common.progressive_scale": 1.0,
    "train.common.progressive_until": 0.0,
    "train.unet.base_channels": 64,
    "train.unet.batch_norm": False,
    **{f"train.{m}.optimizer": "adam" for m in ("unet", "res34")},
    **{f"train.{m}.lr": 1e-4 for m in ("unet", "res34")},
    **{f"train.{m}.weight_decay": 1e-5 for m in ("unet", "res34")},
    **{f"train.{m}.schedule": "plateau" for m in ("unet", "res34")},
    **{f"train.{m}.batch_size": 16 for m in ("unet", "res34")},
    "train.res34.pretrained": False,
    "prepare.source": OFFICIAL_SOURCE,
    "prepare.image_size": 256,
    "train.common.loss.bce_weight": 1.0,
    "train.common.loss.dice_weight": 1.0,
    "train.common.tta": "none",
}


# The full experiment: the official archives at 256 px, the widths and epochs the recipe was made for (a GPU run).
FULL = {
    "prepare.source": OFFICIAL_SOURCE,
    "prepare.image_size": 256,
    "resources.num_workers": 4,
    "train.unet.base_channels": 64,
    "train.unet.epochs": 40,
    "train.res34.epochs": 40,
    "train.unet.batch_size": 16,
    "train.res34.batch_size": 16,
    "infer.limit": 0,
}


def preset_overrides(target: str) -> dict:
    """The -S pairs of `make <target>`, as the Makefile spells them (a dry run; the stamp is /dev/null so that no
    rule that rebuilds the virtualenv is even considered)."""
    dry_run = subprocess.run(
        ["make", "-n", target, "STAMP=/dev/null"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    command = next(line for line in dry_run.splitlines() if line.startswith("dvc exp run")).split(";")[0]
    words = shlex.split(command)
    pairs = [words[i + 1] for i, word in enumerate(words) if word == "-S"]
    return {key: yaml.safe_load(value) for key, value in (pair.split("=", 1) for pair in pairs)}


def flat(params) -> dict:
    return to_flat_dict(params)


def test_the_default_experiment_is_the_bundled_sample_with_fixed_epochs():
    shipped = flat(load_params(shipped_params_file()))
    assert shipped["prepare.source"] == "sample" and (REPO / "sample" / "images.tar.gz").is_file()
    assert shipped["train.common.max_minutes"] == 0  # fixed epochs: the same result however fast the machine


def test_make_repro_full_changes_the_data_and_sizes_and_nothing_else():
    shipped = flat(load_params(shipped_params_file()))
    full = flat(load_params(shipped_params_file(), preset_overrides("repro-full")))
    assert {key for key in shipped if shipped[key] != full[key]} <= set(FULL)  # the recipe itself is the same
    assert {key: full[key] for key in FULL} == FULL


def test_make_repro_reference_runs_the_reports_recipe_on_the_full_data():
    reference = flat(load_params(shipped_params_file(), preset_overrides("repro-reference")))
    assert {key: reference[key] for key in REPORT} == REPORT
    assert {key: reference[key] for key in FULL if key not in REPORT} == {
        k: v for k, v in FULL.items() if k not in REPORT
    }


def test_the_shipped_recipe_differs_from_the_report_where_the_docs_say():
    full = flat(load_params(shipped_params_file(), preset_overrides("repro-full")))
    reference = flat(load_params(shipped_params_file(), preset_overrides("repro-reference")))
    changed = {key for key in full if full[key] != reference[key]}
    per_model = ("optimizer", "lr", "weight_decay", "schedule", "warmup_epochs")
    assert changed == {
        "train.common.select_by",
        "train.common.validate_every",
        "train.common.amp",
        "train.common.progressive_scale",
        "train.common.progressive_until",
        "train.unet.batch_norm",
        "train.common.tta",
        *(f"train.{model}.{key}" for model in ("unet", "res34") for key in per_model),
    }
