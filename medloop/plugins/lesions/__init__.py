"""Lesion synthesis: draw a box, get a lesion (Gupta et al., MIDL 2019); autoencoder anomaly maps
as pseudo-labels (Baur et al., MIDL 2019); spec: ``shared/specs/lesion-synthesis.md``.

Qt-free method modules (the panels and CLI verbs build on these; nothing here imports Qt):

* ``checks``: :class:`LesionInputError` and the input checks shared by every entry point.
* ``phantoms``: seeded brain, long-bone and chest phantoms with exact lesions and healthy twins.
* ``patches``: Gupta et al.'s translator training patches (crop rule, healthy partners, 0.15 filter).
* ``unit``: the UNIT healthy -> lesion patch translator (torch) and its :class:`UnitTranslator`.
* ``unit_training``: the "translator" recipe trainer and its held-out metrics.
* ``metrics``: ROC AUC, paired-bootstrap ΔAUC, AUPRC, Dice, the (1 − TPR)² + FPR² operating point.
* ``translators``: the :class:`Translator` interface and the identity control; ``blend``: the crop
  rule, the cosine blend map and the bit-exact paste; ``synthesize``: box → lesion with the score
  filter and the derived pseudo-mask.
* ``zoo`` / ``recipes`` / ``cards``: the packaged models (``resources/lesion_models``) and their
  recipes (``resources/lesion_recipes``); ``apply``: file in, file out; ``handoff``: anomaly
  pseudo-labels as the Correction panel's starting annotation.
* ``anomaly``: Baur et al.'s spatial autoencoder, its l1 + l2 + GDL step and ``train_autoencoder``.
* ``residual``: residual anomaly maps, thresholds, t calibration and the UAD scores.
* ``pseudolabels``: pseudo-label folders through the engine's cohort runner.
* ``anomaly_training``: the CPU-scale experiment, the anomaly recipe trainer, the student and
  domain-shift benchmarks.
* ``classifier``: the filter classifier and its scorer; ``augment``: the batch augmenter and
  ``LesionAugmenter`` for training; ``gupta_experiment``: the CPU-scale augmentation experiment
  with the identity-paste control.

Shell: ``cli`` (``medloop lesions synthesize | augment | anomaly | phantom | train``, and
``medloop train --augment-lesions``) and ``widget`` (*Synthesize lesion*, *Anomaly map*).
"""

from medloop.app.plugin import Plugin, Sample, Widget

PLUGIN = Plugin(
    name="lesions",
    title="Lesion synthesis (box → lesion) and autoencoder anomaly maps as pseudo-labels",
    cli="medloop.plugins.lesions.cli:add_verbs",
    train="medloop.plugins.lesions.cli:TRAINING",
    widgets=(
        Widget("Synthesize lesion", "medloop.plugins.lesions.widget:SynthesizeLesionPanel",
               "Draw a box on a healthy image, get a lesion (Gupta et al.)"),
        Widget("Anomaly map", "medloop.plugins.lesions.widget:AnomalyMapPanel",
               "Autoencoder residuals as an overlay and pseudo-labels (Baur et al.)"),
    ),
    samples=(
        Sample("lesions-bone", "Healthy long-bone radiograph (phantom) for lesion synthesis",
               "medloop.plugins.lesions.sample:bone_sample_layers"),
        Sample("lesions-brain", "FLAIR-like brain slices with lesions (phantom) for anomaly maps",
               "medloop.plugins.lesions.sample:brain_sample_layers"),
    ),
)
