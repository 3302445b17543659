"""Digital staining (placeholder docstring)."""
