from pathlib import Path

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
    demo = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"  # what `make demo` trains with
    for path in (demo, config.year_config(2017), config.year_config(2018)):
        assert config.resolve(config.read_yaml(path)).data.color_p == 6.0, path.name


def test_round_trip_through_saved_dict():
    cfg = config.resolve(config.parse_overrides(["weighting.name=is", "weighting.presample=4", "optim.milestones=[3,6]"]))
    assert cfg.weighting.presample == 4 and cfg.to_dict()["weighting"] == {"name": "is", "presample": 4, "smoothing": 0.1,
                                                                           "equal_steps": True}
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
    with pytest.raises(UserError, match="--year must be 2017 or 2018, got 2019"):
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


def test_a_choice_section_holds_the_chosen_entrys_typed_options():
    cfg = config.resolve(config.parse_overrides(["loss.name=focal", "loss.gamma=1", "weighting.name=spl",
                                                 "weighting.growth=2"]))
    assert (cfg.loss.name, cfg.loss.gamma, cfg.loss.alpha) == ("focal", 1.0, None)
    assert isinstance(cfg.loss.gamma, float) and cfg.weighting.options.growth == 2.0
    assert cfg.to_dict()["weighting"] == {"name": "spl", "start_quantile": 0.5, "growth": 2.0, "full_at": 0.5,
                                          "rescale": False}


def test_a_new_name_in_a_later_layer_drops_the_earlier_entrys_options(tmp_path):
    year = config.read_yaml(config.year_config(2018))  # weighting: {name: low, lam: 1.0, grad_scale: ...}
    cfg = config.resolve(year, config.parse_overrides(["weighting.name=none"]))
    assert cfg.to_dict()["weighting"] == {"name": "none"}
    same = config.resolve(year, config.parse_overrides(["weighting.lam=0.5"]))
    assert (same.weighting.name, same.weighting.lam, same.weighting.grad_scale) == ("low", 0.5, "per_sample")


@pytest.mark.parametrize(("pairs", "message"), [
    (["weighting.name=spl", "weighting.lam=1"], r"weighting 'spl' has no option 'lam' \(weighting.lam\). "
     "Its options: start_quantile, growth, full_at, rescale."),
    (["loss.gamma=2"], "loss 'ce' has no option 'gamma'"),
    (["weighting.name=mentor"], "unknown weighting 'mentor'. Valid weightings: none, low, spl, is, mentornet, mwnet"),
    (["data.dataset=svhn"], "unknown dataset 'svhn'. Valid datasets: isic2017, isic2018, ham10000, generic, cifar10"),
    (["weighting.options={presample: 4}"], "weighting 'low' has no option 'options'"),
])
def test_unknown_names_and_options_list_the_valid_ones(pairs, message):
    with pytest.raises(UserError, match=message):
        config.resolve(config.parse_overrides(pairs))


@pytest.mark.parametrize(("pair", "message"), [
    ("optim.momentum=-1", "optim.momentum must be a finite number >= 0"),
    ("optim.weight_decay=-0.1", "optim.weight_decay must be a finite number >= 0"),
    ("optim.lr=.inf", "--lr must be a finite number > 0, got inf"),
    ("optim.lr=0", "--lr must be a finite number > 0"),
    ("optim.lr_gamma=0", "optim.lr_gamma must be a finite number > 0"),
    ("optim.milestones=[5,2]", r"optim.milestones must be increasing epoch numbers >= 1, like \[75, 112\], got \[5, 2\]"),
    ("optim.milestones=[0]", "optim.milestones must be increasing"),
    ("optim.milestones=[2.5]", r"optim.milestones\[0\] must be a whole number"),
    ("optim.batch_size=0", "--batch-size must be at least 1"),
    ("data.num_workers=-1", "--workers"),
    ("data.image_size=0", "data.image_size and data.crop_size must be at least 1"),
    ("data.crop_size=400", r"data.crop_size \(400\) cannot exceed data.image_size \(300\)"),
    ("data.val_fraction=1", "data.val_fraction must be in"),
    ("data.flip_labels=1", "--flip-labels must be in"),
    ("run.log_every=0", "run.log_every must be at least 1"),
    ("run.seed=-1", "--seed must be 0 or more"),
    ("run.name=../x", "--name .run.name. must be one folder name"),
    ("run.name=/abs", "must be one folder name"),
    ("run.name=a/b", "must be one folder name"),
    ("run.name=.hidden", "must be one folder name"),
    ("run.name=..", "must be one folder name"),
    ("loss.name=focal\nloss.gamma=-1", r"loss.gamma \(focal\) must be a finite number >= 0"),
    ("weighting.lam=.nan", "--lam must be a positive number, got nan"),
    ("weighting.grad_scale=mean", "weighting.grad_scale must be per_sample or batch_mean"),
])
def test_every_value_is_checked_when_the_config_is_resolved(pair, message):
    with pytest.raises(UserError, match=message):
        config.resolve(config.parse_overrides(pair.split("\n")))


def test_saved_configs_from_before_typed_option_sections_are_read():
    old = {"loss": {"name": "ce", "gamma": 2.0, "alpha": None, "effective_number": False, "beta": 0.999},
           "weighting": {"name": "spl", "lam": 1.0, "grad_scale": "per_sample", "global_batch": False,
                         "options": {"growth": 2.0}}}
    cfg = config.resolve(config.upgrade(old))
    assert cfg.to_dict()["loss"] == {"name": "ce"}
    # spl options, and rescale=True: a run saved before `rescale` existed was trained with rescaled weights
    assert cfg.to_dict()["weighting"] == {"name": "spl", "start_quantile": 0.5, "growth": 2.0, "full_at": 0.5,
                                          "rescale": True}
    with pytest.raises(UserError, match="loss 'ce' has no option 'alpha'"):  # a user's own YAML is not silently cleaned
        config.resolve(old)


def test_the_derived_run_name_is_one_folder_name():
    cfg = config.resolve(config.parse_overrides(["model.name=hf-hub:timm/resnet18.a1_in1k"]))
    assert "/" not in config.run_name(cfg)
