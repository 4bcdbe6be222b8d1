"""DVC stage `export`: each best checkpoint as ONNX (any batch, the model's size), checked against PyTorch on test
photos, and its int8 twin calibrated on the validation photos, kept servable only within 0.005 test Dice of fp32."""

from __future__ import annotations

import sys
import time

from petseg.config import MODEL_NAMES, load_params
from petseg.data.dataset import PreparedSplit
from petseg.deploy.onnx_export import export_onnx
from petseg.deploy.quantize import quantize_int8
from petseg.errors import exits_cleanly
from petseg.fileio import ensure_writable, write_json
from petseg.pipeline import MODELS_DIR, PREPARED_DIR, REPORTS_DIR, checkpoint_path, stage_tracker

OUT_DIR = REPORTS_DIR / "export"
PARITY_PHOTOS = 16  # test photos the exported model must agree on


@exits_cleanly
def main() -> None:
    params = load_params()
    test = PreparedSplit(PREPARED_DIR, "test").require_samples("check the export on")
    valid = PreparedSplit(PREPARED_DIR, "valid").require_samples("calibrate the int8 export on")
    ensure_writable(OUT_DIR)
    for name in MODEL_NAMES:
        onnx_path, started = MODELS_DIR / f"{name}.onnx", time.time()
        report = export_onnx(checkpoint_path(name), onnx_path, test.images[:PARITY_PHOTOS])  # served as evaluated
        int8 = quantize_int8(onnx_path, MODELS_DIR / f"{name}.int8.onnx", valid.images, test.images, test.masks)
        write_json(OUT_DIR / f"{name}.json", report | {"int8": int8})
        with stage_tracker(params, "export", name, started=started) as tracker:  # the checks, not the files
            tracker.log_metrics({k: report[k] for k in ("max_abs_logit_diff", "mask_agreement")})
            tracker.log_metrics({f"int8_{k}": float(int8[k]) for k in ("dice_drop", "kept")})
            tracker.log_artifacts([OUT_DIR / f"{name}.json"])
        print(
            f"export: {name}: {onnx_path} (opset {report['opset']}); on {report['images']} test photos max |logit "
            f"difference| {report['max_abs_logit_diff']:.2e}, masks agree on {report['mask_agreement']:.4%}"
        )
        verdict = "kept" if int8["kept"] else f"marked unservable (more than {int8['max_dice_drop']} below fp32)"
        print(
            f"export: {name}: int8 test Dice per image {int8['int8_dice_per_image']:.4f} vs fp32 "
            f"{int8['fp32_dice_per_image']:.4f}: {verdict}"
        )


if __name__ == "__main__":
    sys.exit(main())
