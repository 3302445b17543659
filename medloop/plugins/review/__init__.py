"""Review: cases, decisions, audit log, uncertainty, reports and exports of model predictions."""

from medloop.app.plugin import Plugin, Widget

PLUGIN = Plugin(
    name="review",
    title="Review model predictions case by case, with an audit log",
    cli="medloop.plugins.review.review_cli:add_verbs",
    widgets=(Widget("Review", "medloop.plugins.review.widget:ReviewPanel", "Review model predictions case by case"),),
)
