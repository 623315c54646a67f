"""Fast CPU selective scan: numba kernels for the forward and a hand-written backward.

Layout inside the kernels (the wrapper below prepares it, without copies where it can):
    u, delta, z, y: (batch, D, L)     A: (D, N)     Dv, bias: (D,)
    Bt, Ct: (batch, G, L, N)  -- B/C transposed so the inner loop over states reads contiguous memory.

Each (batch, channel) row is one sequential loop over time, the N states live in a small local array, and rows
run in parallel (numba `prange`). Nothing of size (batch, D, L, N) is ever stored: the forward keeps the state
at every CHUNK-th step (batch, D, L / CHUNK, N); the backward walks the chunks last to first, recomputes the
chunk's states from its checkpoint into a (CHUNK, N) scratch array, then runs the reverse-time recurrence

    g_h(t) = g_y(t) · C(t) + exp(Δ_{t+1} A) · g_h(t+1),        g_h(L-1) starts from the last-state gradient.

Float32 inputs compute in float32 with a vectorisable `exp` (Cephes-style polynomial: numba's
`math.exp` vectorises only with Intel's SVML installed);
float64 inputs compute in float64 with `math.exp`, which is what gradcheck uses.
"""

from __future__ import annotations

import contextlib
import math

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import prange
from numba.core import types
from numba.extending import intrinsic, overload

from diffmf_cli.ops._autograd import grads_for_inputs, input_dtypes
from diffmf_cli.ops.reference import selective_scan_ref

# Steps between stored states. The backward's scratch (2 x CHUNK x N floats) stays in L1 at this size.
CHUNK = 64
_SOFTPLUS_THRESHOLD = 20.0  # same as torch.nn.functional.softplus and mamba-ssm


@intrinsic
def _bits_to_float32(typingctx, bits):
    """Reinterpret an int32 as float32 (no conversion): builds 2**k from exponent bits, vectorises."""
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


def _exp(x):  # pragma: no cover - replaced by the overload below inside numba code
    return math.exp(x)


@overload(_exp, fastmath=True)
def _exp_overload(x):
    if x == types.float32:

        def exp32(x):
            # Cephes expf: exp(x) = 2**k * exp(r), |r| <= ln2/2, degree-6 polynomial; ~1 ulp.
            x = min(max(x, np.float32(-87.3)), np.float32(88.3))
            k = np.floor(x * np.float32(1.44269504088896341) + np.float32(0.5))
            r = x - k * np.float32(0.693359375) + k * np.float32(2.12194440e-4)
            p = np.float32(1.9875691500e-4)
            p = p * r + np.float32(1.3981999507e-3)
            p = p * r + np.float32(8.3334519073e-3)
            p = p * r + np.float32(4.1665795894e-2)
            p = p * r + np.float32(1.6666665459e-1)
            p = p * r + np.float32(5.0000001201e-1)
            p = p * r * r + r + np.float32(1.0)
            return p * _bits_to_float32((np.int32(k) + np.int32(127)) << np.int32(23))

        return exp32
    return lambda x: math.exp(x)


_JIT = dict(nogil=True, cache=True, fastmath=True)


def _scalar(arr, value):  # pragma: no cover - replaced by the overload below inside numba code
    return arr.dtype.type(value)


@overload(_scalar)
def _scalar_overload(arr, value):
    # A constant in the array's dtype: a bare literal would promote float32 arithmetic to float64.
    kind = numba.np.numpy_support.as_dtype(arr.dtype).type
    return lambda arr, value: kind(value)


def _softplus(x):  # pragma: no cover - replaced by the overload below inside numba code
    return math.log1p(math.exp(x)) if x <= _SOFTPLUS_THRESHOLD else x


@overload(_softplus, fastmath=True)
def _softplus_overload(x):
    if x == types.float32:

        def softplus32(x):
            # softplus(x) = max(x, 0) + log1p(w), w = exp(-|x|) in (0, 1]; log1p(w) = 2 atanh(s) with
            # s = w / (2 + w) <= 1/3, an odd series: no cancellation, no libm call, so it vectorises.
            w = _exp(-abs(x))
            s = w / (np.float32(2.0) + w)
            s2 = s * s
            p = np.float32(2.0 / 15.0)
            p = p * s2 + np.float32(2.0 / 13.0)
            p = p * s2 + np.float32(2.0 / 11.0)
            p = p * s2 + np.float32(2.0 / 9.0)
            p = p * s2 + np.float32(2.0 / 7.0)
            p = p * s2 + np.float32(2.0 / 5.0)
            p = p * s2 + np.float32(2.0 / 3.0)
            p = p * s2 + np.float32(2.0)
            out = max(x, np.float32(0.0)) + s * p
            return x if x > np.float32(_SOFTPLUS_THRESHOLD) else out

        return softplus32
    return lambda x: math.log1p(math.exp(x)) if x <= _SOFTPLUS_THRESHOLD else x


@numba.njit(inline="always", **_JIT)
def _fill_steps(delta_row, u_row, bias, softplus, t0, m, dtbuf, dubuf):
    """dtbuf[i] = Δ at step t0 + i (bias and softplus applied), dubuf[i] = Δ·u: one vectorised pass."""
    if softplus:
        for i in range(m):
            dt = _softplus(delta_row[t0 + i] + bias)
            dtbuf[i] = dt
            dubuf[i] = dt * u_row[t0 + i]
    else:
        for i in range(m):
            dt = delta_row[t0 + i] + bias
            dtbuf[i] = dt
            dubuf[i] = dt * u_row[t0 + i]


@numba.njit(parallel=True, **_JIT)
def scan_forward(u, delta, A, Bt, Ct, Dv, z, bias, softplus, has_z, y, last, ckpt, store_ckpt):
    """Fill y (batch, D, L) and last (batch, D, N); if store_ckpt, ckpt (batch, D, ceil(L/CHUNK), N)."""
    batch, dim, length = u.shape
    nstate = A.shape[1]
    per_group = dim // Bt.shape[1]
    nchunks = (length + CHUNK - 1) // CHUNK
    for row in prange(batch * dim):
        b = row // dim
        d = row % dim
        g = d // per_group
        a_row = A[d]
        u_row = u[b, d]
        y_row = y[b, d]
        h = np.zeros_like(a_row)
        dtbuf = np.empty(CHUNK, dtype=A.dtype)
        dubuf = np.empty(CHUNK, dtype=A.dtype)
        one = _scalar(A, 1)
        skip = Dv[d]
        for c in range(nchunks):
            t0 = c * CHUNK
            m = min(length, t0 + CHUNK) - t0
            if store_ckpt:
                ckpt[b, d, c, :] = h
            _fill_steps(delta[b, d], u_row, bias[d], softplus, t0, m, dtbuf, dubuf)
            for i in range(m):  # the sequential part: N states in registers / L1
                dt = dtbuf[i]
                du = dubuf[i]
                bt = Bt[b, g, t0 + i]
                ct = Ct[b, g, t0 + i]
                acc = _scalar(A, 0)
                for n in range(nstate):
                    h[n] = _exp(dt * a_row[n]) * h[n] + du * bt[n]
                    acc += h[n] * ct[n]
                y_row[t0 + i] = acc
            if has_z:
                z_row = z[b, d]
                for i in range(t0, t0 + m):
                    zt = z_row[i]
                    y_row[i] = (y_row[i] + skip * u_row[i]) * zt / (one + _exp(-zt))
            else:
                for i in range(t0, t0 + m):
                    y_row[i] = y_row[i] + skip * u_row[i]
        last[b, d, :] = h


@numba.njit(parallel=True, **_JIT)
def scan_backward(
    u, delta, A, Bt, Ct, Dv, z, bias, softplus, has_z, ckpt, gy, glast, parts,
    gu, gdelta, gz, gA_rows, gB_parts, gC_parts, gD_rows, gbias_rows,
):
    """Gradients. Rows (batch, channel) are split into `parts` contiguous channel ranges per batch element;
    each range accumulates its own gB/gC copy (parts, batch, G, L, N), summed by the caller, so no two
    threads ever write the same memory. gA/gD/gbias are per row: (batch, D, N), (batch, D), (batch, D)."""
    batch, dim, length = u.shape
    nstate = A.shape[1]
    per_group = dim // Bt.shape[1]
    nchunks = ckpt.shape[2]
    per_part = (dim + parts - 1) // parts
    for job in prange(batch * parts):
        b = job // parts
        p = job % parts
        hbuf = np.empty((CHUNK + 1, nstate), dtype=A.dtype)  # hbuf[i + 1] = state after step t0 + i
        abuf = np.empty((CHUNK, nstate), dtype=A.dtype)
        dtbuf = np.empty(CHUNK, dtype=A.dtype)
        dubuf = np.empty(CHUNK, dtype=A.dtype)
        ybuf = np.empty(CHUNK, dtype=A.dtype)  # C·h before skip and gate (only with z)
        gobuf = np.empty(CHUNK, dtype=A.dtype)  # gradient reaching C·h + D·u
        ghbuf = np.empty((CHUNK, nstate), dtype=A.dtype)  # gradient w.r.t. the state after each step
        gh = np.empty(nstate, dtype=A.dtype)
        gA = np.empty(nstate, dtype=A.dtype)
        zero = _scalar(A, 0)
        one = _scalar(A, 1)
        for d in range(p * per_part, min(dim, (p + 1) * per_part)):
            g = d // per_group
            a_row = A[d]
            u_row = u[b, d]
            delta_row = delta[b, d]
            gy_row = gy[b, d]
            skip = Dv[d]
            bias_d = bias[d]
            gB = gB_parts[p, b, g]
            gC = gC_parts[p, b, g]
            gh[:] = glast[b, d]
            gA[:] = 0
            gD_acc = zero
            gbias_acc = zero
            for c in range(nchunks - 1, -1, -1):
                t0 = c * CHUNK
                m = min(length, t0 + CHUNK) - t0
                # Recompute this chunk's states from its checkpoint.
                _fill_steps(delta_row, u_row, bias_d, softplus, t0, m, dtbuf, dubuf)
                hbuf[0] = ckpt[b, d, c]
                for i in range(m):
                    dt = dtbuf[i]
                    du = dubuf[i]
                    bt = Bt[b, g, t0 + i]
                    for n in range(nstate):
                        a = _exp(dt * a_row[n])
                        abuf[i, n] = a
                        hbuf[i + 1, n] = a * hbuf[i, n] + du * bt[n]
                # Through the gate and the skip (vectorised over the chunk).
                if has_z:
                    z_row = z[b, d]
                    for i in range(m):
                        ct = Ct[b, g, t0 + i]
                        acc = zero
                        for n in range(nstate):
                            acc += ct[n] * hbuf[i + 1, n]
                        ybuf[i] = acc
                    for i in range(m):
                        t = t0 + i
                        zt = z_row[t]
                        sig = one / (one + _exp(-zt))
                        y_pre = ybuf[i] + skip * u_row[t]
                        gz[b, d, t] = gy_row[t] * y_pre * sig * (one + zt * (one - sig))
                        gobuf[i] = gy_row[t] * zt * sig
                else:
                    for i in range(m):
                        gobuf[i] = gy_row[t0 + i]
                # Reverse-time recurrence through the chunk: the state gradient alone. Loops touching few
                # arrays each: LLVM vectorises a loop only when it can check every pair of arrays cheaply.
                for i in range(m - 1, -1, -1):
                    g_out = gobuf[i]
                    ct = Ct[b, g, t0 + i]
                    gi = ghbuf[i]
                    ai = abuf[i]
                    for n in range(nstate):
                        ghn = gh[n] + g_out * ct[n]
                        gi[n] = ghn
                        gh[n] = ghn * ai[n]
                # Then everything that is independent per step.
                for i in range(m):
                    t = t0 + i
                    g_out = gobuf[i]
                    du = dubuf[i]
                    gBt = gB[t]
                    gCt = gC[t]
                    gi = ghbuf[i]
                    hi = hbuf[i + 1]
                    for n in range(nstate):
                        gCt[n] += g_out * hi[n]
                        gBt[n] += gi[n] * du
                for i in range(m):
                    t = t0 + i
                    dt = dtbuf[i]
                    ut = u_row[t]
                    g_out = gobuf[i]
                    bt = Bt[b, g, t]
                    gi = ghbuf[i]
                    ai = abuf[i]
                    hp = hbuf[i]
                    sum_gb = zero
                    sum_adt = zero
                    for n in range(nstate):
                        decay_term = gi[n] * ai[n] * hp[n]  # d loss / d log(decay)
                        sum_gb += gi[n] * bt[n]
                        sum_adt += a_row[n] * decay_term
                        gA[n] += dt * decay_term
                    gD_acc += g_out * ut
                    gu[b, d, t] = g_out * skip + dt * sum_gb
                    gdelta[b, d, t] = ut * sum_gb + sum_adt  # gradient w.r.t. Δ; chain rule below
                # Through softplus and the bias (vectorised over the chunk).
                gdelta_row = gdelta[b, d]
                if softplus:
                    for i in range(t0, t0 + m):
                        raw = delta_row[i] + bias_d
                        if raw <= _SOFTPLUS_THRESHOLD:
                            gdelta_row[i] = gdelta_row[i] / (one + _exp(-raw))
                for i in range(t0, t0 + m):
                    gbias_acc += gdelta_row[i]
            gA_rows[b, d, :] = gA
            gD_rows[b, d] = gD_acc
            gbias_rows[b, d] = gbias_acc


# ----------------------------------------------------------------------------------------------------------
# torch wrapper


def _compute_dtype(u: torch.Tensor) -> torch.dtype:
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def _prep(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Detached, contiguous, in the compute dtype: a no-op for well-formed float32 inputs."""
    return t.detach().to(dtype).contiguous()


def _bl_n(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(batch, N, L) or (batch, G, N, L) -> contiguous (batch, G, L, N), detached, in the compute dtype."""
    if x.dim() == 3:
        x = x.unsqueeze(1)
    return x.detach().to(dtype).transpose(-1, -2).contiguous()


def _threads() -> int:
    """numba uses as many threads as torch is allowed to (torch.set_num_threads is the one knob)."""
    n = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    if numba.get_num_threads() != n:
        numba.set_num_threads(n)
    return n


@contextlib.contextmanager
def _keep_torch_threads():
    """The first parallel numba call starts its OpenMP layer, which resets the OpenMP thread count that torch
    shares; put torch's count back so a caller's torch.set_num_threads survives the scan."""
    n = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)


class _CpuScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
        cdt = _compute_dtype(u)
        batch, dim, length = u.shape
        nstate = A.shape[1]
        u_, delta_, A_ = _prep(u, cdt), _prep(delta, cdt), _prep(A, cdt)
        Bt, Ct = _bl_n(B, cdt), _bl_n(C, cdt)
        D_ = _prep(D, cdt) if D is not None else u_.new_zeros(dim)
        bias_ = _prep(delta_bias, cdt) if delta_bias is not None else u_.new_zeros(dim)
        z_ = _prep(z, cdt) if z is not None else u_.new_zeros(1, 1, 1)
        need_grad = any(ctx.needs_input_grad[:8])
        nchunks = -(-length // CHUNK)
        ckpt = u_.new_empty(batch, dim, nchunks if need_grad else 0, nstate)
        y = u_.new_empty(batch, dim, length)
        last = u_.new_empty(batch, dim, nstate)
        with _keep_torch_threads():
            _threads()
            scan_forward(
                u_.numpy(), delta_.numpy(), A_.numpy(), Bt.numpy(), Ct.numpy(), D_.numpy(), z_.numpy(),
                bias_.numpy(), bool(delta_softplus), z is not None, y.numpy(), last.numpy(), ckpt.numpy(), need_grad,
            )
        if need_grad:
            ctx.save_for_backward(u_, delta_, A_, Bt, Ct, D_, z_, bias_, ckpt)
            ctx.flags = (bool(delta_softplus), z is not None, B.dim(), C.dim())
            ctx.dtypes = input_dtypes(u, delta, A, B, C, D, z, delta_bias)
        return y.to(u.dtype), last

    @staticmethod
    def backward(ctx, gy, glast):
        u_, delta_, A_, Bt, Ct, D_, z_, bias_, ckpt = ctx.saved_tensors
        softplus, has_z, b_dim, c_dim = ctx.flags
        cdt = u_.dtype
        batch, dim, length = u_.shape
        groups, nstate = Bt.shape[1], A_.shape[1]
        gy_ = gy.detach().to(cdt).contiguous() if gy is not None else u_.new_zeros(batch, dim, length)
        glast_ = _prep(glast, cdt) if glast is not None else u_.new_zeros(batch, dim, nstate)
        with _keep_torch_threads():
            parts = max(1, min(dim, _threads()))
        gu = torch.empty_like(u_)
        gdelta = torch.empty_like(u_)
        gz = torch.empty_like(u_) if has_z else u_.new_zeros(1, 1, 1)
        gA_rows = u_.new_empty(batch, dim, nstate)
        gB_parts = u_.new_zeros(parts, batch, groups, length, nstate)
        gC_parts = u_.new_zeros(parts, batch, groups, length, nstate)
        gD_rows = u_.new_empty(batch, dim)
        gbias_rows = u_.new_empty(batch, dim)
        with _keep_torch_threads():
            scan_backward(
                u_.numpy(), delta_.numpy(), A_.numpy(), Bt.numpy(), Ct.numpy(), D_.numpy(), z_.numpy(),
                bias_.numpy(), softplus, has_z, ckpt.numpy(), gy_.numpy(), glast_.numpy(), parts,
                gu.numpy(), gdelta.numpy(), gz.numpy(), gA_rows.numpy(), gB_parts.numpy(), gC_parts.numpy(),
                gD_rows.numpy(), gbias_rows.numpy(),
            )

        def back(x: torch.Tensor, ndim: int) -> torch.Tensor:
            x = (x[0] if parts == 1 else x.sum(0)).transpose(-1, -2)  # (batch, G, N, L)
            return x.squeeze(1) if ndim == 3 else x

        grads = [
            gu, gdelta, gA_rows.sum(0), back(gB_parts, b_dim), back(gC_parts, c_dim),
            gD_rows.sum(0), gz if has_z else None, gbias_rows.sum(0),
        ]
        return grads_for_inputs(ctx, grads)


def selective_scan_cpu(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False):
    """The numba path; arguments already validated by `selective_scan`. Same signature and results.

    The kernels are compiled with every fastmath flag, ``nnan`` and ``ninf`` included, so LLVM may assume no
    NaN or inf exists (the clamp in `_exp` would then turn a NaN into a finite number). Inputs holding a NaN
    or an inf therefore take the float reference (`selective_scan_ref`), whose NaN and inf follow IEEE rules,
    so a diverged training step still shows as non-finite. Finite inputs never do: the kernels' results stay
    bit for bit what they were (see tests/ops/test_selective_scan.py)."""
    if not _all_finite(u, delta, A, B, C, D, z, delta_bias):
        return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    y, last = _CpuScan.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    return (y, last) if return_last_state else y


def _all_finite(*tensors: torch.Tensor | None) -> bool:
    """False when any tensor holds a NaN or an inf: one sum per tensor (a NaN or inf makes it non-finite; a
    sum of finite values that overflows only sends the call to the reference, which is slower but right).
    About 3% of a scan call, where ``isfinite(t).all()`` costs about 30%."""
    with torch.no_grad():
        return all(t is None or bool(torch.isfinite(t.sum(dtype=_SUM_DTYPES.get(t.dtype)))) for t in tensors)


_SUM_DTYPES = {torch.float16: torch.float32, torch.bfloat16: torch.float32}
