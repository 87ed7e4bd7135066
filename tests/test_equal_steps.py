"""Importance sampling takes as many optimizer steps per epoch as every other method."""

import numpy as np
import torch

from dermlow.data.loading import EpochSampler, make_loader
from dermlow.data.seeding import epoch_permutation
from dermlow.training.records import merge_repeats


def test_passes_concatenate_independent_seeded_orders_starting_with_the_usual_one():
    one = list(EpochSampler(10, shuffle=True, seed=4, epoch=2, keys=False))
    three = list(EpochSampler(10, shuffle=True, seed=4, epoch=2, keys=False, passes=3))
    assert len(three) == 30 and three[:10] == one == epoch_permutation(10, 4, 2).tolist()
    assert sorted(three[10:20]) == sorted(three[20:]) == list(range(10)) and three[10:20] != three[20:]
    assert three == list(EpochSampler(10, shuffle=True, seed=4, epoch=2, keys=False, passes=3))


def test_presample_times_larger_batches_give_the_same_number_of_steps():
    data = torch.utils.data.TensorDataset(torch.arange(190))
    plain = make_loader(data, batch_size=64, shuffle=True, seed=0, epoch=1, num_workers=0)
    candidates = make_loader(data, batch_size=3 * 64, shuffle=True, seed=0, epoch=1, num_workers=0, passes=3)
    assert len(plain) == len(candidates) == 3  # ceil(190 / 64) optimizer steps either way
    assert [len(b[0]) for b in candidates] == [192, 192, 186]


def test_merge_repeats_means_per_image_and_keeps_first_appearance_order():
    records = {"index": np.array([5, 2, 5, 7, 2]), "loss": np.array([1.0, 2.0, 3.0, 4.0, 6.0], np.float32),
               "weight": np.array([0.0, 1.0, 2.0, 1.0, 3.0], np.float32), "predicted": np.array([0, 1, 2, 3, 4])}
    out = merge_repeats(records)
    assert out["index"].tolist() == [5, 2, 7]
    assert out["loss"].tolist() == [2.0, 4.0, 4.0] and out["weight"].tolist() == [1.0, 2.0, 1.0]
    assert out["predicted"].tolist() == [2, 4, 3]  # the last appearance
    assert out["loss"].dtype == np.float32
    unique = {"index": np.array([3, 1]), "loss": np.array([0.5, 0.25])}
    assert merge_repeats(unique) is unique
