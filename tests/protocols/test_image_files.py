"""Tests of the image_files world: the IDX / class-folder / npz readers on small files written here,
canonical placement by hand, the shared affine view model, bad input, and Fashion-MNIST where installed."""
from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from typer.testing import CliRunner

import colsim.protocols  # noqa: F401  (registers the worlds)
from colsim.config import ConfigError, load_protocol
from colsim.protocols import _affine_views as av
from colsim.protocols import image_files as imf
from colsim.protocols.affine_digits import AffineDigits
from colsim.protocols.image_files import ImageFiles, ImageFilesConfig, image_files, read_idx
from colsim.registry import WORLDS

HAVE_FASHION = all((Path(imf.FASHION_MNIST) / f"{p}-{k}-ubyte.gz").is_file()
                   for p in ("train", "t10k") for k in ("images-idx3", "labels-idx1"))
needs_fashion = pytest.mark.skipif(not HAVE_FASHION, reason=f"Fashion-MNIST is not installed in {imf.FASHION_MNIST} "
                                   "(apt-get install dataset-fashion-mnist; .ci/run installs it)")


def idx_bytes(arr: np.ndarray) -> bytes:
    """IDX encoding of a uint8 array: 0, 0, type 0x08, ndim, sizes (big-endian uint32), data."""
    return bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(np.uint8).tobytes()


def write_idx(folder: Path, part: str, x: np.ndarray, y: np.ndarray, gz: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for kind, arr in (("images-idx3", x), ("labels-idx1", y)):
        name = folder / f"{part}-{kind}-ubyte{'.gz' if gz else ''}"
        data = idx_bytes(arr)
        name.write_bytes(gzip.compress(data) if gz else data)


def tiny_data(n_per_class=10, classes=2, size=8, seed=0):
    """uint8 images (N, size, size), each with its row number written in pixel (0, 0), and classes (N,)."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(classes), n_per_class)
    x = rng.integers(0, 256, (len(y), size, size), dtype=np.uint8)
    return x, y.astype(np.uint8)


def make(path, **kw) -> ImageFiles:
    imf.read_images.cache_clear()
    return image_files(ImageFilesConfig(path=str(path), **kw))


# ---- readers ---------------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_by_hand(tmp_path, gz):
    x = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    p = tmp_path / ("a.gz" if gz else "a")
    data = bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4]) + bytes(range(24))  # header written by hand
    p.write_bytes(gzip.compress(data) if gz else data)
    out = read_idx(p)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 4) and (out == x).all()
    # big-endian int32 labels: type 0x0C
    q = tmp_path / "b"
    q.write_bytes(bytes([0, 0, 0x0C, 1, 0, 0, 0, 2]) + struct.pack(">2i", 7, 300))
    assert read_idx(q).tolist() == [7, 300]


def test_read_idx_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x00\x08\x01\x00\x00\x00\x02ab")
    with pytest.raises(ConfigError, match=r"^protocol\.world\.path: .* not an IDX file"):
        read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 5]) + b"abc")  # header says 5 bytes, 3 follow
    with pytest.raises(ConfigError, match="truncated"):
        read_idx(short)


def test_idx_folder_world_rows_pools_and_canonical_pixels(tmp_path):
    x1, y1 = tiny_data(10, 2, seed=1)
    x2, y2 = tiny_data(5, 2, seed=2)
    write_idx(tmp_path, "train", x1, y1, gz=True)
    write_idx(tmp_path, "t10k", x2, y2, gz=False)
    w = make(tmp_path, image_size=8, probe_fraction=0.2, validation_fraction=0.2)
    x, y = np.concatenate([x1, x2]), np.concatenate([y1, y2])  # rows: train first, then t10k
    assert w.spec.obs_shape == (1, 8, 8) and w.spec.num_classes == 2 and w.spec.action_dim == 5
    # 15 images per class: probe round(0.2 * 15) = 3, validation 3, train 9
    assert np.bincount(w.probe_labels.numpy()).tolist() == [3, 3]
    assert np.bincount(w.validation_labels.numpy()).tolist() == [3, 3]
    assert np.bincount(w.train_labels.numpy()).tolist() == [9, 9]
    rows = torch.cat([w.train_index, w.validation_index, w.probe_index])
    assert sorted(rows.tolist()) == list(range(30))
    # box 1, S = 8 = the image size: the canonical image is the file's pixels / 255
    assert torch.allclose(w.train_images[:, 0], torch.tensor(x[w.train_index.numpy()], dtype=torch.float32) / 255,
                          atol=1e-6)
    assert torch.equal(w.train_labels, torch.tensor(y, dtype=torch.long)[w.train_index])
    # a stream's image label is the row; with an identity view the obs is that row's image
    s = w.stream(6, 3, None, {"factors": []})
    state, st = s.step(s.init(torch.Generator().manual_seed(0)))
    assert torch.allclose(st.obs[:, 0], torch.tensor(x[st.labels["image"].numpy()], dtype=torch.float32) / 255,
                          atol=1e-5)
    assert torch.equal(st.labels["class"], torch.tensor(y, dtype=torch.long)[st.labels["image"]])


def test_npz_world_places_non_square_images_by_hand(tmp_path):
    x = np.zeros((4, 4, 8), dtype=np.float32)  # (N, H, W): 4 x 8 images
    x[:, 0, 0] = 1.0
    x[:, 3, 7] = 0.5
    y = np.array([0, 0, 1, 1])
    np.savez(tmp_path / "d.npz", x=x, y=y)
    w = make(tmp_path / "d.npz", image_size=8, probe_fraction=0.4, validation_fraction=0.0)
    img = torch.cat([w.train_images, w.probe_images])[:, 0]  # (4, 8, 8)
    # longer side 8 = box: no resize; the 4 rows are centred: rows 2..5, so (0, 0) -> (2, 0), (3, 7) -> (5, 7)
    assert (img[:, 2, 0] == 1.0).all() and (img[:, 5, 7] == 0.5).all()
    assert img.sum((1, 2)).tolist() == [1.5] * 4
    assert w.class_names == ["0", "1"]
    # box 0.5 at S = 8: side 4 -> resized to 2 x 4, centred in rows 3..4, columns 2..5. Antialiased bilinear
    # halving = a tent of radius 2 input px: output pixel 0 (centre 1.0) weighs input pixels 0, 1, 2 (centres 0.5,
    # 1.5, 2.5) by 0.75, 0.75, 0.25 (pixel -1 is off the image), normalised: 3/7 for input pixel 0. A corner pixel
    # lands in the corner output pixel alone, times (3/7)^2 = 9/49
    h = make(tmp_path / "d.npz", image_size=8, box=0.5, probe_fraction=0.4, validation_fraction=0.0)
    im = h.train_images[0, 0]
    assert torch.nonzero(im).tolist() == [[3, 2], [4, 5]]
    assert math.isclose(im[3, 2].item(), 9 / 49, abs_tol=1e-6) and math.isclose(im[4, 5].item(), 4.5 / 49, abs_tol=1e-6)


def test_npz_uint8_and_channels_last(tmp_path):
    x = np.full((6, 8, 8, 3), 51, dtype=np.uint8)  # 51 / 255 = 0.2
    np.savez(tmp_path / "c.npz", x=x, y=np.array([0, 0, 0, 1, 1, 1]))
    w = make(tmp_path / "c.npz", image_size=8, channels=3, validation_fraction=0.0)
    assert w.spec.obs_shape == (3, 8, 8)
    assert torch.allclose(w.train_images, torch.full_like(w.train_images, 0.2))
    ps = w.probe_set(None, 4, 2, torch.Generator().manual_seed(0), {})
    assert ps.obs.shape == (4, 2, 3, 8, 8)
    with pytest.raises(ConfigError, match=r"^protocol\.world\.channels: .* have 3 channel\(s\); set channels: 3"):
        make(tmp_path / "c.npz", image_size=8)


def test_folder_world_classes_rows_and_grey_conversion(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    colours = {"cat": (255, 0, 0), "dog": (0, 0, 255)}  # grey (ITU-R 601-2, PIL "L"): 76 and 29
    for k, (name, rgb) in enumerate(sorted(colours.items())):
        (tmp_path / name).mkdir()
        for i in range(4):
            size = (8, 8) if i < 3 else (4, 8)  # (width, height): the last image is tall and narrow
            Image.new("RGB", size, rgb).save(tmp_path / name / f"{i}.png")
    (tmp_path / "notes.txt").write_text("ignored: not a folder")
    (tmp_path / "cat" / "readme.txt").write_text("ignored: not an image")
    w = make(tmp_path, image_size=8, probe_fraction=0.25, validation_fraction=0.25)
    assert w.class_names == ["cat", "dog"] and w.spec.num_classes == 2 and w.spec.obs_shape == (1, 8, 8)
    imgs = torch.zeros(8, 8, 8)
    for idx, pool in ((w.train_index, w.train_images), (w.validation_index, w.validation_images),
                      (w.probe_index, w.probe_images)):
        imgs[idx] = pool[:, 0]
    # rows: cat/0..3 then dog/0..3; 8 x 8 images fill the canvas with one grey level
    assert torch.allclose(imgs[0], torch.full((8, 8), 76 / 255), atol=1e-6)
    assert torch.allclose(imgs[5], torch.full((8, 8), 29 / 255), atol=1e-6)
    # the 4 x 8 (w x h) image: height 8 = box, width 4, centred in columns 2..5
    assert torch.allclose(imgs[3][:, 2:6], torch.full((8, 4), 76 / 255), atol=1e-6)
    assert imgs[3][:, :2].abs().max() == 0 and imgs[3][:, 6:].abs().max() == 0
    rgb = make(tmp_path, image_size=8, channels=3, probe_fraction=0.25, validation_fraction=0.25)
    assert rgb.spec.obs_shape == (3, 8, 8)
    col = torch.zeros(8, 3)  # each row's centre pixel, (R, G, B)
    for idx, pool in ((rgb.train_index, rgb.train_images), (rgb.validation_index, rgb.validation_images),
                      (rgb.probe_index, rgb.probe_images)):
        col[idx] = pool[:, :, 4, 4]
    assert col.tolist() == [[1.0, 0.0, 0.0]] * 4 + [[0.0, 0.0, 1.0]] * 4


# ---- bad input -------------------------------------------------------------------------------

def test_missing_files_say_how_to_get_them(tmp_path):
    for path in (tmp_path / "nowhere", tmp_path):  # a missing path; an empty folder (no classes, no IDX)
        with pytest.raises(ConfigError) as e:
            make(path)
        msg = str(e.value)
        assert msg.startswith("protocol.world.path: ") and "\n" not in msg
        assert "apt-get install dataset-fashion-mnist" in msg and "protocol.world.path" in msg
    with pytest.raises(ConfigError, match=r"^protocol\.world\.path: no IDX files"):
        make(tmp_path, format="idx")


def test_bad_folders_and_arrays(tmp_path):
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(ConfigError, match=r"^protocol\.world\.path: class folder .*empty_class has no image files"):
        make(tmp_path, format="folder")
    x, y = tiny_data(4, 2)
    write_idx(tmp_path / "idx", "train", x, y, gz=False)
    (tmp_path / "idx" / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(ConfigError, match=r"train-images-idx3-ubyte but no train-labels-idx1-ubyte"):
        make(tmp_path / "idx")
    np.savez(tmp_path / "k.npz", images=x, y=y)
    with pytest.raises(ConfigError, match=r"must hold arrays 'x' \(images\) and 'y'"):
        make(tmp_path / "k.npz")
    np.savez(tmp_path / "f.npz", x=x.astype(np.float32), y=y)  # floats above 1
    with pytest.raises(ConfigError, match=r"integers in 0\.\.255 or floats in \[0, 1\]"):
        make(tmp_path / "f.npz")
    np.savez(tmp_path / "y.npz", x=x, y=y.astype(np.float32))
    with pytest.raises(ConfigError, match=r"classes y must be integers"):
        make(tmp_path / "y.npz")
    with pytest.raises(ValidationError):
        ImageFilesConfig(channels=3, appearance="blur_noise")
    with pytest.raises(ValidationError):
        ImageFilesConfig(box=0.0)


def test_cli_exits_2_with_one_line_when_files_are_missing(tmp_path):
    from _tiny import TINY
    from colsim.cli import app

    sets = [a for s in TINY for a in ("--set", s)]
    res = CliRunner().invoke(app, ["validate", "protocols/fashion_nonstationary.yaml", *sets,
                                   "--set", f"protocol.world.path={tmp_path / 'none'}"])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "protocol.world.path" in lines[0] and "dataset-fashion-mnist" in lines[0]


# ---- the shared view model -----------------------------------------------------------------

def test_views_come_from_the_shared_affine_model(tmp_path):
    """Same code, not a copy: both worlds' methods are the shared module's; the same geometry applies."""
    for meth in ("stream", "probe_set", "check_phase", "apply_action"):
        assert getattr(ImageFiles, meth) is getattr(av.AffineViewWorld, meth) is getattr(AffineDigits, meth)
    x, y = tiny_data(12, 3, size=16)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    w = make(tmp_path / "d.npz", image_size=16)
    assert w.shift_unit == 7 * 16 / 28
    st = w.stream(8, 4, [0, 2], {})
    state = st.init(torch.Generator().manual_seed(0))
    for _ in range(5):
        state, step = st.step(state)
        canon = torch.cat([w.train_images, w.validation_images, w.probe_images])[
            torch.argsort(torch.cat([w.train_index, w.validation_index, w.probe_index]))]
        assert torch.equal(step.obs, av._warp(canon[step.labels["image"]], step.labels["angle"], step.labels["scale"],
                                              step.labels["shift"]))
        assert set(step.labels["class"].tolist()) <= {0, 2}
    with pytest.raises(ConfigError, match=r"^protocol\.phases\[1\]\.world\.path: cannot change per phase"):
        w.check_phase([0], {"path": "/elsewhere"}, where="protocol.phases[1]")
    ps = w.probe_set([1], 6, 3, torch.Generator().manual_seed(0), {"appearance": "invert", "rotation": 10})
    plain = w.probe_set([1], 6, 3, torch.Generator().manual_seed(0), {"rotation": 10})
    assert ps.labels["angle"].abs().max() <= math.radians(10) + 1e-6 and torch.equal(ps.obs, 1 - plain.obs)


def test_registered():
    e = WORLDS["image_files"]
    assert e.config is ImageFilesConfig and "Fashion-MNIST" in e.summary


# ---- Fashion-MNIST (the installed Debian package) ------------------------------------------

@needs_fashion
def test_fashion_mnist_world():
    w = make(imf.FASHION_MNIST, image_size=16)
    assert w.spec.num_classes == 10 and w.spec.obs_shape == (1, 16, 16)
    n = len(w.train_index) + len(w.validation_index) + len(w.probe_index)
    assert n == 70_000  # 60,000 train + 10,000 t10k rows
    # 7,000 images per class: probe round(0.3 * 7000) = 2100, validation 1050, train 3850
    assert np.bincount(w.probe_labels.numpy()).tolist() == [2100] * 10
    assert np.bincount(w.validation_labels.numpy()).tolist() == [1050] * 10
    assert np.bincount(w.train_labels.numpy()).tolist() == [3850] * 10
    labels = np.concatenate([read_idx(Path(imf.FASHION_MNIST) / f"{p}-labels-idx1-ubyte.gz") for p in ("train", "t10k")])
    assert labels[0] == 9  # the first training image is an ankle boot
    ps = w.probe_set([8, 9], 20, 2, torch.Generator().manual_seed(0), {})
    assert (ps.labels["class"].numpy() == labels[ps.labels["image"].numpy()]).all()
    assert ps.obs.shape == (20, 2, 1, 16, 16) and 0 <= ps.obs.min() and ps.obs.max() <= 1


def test_fashion_protocol_is_nonstationary_on_fashion_mnist():
    base, p = load_protocol("nonstationary"), load_protocol("fashion_nonstationary")
    for key in ("stream", "evaluation", "record", "model"):
        assert p[key] == base[key], key
    assert p["world"]["name"] == "image_files" and p["world"]["image_size"] == 32
    assert p["world"]["path"] == imf.FASHION_MNIST
    assert [ph["classes"] for ph in p["phases"]] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert [ph["steps"] for ph in p["phases"]] == [ph["steps"] for ph in base["phases"]]


def test_list_worlds_shows_labels_and_action_encoding(tmp_path):
    from colsim.cli import app
    from colsim.protocols.affine_digits import AffineDigitsConfig, affine_digits

    x, y = tiny_data(6, 2, size=8)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    for world in (make(tmp_path / "d.npz", image_size=8), affine_digits(AffineDigitsConfig(image_size=8))):
        s = world.stream(2, 3, None, {})
        _, st = s.step(s.init(torch.Generator().manual_seed(0)))
        assert set(st.labels) == set(type(world.cfg).LABELS)  # the listed labels are the ones a Step carries
        assert len(world.spec.action_names) == 5 and "5-d" in type(world.cfg).ACTION_ENCODING
    res = CliRunner().invoke(app, ["list", "worlds"], env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    rows = {ln.split("│")[1].strip(): ln for ln in res.output.splitlines() if ln.count("│") >= 4}
    for name in ("affine_digits", "image_files"):
        assert "class, image, angle, shift, scale, episode" in rows[name] and "sin dθ" in rows[name]
