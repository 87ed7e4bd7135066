"""The `dermlow` command line: one module per command group."""

from dermlow.cli.main import main

__all__ = ["main"]
