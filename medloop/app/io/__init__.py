"""Readers, writers and the geometry-carrying image type."""
