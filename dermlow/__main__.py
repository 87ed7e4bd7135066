"""`python -m dermlow` (and `torchrun -m dermlow`) runs the command-line interface."""

import sys

from dermlow.cli.main import main

sys.exit(main())
