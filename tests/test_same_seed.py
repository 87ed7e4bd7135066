"""Same seed, same numbers: every weighting trains exactly as it did before the training-step hook.

tests/fixtures/same_seed/ holds metrics.csv (without its wall-time column) and sample_weights.parquet
of 2-epoch runs on the 90-image demo set, written by tests/fixtures/same_seed/generate.py at commit
00fae1a, before registries and `Weighting.training_step` replaced `Objective.__call__`. The same
setup (new config keys: spl / is options are plain fields of `weighting:`, here all defaults) must
reproduce them to 1e-6.
"""

from pathlib import Path

import pandas as pd
import pytest

from dermlow import config
from dermlow.data.demo import make_demo
from dermlow.rundir import files
from dermlow.training.loop import train

FIXTURES = Path(__file__).parent / "fixtures" / "same_seed"
SETUPS = {  # spl and is with the options that keep their behaviour from before issue 13's fixes
    "none": ["weighting.name=none"],
    "low": ["weighting.name=low", "weighting.lam=0.05"],
    "spl": ["weighting.name=spl", "weighting.rescale=true"],
    "is": ["weighting.name=is", "weighting.equal_steps=false"],
}
NEW_COLUMNS = ["optimizer_steps", *(f"{s}_{m}" for s in ("val", "test") for m in ("ece", "brier", "nll"))]
# metrics.csv columns added since the reference was written (equal steps; calibration)
TINY = ["data.image_size=40", "data.crop_size=32", "data.num_workers=0", "model.name=mobilenetv3_small_050",
        "model.pretrained=false", "optim.batch_size=16", "optim.lr=0.02", "optim.milestones=[2]",
        "optim.epochs=2", "run.seed=0"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return make_demo(tmp_path_factory.mktemp("same_seed") / "isic2018", year=2018, n_images=90, seed=0, size=(48, 36))


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("same_seed_cache")  # shared, as generate.py shared it


@pytest.mark.slow
@pytest.mark.parametrize("weighting", list(SETUPS))
def test_two_epochs_reproduce_the_stored_reference(demo, cache, tmp_path, weighting):
    flags = [f"data.data_dir={demo}", f"data.cache_dir={cache}", f"run.out={tmp_path / 'runs'}",
             f"run.name={weighting}", *TINY, *SETUPS[weighting]]
    cfg = config.resolve(config.read_yaml(config.year_config(2018)), config.parse_overrides(flags))
    run = train(cfg)

    expected = pd.read_csv(FIXTURES / f"{weighting}_metrics.csv")
    got = pd.read_csv(run / files.METRICS).drop(columns=["seconds", *NEW_COLUMNS])
    assert list(got.columns) == list(expected.columns)
    pd.testing.assert_frame_equal(got, expected, check_exact=False, rtol=0, atol=1e-6)

    expected_w = pd.read_parquet(FIXTURES / f"{weighting}_sample_weights.parquet")
    got_w = pd.read_parquet(run / files.WEIGHTS)
    assert len(got_w) == len(expected_w) > 0
    pd.testing.assert_frame_equal(got_w, expected_w, check_exact=False, rtol=0, atol=1e-6)
