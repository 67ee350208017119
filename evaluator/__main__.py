"""`python -m evaluator`: the command line lives in evaluator.cli."""

import sys

from evaluator.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
