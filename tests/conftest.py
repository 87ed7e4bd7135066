"""Shared test set-up: offline, quiet, and small on 2 CPU cores."""

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download weights

import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))
