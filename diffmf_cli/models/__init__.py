"""DIFF-MF networks: the config dataclass, named presets, and a factory."""

from __future__ import annotations

import torch

from diffmf_cli.models.diffmf import DiffMF, DiffMFConfig

PRESETS: dict[str, DiffMFConfig] = {
    # For tests: a 64×64 forward in a few tens of milliseconds.
    "tiny": DiffMFConfig(dim=8, stem_channels=4, stem_downsample=2, d_state=4, expand=1.0,
                         sem_levels=2, decoder_channels=8),
    # Trained and shipped: every scan on the 1/4 grid, sized for small CPUs.
    "cpu": DiffMFConfig(dim=24, stem_channels=8, stem_downsample=2, d_state=16, expand=1.0,
                        sem_levels=3, decoder_channels=16),
    # For GPUs: wider, deeper, scans on the 1/2 grid.
    "gpu": DiffMFConfig(dim=64, stem_channels=16, stem_downsample=1, n_stages=2, self_depth=2, shared_depth=2,
                        d_state=16, expand=2.0, sem_levels=3, decoder_channels=32),
}


def get_config(preset_or_config: str | DiffMFConfig) -> DiffMFConfig:
    if isinstance(preset_or_config, DiffMFConfig):
        return preset_or_config
    try:
        return PRESETS[preset_or_config]
    except KeyError:
        raise ValueError(f"unknown preset {preset_or_config!r}; choose one of {', '.join(PRESETS)}") from None


def create_model(preset_or_config: str | DiffMFConfig, device=None, dtype=None) -> DiffMF:
    """A DiffMF for a preset name or a config, with freshly initialised weights."""
    return DiffMF(get_config(preset_or_config), device=device, dtype=dtype)


def model_cost(preset_or_config: str | DiffMFConfig, size: tuple[int, int] = (512, 512)) -> dict:
    """Parameter count and compute per megapixel, measured on one forward pass at `size`.

    macs_per_megapixel: multiply-adds of the dense layers (convs, linears, einsums) from PyTorch's FLOP
    counter (FLOPs / 2). scan_updates_per_megapixel: selective-scan state updates (batch · channels · N · L,
    summed over every scan call). Both scale linearly with pixel count, so one size is representative.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from diffmf_cli.modules.vss import watch_scans

    cfg = get_config(preset_or_config)
    model = DiffMF(cfg).eval()
    x = torch.rand(1, 1, *size)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter, watch_scans() as scans:
        model(x, x)
    megapixels = size[0] * size[1] / 1e6
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "macs_per_megapixel": counter.get_total_flops() / 2 / megapixels,
        "scan_updates_per_megapixel": scans.updates / megapixels,
    }


__all__ = ["DiffMF", "DiffMFConfig", "PRESETS", "create_model", "get_config", "model_cost"]
