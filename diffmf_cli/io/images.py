"""Reading and writing images, gray conversion and YCrCb colour handling (OpenCV's formulas).

Arrays here are NumPy, channels last, colour in **RGB** order (converted from OpenCV's BGR at the edges):

* a *raw* image is ``(H, W)`` or ``(H, W, 3)``, dtype uint8 or uint16, as stored in the file (alpha dropped);
* a *float* image is float32 in [0, 1] (raw / 255 or raw / 65535).

Every problem with a user's file raises `InputError` with one line naming the file. Nothing here prints.
OpenCV's own log is silenced, but libpng and libjpeg write their complaints ("libpng error: IDAT: invalid
distance too far back", "Corrupt JPEG data: ...") straight to the C-level stderr; `read_image` decodes with
file descriptor 2 pointed at a scratch file and turns what the codec said into the error message (a failed
decode) or a note for the caller (a decode that recovered), so none of it leaks beside our one-line errors.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
from pathlib import Path

import cv2
import numpy as np

from diffmf_cli.errors import InputError
from diffmf_cli.io.files import atomic_write_bytes
from diffmf_cli.io.pairs import IMAGE_EXTENSIONS

cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)

#: Output formats that keep 16 bits per channel.
SIXTEEN_BIT_EXTENSIONS: tuple[str, ...] = (".png", ".tif", ".tiff")


def read_image(path: Path | str, notes: list[str] | None = None,
               alpha_notes: list[str] | None = None) -> np.ndarray:
    """Decode an image file to a raw array: (H, W) gray or (H, W, 3) RGB, uint8 or uint16.

    Gray+alpha and RGBA files lose their alpha channel (said in `alpha_notes`, when given, if any pixel was
    not opaque). Raises InputError for a missing, unreadable, empty, truncated, corrupt or non-image file, or
    an unsupported pixel type (e.g. float TIFF). What the codec complained about in a file it still decoded
    ("Corrupt JPEG data: premature end of data segment") is appended to `notes` (one line each, naming the
    file), when given.
    """
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise InputError(f"{path}: file does not exist") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder, not an image file") from None
    except PermissionError:
        raise InputError(f"{path}: cannot read file (permission denied)") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read file ({exc.strerror or exc})") from None
    if data.size == 0:
        raise InputError(f"{path}: file is empty (0 bytes)")
    with _codec_messages() as said:
        img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        why = f"; the decoder said: {said[-1]}" if said else ""
        raise InputError(f"{path}: not a readable image (corrupt, truncated or not an image; {data.size} bytes"
                         f"{why})")
    if notes is not None:
        notes.extend(f"{path}: damaged data, decoded anyway (the decoder said: {line})" for line in said)
    if (alpha_notes is not None and img.ndim == 3 and img.shape[2] in (2, 4)
            and img[:, :, -1].min() < np.iinfo(img.dtype).max):
        alpha_notes.append(f"{path}: transparency dropped (the colours under transparent pixels are fused as "
                           "they are stored)")
    return from_opencv(img, str(path))


#: Lines that libpng / libjpeg (through OpenCV) print on the C-level stderr.
_CODEC_PREFIXES = ("libpng", "Corrupt JPEG", "Premature end of JPEG", "Invalid SOS", "Invalid JPEG", "Bogus",
                   "JPEG", "Not a JPEG", "Unsupported JPEG", "TIFF", "libtiff")
_STDERR_LOCK = threading.Lock()
_SCRATCH: list = []  # one scratch file per process, reused under the lock


def _scratch():
    if not _SCRATCH or _SCRATCH[0].closed:
        _SCRATCH[:] = [tempfile.TemporaryFile()]
    return _SCRATCH[0]


@contextlib.contextmanager
def _codec_messages():
    """Within the block, file descriptor 2 goes to a scratch file; yields a list that afterwards holds the
    codec's lines. Anything else written there meanwhile (another thread's output) goes on to the real
    stderr. One block at a time (the descriptor is process-wide); without a usable fd 2, a no-op."""
    said: list[str] = []
    with _STDERR_LOCK:
        try:
            sys.stderr.flush()
        except (OSError, ValueError, AttributeError):
            pass
        try:
            saved = os.dup(2)
        except OSError:
            yield said
            return
        try:
            scratch = _scratch()
            os.dup2(scratch.fileno(), 2)
            try:
                yield said
            finally:
                os.dup2(saved, 2)
            scratch.seek(0)
            text = scratch.read().decode("utf-8", "replace")
            scratch.seek(0)
            scratch.truncate()
        finally:
            os.close(saved)
    other = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        (said if line.startswith(_CODEC_PREFIXES) else other).append(line)
    if other:
        try:
            sys.stderr.write("\n".join(other) + "\n")
        except (OSError, ValueError, AttributeError):
            pass


def from_opencv(img: np.ndarray, name: str = "image") -> np.ndarray:
    """An array as OpenCV decodes it (``cv2.imread(path, cv2.IMREAD_UNCHANGED)``: (H, W), (H, W, 1), gray+alpha
    (H, W, 2), BGR (H, W, 3) or BGRA (H, W, 4); uint8 or uint16) -> a raw image: (H, W) or RGB (H, W, 3), alpha
    dropped. InputError naming `name` for any other type or shape."""
    if not isinstance(img, np.ndarray):
        raise InputError(f"{name}: expected a NumPy array as OpenCV reads images, got {type(img).__name__}")
    if img.dtype not in (np.uint8, np.uint16):
        raise InputError(f"{name}: unsupported pixel type {img.dtype} (only 8- and 16-bit images)")
    if img.ndim == 3:
        channels = img.shape[2]
        if channels == 1:
            img = img[:, :, 0]
        elif channels == 2:  # gray + alpha
            img = img[:, :, 0]
        elif channels in (3, 4):
            img = np.ascontiguousarray(img[:, :, 2::-1])  # BGR(A) -> RGB
        else:
            raise InputError(f"{name}: unsupported image with {channels} channels")
    elif img.ndim != 2:
        raise InputError(f"{name}: expected an (H, W) or (H, W, C) image, got shape {img.shape}")
    if img.size == 0:
        raise InputError(f"{name}: empty image (shape {img.shape})")
    return img


def to_opencv(img: np.ndarray) -> np.ndarray:
    """A raw image ((H, W) or RGB (H, W, 3)) -> the array OpenCV writes as it: (H, W) or BGR (H, W, 3)."""
    return np.ascontiguousarray(img[:, :, ::-1]) if img.ndim == 3 else img


def bit_depth(img: np.ndarray) -> int:
    """8 or 16."""
    return 16 if img.dtype == np.uint16 else 8


def is_gray(img: np.ndarray) -> bool:
    """True for a (H, W) image and for a 3-channel image whose channels are all equal."""
    if img.ndim == 2:
        return True
    return bool(np.array_equal(img[:, :, 0], img[:, :, 1]) and np.array_equal(img[:, :, 0], img[:, :, 2]))


def to_gray(img: np.ndarray) -> np.ndarray:
    """(H, W) image of the same dtype: the image itself, the one channel of a fake-gray file, or
    OpenCV's luma (0.299 R + 0.587 G + 0.114 B, rounded) of a colour image."""
    if img.ndim == 2:
        return img
    if is_gray(img):
        return np.ascontiguousarray(img[:, :, 0])
    return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)


def to_float(img: np.ndarray) -> np.ndarray:
    """Raw uint8/uint16 -> float32 in [0, 1]."""
    scale = 65535.0 if img.dtype == np.uint16 else 255.0
    return img.astype(np.float32) * np.float32(1.0 / scale)


def from_float(img: np.ndarray, depth: int = 8) -> np.ndarray:
    """Float in [0, 1] (clipped) -> uint8 (depth 8) or uint16 (depth 16), rounded to nearest."""
    if depth not in (8, 16):
        raise ValueError(f"depth must be 8 or 16, got {depth}")
    top = 65535.0 if depth == 16 else 255.0
    out = np.clip(img, 0.0, 1.0) * np.float32(top) + np.float32(0.5)
    return out.astype(np.uint16 if depth == 16 else np.uint8)


def rgb_to_ycrcb(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Float RGB (H, W, 3) in [0, 1] -> (Y (H, W), CrCb (H, W, 2)), OpenCV's COLOR_RGB2YCrCb for float:
    Y = 0.299 R + 0.587 G + 0.114 B, Cr = 0.713 (R - Y) + 0.5, Cb = 0.564 (B - Y) + 0.5."""
    ycrcb = cv2.cvtColor(np.ascontiguousarray(rgb, dtype=np.float32), cv2.COLOR_RGB2YCrCb)
    return np.ascontiguousarray(ycrcb[:, :, 0]), np.ascontiguousarray(ycrcb[:, :, 1:])


def ycrcb_to_rgb(y: np.ndarray, crcb: np.ndarray) -> np.ndarray:
    """Inverse of `rgb_to_ycrcb`: Y (H, W) and CrCb (H, W, 2) floats -> RGB (H, W, 3) float32 in [0, 1]."""
    ycrcb = np.concatenate([y[:, :, None].astype(np.float32), crcb.astype(np.float32)], axis=2)
    return np.clip(cv2.cvtColor(ycrcb, cv2.COLOR_YCrCb2RGB), 0.0, 1.0)


def read_gray_float(path: Path | str) -> np.ndarray:
    """Read a file as one channel: float32 (H, W) in [0, 1] (luma for colour files)."""
    return to_float(to_gray(read_image(path)))


def write_image(path: Path | str, img: np.ndarray, *, jpeg_quality: int = 95, durable: bool = True) -> None:
    """Write a raw image (uint8/uint16, (H, W) or (H, W, 3) RGB) atomically.

    Written with `diffmf_cli.io.files.atomic_write_bytes`: readers and re-runs never see a truncated image;
    with `durable` the data is fsync'ed before the rename. The format follows the extension. Raises InputError naming `path`
    when it cannot be written (folder not writable, disk full, unknown extension, 16 bits to JPEG/BMP).
    """
    path = Path(path)
    data = encode_image(path, img, jpeg_quality=jpeg_quality)
    try:
        atomic_write_bytes(path, data, durable=durable)
    except OSError as exc:
        raise InputError(f"{path}: cannot write output ({exc.strerror or exc})") from None


def encode_image(path: Path | str, img: np.ndarray, *, jpeg_quality: int = 95) -> bytes:
    """The bytes `write_image` writes for `img` at `path` (format from the extension); InputError as there."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in IMAGE_EXTENSIONS:
        raise InputError(f"{path}: unknown output format '{path.suffix}' (use png, jpg, bmp or tif)")
    if img.dtype == np.uint16 and ext not in SIXTEEN_BIT_EXTENSIONS:
        raise InputError(f"{path}: {ext[1:]} cannot hold 16-bit pixels (use png or tif)")
    if img.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"write_image takes uint8/uint16 arrays, got {img.dtype}")
    bgr = to_opencv(img)
    params: list[int] = []
    if ext in (".jpg", ".jpeg"):
        params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)]
    elif ext == ".png":
        params = [cv2.IMWRITE_PNG_COMPRESSION, 3]
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(bgr), params)
    if not ok:
        raise InputError(f"{path}: OpenCV could not encode the image as {ext[1:]}")
    return buf.tobytes()
