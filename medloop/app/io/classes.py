"""The one class table (Qt-free): how every label map shows a model's classes.

A model card numbers its classes (``{0: "background", 1: "grey matter", ...}``); that table
decides the colour and the hover name of every value in every label layer made from it:
predictions, annotations, references, review masks and ``--labels`` files alike.

Annotation layers keep the training code's *paint convention*: 0 = not annotated (drawn
transparent) and class ``k`` is stored as ``k + 1`` (:data:`ANNOTATION_OFFSET`), so autosaved
files stay as they were. The offset is a storage detail only: the layer's colour and hover name
for value ``k + 1`` are class ``k``'s, and painted background (class 0) is drawn in
:data:`BACKGROUND_COLOR` so that it is visible, unlike the background of a prediction.
"""

from __future__ import annotations

from typing import Any

#: Stored value of class ``k`` in an annotation (paint) layer is ``k + ANNOTATION_OFFSET``.
ANNOTATION_OFFSET = 1
#: Colour of class 0 where it is painted (annotations); predictions leave it transparent.
BACKGROUND_COLOR = "#8c8c8c"
#: Class ``k >= 1`` is ``PALETTE[(k - 1) % len(PALETTE)]`` (colour-blind-safe, Okabe-Ito).
PALETTE = ["#e69f00", "#56b4e9", "#009e73", "#f0e442", "#0072b2", "#d55e00", "#cc79a7", "#999999"]


def class_color(k: int) -> str:
    """The colour of class ``k`` of a model, whatever layer shows it."""
    k = int(k)
    return BACKGROUND_COLOR if k == 0 else PALETTE[(k - 1) % len(PALETTE)]


def default_classes(values: Any) -> dict[int, str]:
    """A class table for a label map without one (``--labels`` files): value ``k`` is
    ``"class k"`` and 0 is background, so its colours follow the same numbering as a model's."""
    table = {0: "background"}
    table.update({int(v): f"class {int(v)}" for v in values if int(v) != 0})
    return table


def label_style(classes: dict[int, str], offset: int = 0, show_background: bool | None = None,
                hidden: set[int] | frozenset[int] = frozenset()) -> dict[str, Any]:
    """napari Labels keyword arguments (``colormap`` and ``features``) for ``classes``.

    ``offset`` is 0 for class maps (predictions, references) and :data:`ANNOTATION_OFFSET` for
    paint layers. Background (class 0) is drawn only where it means something painted: by default
    when ``offset`` is non-zero. Classes in ``hidden`` are drawn transparent (the class list's
    visibility toggles). The features table gives the hover text ``class: <name>``.
    """
    if show_background is None:
        show_background = offset != 0
    colormap: dict[Any, str] = {None: "transparent", 0: "transparent"}
    index, names = [], []
    if offset:
        index.append(0)
        names.append("not annotated")
    for k, name in sorted((int(k), str(v)) for k, v in classes.items()):
        value = k + offset
        visible = (k != 0 or show_background) and k not in hidden
        colormap[value] = class_color(k) if visible else "transparent"
        index.append(value)
        names.append(name)
    return {"colormap": colormap, "features": {"index": index, "class": names}}


def stored_classes(classes: dict[int, str], offset: int = 0) -> dict[int, str]:
    """``{stored value: class name}`` of a layer that stores class ``k`` as ``k + offset``."""
    return {int(k) + offset: str(v) for k, v in classes.items()}


#: Layer metadata key: ``{stored label value: class name}`` (the class list, mask tools and
#: Copy from layer read it).
CLASSES_KEY = "medloop_classes"
#: Layer metadata key: outline width a reference labels layer is drawn with (napari's ``contour``,
#: which layer data tuples cannot pass; medloop's ``add_layer_data`` applies it).
CONTOUR_KEY = "medloop_contour"
