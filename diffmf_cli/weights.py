"""Saving and loading DIFF-MF weights: safetensors only, config in the metadata, never unpickled.

A weights file is a plain safetensors file whose header metadata (string -> string) holds:

- ``format``: ``"diffmf-weights/1"``;
- ``config``: the model's :class:`~diffmf_cli.models.DiffMFConfig` as JSON (``DiffMFConfig.to_dict()``);
- ``metadata``: everything else the writer passed (name, training facts, metrics...) as one JSON object.

:func:`load_weights` rebuilds the model from ``config`` and refuses, with :class:`CheckpointError` and a
one-line message naming the file, anything it cannot trust: a missing file, a pickle, a truncated or
otherwise corrupt file, a file without a diffmf config, a config this code cannot build, or tensors whose
names or shapes do not match the model that config builds.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

from diffmf_cli.errors import CheckpointError, one_line
from diffmf_cli.io.files import atomic_write

FORMAT = "diffmf-weights/1"

#: Names of the shipped models -> file names, looked up in ``diffmf_cli/shipped_weights/`` (where setup.py maps
#: the repo's ``weights/`` in a wheel or ``pip install .``), then in ``<repo>/weights/`` (a clone, ``pip install -e``).
SHIPPED_MODELS: dict[str, str] = {
    "ir-vis": "diffmf_ir_vis.safetensors",
    "medical": "diffmf_medical.safetensors",
}
DEFAULT_MODEL = "ir-vis"

_PACKAGE_DIR = Path(__file__).resolve().parent
_SEARCH_DIRS = (_PACKAGE_DIR / "shipped_weights", _PACKAGE_DIR.parent / "weights")
_MAX_HEADER_BYTES = 100 * 1024 * 1024
_SAFETENSORS_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}


def resolve_weights(name_or_path: str | os.PathLike | None = None) -> Path:
    """Map a shipped model name ("ir-vis", "medical"; None means "ir-vis") or a path to an existing file."""
    if name_or_path is None:
        name_or_path = DEFAULT_MODEL
    text = str(name_or_path)
    if text in SHIPPED_MODELS and not Path(text).is_file():
        filename = SHIPPED_MODELS[text]
        for folder in _SEARCH_DIRS:
            candidate = folder / filename
            if candidate.is_file():
                return candidate
        looked = ", ".join(str(folder / filename) for folder in _SEARCH_DIRS)
        raise CheckpointError(f"shipped model '{text}' is not installed (looked for {looked})")
    path = Path(text).expanduser()
    if not path.exists():
        names = ", ".join(SHIPPED_MODELS)
        raise CheckpointError(f"{path}: weights file not found (and not a shipped model name: {names})")
    if not path.is_file():
        raise CheckpointError(f"{path}: is not a file")
    return path


def save_weights(path: str | os.PathLike, model, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``model``'s weights and config to ``path`` (safetensors), atomically.

    ``model`` must carry ``model.config`` (a DiffMFConfig). ``metadata`` must be JSON-serialisable; it comes
    back unchanged from :func:`load_weights` (plus the ``config`` key). The file appears complete or not at all:
    it is written to a temporary file in the same folder and moved into place with ``os.replace``.
    """
    from safetensors.torch import save_file

    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        raise TypeError("save_weights needs a model with a .config that has .to_dict()")
    metadata = dict(metadata or {})
    metadata.pop("config", None)
    header = {
        "format": FORMAT,
        "config": json.dumps(config.to_dict(), sort_keys=True),
        "metadata": json.dumps(metadata, sort_keys=True, default=str),
    }
    # Clone so tied/shared tensors are stored separately (safetensors refuses shared storage).
    tensors = {name: t.detach().to("cpu").contiguous().clone() for name, t in model.state_dict().items()}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=header))


def load_weights(path: str | os.PathLike, device="cpu", dtype=None):
    """Load a weights file (or a shipped model name) -> ``(model, metadata)``.

    The model is built from the config in the file with ``create_model``, gets the stored tensors, is moved to
    ``device``/``dtype`` and put in eval mode. ``metadata`` is the dict given to :func:`save_weights` plus
    ``"config"`` (the config as a dict). Raises :class:`CheckpointError` on any file it cannot trust.
    """
    path = resolve_weights(path)
    header = read_header(path)
    meta = header.get("__metadata__") or {}
    if meta.get("format") != FORMAT or "config" not in meta:
        raise CheckpointError(
            f"{path}: safetensors file without diffmf metadata (format {meta.get('format')!r}); "
            "not a diffmf weights file"
        )
    try:
        config_dict = json.loads(meta["config"])
        user_meta = json.loads(meta.get("metadata", "{}"))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: diffmf metadata is not valid JSON ({exc})") from None
    if not isinstance(config_dict, dict) or not isinstance(user_meta, dict):
        raise CheckpointError(f"{path}: diffmf metadata is not a JSON object")

    model = _build_model(path, config_dict)
    expected = model.state_dict()
    stored = {name: info for name, info in header.items() if name != "__metadata__"}
    _check_tensor_names_and_shapes(path, expected, stored)

    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own error types for every kind of damage
        raise CheckpointError(f"{path}: cannot read tensors ({one_line(exc)})") from None
    model.load_state_dict(tensors, strict=True)
    model.to(device=device, dtype=dtype)
    model.eval()
    user_meta["config"] = config_dict
    return model, user_meta


def read_header(path: str | os.PathLike) -> dict:
    """Validate the safetensors framing of ``path`` and return its JSON header (no tensor data is read).

    Checks: not a pickle/zip (torch.save) file, the 8-byte length prefix, the header JSON, and that every
    tensor's byte range lies inside the file and matches its dtype and shape, so truncation is caught here.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            prefix = fh.read(8)
            if len(prefix) < 8:
                _refuse_pickle(path, prefix)
                raise CheckpointError(f"{path}: not a safetensors file (only {size} bytes)")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len == 0 or header_len > _MAX_HEADER_BYTES or 8 + header_len > size:
                _refuse_pickle(path, prefix)
                raise CheckpointError(f"{path}: not a safetensors file, or truncated (bad header length)")
            raw = fh.read(header_len)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        _refuse_pickle(path, prefix)
        raise CheckpointError(f"{path}: not a safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a safetensors file (header is not a JSON object)")

    data_size = size - 8 - header_len
    end_max = 0
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict):
                raise CheckpointError(f"{path}: corrupt safetensors metadata")
            continue
        try:
            begin, end = (int(v) for v in info["data_offsets"])
            shape = [int(v) for v in info["shape"]]
            itemsize = _SAFETENSORS_DTYPE_BYTES[info["dtype"]]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: corrupt safetensors header entry for tensor '{name}'") from None
        numel = 1
        for dim in shape:
            numel *= dim
        if begin < 0 or end < begin or end - begin != numel * itemsize:
            raise CheckpointError(f"{path}: corrupt safetensors header entry for tensor '{name}'")
        end_max = max(end_max, end)
    if end_max > data_size:
        raise CheckpointError(
            f"{path}: truncated ({data_size} bytes of tensor data, header promises {end_max})"
        )
    return header


def read_metadata(path: str | os.PathLike) -> dict:
    """The diffmf metadata of a weights file (config included) without building the model."""
    path = resolve_weights(path)
    meta = read_header(path).get("__metadata__") or {}
    if meta.get("format") != FORMAT or "config" not in meta:
        raise CheckpointError(f"{path}: safetensors file without diffmf metadata; not a diffmf weights file")
    try:
        out = json.loads(meta.get("metadata", "{}"))
        out["config"] = json.loads(meta["config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: diffmf metadata is not valid JSON ({exc})") from None
    return out


def _refuse_pickle(path: Path, prefix: bytes) -> None:
    """Name the usual wrong file clearly: a torch.save zip or a raw pickle (both would need unpickling)."""
    if prefix[:2] == b"PK" or prefix[:1] == b"\x80":
        raise CheckpointError(f"{path}: is a pickle/torch.save file, not safetensors; refusing to unpickle it")


def _build_model(path: Path, config_dict: dict):
    from diffmf_cli.models import DiffMFConfig, create_model

    try:
        config = DiffMFConfig.from_dict(config_dict)
        return create_model(config, device="cpu")
    except Exception as exc:  # an unknown field, a bad value: the file was written by other code
        raise CheckpointError(
            f"{path}: its model config does not match this version of diffmf ({one_line(exc)})"
        ) from None


def _check_tensor_names_and_shapes(path: Path, expected: dict, stored: dict) -> None:
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise CheckpointError(
            f"{path}: tensors do not match the model its config builds: {'; '.join(parts)}"
        )
    for name, tensor in expected.items():
        shape = tuple(int(v) for v in stored[name]["shape"])
        if shape != tuple(tensor.shape):
            raise CheckpointError(
                f"{path}: tensor '{name}' has shape {shape}, the model its config builds needs "
                f"{tuple(tensor.shape)}"
            )
