"""The method: losses, LOW's solver, sample weightings and their guard rails.

Importing the package registers every weighting: the built-ins of `weightings` and the
baselines that live in their own modules, `mentornet` (MentorNet-PD) and `mwnet`
(Meta-Weight-Net), so every list of weightings (CLI, config, bench, app) has them.
"""

from dermlow.method import mentornet, mwnet  # noqa: F401  (registers the weightings they define)
