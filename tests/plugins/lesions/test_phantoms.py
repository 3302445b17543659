"""The phantoms: healthy twins differ only at the lesions, lesions lie in the anatomy, seeds repeat."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from medloop.plugins.lesions.checks import LesionInputError
from medloop.plugins.lesions.phantoms import LesionSpec, make_phantom, phantom_set, with_spec


@pytest.mark.parametrize("kind, shape", [("brain", (64, 64)), ("bone", (64, 128)), ("chest", (64, 64))])
def test_twin_differs_only_around_the_lesion_which_lies_in_the_anatomy(kind, shape):
    for seed in range(5):
        p = make_phantom(kind, seed)
        assert p.image.shape == p.healthy.shape == p.lesion.shape == p.anatomy.shape == shape
        assert p.image.dtype == np.float32 and 0 <= p.image.min() and p.image.max() <= 1
        assert p.lesion.any() and not (p.lesion & ~p.anatomy).any()
        near = ndi.binary_dilation(p.lesion, iterations=4)
        assert np.abs(p.image - p.healthy)[~near].max() < 1e-3
        # One box per lesion component, each the component's exact bounds.
        labels, count = ndi.label(p.lesion)
        assert len(p.boxes) == count
        for box in p.boxes:
            y0, x0, y1, x1 = box
            assert p.lesion[y0:y1, x0:x1].any() and not p.lesion[:y0].any() or y0 >= 0


def test_lesion_sign_and_amplitude_follow_the_spec():
    bright = make_phantom("brain", 2)
    assert (bright.image - bright.healthy)[bright.lesion].mean() > 0.15
    dark = make_phantom("brain", 2, lesions=with_spec("brain", sign=-1))
    assert (dark.image - dark.healthy)[dark.lesion].mean() < -0.15
    lytic = make_phantom("bone", 2)
    assert (lytic.image - lytic.healthy)[lytic.lesion].mean() < -0.15


def test_same_seed_same_phantom_and_sets_have_distinct_seeds():
    a, b = make_phantom("bone", 11), make_phantom("bone", 11)
    assert np.array_equal(a.image, b.image) and a.boxes == b.boxes
    images = phantom_set("bone", 10, seed=3, lesion_fraction=0.3)
    assert [p.has_lesion for p in images] == [True] * 3 + [False] * 7
    assert len({p.seed for p in images}) == 10
    assert not np.array_equal(images[3].image, images[4].image)


def test_healthy_phantom_keeps_the_anatomy_of_its_seed():
    sick, well = make_phantom("chest", 5), make_phantom("chest", 5, with_lesion=False)
    assert np.array_equal(sick.anatomy, well.anatomy) and not well.lesion.any()


def test_bad_settings_are_refused():
    with pytest.raises(LesionInputError, match=r"lesion sign 0; choose \+1 \(brighter\) or -1 \(darker\)"):
        LesionSpec(sign=0)
    with pytest.raises(LesionInputError, match="phantom kind 'liver' is unknown; choose one of brain, bone, chest"):
        make_phantom("liver")
