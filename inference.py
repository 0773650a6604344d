"""Batch inference over a file: ``python inference.py ...`` is ``dkt infer ...``.

The name the project is known by, kept as a thin entry point; the command lives in dkt/commands/infer.py.
"""

import sys

from dkt.commands.infer import main

if __name__ == "__main__":
    sys.exit(main())
