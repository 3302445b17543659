"""Shared machinery used by every medloop plugin: I/O, engine, review, GUI, CLI."""
