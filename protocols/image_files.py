"""image_files — images read from files (Fashion-MNIST by default) under random affine views.

Data (``path``, ``format``; read once, never downloaded)
    ``idx``    a folder of IDX files (LeCun's MNIST format, raw or ``.gz``): every pair
               ``<part>-images-idx3-ubyte[.gz]`` / ``<part>-labels-idx1-ubyte[.gz]``; parts are
               concatenated ``train`` first, then the others by name (Fashion-MNIST: rows 0..59999 are
               ``train``, 60000..69999 ``t10k``). Default: Fashion-MNIST (H. Xiao, K. Rasul & R. Vollgraf
               2017, arXiv 1708.07747; Debian package ``dataset-fashion-mnist``, installed under
               /usr/share/datasets/fashion-mnist): 70,000 grey 28x28 images of 10 classes (0 T-shirt/top,
               1 trouser, 2 pullover, 3 dress, 4 coat, 5 sandal, 6 shirt, 7 sneaker, 8 bag, 9 ankle boot).
    ``folder`` a folder with one sub-folder per class: classes are the sub-folders sorted by name
               (``class_names``), rows follow (class, file name); every file Pillow reads is an image.
    ``npz``    a NumPy ``.npz`` with ``x`` (N, H, W) or (N, H, W, C) and integer classes ``y`` (N,);
               integer pixels in 0..255 (divided by 255) or floats in [0, 1].
    ``auto``   (default) ``npz`` for a file ending ``.npz``, ``idx`` for a folder holding
               ``*-images-idx3-ubyte*``, else ``folder``.
    Integer classes y are the class ids 0..max(y). ``channels`` 1 (grey; folder images are converted
    with Pillow's ``L``) or 3 (RGB). Each image is resized (bilinear, antialiased) so its longer side
    is ``box`` x S (rounded to the parity of S, so it is centred exactly), aspect kept, and zero-padded
    to S x S: the canonical image I0. Every Step's and ProbeSet's ``image`` label is the image's row
    in the data as read (an index into the concatenated files / the npz / the sorted folder).

Views, pools, appearance, actions, streams and probe sets
    The shared affine view model, ``protocols/_affine_views.py`` (the same as ``affine_digits``):
    three stratified pools (train / validation / probe), views A(theta, s, t) x = s R(theta) x + t,
    actions the relative maps a = (sin dtheta, cos dtheta, u_x / T_ref, u_y / T_ref, log ds),
    per-phase overrides of view ranges and ``appearance`` (``blur_noise`` needs ``channels: 1``).
"""
from __future__ import annotations

import functools
import gzip
import math
import re
import struct
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import Tensor

from colsim.config import ConfigError
from colsim.protocols._affine_views import FIXED, AffineViewConfig, AffineViewWorld, place_in_canvas
from colsim.registry import register_world

__all__ = ["ImageFilesConfig", "ImageFiles", "image_files", "read_idx", "read_images", "idx_part_rows",
           "FASHION_MNIST", "FASHION_CLASSES"]

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
FASHION_CLASSES = ("T-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                   "ankle boot")
HOW_TO_GET = ("install Fashion-MNIST with `apt-get install dataset-fashion-mnist`, or set protocol.world.path to "
              "a folder of IDX files, a folder with one sub-folder of images per class, or an .npz with x and y")
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_FILE = re.compile(r"^(?P<part>.+)-(?P<kind>images-idx3|labels-idx1)-ubyte(?P<gz>\.gz)?$")


class ImageFilesConfig(AffineViewConfig):
    """World config: where the images are and how they sit on the canvas, plus the shared view,
    pool and appearance fields (``AffineViewConfig``)."""

    name: Literal["image_files"] = "image_files"
    path: str = Field(FASHION_MNIST, min_length=1, description="IDX folder, class-folder root or .npz file")
    format: Literal["auto", "idx", "folder", "npz"] = "auto"
    channels: Literal[1, 3] = Field(1, description="1: grey, 3: RGB")
    box: float = Field(1.0, gt=0, le=1, description="longer image side on the canvas, as a share of S")

    @model_validator(mode="after")
    def _check_blur(self) -> "ImageFilesConfig":
        if self.appearance == "blur_noise" and self.channels != 1:
            raise ValueError("appearance blur_noise blurs one channel; use channels: 1 or another appearance")
        return self


# ------------------------------------------------------------------------------------------
# readers: arrays of uint8 / float pixels (N, H, W, C) and integer classes (N,)

def read_idx(path: Path) -> np.ndarray:
    """One IDX file (raw or gzip) -> its array (LeCun et al.'s format: 2 zero bytes, a type code,
    the number of dimensions, each size as a big-endian uint32, then the data in C order)."""
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise ConfigError(f"protocol.world.path: cannot read IDX file {path} ({exc})") from None
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in _IDX_DTYPES:
        raise ConfigError(f"protocol.world.path: {path} is not an IDX file (bad magic number)")
    ndim, dtype = data[3], np.dtype(_IDX_DTYPES[data[2]])
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim]) if len(data) >= 4 + 4 * ndim else None
    if shape is None or len(data) != 4 + 4 * ndim + math.prod(shape) * dtype.itemsize:
        raise ConfigError(f"protocol.world.path: {path} is truncated or longer than its header says")
    return np.frombuffer(data, dtype, offset=4 + 4 * ndim).reshape(shape).astype(dtype.newbyteorder("="))


def _idx_parts(root: Path) -> dict[str, dict[str, Path]]:
    """part -> {"images-idx3": path, "labels-idx1": path}; raw files preferred to .gz."""
    parts: dict[str, dict[str, Path]] = {}
    for p in sorted(root.iterdir(), key=lambda p: (p.suffix == ".gz", p.name)):
        m = _IDX_FILE.match(p.name)
        if m and p.is_file():
            parts.setdefault(m["part"], {}).setdefault(m["kind"], p)
    return parts


def _read_idx_folder(root: Path) -> tuple[np.ndarray, np.ndarray]:
    parts = _idx_parts(root)
    if not parts:
        raise ConfigError(f"protocol.world.path: no IDX files (*-images-idx3-ubyte[.gz]) in {root}; {HOW_TO_GET}")
    xs, ys = [], []
    for part in sorted(parts, key=lambda p: (p != "train", p)):
        files = parts[part]
        if len(files) < 2:
            missing = ({"images-idx3", "labels-idx1"} - set(files)).pop()
            raise ConfigError(f"protocol.world.path: {root} has {part}-{next(iter(files))}-ubyte but no "
                              f"{part}-{missing}-ubyte[.gz]; add it or remove the part")
        x, y = read_idx(files["images-idx3"]), read_idx(files["labels-idx1"])
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise ConfigError(f"protocol.world.path: {part} images {x.shape} and labels {y.shape} do not match "
                              f"(want (N, H, W) and (N,))")
        xs.append(x[..., None])
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


def idx_part_rows(path: str) -> dict[str, range]:
    """The rows of each part of an IDX folder in :func:`read_images`' order (``train`` first, then the others by
    name): Fashion-MNIST -> ``{"train": range(0, 60000), "t10k": range(60000, 70000)}``."""
    parts, out, start = _idx_parts(Path(path)), {}, 0
    for part in sorted(parts, key=lambda p: (p != "train", p)):
        n = len(read_idx(parts[part]["labels-idx1"])) if "labels-idx1" in parts[part] else 0
        out[part], start = range(start, start + n), start + n
    return out


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as f:
            if "x" not in f or "y" not in f:
                raise ConfigError(f"protocol.world.path: {path} must hold arrays 'x' (images) and 'y' (classes), "
                                  f"has {sorted(f.files)}")
            x, y = f["x"], f["y"]
    except (OSError, ValueError) as exc:
        raise ConfigError(f"protocol.world.path: cannot read {path} as .npz ({exc})") from None
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or y.ndim != 1 or len(x) != len(y) or len(x) == 0:
        raise ConfigError(f"protocol.world.path: {path}: x must be (N, H, W) or (N, H, W, C) and y (N,), got "
                          f"x {x.shape}, y {y.shape}")
    return x, y


def _read_folder(root: Path, channels: int) -> tuple[list[np.ndarray], np.ndarray, list[str]]:
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise ConfigError("protocol.world.format: reading an image folder needs Pillow (pip install pillow)") from None
    exts = set(Image.registered_extensions())
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    images, labels = [], []
    for k, name in enumerate(classes):
        files = sorted(p for p in (root / name).iterdir() if p.is_file() and p.suffix.lower() in exts)
        if not files:
            raise ConfigError(f"protocol.world.path: class folder {root / name} has no image files; add images or "
                              f"remove the folder")
        for p in files:
            try:
                with Image.open(p) as im:
                    images.append(np.asarray(im.convert("L" if channels == 1 else "RGB")))
            except (OSError, UnidentifiedImageError) as exc:
                raise ConfigError(f"protocol.world.path: cannot read image {p} ({exc})") from None
            labels.append(k)
    if not classes:
        raise ConfigError(f"protocol.world.path: {root} has no class sub-folders; put each class's images in "
                          f"its own folder ({root}/<class>/*.png), or {HOW_TO_GET}")
    return [im if im.ndim == 3 else im[..., None] for im in images], np.asarray(labels), classes


def _format(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    if path.suffix == ".npz":
        return "npz"
    return "idx" if path.is_dir() and _idx_parts(path) else "folder"


@functools.lru_cache(maxsize=4)
def read_images(path: str, fmt: str = "auto", channels: int = 1) -> tuple[list[np.ndarray], np.ndarray, list[str]]:
    """Read a data source -> (images: list of (N_i, H_i, W_i, C) arrays, one per image size, in row
    order; classes (N,) int64; class names). ConfigError (one line, naming ``protocol.world.path``)
    when the files are missing or malformed."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"protocol.world.path: {p} does not exist; {HOW_TO_GET}")
    fmt = _format(p, fmt)
    if fmt in ("idx", "folder") and not p.is_dir():
        raise ConfigError(f"protocol.world.path: {p} is a file; format {fmt} reads a folder")
    if fmt == "folder":
        imgs, y, names = _read_folder(p, channels)
        imgs = _stack_by_size(imgs)
    else:
        x, y = _read_idx_folder(p) if fmt == "idx" else _read_npz(p)
        imgs, names = [x], None
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
        raise ConfigError(f"protocol.world.path: classes y must be integers >= 0, got dtype {y.dtype}, min {y.min()}")
    y = y.astype(np.int64)
    C = imgs[0].shape[-1]
    if C != channels:
        raise ConfigError(f"protocol.world.channels: the images in {p} have {C} channel(s); set channels: {C}")
    for x in imgs:
        if np.issubdtype(x.dtype, np.integer) and (x.min() < 0 or x.max() > 255) or \
                np.issubdtype(x.dtype, np.floating) and (x.min() < 0 or x.max() > 1):
            raise ConfigError(f"protocol.world.path: pixels in {p} must be integers in 0..255 or floats in [0, 1], "
                              f"got {x.dtype} in [{x.min()}, {x.max()}]")
    return imgs, y, names or [str(k) for k in range(int(y.max()) + 1)]


def _canonical(imgs: list[np.ndarray], S: int, box: float, chunk: int = 8192) -> Tensor:
    """Arrays (N_i, H, W, C) in row order -> canonical images (N, C, S, S) float32 (module docstring)."""
    side = S - 2 * round((S - box * S) / 2)  # ~box * S, same parity as S -> exactly centred
    out = []
    for x in imgs:
        scale = 255.0 if np.issubdtype(x.dtype, np.integer) else 1.0
        for i in range(0, len(x), chunk):
            t = torch.tensor(x[i:i + chunk]).permute(0, 3, 1, 2).float() / scale  # (n, C, H, W)
            out.append(place_in_canvas(t, S, side))
    return torch.cat(out).contiguous()


def _stack_by_size(images: list[np.ndarray]) -> list[np.ndarray]:
    """Folder images (H_i, W_i, C) -> runs of consecutive equal-sized images stacked (n, H, W, C), row order kept."""
    runs: list[list[np.ndarray]] = []
    for im in images:
        if runs and runs[-1][0].shape == im.shape:
            runs[-1].append(im)
        else:
            runs.append([im])
    return [np.stack(r) for r in runs]


# ------------------------------------------------------------------------------------------
# world

class ImageFiles(AffineViewWorld):
    """Images from files under random rotation / translation / scale; see the module docstring."""

    fixed = FIXED + ("path", "format", "channels", "box")

    def __init__(self, cfg: ImageFilesConfig):
        imgs, y, self.class_names = read_images(cfg.path, cfg.format, cfg.channels)
        images = _canonical(imgs, cfg.image_size, cfg.box)  # (N, C, S, S)
        super().__init__(cfg, images, torch.tensor(y), len(self.class_names))


@register_world("image_files", ImageFilesConfig)
def image_files(cfg: ImageFilesConfig) -> ImageFiles:
    """Fashion-MNIST (IDX), class folders or .npz under random rotation/translation/scale; actions = relative affine maps.

    One world serves all three pools: streams draw from the train pool, probe sets
    (``probe_set(..., pool=...)``) from the probe or the validation pool.
    """
    return ImageFiles(cfg)
