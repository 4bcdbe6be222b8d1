"""A model card per model (Markdown): what data, what recipe, how well, how fast, how to use it, and its limits."""

from __future__ import annotations

from typing import Any


def _table(rows: list[tuple[str, Any]]) -> str:
    return "\n".join(["| | |", "|---|---|", *(f"| {key} | {value} |" for key, value in rows)])


def model_card(model: str, data: dict, recipe: dict, metrics: dict, speed: dict) -> str:
    """``data``: reports/prepare.json plus the split hash and source; ``recipe``: the flat training params stored in
    the checkpoint; ``metrics``: the model's entry of reports/evaluate/metrics.json; ``speed``: measured img/s."""
    low, high = metrics["dice_per_image_ci95"]
    species = ", ".join(
        f"{kind} {scores['dice_per_image']:.4f} ({scores['images']} images)"
        for kind, scores in metrics["species"].items()
    )
    counts = data["counts"]
    return f"""# petseg-{model}

A {"ResNet34-encoder UNet" if model == "res34" else "UNet"} that marks the pet in a photo (binary mask), trained from
scratch by the petseg pipeline.

## Data
{
        _table(
            [
                ("source", data["source"]),
                ("photos (train / valid / test)", f"{counts['train']} / {counts['valid']} / {counts['test']}"),
                ("species per split", data["species"]),
                ("test split hash (sha256 of the split lists)", f"`{data['split_hash']}`"),
                ("trimap boundary pixels count as", data["boundary"]),
                ("image size", f"{data['image_size']} px"),
            ]
        )
    }

## Recipe
{_table([(f"`{key}`", value) for key, value in sorted(recipe.items())])}

## How well (official test split)
{
        _table(
            [
                (
                    "Dice per image (95 % bootstrap interval)",
                    f"{metrics['dice_per_image']:.4f} [{low:.4f}, {high:.4f}]",
                ),
                ("IoU per image", f"{metrics['iou_per_image']:.4f}"),
                ("Dice, pixels pooled", f"{metrics['dice_dataset']:.4f}"),
                ("boundary Dice (band around the outline)", f"{metrics['boundary_dice_per_image']:.4f}"),
                ("per species (Dice per image)", species),
                ("images predicted empty / all pet", f"{metrics['empty_predictions']} / {metrics['full_predictions']}"),
            ]
        )
    }

## How fast (measured in this run, this machine)
{_table([(what, f"{value:.1f} img/s") for what, value in speed.items()])}

## How to use it
```bash
petseg predict --model models/{model}.pt --out masks photo.jpg folder/
petseg predict --backend onnxruntime --model models/{model}.onnx --out masks photo.jpg
mlflow models serve -m models:/petseg-{model}@champion --env-manager local --host 127.0.0.1 --port 5001
# POST {{"dataframe_split": {{"columns": ["image"], "data": [["<base64 JPEG or PNG>"]]}}}} to /invocations
```

## Limits
- Trained on {counts["train"]} photos of the species above only ({data["source"]}); other animals, breeds or
  photo styles are untested. Scores at {data["image_size"]} px do not carry over to other sizes.
- The interval above is over test photos of this split; a difference between models inside it is not a win.
- A photo over 150 Mpx is refused; masks are thresholded at 0.5.
"""
