"""DVC stage `prepare`: archives -> verified, extracted, split, resized uint8 cache + reports/prepare.json."""

from __future__ import annotations

import sys
import time

from petseg.config import load_params
from petseg.data.cache import prepare_dataset
from petseg.data.download import ARCHIVES, fetch_and_extract, public_source
from petseg.errors import exits_cleanly
from petseg.fileio import ensure_writable, write_json
from petseg.pipeline import PREPARED_DIR, RAW_DIR, REPORTS_DIR, stage_tracker
from petseg.schema import to_flat_dict

REPORT = REPORTS_DIR / "prepare.json"


@exits_cleanly
def main() -> None:
    params = load_params()
    cfg, started = params.prepare, time.time()
    ensure_writable(RAW_DIR)
    ensure_writable(REPORT.parent)
    trees = {archive: fetch_and_extract(cfg, archive, RAW_DIR) for archive in ARCHIVES}
    report = prepare_dataset(
        trees["images.tar.gz"] / "images",
        trees["annotations.tar.gz"] / "annotations",
        PREPARED_DIR,
        cfg,
        params.resources.workers,
    )
    report["source"] = public_source(cfg.source)
    write_json(REPORT, report)
    counts = report["counts"]
    print(
        f"prepare: train {counts['train']}, valid {counts['valid']}, test {counts['test']} at "
        f"{cfg.image_size}px; skipped {report['skipped_count']} (see {REPORT})"
    )
    with stage_tracker(params, "prepare", started=started) as tracker:
        tracker.log_params(to_flat_dict(cfg, "prepare.") | {"prepare.source": public_source(cfg.source)})
        tracker.log_metrics({f"count.{k}": v for k, v in counts.items()} | {"skipped": report["skipped_count"]})
        tracker.log_artifacts([REPORT])


if __name__ == "__main__":
    sys.exit(main())
