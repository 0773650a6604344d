"""``dkt data``: the versioned data sets (list, push, pull) and the data update steps (data/cli.py).

This folder also holds the local data files those commands move (``data/sim`` from ``dkt simulate``, ...);
they are git-ignored, only the code is tracked.
"""
