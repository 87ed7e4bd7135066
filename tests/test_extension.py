"""Extension = one decorated class or function: a toy loss and a toy weighting registered from this
test module (no edit to dermlow) train through the config and `dermlow.training.loop.train`, and
show up in the CLI help and the bench's methods. Also the registry's own behaviour."""

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from dermlow import config
from dermlow.bench.grid import methods
from dermlow.cli.main import main
from dermlow.data.demo import make_demo
from dermlow.errors import UserError
from dermlow.method.losses import LOSSES, Loss
from dermlow.method.weightings import WEIGHTINGS, Weighting, make_weighting
from dermlow.registry import Registry
from dermlow.rundir import files
from dermlow.settings import finite, flag, require
from dermlow.training.loop import train


# ------------------------------------------------------------------------------ the toy extensions
@dataclass(frozen=True)
class SmoothOptions:
    smoothing: float = 0.1

    def __post_init__(self) -> None:
        require(finite(self.smoothing) and 0 <= self.smoothing < 1,
                f"loss.smoothing must be in [0, 1), got {self.smoothing}.")


def make_smooth_ce(options: SmoothOptions, class_counts) -> Loss:
    """Label-smoothed cross-entropy; g by autograd (no closed form given)."""
    return Loss.with_autograd_g(lambda z, y: F.cross_entropy(z.float(), y, reduction="none",
                                                              label_smoothing=options.smoothing))


@dataclass(frozen=True)
class MetaBoostOptions:
    boost: float = field(default=2.0, metadata=flag("--boost", "weight of samples easier than the meta batch"))


class MetaBoost(Weighting):
    """Samples whose loss is below the mean loss of a clean meta batch get `boost` times the weight
    (then normalised to mean 1): a stand-in for a method that learns from a meta set."""

    meta_split = "val"
    meta_batches_seen = 0

    def training_step(self, model, optimizer, images, targets, *, step, epoch, meta_batches=None):
        assert meta_batches is not None and step >= 1 and epoch == 1
        meta_images, meta_targets = next(meta_batches)
        assert meta_images.device == images.device and meta_images.dtype == images.dtype
        type(self).meta_batches_seen += 1
        with torch.no_grad():
            reference = self.loss.per_sample(model(meta_images).float(), meta_targets).mean()
        logits = model(images).float()
        loss_vec = self.loss.per_sample(logits, targets)
        w = torch.where(loss_vec.detach() < reference, self.options.boost, 1.0)
        w = w / w.mean()
        return {"loss": (w * loss_vec).mean(), "logits": logits.detach(), "per_sample_loss": loss_vec.detach(),
                "weights": w, "g": self.loss.g(logits, targets)}


@pytest.fixture(scope="module")
def toys():
    LOSSES.register("toy_smooth_ce", label="LS-CE", help="label-smoothed CE (a test's toy)",
                    options=SmoothOptions)(make_smooth_ce)
    WEIGHTINGS.register("toy_meta", label="META", help="meta-set boost (a test's toy)",
                        options=MetaBoostOptions)(MetaBoost)
    yield
    LOSSES.remove("toy_smooth_ce")
    WEIGHTINGS.remove("toy_meta")


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    return make_demo(tmp_path_factory.mktemp("demo") / "isic2018", n_images=60, seed=1, size=(32, 24))


def test_a_toy_loss_and_weighting_train_through_the_config(toys, demo_dir, tmp_path):
    flags = [f"data.data_dir={demo_dir}", f"data.cache_dir={tmp_path / 'cache'}", "data.image_size=40",
             "data.crop_size=32", "data.num_workers=0", "model.name=mobilenetv3_small_050", "model.pretrained=false",
             "optim.batch_size=16", "optim.lr=0.02", "optim.epochs=1", f"run.out={tmp_path}", "run.name=toy",
             "loss.name=toy_smooth_ce", "loss.smoothing=0.2", "weighting.name=toy_meta", "weighting.boost=3"]
    cfg = config.resolve(config.read_yaml(config.year_config(2018)), config.parse_overrides(flags))
    assert (cfg.loss.smoothing, cfg.weighting.boost) == (0.2, 3.0)
    run = train(cfg)
    saved = config.read_yaml(run / files.CONFIG)
    assert saved["loss"] == {"name": "toy_smooth_ce", "smoothing": 0.2}
    assert saved["weighting"] == {"name": "toy_meta", "boost": 3.0}
    weights = pd.read_parquet(run / files.WEIGHTS)
    assert (weights["weight"] > 0).all() and weights["weight"].nunique() > 1  # the boost was applied
    assert weights["weight"].mean() == pytest.approx(1.0, abs=0.2)  # mean 1 per batch (the last one is shorter)
    assert MetaBoost.meta_batches_seen >= 3  # one meta batch per training step
    assert (run / files.DONE).is_file()


def test_toy_entries_appear_in_help_checks_and_bench_methods(toys, capsys):
    with pytest.raises(UserError, match="loss.smoothing must be in"):
        config.resolve(config.parse_overrides(["loss.name=toy_smooth_ce", "loss.smoothing=1"]))
    with pytest.raises(UserError, match="weighting 'toy_meta' has no option 'lam'.*Its options: boost"):
        config.resolve(config.parse_overrides(["weighting.name=toy_meta", "weighting.lam=1"]))
    assert methods()["toy_meta"] == ("ce", "toy_meta") and methods()["toy_smooth_ce"] == ("toy_smooth_ce", "none")
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "toy_smooth_ce (label-smoothed CE (a test's toy))" in out and "toy_meta (meta-set boost" in out
    assert "--boost BOOST weight of samples easier than the meta batch" in out  # its flag, declared beside it


def test_a_new_challenge_year_is_one_reader_and_one_yaml(demo_dir, tmp_path, monkeypatch, capsys):
    """ISIC 2019 stand-in: a reader registered with year=2019 plus configs/isic2019.yaml."""
    from dermlow.data.image_sets import register_reader
    from dermlow.data.isic import ISIC2018, read_isic2018
    from dermlow.data.prepare import DATASETS

    configs = tmp_path / "configs"
    configs.mkdir()
    for year in (2017, 2018):
        (configs / f"isic{year}.yaml").write_text(config.year_config(year).read_text())
    (configs / "isic2019.yaml").write_text("data:\n  dataset: isic2019\n  data_dir: data/isic2019\n")
    monkeypatch.setattr(config, "config_dir", lambda: configs)
    register_reader("isic2019", label="ISIC 2019 (test)", year=2019)(
        lambda root, csv, images: (read_isic2018(root, csv, images)[0], ISIC2018))
    try:
        assert config.years() == [2017, 2018, 2019]
        cfg = config.resolve(config.read_yaml(config.year_config(2019)))
        assert cfg.data.dataset == "isic2019"
        assert main(["data", "check", "--year", "2019", "--data-dir", str(demo_dir)]) == 0
        assert "isic2019: 60 images, 7 classes" in capsys.readouterr().out
        with pytest.raises(SystemExit):
            main(["train", "--help"])
        assert "{2017,2018,2019}" in capsys.readouterr().out
    finally:
        DATASETS.remove("isic2019")


# ---------------------------------------------------------------------------------- the registry
def test_registry_names_labels_and_errors():
    reg: Registry = Registry("colour")

    @reg.register("red", label="Red", help="warm", options=SmoothOptions, hue=0)
    def red(options, counts):
        return options

    assert reg.get("red") is red and reg.names() == ("red",) and "red" in reg and len(reg) == 1
    assert (reg.entry("red").label, reg.entry("red").hue, reg.label("blue")) == ("Red", 0, "blue")
    assert reg.help_text() == "red (warm)"
    assert reg.options("red", {"smoothing": 0}, "colour") == SmoothOptions(0.0)
    with pytest.raises(UserError, match="unknown colour 'blue'. Valid colours: red."):
        reg.get("blue")
    with pytest.raises(UserError, match=r"colour 'red' has no option 'hue' \(colour.hue\). Its options: smoothing."):
        reg.options("red", {"hue": 1}, "colour")
    with pytest.raises(UserError, match="colour.smoothing must be a number, got 'x'"):
        reg.options("red", {"smoothing": "x"}, "colour")
    with pytest.raises(ValueError, match="registered twice"):
        reg.add("red", red)
    reg.remove("red")
    assert reg.names() == ()


def test_built_in_weightings_labels_and_option_errors():
    assert WEIGHTINGS.names()[:4] == ("none", "low", "spl", "is")
    assert [WEIGHTINGS.label(n) for n in ("none", "low", "spl", "is")] == ["", "LOW", "SPL", "IS"]
    with pytest.raises(UserError, match="unknown weighting 'lowe'. Valid weightings: none, low, spl, is"):
        make_weighting("lowe")
    with pytest.raises(UserError, match="unknown loss 'bce'"):
        make_weighting("low", loss="bce")
    with pytest.raises(UserError, match="weighting 'low' has no option 'lambda'.*Its options: lam, grad_scale"):
        make_weighting("low", **{"lambda": 1.0})
    with pytest.raises(UserError, match=r"weighting 'none' has no option 'lam' \(weighting.lam\). Its options: none"):
        make_weighting("none", lam=1.0)
    with pytest.raises(ValueError, match="needs class_counts"):
        make_weighting("none", loss="balanced_ce")
    with pytest.raises(UserError, match="--lam must be a positive number, got 0"):
        make_weighting("low", lam=0)
    with pytest.raises(UserError, match="--lam must be a positive number, got inf"):
        make_weighting("low", lam=float("inf"))
    with pytest.raises(UserError, match="weighting.presample must be a whole number >= 1"):
        make_weighting("is", presample=0)
    with pytest.raises(UserError, match="weighting.growth must be a finite number >= 1"):
        make_weighting("spl", growth=0.5)
