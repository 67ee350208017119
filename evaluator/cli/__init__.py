"""The command line: the parser (parser), one module per command (cmd_*), the entry (main)."""

from evaluator.cli.main import main

__all__ = ["main"]
