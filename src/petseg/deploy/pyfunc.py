"""The model as an MLflow pyfunc that takes photos: a column of base64-encoded image files in, per photo the 0/255
mask at the photo's own size (base64 PNG) and the pet's share of the photo out. The preprocessing is
`petseg predict`'s own (EXIF orientation, RGB conversion, resize, normalization).

A server answers many requests at once, so what one may cost is bounded: photos over :data:`SERVE_MAX_PIXELS`, rows
past :data:`MAX_ROWS` and encoded bytes past :data:`MAX_REQUEST_BYTES` get an error instead of work, and one photo at
a time is decoded and masked per model (:data:`_ONE_AT_A_TIME`), so concurrent requests queue instead of each holding
a full-size photo and mask in memory."""

from __future__ import annotations

import base64
import binascii
import io
import threading
from typing import Any

import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel
from PIL import Image

from petseg.data.photos import load_rgb
from petseg.deploy.backends import load_predictor
from petseg.errors import first_line
from petseg.evaluation.masks import mask_at_size

INPUT_COLUMN = "image"
OUTPUT_COLUMNS = ("mask_png", "foreground_fraction", "error")
SERVE_MAX_PIXELS = 25_000_000  # 5000 x 5000: a PNG decodes whole (RGB 75 MB) and its mask is as large (25 MB)
MAX_ROWS = 64  # photos in one request
MAX_REQUEST_BYTES = 64 * 2**20  # base64 text of one request
_ONE_AT_A_TIME = threading.Lock()


def encode_png(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _failed(error: str) -> dict[str, Any]:
    return {"mask_png": "", "foreground_fraction": float("nan"), "error": error}


def segment_encoded(predictor, encoded: Any, threshold: float) -> dict[str, Any]:
    """One request row: a base64 image in, its mask out; a row that is not an image gets an error, not a crash."""
    with _ONE_AT_A_TIME:
        try:
            if not isinstance(encoded, str):
                raise ValueError(f"expected a base64 string in column '{INPUT_COLUMN}', got {type(encoded).__name__}")
            data = io.BytesIO(base64.b64decode(encoded, validate=True))
            photo = load_rgb(data, predictor.image_size, SERVE_MAX_PIXELS)
        except (OSError, SyntaxError, ValueError, binascii.Error, Image.DecompressionBombError) as err:
            return _failed(f"not a readable image ({first_line(err)})")
        probability = predictor.probabilities(photo.resized[None])[0]
        mask = mask_at_size(probability, photo.width, photo.height, threshold)
        return {"mask_png": encode_png(mask), "foreground_fraction": float(np.mean(mask > 0)), "error": ""}


def segment_request(predictor, column, threshold: float) -> list[dict[str, Any]]:
    """Every row of a request, or, past :data:`MAX_ROWS` or :data:`MAX_REQUEST_BYTES`, an error for each row."""
    rows = list(column)
    size = sum(len(value) for value in rows if isinstance(value, str))
    if len(rows) > MAX_ROWS or size > MAX_REQUEST_BYTES:
        error = (
            f"request too large ({len(rows)} rows, {size / 2**20:.0f} MiB; at most {MAX_ROWS} rows and "
            f"{MAX_REQUEST_BYTES // 2**20} MiB a request): split it"
        )
        return [_failed(error) for _ in rows]
    return [segment_encoded(predictor, value, threshold) for value in rows]


class PetsegSegmenter(PythonModel):
    """Loads the model file logged beside it as the artifact ``checkpoint``, served with its own TTA and threshold: a
    ``.pt`` on PyTorch, an ``.onnx`` on ONNX Runtime (then the server never imports PyTorch)."""

    def load_context(self, context) -> None:
        self.predictor = load_predictor(context.artifacts["checkpoint"])
        self.threshold = self.predictor.threshold

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        if INPUT_COLUMN not in model_input:
            raise ValueError(f"the request needs a column '{INPUT_COLUMN}' of base64-encoded image files")
        rows = segment_request(self.predictor, model_input[INPUT_COLUMN], self.threshold)
        return pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS))
