"""Anatomy shown right: radiological orientation, R/L/A/P/S/I markers and physical units.

medloop places a volume in napari's world at its physical LPS position (``MedImage.layer_kwargs``):
world axis 0 is z (+ = superior), 1 is y (+ = posterior), 2 is x (+ = patient left). napari draws
the first displayed axis downwards, so an axial slice (y down, x right) already shows anterior up
and patient right on screen left, but coronal and sagittal slices (z down) show the head upside
down. The flip is made by the camera (``camera.orientation2d``), not by the layers' affine: the
data, the layers' transforms and the physical coordinates in the status bar stay as they are.

Markers are four canvas text overlays (top, bottom, left, right) naming the patient direction at
each edge of the view; the status bar adds the layer's unit and, for slides, the magnification.
"""

from __future__ import annotations

from typing import Any

import weakref

import numpy as np

from medloop.app.io.image import MedImage

#: Patient direction at the (negative, positive) end of each LPS world axis (z, y, x).
AXIS_ENDS = {0: ("I", "S"), 1: ("A", "P"), 2: ("R", "L")}
VIEW_NAMES = {(1, 2): "axial", (0, 2): "coronal", (0, 1): "sagittal"}
MARKERS = {"top": "top_center", "bottom": "bottom_center", "left": "middle_left", "right": "middle_right"}
MARKER_KEY = "medloop_marker_"
#: Objective magnification of a slide scanned at a given µm per pixel (40x ~ 0.25 µm/px).
MAGNIFICATIONS = ((0.25, 40), (0.5, 20), (1.0, 10), (2.0, 5), (4.0, 2.5))


def radiological_orientation(displayed: tuple[int, int]) -> tuple[str, str]:
    """``camera.orientation2d`` (vertical, horizontal) of a 2-D view of LPS world axes
    ``displayed`` (rows, columns): superior up, anterior up, patient right on screen left,
    anterior on screen left in sagittal views."""
    vertical, _ = displayed
    return ("up" if vertical == 0 else "down"), "right"


def edge_letters(displayed: tuple[int, int], orientation2d: tuple[str, str]) -> dict[str, str]:
    """The patient direction at each screen edge (top, bottom, left, right) of the view."""
    (rows, cols), (vertical, horizontal) = displayed, orientation2d
    lo, hi = AXIS_ENDS[rows]
    top, bottom = (hi, lo) if str(vertical) == "up" else (lo, hi)
    lo, hi = AXIS_ENDS[cols]
    left, right = (hi, lo) if str(horizontal) == "left" else (lo, hi)
    return {"top": top, "bottom": bottom, "left": left, "right": right}


def magnification(um_per_pixel: float) -> float | None:
    """The nearest objective magnification (40x, 20x, 10x, ...) of a scan resolution, or None
    when it is far from all of them (not a slide)."""
    if not um_per_pixel or um_per_pixel <= 0:
        return None
    mpp, mag = min(MAGNIFICATIONS, key=lambda m: abs(np.log2(m[0] / um_per_pixel)))
    return float(mag) if abs(np.log2(mpp / um_per_pixel)) <= 0.5 else None


def _patient_volume(viewer) -> MedImage | None:
    """The first 3-D volume medloop placed in physical (mm, LPS) space, if any."""
    for layer in viewer.layers:
        image = layer.metadata.get("medloop_image")
        if isinstance(image, MedImage) and image.ndim == 3 and image.unit == "mm":
            return image
    return None


_GUIDES: "weakref.WeakValueDictionary[int, OrientationGuide]" = weakref.WeakValueDictionary()


class OrientationGuide:
    """Keeps one viewer in radiological orientation with edge markers while it shows patient
    volumes, and adds units (and slide magnification) to its status bar. ``install`` it once."""

    def __init__(self, viewer) -> None:
        from napari.components.overlays import TextOverlay

        self.viewer = viewer
        self.view = ""
        for edge, position in MARKERS.items():
            viewer.canvas.overlays[MARKER_KEY + edge] = TextOverlay(
                text="", position=position, font_size=14, color="#ffd54f", visible=False,
            )
        viewer.canvas.overlays[MARKER_KEY + "info"] = TextOverlay(
            text="", position="top_left", font_size=11, color="#ffd54f", visible=False,
        )
        # Closures, not bound methods: napari holds bound methods weakly, so the viewer's events
        # keep the guide alive exactly as long as the viewer (no global strong reference).
        update = lambda *_: self.update()  # noqa: E731
        for event in (viewer.dims.events.order, viewer.dims.events.ndisplay, viewer.layers.events.inserted,
                      viewer.layers.events.removed):
            event.connect(update)
        viewer.events.status.connect(lambda *_: self._add_units())
        self.update()

    @classmethod
    def install(cls, viewer) -> "OrientationGuide":
        """The viewer's guide, made on first use."""
        guide = _GUIDES.get(id(viewer))
        if guide is None or guide.viewer is not viewer:
            guide = _GUIDES[id(viewer)] = cls(viewer)
            viewer.canvas.overlays.scale_bar.visible = True  # reads the layers' units (mm, µm)
        return guide

    def overlay(self, edge: str):
        return self.viewer.canvas.overlays[MARKER_KEY + edge]

    def update(self, *_: Any) -> None:
        """Orient the camera for the displayed axes and write the markers (hidden in 3-D views
        and when no patient volume is open)."""
        dims = self.viewer.dims
        displayed = tuple(dims.displayed)
        active = _patient_volume(self.viewer) is not None and dims.ndisplay == 2 and dims.ndim == 3
        if active and len(displayed) == 2:
            orientation = radiological_orientation(displayed)
            if tuple(str(o) for o in self.viewer.camera.orientation2d) != orientation:
                self.viewer.camera.orientation2d = orientation
            letters = edge_letters(displayed, orientation)
            self.view = VIEW_NAMES.get(tuple(sorted(displayed)), "")
        else:
            letters, self.view = {}, ""
        for edge in MARKERS:
            overlay = self.overlay(edge)
            overlay.text = letters.get(edge, "")
            overlay.visible = bool(letters)
        info = self.overlay("info")
        info.text = self.view.capitalize() if self.view else _slide_info(self.viewer)
        info.visible = bool(info.text)

    def _add_units(self, event=None) -> None:
        """Append the active layer's unit (and a slide's magnification) to the status coordinates."""
        status = self.viewer.status
        layer = self.viewer.layers.selection.active
        if not isinstance(status, dict) or layer is None or "coordinates" not in status:
            return
        prefix = status_prefix(layer)
        if not prefix or status["coordinates"].startswith(prefix):
            return
        self.viewer.status = {**status, "coordinates": prefix + status["coordinates"]}


def _slide_info(viewer) -> str:
    """``"20× · 0.50 µm/px"`` for the first slide-like (2-D, µm) image, else ``""``."""
    for layer in viewer.layers:
        image = layer.metadata.get("medloop_image")
        if isinstance(image, MedImage) and image.ndim == 2 and image.unit in ("um", "µm"):
            mpp = float(min(image.spacing))
            mag = magnification(mpp)
            return (f"{mag:g}× · " if mag else "") + f"{mpp:.2f} µm/px"
    return ""


def status_prefix(layer) -> str:
    """``"mm "`` for a volume, ``"µm, 20x "`` for a slide: what the status bar coordinates are in."""
    units = getattr(layer, "units", None)
    if not units:
        return ""
    unit = f"{units[-1]:~}" if hasattr(units[-1], "dimensionality") else str(units[-1])
    unit = unit.replace("um", "µm")
    if unit in ("", "pixel", "px"):
        return ""
    text = unit
    image = layer.metadata.get("medloop_image")
    if unit == "µm" and isinstance(image, MedImage):
        mag = magnification(float(min(image.spacing)))
        if mag:
            text += f", {mag:g}×"
    return f"({text}) "
