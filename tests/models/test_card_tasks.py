"""Models are data, by task: per-task card validation, architecture entries restricted to
medloop's own code, and packaged models found in plugins' resources without importing them."""

from __future__ import annotations

import hashlib
import json
import sys

import pytest
import torch

from medloop.app import discovery
from medloop.app.errors import MedloopError, ResourceError
from medloop.models.card import TASKS, CardError, read_card, validate_card
from medloop.models.nets import build_network
from medloop.models.registry import build_model, get_model, list_models, packaged_model_roots

from .tiny import make_tiny_model, tiny_card


def write(tmp_path, card: dict):
    path = tmp_path / "card.json"
    path.write_text(json.dumps(card))
    return path


def image_to_image_card(task: str = "image-to-image") -> dict:
    card = tiny_card("stain", spatial_dims=2)
    card["task"] = task
    del card["medical"]["classes"]
    card["inputs"][0]["channels"] = 1
    card["outputs"] = [{"name": "stained", "axes": "bcyx", "channels": 3}]
    return card


def test_cards_without_task_are_segmentation_cards(tmp_path):
    card = read_card(write(tmp_path, tiny_card()))
    assert card.task == "segmentation" and card.classes == {0: "background", 1: "bright"}


@pytest.mark.parametrize("task", ["image-to-image", "synthesis"])
def test_image_to_image_card_validates_without_classes(tmp_path, task):
    card = read_card(write(tmp_path, image_to_image_card(task)))
    assert card.task == task and card.classes == {} and card.spatial_dims == 2
    bad = image_to_image_card(task)
    del bad["outputs"][0]["channels"]
    with pytest.raises(CardError) as err:
        read_card(write(tmp_path, bad))
    assert str(err.value) == (
        f"model card {tmp_path / 'card.json'}: outputs[0].channels must be a positive whole number for task {task!r}"
    )


def test_unknown_task_names_the_known_ones(tmp_path):
    card = tiny_card()
    card["task"] = "telepathy"
    path = write(tmp_path, card)
    with pytest.raises(CardError) as err:
        read_card(path)
    assert str(err.value) == (
        f"model card {path}: unknown task 'telepathy'; known tasks: segmentation, image-to-image, synthesis, classification, policy, interactive"
    )
    assert list(TASKS) == ["segmentation", "image-to-image", "synthesis", "classification", "policy", "interactive"]


def test_segmentation_card_without_classes_fails_as_before(tmp_path):
    for task in (None, "segmentation"):
        card = tiny_card()
        del card["medical"]["classes"]
        if task:
            card["task"] = task
        path = write(tmp_path, card)
        with pytest.raises(CardError) as err:
            read_card(path)
        assert str(err.value) == f"model card {path} lacks medical.classes; see the card of brain-tissue-t1 for the format"
    card = tiny_card()
    card["inputs"][0]["axes"] = "bxy"
    with pytest.raises(CardError) as err:
        validate_card(card, "here")
    assert str(err.value) == "model card here: inputs[0].axes must be 'bcyx' or 'bczyx'"


def test_classification_card_needs_one_score_per_named_class(tmp_path):
    card = tiny_card("filter", spatial_dims=2)
    card["task"] = "classification"
    del card["medical"]["classes"]
    card["outputs"] = [{"name": "lesion_probability", "axes": "bc", "classes": ["lesion"]}]
    assert read_card(write(tmp_path, card)).task == "classification"
    card["outputs"][0]["axes"] = "bcyx"
    path = write(tmp_path, card)
    with pytest.raises(CardError) as err:
        read_card(path)
    assert str(err.value) == (
        f"model card {path}: outputs[0] must have axes 'bc' and its class names for task 'classification'"
    )


def test_policy_card_needs_observation_and_action(tmp_path):
    card = tiny_card("tracker", spatial_dims=3)
    card["task"] = "policy"
    del card["medical"]["classes"]
    card["policy"] = {"observation": {"shape": [1, 9, 9, 9]}, "action": {"type": "discrete", "n": 26}}
    assert read_card(write(tmp_path, card)).task == "policy"
    del card["policy"]["action"]
    path = write(tmp_path, card)
    with pytest.raises(CardError) as err:
        read_card(path)
    assert str(err.value) == (
        f"model card {path} lacks policy.observation and policy.action; see the card of brain-tissue-t1 for the format"
    )


@pytest.mark.parametrize("name", ["os:system", "builtins:eval", "torchvision.models:resnet18", "medloopx.nets:Net",
                                  "medloop.models.nets.unet:unet2d.__globals__"])
def test_architecture_callable_outside_medloop_is_refused(tmp_path, name):
    card = tiny_card()
    card["architecture"]["name"] = name
    path = write(tmp_path, card)
    with pytest.raises(CardError) as err:
        read_card(path)
    assert str(err.value) == (
        f"model card {path}: architecture {name!r} is outside medloop and its plugins; name a registered architecture "
        "or a callable in medloop's or a plugin's own modules ('<package>.<module>:<Callable>')"
    )
    imported = set(sys.modules)
    with pytest.raises(CardError, match="is outside medloop and its plugins"):
        build_network(name)
    assert set(sys.modules) == imported  # refused before importing anything


def test_architecture_entry_inside_medloop_builds_and_loads(tmp_path):
    weights, card_path = make_tiny_model(tmp_path / "m", spatial_dims=2, name="entry-net")
    card = json.loads(card_path.read_text())
    card["architecture"]["name"] = "medloop.models.nets.unet:unet2d"
    card["weights"]["sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    card_path.write_text(json.dumps(card))
    entry = get_model(str(card_path.parent))
    net = build_model(entry)
    saved = torch.load(weights, weights_only=True)
    assert all(torch.equal(v, saved[k]) for k, v in net.state_dict().items())
    with pytest.raises(MedloopError, match="cannot find network architecture 'medloop.models.nets.unet:nope'"):
        build_network("medloop.models.nets.unet:nope")


@pytest.fixture
def plugin_with_a_model(tmp_path, monkeypatch):
    """A plugin package on sys.path whose __init__ must never run, shipping one model."""
    package = tmp_path / "site" / "medloop_fake_plugin"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('a plugin was imported to list its models')\n")
    folder = package / "resources" / "models" / "plugin-tiny"
    weights, card_path = make_tiny_model(folder, spatial_dims=2, name="plugin-tiny")
    card = json.loads(card_path.read_text())
    card["weights"]["sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    card_path.write_text(json.dumps(card))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setattr(discovery, "BUILTIN_PLUGINS", (*discovery.BUILTIN_PLUGINS, "medloop_fake_plugin", "no_such_plugin_package"))
    return package / "resources" / "models", weights


def test_models_in_a_plugins_resources_are_listed_and_load_checked(plugin_with_a_model, tmp_path):
    root, weights = plugin_with_a_model
    segmentation_models = discovery.package_dirs("medloop.plugins.segmentation")[0] / "resources" / "models"
    lesion_models = discovery.package_dirs("medloop.plugins.lesions")[0] / "resources" / "models"  # the student
    assert discovery.plugin_resource_dirs("models") == [segmentation_models, lesion_models, root]
    assert packaged_model_roots()[1:] == [segmentation_models, lesion_models, root]
    entries = {e.name: e for e in list_models(tmp_path / "zoo")}
    assert "brain-tissue-t1" in entries and entries["plugin-tiny"].packaged
    entry = get_model("plugin-tiny", tmp_path / "zoo")
    assert entry.folder == root / "plugin-tiny"
    net = build_model(entry)
    saved = torch.load(weights, weights_only=True)
    assert all(torch.equal(v, saved[k]) for k, v in net.state_dict().items())
    assert "medloop_fake_plugin" not in sys.modules
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ResourceError, match="do not match the sha256 in its card"):
        build_model(entry)
    # extra roots can also be given explicitly
    assert [e.name for e in list_models(tmp_path / "zoo", packaged_roots=[root])] == ["plugin-tiny"]


def test_builtin_plugins_are_found_without_importing_them():
    import subprocess

    script = (
        "import sys\n"
        "from medloop.app.discovery import BUILTIN_PLUGINS, package_dirs\n"
        "from medloop.models.registry import list_models, packaged_model_roots\n"
        "assert [d.name for n in BUILTIN_PLUGINS for d in package_dirs(n)] == ['segmentation', 'correction', 'review', 'interactive', 'axons', 'staining', 'lesions']\n"
        "packaged_model_roots(); list_models()\n"
        "print(sorted(n for n in BUILTIN_PLUGINS if n in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
