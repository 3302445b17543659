"""Box → lesion on a bone phantom: locality, dtype, reproducibility, filter and pseudo-mask."""

import numpy as np
import pytest

from medloop.plugins.lesions.checks import LesionInputError
from medloop.plugins.lesions.phantoms import make_phantom
from medloop.plugins.lesions.synthesize import SynthesisParams, synthesize_lesions
from medloop.plugins.lesions.translators import IdentityTranslator


@pytest.fixture
def healthy_bone():
    return make_phantom("bone", 1, with_lesion=False).image


def _outside(shape, crops):
    mask = np.ones(shape, bool)
    for y0, x0, y1, x1 in crops:
        mask[y0:y1, x0:x1] = False
    return mask


@pytest.mark.parametrize("dtype", [np.float32, np.uint8, np.uint16])
def test_only_the_crops_change_and_the_source_is_untouched(healthy_bone, dark_disc, dtype):
    image = (healthy_bone * (1 if dtype == np.float32 else 200)).astype(dtype)
    before = image.copy()
    result = synthesize_lesions(image, [(26, 30, 36, 40), (26, 80, 34, 90)], dark_disc, SynthesisParams(s=2, seed=4))
    outside = _outside(image.shape, result.crops)
    assert result.image.dtype == image.dtype
    assert np.array_equal(result.image[outside], image[outside])
    assert np.array_equal(image, before)
    # The lesion darkens the box centre by about alpha * 0.3 of the range.
    y0, x0, y1, x1 = result.boxes[0]
    scale = float(image.max()) - float(image.min())
    drop = (image[y0:y1, x0:x1].astype(float) - result.image[y0:y1, x0:x1].astype(float)).max() / scale
    assert 0.15 < drop <= 0.35


def test_same_seed_same_lesion_other_seed_other_crop(healthy_bone, dark_disc):
    a = synthesize_lesions(healthy_bone, [(26, 50, 36, 60)], dark_disc, SynthesisParams(seed=7))
    b = synthesize_lesions(healthy_bone, [(26, 50, 36, 60)], dark_disc, SynthesisParams(seed=7))
    assert np.array_equal(a.image, b.image) and a.crops == b.crops
    crops = {tuple(synthesize_lesions(healthy_bone, [(26, 50, 36, 60)], dark_disc, SynthesisParams(seed=k)).crops[0])
             for k in range(12)}
    assert len(crops) > 3


def test_pseudo_mask_is_the_changed_part_of_the_box(healthy_bone, dark_disc):
    result = synthesize_lesions(healthy_bone, [(24, 50, 40, 66)], dark_disc, SynthesisParams(s=1, seed=0, mask_tau=0.05))
    mask = result.pseudo_mask.astype(bool)
    change = np.abs(result.image - healthy_bone)
    assert mask.sum() > 30
    assert not mask[_outside(mask.shape, [result.boxes[0]])].any()
    assert change[mask].min() > 0.05 * (healthy_bone.max() - healthy_bone.min())


class Fixed:
    name = "fixed"

    def __init__(self, value):
        self.value = value

    def score(self, images):
        return np.full(len(images), self.value)


@pytest.mark.parametrize("score, t, kept", [(0.8, 0.7, True), (0.8, 0.9, False), (0.8, None, None)])
def test_the_filter_keeps_images_scoring_at_least_t(healthy_bone, dark_disc, score, t, kept):
    result = synthesize_lesions(healthy_bone, [(26, 50, 36, 60)], dark_disc, SynthesisParams(threshold=t), Fixed(score))
    assert result.score == score and result.kept is kept
    assert result.provenance["kept"] is kept and result.provenance["translator"] == "dark-disc"


def test_identity_control_changes_the_crop_only_by_resampling(healthy_bone):
    result = synthesize_lesions(healthy_bone, [(26, 50, 36, 60)], IdentityTranslator(32), SynthesisParams(s=2, seed=1))
    y0, x0, y1, x1 = result.crops[0]
    # The untranslated patch, resampled 20 -> 32 -> 20 px, blends back within noise level.
    assert np.abs(result.image - healthy_bone)[y0:y1, x0:x1].mean() < 0.02


@pytest.mark.parametrize("kwargs, message", [
    ({"translator": None}, "no translator loaded; choose a lesion translator model first"),
    ({"boxes": []}, "no box on image; draw a rectangle around where the lesion should appear"),
    ({"boxes": [(2, 2, 12, 12)]}, "no bone in patch: its mean intensity is"),
    ({"params": SynthesisParams(threshold=1.5)}, "threshold t = 1.5 is outside [0, 1]; choose a value in [0, 1]"),
    ({"params": SynthesisParams(s=3)}, "crop scale s = 3; choose 1 or 2"),
    ({"image": np.zeros((8, 8, 3))}, "image has shape (8, 8, 3): RGB(A), but a 2-D greyscale image is expected"),
    ({"image": np.zeros((4, 64, 128))}, "image has shape (4, 64, 128): 3 axes, but a 2-D greyscale image (Y, X) is expected"),
])
def test_bad_input_is_refused_with_one_clear_line(healthy_bone, dark_disc, kwargs, message):
    call = {"image": healthy_bone, "boxes": [(26, 50, 36, 60)], "translator": dark_disc, "params": SynthesisParams()}
    call.update(kwargs)
    with pytest.raises(LesionInputError) as err:
        synthesize_lesions(**call)
    assert str(err.value).startswith(message)


def test_a_patch_without_bone_is_accepted_when_allowed(healthy_bone, dark_disc):
    result = synthesize_lesions(healthy_bone, [(2, 2, 12, 12)], dark_disc, SynthesisParams(allow_no_bone=True))
    assert result.pseudo_mask.sum() > 0
