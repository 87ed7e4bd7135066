"""Training: `session` (set up or restore everything a run needs, write each epoch's records),
`loop` (the one training loop: fit, train_one_epoch, evaluate) and `evaluate` (re-evaluate a run
from its checkpoint: `dermlow evaluate`)."""
