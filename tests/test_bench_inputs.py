"""What benchmark runs feed the network: the paper's imbalanced-MNIST caps, LeNet-5's black padding."""

import numpy as np
import pytest
import torch
from test_benchdata import fake_mnist

from dermlow import config
from dermlow.cli.main import _flag_layer, build_parser
from dermlow.data import array_manifest
from dermlow.data.array_manifest import pad_images, resolve_max_per_class
from dermlow.data.prepare import build_datasets, prepare
from dermlow.errors import UserError

COUNTS = [400] * 10


def mnist_cfg(root, **data):
    return config.resolve({"data": {"dataset": "mnist-imbalanced", "data_dir": str(root), "num_workers": 0,
                                    "val_fraction": 0.1, **data},
                           "model": {"name": "lenet5", "pretrained": False}, "run": {"seed": 3}})


def bench_data(cfg):
    return array_manifest.bench_data(cfg.data.dataset, cfg.data, seed=cfg.run.seed)


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory):
    return fake_mnist(tmp_path_factory.mktemp("mnist"), COUNTS)


def test_mnist_imbalanced_defaults_to_the_papers_common_n_c(mnist_dir):
    k = np.random.default_rng(3).permutation(10)
    paper = bench_data(mnist_cfg(mnist_dir))
    # N_C = 6000 for every class: min(n_c, round(6000 / 2^k)); with 400 images a class keeps all of
    # them for k <= 3, then 375, 188, 94, 47, 23, 12
    expected = [min(400, int(np.floor(6000 / 2 ** kc + 0.5))) for kc in k]
    assert paper.counts.tolist() == expected and sorted(expected)[:6] == [12, 23, 47, 94, 188, 375]
    own = bench_data(mnist_cfg(mnist_dir, max_per_class=0))  # each class's own count
    assert own.counts.tolist() == [max(400 // 2 ** kc, 1) for kc in k]
    half = bench_data(mnist_cfg(mnist_dir, max_per_class=3000))
    assert half.counts.tolist() == [min(400, int(np.floor(3000 / 2 ** kc + 0.5))) for kc in k]


def test_max_per_class_resolution_and_flags():
    assert resolve_max_per_class("mnist-imbalanced", None) == 6000
    assert resolve_max_per_class("digits-imbalanced", None) is None  # digits keep floor(n_c / 2^k)
    assert resolve_max_per_class("mnist-imbalanced", 0) is None
    assert resolve_max_per_class("cifar10-imbalanced", 5000) == 5000
    args = build_parser().parse_args(["train", "--config", "x.yaml", "--max-per-class", "3000"])
    assert _flag_layer(args) == {"data": {"max_per_class": 3000}}
    with pytest.raises(UserError, match="max-per-class must be 0 or more"):
        config.resolve({"data": {"max_per_class": -1}})


def test_bench_flag_reaches_every_run(monkeypatch, tmp_path):
    from dermlow.bench import grid
    from dermlow.cli.main import main

    seen = []
    monkeypatch.setattr(grid, "run_grid", lambda spec: seen.append(spec) or __import__("pandas").DataFrame())
    main(["bench", "--dataset", "mnist-imbalanced", "--max-per-class", "1000", "--out", str(tmp_path)])
    cfg = grid.point_config(grid.base_layers(seen[0]), grid.GridPoint("none", None, 0.01, 0))
    assert cfg.data.max_per_class == 1000


def test_lams_for_reaches_the_grid_spec(monkeypatch, tmp_path):
    from dermlow.bench import grid
    from dermlow.cli.main import main

    seen = []
    monkeypatch.setattr(grid, "run_grid", lambda spec: seen.append(spec) or __import__("pandas").DataFrame())
    main(["bench", "--dataset", "digits-imbalanced", "--methods", "none,low,low_balanced_ce", "--lams", "1",
          "--lams-for", "low_balanced_ce=100,10", "--out", str(tmp_path)])
    assert seen[0].lams == [1.0] and seen[0].method_lams == {"low_balanced_ce": [100.0, 10.0]}
    assert main(["bench", "--dataset", "digits", "--methods", "none", "--lams-for", "low=1"]) == 2  # not in --methods


def test_pad_images_is_centred_black():
    x = np.full((2, 28, 28), 200, np.uint8)
    y = pad_images(x, 32)
    assert y.shape == (2, 32, 32) and (y[:, 2:30, 2:30] == 200).all()
    assert y.sum() == x.sum()  # the border is 0 (black)
    assert pad_images(np.ones((1, 28, 28, 3), np.uint8), 32).shape == (1, 32, 32, 3)


def test_mnist_inputs_are_padded_with_black_to_lenet5_size_before_normalisation(mnist_dir):
    cfg = mnist_cfg(mnist_dir)
    data = prepare(cfg.data, seed=cfg.run.seed)
    train = build_datasets(cfg.data, data.manifest, seed=cfg.run.seed, mean=None, std=None)["train"]
    image, _, _ = train[0]
    assert image.shape == (1, 32, 32)  # padded in the data, so LeNet-5 needs no padding of its own
    black = (0.0 - train.mean) / train.std  # what a black pixel becomes after normalisation
    torch.testing.assert_close(image[:, :2, :], black.expand(1, 2, 32))
    torch.testing.assert_close(image[:, :, -2:], black.expand(1, 32, 2))
    assert black.item() < -0.1  # black, not the normalised mean (0)
