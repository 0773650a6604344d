"""Deep Knowledge Tracing core: data, features, models, training, bundles."""

__version__ = "0.1.0"
