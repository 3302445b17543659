"""Segmentation: a zoo model over an image on its exact grid; seed 000 upscaling, seed 002 cascades."""

from medloop.app.plugin import Plugin, Sample, Widget

PLUGIN = Plugin(
    name="segmentation",
    title="Segment images with a model (tiled, upscaled, cascaded)",
    cli="medloop.plugins.segmentation.cli:add_verbs",
    train="medloop.plugins.segmentation.cli:TRAINING",
    widgets=(Widget("Segmentation", "medloop.plugins.segmentation.widget:SegmentationPanel", "Segment an image with a model"),),
    samples=(Sample("brain-t1", "MNI152 T1 brain, 2 mm, with tissue labels", "medloop.app.samples:brain_sample_layers"),),
    services={"segment-image": "medloop.plugins.segmentation.method:segment_with_model"},
    demo="medloop.plugins.segmentation.demo:build_demo",
)
