"""A model card per model (Markdown): what data, what recipe, how well, how fast, how to use it, and its limits."""

from __future__ import annotations

from typing import Any

from petseg.config import MODEL_TITLES


def _table(rows: list[tuple[Any, ...]], header: tuple[str, ...] = ("", "")) -> str:
    def line(cells: tuple[Any, ...]) -> str:
        return "| " + " | ".join(str(cell) for cell in cells) + " |"

    return "\n".join([line(header).replace("  ", " "), "|---" * len(header) + "|", *map(line, rows)])


def _data_rows(data: dict) -> list[tuple[str, Any]]:
    counts = data["counts"]
    return [
        ("source", data["source"]),
        ("photos (train / valid / test)", f"{counts['train']} / {counts['valid']} / {counts['test']}"),
        ("species per split", data["species"]),
        ("test split hash (sha256 of the split lists)", f"`{data['split_hash']}`"),
        ("trimap boundary pixels count as", data["boundary"]),
        ("image size", f"{data['image_size']} px"),
    ]


def _score_rows(metrics: dict) -> list[tuple[str, Any]]:
    low, high = metrics["dice_per_image_ci95"]
    by_species = metrics["species"].items()
    species = ", ".join(f"{kind} {s['dice_per_image']:.4f} ({s['images']} images)" for kind, s in by_species)
    served = []
    if "dice_per_image_no_tta" in metrics:  # served with flip TTA: by every way out, as the checkpoint says
        served = [("Dice per image without the flip TTA it is served with", f"{metrics['dice_per_image_no_tta']:.4f}")]
    return [
        ("Dice per image (95 % bootstrap interval)", f"{metrics['dice_per_image']:.4f} [{low:.4f}, {high:.4f}]"),
        *served,
        ("IoU per image", f"{metrics['iou_per_image']:.4f}"),
        ("Dice, pixels pooled", f"{metrics['dice_dataset']:.4f}"),
        ("boundary Dice (band around the outline)", f"{metrics['boundary_dice_per_image']:.4f}"),
        ("per species (Dice per image)", species),
        ("images predicted empty / all pet", f"{metrics['empty_predictions']} / {metrics['full_predictions']}"),
    ]


def model_card(model: str, data: dict, recipe: dict, metrics: dict, speed: dict, environment: dict) -> str:
    """``data``: the prepared data's meta plus source, species and split hash; ``recipe``: the flat training params
    stored in the checkpoint; ``metrics``: the model's entry of reports/evaluate/metrics.json; ``speed``: by what was
    timed, (img/s, the machine it was measured on); ``environment``: the library versions that trained it (stored in
    the checkpoint)."""
    counts = data["counts"]
    data_table, recipe_table = _table(_data_rows(data)), _table([(f"`{k}`", v) for k, v in sorted(recipe.items())])
    score_table = _table(_score_rows(metrics))
    speed_table = _table([(k, f"{v:.1f} img/s", where) for k, (v, where) in speed.items()], ("", "speed", "machine"))
    kind = MODEL_TITLES[model]
    versions = ", ".join(f"{name} {value}" for name, value in environment.items())
    return f"""# petseg-{model}

A {kind} that marks the pet in a photo (binary mask), trained from scratch by the petseg pipeline.

## Data
{data_table}

## Recipe
{recipe_table}

Trained with {versions}.

## How well (official test split)
{score_table}

## How fast (each on the machine it names)
{speed_table}

## How to use it
The scores above are of `models/{model}.pt`, the file the registry model serves. The export stage writes
`models/{model}.onnx` (checked against it) and `models/{model}.int8.onnx`, which is servable only when its test Dice is
within 0.005 of the fp32 export's: both numbers are in `reports/export/{model}.json`. Serving an `.onnx` needs
ONNX Runtime, not PyTorch.
```bash
petseg predict --model models/{model}.pt --out masks photo.jpg folder/
petseg predict --model models/{model}.onnx --out masks photo.jpg
petseg predict --model models/{model}.int8.onnx --out masks photo.jpg
mlflow models serve -m models:/petseg-{model}@champion --env-manager local --host 127.0.0.1 --port 5001
# POST {{"dataframe_split": {{"columns": ["image"], "data": [["<base64 JPEG or PNG>"]]}}}} to /invocations
```

## Limits
- Trained on {counts["train"]} photos of the species above only ({data["source"]}); other animals, breeds or
  photo styles are untested. Scores at {data["image_size"]} px do not carry over to other sizes.
- The interval above is over test photos of this split; a difference between models inside it is not a win.
- A photo over 150 Mpx is refused; masks are thresholded at {recipe.get("train.common.threshold", "?")} on the
  sigmoid{" of the flip-averaged logits" if recipe.get("train.common.tta") == "hflip" else ""} (the checkpoint's own
  setting, which every way out uses unless told otherwise).
"""
