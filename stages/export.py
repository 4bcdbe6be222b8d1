"""DVC stage `export`: each best checkpoint as ONNX (dynamic batch and size), checked against PyTorch on test photos."""

from __future__ import annotations

import sys
import time

from petseg.config import MODEL_NAMES, load_params
from petseg.data.dataset import PreparedSplit
from petseg.deploy.onnx_export import export_onnx
from petseg.errors import exits_cleanly
from petseg.fileio import ensure_writable, write_json
from petseg.pipeline import MODELS_DIR, PREPARED_DIR, REPORTS_DIR, checkpoint_path, stage_tracker

OUT_DIR = REPORTS_DIR / "export"
PARITY_PHOTOS = 16  # test photos the exported model must agree on


@exits_cleanly
def main() -> None:
    params = load_params()
    test = PreparedSplit(PREPARED_DIR, "test").require_samples("check the export on")
    ensure_writable(OUT_DIR)
    for name in MODEL_NAMES:
        onnx_path, started = MODELS_DIR / f"{name}.onnx", time.time()
        report = export_onnx(checkpoint_path(name), onnx_path, test.images[:PARITY_PHOTOS])  # served as evaluated
        write_json(OUT_DIR / f"{name}.json", report)
        with stage_tracker(params, "export", name, started=started) as tracker:  # the parity check, not the file
            tracker.log_metrics({k: report[k] for k in ("max_abs_logit_diff", "mask_agreement")})
            tracker.log_artifacts([OUT_DIR / f"{name}.json"])
        print(
            f"export: {name}: {onnx_path} (opset {report['opset']}); on {report['images']} test photos max |logit "
            f"difference| {report['max_abs_logit_diff']:.2e}, masks agree on {report['mask_agreement']:.4%}"
        )


if __name__ == "__main__":
    sys.exit(main())
