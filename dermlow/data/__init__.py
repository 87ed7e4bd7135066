"""Data: everything between the files on disk and the tensors a step sees.

Owns the data set registry (`sources.DATASETS`, the `data:` config section, `RunData`), the
readers of ISIC-style label files (`isic`, `label_files`, `image_sets`) and of the paper's benchmark
arrays (`arrays`, `array_manifest`), lesion-grouped splits (`splits`), colour constancy and
augmentation (`color`, `transforms`), the image cache, datasets and seeded loaders (`loading`),
the official download (`fetch`) and the synthetic demo set (`demo`). `prepare` is the entry point
that training uses. Imports only the bottom layer (errors, registry, settings).
"""
