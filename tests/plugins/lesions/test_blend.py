"""Gupta et al.'s deterministic geometry (spec §1 acceptance): the alpha map, the crop rule, the paste."""

import numpy as np
import pytest

from medloop.plugins.lesions.blend import check_has_bone, cosine_alpha, crop_for_box, crop_side, paste
from medloop.plugins.lesions.checks import LesionInputError


def test_alpha_map_is_one_at_the_centre_zero_on_the_border_symmetric_and_separable():
    alpha = cosine_alpha(256, 1.0)
    assert alpha.shape == (256, 256)
    assert alpha[127:129, 127:129].min() >= 0.9999
    for border in (alpha[0], alpha[-1], alpha[:, 0], alpha[:, -1]):
        assert border.max() <= 1e-6
    np.testing.assert_array_equal(alpha, alpha[:, ::-1])
    np.testing.assert_array_equal(alpha, alpha[::-1, :])
    profile = np.cos(np.abs(np.linspace(-1, 1, 256)) * np.pi / 2)
    profile = (profile + profile[::-1]) / 2
    profile[[0, -1]] = 0
    np.testing.assert_allclose(alpha, np.outer(profile, profile), atol=1e-15)


def test_a_larger_exponent_widens_the_plateau():
    # n > 1 keeps alpha near 1 further from the centre (|i|^n is smaller inside).
    assert cosine_alpha(64, 3.0)[32, 12] > cosine_alpha(64, 1.0)[32, 12]


@pytest.mark.parametrize("s", [1, 2])
def test_the_crop_is_square_holds_the_box_lies_inside_and_is_reproducible(s):
    shape = (64, 128)
    rng = np.random.default_rng(0)
    for _ in range(200):
        h, w = rng.integers(4, 20, 2)
        y0, x0 = rng.integers(0, shape[0] - h), rng.integers(0, shape[1] - w)
        box = (int(y0), int(x0), int(y0 + h), int(x0 + w))
        seed = int(rng.integers(1000))
        c0, c1, c2, c3 = crop_for_box(box, shape, s, seed)
        assert c2 - c0 == c3 - c1 == round(s * max(h, w)) == crop_side(box, s)
        assert c0 <= box[0] and c1 <= box[1] and c2 >= box[2] and c3 >= box[3]
        assert c0 >= 0 and c1 >= 0 and c2 <= shape[0] and c3 <= shape[1]
        assert crop_for_box(box, shape, s, seed) == (c0, c1, c2, c3)


def test_crop_positions_vary_with_the_seed():
    crops = {crop_for_box((30, 60, 38, 68), (64, 128), 2, seed) for seed in range(30)}
    assert len(crops) > 10


def test_a_crop_larger_than_the_image_names_required_and_available_size():
    with pytest.raises(LesionInputError) as err:
        crop_for_box((10, 10, 50, 50), (64, 128), 2, 0)
    assert str(err.value) == ("the crop for box (10, 10, 50, 50) at s=2 needs 80x80 px but the image is 64x128; "
                              "draw a smaller box or use s=1")


@pytest.mark.parametrize("box, message", [
    ((-1, 0, 10, 10), "box (-1, 0, 10, 10) is not fully inside the image (0, 0, 64, 128); draw it inside the image"),
    ((0, 0, 3, 10), "box (0, 0, 3, 10) is 3x10 px; sides must be at least 4 px, draw a larger box"),
])
def test_bad_boxes_are_refused_with_their_coordinates(box, message):
    with pytest.raises(LesionInputError) as err:
        crop_for_box(box, (64, 128), 1, 0)
    assert str(err.value) == message


def test_scale_must_be_one_or_two():
    with pytest.raises(LesionInputError, match=r"crop scale s = 3; choose 1 or 2"):
        crop_for_box((10, 10, 20, 20), (64, 128), 3, 0)


@pytest.mark.parametrize("dtype", [np.float32, np.uint8, np.uint16])
def test_paste_is_bit_identical_outside_the_crop(dtype):
    rng = np.random.default_rng(1)
    image = (rng.random((64, 128)) * 200).astype(dtype)
    crop = (10, 20, 30, 40)
    out = paste(image, rng.random((32, 32)) * 200, crop)
    outside = np.ones(image.shape, bool)
    outside[10:30, 20:40] = False
    assert out.dtype == image.dtype
    assert np.array_equal(out[outside], image[outside])
    assert not np.array_equal(out[~outside], image[~outside])


def test_no_bone_patches_are_refused_unless_allowed():
    dark = np.full((16, 16), 0.1)
    with pytest.raises(LesionInputError, match=r"^no bone in patch: its mean intensity is 0.100 < 0.15"):
        check_has_bone(dark)
    assert check_has_bone(dark, allow=True) == pytest.approx(0.1)


def test_a_centred_crop_is_centred_on_the_box_unless_the_border_shifts_it():
    # box rows 30..39, columns 60..69 (10 px): side 20, centred -> rows 25..44, columns 55..74
    assert crop_for_box((30, 60, 40, 70), (64, 128), 2, 0, "centred") == (25, 55, 45, 75)
    assert crop_for_box((30, 60, 40, 70), (64, 128), 2, 99, "centred") == (25, 55, 45, 75)  # no randomness
    # near the top-left corner the crop shifts inside the image and still holds the box
    assert crop_for_box((2, 3, 12, 13), (64, 128), 2, 0, "centred") == (0, 0, 20, 20)
    with pytest.raises(LesionInputError, match="crop placement 'middle'; choose random or centred"):
        crop_for_box((30, 60, 40, 70), (64, 128), 2, 0, "middle")
