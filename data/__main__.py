"""``python -m data`` is an alias of ``dkt data`` (data/cli.py)."""

import sys

from data.cli import main

if __name__ == "__main__":
    sys.exit(main())
