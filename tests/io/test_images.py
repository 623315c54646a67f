"""Image reading/writing and colour conversion (diffmf_cli.io.images), checked against PIL and
hand-written formulas."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from diffmf_cli.errors import InputError
from diffmf_cli.io.images import (
    from_float,
    is_gray,
    read_gray_float,
    read_image,
    rgb_to_ycrcb,
    to_float,
    to_gray,
    write_image,
    ycrcb_to_rgb,
)

RNG = np.random.default_rng(0)


def rand(shape, dtype=np.uint8):
    top = 65535 if dtype == np.uint16 else 255
    return RNG.integers(0, top + 1, size=shape, dtype=np.int64).astype(dtype)


@pytest.mark.parametrize("ext", [".png", ".bmp", ".tif"])
def test_roundtrip_8bit_gray_and_rgb(tmp_path, ext):
    for img in (rand((7, 9)), rand((7, 9, 3))):
        path = tmp_path / f"x{img.ndim}{ext}"
        write_image(path, img)
        np.testing.assert_array_equal(read_image(path), img)


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_roundtrip_16bit(tmp_path, ext):
    for img in (rand((5, 6), np.uint16), rand((5, 6, 3), np.uint16)):
        path = tmp_path / f"x{img.ndim}{ext}"
        write_image(path, img)
        got = read_image(path)
        assert got.dtype == np.uint16
        np.testing.assert_array_equal(got, img)


def test_rgb_order_matches_pil(tmp_path):
    img = rand((6, 8, 3))
    Image.fromarray(img, "RGB").save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), img)
    write_image(tmp_path / "b.png", img)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "b.png")), img)


def test_alpha_dropped(tmp_path):
    rgba = rand((4, 5, 4))
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"), rgba[:, :, :3])
    la = rand((4, 5, 2))
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    got = read_image(tmp_path / "la.png")
    assert got.shape == (4, 5, 3) or got.shape == (4, 5)
    np.testing.assert_array_equal(to_gray(got), la[:, :, 0])


def test_palette_and_one_bit_files(tmp_path):
    rgb = rand((6, 6, 3))
    pal = Image.fromarray(rgb).convert("P")
    pal.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_image(tmp_path / "p.png"), np.asarray(pal.convert("RGB")))
    Image.fromarray(rgb[:, :, 0] > 128).save(tmp_path / "b.png")
    np.testing.assert_array_equal(read_image(tmp_path / "b.png"), (rgb[:, :, 0] > 128) * np.uint8(255))


def test_gray_detection_and_conversion():
    g = rand((5, 5))
    fake = np.stack([g, g, g], axis=2)
    assert is_gray(g) and is_gray(fake)
    np.testing.assert_array_equal(to_gray(fake), g)
    colour = rand((16, 16, 3))
    assert not is_gray(colour)
    pil_l = np.asarray(Image.fromarray(colour).convert("L")).astype(int)
    assert np.abs(to_gray(colour).astype(int) - pil_l).max() <= 1


def test_float_conversions():
    assert to_float(np.array([0, 255], np.uint8)).tolist() == [0.0, 1.0]
    assert to_float(np.array([0, 65535], np.uint16)).tolist() == [0.0, 1.0]
    x = rand((100,), np.uint16)
    np.testing.assert_array_equal(from_float(to_float(x), 16), x)
    y = rand((100,))
    np.testing.assert_array_equal(from_float(to_float(y), 8), y)
    assert from_float(np.array([-0.5, 2.0], np.float32), 8).tolist() == [0, 255]


def test_ycrcb_matches_opencv_formula_and_inverts():
    rgb = RNG.random((9, 11, 3), dtype=np.float32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y_ref = 0.299 * r + 0.587 * g + 0.114 * b
    y, crcb = rgb_to_ycrcb(rgb)
    np.testing.assert_allclose(y, y_ref, atol=1e-5)
    np.testing.assert_allclose(crcb[..., 0], 0.713 * (r - y_ref) + 0.5, atol=1e-3)
    np.testing.assert_allclose(crcb[..., 1], 0.564 * (b - y_ref) + 0.5, atol=1e-3)
    np.testing.assert_allclose(ycrcb_to_rgb(y, crcb), rgb, atol=5e-4)  # OpenCV rounds its coefficients


def test_read_gray_float(tmp_path):
    img = rand((3, 4))
    write_image(tmp_path / "g.png", img)
    np.testing.assert_allclose(read_gray_float(tmp_path / "g.png"), img / 255.0, atol=1e-7)


def _png_bytes(img):
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    "content, match",
    [
        (b"", "file is empty"),
        (b"this is not an image at all", "not a readable image"),
        ("truncated-png", "not a readable image"),
        ("truncated-jpg", "not a readable image"),
        ("corrupt-png", "not a readable image"),
    ],
)
def test_bad_files_raise_input_error_naming_file(tmp_path, content, match):
    img = rand((40, 50, 3))
    if content == "truncated-png":
        content = _png_bytes(img)[:300]
    elif content == "truncated-jpg":
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG")
        content = buf.getvalue()[: len(buf.getvalue()) // 2]
    elif content == "corrupt-png":
        data = bytearray(_png_bytes(img))
        data[40:60] = b"\x00" * 20
        content = bytes(data)
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(InputError, match=match) as info:
        read_image(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_missing_folder_and_float_tiff(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_image(tmp_path / "missing.png")
    with pytest.raises(InputError, match="is a folder"):
        read_image(tmp_path)
    import cv2

    cv2.imwrite(str(tmp_path / "f.tif"), np.zeros((3, 3), np.float32))
    with pytest.raises(InputError, match="unsupported pixel type float32"):
        read_image(tmp_path / "f.tif")


def test_write_is_atomic_and_leaves_no_temp(tmp_path):
    path = tmp_path / "deep" / "out.png"
    write_image(path, rand((4, 4)))
    second = rand((4, 4))
    write_image(path, second)  # replaces
    np.testing.assert_array_equal(read_image(path), second)
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.png"]


def test_write_errors(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_bytes(b"x")
    with pytest.raises(InputError, match="cannot write output") as info:
        write_image(blocker / "out.png", rand((4, 4)))
    assert str(blocker / "out.png") in str(info.value)
    with pytest.raises(InputError, match="cannot hold 16-bit"):
        write_image(tmp_path / "a.jpg", rand((4, 4), np.uint16))
    with pytest.raises(InputError, match="unknown output format"):
        write_image(tmp_path / "a.gif", rand((4, 4)))


def test_disk_full_is_reported_and_leaves_nothing(tmp_path, monkeypatch):
    import errno
    import os

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(InputError, match="No space left on device") as info:
        write_image(tmp_path / "o.png", rand((4, 4)))
    assert str(tmp_path / "o.png") in str(info.value)
    assert list(tmp_path.iterdir()) == []
