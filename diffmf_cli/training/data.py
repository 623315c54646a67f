"""Training data: registered pairs held in memory, and random crops that depend only on (seed, step).

A *source* is one set of pairs: two folders paired by file stem (the rules of ``diffmf_cli.io.pairs``) or a
CSV pair list. Every image is decoded once and kept as its raw array (uint8/uint16); a crop is converted to
float only when drawn. The IR (or MRI) image becomes one channel (``to_gray``); the visible (or CT/PET/SPECT)
image becomes its luminance Y as ``diffmf_cli.io.images.rgb_to_ycrcb`` computes it (OpenCV's YCrCb, as at
inference), a gray file is its own Y.

Batch ``step`` is drawn with a NumPy generator seeded by ``(seed, step)`` alone, so the data order needs no
state of its own: a resumed run sees exactly the batches an uninterrupted run sees. Per sample: a source
(by the source weights), an image of it (uniformly), with ``scale_jitter`` on a window scale, a crop position
(uniformly), and one of the 8 flips/90° rotations, the same for both modalities; with ``gamma_jitter`` on, then
one gamma per modality.

Default source weights (**ours**): proportional to the square root of each source's pixel count, so a source
of 4 images is not drowned by one of 171 nor one of 32 big images, yet bigger sources still count more.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from diffmf_cli.errors import InputError, UsageError
from diffmf_cli.io.images import is_gray, read_image, rgb_to_ycrcb, to_float, to_gray
from diffmf_cli.io.pairs import Pair, pair_folders, read_pair_list
from diffmf_cli.training.losses import TERM_WEIGHTS, is_number


@dataclass(frozen=True)
class SourceSpec:
    """Where one source's pairs come from: ``ir`` + ``vis`` folders, or a ``pairs`` CSV list.

    ``weight``: relative sampling weight, or None for the default (sqrt of the source's pixel count).
    ``loss_scale``: factors on loss terms for this source's crops only (``{"scd": 0.5}`` halves the SCD term's
    weight on them), or None; terms not named keep their weight. TOML only (``loss_scale = { scd = 0.5 }``).
    """

    ir: str | None = None
    vis: str | None = None
    pairs: str | None = None
    weight: float | None = None
    loss_scale: dict[str, float] | None = None

    def __post_init__(self):
        folders = self.ir is not None or self.vis is not None
        if folders == (self.pairs is not None) or (folders and (self.ir is None or self.vis is None)):
            raise UsageError("a training source is either an --ir/--vis folder pair or a --pairs CSV list")
        if self.weight is not None and not (self.weight > 0 and math.isfinite(self.weight)):
            raise UsageError(f"source weight must be a positive number, got {self.weight}")
        if self.loss_scale is not None:
            check_loss_scale(self.loss_scale)

    @property
    def label(self) -> str:
        return self.pairs if self.pairs is not None else f"{self.ir} + {self.vis}"

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict) -> SourceSpec:
        unknown = set(d) - {"ir", "vis", "pairs", "weight", "loss_scale"}
        if unknown:
            raise UsageError(f"unknown keys in a training source: {sorted(unknown)}")
        weight = d.get("weight")
        return cls(
            ir=None if d.get("ir") is None else str(d["ir"]),
            vis=None if d.get("vis") is None else str(d["vis"]),
            pairs=None if d.get("pairs") is None else str(d["pairs"]),
            weight=None if weight is None else float(weight),
            loss_scale=d.get("loss_scale"),
        )


def check_loss_scale(scale: dict) -> None:
    """UsageError unless `scale` is a dict of loss term names to finite factors >= 0."""
    if not isinstance(scale, dict):
        raise UsageError(f"a source's loss_scale must be a table of term = factor, got {scale!r}")
    for term, factor in scale.items():
        if term not in TERM_WEIGHTS:
            raise UsageError(f"unknown loss term {term!r} in a source's loss_scale (terms: {', '.join(TERM_WEIGHTS)})")
        if not (is_number(factor) and factor >= 0 and math.isfinite(factor)):
            raise UsageError(f"loss_scale {term} must be a number >= 0, got {factor!r}")


def list_source_pairs(spec: SourceSpec) -> list[Pair]:
    """The pairs of one source, sorted by name; UsageError when it has none or a folder is missing."""
    if spec.pairs is not None:
        pairs = read_pair_list(spec.pairs)
    else:
        for folder in (spec.ir, spec.vis):
            if not Path(folder).is_dir():
                raise UsageError(f"{folder}: training folder does not exist")
        pairs = pair_folders(spec.ir, spec.vis).pairs
    if not pairs:
        raise UsageError(f"{spec.label}: no image pairs found")
    return sorted(pairs, key=lambda p: p.name)


@dataclass
class PairImages:
    """One pair in memory: ``ir`` raw (H, W); ``vis`` raw (H, W) or (H, W, 3) RGB; same H, W."""

    name: str
    ir: np.ndarray
    vis: np.ndarray


def load_pair(pair: Pair) -> PairImages:
    """Decode a pair (as stored: padding to a crop size is `load_sources`' business)."""
    ir = to_gray(read_image(pair.ir))
    vis = read_image(pair.vis)
    if ir.shape[:2] != vis.shape[:2]:
        raise InputError(f"{pair.ir}: size {ir.shape[1]}x{ir.shape[0]} differs from {pair.vis} "
                         f"({vis.shape[1]}x{vis.shape[0]}); pairs must be registered")
    return PairImages(pair.name, ir, vis)


def _pad_to(img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape[:2]
    if h >= size and w >= size:
        return img
    ph, pw = max(0, size - h), max(0, size - w)
    pad = [(ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)] + [(0, 0)] * (img.ndim - 2)
    mode = "reflect" if min(h, w) > 1 and ph < h and pw < w else "edge"
    return np.pad(img, pad, mode=mode)


def luminance(vis_raw: np.ndarray) -> np.ndarray:
    """Raw visible crop -> float32 (H, W) Y in [0, 1]: OpenCV YCrCb on float RGB, and a gray (or R=G=B)
    image is its own Y, exactly as ``diffmf_cli.fusion`` prepares the visible input at inference."""
    if is_gray(vis_raw):
        return to_float(to_gray(vis_raw))
    return rgb_to_ycrcb(to_float(vis_raw))[0]


def default_source_weights(sources: list[list[PairImages]]) -> list[float]:
    """sqrt(total pixels) of each source, normalised to sum to 1."""
    raw = [math.sqrt(sum(p.ir.shape[0] * p.ir.shape[1] for p in src)) for src in sources]
    total = sum(raw)
    return [r / total for r in raw]


def check_jitter(name: str, value) -> None:
    """UsageError unless ``value`` is a number in [0, 1] (a training setting: TOML, command line or code)."""
    if not (is_number(value) and 0 <= value <= 1):
        raise UsageError(f"{name} must be a number in [0, 1], got {value!r}")


def _log_uniform(rng: np.random.Generator, jitter: float) -> float:
    """A factor in [1/(1+jitter), 1+jitter], uniform in its logarithm."""
    span = math.log1p(jitter)
    return math.exp(rng.uniform(-span, span))


class CropSampler:
    """Random training crops, a pure function of ``(seed, step)``.

    ``batch(step, batch_size)`` -> ``(ir, vis_y)``, each a float32 tensor (B, 1, crop, crop) in [0, 1].
    ``scale_jitter`` j > 0 rescales each crop: a square window of side ``crop·s`` (s log-uniform in
    [1/(1+j), 1+j], at most the image) resized to ``crop`` (bilinear up, area down), so the model also sees
    edges that have been resampled, as in images that were resized or re-saved before they reach it.
    ``gamma_jitter`` G > 0 raises each modality's crop to its own power g (log-uniform in [1/(1+G), 1+G]):
    darker or brighter renderings of the same scene, as other scanners, sequences or exposures give.
    """

    def __init__(self, sources: list[list[PairImages]], crop: int, seed: int,
                 weights: list[float | None] | None = None, scale_jitter: float = 0.0,
                 gamma_jitter: float = 0.0):
        if not sources or any(not s for s in sources):
            raise UsageError("every training source needs at least one pair")
        if crop < 8:
            raise UsageError(f"crop size must be at least 8, got {crop}")
        check_jitter("scale-jitter", scale_jitter)
        check_jitter("gamma-jitter", gamma_jitter)
        self.sources = sources
        self.crop = crop
        self.seed = seed
        self.scale_jitter = scale_jitter
        self.gamma_jitter = gamma_jitter
        defaults = default_source_weights(sources)
        given = list(weights) if weights is not None else [None] * len(sources)
        if len(given) != len(sources):
            raise ValueError("one weight per source")
        if all(w is None for w in given):
            chosen = defaults
        elif any(w is None for w in given):
            raise UsageError("give a sampling weight to every training source or to none")
        else:
            chosen = [float(w) for w in given]
        total = sum(chosen)
        # Weights that already sum to 1 (the defaults, or those recorded in a run folder) are used as given,
        # so a resumed run samples with bitwise the probabilities the run started with.
        if abs(total - 1.0) > 1e-9:
            chosen = [w / total for w in chosen]
        self.weights = np.array(chosen, dtype=np.float64)

    def batch(self, step: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        ir, vis, _ = self.batch_with_sources(step, batch_size)
        return ir, vis

    def batch_with_sources(self, step: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """The batch of `step` and, per crop, the index of the source it came from."""
        rng = np.random.default_rng([self.seed, step])
        c = self.crop
        ir_out = np.empty((batch_size, 1, c, c), dtype=np.float32)
        vis_out = np.empty((batch_size, 1, c, c), dtype=np.float32)
        origin = np.empty(batch_size, dtype=np.int64)
        for i in range(batch_size):
            origin[i] = int(rng.choice(len(self.sources), p=self.weights))
            src = self.sources[origin[i]]
            pair = src[int(rng.integers(len(src)))]
            h, w = pair.ir.shape[:2]
            side = c
            if self.scale_jitter:  # drawn only when on: runs without it keep their crops
                side = min(h, w, max(8, round(c * _log_uniform(rng, self.scale_jitter))))
            y = int(rng.integers(h - side + 1))
            x = int(rng.integers(w - side + 1))
            k = int(rng.integers(4))
            flip = bool(rng.integers(2))
            ir = to_float(pair.ir[y:y + side, x:x + side])
            vis = luminance(pair.vis[y:y + side, x:x + side])
            if side != c:
                ir, vis = _resize(ir, c), _resize(vis, c)
            if self.gamma_jitter:  # drawn last, and only when on
                ir = ir ** np.float32(_log_uniform(rng, self.gamma_jitter))
                vis = vis ** np.float32(_log_uniform(rng, self.gamma_jitter))
            ir_out[i, 0] = _dihedral(ir, k, flip)
            vis_out[i, 0] = _dihedral(vis, k, flip)
        return torch.from_numpy(ir_out), torch.from_numpy(vis_out), origin


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    """float32 (H, W) in [0, 1] -> (size, size): bilinear when enlarging, area averaging when shrinking."""
    mode = cv2.INTER_LINEAR if size > img.shape[0] else cv2.INTER_AREA
    return np.clip(cv2.resize(img, (size, size), interpolation=mode), 0.0, 1.0)


def _dihedral(img: np.ndarray, k: int, flip: bool) -> np.ndarray:
    out = np.rot90(img, k)
    return out[:, ::-1] if flip else out


def load_sources(specs: list[SourceSpec], crop: int,
                 listed: list[list[Pair]] | None = None) -> tuple[list[list[PairImages]], list[list[Pair]]]:
    """Decode every pair of every source (`listed`: their pairs when the caller has already listed them),
    padded to at least ``crop``. UsageError when a source has no image whose smaller side is half the crop or
    more: its crops would be mostly padding (more than 3/4 of each), and a crop far beyond the images only
    costs memory (a 4000 crop of 480x640 images ran a machine out)."""
    if listed is None:
        listed = [list_source_pairs(spec) for spec in specs]
    images = [[load_pair(p) for p in pairs] for pairs in listed]
    for spec, source in zip(specs, images):
        side = max(min(im.ir.shape[:2]) for im in source)
        if crop > 2 * side:
            raise UsageError(f"--crop {crop}: no image of {spec.label} has a smaller side above {side} pixels; "
                             f"crops would be mostly padding (give --crop {2 * side} or less)")
        for i, im in enumerate(source):  # in place: the unpadded images are not kept beside the padded ones
            source[i] = PairImages(im.name, _pad_to(im.ir, crop), _pad_to(im.vis, crop))
    return images, listed


def hold_out(images: list[list[PairImages]], listed: list[list[Pair]], n: int):
    """Take ``n`` pairs out of the training sources for validation.

    One at a time from the source with the most pairs left (so small sources keep theirs), the pair with the
    smallest SHA-1 of its name first: the choice depends on the names only. Every source keeps at least one
    pair. Returns ``(images, listed, held)`` with ``held`` the removed PairImages.
    """
    images = [list(src) for src in images]
    listed = [list(src) for src in listed]
    order = [sorted(range(len(src)), key=lambda i, src=src: hashlib.sha1(src[i].name.encode()).hexdigest())
             for src in images]
    taken: list[set[int]] = [set() for _ in images]
    for _ in range(n):
        left = [len(src) - len(t) for src, t in zip(images, taken)]
        k = max(range(len(images)), key=lambda j: (left[j], -j))
        if left[k] <= 1:
            raise UsageError(f"cannot hold out {n} validation pairs: every source must keep one training pair")
        taken[k].add(next(i for i in order[k] if i not in taken[k]))
    held = [images[k][i] for k in range(len(images)) for i in sorted(taken[k])]
    images = [[p for i, p in enumerate(src) if i not in taken[k]] for k, src in enumerate(images)]
    listed = [[p for i, p in enumerate(src) if i not in taken[k]] for k, src in enumerate(listed)]
    return images, listed, held
