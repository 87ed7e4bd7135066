"""dermlow: dermoscopy classifiers trained with LOW (Learning Optimal sample Weights).

Santiago, Barata, Sasdelli, Carneiro, Nascimento. "LOW: Training deep neural networks by
learning optimal sample weights." Pattern Recognition 110 (2021).
"""

import os

# albumentations checks PyPI for a newer version on import unless this is set; dermlow
# must work offline, so set it before anything can import albumentations.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
__all__ = ["low_weights", "__version__"]


def __getattr__(name: str):
    # `dermlow.low_weights` imports torch on first use only, so that light modules (the review
    # app's readers, the CLI's --help) start fast.
    if name == "low_weights":
        from dermlow.method.low import low_weights

        return low_weights
    raise AttributeError(f"module 'dermlow' has no attribute {name!r}")
