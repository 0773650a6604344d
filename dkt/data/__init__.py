"""Interaction data: schema validation, importers, features and sequences."""
