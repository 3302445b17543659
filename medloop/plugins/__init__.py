"""One sub-package per published method; each is a Qt-free method plus a thin ``widget.py``."""
