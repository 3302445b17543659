"""A method joins by adding its folder and one line: a throw-away plugin, installed through an
entry point from a temporary folder, shows its verb, panel, sample and packaged model without
touching any other file."""

from __future__ import annotations

import hashlib
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

from medloop.app.plugin import PluginError, Plugin, load_plugins, plugin_packages, resolve, resource_dirs, service

PACKAGE = "throwaway_plugin"


def write_plugin(root: Path) -> Path:
    """A complete plugin package + dist-info (entry point ``medloop.plugins``) under ``root``."""
    pkg = root / PACKAGE
    (pkg / "resources" / "models" / "tiny-throwaway").mkdir(parents=True)
    (pkg / "__init__.py").write_text(textwrap.dedent(f'''
        from medloop.app.plugin import Plugin, Sample, Widget

        PLUGIN = Plugin(
            name="throwaway",
            title="A plugin made by a test",
            cli="{PACKAGE}.cli:add_verbs",
            widgets=(Widget("Throwaway", "{PACKAGE}.widget:ThrowawayPanel", "Count bright voxels"),),
            samples=(Sample("ramp", "A 4 x 5 ramp", "{PACKAGE}.cli:ramp_sample"),),
            services={{"count-bright": "{PACKAGE}.cli:count_bright"}},
        )
    '''))
    (pkg / "cli.py").write_text(textwrap.dedent('''
        import numpy as np

        def count_bright(array, threshold):
            return int((np.asarray(array) > threshold).sum())

        def ramp_sample():
            return [(np.arange(20, dtype=np.float32).reshape(4, 5), {"name": "ramp"}, "image")]

        def add_verbs(sub):
            verb = sub.add_parser("count-bright", help="count the voxels of the ramp above a threshold")
            verb.add_argument("threshold", type=float)
            verb.set_defaults(handler=lambda args: print(count_bright(ramp_sample()[0][0], args.threshold)) or 0)
    '''))
    (pkg / "widget.py").write_text(textwrap.dedent('''
        from qtpy.QtWidgets import QLabel

        class ThrowawayPanel(QLabel):
            def __init__(self, napari_viewer):
                super().__init__("throwaway panel")
                self.viewer = napari_viewer
    '''))
    (pkg / "nets.py").write_text(textwrap.dedent('''
        import torch

        def tiny_net(in_channels=1, out_channels=2):
            """The plugin's own architecture: one 3x3 convolution."""
            return torch.nn.Conv2d(in_channels, out_channels, 3, padding=1)
    '''))
    dist = root / f"{PACKAGE}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {PACKAGE}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[medloop.plugins]\nthrowaway = {PACKAGE}\n")
    return pkg


def add_model(pkg: Path) -> None:
    """A packaged 2-D model in the plugin's own resources, built by the plugin's own architecture
    entry (``throwaway_plugin.nets:tiny_net``): weights 0..19 in order, so a load is checkable."""
    import torch

    from tests.models.tiny import tiny_card

    folder = pkg / "resources" / "models" / "tiny-throwaway"
    card = tiny_card("tiny-throwaway", spatial_dims=2)
    card["architecture"] = {"name": f"{PACKAGE}.nets:tiny_net", "kwargs": {"in_channels": 1, "out_channels": 2}}
    weights = {"weight": torch.arange(18.0).reshape(2, 1, 3, 3), "bias": torch.tensor([18.0, 19.0])}
    torch.save(weights, folder / "weights.pt")
    card["weights"]["sha256"] = hashlib.sha256((folder / "weights.pt").read_bytes()).hexdigest()
    (folder / "card.json").write_text(json.dumps(card))


@pytest.fixture(autouse=True)
def forget_throwaway():
    """Each test imports the throw-away package afresh (and leaves nothing of it behind)."""
    import sys

    def forget():
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
            del sys.modules[name]

    forget()
    yield
    forget()


@pytest.fixture
def throwaway(tmp_path, monkeypatch):
    pkg = write_plugin(tmp_path)
    add_model(pkg)
    monkeypatch.syspath_prepend(str(tmp_path))
    return pkg


def test_builtin_plugins_declare_themselves():
    plugins = load_plugins()
    assert [p.name for p in plugins] == ["segmentation", "correction", "review", "interactive", "axons", "staining", "lesions"]
    assert [p.package for p in plugins] == [f"medloop.plugins.{n}" for n in ("segmentation", "correction", "review", "interactive", "axons", "staining", "lesions")]
    assert all(isinstance(p, Plugin) for p in plugins)


def test_throwaway_plugin_is_discovered_with_its_contributions(throwaway):
    assert plugin_packages()[-1] == PACKAGE
    plugin = load_plugins()[-1]
    assert (plugin.name, plugin.package) == ("throwaway", PACKAGE)
    assert service("count-bright")(np.arange(10), 6.5) == 3
    assert resource_dirs("models")[-1] == throwaway / "resources" / "models"
    data, kwargs, kind = resolve(plugin.samples[0].factory)()[0]
    assert (data.shape, float(data.sum()), kwargs["name"], kind) == ((4, 5), 190.0, "ramp", "image")


def test_throwaway_verb_runs_from_the_cli(throwaway, capsys):
    from medloop.app.cli import main

    assert main(["count-bright", "12.5"]) == 0
    assert capsys.readouterr().out == "7\n"  # 13..19 of the 0..19 ramp


def test_throwaway_panel_appears_in_the_manifest_and_home(throwaway, qtbot):
    from napari.components import ViewerModel

    from medloop.app.gui.home import HomePanel
    from medloop.app.manifest import manifest_dict, method_panels

    assert [m.display_name for m in method_panels()] == ["Segmentation", "Correction", "Review", "Click to segment", "Axon tracking", "Stain transfer", "Confocal to H&E", "Normalise stain", "Train stain transfer", "Synthesize lesion", "Anomaly map", "Throwaway"]
    widgets = manifest_dict()["contributions"]["widgets"]
    assert widgets[-1] == {"command": "napari-medloop.throwaway", "display_name": "Throwaway"}
    panel = HomePanel(ViewerModel())
    qtbot.addWidget(panel)
    assert panel.method_list.item(11).text() == "Throwaway"
    assert [panel.sample_list.item(i).text() for i in range(panel.sample_list.count())] == [
        "MNI152 T1 brain, 2 mm, with tissue labels",
        "Synthetic two-photon-like axons (SI preset) with true centrelines",
        "Healthy long-bone radiograph (phantom) for lesion synthesis",
        "FLAIR-like brain slices with lesions (phantom) for anomaly maps", "A 4 x 5 ramp"]


def test_throwaway_model_is_listed_and_loads_checked(throwaway):
    from medloop.models.registry import build_model, get_model, list_models

    entry = get_model("tiny-throwaway")
    assert entry.packaged and entry.folder == throwaway / "resources" / "models" / "tiny-throwaway"
    assert "tiny-throwaway" in [m.name for m in list_models()]
    net = build_model(entry)
    assert type(net).__name__ == "Conv2d" and type(net).__module__ == "torch.nn.modules.conv"
    assert net.weight.flatten().tolist() == list(range(18)) and net.bias.tolist() == [18.0, 19.0]
    (entry.folder / "weights.pt").write_bytes(b"tampered")
    from medloop.app.errors import MedloopError

    with pytest.raises(MedloopError, match="sha256"):
        build_model(get_model("tiny-throwaway"))


def test_without_the_entry_point_nothing_of_it_remains():
    assert PACKAGE not in plugin_packages()
    assert "throwaway" not in [p.name for p in load_plugins()]


def test_a_package_without_a_declaration_is_refused(tmp_path, monkeypatch):
    write_plugin(tmp_path)
    (tmp_path / PACKAGE / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError) as err:
        load_plugins()
    assert str(err.value) == f"plugin package {PACKAGE} has no PLUGIN = Plugin(...) in its __init__.py; declare it there"


@pytest.mark.viewer
def test_home_opens_builtin_and_entry_point_panels_once(throwaway, make_napari_viewer):
    from medloop.app.gui.home import HomePanel

    viewer = make_napari_viewer()
    home = HomePanel(viewer)
    for _ in range(2):  # a second double-click shows the open panel instead of docking another
        home._open_method(home.method_list.item(0))
        home._open_method(home.method_list.item(11))
    docks = viewer.window.dock_widgets
    assert sorted(docks) == ["Segmentation (napari-medloop)", "Throwaway"]
    assert type(docks["Segmentation (napari-medloop)"]).__name__ == "SegmentationPanel"
    assert (type(docks["Throwaway"]).__name__, docks["Throwaway"].text()) == ("ThrowawayPanel", "throwaway panel")
