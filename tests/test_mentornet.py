"""MentorNet-PD's predefined curriculum, checked by hand on small batches."""

import pytest
import torch

from dermlow.method.mentornet import LossThreshold, curriculum_weights, example_dropout, progress_percent


def test_threshold_is_a_moving_average_of_the_nearest_rank_percentile():
    lam = LossThreshold(percentile=0.75, decay=0.9)
    # sorted [0.2, 0.5, 1.0, 3.0]: rank round(0.75 * 3) = 2 -> 1.0; lambda = 0.9 * 0 + 0.1 * 1.0
    assert lam.update(torch.tensor([0.2, 1.0, 3.0, 0.5])).item() == pytest.approx(0.1)
    # sorted [0.1, 0.3, 0.4, 2.0] -> 0.4; lambda = 0.9 * 0.1 + 0.1 * 0.4 = 0.13
    assert lam.update(torch.tensor([0.3, 0.4, 2.0, 0.1])).item() == pytest.approx(0.13)


def test_curriculum_by_training_progress():
    loss = torch.tensor([0.3, 0.4, 2.0, 0.1])
    assert curriculum_weights(loss, 0.13, percent=18).tolist() == [1, 1, 1, 1]  # burn-in: everything
    assert curriculum_weights(loss, 0.13, percent=19).tolist() == [0, 0, 0, 1]  # self-paced: l <= lambda
    assert curriculum_weights(loss, 0.13, percent=89).tolist() == [0, 0, 0, 1]
    # from 90 %: clip(1 - (l - lambda) / gamma, 0, 1)
    torch.testing.assert_close(curriculum_weights(loss, 0.13, percent=95), torch.tensor([0.83, 0.73, 0.0, 1.0]))
    torch.testing.assert_close(curriculum_weights(loss, 0.13, percent=95, gamma=2.0),
                               torch.tensor([0.915, 0.865, 0.065, 1.0]))
    with pytest.raises(ValueError, match="gamma"):
        curriculum_weights(loss, 0.1, percent=95, gamma=0)


def test_progress_percent_matches_the_authors_integer_epoch_feature():
    assert [progress_percent(e, 80) for e in (1, 16, 17, 73, 80)] == [0, 18, 20, 90, 98]
    assert progress_percent(100, 100) == 99
    with pytest.raises(ValueError):
        progress_percent(0, 10)


def test_example_dropout_keeps_a_seeded_subset():
    v = torch.linspace(0.1, 1.0, 10)
    out = example_dropout(v, 0.5, torch.Generator().manual_seed(0))
    kept = out != 0
    assert int(kept.sum()) == 5 and torch.equal(out[kept], v[kept])
    again = example_dropout(v, 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    assert torch.equal(example_dropout(v, 0.0, torch.Generator()), v)
    assert int((example_dropout(v, 0.05, torch.Generator()) != 0).sum()) == 9  # floor(10 * 0.95)
