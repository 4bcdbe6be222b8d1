"""MLflow Model Registry: every evaluated model becomes a version of `petseg-<model>` carrying its test scores, and
`petseg promote` moves the alias `champion` only through a gate (on the same test split, no worse overall, no species
dropping by more than `promote.max_species_drop`)."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from petseg.deploy.pyfunc import INPUT_COLUMN, PetsegSegmenter, encode_png

CHAMPION, CHALLENGER = "champion", "challenger"


def registered_name(model: str) -> str:
    return f"petseg-{model}"


def version_tags(metrics: dict, split_hash: str, extra: dict[str, str]) -> dict[str, str]:
    """What the gate compares, as tags of the version: test Dice (per image, pooled, boundary), per species."""
    tags = {
        f"test_{key}": f"{metrics[key]:.6f}" for key in ("dice_per_image", "dice_dataset", "boundary_dice_per_image")
    }
    tags |= {
        f"test_dice_per_image.{kind}": f"{scores['dice_per_image']:.6f}" for kind, scores in metrics["species"].items()
    }
    return tags | {"test_split_hash": split_hash} | extra


def log_and_register(
    mlflow, model: str, checkpoint: Path, example_photo, threshold: float, tta: str, tags: dict
) -> tuple[str, str]:
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
                model_config={"threshold": threshold, "tta": tta},  # served as the evaluate stage scored it
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


@dataclass(frozen=True)
class Decision:
    version: str
    alias: str  # what the newest version holds now: champion or challenger
    reason: str


def promote(client, model: str, max_species_drop: float) -> Decision:
    """Gate the newest version of `petseg-<model>` against the champion; idempotent."""
    name = registered_name(model)
    versions = client.search_model_versions(f"name = '{name}'")
    if not versions:
        raise LookupError(f"{name} has no registered version yet; run `dvc repro` (the evaluate stage registers)")
    newest = max(versions, key=lambda v: int(v.version))
    champion = _alias(client, name, CHAMPION)
    if champion is None or champion.version == newest.version:
        client.set_registered_model_alias(name, CHAMPION, newest.version)
        why = "the first version" if champion is None else "already the champion"
        return Decision(newest.version, CHAMPION, why)
    failed = _failed_rule(newest.tags, champion.tags, max_species_drop)
    if failed:
        client.set_registered_model_alias(name, CHALLENGER, newest.version)
        return Decision(newest.version, CHALLENGER, failed)
    client.set_registered_model_alias(name, CHAMPION, newest.version)
    return Decision(newest.version, CHAMPION, f"passed the gate against version {champion.version}")


def _alias(client, name: str, alias: str):
    try:
        return client.get_model_version_by_alias(name, alias)
    except Exception:  # noqa: BLE001 - MLflow raises its generic exception for a missing alias
        return None


def _failed_rule(new: dict, old: dict, max_species_drop: float) -> str:
    """The first rule the new version fails against the champion, or ''."""
    if new.get("test_split_hash") != old.get("test_split_hash"):
        return "its test split differs from the champion's (scores are not comparable)"
    ours, theirs = float(new["test_dice_per_image"]), float(old["test_dice_per_image"])
    if ours < theirs:
        return f"test Dice {ours:.4f} is below the champion's {theirs:.4f}"
    for key, value in old.items():
        if key.startswith("test_dice_per_image.") and key in new:
            drop = float(value) - float(new[key])
            if drop > max_species_drop:
                species = key.split(".", 1)[1]
                return (
                    f"{species} test Dice drops by {drop:.4f} (more than promote.max_species_drop {max_species_drop})"
                )
    return ""
