"""Cases, review states, audit log and annotation autosave (Qt-free)."""

from medloop.app.review.autosave import AnnotationStore, Autosaver, is_annotation_path

__all__ = ["AnnotationStore", "Autosaver", "is_annotation_path"]
