"""Retraining from weak and corrected labels: strokes, boxes, points (Qt-free cores + widgets)."""
