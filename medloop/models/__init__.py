"""Torch networks, the model registry, model cards and weight loading."""
