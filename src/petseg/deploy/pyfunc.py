"""The model as an MLflow pyfunc that takes photos: a column of base64-encoded image files in, per photo the 0/255
mask at the photo's own size (base64 PNG) and the pet's share of the photo out. The preprocessing is
`petseg predict`'s own (EXIF orientation, RGB conversion, resize, normalization)."""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel
from PIL import Image

from petseg.data.photos import load_rgb
from petseg.evaluation.predictor import Predictor, mask_at_size

INPUT_COLUMN = "image"
OUTPUT_COLUMNS = ("mask_png", "foreground_fraction", "error")


def encode_png(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_png(text: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text))))


def segment_encoded(predictor, encoded: Any, threshold: float) -> dict[str, Any]:
    """One request row: a base64 image in, its mask out; a row that is not an image gets an error, not a crash."""
    try:
        if not isinstance(encoded, str):
            raise ValueError(f"expected a base64 string in column '{INPUT_COLUMN}', got {type(encoded).__name__}")
        photo = load_rgb(io.BytesIO(base64.b64decode(encoded, validate=True)), predictor.image_size)
    except (OSError, SyntaxError, ValueError, binascii.Error, Image.DecompressionBombError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        return {"mask_png": "", "foreground_fraction": float("nan"), "error": f"not a readable image ({reason})"}
    probability = predictor.probabilities(photo.resized[None])[0]
    mask = mask_at_size(probability, photo.width, photo.height, threshold)
    return {"mask_png": encode_png(mask), "foreground_fraction": float(np.mean(mask > 0)), "error": ""}


class PetsegSegmenter(PythonModel):
    """Loads the checkpoint logged beside it as the artifact ``checkpoint``, served with its own TTA and threshold."""

    def load_context(self, context) -> None:
        self.predictor = Predictor(context.artifacts["checkpoint"], "cpu")
        self.threshold = self.predictor.threshold

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        if INPUT_COLUMN not in model_input:
            raise ValueError(f"the request needs a column '{INPUT_COLUMN}' of base64-encoded image files")
        rows = [segment_encoded(self.predictor, value, self.threshold) for value in model_input[INPUT_COLUMN]]
        return pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS))
