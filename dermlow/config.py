"""Typed run configuration: code defaults < YAML file < command-line flags < --set.

The configuration is composed of sections, each a dataclass owned by the package that uses it:
`data:` (`dermlow.data.sources.DataConfig`), `model:` (`dermlow.models.config.ModelConfig`),
`optim:` and `run:` (here), and two sections that choose a registry entry by `name` and hold that
entry's own options: `loss:` (`dermlow.method.losses.LOSSES`) and `weighting:`
(`dermlow.method.weightings.WEIGHTINGS`), e.g. ``weighting: {name: low, lam: 0.5}``. Each value is
checked once, by its dataclass, so a refused config stops before anything is written.

The resolved configuration is saved as `config.yaml` in the run directory, and a run is
rebuilt from that file alone (resume, evaluate, the review app).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dermlow import settings
from dermlow.data.prepare import DATASETS, challenge_years
from dermlow.data.sources import DataConfig
from dermlow.errors import UserError
from dermlow.method.losses import LOSSES
from dermlow.method.weightings import WEIGHTINGS
from dermlow.models.config import ModelConfig
from dermlow.registry import Registry
from dermlow.resources import config_dir
from dermlow.settings import finite, flag, require


@dataclass
class OptimConfig:
    """The `optim:` section: SGD with (Nesterov) momentum and a step learning-rate schedule."""

    epochs: int = field(default=150, metadata=flag("--epochs", "training epochs"))
    batch_size: int = field(default=32, metadata=flag("--batch-size", "images per step (all processes together)"))
    lr: float = field(default=1e-4, metadata=flag("--lr", "learning rate"))
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 0.0
    milestones: list[int] = field(default_factory=lambda: [75, 112])  # epochs after which lr *= lr_gamma
    lr_gamma: float = 0.1

    def __post_init__(self) -> None:
        require(self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}.")
        require(self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}.")
        require(finite(self.lr) and self.lr > 0, f"--lr must be a finite number > 0, got {self.lr}.")
        require(finite(self.momentum) and self.momentum >= 0,
                f"optim.momentum must be a finite number >= 0 (the paper uses 0.9), got {self.momentum}.")
        require(finite(self.weight_decay) and self.weight_decay >= 0,
                f"optim.weight_decay must be a finite number >= 0, got {self.weight_decay}.")
        steps = self.milestones
        require(all(m >= 1 for m in steps) and all(a < b for a, b in zip(steps, steps[1:], strict=False)),
                f"optim.milestones must be increasing epoch numbers >= 1, like [75, 112], got {steps}.")
        require(finite(self.lr_gamma) and self.lr_gamma > 0,
                f"optim.lr_gamma must be a finite number > 0 (the factor applied at each milestone), "
                f"got {self.lr_gamma}.")


def _one_path_component(name: str) -> bool:
    return bool(name) and name not in (".", "..") and not name.startswith(".") and not any(
        c in name for c in "/\\\0")


@dataclass
class RunConfig:
    """The `run:` section: where the run folder goes, seed, device."""

    name: str | None = field(default=None, metadata=flag(
        "--name", "run folder name (default: derived from the setup)"))
    out: str = field(default="runs", metadata=flag("--out", "folder that holds run folders (default runs/)"))
    seed: int = field(default=0, metadata=flag("--seed", "seed of the initial weights, data order and splits"))
    device: str = field(default="auto", metadata=flag("--device", "auto | cpu | cuda"))
    amp: bool = True  # mixed precision on CUDA (bf16 where supported, else fp16)
    log_every: int = 20  # steps between progress-bar updates (each costs a device sync)

    def __post_init__(self) -> None:
        require(self.name is None or _one_path_component(self.name),
                f"--name (run.name) must be one folder name, without '/', '..' or a leading '.'; got '{self.name}'. "
                "Use --out to choose where the run folder goes.")
        require(bool(self.out), "--out (run.out) cannot be empty.")
        require(self.seed >= 0, f"--seed must be 0 or more, got {self.seed}.")
        require(self.log_every >= 1, f"run.log_every must be at least 1, got {self.log_every}.")


@dataclass
class Choice:
    """A section that picks a registry entry by `name` and holds that entry's typed options.

    The options read as fields of the section: ``cfg.weighting.lam`` is ``cfg.weighting.options.lam``.
    """

    name: str
    options: Any

    def __getattr__(self, key: str) -> Any:  # only called when normal lookup fails
        options = self.__dict__.get("options")
        if options is None or key.startswith("__"):
            raise AttributeError(key)
        try:
            return getattr(options, key)
        except AttributeError:
            raise AttributeError(f"'{self.__dict__.get('name')}' has no option {key!r}") from None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **settings.to_dict(self.options)}


SECTIONS: dict[str, type] = {"data": DataConfig, "model": ModelConfig, "optim": OptimConfig, "run": RunConfig}
CHOICES: dict[str, Registry] = {"loss": LOSSES, "weighting": WEIGHTINGS}
DEFAULT_CHOICE = {"loss": "ce", "weighting": "low"}


def _choice(section: str, name: str | None = None, values: dict | None = None) -> Choice:
    name = DEFAULT_CHOICE[section] if name is None else name
    return Choice(name, CHOICES[section].options(name, values or {}, section))


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: Choice = field(default_factory=lambda: _choice("loss"))
    weighting: Choice = field(default_factory=lambda: _choice("weighting"))
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        """The nested mapping saved as config.yaml (sections in declaration order)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.to_dict() if isinstance(value, Choice) else settings.to_dict(value)
        return out


def _merge(base: dict, update: dict, where: str) -> dict:
    """Deep-merge `update` into a copy of `base`; unknown keys are a UserError.

    In a choice section (loss, weighting) a new `name` starts the section afresh: options set by
    an earlier layer belonged to the entry chosen there. Its keys are checked when it is built.
    """
    out = dict(base)
    for key, value in update.items():
        name = f"{where}.{key}" if where else key
        if key not in base:
            valid = ", ".join(sorted(base))
            raise UserError(f"unknown setting '{name}'. Valid settings there: {valid}.")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise UserError(f"setting '{name}' must be a section (a mapping), got {value!r}.")
            if not where and key in CHOICES:
                fresh = "name" in value and value["name"] != base[key].get("name")
                out[key] = dict(value) if fresh else {**base[key], **value}
            else:
                out[key] = _merge(base[key], value, name)
        else:
            out[key] = value
    return out


def from_dict(values: dict[str, Any]) -> Config:
    """A checked Config from a nested mapping of sections (missing ones take their defaults)."""
    kwargs: dict[str, Any] = {key: settings.build(cls, values.get(key) or {}, key) for key, cls in SECTIONS.items()}
    for key in CHOICES:
        section = values.get(key) or {}
        if not isinstance(section, dict):
            raise UserError(f"setting '{key}' must be a section (a mapping), got {section!r}.")
        options = {k: v for k, v in section.items() if k != "name"}
        kwargs[key] = _choice(key, section.get("name"), options)
    DATASETS.entry(kwargs["data"].dataset)  # an unknown data set is a UserError listing the valid ones
    return Config(**kwargs)


# Settings added together with a new default behaviour: a run saved before they existed was
# trained with the old behaviour, which these values keep (resume, evaluate, bench reruns).
LEGACY = {("loss", "balanced_ce"): {"reduction": "mean"}, ("weighting", "spl"): {"rescale": True},
          ("weighting", "is"): {"equal_steps": False}, ("data", None): {"max_per_class": 0}}


def upgrade(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved config.yaml made readable by today's sections.

    Run folders written before typed option sections held every option of every loss and
    weighting in each section (and spl / is options under `weighting.options`); the options the
    chosen entry does not have are dropped. A setting of `LEGACY` that the file lacks gets the
    value of the behaviour the run was trained with. A saved file is otherwise read as it is.
    """
    values = copy.deepcopy(saved) if isinstance(saved, dict) else {}
    for key, registry in CHOICES.items():
        section = values.get(key)
        if not isinstance(section, dict) or section.get("name") not in registry:
            continue
        section = {**section, **(section.pop("options", None) or {})}
        valid = settings.field_names(registry.entry(section["name"]).options)
        values[key] = {"name": section["name"], **{k: v for k, v in section.items() if k in valid}}
        values[key] = {**LEGACY.get((key, section["name"]), {}), **values[key]}
    if isinstance(values.get("data"), dict):
        values["data"] = {**LEGACY[("data", None)], **values["data"]}
    return values


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file; a missing or malformed file is a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} does not exist.")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise UserError(f"config file {path} is not valid YAML: {' '.join(str(err).split())}") from None
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
            if not isinstance(node, dict):
                raise UserError(f"--set {key}: '{part}' is a setting, not a section.")
        node[leaf] = value
    return out


def resolve(*layers: dict[str, Any]) -> Config:
    """Defaults, then each layer (YAML file, flags) in order, checked and typed."""
    merged = Config().to_dict()
    for layer in layers:
        merged = _merge(merged, layer, "")
    return from_dict(merged)


def years() -> list[int]:
    """The ISIC challenge years `--year` offers: data sets that declare one and ship configs/isic<year>.yaml."""
    return sorted(y for y in challenge_years() if (config_dir() / f"isic{y}.yaml").is_file())


def year_config(year: int) -> Path:
    """The shipped config of an ISIC challenge year."""
    valid = years()
    if year not in valid:
        listed = " or ".join(str(y) for y in valid)
        raise UserError(f"--year must be {listed}, got {year}.")
    return config_dir() / f"isic{year}.yaml"


def run_name(cfg: Config) -> str:
    """A readable default run name: dataset-model-loss-weighting[-options marked for names]-seed.

    An option whose field metadata holds `run_name` (LOW's lam: "lam") adds e.g. `lam0.1`.
    """
    parts = [cfg.data.dataset, cfg.model.name, cfg.loss.name, cfg.weighting.name]
    for choice in (cfg.loss, cfg.weighting):
        for f in dataclasses.fields(choice.options):
            if "run_name" in f.metadata:
                parts.append(f"{f.metadata['run_name']}{getattr(choice.options, f.name):g}")
    parts.append(f"seed{cfg.run.seed}")
    return "-".join(parts).replace("/", "_").replace("\\", "_")
