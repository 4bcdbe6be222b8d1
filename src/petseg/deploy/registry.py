"""MLflow Model Registry: every evaluated model becomes a version of `petseg-<model>` carrying its test scores as tags,
which `petseg promote` gates (deploy/gate.py)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch

from petseg.deploy.gate import SPECIES_PREFIX, SPLIT, registered_name
from petseg.deploy.pyfunc import INPUT_COLUMN, PetsegSegmenter, encode_png


def version_tags(metrics: dict, split_hash: str, extra: dict[str, str]) -> dict[str, str]:
    """What the gate compares, as tags of the version: test Dice (per image, pooled, boundary), per species."""
    tags = {
        f"test_{key}": f"{metrics[key]:.6f}" for key in ("dice_per_image", "dice_dataset", "boundary_dice_per_image")
    }
    tags |= {
        f"{SPECIES_PREFIX}{kind}": f"{scores['dice_per_image']:.6f}" for kind, scores in metrics["species"].items()
    }
    return tags | {SPLIT: split_hash} | extra


def log_and_register(mlflow, model: str, checkpoint: Path, example_photo, tags: dict) -> tuple[str, str]:
    """Log the photo-taking pyfunc in the active run, register it, tag the version; returns the version and the
    logged model's id."""
    import pandas as pd
    from mlflow.models import infer_signature

    example = pd.DataFrame({INPUT_COLUMN: [encode_png(example_photo)]})
    output = pd.DataFrame({"mask_png": ["iVBORw0KGgo="], "foreground_fraction": [0.5], "error": [""]})
    pyfunc_log = logging.getLogger("mlflow.pyfunc")
    level = pyfunc_log.level
    # Its CloudPickle warning concerns loading models from untrusted stores; this one is our own, just written.
    pyfunc_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            info = mlflow.pyfunc.log_model(
                name=registered_name(model),
                python_model=PetsegSegmenter(),
                artifacts={"checkpoint": str(checkpoint)},
                signature=infer_signature(example, output),
                input_example=example,
                # Explicit requirements skip MLflow's slow inference of them.
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "pillow", "pandas", "petseg"],
                registered_model_name=registered_name(model),
            )
    finally:
        pyfunc_log.setLevel(level)
    version = str(info.registered_model_version)
    client = mlflow.MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(registered_name(model), version, key, value)
    return version, info.model_id
