"""What the fast scans' autograd Functions share: remembering input dtypes and handing gradients back."""

from __future__ import annotations

import torch


def input_dtypes(*tensors: torch.Tensor | None) -> tuple[torch.dtype | None, ...]:
    """The dtype of each differentiable input (None for an absent optional one)."""
    return tuple(t.dtype if t is not None else None for t in tensors)


def grads_for_inputs(ctx, grads: list[torch.Tensor | None]) -> tuple:
    """Gradients cast back to their inputs' dtypes, None where no gradient is wanted; then None for the two
    non-tensor arguments (delta_softplus, return_last_state)."""
    out = [g.to(dt) if (g is not None and dt is not None and ctx.needs_input_grad[i]) else None
           for i, (g, dt) in enumerate(zip(grads, ctx.dtypes))]
    return (*out, None, None)
