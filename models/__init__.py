"""``dkt models``: the versioned model store (list, push, pull, promote, rollback) and the retrain steps
(models/cli.py).

This folder also holds the local model bundles those commands move (``models/local/...``); they are
git-ignored, only the code is tracked.
"""
