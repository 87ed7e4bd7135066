"""The method: per-sample losses, LOW's solver and the sample weightings, as pure tensor code.

`losses` (registry `LOSSES`: ce, balanced_ce, focal), `low` (the QP solver and the logit-gradient
norms g), `weightings` (registry `WEIGHTINGS`: none, low, spl, is; the `training_step` hook the loop
calls) and `guards` (weight statistics and the warnings that say which knob to turn). Knows nothing
of files, configs or run folders.
"""
