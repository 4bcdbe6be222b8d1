"""DVC stages `train_unet` / `train_res34`: python -m stages.train --model unet|res34.

With train.common.nproc > 1 the stage relaunches itself under torchrun (DistributedDataParallel);
`torchrun --nproc_per_node N -m stages.train --model res34` works the same way.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from petseg.config import MODEL_NAMES, load_params, to_flat_dict
from petseg.data import read_meta
from petseg.distributed import init_from_env, shutdown
from petseg.engine import TrainPaths, train
from petseg.errors import exits_cleanly
from petseg.fileio import ensure_writable
from petseg.models import model_from_weights
from petseg.reports import write_training_reports
from petseg.runtime import resolve_device
from petseg.tracking import Tracker, dvc_experiment_name, run_tags

PREPARED_DIR = Path("data/prepared")
MODELS_DIR = Path("models")


@exits_cleanly
def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m stages.train", description=__doc__)
    parser.add_argument("--model", required=True, choices=MODEL_NAMES)
    name = parser.parse_args(argv).model
    params = load_params()
    common = params.train.common
    reports_dir = Path("reports/train") / name
    ensure_writable(MODELS_DIR)
    ensure_writable(reports_dir)
    if common.nproc > 1 and "WORLD_SIZE" not in os.environ:
        launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={common.nproc}"]
        os.execv(sys.executable, [sys.executable, *launcher, "-m", "stages.train", *argv])
    context = init_from_env(resolve_device(common.device).type)
    paths = TrainPaths(best=MODELS_DIR / f"{name}.pt", last=MODELS_DIR / f"{name}.last.pt")
    run_name = f"{dvc_experiment_name()}-{name}"
    try:
        tags = run_tags(f"train_{name}", name)
        with Tracker(params.tracking.experiment, run_name, tags, enabled=context.is_main) as tracker:
            logged = to_flat_dict(common, "train.common.") | to_flat_dict(params.train.model(name), f"train.{name}.")
            if logged.get(f"train.{name}.weights_path"):  # a file name, not a path on this machine
                logged[f"train.{name}.weights_path"] = Path(logged[f"train.{name}.weights_path"]).name
            tracker.log_params(logged)
            state, best_weights = train(name, params, PREPARED_DIR, paths, tracker, context)
            if not context.is_main:
                return
            outputs = write_training_reports(state, reports_dir)
            tracker.log_artifacts(outputs)
            model = model_from_weights(name, params.train.model(name).model_params(), best_weights)
            size = read_meta(PREPARED_DIR)["image_size"]
            tracker.log_model(model, torch.zeros(1, 3, size, size).numpy())
        print(f"train_{name}: best epoch {state.best_epoch}; wrote {paths.best} and {reports_dir}/")
    finally:
        shutdown(context)


if __name__ == "__main__":
    sys.exit(main())
