import pytest

from dermlow import config
from dermlow.errors import UserError


def test_precedence_defaults_yaml_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 0.01\n  epochs: 3\nweighting:\n  lam: 5\n")
    cfg = config.resolve(config.read_yaml(path), config.parse_overrides(["optim.lr=0.5", "data.split=random"]))
    assert cfg.optim.lr == 0.5  # flag beats YAML
    assert cfg.optim.epochs == 3  # YAML beats default
    assert cfg.weighting.lam == 5.0 and isinstance(cfg.weighting.lam, float)
    assert cfg.optim.batch_size == 32  # default
    assert cfg.data.split == "random"


def test_year_configs_hold_the_paper_setup():
    for year, classes_set in ((2017, "isic2017"), (2018, "isic2018")):
        cfg = config.resolve(config.read_yaml(config.year_config(year)))
        assert cfg.data.dataset == classes_set
        assert cfg.model.name == "densenet161" and cfg.model.pretrained
        assert (cfg.optim.epochs, cfg.optim.batch_size, cfg.optim.lr) == (150, 32, 1e-4)
        assert cfg.optim.milestones == [75, 112] and cfg.optim.lr_gamma == 0.1
        assert cfg.optim.nesterov and cfg.optim.momentum == 0.9
        assert (cfg.loss.name, cfg.weighting.name, cfg.weighting.grad_scale) == ("ce", "low", "per_sample")


def test_colour_constancy_exponent_is_six_in_every_shipped_config():
    """Shades of Gray with p = 6 (Barata et al. 2015) for real runs and for `make demo`, whose
    config leaves the exponent to the code default: both the default and each file must say 6."""
    assert config.resolve().data.color_p == 6.0
    for path in (config.CONFIG_DIR / "demo.yaml", config.year_config(2017), config.year_config(2018)):
        assert config.resolve(config.read_yaml(path)).data.color_p == 6.0, path.name


def test_round_trip_through_saved_dict():
    cfg = config.resolve(config.parse_overrides(["weighting.options={presample: 4}", "optim.milestones=[3,6]"]))
    again = config.from_dict(cfg.to_dict())
    assert again == cfg


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        (["optim.lrr=1"], "unknown setting 'optim.lrr'"),
        (["optim.epochs=ten"], "optim.epochs must be a whole number"),
        (["optim.lr=fast"], "optim.lr must be a number"),
        (["model.pretrained=maybe"], "model.pretrained must be true or false"),
        (["optim=3"], "must be a section"),
        (["noequals"], "--set expects key=value"),
    ],
)
def test_bad_settings_are_user_errors(pairs, message):
    with pytest.raises(UserError, match=message):
        config.resolve(config.parse_overrides(pairs))


def test_bad_year_and_missing_file(tmp_path):
    with pytest.raises(UserError, match="--year must be 2017 or 2018"):
        config.year_config(2019)
    with pytest.raises(UserError, match="does not exist"):
        config.read_yaml(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        config.read_yaml(bad)


def test_run_name_names_the_setup():
    cfg = config.resolve(config.parse_overrides(["weighting.lam=0.1", "run.seed=3"]))
    assert config.run_name(cfg) == "isic2018-densenet161-ce-low-lam0.1-seed3"
