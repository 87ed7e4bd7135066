"""Grad-CAM overlays of a run's images from its best checkpoint: `dermlow explain` and the case view.

The image goes through exactly the evaluation pipeline of the run (colour constancy, resize,
centre crop, the model's normalisation), so the map shows what the network saw; the overlay is
drawn on that network input. Overlays are cached as PNG under RUN/.cache/saliency/<key>/, where the
key hashes best.pt's size and modification time and the target layer: a new best checkpoint (or
another layer) gets a new folder, and an unchanged one is never recomputed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from dermlow.config import ModelConfig, resolve, upgrade
from dermlow.data.array_manifest import ArraySet
from dermlow.data.prepare import DATASETS, build_datasets
from dermlow.data.transforms import normalisation_from_timm
from dermlow.errors import UserError
from dermlow.evidence.saliency import default_layer, grad_cam, overlay, resolve_layer
from dermlow.models.factory import create_model
from dermlow.rundir import files
from dermlow.rundir.reader import read_manifest
from dermlow.training.loop import to_input

log = logging.getLogger(__name__)

CACHE_VERSION = 1
TARGETS = ("predicted", "given")


def _numpy_globals() -> list:
    """What the RNG states inside a dermlow checkpoint need beyond tensors (numpy arrays and dtypes)."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return [_reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32)), type(np.dtype(np.float64))]


def load_weights_only(path: Path) -> dict:
    """A checkpoint through torch.load(weights_only=True): tensors, containers, numbers, strings
    and numpy arrays only, never arbitrary objects (checkpoints are untrusted files)."""
    if not path.is_file():
        raise UserError(f"{path} does not exist: the run has not finished an epoch yet.")
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a damaged file, or one that needs unsafe unpickling
        raise UserError(f"{path} cannot be loaded as a plain-data checkpoint ({type(err).__name__}: "
                        f"{str(err)[:200]}).") from None
    if not isinstance(ckpt, dict) or not {"model", "config", "classes"} <= set(ckpt):
        raise UserError(f"{path} is not a dermlow checkpoint (needs model, config and classes).")
    return ckpt


@dataclass
class Explanation:
    """One Grad-CAM overlay and what it explains."""

    image_id: str
    target: str  # "predicted" | "given"
    target_class: int
    given: int
    predicted: int
    probs: list[float]
    layer: str
    overlay: np.ndarray  # uint8 RGB
    seconds: float  # time to compute it (0.0 when read from the cache)
    cached: bool
    path: Path | None  # the cached PNG


class Explainer:
    """A run's best checkpoint, loaded once, that explains images of the run by id."""

    def __init__(self, run_dir: str | Path, *, layer: str | None = None, cache: bool = True):
        self.run_dir = Path(run_dir)
        checkpoint = self.run_dir / files.BEST
        ckpt = load_weights_only(checkpoint)
        self.cfg = resolve(upgrade(ckpt["config"]))  # run folders from before typed option sections too
        self.cfg.data.cache_dir = None  # one image at a time: preprocess directly, leave the image cache alone
        self.codes = [str(c) for c in ckpt["classes"]["codes"]]
        model_cfg = ModelConfig(**{**self.cfg.model.__dict__, "pretrained": False, "weights": None})
        self.net = create_model(model_cfg, len(self.codes), in_chans=int(ckpt.get("in_chans", 3)))
        try:
            self.net.load_state_dict(ckpt["model"])
        except RuntimeError as err:
            raise UserError(f"{checkpoint}: its weights do not fit {self.cfg.model.name} ({str(err)[:200]}).") from None
        self.net.eval()
        self.layer = layer or self.cfg.model.saliency_layer or default_layer(self.cfg.model.name, self.net)
        self.module = resolve_layer(self.net, self.layer)
        self.normalisation = normalisation_from_timm(self.net)
        self.manifest = read_manifest(self.run_dir)
        st = checkpoint.stat()
        key = hashlib.blake2b(f"{st.st_size}:{st.st_mtime_ns}:{self.layer}:{CACHE_VERSION}".encode(), digest_size=8)
        self.cache_dir = self.run_dir / ".cache" / "saliency" / key.hexdigest() if cache else None

    def network_input(self, image_id: str) -> tuple[torch.Tensor, np.ndarray, int]:
        """(normalised input (1, C, H, W), the same image as uint8 HxW(x3), given label) of one image,
        through the run's evaluation pipeline."""
        rows = self.manifest[self.manifest["image_id"] == image_id]
        if rows.empty:
            raise UserError(f"image id '{image_id}' is not in {self.run_dir / files.MANIFEST}.")
        one = rows.iloc[:1].assign(split="test")  # "test": the evaluation transform, whatever its split
        if isinstance(DATASETS.get(self.cfg.data.dataset), ArraySet):  # arrays normalise with training statistics
            one = pd.concat([self.manifest[self.manifest["split"] == "train"], one], ignore_index=True)
        dataset = build_datasets(self.cfg.data, one, seed=self.cfg.run.seed, mean=self.normalisation[0],
                                 std=self.normalisation[1])["test"]
        x, label, _ = dataset[0]
        if x.dtype == torch.uint8:
            shown = x.permute(1, 2, 0).numpy()
        else:  # ArrayDataset: float, normalised with its own statistics
            std, mean = dataset.std.reshape(-1, 1, 1), dataset.mean.reshape(-1, 1, 1)
            shown = (np.clip((x * std + mean).permute(1, 2, 0).numpy(), 0, 1) * 255).astype(np.uint8)
        shown = shown[..., 0] if shown.shape[2] == 1 else shown
        return to_input(x[None], torch.device("cpu"), self.normalisation), shown, int(label)

    def _cached(self, image_id: str, target: str) -> tuple[Path, Path] | None:
        if self.cache_dir is None:
            return None
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", image_id)[:80]
        digest = hashlib.blake2b(image_id.encode(), digest_size=4).hexdigest()
        stem = self.cache_dir / f"{safe}-{digest}-{target}"
        return stem.with_suffix(".png"), stem.with_suffix(".json")

    def explain(self, image_id: str, target: str = "predicted") -> Explanation:
        """Grad-CAM overlay of `image_id` for its predicted class or its given label (cached)."""
        if target not in TARGETS:
            raise UserError(f"--target must be one of {', '.join(TARGETS)}, got '{target}'.")
        paths = self._cached(image_id, target)
        if paths and paths[0].is_file() and paths[1].is_file():
            hit = self._read(image_id, target, *paths)
            if hit is not None:
                return hit
        t0 = time.perf_counter()
        x, shown, given = self.network_input(image_id)
        cam, probs = grad_cam(self.net, x, None if target == "predicted" else given, self.module)
        predicted = int(probs.argmax())
        cls = predicted if target == "predicted" else given
        picture = overlay(shown, cam)
        seconds = time.perf_counter() - t0
        out = Explanation(image_id, target, cls, given, predicted, [float(p) for p in probs], self.layer, picture,
                          seconds, False, paths[0] if paths else None)
        if paths:
            self._write(out, *paths)
        return out

    def _read(self, image_id: str, target: str, png: Path, meta: Path) -> Explanation | None:
        try:
            info = json.loads(meta.read_text())
            with Image.open(png) as im:
                picture = np.asarray(im.convert("RGB"))
            return Explanation(image_id, target, int(info["target_class"]), int(info["given"]),
                               int(info["predicted"]), [float(p) for p in info["probs"]], self.layer, picture,
                               0.0, True, png)
        except (OSError, ValueError, KeyError, TypeError) as err:
            log.warning("ignoring the unreadable saliency cache %s (%s)", png, err)
            return None

    def _write(self, e: Explanation, png: Path, meta: Path) -> None:
        try:
            files.atomic_write(png, lambda f: Image.fromarray(e.overlay).save(f, format="PNG"))
            files.write_json(meta, {"image_id": e.image_id, "target": e.target, "target_class": e.target_class,
                                    "given": e.given, "predicted": e.predicted, "probs": e.probs, "layer": e.layer})
        except OSError as err:
            log.warning("could not cache the saliency map in %s (%s)", png.parent, err)


def explain_image(run_dir: str | Path, image_id: str, *, target: str = "predicted", layer: str | None = None,
                  out: str | Path | None = None) -> Explanation:
    """`dermlow explain`: the overlay of one image, also written to `out` (PNG) when given."""
    explanation = Explainer(run_dir, layer=layer).explain(image_id, target)
    if out is not None:
        files.atomic_write(Path(out), lambda f: Image.fromarray(explanation.overlay).save(f, format="PNG"))
    return explanation
