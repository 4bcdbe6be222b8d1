"""One typed, validated view of ``params.yaml``.

Every stage calls :func:`load_params` before doing any work. A bad or missing value stops the stage with a
:class:`~petseg.errors.PetsegError` naming the dotted key and what is allowed. ``params.yaml`` is the only place a
default lives: every key is required, and code outside a stage (tests, benchmarks) loads it with explicit overrides.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from petseg.schema import ConfigError, build, parse_yaml, set_dotted

OFFICIAL_SOURCE = "https://www.robots.ox.ac.uk/~vgg/data/pets/data"
MODEL_NAMES = ("unet", "res34")
MODEL_TITLES = {"unet": "UNet", "res34": "ResNet34-UNet"}  # for people: plot titles, model cards

SEED_LIMIT = 2**32  # seeds are [0, 2**32): numpy's limit, and torch's with the per-epoch seeds derived from them


def _check(ok: bool, key: str, allowed: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{key}: must be {allowed} (got {value!r})")


@dataclass(frozen=True)
class PrepareConfig:
    source: str
    # archive file name -> "md5:<hex>", "sha256:<hex>" or bare hex (length tells which)
    checksums: dict[str, str]
    image_size: int
    boundary: Literal["pet", "background", "ignore"]
    valid_fraction: float
    seed: int

    def validate(self, key: str) -> None:
        _check(bool(self.source.strip()), f"{key}.source", "a URL or a directory", self.source)
        size_ok = self.image_size >= 32 and self.image_size % 32 == 0
        _check(size_ok, f"{key}.image_size", "a positive multiple of 32", self.image_size)
        _check(0 < self.valid_fraction < 1, f"{key}.valid_fraction", "in (0, 1)", self.valid_fraction)
        _check(0 <= self.seed < SEED_LIMIT, f"{key}.seed", "in [0, 2**32)", self.seed)
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

    enabled: bool
    hflip: float  # probability
    rotation: float  # max degrees
    crop_scale: tuple[float, float]  # RandomResizedCrop area range
    translate: float  # max shift as a fraction of the size
    color_jitter: float  # brightness/contrast/saturation strength
    full_strength_epochs: int  # the magnitudes scale with the epochs a run trains: in full from this many; 0 = always
    on_device: bool  # augment whole batches on the training device (GPU) instead of in loader workers

    def scaled(self, strength: float) -> AugmentConfig:
        """These augmentations with every magnitude times ``strength`` (0-1); the flip is free and stays as it is."""
        if strength >= 1:
            return self
        crop = tuple(1 - (1 - bound) * strength for bound in self.crop_scale)
        magnitudes = {key: getattr(self, key) * strength for key in ("rotation", "translate", "color_jitter")}
        return dataclasses.replace(self, crop_scale=crop, **magnitudes)

    def validate(self, key: str) -> None:
        _check(0 <= self.hflip <= 1, f"{key}.hflip", "a probability in [0, 1]", self.hflip)
        _check(0 <= self.rotation <= 180, f"{key}.rotation", "degrees in [0, 180]", self.rotation)
        low, high = self.crop_scale
        _check(0 < low <= high <= 1, f"{key}.crop_scale", "[low, high] with 0 < low <= high <= 1", self.crop_scale)
        _check(0 <= self.translate < 1, f"{key}.translate", "a fraction in [0, 1)", self.translate)
        _check(0 <= self.color_jitter < 1, f"{key}.color_jitter", "in [0, 1)", self.color_jitter)
        _check(self.full_strength_epochs >= 0, f"{key}.full_strength_epochs", ">= 0", self.full_strength_epochs)


@dataclass(frozen=True)
class LossConfig:
    bce_weight: float
    dice_weight: float

    def validate(self, key: str) -> None:
        _check(self.bce_weight >= 0, f"{key}.bce_weight", ">= 0", self.bce_weight)
        _check(self.dice_weight >= 0, f"{key}.dice_weight", ">= 0", self.dice_weight)
        _check(self.bce_weight + self.dice_weight > 0, f"{key}", "a loss with some positive weight", self)


@dataclass(frozen=True)
class TrainCommonConfig:
    seed: int
    device: Literal["auto", "cpu", "cuda"]
    amp: Literal[False, "auto", "bf16", "fp16"]  # mixed precision; auto: bf16 where the device runs it natively
    channels_last: bool
    compile: bool
    nproc: int  # training processes (DistributedDataParallel via torchrun); batch_size is split over them
    select_by: Literal["dice", "loss", "last"]  # which epoch's weights become models/<model>.pt
    validate_every: int  # validation after every Nth epoch and the last; select_by and the patiences count these
    max_minutes: float  # time budget for training; 0 = none (then only `epochs` bounds it)
    progressive_scale: float  # train at this fraction of the prepared size first (1 = always at the prepared size)
    progressive_until: float  # ... until this fraction of the training (epochs or budget) has passed
    tta: Literal["none", "hflip"]  # test-time augmentation the checkpoint is scored and served with
    threshold: float  # on the sigmoid: the checkpoint's mask threshold wherever it is scored or served
    augment: AugmentConfig
    loss: LossConfig

    def validate(self, key: str) -> None:
        _check(0 <= self.seed < SEED_LIMIT, f"{key}.seed", "in [0, 2**32)", self.seed)
        _check(self.validate_every >= 1, f"{key}.validate_every", ">= 1", self.validate_every)
        _check(self.max_minutes >= 0, f"{key}.max_minutes", ">= 0 (0 = no time budget)", self.max_minutes)
        _check(0 < self.progressive_scale <= 1, f"{key}.progressive_scale", "in (0, 1]", self.progressive_scale)
        _check(0 <= self.progressive_until <= 1, f"{key}.progressive_until", "in [0, 1]", self.progressive_until)
        _check(self.nproc >= 1, f"{key}.nproc", ">= 1", self.nproc)
        _check(0 < self.threshold < 1, f"{key}.threshold", "in (0, 1)", self.threshold)


@dataclass(frozen=True)
class ModelTrainConfig:
    """Optimisation settings shared in shape by every model section."""

    epochs: int  # 0 = until train.common.max_minutes ends training (the schedule then spans the budget)
    batch_size: int
    optimizer: Literal["adam", "adamw"]
    lr: float
    weight_decay: float
    schedule: Literal["plateau", "cosine"]  # plateau: ReduceLROnPlateau; cosine: warm-up then cosine to 0
    warmup_epochs: int  # cosine only
    plateau_patience: int
    plateau_factor: float
    early_stop_patience: int  # validations without improvement; 0 = never stop early

    def validate(self, key: str) -> None:
        _check(self.epochs >= 0, f"{key}.epochs", ">= 0 (0 = until the time budget)", self.epochs)
        warmup_ok = 0 <= self.warmup_epochs < (self.epochs or math.inf)
        _check(warmup_ok, f"{key}.warmup_epochs", "in [0, epochs)", self.warmup_epochs)
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
    base_channels: int
    batch_norm: bool

    def validate(self, key: str) -> None:
        super().validate(key)
        _check(self.base_channels >= 1, f"{key}.base_channels", ">= 1", self.base_channels)


@dataclass(frozen=True)
class Res34TrainConfig(ModelTrainConfig):
    pretrained: Literal[False, "imagenet"]
    weights_path: str | None  # local torchvision ResNet34 weights file for offline 'imagenet'

    def validate(self, key: str) -> None:
        super().validate(key)
        offline_imagenet = self.weights_path is None or self.pretrained == "imagenet"
        _check(offline_imagenet, f"{key}.weights_path", "null unless pretrained is 'imagenet'", self.weights_path)


@dataclass(frozen=True)
class TrainConfig:
    common: TrainCommonConfig
    unet: UNetTrainConfig
    res34: Res34TrainConfig

    def validate(self, key: str) -> None:
        for name in MODEL_NAMES:
            epochs, batch_size = getattr(self, name).epochs, getattr(self, name).batch_size
            budget = self.common.max_minutes
            _check(epochs or budget, f"{key}.{name}.epochs", f">= 1, or 0 with a {key}.common.max_minutes", epochs)
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
    boundary_px: int  # half-width of the band around the pet's outline that the boundary score looks at

    def validate(self, key: str) -> None:
        _check(self.boundary_px >= 1, f"{key}.boundary_px", ">= 1", self.boundary_px)


@dataclass(frozen=True)
class InferConfig:
    limit: int  # test images to write masks for; 0 = all
    grid_rows: int  # best and worst cases shown in each overlay grid

    def validate(self, key: str) -> None:
        _check(self.limit >= 0, f"{key}.limit", ">= 0 (0 = all)", self.limit)
        _check(self.grid_rows >= 1, f"{key}.grid_rows", ">= 1", self.grid_rows)


@dataclass(frozen=True)
class PromoteConfig:
    max_species_drop: float  # `petseg promote`: most a species' test Dice may fall below the champion's

    def validate(self, key: str) -> None:
        _check(0 <= self.max_species_drop <= 1, f"{key}.max_species_drop", "in [0, 1]", self.max_species_drop)


@dataclass(frozen=True)
class TrackingConfig:
    experiment: str

    def validate(self, key: str) -> None:
        _check(bool(self.experiment.strip()), f"{key}.experiment", "a non-empty name", self.experiment)


@dataclass(frozen=True)
class ResourcesConfig:
    """How fast, never what: no stage depends on these and a resume point survives a change."""

    workers: int  # prepare's decode processes; 0 = one per CPU core
    threads: int  # torch intra-op threads; 0 = one per core
    num_workers: int  # training's DataLoader worker processes
    checkpoint_minutes: float  # the resume point is written at most this often (and after the last epoch); 0 = always
    eval_batch_size: int  # photos per forward pass in evaluate and infer

    def validate(self, key: str) -> None:
        _check(self.workers >= 0, f"{key}.workers", ">= 0 (0 = one per core)", self.workers)
        _check(self.threads >= 0, f"{key}.threads", ">= 0 (0 = one per core)", self.threads)
        _check(self.num_workers >= 0, f"{key}.num_workers", ">= 0", self.num_workers)
        _check(self.checkpoint_minutes >= 0, f"{key}.checkpoint_minutes", ">= 0", self.checkpoint_minutes)
        _check(self.eval_batch_size >= 1, f"{key}.eval_batch_size", ">= 1", self.eval_batch_size)


@dataclass(frozen=True)
class Params:
    prepare: PrepareConfig
    train: TrainConfig
    evaluate: EvaluateConfig
    infer: InferConfig
    promote: PromoteConfig
    resources: ResourcesConfig
    tracking: TrackingConfig


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    if raw is None:
        raise ConfigError(
            f"{source}: empty (every section is required: prepare, train, evaluate, infer, promote, resources, "
            "tracking)"
        )
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: must be a mapping of sections (got {type(raw).__name__})")
    try:
        return build(Params, raw)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None


def load_params(path: str | Path = "params.yaml", overrides: dict[str, Any] | None = None) -> Params:
    """Read and validate ``params.yaml`` with ``overrides`` ({"dotted.key": value}) applied; raises
    :class:`ConfigError` with the offending key."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found (run from the project root, where params.yaml is)") from None
    raw = parse_yaml(text, path)
    for dotted, value in (overrides or {}).items():
        set_dotted(raw, dotted, value)
    return parse_params(raw, str(path))
