"""``python -m engine.experiments``: see :mod:`engine.experiments.cli`."""

import sys

from engine.experiments.cli import main

if __name__ == "__main__":
    sys.exit(main())
