"""An epoch's per-sample records as one row per training image.

Importance sampling scores every image several times per epoch (its candidate batches come from
several passes over the data, so that it takes as many optimizer steps as every other method);
the weight log still holds one row per (epoch, image).
"""

from __future__ import annotations

import numpy as np

MEAN_KEYS = ("loss", "g", "weight", "p_true", "p_other")  # averaged over an image's appearances


def merge_repeats(records: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One record per `index`, in order of first appearance.

    An image seen k times gets the mean of its loss, g, weight, p_true and p_other over the k
    appearances (for importance sampling the mean weight keeps E[w] = 1) and the predicted /
    other class of its last appearance. Records without repeats come back unchanged.
    """
    index = np.asarray(records["index"])
    uniq, first, inverse, counts = np.unique(index, return_index=True, return_inverse=True, return_counts=True)
    if len(uniq) == len(index):
        return records
    order = np.argsort(first, kind="stable")  # unique ids in order of first appearance
    last = np.zeros(len(uniq), dtype=np.int64)
    np.maximum.at(last, inverse, np.arange(len(index)))
    out: dict[str, np.ndarray] = {}
    for key, values in records.items():
        values = np.asarray(values)
        if key in MEAN_KEYS:
            sums = np.bincount(inverse, weights=values.astype(np.float64), minlength=len(uniq))
            merged = (sums / counts).astype(values.dtype)
        else:
            merged = values[last]
        out[key] = merged[order]
    return out
