"""Running the staining methods on images, slides and files (Qt-free): what the verbs and the
panels share, so both check the same inputs, tile the same way and give the same pixels.

* Stain transfer: :func:`transfer_tiling` (checked ``in / keep / stride``), :func:`translate_rgb`
  (an in-memory RGB image through the engine's seam-free tiling) and :func:`translate_slide`
  (one pyramid level to a tiled pyramidal TIFF through ``translate_level``, block by block).
  Both use the same normalisation (uint8 to [-1, 1]) and the same rounding back to uint8, so a
  slide's output equals the in-memory translation of that level pixel for pixel.
* :func:`transfer_file`, :func:`confocal_file`, :func:`despeckle_file`, :func:`normalise_file`:
  one file in, one file out; :class:`TransferTask` runs stain transfer over a cohort.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medloop.app.engine.cohort import Case, CohortProgress, CohortReport, CohortTask, cases_from, run_cohort
from medloop.plugins.staining.checks import StainInputError, check_rgb

#: Tile presets (in, keep, stride) of spec §5: the CPU one and the paper's (de Bel et al.).
TILE_PRESETS: dict[str, tuple[int, int, int]] = {"CPU": (512, 256, 128), "paper": (2048, 1024, 512)}
#: The CLI's direction words and the model's.
DIRECTIONS = {"a2b": "A->B", "b2a": "B->A"}
TIFF_SUFFIXES = (".tif", ".tiff")
Progress = Callable[..., None] | None
ShouldStop = Callable[[], bool] | None


def check_tiles(tile: Sequence[int], multiple: int) -> tuple[int, int, int]:
    """``(in, keep, stride)`` checked against spec §5: keep <= in, (in - keep) even, every size a
    multiple of the generator's ``multiple`` (2**depth), stride <= keep."""
    if len(tile) != 3:
        raise StainInputError(f"tile {tuple(tile)} must be three sizes: in, keep (out), stride")
    t_in, keep, stride = (int(v) for v in tile)
    if min(t_in, keep, stride) <= 0:
        raise StainInputError(f"tile in/keep/stride {t_in}/{keep}/{stride} must all be positive")
    if keep > t_in:
        raise StainInputError(f"tile keep (out) {keep} is larger than tile in {t_in}; keep at most the tile")
    if (t_in - keep) % 2:
        raise StainInputError(f"tile in - keep = {t_in - keep} is odd; the kept centre needs an even margin")
    bad = [v for v in (t_in, keep, stride) if v % multiple]
    if bad:
        raise StainInputError(f"tile sizes {t_in}/{keep}/{stride} must be multiples of {multiple} (2**depth of the generator)")
    if stride > keep:
        raise StainInputError(f"tile stride {stride} is larger than keep {keep}; pixels would be left out")
    return t_in, keep, stride


def generator_multiple(generator: Any) -> int:
    return 2 ** int(getattr(generator, "depth", 0))


def transfer_tiling(generator: Any, tile: Sequence[int] = TILE_PRESETS["CPU"], device: str | None = None,
                    batch_size: int = 1) -> Any:
    """De Bel's kept-centre tiling (pyramid blending, reflect padding) for ``generator``."""
    from medloop.app.engine.tiling import TilingParams

    t_in, keep, stride = check_tiles(tile, generator_multiple(generator))
    dev = None if device in (None, "auto") else device
    return TilingParams(t_in, keep=keep, stride=stride, blend="pyramid", pad_mode="reflect",
                        divisible_by=generator_multiple(generator), batch_size=batch_size, device=dev)


def to_network(rgb: np.ndarray) -> np.ndarray:
    """``(h, w, 3)`` uint8 to ``(3, h, w)`` float32 in [-1, 1] (pixel by pixel: blocks agree)."""
    x = np.ascontiguousarray(np.asarray(rgb).transpose(2, 0, 1), dtype=np.float32)
    x *= np.float32(2 / 255)
    x -= np.float32(1)
    return x


def from_network(y: np.ndarray) -> np.ndarray:
    """``(3, h, w)`` generator output in [-1, 1] to ``(h, w, 3)`` uint8 (the engine's rounding)."""
    from medloop.app.engine.tiling import default_denormalise

    return default_denormalise((np.asarray(y, np.float32) + 1.0) * 0.5)


def rgb_uint8(image: Any, name: str = "image") -> np.ndarray:
    """A 2-D RGB image as ``(H, W, 3)`` uint8, checked (spec §5) before any compute."""
    arr = np.asarray(image)
    if arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[-1] == 3:
        if arr.size == 0:
            raise StainInputError(f"{name} is empty (shape {arr.shape}); give an image with pixels")
        return arr  # the common case, without a float copy of the whole image
    from medloop.plugins.staining.confocal import to_uint8

    unit = check_rgb(arr, name)
    if unit.ndim != 3:
        raise StainInputError(f"{name} has shape {arr.shape}; translate one 2-D RGB image at a time")
    return to_uint8(unit)


def translate_rgb(image: Any, generator: Any, tiling: Any, progress: Progress = None,
                  should_stop: ShouldStop = None, name: str = "image") -> np.ndarray:
    """``image`` (RGB) through ``generator`` with the kept-centre ``tiling``: uint8 ``(H, W, 3)``."""
    from medloop.app.engine.tiling import tiled_inference

    rgb = rgb_uint8(image, name)
    y = tiled_inference(to_network(rgb), generator, tiling, progress, should_stop)
    return from_network(y)


def check_level(image: Any, level: int) -> int:
    """``level`` of a slide's pyramid, or a one-line error naming the range."""
    levels = max(len(image.pyramid), 1)
    if not 0 <= int(level) < levels:
        where = image.path or "the slide"
        raise StainInputError(f"level {level} is out of range for {where}: it has levels 0 to {levels - 1}")
    return int(level)


def level_spacing(image: Any, level: int) -> tuple[float, float]:
    """µm per pixel (x, y) of ``level``: level 0's spacing times the level's downsample."""
    factor = float(image.metadata.get("level_downsamples", (1.0,) * (level + 1))[level])
    return tuple(float(s) * factor for s in image.spacing[:2])  # type: ignore[return-value]


def level_array(image: Any, level: int) -> Any:
    """The lazy ``(H, W, 3)`` array of ``level`` (level 0 of a one-level image)."""
    return image.pyramid[level] if image.pyramid else image.array


def translate_slide(image: Any, level: int, generator: Any, tiling: Any, out_path: str | os.PathLike,
                    progress: Progress = None, should_stop: ShouldStop = None) -> Path:
    """One level of a slide translated into a tiled pyramidal TIFF (memory bounded by blocks)."""
    from medloop.app.engine.tiling import TranslationParams, translate_level

    level = check_level(image, level)
    check_output(out_path, slide=True)
    params = TranslationParams(tiling, normalise=to_network, denormalise=from_network)
    return translate_level(level_array(image, level), generator, out_path, level_spacing(image, level), params,
                           progress, should_stop)


def check_output(path: str | os.PathLike, slide: bool = False) -> Path:
    """An output file whose folder exists; a TIFF for slides (and for images: medloop writes TIFF)."""
    p = Path(path)
    if not p.resolve().parent.is_dir():
        raise StainInputError(f"cannot write {p}: folder {p.parent} does not exist; create it first")
    if slide and p.suffix.lower() not in TIFF_SUFFIXES:
        raise StainInputError(f"a translated slide is written as a tiled pyramidal TIFF; name the output .tif, not {p.name}")
    return p


def transfer_generator(model: str | Path, direction: str) -> tuple[Any, Any]:
    """The loaded stain-transfer model and its generator for ``direction`` ("A->B"/"B->A" or a2b/b2a)."""
    from medloop.plugins.staining.zoo import load_stain_model

    stain = load_stain_model(model)
    return stain, stain.generator(DIRECTIONS.get(direction, direction))


def read_input(path: str | os.PathLike) -> Any:
    """A slide (lazy pyramid, through OpenSlide) or any image medloop reads."""
    from medloop.app.io import slide as slide_io
    from medloop.app.io.read import read_image

    p = Path(path)
    if not p.exists():
        raise StainInputError(f"cannot read {p}: no such file; check the path")
    return slide_io.read_slide(p) if slide_io.is_slide(p) else read_image(p)


@dataclass(frozen=True)
class TransferSettings:
    """Everything a stain-transfer run needs besides the images."""

    model: str = "stain-transfer-ihc"
    direction: str = "A->B"
    tile: tuple[int, int, int] = TILE_PRESETS["CPU"]
    level: int = 0
    device: str | None = None


def transfer_file(src: str | os.PathLike, out: str | os.PathLike, settings: TransferSettings,
                  progress: Progress = None, should_stop: ShouldStop = None) -> dict[str, Any]:
    """An RGB image file or a slide translated into ``out`` (TIFF); every check before compute."""
    from medloop.app.io.write import write_image

    image = read_input(src)
    _, generator = transfer_generator(settings.model, settings.direction)
    tiling = transfer_tiling(generator, settings.tile, settings.device)
    if image.is_multiscale or image.metadata.get("level_downsamples"):
        check_level(image, settings.level)
        check_output(out, slide=True)
        translate_slide(image, settings.level, generator, tiling, out, progress, should_stop)
        shape = tuple(level_array(image, settings.level).shape)
        return {"kind": "slide", "shape": shape, "spacing": level_spacing(image, settings.level), "output": str(out)}
    if settings.level:
        raise StainInputError(f"{src} is one image, not a slide with pyramid levels; leave --level out")
    check_output(out)
    rgb = translate_rgb(image.array, generator, tiling, progress, should_stop, name=str(src))
    write_image(image.with_array(rgb), out)
    return {"kind": "image", "shape": rgb.shape, "spacing": tuple(image.spacing), "output": str(out)}


@dataclass(frozen=True)
class TransferTask(CohortTask):
    """Stain transfer as a cohort task: the model is loaded once per process; ``<id>.tif`` out."""

    settings: TransferSettings

    def fingerprint(self) -> dict[str, Any]:
        from dataclasses import asdict

        from medloop.plugins.staining.zoo import find_stain_model

        card = find_stain_model(self.settings.model)
        return {"task": "stain-transfer", "model": {"name": card.name, "weights_sha256": card.weights_sha256},
                "settings": asdict(self.settings)}

    def run(self, case: Case, state: Any, out_dir: Path) -> dict[str, Any]:
        out = out_dir / f"{case.id}.tif"
        record = transfer_file(case.path, out, self.settings)
        return {"outputs": [out.name], "kind": record["kind"], "shape": list(record["shape"])}


def transfer_cohort(inputs: str | os.PathLike, out_dir: str | os.PathLike, settings: TransferSettings, *,
                    progress: CohortProgress | None = None, **cohort: Any) -> CohortReport:
    """Every image or slide of ``inputs`` (folder or list file) translated into ``out_dir``."""
    transfer_generator(settings.model, settings.direction)  # a bad model or direction fails before any case
    return run_cohort(cases_from(inputs), TransferTask(settings), out_dir, progress=progress, **cohort)


def confocal_file(src: str | os.PathLike, out: str | os.PathLike, fcm_channel: int = 0, despeckle: bool = False) -> dict[str, Any]:
    """A 2-channel confocal image file rendered as pseudo-H&E (uint8 RGB TIFF)."""
    from medloop.app.io.write import write_image
    from medloop.plugins.staining.confocal import ConfocalParams, confocal_to_rgb, split_confocal, to_uint8

    image = read_input(src)
    check_output(out)
    params = ConfocalParams(fcm_index=fcm_channel, percentiles=(1.0, 99.0))
    split_confocal(image.array, params, str(src))  # every check before the model loads
    clean = _despeckler() if despeckle else None
    rgb = to_uint8(confocal_to_rgb(np.asarray(image.array), params, clean, name=str(src)))
    written = _rgb_image(image, rgb)
    write_image(written, out)
    return {"shape": rgb.shape, "spacing": written.spacing}


def _despeckler() -> Callable[[np.ndarray], np.ndarray]:
    from medloop.plugins.staining.zoo import load_stain_model

    model = load_stain_model("stain-despeckle-rcm")
    return lambda rcm: model.despeckle(rcm)


def _rgb_image(image: Any, rgb: np.ndarray) -> Any:
    """``rgb`` on the spatial grid of ``image`` (whose channel axis may come first or last)."""
    from medloop.app.io.image import MedImage

    sp = tuple(image.spacing)  # ITK (x, y, z) order: the array's last axis is x
    if image.ndim == 3 and image.shape[0] == 2:
        spatial = sp[:2]  # (2, H, W): x, y are the image's
    elif image.ndim == 3 and image.shape[-1] == 2 and len(sp) == 3:
        spatial = sp[1:]  # (H, W, 2): x is the channel axis
    else:
        spatial = sp[:2]
    return MedImage.from_array(rgb, spacing=tuple(spatial[:2]), unit=image.unit, channel_axis=True)


def despeckle_file(src: str | os.PathLike, out: str | os.PathLike, model: str = "stain-despeckle-rcm") -> dict[str, Any]:
    """A 2-D reflectance (RCM) image despeckled (float32 in [0, 1], TIFF)."""
    from medloop.app.io.write import write_image
    from medloop.plugins.staining.checks import to_unit
    from medloop.plugins.staining.zoo import load_stain_model

    image = read_input(src)
    check_output(out)
    arr = to_unit(image.array, str(src))
    if arr.ndim != 2:
        raise StainInputError(f"{src} has shape {arr.shape}; despeckling takes one 2-D reflectance image")
    clean = load_stain_model(model).despeckle(arr, name=str(src))
    write_image(image.with_array(clean.astype(np.float32)), out)
    return {"shape": clean.shape}


def normalise_file(src: str | os.PathLike, out: str | os.PathLike, reference: str | os.PathLike,
                   method: str = "macenko") -> dict[str, Any]:
    """An RGB image normalised to a reference image's stain (uint8 RGB TIFF)."""
    from medloop.app.io.write import write_image
    from medloop.plugins.staining.normalise import METHODS, fit_normaliser

    if method not in METHODS:
        raise StainInputError(f"stain normalisation method {method!r} is unknown; choose 'macenko' or 'reinhard'")
    image, ref = read_input(src), read_input(reference)
    check_output(out)
    normaliser = fit_normaliser(np.asarray(ref.array), method, name=str(reference))
    rgb = normaliser.apply(np.asarray(image.array), name=str(src))
    write_image(image.with_array(rgb), out)
    return {"shape": rgb.shape}


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def domain_files(folder: str | os.PathLike, domain: str) -> list[Path]:
    """The image files (png, jpg, tif, bmp) of a training folder, sorted; an error when none."""
    p = Path(folder)
    if not p.is_dir():
        raise StainInputError(f"domain {domain}: {p} is not a folder; choose a folder of RGB images")
    files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise StainInputError(f"domain {domain}: folder {p} has no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def read_domain(items: Sequence[Any], domain: str) -> list[np.ndarray]:
    """The RGB images of one training domain: image files (slides: export regions first) or
    in-memory RGB arrays (e.g. a viewer layer), each checked."""
    images = []
    for i, p in enumerate(items):
        if isinstance(p, np.ndarray):
            images.append(rgb_uint8(p, f"domain {domain} image {i}"))
            continue
        image = read_input(p)
        if image.is_multiscale:
            raise StainInputError(f"domain {domain}: {p} is a whole slide; export tissue regions as images to train on")
        images.append(rgb_uint8(image.array, f"domain {domain} image {p}"))
    if not images:
        raise StainInputError(f"domain {domain} has no images; give at least one image per domain")
    return images


def _describe(items: Sequence[Any]) -> list[str]:
    """What a card records of a domain's images: file paths, or the shape of an in-memory array."""
    return [f"array {'x'.join(str(v) for v in p.shape)}" if isinstance(p, np.ndarray) else str(p) for p in items]


def train_unpaired(domain_a: Sequence[Any], domain_b: Sequence[Any], out_dir: str | os.PathLike,
                   config: Any = None, name: str = "stain-transfer-custom", progress: Progress = None,
                   should_stop: ShouldStop = None, domain_names: tuple[str, str] = ("A", "B")) -> Path:
    """A CycleGAN trained on two unpaired sets of RGB images (file paths or RGB arrays); writes a
    model folder (weights, card, test data) that ``load_stain_model(out_dir)`` opens. All data
    checks run first; ``domain_names`` label A and B on the card."""
    import time

    from medloop.plugins.staining.cards import write_stain_card
    from medloop.plugins.staining.cyclegan import CycleGANConfig, cycle_l1, train_cyclegan, translate
    from medloop.plugins.staining.recipes import _save, _stopped
    from medloop.plugins.staining.sampling import PatchSampler

    config = config or CycleGANConfig()
    a, b = read_domain(domain_a, "A"), read_domain(domain_b, "B")
    masks = ("adaptive", "adaptive")  # brightfield both sides; confocal renderings come as RGB too
    sampler = PatchSampler(a, b, config.patch, config.batch, masks, config.seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result = train_cyclegan(sampler, config, progress, should_stop, str(out / "checkpoint.pt"))
    _stopped(result)
    g, f = result.model["G"], result.model["F"]
    crop = a[0][:64, :64].astype(np.float32) / 255.0
    state = {k: v for k, v in result.model.state_dict().items() if k.split(".", 1)[0] in ("G", "F")}
    files = _save(state, out, crop, translate(crop, g))
    cfg = {**config.as_dict(), "masks": list(masks)}
    recipe = {"name": name, "version": "1", "kind": "stain-transfer",
              "description": f"CycleGAN trained unpaired on {len(a)} domain-A and {len(b)} domain-B images",
              "data": {"domain_a": _describe(domain_a), "domain_b": _describe(domain_b)},
              "train": cfg, "domains": {k: {"name": str(n), "kind": "brightfield"} for k, n in zip("AB", domain_names)},
              "inference": {"multiple_of": config.generator.multiple, "blending": "pyramid"},
              "card": {"networks": ["G (A->B)", "F (B->A)"]}}
    trained = {"config": cfg, "steps": result.steps_done, "files": files, "seconds": round(time.perf_counter() - started, 1),
               "metrics": {"cycle_l1_a": round(cycle_l1(a[0].astype(np.float32) / 255.0, g, f), 4)}}
    command = "medloop stain train --domain-a ... --domain-b ... --out DIR"
    card = write_stain_card(recipe, trained, out, command)
    (out / "checkpoint.pt").unlink(missing_ok=True)
    return card.parent
