"""The method: per-sample losses, LOW's solver and the sample weightings, as pure tensor code.

`losses` (registry `LOSSES`: ce, balanced_ce, focal), `low` (the QP solver and the logit-gradient
norms g), `weightings` (registry `WEIGHTINGS`: none, low, spl, is; the `training_step` hook the loop
calls), the baselines in their own modules, `mentornet` (MentorNet-PD's curriculum) and `mwnet`
(Meta-Weight-Net's look-ahead), and `guards` (weight statistics and the warnings that say which
knob to turn). Knows nothing of files, configs or run folders.

Importing the package registers every weighting (the two modules below add theirs to
`WEIGHTINGS`), so every list of weightings (CLI, config, bench, app) has them.
"""

from dermlow.method import mentornet, mwnet  # noqa: F401  (registers the weightings they define)
