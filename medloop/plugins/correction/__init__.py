"""Correction: strokes, boxes and points over a prediction; live refits and fine-tuning from them."""

from medloop.app.plugin import Plugin, Widget

PLUGIN = Plugin(
    name="correction",
    title="Correct annotations and retrain from strokes, boxes or points",
    train="medloop.plugins.correction.cli:TRAINING",
    widgets=(Widget("Correction", "medloop.plugins.correction.widget:CorrectionPanel", "Correct annotations and retrain"),),
)
