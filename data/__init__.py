"""``python -m data``: the versioned data sets (list, push, pull) and the data update steps."""
