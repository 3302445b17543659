"""Functions stay under 80 lines; more than 8 parameters means a typed parameters object
(DESIGN.md, "Rules that keep it easy to see and to change").

The only exceptions are keyword forms kept for existing callers, each a thin wrapper that builds
the parameters object and calls the real function; they are listed here with their reason.
"""

from __future__ import annotations

import ast
from pathlib import Path

import medloop

PACKAGE = Path(medloop.__file__).parent
MAX_LINES = 80
MAX_PARAMS = 8
KEYWORD_FORMS = {
    # keyword form of one audit record's fields: what a reviewer did on a case (a test pins them)
    "plugins/review/project.py:decide": 80,
    # MONAI-compatible keyword signature (benchmarks compare it with MONAI's) -> tiled_inference
    "app/engine/tiling.py:sliding_window_inference": 30,
    # keyword form of segment_level(level, predictor, out, spacing, SlideParams) for scripts
    "app/engine/tiling.py:segment_slide": 30,
    # single-image adapter of train_boxes (BoxData, BoxRunParams) with headless's keywords
    "plugins/correction/box_training.py:run_boxes": 35,
    # keyword form of train_boxes used by the tests and bench_weak
    "plugins/correction/box_training.py:run_boxes_many": 25,
    # the point trainer's documented keyword set (a test pins its signature)
    "plugins/correction/point_training.py:run_points": 55,
    # keyword form of crf_point_loss(logits, voronoi, cluster, image, CrfParams)
    "plugins/correction/points.py:crf_loss": 15,
    # keyword form of segment_cascade(image, coarse, fine, CascadeParams)
    "plugins/segmentation/cascade.py:cascade_predict": 25,
    # keyword form of fine_crop_pairs(images, masks, FineCropParams)
    "plugins/segmentation/cascade.py:fine_training_pairs": 20,
}


def parameters(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    a = node.args
    count = len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs)
    return count - (1 if a.args and a.args[0].arg in ("self", "cls") else 0)


def oversized() -> dict[str, tuple[int, int]]:
    """``file:function`` -> (lines, parameters) of every function over either limit."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines, params = node.end_lineno - node.lineno + 1, parameters(node)
                if lines > MAX_LINES or params > MAX_PARAMS:
                    found[f"{path.relative_to(PACKAGE).as_posix()}:{node.name}"] = (lines, params)
    return found


def test_no_function_over_80_lines_or_8_parameters():
    found = oversized()
    unexpected = {k: v for k, v in found.items() if k not in KEYWORD_FORMS}
    assert unexpected == {}
    # the keyword forms stay thin wrappers
    assert {k: v[0] for k, v in found.items() if v[0] > KEYWORD_FORMS.get(k, MAX_LINES)} == {}


def test_counter_sees_long_and_wide_functions():
    src = "def f(a, b, c, d, e, f, g, h, i):\n" + "    x = 1\n" * 85
    node = ast.parse(src).body[0]
    assert (node.end_lineno - node.lineno + 1, parameters(node)) == (86, 9)
    method = ast.parse("class C:\n    def m(self, a):\n        pass\n").body[0].body[0]
    assert parameters(method) == 1
