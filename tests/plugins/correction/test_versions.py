"""Versioned retrained models: numbering, parent links, rollback, sha256 checks."""

from __future__ import annotations

import json

import pytest
import torch

from medloop.app.errors import MedloopError, ResourceError
from medloop.models.card import CARD_FILE, read_card
from medloop.models.nets.unet import UNet
from medloop.models.registry import get_model, register_model, sha256_of
from medloop.plugins.correction.versions import (
    ModelVersions,
    get_version,
    split_version_name,
)

ARCH = {"name": "unet2d", "kwargs": {"spatial_dims": 2, "in_channels": 1, "out_channels": 3, "features": [4, 8], "norm": "group"}}


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def tiny(seed: int) -> UNet:
    torch.manual_seed(seed)
    return UNet(2, 1, 3, features=(4, 8))


@pytest.fixture
def base(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    torch.save(tiny(0).state_dict(), src / "weights.pt")
    card = {
        "name": "tiny-base",
        "version": "1",
        "description": "A test model. Tiny.",
        "authors": [{"name": "tests"}],
        "license": "MIT",
        "architecture": ARCH,
        "weights": {"format": "pytorch_state_dict", "source": "weights.pt", "sha256": ""},
        "inputs": [{"name": "image", "axes": "bcyx", "channels": 1}],
        "outputs": [{"name": "probabilities", "axes": "bcyx"}],
        "medical": {"classes": {"0": "a", "1": "b", "2": "c"}},
        "test_data": {"source": "x.npz", "sha256": "0"},
    }
    (src / CARD_FILE).write_text(json.dumps(card))
    return register_model(src / "weights.pt", src / CARD_FILE, tmp_path / "models")


def leftovers(root):
    """What the versions added to the base's folder (the base itself is registered there too)."""
    return sorted(p.name for p in (root / "tiny-base").iterdir() if p.name not in (CARD_FILE, "weights.pt"))


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_versions_numbered_with_parent_links_and_rollback(tmp_path, base):
    root = tmp_path / "models"
    versions = ModelVersions(root, base)
    assert versions.list() == [] and versions.current == 0 and versions.current_entry is base
    nets = [tiny(s) for s in (1, 2, 3)]
    entries = [
        versions.save(n, metrics={"dice": 0.5 + i / 10}, annotation_counts={"annotated_pixels": 100 * (i + 1)}, note=f"r{i}")
        for i, n in enumerate(nets)
    ]
    assert versions.list() == [1, 2, 3] and versions.current == 3
    for i, e in enumerate(entries, start=1):
        assert e.name == f"tiny-base@v{i}" and e.card.version == str(i)
        assert e.folder == root / "tiny-base" / f"v{i}" and e.weights_path.name == "weights.pt"
        assert e.card.raw["parent"] == ("tiny-base" if i == 1 else f"tiny-base@v{i - 1}")
        assert versions.parent(i) == i - 1
        training = e.card.raw["training"]
        assert training["annotation_counts"] == {"annotated_pixels": 100 * i}
        assert training["metrics"]["dice"] == pytest.approx(0.5 + (i - 1) / 10)
        assert training["note"] == f"r{i - 1}" and training["time"]
        assert e.card.weights_sha256 == sha256_of(e.weights_path)
        assert "test_data" not in e.card.raw  # the base's reference outputs do not apply
        assert e.card.raw["license"] == "MIT" and e.card.architecture == base.card.architecture
    for i, n in enumerate(nets, start=1):
        assert same_weights(versions.load(i), n)
    assert same_weights(versions.load(), nets[2])

    back = versions.rollback(1)
    assert back.name == "tiny-base@v1" and versions.current == 1
    assert same_weights(versions.load(), nets[0]) and same_weights(versions.load(versions.current), nets[0])
    assert versions.list() == [1, 2, 3]  # nothing deleted
    # A retrain after a rollback branches from v1.
    v4 = versions.save(tiny(4), metrics={}, annotation_counts={})
    assert v4.card.version == "4" and versions.parent(4) == 1 and versions.current == 4
    # Rolling back to the base.
    assert versions.rollback(0) is base and versions.current == 0
    # The state survives a new ModelVersions object.
    assert ModelVersions(root, base).current == 0 and ModelVersions(root, base).list() == [1, 2, 3, 4]
    # No temporary folders are left behind.
    assert leftovers(root) == ["v1", "v2", "v3", "v4", "versions.json"]


def test_lookup_by_name_and_path(tmp_path, base):
    root = tmp_path / "models"
    versions = ModelVersions(root, base)
    net = tiny(7)
    versions.save(net, {}, {})
    assert split_version_name("tiny-base@v1") == ("tiny-base", 1) and split_version_name("x") == ("x", 0)
    e = get_version("tiny-base@v1", root)
    assert e.name == "tiny-base@v1"
    assert get_version("tiny-base", root).name == "tiny-base"
    by_path = get_model(str(root / "tiny-base" / "v1"))
    assert by_path.name == "tiny-base@v1"
    with pytest.raises(MedloopError):
        get_version("tiny-base@v9", root)
    with pytest.raises(MedloopError):
        versions.entry(9)
    with pytest.raises(MedloopError):
        versions.rollback(9)


def test_sha256_checked_on_load_and_rollback(tmp_path, base):
    root = tmp_path / "models"
    versions = ModelVersions(root, base)
    e1 = versions.save(tiny(1), {}, {})
    versions.save(tiny(2), {}, {})
    assert read_card(e1.folder / CARD_FILE).weights_sha256 == sha256_of(e1.weights_path)
    torch.save(tiny(9).state_dict(), e1.weights_path)  # replaced behind the card's back
    with pytest.raises(ResourceError, match="sha256"):
        versions.load(1)
    with pytest.raises(MedloopError, match="damaged"):
        versions.rollback(1)
    assert versions.current == 2  # the failed rollback changed nothing


def test_failed_save_leaves_nothing(tmp_path, base):
    root = tmp_path / "models"
    versions = ModelVersions(root, base)
    versions.save(tiny(1), {}, {})

    class Broken(torch.nn.Module):
        def state_dict(self, *a, **k):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        versions.save(Broken(), {}, {})
    assert versions.list() == [1] and versions.current == 1
    assert leftovers(root) == ["v1", "versions.json"]
