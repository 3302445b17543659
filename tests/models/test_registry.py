"""Model registry and cards: registration, sha256 check, safe loading, exact error messages."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from medloop.app.errors import ResourceError
from medloop.models.card import CardError, read_card
from medloop.models.registry import ModelNotFoundError, build_model, get_model, list_models, register_model

from .tiny import make_tiny_model


@pytest.fixture
def models_dir(tmp_path):
    weights, card = make_tiny_model(tmp_path / "src")
    register_model(weights, card, tmp_path / "zoo")
    return tmp_path / "zoo"


def test_register_records_sha256_and_lists(models_dir):
    entry = get_model("tiny-threshold", models_dir)
    assert entry.card.weights_sha256 == __import__("hashlib").sha256(entry.weights_path.read_bytes()).hexdigest()
    assert "tiny-threshold" in [e.name for e in list_models(models_dir)]
    assert not entry.packaged


def test_loaded_network_equals_saved_weights(models_dir, tmp_path):
    torch.manual_seed(0)
    net = build_model(get_model("tiny-threshold", models_dir))
    saved = torch.load(tmp_path / "src" / "weights.pt", weights_only=True)
    for key, value in net.state_dict().items():
        assert torch.equal(value, saved[key])
    assert not net.training


def test_damaged_weights_are_refused(models_dir):
    entry = get_model("tiny-threshold", models_dir)
    data = bytearray(entry.weights_path.read_bytes())
    data[-10] ^= 0xFF
    entry.weights_path.write_bytes(bytes(data))
    with pytest.raises(ResourceError) as err:
        build_model(entry)
    assert str(err.value) == (
        f"weights {entry.weights_path} of model tiny-threshold do not match the sha256 in its card "
        "(damaged or replaced); reinstall or re-register the model"
    )


def test_pickled_objects_are_never_loaded(tmp_path):
    """weights_only=True: a weight file that would run code on unpickling is refused."""
    import hashlib

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    weights, card = make_tiny_model(tmp_path / "src")
    torch.save({"state_dict": Evil()}, weights)
    # registration checks the file before copying anything: one line, nothing registered (issue 18 §5)
    with pytest.raises(ResourceError) as err:
        register_model(weights, card, tmp_path / "zoo")
    assert str(err.value).startswith(f"cannot register {weights}: it is not a plain tensor state dict (Weights only load failed")
    assert str(err.value).endswith("save the weights with torch.save(model.state_dict(), path)")
    assert "\n" not in str(err.value) and not (tmp_path / "zoo").exists()
    # a registered model whose file is later swapped for such a payload (sha256 too) is still never unpickled
    good, good_card = make_tiny_model(tmp_path / "ok")
    entry = register_model(good, good_card, tmp_path / "zoo")
    torch.save({"state_dict": Evil()}, entry.weights_path)
    raw = json.loads((entry.folder / "card.json").read_text(encoding="utf-8"))
    raw["weights"]["sha256"] = hashlib.sha256(entry.weights_path.read_bytes()).hexdigest()
    (entry.folder / "card.json").write_text(json.dumps(raw), encoding="utf-8")
    with pytest.raises(ResourceError, match=r"cannot be loaded \(.*Weights only load failed"):
        build_model(get_model("tiny-threshold", tmp_path / "zoo"))


def test_register_refuses_weights_that_do_not_fit_and_keeps_only_files_it_has(tmp_path, cli):
    weights, card = make_tiny_model(tmp_path / "src")
    state = torch.load(weights, weights_only=True)
    torch.save({k: v[:1] if v.ndim else v for k, v in state.items()}, tmp_path / "wrong.pt")
    line = cli("models", "register", str(tmp_path / "wrong.pt"), "--card", str(card), "--models-dir", str(tmp_path / "zoo"))
    assert line.returncode == 2 and len(line.stderr.strip().splitlines()) == 1
    assert line.stderr.startswith(f"medloop: error: cannot register {tmp_path / 'wrong.pt'}: the weights do not fit the card's architecture")
    assert not (tmp_path / "zoo").exists()
    # --models-dir after 'register' (as above) and before it both work; the card names only what the folder has
    raw = json.loads(card.read_text(encoding="utf-8"))
    raw["test_data"] = {"source": "test_data.npz", "sha256": "0" * 64, "tolerance": 1e-3}  # a file that is not there
    card.write_text(json.dumps(raw), encoding="utf-8")
    ok = cli("models", "register", str(weights), "--card", str(card), "--models-dir", str(tmp_path / "zoo"))
    assert ok.returncode == 0, ok.stderr
    saved = json.loads((tmp_path / "zoo" / "tiny-threshold" / "card.json").read_text(encoding="utf-8"))
    assert "test_data" not in saved and sorted(p.name for p in (tmp_path / "zoo" / "tiny-threshold").iterdir()) == [
        "card.json", weights.name]
    np.savez(card.parent / "test_data.npz", input=np.zeros(3))
    again = cli("models", "--models-dir", str(tmp_path / "zoo2"), "register", str(weights), "--card", str(card))
    assert again.returncode == 0, again.stderr
    saved = json.loads((tmp_path / "zoo2" / "tiny-threshold" / "card.json").read_text(encoding="utf-8"))
    assert saved["test_data"]["sha256"] == hashlib.sha256((card.parent / "test_data.npz").read_bytes()).hexdigest()
    assert (tmp_path / "zoo2" / "tiny-threshold" / "test_data.npz").is_file()


def test_unknown_model_lists_known(models_dir):
    with pytest.raises(ModelNotFoundError) as err:
        get_model("nope", models_dir)
    names = ", ".join(e.name for e in list_models(models_dir))
    assert str(err.value) == (
        f"no model named 'nope'; known models: {names} (see 'medloop models', or register one with 'medloop models register')"
    )


def test_bad_cards(tmp_path):
    bad = tmp_path / "card.json"
    bad.write_text('{"name": "x"}')
    with pytest.raises(CardError) as err:
        read_card(bad)
    assert str(err.value) == (
        f"model card {bad} lacks description, authors, license, architecture, weights, inputs, outputs, medical; "
        "see the card of brain-tissue-t1 for the format"
    )
    bad.write_text("{not json")
    with pytest.raises(CardError, match=r"is not valid JSON"):
        read_card(bad)


def test_cli_models_lists_and_registers(cli, tmp_path):
    weights, card = make_tiny_model(tmp_path / "src")
    zoo = tmp_path / "zoo"
    result = cli("models", "--models-dir", str(zoo), "register", str(weights), "--card", str(card))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"registered tiny-threshold in {zoo / 'tiny-threshold'}\n"
    rows = json.loads(cli("models", "--json", "--models-dir", str(zoo)).stdout)
    tiny = [r for r in rows if r["name"] == "tiny-threshold"][0]
    assert tiny["classes"] == ["background", "bright"] and tiny["dims"] == "3-D" and not tiny["packaged"]
    missing = cli("models", "--models-dir", str(zoo), "register", str(tmp_path / "none.pt"), "--card", str(card))
    assert missing.returncode == 2
    assert missing.stderr == f"medloop: error: cannot register {tmp_path / 'none.pt'}: no such file; check the path\n"


def test_packaged_models_reproduce_their_test_output():
    packaged = [e for e in list_models() if e.packaged]
    for entry in packaged:
        data = np.load(entry.folder / entry.card.raw["test_data"]["source"])
        net = build_model(entry)
        with torch.inference_mode():
            probs = torch.softmax(net(torch.from_numpy(data["input"][None])), dim=1)[0].numpy()
        np.testing.assert_allclose(probs, data["output"], atol=entry.card.raw["test_data"]["tolerance"])
    assert len(packaged) >= 1, "the zoo ships at least the brain-tissue-t1 model"
