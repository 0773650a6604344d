"""Model kinds, one file each (``dkt/models/<kind>.py``), found by name through the registry.

The interface every kind implements, and the registry, are documented in ``dkt.models.interface``.
"""

from dkt.models.interface import ModelKind, Predictor, kind_class, model_names, register

__all__ = ["ModelKind", "Predictor", "kind_class", "model_names", "register"]
