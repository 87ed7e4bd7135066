"""dermlow: dermoscopy classifiers trained with LOW (Learning Optimal sample Weights).

Santiago, Barata, Sasdelli, Carneiro, Nascimento. "LOW: Training deep neural networks by
learning optimal sample weights." Pattern Recognition 110 (2021).
"""

import os

# albumentations checks PyPI for a newer version on import unless this is set; dermlow
# must work offline, so set it before anything can import albumentations.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from dermlow.weighting import low_weights  # noqa: E402

__version__ = "0.1.0"
__all__ = ["low_weights", "__version__"]
