"""Training settings from their three places: built-in defaults (or a stored run's), a TOML file, the command
line, in rising priority. The TOML keys are TrainSettings' own fields, so a new setting needs no list kept
in step by hand."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

from diffmf_cli.errors import UsageError
from diffmf_cli.training.loop import TrainSettings
from diffmf_cli.weights import SHIPPED_MODELS

#: Settings a TOML file may hold at its top level: every scalar TrainSettings field (the lists and tables have
#: their own TOML spelling: [[source]], [[val_source]], [model], [loss]).
SCALAR_KEYS = tuple(f.name for f in fields(TrainSettings)
                    if f.name not in ("sources", "val_sources", "model_overrides", "loss"))
#: What a TOML file may say about the session rather than the run (not part of the run's settings).
SESSION_KEYS = ("max_minutes", "threads", "out")


def read_config(path: Path) -> dict[str, Any]:
    """A ``--config`` TOML file, checked (unknown keys refused), with its paths made absolute (relative to the
    file's folder) and its keys in Python's spelling. UsageError when it cannot be used."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{path}: config file does not exist") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"{path}: cannot read config file ({exc})") from None
    data = {k.replace("-", "_"): v for k, v in data.items()}
    allowed = set(SCALAR_KEYS) | set(SESSION_KEYS) | {"source", "val_source", "model", "loss"}
    unknown = set(data) - allowed
    if unknown:
        raise UsageError(f"{path}: unknown keys {', '.join(sorted(unknown))} (allowed: {', '.join(sorted(allowed))})")
    base = path.parent

    def rel(value):
        p = Path(str(value)).expanduser()
        return str(p if p.is_absolute() else (base / p).resolve())

    for key in ("source", "val_source"):
        items = data.get(key, [])
        if not isinstance(items, list) or not all(isinstance(s, dict) for s in items):
            raise UsageError(f"{path}: '{key}' must be an array of tables ([[{key}]])")
        data[key] = [{k: (rel(v) if k in ("ir", "vis", "pairs") else v) for k, v in s.items()} for s in items]
    for key in ("model", "loss"):
        if not isinstance(data.get(key, {}), dict):
            raise UsageError(f"{path}: '{key}' must be a table ([{key}])")
    if "out" in data:
        data["out"] = rel(data["out"])
    if "init_weights" in data and str(data["init_weights"]) not in SHIPPED_MODELS:
        data["init_weights"] = rel(data["init_weights"])
    return data


def merge_settings(cli: dict, sources: list[dict], val_sources: list[dict], model_overrides: dict,
                   config_path: Path | None, base: dict | None = None):
    """``(TrainSettings, session)``: ``base`` (defaults, or a stored run's), then the TOML file at `config_path`,
    then the command line (`cli`: options given, None for absent; `sources`, `val_sources`, `model_overrides`
    replace or extend the file's). ``session`` holds the file's SESSION_KEYS."""
    merged: dict[str, Any] = dict(base or {})
    file_session: dict[str, Any] = {}
    file_model: dict[str, Any] = {}
    if config_path is not None:
        data = read_config(config_path)
        merged.update({k: data[k] for k in SCALAR_KEYS if k in data})
        file_session = {k: data[k] for k in SESSION_KEYS if k in data}
        if "source" in data:
            merged["sources"] = data["source"]
        if "val_source" in data:
            merged["val_sources"] = data["val_source"]
        if "model" in data:
            file_model = dict(data["model"])
            merged["model_overrides"] = {**merged.get("model_overrides", {}), **file_model}
        if data.get("loss"):
            merged["loss"] = {**(merged.get("loss") or {}), **data["loss"]}
    merged.update({k: v for k, v in cli.items() if v is not None})
    # A resumed run keeps its stored config (its checkpoint holds the weights); only a fresh run, or a resume that
    # names --init again, reads the file's.
    if merged.get("init_weights") and (base is None or cli.get("init_weights")):
        from diffmf_cli.weights import read_metadata, resolve_weights

        path = resolve_weights(merged["init_weights"])
        merged["init_weights"] = str(path.resolve())
        meta = read_metadata(path)
        # The file's whole config (so the preset below changes nothing), then what this run's config file
        # changes in it; --model-option comes on top below. _init_from refuses changes beyond the head's options.
        merged["model_overrides"] = {**meta["config"], **file_model}
        merged["preset"] = meta.get("preset") if isinstance(meta.get("preset"), str) else "cpu"
    if sources:  # sources on the command line replace the file's
        merged["sources"] = sources
    if val_sources:
        merged["val_sources"] = val_sources
    if model_overrides:
        merged["model_overrides"] = {**merged.get("model_overrides", {}), **model_overrides}
    try:
        settings = TrainSettings.from_dict(merged)
    except TypeError as exc:
        raise UsageError(f"bad training settings: {exc}") from None
    return settings, file_session
