"""What ``medloop demo`` shows: the brain sample segmented by the bundled model (needs Qt)."""

from __future__ import annotations

DEMO_MODEL = "brain-tissue-t1"


def build_demo(viewer, panel) -> None:
    """Add the T1 sample and the bundled model's tissue map over it; ``panel`` is this plugin's
    first panel, docked by the launcher (its status line says what ran).

    The reference labels are added hidden, for comparison.
    """
    from medloop.app.gui.layers import add_layer_data, class_layer_kwargs
    from medloop.app.samples import brain_sample_layers, load_brain_sample
    from medloop.plugins.segmentation.method import SegmentParams, segment

    image_layer, reference = add_layer_data(viewer, brain_sample_layers())
    reference.visible = False
    t1, _ = load_brain_sample()
    result = segment(t1, SegmentParams(DEMO_MODEL, device="cpu"))
    prov = result.provenance
    style = class_layer_kwargs(prov["classes"])
    style["metadata"].update({"medloop_image": result.labels, "provenance": prov})
    viewer.add_labels(result.labels.array, name=f"{image_layer.name} {DEMO_MODEL}", opacity=0.5, **style,
                      **result.labels.layer_kwargs())
    if panel is not None:
        panel.status.setText(f"{DEMO_MODEL}: done in {prov['seconds']} s on {prov['device']}.")
