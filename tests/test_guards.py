import numpy as np

from dermlow.method.guards import collapse_warnings, weight_stats


def test_weight_stats_values():
    stats = weight_stats(np.array([0.0, 0.0, 1.0, 3.0]))
    assert stats["weight_zero_frac"] == 0.5 and stats["weight_max"] == 3.0
    assert np.isclose(stats["weight_std"], np.std([0, 0, 1, 3]))


def test_warns_when_most_batches_put_weight_on_few_samples():
    records = {"step_zero_frac": np.array([0.6, 0.7, 0.1, 0.8])}
    row = {"weight_max": 17.0, "pred_majority_frac": 0.5}
    (message,) = collapse_warnings(row, records, np.array([0, 1, 2]), epoch=4)
    assert "Raise --lam" in message and "epoch 4" in message and "75%" in message
    assert collapse_warnings(row, records, np.array([0, 1, 2]), epoch=4, low=False) == []  # spl / is zero by design


def test_warns_when_predictions_collapse_but_not_for_a_truly_dominant_class():
    records = {"step_zero_frac": np.zeros(4)}
    balanced = np.repeat([0, 1, 2], 10)
    row = {"weight_max": 1.0, "pred_majority_frac": 0.97}
    (message,) = collapse_warnings(row, records, balanced, epoch=3, previous_share=1.0)
    assert "collapsed" in message and "Lower --lr" in message
    assert collapse_warnings(row, records, balanced, epoch=2, previous_share=1.0) == []  # early epochs may
    assert collapse_warnings(row, records, balanced, epoch=3, previous_share=0.6) == []  # not two in a row
    dominant = np.array([0] * 97 + [1] * 3)
    assert collapse_warnings(row, records, dominant, epoch=3, previous_share=1.0) == []


def test_quiet_on_healthy_epoch():
    records = {"step_zero_frac": np.array([0.0, 0.1])}
    assert collapse_warnings({"weight_max": 2.0, "pred_majority_frac": 0.4}, records, np.arange(10) % 3, epoch=1) == []
