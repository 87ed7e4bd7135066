"""The `dermlow` command line: `main` (argparse subcommands, help and choices from the registries),
`bench` (the `bench` subcommand) and `serve` (starts the Streamlit review app)."""

from dermlow.cli.main import main

__all__ = ["main"]
