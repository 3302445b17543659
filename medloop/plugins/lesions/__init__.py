"""Lesion synthesis: draw a box, get a lesion (Gupta et al., MIDL 2019); autoencoder anomaly maps
as pseudo-labels (Baur et al., MIDL 2019); spec: ``shared/specs/lesion-synthesis.md``.

Qt-free method modules (the panels and CLI verbs build on these; nothing here imports Qt):

* ``checks``: :class:`LesionInputError` and the input checks shared by every entry point.
* ``phantoms``: seeded brain, long-bone and chest phantoms with exact lesions and healthy twins.
* ``patches``: Gupta et al.'s translator training patches (crop rule, healthy partners, 0.15 filter).
* ``unit``: the UNIT healthy -> lesion patch translator (torch) and its :class:`UnitTranslator`.
* ``unit_training``: the "translator" recipe trainer and its held-out metrics.
* ``metrics``: ROC AUC, paired-bootstrap ΔAUC, AUPRC, Dice, the (1 − TPR)² + FPR² operating point.
"""
