"""The selective scan written as plainly as possible: the specification every fast path is tested against.

For each batch element b, channel d and state n (Mamba, Gu & Dao 2023; layout of mamba-ssm's
`selective_scan_fn`):

    Δ_t   = softplus(delta_t + delta_bias_d)      (softplus and bias optional)
    h_t   = exp(Δ_t · A_dn) · h_{t-1} + Δ_t · B_tn · u_t,      h_{-1} = 0
    y_t   = Σ_n C_tn · h_t + D_d · u_t
    out_t = y_t · silu(z_t)                        (gating optional)

Channel d reads the B/C of group g = d // (D / G). The loop over time is Python and the decay
factors are materialised as a (batch, D, L, N) tensor: slow and memory-hungry, but obviously right and
differentiable by autograd. Computation is in float32, or float64 when `u` is float64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def selective_scan_ref(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
):
    """Reference selective scan.

    Args:
        u, delta: (batch, D, L) inputs and step sizes.
        A: (D, N) state matrix (diagonal per channel; negative for a stable scan).
        B, C: (batch, N, L) or (batch, G, N, L), G dividing D.
        D, delta_bias: (D,) or None.  z: (batch, D, L) or None.
    Returns:
        y (batch, D, L) in u's dtype, and last_state (batch, D, N) in the compute dtype when
        `return_last_state`.
    """
    dtype_in = u.dtype
    compute = torch.float64 if u.dtype == torch.float64 else torch.float32
    u = u.to(compute)
    delta = delta.to(compute)
    A = A.to(compute)
    if delta_bias is not None:
        delta = delta + delta_bias.to(compute)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)

    batch, dim, length = u.shape
    if B.dim() == 3:
        B = B.unsqueeze(1)
    if C.dim() == 3:
        C = C.unsqueeze(1)
    # (batch, G, N, L) -> (batch, D, N, L): every channel of a group reads the same B/C.
    B = B.to(compute).repeat_interleave(dim // B.shape[1], dim=1)
    C = C.to(compute).repeat_interleave(dim // C.shape[1], dim=1)

    decay = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))  # (batch, D, L, N)
    drive = torch.einsum("bdl,bdnl,bdl->bdln", delta, B, u)  # (batch, D, L, N)

    h = u.new_zeros(batch, dim, A.shape[1])
    ys = []
    # unbind (not indexing inside the loop) keeps autograd's backward linear in L.
    for decay_t, drive_t, c_t in zip(decay.unbind(2), drive.unbind(2), C.unbind(3)):
        h = decay_t * h + drive_t
        ys.append(torch.einsum("bdn,bdn->bd", h, c_t))
    y = torch.stack(ys, dim=2) if ys else u.new_zeros(batch, dim, 0)

    if D is not None:
        y = y + u * D.to(compute)[:, None]
    if z is not None:
        y = y * F.silu(z.to(compute))
    y = y.to(dtype_in)
    return (y, h) if return_last_state else y
