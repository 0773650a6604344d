"""``python -m dkt``: the ``dkt`` command, for a Python whose environment has no ``dkt`` script on PATH."""

import sys

from dkt.cli import main

sys.exit(main())
