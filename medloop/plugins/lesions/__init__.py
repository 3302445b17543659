"""Lesion synthesis: draw a box, get a lesion (Gupta et al., MIDL 2019); autoencoder anomaly maps
as pseudo-labels (Baur et al., MIDL 2019); spec: ``shared/specs/lesion-synthesis.md``.

Qt-free method modules (the panels and CLI verbs build on these; nothing here imports Qt):

* ``checks``: :class:`LesionInputError` and the input checks shared by every entry point.
* ``phantoms``: seeded brain, long-bone and chest phantoms with exact lesions and healthy twins.
* ``metrics``: ROC AUC, paired-bootstrap ΔAUC, AUPRC, Dice, the (1 − TPR)² + FPR² operating point.
* ``anomaly``: Baur et al.'s spatial autoencoder, its l1 + l2 + GDL step and ``train_autoencoder``.
* ``residual``: residual anomaly maps, thresholds, t calibration and the UAD scores.
* ``pseudolabels``: pseudo-label folders through the engine's cohort runner.
* ``anomaly_training``: the CPU-scale experiment, the anomaly recipe trainer, the student and
  domain-shift benchmarks.
"""
