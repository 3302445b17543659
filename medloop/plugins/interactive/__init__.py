"""Click -> object: promptable segmentation in 2-D and 3-D with no downloaded weights.

A positive click, a box or a scribble gives the mask of one object; more positive/negative
clicks refine it; the result is an editable label with multi-level undo, other classes locked,
and the prompt log autosaved. Qt-free method: ``prompts`` (prompts in mm), ``session``
(:class:`PromptSession`: ROI policy, undo, guard, log), ``classical`` (local threshold, range
edits, marker watershed, graph cuts: no weights), ``clicknet`` (the learned click U-Net, shipped
disabled until it beats the classical engine), ``evaluation`` (the standard click simulator and
metrics); ``cli`` and ``widget`` are thin."""

from medloop.app.plugin import Plugin, Widget

PLUGIN = Plugin(
    name="interactive",
    title="Click -> object: promptable segmentation (points, boxes, scribbles)",
    cli="medloop.plugins.interactive.cli:add_verbs",
    train="medloop.plugins.interactive.training:TRAINING",
    widgets=(Widget("Click to segment", "medloop.plugins.interactive.widget:InteractivePanel", "Click an object to segment it; refine with more clicks"),),
)
