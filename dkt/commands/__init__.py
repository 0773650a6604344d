"""The ``dkt`` commands that have no other home: train, infer, serve (``dkt.cli`` lists every command)."""
