"""Train a DKT model and write a model bundle: ``python train.py ...`` is ``dkt train ...``.

The name the project is known by, kept as a thin entry point; the command lives in dkt/commands/train.py.
"""

import sys

from dkt.commands.train import main

if __name__ == "__main__":
    sys.exit(main())
