"""DVC stages `train@unet` / `train@res34` (one `foreach` stage): python -m stages.train --model unet|res34.

With train.common.nproc > 1 the stage relaunches itself under torchrun (DistributedDataParallel);
`torchrun --nproc_per_node N -m stages.train --model res34` works the same way.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from petseg import pipeline
from petseg.config import MODEL_NAMES, load_params
from petseg.errors import exits_cleanly
from petseg.fileio import ensure_writable
from petseg.runtime import machine, resolve_device
from petseg.training.distributed import init_from_env, shutdown
from petseg.training.reports import write_training_reports
from petseg.training.trainer import Trainer, TrainPaths


@exits_cleanly
def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m stages.train", description=__doc__)
    parser.add_argument("--model", required=True, choices=MODEL_NAMES)
    name = parser.parse_args(argv).model
    params = load_params()
    common = params.train.common
    reports_dir = pipeline.REPORTS_DIR / "train" / name
    ensure_writable(pipeline.MODELS_DIR)
    ensure_writable(reports_dir)
    if common.nproc > 1 and "WORLD_SIZE" not in os.environ:
        launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={common.nproc}"]
        os.execv(sys.executable, [sys.executable, *launcher, "-m", "stages.train", *argv])
    context = init_from_env(resolve_device(common.device).type)
    paths = TrainPaths(best=pipeline.checkpoint_path(name), last=pipeline.resume_path(name))
    try:
        lock = pipeline.training_lock(name) if context.is_main else contextlib.nullcontext()
        with lock, pipeline.stage_tracker(params, "train", name, enabled=context.is_main) as tracker:
            tracker.log_params(pipeline.training_params(params, name))
            tracker.set_tags({f"machine.{key}": str(value) for key, value in machine().items()})  # speeds' context
            trainer = Trainer(name, params, context)
            state = trainer.fit(pipeline.PREPARED_DIR, paths, tracker)
            if not context.is_main:
                return
            # The checkpoint as a file: the model that leaves the pipeline is evaluate's logged pyfunc; logging it
            # here as an MLflow model too would add a torch.export trace to every training stage.
            tracker.log_artifacts([*write_training_reports(state, name, reports_dir), paths.best])
            best = next(row for row in state.history if row["epoch"] == state.best_epoch)
            tracker.log_metrics({"saved_epoch": state.best_epoch, "saved_val_dice": best["val_dice"]})
        print(f"train_{name}: best epoch {state.best_epoch}; wrote {paths.best} and {reports_dir}/")
    finally:
        shutdown(context)


if __name__ == "__main__":
    sys.exit(main())
