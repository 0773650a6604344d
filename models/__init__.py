"""``python -m models``: the versioned model store (list, push, pull, promote, rollback) and the retrain steps."""
