"""Selective scan in Triton: for CUDA tensors when mamba-ssm's kernel is not installed. No compiler step on
the user's machine beyond Triton's own JIT.

One program owns one batch element and a block of BLOCK_D channels of one B/C group; the state
(BLOCK_D, N) lives in registers and the program walks time sequentially. Computation is float32 whatever
the input dtype (bf16/fp16 inputs, float32 state); y comes back in the input's dtype, the last state in
float32 (float64 for float64 inputs, as on the other paths, though computed in float32).

Backward: the forward stores the state every CHUNK steps (batch, D, L / CHUNK, N). The backward walks the
chunks last to first, recomputes the chunk's states into a per-program scratch (CHUNK, BLOCK_D, N) in global
memory (it stays in L2), then runs the reverse-time recurrence for the state gradient; a block-wide barrier
separates the two phases, so the scratch is correct whatever thread layouts the compiler picks. gB/gC are reduced over
the block's channels in registers and written per block, (batch, G, blocks, N, L), then summed by torch: no
atomics, deterministic. Tested on the CPU in Triton's interpreter (TRITON_INTERPRET=1) against the reference.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from diffmf_cli.ops._autograd import grads_for_inputs, input_dtypes

CHUNK = 32
_SOFTPLUS_THRESHOLD = 20.0


@triton.jit
def _softplus(x):
    # max(x, 0) + log1p(exp(-|x|)); log1p by its series where the argument is tiny (no log1p in tl core).
    e = tl.exp(-tl.abs(x))
    l1p = tl.where(e < 1e-4, e - 0.5 * e * e, tl.log(1.0 + e))
    return tl.where(x <= 20.0, tl.maximum(x, 0.0) + l1p, x)


@triton.jit
def _scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, y_ptr, last_ptr, ckpt_ptr,
    dim, length, nstate, groups, per_group, nchunks,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    STORE_CKPT: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK_: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_g = tl.program_id(1)
    pid_k = tl.program_id(2)
    k = pid_k * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = k < per_group
    d = pid_g * per_group + k
    n = tl.arange(0, BLOCK_N)
    mask_n = n < nstate
    mask_dn = mask_d[:, None] & mask_n[None, :]
    A = tl.load(A_ptr + d[:, None] * nstate + n[None, :], mask=mask_dn, other=0.0).to(tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=mask_d, other=0.0).to(tl.float32)
    row = (pid_b * dim + d).to(tl.int64) * length
    bc = ((pid_b * groups + pid_g) * nstate + n).to(tl.int64) * length
    state = (pid_b * dim + d).to(tl.int64)[:, None] * nstate + n[None, :]
    h = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    for t in range(0, length):
        if STORE_CKPT:
            if t % CHUNK_ == 0:
                c = t // CHUNK_
                tl.store(ckpt_ptr + (pid_b * dim + d).to(tl.int64)[:, None] * nchunks * nstate + c * nstate
                         + n[None, :], h, mask=mask_dn)
        uu = tl.load(u_ptr + row + t, mask=mask_d, other=0.0).to(tl.float32)
        dt = tl.load(delta_ptr + row + t, mask=mask_d, other=0.0).to(tl.float32)
        if HAS_BIAS:
            dt = dt + bias
        if SOFTPLUS:
            dt = _softplus(dt)
        Bt = tl.load(B_ptr + bc + t, mask=mask_n, other=0.0).to(tl.float32)
        Ct = tl.load(C_ptr + bc + t, mask=mask_n, other=0.0).to(tl.float32)
        h = tl.exp(dt[:, None] * A) * h + (dt * uu)[:, None] * Bt[None, :]
        y = tl.sum(h * Ct[None, :], axis=1)
        if HAS_D:
            y = y + Dv * uu
        if HAS_Z:
            zz = tl.load(z_ptr + row + t, mask=mask_d, other=0.0).to(tl.float32)
            y = y * zz * tl.sigmoid(zz)
        tl.store(y_ptr + row + t, y.to(y_ptr.dtype.element_ty), mask=mask_d)
    tl.store(last_ptr + state, h, mask=mask_dn)


@triton.jit
def _scan_bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, ckpt_ptr, scratch_ptr, gy_ptr, glast_ptr,
    gu_ptr, gdelta_ptr, gz_ptr, gA_ptr, gB_ptr, gC_ptr, gD_ptr, gbias_ptr,
    dim, length, nstate, groups, per_group, nchunks, nblocks,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK_: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_g = tl.program_id(1)
    pid_k = tl.program_id(2)
    k = pid_k * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = k < per_group
    d = pid_g * per_group + k
    n = tl.arange(0, BLOCK_N)
    mask_n = n < nstate
    mask_dn = mask_d[:, None] & mask_n[None, :]
    A = tl.load(A_ptr + d[:, None] * nstate + n[None, :], mask=mask_dn, other=0.0).to(tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=mask_d, other=0.0).to(tl.float32)
    row = (pid_b * dim + d).to(tl.int64) * length
    bc = ((pid_b * groups + pid_g) * nstate + n).to(tl.int64) * length
    # per-block gB/gC slot: (batch, G, blocks, N, L)
    part = (((pid_b * groups + pid_g) * nblocks + pid_k) * nstate + n).to(tl.int64) * length
    state = (pid_b * dim + d).to(tl.int64)[:, None] * nstate + n[None, :]
    ckpt_row = (pid_b * dim + d).to(tl.int64)[:, None] * nchunks * nstate + n[None, :]
    program = (pid_b * groups + pid_g) * nblocks + pid_k
    tile = tl.arange(0, BLOCK_D)[:, None] * BLOCK_N + n[None, :]
    scratch = scratch_ptr + program.to(tl.int64) * (CHUNK_ * BLOCK_D * BLOCK_N) + tile

    gh = tl.load(glast_ptr + state, mask=mask_dn, other=0.0).to(tl.float32)
    gA = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    gD = tl.zeros([BLOCK_D], dtype=tl.float32)
    gbias = tl.zeros([BLOCK_D], dtype=tl.float32)
    for cc in range(0, nchunks):
        c = nchunks - 1 - cc
        t0 = c * CHUNK_
        h0 = tl.load(ckpt_ptr + ckpt_row + c * nstate, mask=mask_dn, other=0.0)
        h = h0
        # The scratch is written and read back by tensors whose thread layouts the compiler chooses; a barrier
        # before each phase makes every thread's stores visible to every reader (and keeps this chunk's
        # recompute from overwriting states the previous chunk's reverse pass is still reading), whatever the
        # layouts are.
        tl.debug_barrier()
        # Recompute the chunk's states into the scratch.
        for i in range(0, CHUNK_):
            t = t0 + i
            m = mask_d & ((k * 0 + t) < length)
            uu = tl.load(u_ptr + row + t, mask=m, other=0.0).to(tl.float32)
            dt = tl.load(delta_ptr + row + t, mask=m, other=0.0).to(tl.float32)
            if HAS_BIAS:
                dt = dt + bias
            if SOFTPLUS:
                dt = _softplus(dt)
            dt = tl.where(m, dt, 0.0)  # past the end (and padded channels): the state stands still
            Bt = tl.load(B_ptr + bc + t, mask=mask_n & ((n * 0 + t) < length), other=0.0).to(tl.float32)
            h = tl.exp(dt[:, None] * A) * h + (dt * uu)[:, None] * Bt[None, :]
            tl.store(scratch + i * (BLOCK_D * BLOCK_N), h)
        tl.debug_barrier()
        # Reverse-time recurrence through the chunk.
        for ii in range(0, CHUNK_):
            i = CHUNK_ - 1 - ii
            t = t0 + i
            valid_d = (k * 0 + t) < length  # (BLOCK_D,), all equal: t is inside the sequence
            valid_n = (n * 0 + t) < length  # (BLOCK_N,)
            m = mask_d & valid_d
            h_t = tl.load(scratch + i * (BLOCK_D * BLOCK_N))
            first = (tile * 0 + i) == 0  # (BLOCK_D, BLOCK_N), all equal: first step of the chunk
            h_prev = tl.load(scratch + (i - 1) * (BLOCK_D * BLOCK_N), mask=first == 0, other=0.0)
            h_prev = tl.where(first, h0, h_prev)
            uu = tl.load(u_ptr + row + t, mask=m, other=0.0).to(tl.float32)
            raw = tl.load(delta_ptr + row + t, mask=m, other=0.0).to(tl.float32)
            if HAS_BIAS:
                raw = raw + bias
            dt = raw
            if SOFTPLUS:
                dt = _softplus(raw)
            dt = tl.where(m, dt, 0.0)
            Bt = tl.load(B_ptr + bc + t, mask=mask_n & valid_n, other=0.0).to(tl.float32)
            Ct = tl.load(C_ptr + bc + t, mask=mask_n & valid_n, other=0.0).to(tl.float32)
            g_out = tl.load(gy_ptr + row + t, mask=m, other=0.0).to(tl.float32)
            if HAS_Z:
                zz = tl.load(z_ptr + row + t, mask=m, other=0.0).to(tl.float32)
                sig = tl.sigmoid(zz)
                y_pre = tl.sum(h_t * Ct[None, :], axis=1)
                if HAS_D:
                    y_pre = y_pre + Dv * uu
                tl.store(gz_ptr + row + t, g_out * y_pre * sig * (1.0 + zz * (1.0 - sig)), mask=m)
                g_out = g_out * zz * sig
            if HAS_D:
                gD += g_out * uu
            decay = tl.exp(dt[:, None] * A)
            ghn = gh + g_out[:, None] * Ct[None, :]
            tl.store(gC_ptr + part + t, tl.sum(g_out[:, None] * h_t, axis=0), mask=mask_n & valid_n)
            tl.store(gB_ptr + part + t, tl.sum(ghn * (dt * uu)[:, None], axis=0), mask=mask_n & valid_n)
            sum_gb = tl.sum(ghn * Bt[None, :], axis=1)
            dec = tl.where(valid_d[:, None], ghn * decay * h_prev, 0.0)
            sum_adt = tl.sum(dec * A, axis=1)
            gA += dt[:, None] * dec
            g_u = dt * sum_gb
            if HAS_D:
                g_u = g_u + g_out * Dv
            tl.store(gu_ptr + row + t, g_u, mask=m)
            g_dt = uu * sum_gb + sum_adt
            if SOFTPLUS:
                g_dt = tl.where(raw <= 20.0, g_dt * tl.sigmoid(raw), g_dt)
            g_dt = tl.where(m, g_dt, 0.0)
            tl.store(gdelta_ptr + row + t, g_dt, mask=m)
            gbias += g_dt
            gh = tl.where(valid_d[:, None], ghn * decay, gh)
    tl.store(gA_ptr + state, gA, mask=mask_dn)
    tl.store(gD_ptr + pid_b * dim + d, gD, mask=mask_d)
    tl.store(gbias_ptr + pid_b * dim + d, gbias, mask=mask_d)


def _blocks(dim: int, groups: int, nstate: int):
    per_group = dim // groups
    block_d = min(32, triton.next_power_of_2(per_group))
    block_n = triton.next_power_of_2(nstate)
    return per_group, block_d, block_n, triton.cdiv(per_group, block_d)


def _contig(t):
    return None if t is None else t.detach().contiguous()


class _TritonScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
        batch, dim, length = u.shape
        nstate = A.shape[1]
        B4 = B if B.dim() == 4 else B.unsqueeze(1)
        C4 = C if C.dim() == 4 else C.unsqueeze(1)
        groups = B4.shape[1]  # C has the same number of groups (checked by selective_scan)
        u_, delta_, A_, B_, C_ = (_contig(t) for t in (u, delta, A.float(), B4, C4))
        D_, z_, bias_ = _contig(D), _contig(z), _contig(delta_bias)
        per_group, block_d, block_n, nblocks = _blocks(dim, groups, nstate)
        need_grad = any(ctx.needs_input_grad[:8])
        nchunks = triton.cdiv(length, CHUNK)
        y = torch.empty_like(u_)
        last = u_.new_empty(batch, dim, nstate, dtype=torch.float32)
        ckpt = u_.new_empty(batch, dim, nchunks if need_grad else 1, nstate, dtype=torch.float32)
        dummy = last
        grid = (batch, groups, nblocks)
        _scan_fwd_kernel[grid](
            u_, delta_, A_, B_, C_, D_ if D_ is not None else dummy, z_ if z_ is not None else dummy,
            bias_ if bias_ is not None else dummy, y, last, ckpt,
            dim, length, nstate, groups, per_group, nchunks,
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
            SOFTPLUS=bool(delta_softplus), STORE_CKPT=need_grad, BLOCK_D=block_d, BLOCK_N=block_n, CHUNK_=CHUNK,
        )
        if need_grad:
            ctx.save_for_backward(u_, delta_, A_, B_, C_, D_, z_, bias_, ckpt)
            ctx.meta = (bool(delta_softplus), B.dim(), C.dim(), groups)
            ctx.dtypes = input_dtypes(u, delta, A, B, C, D, z, delta_bias)
        return y, last

    @staticmethod
    def backward(ctx, gy, glast):
        u_, delta_, A_, B_, C_, D_, z_, bias_, ckpt = ctx.saved_tensors
        softplus, b_dim, c_dim, groups = ctx.meta
        batch, dim, length = u_.shape
        nstate = A_.shape[1]
        per_group, block_d, block_n, nblocks = _blocks(dim, groups, nstate)
        f32 = dict(dtype=torch.float32, device=u_.device)
        gy_ = gy.contiguous() if gy is not None else torch.zeros(batch, dim, length, **f32)
        glast_ = glast.float().contiguous() if glast is not None else torch.zeros(batch, dim, nstate, **f32)
        gu = torch.empty(batch, dim, length, **f32)
        gdelta = torch.empty(batch, dim, length, **f32)
        gz = torch.empty(batch, dim, length, **f32) if z_ is not None else gu
        gA = torch.empty(batch, dim, nstate, **f32)
        gB = torch.empty(batch, groups, nblocks, nstate, length, **f32)
        gC = torch.empty(batch, groups, nblocks, nstate, length, **f32)
        gD = torch.empty(batch, dim, **f32)
        gbias = torch.empty(batch, dim, **f32)
        scratch = torch.empty(batch * groups * nblocks * CHUNK * block_d * block_n, **f32)
        grid = (batch, groups, nblocks)
        _scan_bwd_kernel[grid](
            u_, delta_, A_, B_, C_, D_ if D_ is not None else gD, z_ if z_ is not None else gu,
            bias_ if bias_ is not None else gD, ckpt, scratch, gy_, glast_,
            gu, gdelta, gz, gA, gB, gC, gD, gbias,
            dim, length, nstate, groups, per_group, ckpt.shape[2], nblocks,
            HAS_D=D_ is not None, HAS_Z=z_ is not None, HAS_BIAS=bias_ is not None, SOFTPLUS=softplus,
            BLOCK_D=block_d, BLOCK_N=block_n, CHUNK_=CHUNK,
        )

        def regroup(g, ndim):
            g = g.sum(2)  # over channel blocks -> (batch, groups, N, L)
            return g.squeeze(1) if ndim == 3 else g

        grads = [gu, gdelta, gA.sum(0), regroup(gB, b_dim), regroup(gC, c_dim),
                 gD.sum(0) if D_ is not None else None, gz if z_ is not None else None,
                 gbias.sum(0) if bias_ is not None else None]
        return grads_for_inputs(ctx, grads)


def selective_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                          return_last_state=False):
    """The Triton path; arguments already validated by `selective_scan`. Same signature and results."""
    y, last = _TritonScan.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if not return_last_state:
        return y
    return y, (last.to(torch.float64) if u.dtype == torch.float64 else last)
