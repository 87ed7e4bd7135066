"""Typed run configuration: code defaults < YAML file < command-line flags.

The resolved configuration is saved as `config.yaml` in the run directory, and a run is
rebuilt from that file alone (resume, evaluate, the review app).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from dermlow.errors import UserError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass
class DataConfig:
    """Where the images are and how they become tensors."""

    dataset: str = "isic2018"  # isic2017 | isic2018 | ham10000 | generic | a benchmark name
    data_dir: str = "data/isic2018"
    labels_csv: str | None = None  # generic data sets: the CSV with `image,label`
    image_dir: str | None = None  # generic data sets: the image folder
    split: str = "lesion"  # lesion (grouped by lesion id) | random (the paper's split; leaks)
    test_fraction: float = 0.2
    val_fraction: float = 0.1
    splits_file: str | None = None  # reuse an `image_id,split` CSV
    image_size: int = 300  # colour-normalised images are resized to this square
    crop_size: int = 224  # random (train) / centre (eval) crop
    color_p: float = 6.0  # Shades of Gray Minkowski norm
    cache_dir: str | None = ".cache/dermlow"  # derived image cache; null disables it
    num_workers: int = 4
    skip_bad_images: bool = False
    flip_labels: float = 0.0  # fraction of training labels flipped on purpose (flagging studies)
    duplicates: bool = True  # ISIC sets: find near-duplicate images at run start (duplicates.csv)
    group_duplicates: bool = False  # keep near-duplicate images in one split, with their lesions
    download: bool = False  # benchmark mode: fetch MNIST/CIFAR from their official hosts


@dataclass
class ModelConfig:
    name: str = "densenet161"  # any timm model, or lenet5 | densenet_bc_100 | wrn_28_2
    pretrained: bool = True  # ImageNet weights through timm (needs internet once)
    weights: str | None = None  # local checkpoint (state dict or .safetensors) instead
    channels_last: bool = True  # CUDA only
    compile: bool = False  # torch.compile (CUDA only)
    saliency_layer: str | None = None  # Grad-CAM target module, e.g. "layer4"; default per architecture


@dataclass
class OptimConfig:
    epochs: int = 150
    batch_size: int = 32
    lr: float = 1e-4
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 0.0
    milestones: list[int] = field(default_factory=lambda: [75, 112])
    lr_gamma: float = 0.1


@dataclass
class LossConfig:
    name: str = "ce"  # ce | balanced_ce | focal
    gamma: float = 2.0  # focal
    alpha: list[float] | None = None  # focal: optional per-class weights
    effective_number: bool = False  # balanced_ce: Cui et al. 2019 class weights
    beta: float = 0.999  # balanced_ce with effective_number


@dataclass
class WeightingConfig:
    name: str = "low"  # low | none | spl | is
    lam: float = 1.0  # LOW's lambda on the per-sample scale (see README)
    grad_scale: str = "per_sample"  # per_sample | batch_mean (the reference code's scaling)
    global_batch: bool = False  # DDP: solve LOW's QP on the all-gathered global batch
    options: dict[str, Any] = field(default_factory=dict)  # extra options of spl / is


@dataclass
class RunConfig:
    name: str | None = None  # run folder name; derived from the setup when empty
    out: str = "runs"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    amp: bool = True  # mixed precision on CUDA (bf16 where supported, else fp16)
    log_every: int = 20  # steps between progress-bar updates (each costs a device sync)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    weighting: WeightingConfig = field(default_factory=WeightingConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _merge(base: dict, update: dict, where: str) -> dict:
    """Deep-merge `update` into a copy of `base`; unknown keys are a UserError."""
    out = dict(base)
    for key, value in update.items():
        name = f"{where}.{key}" if where else key
        if key not in base:
            valid = ", ".join(sorted(base))
            raise UserError(f"unknown setting '{name}'. Valid settings there: {valid}.")
        if isinstance(base[key], dict) and key != "options":
            if not isinstance(value, dict):
                raise UserError(f"setting '{name}' must be a section (a mapping), got {value!r}.")
            out[key] = _merge(base[key], value, name)
        else:
            out[key] = value
    return out


def _check_types(section: str, cls: type, values: dict) -> Any:
    """Build dataclass `cls` from `values`, converting and checking each value's type."""
    hints = get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        kwargs[key] = _coerce(f"{section}.{key}", hints[key], value)
    return cls(**kwargs)


def _coerce(name: str, hint: Any, value: Any) -> Any:
    text = str(hint)
    if value is None:
        if "None" in text:
            return None
        raise UserError(f"setting {name} cannot be empty.")
    if hint is bool or text.startswith("bool"):
        if isinstance(value, bool):
            return value
        raise UserError(f"setting {name} must be true or false, got {value!r}.")
    if hint is int or text.startswith("int"):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise UserError(f"setting {name} must be a whole number, got {value!r}.")
    if hint is float or text.startswith("float"):
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise UserError(f"setting {name} must be a number, got {value!r}.")
    if text.startswith("list"):
        if not isinstance(value, list):
            raise UserError(f"setting {name} must be a list like [1, 2], got {value!r}.")
        return value
    if text.startswith("dict"):
        if not isinstance(value, dict):
            raise UserError(f"setting {name} must be a mapping like {{key: value}}, got {value!r}.")
        return value
    return str(value)


def from_dict(values: dict[str, Any]) -> Config:
    """A checked Config from a nested mapping that holds every key (see `resolve`)."""
    hints = get_type_hints(Config)
    return Config(**{k: _check_types(k, hints[k], v) for k, v in values.items()})


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file; a missing or malformed file is a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} does not exist.")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise UserError(f"config file {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of sections (data:, model:, ...).")
    return data


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`["optim.lr=0.01", "data.split=random"]` -> nested dict, values parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set expects key=value (e.g. optim.lr=0.01), got '{pair}'.")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        node = out
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def resolve(*layers: dict[str, Any]) -> Config:
    """Defaults, then each layer (YAML file, flags) in order, checked and typed."""
    merged = Config().to_dict()
    for layer in layers:
        merged = _merge(merged, layer, "")
    return check(from_dict(merged))


def check(cfg: Config) -> Config:
    """Reject values that would only fail later (after minutes of data loading)."""
    from dermlow.method.losses import LOSSES
    from dermlow.method.weightings import WEIGHTINGS

    def need(ok: bool, message: str) -> None:
        if not ok:
            raise UserError(message)

    need(cfg.loss.name in LOSSES, f"unknown loss '{cfg.loss.name}'. Valid losses: {', '.join(LOSSES)}.")
    need(cfg.weighting.name in WEIGHTINGS,
         f"unknown weighting '{cfg.weighting.name}'. Valid weightings: {', '.join(WEIGHTINGS)}.")
    need(cfg.weighting.lam > 0 and cfg.weighting.lam != float("inf"),
         f"--lam must be a positive number, got {cfg.weighting.lam:g}: LOW's lambda divides the gradient norms "
         f"(larger lambda = weights closer to 1; the default is 1).")
    need(cfg.weighting.grad_scale in ("per_sample", "batch_mean"),
         f"weighting.grad_scale must be per_sample or batch_mean, got '{cfg.weighting.grad_scale}'.")
    need(cfg.optim.epochs >= 1, f"--epochs must be at least 1, got {cfg.optim.epochs}.")
    need(cfg.optim.batch_size >= 1, f"--batch-size must be at least 1, got {cfg.optim.batch_size}.")
    need(cfg.optim.lr > 0, f"--lr must be positive, got {cfg.optim.lr:g}.")
    need(cfg.data.split in ("lesion", "random"), f"data.split must be lesion or random, got '{cfg.data.split}'.")
    need(0 <= cfg.data.flip_labels < 1, f"--flip-labels must be in [0, 1), got {cfg.data.flip_labels:g}.")
    need(0 < cfg.data.test_fraction < 1 and 0 <= cfg.data.val_fraction < 1,
         "data.test_fraction must be in (0, 1) and data.val_fraction in [0, 1).")
    need(cfg.data.crop_size <= cfg.data.image_size,
         f"data.crop_size ({cfg.data.crop_size}) cannot exceed data.image_size ({cfg.data.image_size}).")
    return cfg


def year_config(year: int) -> Path:
    """The shipped config of an ISIC challenge year."""
    if year not in (2017, 2018):
        raise UserError(f"--year must be 2017 or 2018, got {year}.")
    return CONFIG_DIR / f"isic{year}.yaml"


def run_name(cfg: Config) -> str:
    """A readable default run name: dataset-model-loss-weighting[-lam]-seed."""
    parts = [cfg.data.dataset, cfg.model.name, cfg.loss.name, cfg.weighting.name]
    if cfg.weighting.name == "low":
        parts.append(f"lam{cfg.weighting.lam:g}")
    parts.append(f"seed{cfg.run.seed}")
    return "-".join(parts)
