"""DVC stage `prepare`: archives -> verified, extracted, split, resized uint8 cache + reports/prepare.json."""

from __future__ import annotations

import sys
from pathlib import Path

from petseg.config import load_params, to_flat_dict
from petseg.download import ARCHIVES, expected_checksum, fetch_archive, public_source
from petseg.errors import exits_cleanly
from petseg.extract import extract_archive
from petseg.fileio import ensure_writable, write_json
from petseg.prepare import prepare_dataset
from petseg.tracking import Tracker, dvc_experiment_name, run_tags

RAW_DIR = Path("data/raw")
PREPARED_DIR = Path("data/prepared")
REPORT = Path("reports/prepare.json")


@exits_cleanly
def main() -> None:
    params = load_params()
    cfg = params.prepare
    ensure_writable(RAW_DIR)
    ensure_writable(REPORT.parent)
    trees = {}
    for archive in ARCHIVES:
        path, digests = fetch_archive(cfg.source, archive, RAW_DIR, expected_checksum(cfg, archive))
        trees[archive] = extract_archive(path, RAW_DIR / archive.removesuffix(".tar.gz"), digests["sha256"])
    report = prepare_dataset(
        trees["images.tar.gz"] / "images", trees["annotations.tar.gz"] / "annotations", PREPARED_DIR, cfg
    )
    write_json(REPORT, report)
    counts = report["counts"]
    print(
        f"prepare: train {counts['train']}, valid {counts['valid']}, test {counts['test']} at "
        f"{cfg.image_size}px; skipped {report['skipped_count']} (see {REPORT})"
    )
    with Tracker(params.tracking.experiment, f"{dvc_experiment_name()}-prepare", run_tags("prepare")) as tracker:
        tracker.log_params(to_flat_dict(cfg, "prepare.") | {"prepare.source": public_source(cfg.source)})
        tracker.log_metrics({f"count.{k}": v for k, v in counts.items()} | {"skipped": report["skipped_count"]})
        tracker.log_artifacts([REPORT])


if __name__ == "__main__":
    sys.exit(main())
