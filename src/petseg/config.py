"""One typed, validated view of ``params.yaml``.

Every stage calls :func:`load_params` before doing any work. A bad value stops the stage with a
:class:`~petseg.errors.PetsegError` naming the dotted key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from petseg.errors import PetsegError

OFFICIAL_SOURCE = "https://www.robots.ox.ac.uk/~vgg/data/pets/data"
MODEL_NAMES = ("unet", "res34")


class ConfigError(PetsegError):
    pass


def _check(ok: bool, key: str, allowed: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{key}: must be {allowed} (got {value!r})")


@dataclass(frozen=True)
class PrepareConfig:
    source: str = OFFICIAL_SOURCE
    # archive file name -> "md5:<hex>", "sha256:<hex>" or bare hex (length tells which)
    checksums: dict[str, str] = field(default_factory=dict)
    image_size: int = 256
    boundary: Literal["pet", "background", "ignore"] = "pet"
    valid_fraction: float = 0.1
    seed: int = 42
    workers: int = 0  # decode processes; 0 = one per CPU core

    def validate(self, key: str) -> None:
        _check(bool(self.source.strip()), f"{key}.source", "a URL or a directory", self.source)
        _check(
            self.image_size >= 32 and self.image_size % 32 == 0,
            f"{key}.image_size",
            "a positive multiple of 32",
            self.image_size,
        )
        _check(0 < self.valid_fraction < 1, f"{key}.valid_fraction", "in (0, 1)", self.valid_fraction)
        _check(self.workers >= 0, f"{key}.workers", ">= 0 (0 = one per core)", self.workers)
        for name, digest in self.checksums.items():
            _check(
                name in ("images.tar.gz", "annotations.tar.gz"),
                f"{key}.checksums",
                "keyed by images.tar.gz / annotations.tar.gz",
                name,
            )
            algo, _, hexdigest = digest.rpartition(":")
            algo = algo or {32: "md5", 64: "sha256"}.get(len(hexdigest), "?")
            expected_len = {"md5": 32, "sha256": 64}.get(algo)
            _check(
                expected_len == len(hexdigest) and all(c in "0123456789abcdefABCDEF" for c in hexdigest),
                f"{key}.checksums.{name}",
                "an md5 or sha256 hex digest, optionally prefixed 'md5:' or 'sha256:'",
                digest,
            )


@dataclass(frozen=True)
class AugmentConfig:
    """Each augmentation is off at 0 (or crop_scale [1, 1])."""

    enabled: bool = True
    hflip: float = 0.5  # probability
    rotation: float = 15.0  # max degrees
    crop_scale: tuple[float, float] = (0.5, 1.0)  # RandomResizedCrop area range
    translate: float = 0.1  # max shift as a fraction of the size
    color_jitter: float = 0.2  # brightness/contrast/saturation strength
    on_device: bool = False  # augment whole batches on the training device (GPU) instead of in loader workers

    def validate(self, key: str) -> None:
        _check(0 <= self.hflip <= 1, f"{key}.hflip", "a probability in [0, 1]", self.hflip)
        _check(0 <= self.rotation <= 180, f"{key}.rotation", "degrees in [0, 180]", self.rotation)
        low, high = self.crop_scale
        _check(0 < low <= high <= 1, f"{key}.crop_scale", "[low, high] with 0 < low <= high <= 1", self.crop_scale)
        _check(0 <= self.translate < 1, f"{key}.translate", "a fraction in [0, 1)", self.translate)
        _check(0 <= self.color_jitter < 1, f"{key}.color_jitter", "in [0, 1)", self.color_jitter)


@dataclass(frozen=True)
class LossConfig:
    bce_weight: float = 1.0
    dice_weight: float = 1.0

    def validate(self, key: str) -> None:
        _check(self.bce_weight >= 0, f"{key}.bce_weight", ">= 0", self.bce_weight)
        _check(self.dice_weight >= 0, f"{key}.dice_weight", ">= 0", self.dice_weight)
        _check(self.bce_weight + self.dice_weight > 0, f"{key}", "a loss with some positive weight", self)


@dataclass(frozen=True)
class TrainCommonConfig:
    seed: int = 42
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal[False, "bf16", "fp16"] = False  # mixed precision on CUDA
    channels_last: bool = False
    compile: bool = False
    threads: int = 0  # torch intra-op threads; 0 = one per core
    num_workers: int = 2
    nproc: int = 1  # training processes (DistributedDataParallel via torchrun); batch_size is split over them
    select_by: Literal["dice", "loss"] = "dice"
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loss: LossConfig = field(default_factory=LossConfig)

    def validate(self, key: str) -> None:
        _check(self.threads >= 0, f"{key}.threads", ">= 0 (0 = one per core)", self.threads)
        _check(self.num_workers >= 0, f"{key}.num_workers", ">= 0", self.num_workers)
        _check(self.nproc >= 1, f"{key}.nproc", ">= 1", self.nproc)


@dataclass(frozen=True)
class ModelTrainConfig:
    """Optimisation settings shared in shape by every model section."""

    epochs: int = 30
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 1e-5
    plateau_patience: int = 3
    plateau_factor: float = 0.5
    early_stop_patience: int = 8  # epochs without improvement; 0 = never stop early

    def validate(self, key: str) -> None:
        _check(self.epochs >= 1, f"{key}.epochs", ">= 1", self.epochs)
        _check(self.batch_size >= 1, f"{key}.batch_size", ">= 1", self.batch_size)
        _check(self.lr > 0, f"{key}.lr", "> 0", self.lr)
        _check(self.weight_decay >= 0, f"{key}.weight_decay", ">= 0", self.weight_decay)
        _check(self.plateau_patience >= 0, f"{key}.plateau_patience", ">= 0", self.plateau_patience)
        _check(0 < self.plateau_factor < 1, f"{key}.plateau_factor", "in (0, 1)", self.plateau_factor)
        _check(self.early_stop_patience >= 0, f"{key}.early_stop_patience", ">= 0", self.early_stop_patience)

    def model_params(self) -> dict[str, Any]:
        """The architecture keys of this section (what ``build_model`` takes)."""
        base = {f.name for f in dataclasses.fields(ModelTrainConfig)}
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in base}


@dataclass(frozen=True)
class UNetTrainConfig(ModelTrainConfig):
    base_channels: int = 64
    batch_norm: bool = False

    def validate(self, key: str) -> None:
        super().validate(key)
        _check(self.base_channels >= 1, f"{key}.base_channels", ">= 1", self.base_channels)


@dataclass(frozen=True)
class Res34TrainConfig(ModelTrainConfig):
    pretrained: Literal[False, "imagenet"] = False
    weights_path: str | None = None  # local torchvision ResNet34 weights file for offline 'imagenet'

    def validate(self, key: str) -> None:
        super().validate(key)
        _check(
            self.weights_path is None or self.pretrained == "imagenet",
            f"{key}.weights_path",
            "null unless pretrained is 'imagenet'",
            self.weights_path,
        )


@dataclass(frozen=True)
class TrainConfig:
    common: TrainCommonConfig = field(default_factory=TrainCommonConfig)
    unet: UNetTrainConfig = field(default_factory=UNetTrainConfig)
    res34: Res34TrainConfig = field(default_factory=Res34TrainConfig)

    def validate(self, key: str) -> None:
        for name in MODEL_NAMES:
            batch_size = getattr(self, name).batch_size
            _check(
                batch_size % self.common.nproc == 0,
                f"{key}.{name}.batch_size",
                f"a multiple of {key}.common.nproc ({self.common.nproc}): each process takes an equal share",
                batch_size,
            )

    def model(self, name: str) -> ModelTrainConfig:
        if name not in MODEL_NAMES:
            raise ConfigError(f"unknown model {name!r} (allowed: {', '.join(MODEL_NAMES)})")
        return getattr(self, name)


@dataclass(frozen=True)
class EvaluateConfig:
    threshold: float = 0.5
    batch_size: int = 16

    def validate(self, key: str) -> None:
        _check(0 < self.threshold < 1, f"{key}.threshold", "in (0, 1)", self.threshold)
        _check(self.batch_size >= 1, f"{key}.batch_size", ">= 1", self.batch_size)


@dataclass(frozen=True)
class InferConfig:
    limit: int = 0  # test images to write masks for; 0 = all
    grid_rows: int = 4  # best and worst cases shown in each overlay grid

    def validate(self, key: str) -> None:
        _check(self.limit >= 0, f"{key}.limit", ">= 0 (0 = all)", self.limit)
        _check(self.grid_rows >= 1, f"{key}.grid_rows", ">= 1", self.grid_rows)


@dataclass(frozen=True)
class TrackingConfig:
    experiment: str = "petseg"

    def validate(self, key: str) -> None:
        _check(bool(self.experiment.strip()), f"{key}.experiment", "a non-empty name", self.experiment)


@dataclass(frozen=True)
class Params:
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    infer: InferConfig = field(default_factory=InferConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(str(a).lower() if isinstance(a, bool) else repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"a list of {len(typing.get_args(tp))} numbers"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string", type(None): "null"}.get(
        tp, str(tp)
    )


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML value to ``tp``; strict (no bool-as-int, no str-as-number)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if origin is Literal:
        for allowed in typing.get_args(tp):
            if type(value) is type(allowed) and value == allowed:
                return value
    elif origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _convert(value, option, key)
            except ConfigError:
                continue
    elif origin is tuple:
        args = typing.get_args(tp)
        if isinstance(value, list | tuple) and len(value) == len(args):
            return tuple(_convert(v, a, key) for v, a in zip(value, args, strict=True))
    elif origin is dict:
        key_tp, value_tp = typing.get_args(tp)
        if isinstance(value, dict):
            return {_convert(k, key_tp, key): _convert(v, value_tp, _join(key, k)) for k, v in value.items()}
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif tp is type(None):
        if value is None:
            return None
    elif type(value) is tp:
        return value
    raise ConfigError(f"{key}: must be {_type_name(tp)} (got {value!r})")


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else str(name)


def _build(cls: type, raw: Any, key: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{key}: must be a mapping (got {raw!r})")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for name in raw:
        if name not in names:
            where = f"under {key}" if key else "at the top level"
            raise ConfigError(f"{_join(key, name)}: unknown key (allowed {where}: {', '.join(names)})")
    values = {name: _convert(raw[name], hints[name], _join(key, name)) for name in names if name in raw}
    obj = cls(**values)
    if hasattr(obj, "validate"):
        obj.validate(key)
    return obj


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: must be a mapping of sections (got {type(raw).__name__})")
    try:
        return _build(Params, raw, "")
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate ``params.yaml``; raises :class:`ConfigError` with the offending key."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found (run from the project root, where params.yaml is)") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where}: not valid YAML ({getattr(err, 'problem', err)})") from None
    return parse_params(raw, str(path))


def to_flat_dict(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys -> values, e.g. for MLflow params."""
    out: dict[str, Any] = {}
    items = dataclasses.asdict(obj).items() if dataclasses.is_dataclass(obj) else obj.items()
    for name, value in items:
        dotted = f"{prefix}{name}"
        if isinstance(value, dict) and value:
            out.update(to_flat_dict(value, dotted + "."))
        else:
            out[dotted] = list(value) if isinstance(value, tuple) else value
    return out
