"""The `petseg` command: work outside the DVC pipeline (predict on any image, benchmarks)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

from petseg import __version__
from petseg.config import MODEL_NAMES, Params, load_params
from petseg.deploy.backends import BACKENDS
from petseg.errors import PetsegError, exits_cleanly


def _threshold(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {text}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 < value < math.inf:  # a budget of 0 or less would score an untrained reference
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text}")
    return value


def _int_at_least(minimum: int) -> Callable[[str], int]:
    def integer(text: str) -> int:  # argparse names the function in "invalid integer value: 'x'"
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {text}")
        return value

    return integer


_positive, _non_negative = _int_at_least(1), _int_at_least(0)


def _folds(text: str) -> int:
    value = int(text)
    if value == 1 or value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 (the test split) or >= 2, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="petseg", description=__doc__)
    parser.add_argument("--version", action="version", version=f"petseg {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    predict = commands.add_parser("predict", help="write pet masks for your own images")
    predict.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="image files or directories")
    predict.add_argument("--model", required=True, type=Path, help="a checkpoint, e.g. models/res34.pt")
    predict.add_argument("--out", type=Path, default=Path("predictions"), help="output directory")
    predict.add_argument("--threshold", type=_threshold, help="mask threshold; default: the model's own")
    predict.add_argument("--batch-size", type=_positive, default=8)
    predict.add_argument("--overlays", action="store_true", help="also write <name>_overlay.png")
    predict.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    predict.add_argument("--backend", choices=BACKENDS, help="default: onnxruntime for a .onnx --model, else torch")
    predict.add_argument(
        "--tta",
        choices=("none", "hflip"),
        help="test-time augmentation: hflip averages with the mirrored photo (twice the compute); default: the model's "
        "own, as it was scored (an ONNX export has it built in)",
    )

    promote = commands.add_parser(
        "promote", help="move the registry alias 'champion' to the newest version, if it passes"
    )
    promote.add_argument("--model", required=True, choices=MODEL_NAMES)
    promote.add_argument("--params", type=Path, default=Path("params.yaml"), help="reads promote.max_species_drop")

    sample = commands.add_parser("sample", help="build a small sample like sample/ from the official archives")
    sample.add_argument("--source", type=Path, required=True, help="directory with images.tar.gz, annotations.tar.gz")
    sample.add_argument("--out", type=Path, required=True, help="directory to write the sample's archives to")
    sample.add_argument("--side", type=_positive, default=256, help="longest side of each photo, px")
    sample.add_argument("--per-breed", type=_non_negative, default=0, help="photos per breed and list; 0 = all")

    bench = commands.add_parser("bench", help="benchmarks: ratios measured side by side in one run")
    which = bench.add_subparsers(dest="bench", required=True)
    _add_throughput_benches(which)
    _add_model_benches(which)
    return parser


def _add_throughput_benches(which) -> None:
    prep = which.add_parser("prepare", help="prepare path vs a naive PIL loop")
    prep.add_argument("--source", type=Path, required=True, help="directory with images.tar.gz, annotations.tar.gz")
    prep.add_argument("--size", type=_positive, default=256)
    prep.add_argument("--workers", type=_non_negative, help="decode processes, 0 = one per core; default: params'")
    prep.add_argument("--params", type=Path, default=Path("params.yaml"), help="params the benchmark starts from")
    train = which.add_parser("train", help="model-only vs whole-step training throughput, fraction of peak")
    train.add_argument("--model", nargs="+", choices=MODEL_NAMES, default=list(MODEL_NAMES))
    train.add_argument("--size", nargs="+", type=_positive, default=[128, 256])
    # Every setting below that params.yaml also has defaults to params' value: a flag overrides only when given.
    train.add_argument("--batch-size", type=_positive, help="default: the model's train.<model>.batch_size")
    train.add_argument("--steps", type=_non_negative, default=0, help="0 = 3 on CPU, 100 on CUDA")
    train.add_argument("--device", choices=("auto", "cpu", "cuda"))
    train.add_argument("--amp", choices=("off", "auto", "bf16", "fp16"), help="mixed precision")
    train.add_argument("--channels-last", action=argparse.BooleanOptionalAction, help="NHWC memory layout")
    train.add_argument("--compile", action=argparse.BooleanOptionalAction, help="torch.compile the model")
    train.add_argument(
        "--augment-on-device", action=argparse.BooleanOptionalAction, help="augment batches on the device"
    )
    train.add_argument("--workers", type=_non_negative, help="DataLoader workers (capped on CPU)")
    train.add_argument("--threads", type=_non_negative, help="torch threads; 0 = one per core")
    train.add_argument(
        "--params", type=Path, default=Path("params.yaml"), help="params the benchmark starts from (its defaults)"
    )
    baseline = which.add_parser("baseline", help="the reference report's data path vs ours, same model and batch")
    baseline.add_argument("--source", type=Path, required=True, help="directory with the two archives")
    baseline.add_argument("--model", choices=MODEL_NAMES, default="res34")
    baseline.add_argument("--size", type=_positive, default=128)
    baseline.add_argument("--batch-size", type=_positive, default=8)
    baseline.add_argument("--steps", type=_positive, default=5)
    baseline.add_argument("--threads", type=_non_negative, help="torch threads, 0 = one per core; default: params'")
    baseline.add_argument("--params", type=Path, default=Path("params.yaml"), help="params the benchmark starts from")


def _add_model_benches(which) -> None:
    infer = which.add_parser("infer", help="every backend (PyTorch, ONNX Runtime fp32, int8): speed, size, Dice")
    infer.add_argument("--model", type=Path, required=True, help="a checkpoint, e.g. models/res34.pt")
    infer.add_argument("--images", type=Path, required=True, help="a directory of photos (petseg predict's speed)")
    infer.add_argument(
        "--prepared", type=Path, default=Path("data/prepared"), help="its test split scores, its valid split calibrates"
    )
    infer.add_argument("--batch-size", type=_positive, default=8)
    infer.add_argument("--size", nargs="+", type=_positive, default=[128, 256], help="input sizes to measure at")
    accuracy = which.add_parser("accuracy", help="the reference recipe vs petseg's, same budget, split and metric")
    accuracy.add_argument("--source", type=Path, required=True, help="directory with the two archives")
    accuracy.add_argument("--model", choices=MODEL_NAMES, default="res34")
    accuracy.add_argument("--size", type=_positive, default=128)
    budget = accuracy.add_mutually_exclusive_group()
    budget.add_argument("--budget", type=_seconds, default=600.0, help="seconds of training per side")
    budget.add_argument(
        "--reference-epochs",
        type=_positive,
        default=0,
        metavar="N",
        help="instead of --budget: the reference trains N epochs, and petseg as long as that took (the same regime on "
        "any machine)",
    )
    accuracy.add_argument("--params", type=Path, default=Path("params.yaml"), help="petseg's recipe (and the split)")
    accuracy.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), help="where both sides train; default: train.common.device"
    )
    accuracy.add_argument("--runs", type=_positive, default=1, help="repeat with seeds seed, seed+1, ...: the spread")
    accuracy.add_argument(
        "--folds",
        type=_folds,
        default=0,
        help="K > 1: score on K folds of the trainval photos, not the test split",
    )
    accuracy.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a param of petseg's side (YAML value)"
    )
    accuracy.add_argument(
        "--no-reference",
        dest="reference",
        action="store_false",
        help="train petseg's side alone: enough to compare its settings (with --folds), in half the time",
    )


def _overrides(pairs: list[str]) -> dict:
    """``--set train.res34.lr=0.003`` pairs as dotted overrides, values read as YAML (numbers, true, lists)."""
    import yaml

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise PetsegError(f"--set {pair}: expected KEY=VALUE, e.g. train.res34.lr=0.003")
        out[key] = yaml.safe_load(value)
    return out


def _given(overrides: dict) -> dict:
    """The overrides whose flag was given (argparse leaves the others None): params.yaml decides the rest."""
    return {key: value for key, value in overrides.items() if value is not None}


def _check_device(device: str | None) -> None:
    import torch  # here, not at the top: `petseg --help` and predict's argument errors stay instant

    if device == "cuda" and not torch.cuda.is_available():
        raise PetsegError("--device cuda: no CUDA device is available here (use auto or cpu)")


def train_settings(args: argparse.Namespace) -> Params:
    """``--params`` with the training settings a `bench train` run measures, validated like any params.yaml."""
    _check_device(args.device)
    overrides = {
        "train.common.device": args.device,
        "train.common.amp": False if args.amp == "off" else args.amp,
        "train.common.channels_last": args.channels_last,
        "train.common.compile": args.compile,
        "resources.threads": args.threads,
        "resources.num_workers": args.workers,
        "train.common.augment.on_device": args.augment_on_device,
    }
    return load_params(args.params, _given(overrides))


@exits_cleanly
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "predict":
        from petseg.deploy.backends import load_predictor
        from petseg.evaluation.predict import predict_paths

        predictor = load_predictor(args.model, args.backend, args.device, args.tta)
        summary = predict_paths(predictor, args.paths, args.out, args.threshold, args.batch_size, args.overlays)
        print(f"predict: {summary.written} masks written to {args.out}, {summary.failed} failed")
        return 1 if summary.failed or not summary.written else 0
    if args.command == "sample":
        from petseg.data.sample import build_sample

        made = build_sample(args.source, args.out, side=args.side, per_breed=args.per_breed)
        print(f"sample: {made['photos']} photos, {made['bytes'] / 2**20:.1f} MiB in {args.out}")
        return 0
    if args.command == "promote":
        from petseg.deploy.promote import promote_command

        return promote_command(args.model, load_params(args.params).promote.max_species_drop)
    if args.bench == "prepare":
        from petseg.bench.prepare import bench_prepare

        overrides = {"prepare.image_size": args.size} | _given({"resources.workers": args.workers})
        bench_prepare(args.source, load_params(args.params, overrides))
    elif args.bench == "train":
        from petseg.bench.train import bench_train

        params = train_settings(args)
        for model_name in args.model:
            batch_size = args.batch_size or params.train.model(model_name).batch_size
            for size in args.size:
                bench_train(model_name, size, batch_size, args.steps, params)
    elif args.bench == "accuracy":
        from petseg.bench.accuracy import bench_accuracy

        _check_device(args.device)
        overrides = {"prepare.image_size": args.size, **_given({"train.common.device": args.device})}
        params = load_params(args.params, overrides | _overrides(args.set))
        bench_accuracy(
            args.source, args.model, args.budget, params, args.runs, args.folds, args.reference, args.reference_epochs
        )
    elif args.bench == "infer":
        from petseg.bench.infer import bench_infer

        bench_infer(args.model, args.images, args.prepared, args.batch_size, args.size)
    else:
        from petseg.bench.baseline import bench_baseline

        overrides = {"prepare.image_size": args.size, "train.common.device": "cpu"}
        overrides |= _given({"resources.threads": args.threads})
        bench_baseline(args.source, args.model, args.batch_size, args.steps, load_params(args.params, overrides))
    return 0
