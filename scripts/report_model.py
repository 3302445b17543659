"""Measure a packaged model on its held-out variants, store the numbers in its card and print
the README table row.

    .venv/bin/python scripts/report_model.py brain-tissue-t1
    .venv/bin/python scripts/report_model.py brain-tissue
"""

from __future__ import annotations

import json
import sys

from medloop.app.samples import load_brain_sample
from medloop.models.card import write_card
from medloop.models.registry import get_model
from medloop.plugins.segmentation.evaluation import evaluate_on_variants


def main(name: str = "brain-tissue-t1") -> None:
    entry = get_model(name)
    t1, tissue = load_brain_sample()
    # The robust model (v2) is also reported on what real MR looks like (noise everywhere, T2-like, ...).
    table = evaluate_on_variants(name, t1, tissue, robustness=name == "brain-tissue")
    card = dict(entry.card.raw)
    card["metrics"] = {"dice_on_held_out_variants": table, "how": "medloop.plugins.segmentation.evaluation.evaluate_on_variants"}
    write_card(card, entry.folder / "card.json")
    print(json.dumps(table, indent=2))
    for variant, dice in table.items():
        print(f"| {variant} | " + " | ".join(f"{v:.3f}" for v in dice.values()) + " |")


if __name__ == "__main__":
    main(*sys.argv[1:])
