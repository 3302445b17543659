"""Boxes + Cues 1/2 (spec section 2, Gupta et al.): BX-1..BX-3, box errors, clipping."""

from __future__ import annotations

import inspect
import warnings

import numpy as np
import pytest
from scipy import ndimage
from skimage.draw import ellipse

from medloop.app.errors import MedloopError, MedloopWarning
from medloop.plugins.correction.boxes import (
    AUTO_STOP_FRACTION,
    BoxError,
    apply_cues1,
    apply_cues2,
    boxes_from_instances,
    boxes_from_shapes,
    boxes_to_shapes,
    changed_fraction,
    cues2_bounds,
    object_features,
    round0_labels,
)


def _instances(seed: int = 0, shape=(48, 48)) -> np.ndarray:
    """A few ellipses, some overlapping (later ones paint over earlier ones), some absent ids."""
    rng = np.random.default_rng(seed)
    inst = np.zeros(shape, dtype=np.int32)
    for k in (1, 2, 3, 5, 6, 8):  # 4 and 7 deliberately missing
        r, c = rng.uniform(6, shape[0] - 6), rng.uniform(6, shape[1] - 6)
        rr, cc = ellipse(r, c, rng.uniform(2, 6), rng.uniform(2, 6), shape=shape,
                         rotation=rng.uniform(0, np.pi))
        inst[rr, cc] = k
    return inst


# ------------------------------------------------------------------------------------ BX-1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bx1_boxes_from_mask_equal_find_objects(seed):
    inst = _instances(seed)
    boxes = boxes_from_instances(inst)
    expected = [s for s in ndimage.find_objects(inst) if s is not None]
    assert boxes.shape == (len(expected), 4)
    for row, (sy, sx) in zip(boxes, expected):
        assert tuple(row) == (sy.start, sx.start, sy.stop, sx.stop)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bx1_round0_labels_are_union_of_boxes(seed):
    inst = _instances(seed)
    boxes = boxes_from_instances(inst)
    labels = round0_labels(boxes, inst.shape)
    union = np.zeros(inst.shape, dtype=bool)
    for sl in ndimage.find_objects(inst):
        if sl is not None:
            union[sl] = True
    assert labels.dtype == np.uint8 and labels.shape == inst.shape
    np.testing.assert_array_equal(labels, np.where(union, 2, 1))
    assert set(np.unique(labels)) <= {1, 2}  # exhaustive boxes: nothing stays unlabeled


def test_find_objects_slices_are_accepted_as_boxes():
    inst = _instances(4)
    slices = ndimage.find_objects(inst)
    assert None in slices
    np.testing.assert_array_equal(
        round0_labels(slices, inst.shape), round0_labels(boxes_from_instances(inst), inst.shape)
    )
    pred = inst > 0
    np.testing.assert_array_equal(
        apply_cues1(pred, slices), apply_cues1(pred, boxes_from_instances(inst))
    )


def test_empty_instance_map_has_no_boxes():
    assert boxes_from_instances(np.zeros((5, 5), np.int32)).shape == (0, 4)
    np.testing.assert_array_equal(round0_labels(np.zeros((0, 4), int), (3, 4)), np.ones((3, 4)))


def test_shapes_round_trip_is_exact_and_silent():
    boxes = boxes_from_instances(_instances(3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        back = boxes_from_shapes(boxes_to_shapes(boxes), "rectangle", (48, 48))
    np.testing.assert_array_equal(back, boxes)


def test_pixel_centre_rule():
    # rows 2.2..7.9 hold centres 3..7, cols 0.0..4.0 hold 0..4 (edges inclusive)
    rect = np.array([[2.2, 0.0], [2.2, 4.0], [7.9, 4.0], [7.9, 0.0]])
    np.testing.assert_array_equal(boxes_from_shapes([rect], ["rectangle"], (10, 10)),
                                  [[3, 0, 8, 5]])


# ------------------------------------------------------------------------------------ BX-2


BOX = np.array([[5, 5, 15, 15]])  # 10 x 10 = 100 pixels


def _pred_rows(n_rows: int) -> np.ndarray:
    pred = np.zeros((20, 20), dtype=bool)
    pred[5:5 + n_rows, 5:15] = True  # n_rows * 10 pixels of the box
    return pred


def _expected(fg_slices) -> np.ndarray:
    out = np.ones((20, 20), dtype=np.uint8)
    for sl in fg_slices:
        out[sl] = 2
    return out


def test_bx2_missed_object_gets_its_whole_box():
    out, resets = apply_cues1(np.zeros((20, 20), bool), BOX, return_resets=True)
    np.testing.assert_array_equal(out, _expected([np.s_[5:15, 5:15]]))
    assert resets.tolist() == [True]


def test_bx2_forty_percent_covered_gets_whole_box():
    out, resets = apply_cues1(_pred_rows(4), BOX, return_resets=True)
    np.testing.assert_array_equal(out, _expected([np.s_[5:15, 5:15]]))
    assert resets.tolist() == [True]


def test_bx2_sixty_percent_covered_is_kept():
    out, resets = apply_cues1(_pred_rows(6), BOX, return_resets=True)
    np.testing.assert_array_equal(out, _expected([np.s_[5:11, 5:15]]))
    assert resets.tolist() == [False]


def test_bx2_exactly_half_is_kept():
    # the paper resets below 50 %, so exactly 50 % stays
    np.testing.assert_array_equal(apply_cues1(_pred_rows(5), BOX), _expected([np.s_[5:10, 5:15]]))


def test_bx2_foreground_outside_every_box_becomes_background():
    pred = _pred_rows(6)
    pred[0:3, 0:3] = True  # blob outside all boxes
    pred[10:18, 14:18] = True  # a prediction leaking out of the box is cut at the box edge
    out = apply_cues1(pred, BOX)
    expected = _expected([np.s_[5:11, 5:15], np.s_[11:15, 14:15]])
    np.testing.assert_array_equal(out, expected)
    assert (out[0:3, 0:3] == 1).all()


def test_cues1_overlapping_boxes_and_paint_layer_input():
    boxes = np.array([[2, 2, 8, 8], [6, 6, 12, 12]])
    paint = np.ones((14, 14), np.uint8)  # a prediction layer in the paint convention
    paint[2:8, 2:8] = 2  # first box fully covered, second box covered 4/36 -> reset
    out, resets = apply_cues1(paint, boxes, foreground=2, return_resets=True)
    assert resets.tolist() == [False, True]
    np.testing.assert_array_equal(out, _expected_box_union((14, 14), boxes))
    with pytest.raises(ValueError, match="foreground=<value>"):
        apply_cues1(paint, boxes)  # values 1/2 are not a 0/1 mask


def _expected_box_union(shape, boxes):
    out = np.ones(shape, np.uint8)
    for y0, x0, y1, x1 in boxes:
        out[y0:y1, x0:x1] = 2
    return out


def test_cues1_does_not_modify_inputs():
    pred, boxes = _pred_rows(6), BOX.copy()
    pred0, boxes0 = pred.copy(), boxes.copy()
    apply_cues1(pred, boxes)
    round0_labels(boxes, pred.shape)
    np.testing.assert_array_equal(pred, pred0)
    np.testing.assert_array_equal(boxes, boxes0)


# ------------------------------------------------------------------------------------ BX-3


def _ellipse_grid(params, cell: int, ncols: int, nrows: int) -> np.ndarray:
    mask = np.zeros((nrows * cell, ncols * cell), dtype=bool)
    for k, (a, b, rot) in enumerate(params):
        r, c = (k // ncols + 0.5) * cell, (k % ncols + 0.5) * cell
        rr, cc = ellipse(r, c, a, b, shape=mask.shape, rotation=rot)
        mask[rr, cc] = True
    return mask


def _stage1_masks(rng) -> list[np.ndarray]:
    """Three Stage-1 segmentations, 25 objects each: semi-axes 5-8 px, axis ratio 0.6-1."""
    masks = []
    for _ in range(3):
        a = rng.uniform(5, 8, 25)
        params = [(ai, ai * rng.uniform(0.6, 1.0), rng.uniform(0, np.pi)) for ai in a]
        masks.append(_ellipse_grid(params, 24, 5, 5))
    return masks


def _stage2_mask(rng) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """100 typical objects (a 6-7 px, ratio 0.7-0.85) + 6 outliers in a bottom band."""
    a = rng.uniform(6, 7, 100)
    params = [(ai, ai * rng.uniform(0.7, 0.85), rng.uniform(0, np.pi)) for ai in a]
    mask = np.zeros((280, 240), dtype=bool)
    mask[:240] = _ellipse_grid(params, 24, 10, 10)
    outliers = []
    for col, (ra, rb) in zip((20, 60, 100, 120, 160, 205),
                             ((14, 14), (14, 14), (2, 2), (2, 2), (3.5, 14), (3.5, 14))):
        rr, cc = ellipse(260, col, ra, rb, shape=mask.shape)  # huge, huge, tiny, tiny, long, long
        mask[rr, cc] = True
        outliers.append((260, col))
    return mask, outliers


def test_bx3_exactly_the_outliers_are_dropped():
    rng = np.random.default_rng(7)
    stage1 = _stage1_masks(rng)
    stage2, outliers = _stage2_mask(rng)
    bounds = cues2_bounds(stage1)
    assert bounds.n_objects == 75

    objects, areas, ecc = object_features(stage2)
    assert len(areas) == 106
    out = apply_cues2(stage2, bounds)
    assert out.dtype == np.uint8 and set(np.unique(out)) == {1, 2}
    dropped = {k + 1 for k in range(len(areas)) if (out[objects == k + 1] == 1).all()}
    kept = {k + 1 for k in range(len(areas)) if (out[objects == k + 1] == 2).all()}
    assert dropped | kept == set(range(1, 107))
    assert dropped == {int(objects[p]) for p in outliers}
    # the two long ellipses are shape outliers only: their area is typical
    long_ids = [int(objects[p]) for p in outliers[4:]]
    for k in long_ids:
        assert bounds.area[0] <= areas[k - 1] <= bounds.area[1]
        assert ecc[k - 1] > bounds.eccentricity[1]
    # dropped objects can be left unlabeled instead of background
    out0 = apply_cues2(stage2, bounds, dropped=0)
    assert (out0[np.isin(objects, list(dropped))] == 0).all()
    np.testing.assert_array_equal(out0[out0 != 0], out[out0 != 0])


def test_bx3_bounds_come_from_stage1_masks_only():
    params = inspect.signature(cues2_bounds).parameters
    positional = [p for p in params.values() if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert [p.name for p in positional] == ["stage1_masks"]
    assert all(p.kind is p.KEYWORD_ONLY for p in params.values() if p.name != "stage1_masks")
    assert list(inspect.signature(apply_cues2).parameters)[:2] == ["masks", "bounds"]


def test_cues2_bounds_are_the_percentiles():
    # squares of side 1..29 -> areas s^2, eccentricity 0
    mask = np.zeros((31, 500), dtype=bool)
    x = 1
    sides = list(range(1, 30))
    for s in sides:
        mask[1:1 + s, x:x + s] = True
        x += s + 2
    bounds = cues2_bounds(mask)
    areas = np.array(sides, float) ** 2
    assert bounds.area == pytest.approx(tuple(np.percentile(areas, [2.5, 97.5])))
    assert bounds.eccentricity == pytest.approx((0.0, 0.0), abs=1e-6)
    assert bounds.n_objects == len(sides)
    assert bounds.percentiles == (2.5, 97.5)


def test_cues2_stack_and_list_inputs():
    rng = np.random.default_rng(3)
    stage1 = _stage1_masks(rng)
    bounds = cues2_bounds(np.stack(stage1))
    assert bounds == cues2_bounds(stage1)
    outs = apply_cues2(stage1, bounds)
    assert isinstance(outs, list) and len(outs) == 3
    np.testing.assert_array_equal(apply_cues2(np.stack(stage1), bounds), np.stack(outs))


def test_cues2_without_objects_is_an_error():
    with pytest.raises(BoxError, match="contain no objects"):
        cues2_bounds([np.zeros((8, 8), bool)])


# ------------------------------------------------------------------------------- box errors


def _rect(y0, x0, y1, x1):
    return np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]], dtype=float)


def test_box_errors_name_every_bad_shape():
    data = [
        _rect(1, 1, 5, 5),  # fine
        _rect(1, 1, 5, 5),  # an ellipse's bounding vertices
        np.array([[0.0, 0.0], [3.0, 3.0], [6.0, 0.0]]),  # a path
        _rect(10, 10, 20, 10),  # zero width
        _rect(40, 50, 45, 60),  # entirely below/right of the 32 x 40 image
        np.zeros((5, 2)),  # a "rectangle" with five vertices
    ]
    types = ["rectangle", "ellipse", "path", "rectangle", "rectangle", "rectangle"]
    with pytest.raises(BoxError) as exc:
        boxes_from_shapes(data, types, (32, 40), layer_name="boxes")
    assert str(exc.value) == (
        "Box layer 'boxes': shapes 1, 2, 5 are not rectangles (ellipse, path, malformed "
        "vertices), redraw them with the rectangle tool; box 3 has zero area (no pixel centre "
        "inside), drag it around its object; box 4 lies entirely outside the 32 x 40 image, "
        "move or delete it."
    )
    assert isinstance(exc.value, MedloopError) and isinstance(exc.value, ValueError)


def test_box_errors_plural_and_singular_forms():
    data = [_rect(2.2, 1, 2.8, 5), _rect(3.1, 1, 3.9, 5), _rect(-9, -9, -2, -2),
            _rect(-20, 3, -10, 6), _rect(0, 0, 3, 3)]
    with pytest.raises(BoxError) as exc:
        boxes_from_shapes(data, ["rectangle"] * 4 + ["ellipse"], (16, 16))
    assert str(exc.value) == (
        "Box layer: shape 4 is not a rectangle (ellipse), redraw it with the rectangle tool; "
        "boxes 0, 1 have zero area (no pixel centre inside), drag them around their objects; "
        "boxes 2, 3 lie entirely outside the 16 x 16 image, move or delete them."
    )


def test_empty_box_layer_is_an_error():
    with pytest.raises(BoxError) as exc:
        boxes_from_shapes([], [], (8, 8), layer_name="glomeruli")
    assert str(exc.value) == "Box layer 'glomeruli' is empty: draw a rectangle around every object."
    with pytest.raises(BoxError) as exc:
        boxes_from_shapes([], "rectangle", (8, 8))
    assert str(exc.value) == "Box layer is empty: draw a rectangle around every object."


def test_partly_outside_boxes_are_clipped_with_a_warning():
    data = [_rect(-3.5, -3.5, 9.5, 9.5), _rect(2, 2, 4, 4), _rect(20, 30, 40, 45)]
    with pytest.warns(MedloopWarning) as rec:
        boxes = boxes_from_shapes(data, "rectangle", (32, 40), layer_name="boxes")
    assert [str(w.message) for w in rec] == [
        "Box layer 'boxes': boxes 0, 2 extend past the 32 x 40 image and were clipped to it."
    ]
    np.testing.assert_array_equal(boxes, [[0, 0, 10, 10], [2, 2, 5, 5], [20, 30, 32, 40]])
    with pytest.warns(MedloopWarning) as rec:
        boxes_from_shapes([_rect(-1, 0, 3, 3)], "rectangle", (8, 8))
    assert [str(w.message) for w in rec] == [
        "Box layer: box 0 extends past the 8 x 8 image and was clipped to it."
    ]


def test_rotated_rectangle_becomes_axis_aligned_hull_with_warning():
    diamond = np.array([[10.0, 5.0], [15.0, 10.0], [10.0, 15.0], [5.0, 10.0]])
    with pytest.warns(MedloopWarning) as rec:
        boxes = boxes_from_shapes([_rect(0, 0, 2, 2), diamond], "rectangle", (20, 20))
    assert [str(w.message) for w in rec] == [
        "Box layer: box 1 is rotated; using its axis-aligned hull."
    ]
    np.testing.assert_array_equal(boxes, [[0, 0, 3, 3], [5, 5, 16, 16]])


def test_bad_box_arrays_are_rejected():
    with pytest.raises(BoxError, match=r"\(N, 4\)"):
        round0_labels(np.zeros((2, 3), int), (8, 8))
    with pytest.raises(BoxError, match="Box rows 1 are empty"):
        round0_labels([[0, 0, 2, 2], [3, 3, 3, 5]], (8, 8))
    with pytest.raises(BoxError, match="Box rows 0 do not lie inside the 8 x 8 image"):
        apply_cues1(np.zeros((8, 8), bool), [[0, 0, 9, 2]])


# --------------------------------------------------------------------------- auto-stop share


def test_changed_fraction():
    a = np.ones((10, 10), np.uint8)
    a[2:7, 2:6] = 2  # 20 foreground pixels
    b = a.copy()
    b[0, :2] = 2  # 2 new foreground pixels: 2 changed of 22 foreground in either round
    assert changed_fraction(a, b) == pytest.approx(2 / 22)
    assert changed_fraction(a, a) == 0.0
    assert changed_fraction([a, a], [b, a]) == pytest.approx(2 / 42)
    assert changed_fraction(np.ones((4, 4)), np.ones((4, 4))) == 0.0  # no foreground at all
    assert changed_fraction([], []) == 0.0
    assert AUTO_STOP_FRACTION == 0.01
    with pytest.raises(ValueError, match="differ in shape"):
        changed_fraction(a, b[:5])
