"""The shipped recipe and the reference report's, one documented command apart."""

from __future__ import annotations

import shlex
import subprocess

import yaml
from helpers import REPO, shipped_params_file

from petseg.config import load_params
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
    "prepare.image_size": 256,
    "train.common.loss.bce_weight": 1.0,
    "train.common.loss.dice_weight": 1.0,
    "train.common.tta": "none",
}


def reference_overrides() -> dict:
    """The -S pairs of `make repro-reference`, as the Makefile spells them (a dry run; the stamp is /dev/null so that
    no rule that rebuilds the virtualenv is even considered)."""
    dry_run = subprocess.run(
        ["make", "-n", "repro-reference", "STAMP=/dev/null"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    command = next(line for line in dry_run.splitlines() if line.startswith("dvc exp run")).split(";")[0]
    words = shlex.split(command)
    pairs = [words[i + 1] for i, word in enumerate(words) if word == "-S"]
    return {key: yaml.safe_load(value) for key, value in (pair.split("=", 1) for pair in pairs)}


def flat(params) -> dict:
    return to_flat_dict(params)


def test_make_repro_reference_runs_the_reports_recipe():
    reference = flat(load_params(shipped_params_file(), reference_overrides()))
    assert {key: reference[key] for key in REPORT} == REPORT


def test_the_shipped_recipe_differs_from_the_report_where_the_readme_says():
    shipped = flat(load_params(shipped_params_file()))
    reference = flat(load_params(shipped_params_file(), reference_overrides()))
    changed = {key for key in shipped if shipped[key] != reference[key]}
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
