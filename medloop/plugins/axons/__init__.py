"""Axon tracking: the deep-RL subpixel tracer of Dai et al. (MIDL 2019) — click a seed, get a
centreline with an uncertainty per step, correct it, fine-tune the tracker on the corrections.

Qt-free method: ``synth`` (generator), ``views``/``env`` (batched environment), ``nets`` (actor,
critic), ``ppo`` (training on the shared loop), ``trace`` (inference), ``metrics``, ``swc``
(SWC files); the shell reaches them through this declaration."""

from medloop.app.plugin import Plugin, Sample, Widget

PLUGIN = Plugin(
    name="axons",
    title="Trace axons with a deep-RL tracker (Dai et al.)",
    cli="medloop.plugins.axons.cli:add_verbs",
    widgets=(Widget("Axon tracking", "medloop.plugins.axons.widget:AxonPanel", "Click a seed, get a traced axon; correct it and fine-tune"),),
    samples=(Sample("axons-si", "Synthetic two-photon-like axons (SI preset) with true centrelines", "medloop.plugins.axons.sample:axon_sample_layers"),),
    services={"trace-axons": "medloop.plugins.axons.trace:trace"},
)
