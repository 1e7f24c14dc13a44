"""Mamba's selective scan as Triton kernels (forward and backward): the fast GPU path without compiled extensions.

PyTorch's CUDA wheels bring Triton, so this path needs no build step (mamba-ssm's CUDA kernel compiles for tens of
minutes at install). Semantics, shapes and the return value are those of
:func:`clipdehaze.models.ssm.selective_scan` (see :mod:`.selective_scan`; Gu & Dao 2023, eq. 2a/2b): u, δ, z
(b, d, L); A (d, n) real; B and C (d, n), (b, n, L) or (b, g, n, L); D and delta_bias (d,). The kernels are ours,
written from the recurrence; no mamba-ssm code is used.

Inputs may be float32, bfloat16 or float16 (read as they are, converted in registers); the state, every
intermediate and every reduction are float32. The output and the input gradients have their inputs' dtypes;
``last_state`` is float32. float64 is refused (``backend='torch'`` scans it exactly).

Algorithm. One program per (batch element, block of channels) walks the sequence in tiles of T steps (T a power of
two). A tile loads u, δ, B, C as (channels, T) / (n, T) blocks, forms the decays a_t = exp(Δ_t A) and the inputs
x_t = Δ_t B_t u_t as (channels, n, T) register tiles and runs ``tl.associative_scan`` over T with the composition
of affine maps h -> a h + x, which gives every state of the tile from the state entering it: h_t = X_t + P_t h_in.
The state entering each tile is kept for the backward (b, tiles, d, n: 1/T of the full state's size).

The backward walks the tiles from the last one, carrying the adjoint g of the state across tile borders:
g_t = C_t ȳ_t + a_{t+1} g_{t+1} is a reversed scan of the same composition whose coefficient a_{t+1} is formed by
reading δ one step ahead. Each tile first recomputes its states from the kept entering state (a forward scan),
then the adjoints (the reversed scan), and from both every gradient: a_t h_{t-1} = h_t - x_t needs no second
scan. Gradients of per-channel parameters (A, D, delta_bias, time-invariant B/C) are summed in registers over the
sequence and written once per program; time-varying B/C gradients are sums over the channels of a group, added
with atomics (their float summation order, hence their last bits, can differ between runs).

On CPU tensors the kernels run only under Triton's interpreter (``TRITON_INTERPRET=1`` in the environment before
triton is first imported): slow and exact, the way the test suite checks them without a GPU.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["INTERPRETER", "TileConfig", "selective_scan_triton", "tile_config"]

_LOG2E = math.log2(math.e)


@triton.jit
def _compose(a_first, x_first, a_then, x_then):
    """The affine map h -> a h + x of two consecutive steps, earlier first: an associative combine."""
    return a_first * a_then, a_then * x_first + x_then


@triton.jit
def _softplus(x):
    # log(1 + e^x) rounds 1 + e^x; scaling by e / ((1 + e) - 1) cancels that rounding (log1p accuracy, which
    # matters for the small Δ of Mamba's initialisation). Above 20 it is x, as in PyTorch.
    e = tl.exp(x)
    w = 1.0 + e
    small = tl.where(w == 1.0, e, tl.log(w) * (e / (w - 1.0)))
    return tl.where(x > 20.0, x, small)


@triton.jit
def _load_delta(delta_ptr, offs, mask, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """(Δ, pre-activation) of a (channels, T) block; Δ is 0 outside ``mask`` so padded steps leave h unchanged."""
    raw = tl.load(delta_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        raw += bias[:, None]
    if SOFTPLUS:
        dl = _softplus(raw)
    else:
        dl = raw
    return tl.where(mask, dl, 0.0), raw


@triton.jit
def _load_bc(ptr, pid_b, group, offs_d, offs_n, t, dn_ok, n_ok, t_ok, s_b, s_g, s_n, s_l,
             VARYING: tl.constexpr):
    """B or C for one tile, broadcastable to (channels, n, T): a shared (n, T) block or per-channel (d, n) values."""
    if VARYING:
        m = tl.load(ptr + pid_b * s_b + group * s_g + offs_n[:, None] * s_n + t[None, :] * s_l,
                    mask=n_ok[:, None] & t_ok[None, :], other=0.0).to(tl.float32)
        m = m[None, :, :]
    else:
        m = tl.load(ptr + offs_d[:, None] * s_g + offs_n[None, :] * s_n, mask=dn_ok, other=0.0).to(tl.float32)
        m = m[:, :, None]
    return m


@triton.jit
def _scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr, entering_ptr, last_ptr,
    d, n, length, n_tiles, b_group_size, c_group_size,
    s_ub, s_ud, s_ul, s_db, s_dd, s_dl, s_zb, s_zd, s_zl, s_ob, s_od, s_ol, s_Ad, s_An,
    s_Bb, s_Bg, s_Bn, s_Bl, s_Cb, s_Cg, s_Cn, s_Cl,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    B_VARYING: tl.constexpr, C_VARYING: tl.constexpr, KEEP_ENTERING: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, T: tl.constexpr,
):
    pid_d = tl.program_id(0)
    # 64-bit batch offsets: a batch of 1024² feature maps passes 2^31 elements.
    pid_b = tl.program_id(1).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    offs_t = tl.arange(0, T)
    d_ok = offs_d < d
    n_ok = offs_n < n
    dn_ok = d_ok[:, None] & n_ok[None, :]
    # exp(Δ A) = exp2(Δ · A log2 e): one multiply per element less inside the loop.
    A2 = tl.load(A_ptr + offs_d[:, None] * s_Ad + offs_n[None, :] * s_An, mask=dn_ok, other=0.0).to(tl.float32)
    A2 = A2 * 1.4426950408889634
    bias = tl.zeros((BLOCK_D,), dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=d_ok, other=0.0).to(tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=d_ok, other=0.0).to(tl.float32)
    b_group = (pid_d * BLOCK_D) // b_group_size
    c_group = (pid_d * BLOCK_D) // c_group_size
    state_offs = offs_d[:, None] * n + offs_n[None, :]

    h = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    for k in range(0, n_tiles):
        t = k * T + offs_t
        t_ok = t < length
        m = d_ok[:, None] & t_ok[None, :]
        u = tl.load(u_ptr + pid_b * s_ub + offs_d[:, None] * s_ud + t[None, :] * s_ul, mask=m, other=0.0)
        u = u.to(tl.float32)
        dl, _ = _load_delta(delta_ptr + pid_b * s_db, offs_d[:, None] * s_dd + t[None, :] * s_dl, m, bias,
                            HAS_BIAS, SOFTPLUS)
        Bt = _load_bc(B_ptr, pid_b, b_group, offs_d, offs_n, t, dn_ok, n_ok, t_ok, s_Bb, s_Bg, s_Bn, s_Bl,
                      B_VARYING)
        Ct = _load_bc(C_ptr, pid_b, c_group, offs_d, offs_n, t, dn_ok, n_ok, t_ok, s_Cb, s_Cg, s_Cn, s_Cl,
                      C_VARYING)
        if KEEP_ENTERING:
            tl.store(entering_ptr + (pid_b * n_tiles + k) * d * n + state_offs, h, mask=dn_ok)
        a = tl.exp2(dl[:, None, :] * A2[:, :, None])
        x = (dl * u)[:, None, :] * Bt
        P, X = tl.associative_scan((a, x), axis=2, combine_fn=_compose)
        hs = X + P * h[:, :, None]
        y = tl.sum(hs * Ct, axis=1)
        # Padded steps have a = 1 and x = 0, so the last column is the state after the tile's last real step.
        h = tl.sum(tl.where(offs_t[None, None, :] == T - 1, hs, 0.0), axis=2)
        if HAS_D:
            y += Dv[:, None] * u
        if HAS_Z:
            zv = tl.load(z_ptr + pid_b * s_zb + offs_d[:, None] * s_zd + t[None, :] * s_zl, mask=m, other=0.0)
            zv = zv.to(tl.float32)
            y *= zv * tl.sigmoid(zv)
        tl.store(out_ptr + pid_b * s_ob + offs_d[:, None] * s_od + t[None, :] * s_ol,
                 y.to(out_ptr.dtype.element_ty), mask=m)
    tl.store(last_ptr + pid_b * d * n + state_offs, h, mask=dn_ok)


@triton.jit
def _scan_bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dout_ptr, entering_ptr, dlast_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr,
    d, n, length, n_tiles, b_group_size, c_group_size, b_groups, c_groups,
    s_ub, s_ud, s_ul, s_db, s_dd, s_dl, s_zb, s_zd, s_zl, s_gb, s_gd, s_gl, s_Ad, s_An,
    s_Bb, s_Bg, s_Bn, s_Bl, s_Cb, s_Cg, s_Cn, s_Cl,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    B_VARYING: tl.constexpr, C_VARYING: tl.constexpr, HAS_DLAST: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, T: tl.constexpr,
):
    """Gradients; du, dδ, dz are (b, d, L) contiguous; dA, dD, dδ-bias and time-invariant dB/dC are per-batch
    partial sums (b, d[, n]); time-varying dB/dC are (b, groups, n, L) float32 buffers added to atomically."""
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    offs_t = tl.arange(0, T)
    d_ok = offs_d < d
    n_ok = offs_n < n
    dn_ok = d_ok[:, None] & n_ok[None, :]
    A = tl.load(A_ptr + offs_d[:, None] * s_Ad + offs_n[None, :] * s_An, mask=dn_ok, other=0.0).to(tl.float32)
    A2 = A * 1.4426950408889634
    bias = tl.zeros((BLOCK_D,), dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=d_ok, other=0.0).to(tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=d_ok, other=0.0).to(tl.float32)
    b_group = (pid_d * BLOCK_D) // b_group_size
    c_group = (pid_d * BLOCK_D) // c_group_size
    state_offs = offs_d[:, None] * n + offs_n[None, :]
    grad_offs = pid_b * d * length + offs_d[:, None] * length

    g = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    if HAS_DLAST:
        g = tl.load(dlast_ptr + pid_b * d * n + state_offs, mask=dn_ok, other=0.0).to(tl.float32)
    dA_acc = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    dB_acc = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    dC_acc = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    dD_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    dbias_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for i in range(0, n_tiles):
        k = n_tiles - 1 - i
        t = k * T + offs_t
        t_ok = t < length
        m = d_ok[:, None] & t_ok[None, :]
        u = tl.load(u_ptr + pid_b * s_ub + offs_d[:, None] * s_ud + t[None, :] * s_ul, mask=m, other=0.0)
        u = u.to(tl.float32)
        delta_base = delta_ptr + pid_b * s_db
        dl, raw = _load_delta(delta_base, offs_d[:, None] * s_dd + t[None, :] * s_dl, m, bias, HAS_BIAS, SOFTPLUS)
        # Δ one step ahead: the adjoint recurrence's coefficient a_{t+1}; 0 (a = 1) past the end.
        ahead = t + 1
        dl_next, _ = _load_delta(delta_base, offs_d[:, None] * s_dd + ahead[None, :] * s_dl,
                                 d_ok[:, None] & (ahead < length)[None, :], bias, HAS_BIAS, SOFTPLUS)
        Bt = _load_bc(B_ptr, pid_b, b_group, offs_d, offs_n, t, dn_ok, n_ok, t_ok, s_Bb, s_Bg, s_Bn, s_Bl,
                      B_VARYING)
        Ct = _load_bc(C_ptr, pid_b, c_group, offs_d, offs_n, t, dn_ok, n_ok, t_ok, s_Cb, s_Cg, s_Cn, s_Cl,
                      C_VARYING)
        h_in = tl.load(entering_ptr + (pid_b * n_tiles + k) * d * n + state_offs, mask=dn_ok, other=0.0)

        a = tl.exp2(dl[:, None, :] * A2[:, :, None])
        x = (dl * u)[:, None, :] * Bt
        P, X = tl.associative_scan((a, x), axis=2, combine_fn=_compose)
        hs = X + P * h_in[:, :, None]

        dout = tl.load(dout_ptr + pid_b * s_gb + offs_d[:, None] * s_gd + t[None, :] * s_gl, mask=m, other=0.0)
        dy = dout.to(tl.float32)
        if HAS_Z:
            zv = tl.load(z_ptr + pid_b * s_zb + offs_d[:, None] * s_zd + t[None, :] * s_zl, mask=m, other=0.0)
            zv = zv.to(tl.float32)
            sig = tl.sigmoid(zv)
            y = tl.sum(hs * Ct, axis=1)
            if HAS_D:
                y += Dv[:, None] * u
            dz = dy * y * sig * (1.0 + zv * (1.0 - sig))
            tl.store(dz_ptr + grad_offs + t[None, :], dz.to(dz_ptr.dtype.element_ty), mask=m)
            dy = dy * zv * sig
        du = tl.zeros((BLOCK_D, T), dtype=tl.float32)
        if HAS_D:
            dD_acc += tl.sum(dy * u, axis=1)
            du = dy * Dv[:, None]

        P, G = tl.associative_scan((tl.exp2(dl_next[:, None, :] * A2[:, :, None]), Ct * dy[:, None, :]),
                                   axis=2, combine_fn=_compose, reverse=True)
        gs = G + P * g[:, :, None]
        g = tl.sum(tl.where(offs_t[None, None, :] == 0, gs, 0.0), axis=2)

        gB = tl.sum(gs * Bt, axis=1)
        # g_t a_t h_{t-1} = ∂L/∂(Δ_t A), with a_t h_{t-1} = h_t - x_t.
        g_exponent = gs * (hs - x)
        du += dl * gB
        ddl = u * gB + tl.sum(g_exponent * A[:, :, None], axis=1)
        dA_acc += tl.sum(g_exponent * dl[:, None, :], axis=2)
        if SOFTPLUS:
            ddl = ddl * tl.sigmoid(raw)
        ddl = tl.where(m, ddl, 0.0)
        if HAS_BIAS:
            dbias_acc += tl.sum(ddl, axis=1)
        tl.store(du_ptr + grad_offs + t[None, :], du.to(du_ptr.dtype.element_ty), mask=m)
        tl.store(ddelta_ptr + grad_offs + t[None, :], ddl.to(ddelta_ptr.dtype.element_ty), mask=m)

        dB_terms = gs * (dl * u)[:, None, :]
        dC_terms = hs * dy[:, None, :]
        tn_ok = n_ok[:, None] & t_ok[None, :]
        if B_VARYING:
            tl.atomic_add(dB_ptr + ((pid_b * b_groups + b_group) * n + offs_n[:, None]) * length + t[None, :],
                          tl.sum(dB_terms, axis=0), mask=tn_ok)
        else:
            dB_acc += tl.sum(dB_terms, axis=2)
        if C_VARYING:
            tl.atomic_add(dC_ptr + ((pid_b * c_groups + c_group) * n + offs_n[:, None]) * length + t[None, :],
                          tl.sum(dC_terms, axis=0), mask=tn_ok)
        else:
            dC_acc += tl.sum(dC_terms, axis=2)

    tl.store(dA_ptr + pid_b * d * n + state_offs, dA_acc, mask=dn_ok)
    if not B_VARYING:
        tl.store(dB_ptr + pid_b * d * n + state_offs, dB_acc, mask=dn_ok)
    if not C_VARYING:
        tl.store(dC_ptr + pid_b * d * n + state_offs, dC_acc, mask=dn_ok)
    if HAS_D:
        tl.store(dD_ptr + pid_b * d + offs_d, dD_acc, mask=d_ok)
    if HAS_BIAS:
        tl.store(dbias_ptr + pid_b * d + offs_d, dbias_acc, mask=d_ok)


INTERPRETER: bool = type(_scan_fwd_kernel).__name__ == "InterpretedFunction"
"""Whether the kernels above were built for Triton's interpreter (``TRITON_INTERPRET=1`` when triton was imported)."""


# ---------------------------------------------------------------------------------------------------- launch


class TileConfig(NamedTuple):
    """The launch shape of one scan."""

    block_d: int     # channels per program
    block_n: int     # state size padded to a power of two
    steps: int       # steps per tile, a power of two
    fwd_warps: int
    bwd_warps: int


# Float32 values per (channels, n, T) register tile. Compiled offline for sm_90 (clipdehaze.gpu_check), 1024 keeps
# the backward's dozen live tiles in registers with 8 warps (no spills); 2048 spilled.
_TILE_ELEMS = 1024


@functools.cache
def _multiprocessors(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def tile_config(batch: int, d: int, n: int, length: int, group_size: int, device: torch.device,
                chunk_size: int | None = None) -> TileConfig:
    """Launch shape: channels per program, state padded to a power of two, steps per tile, warps.

    Channels per program: a power of two dividing ``group_size`` (so a program reads one B/C row per step), up to
    8 state rows per program, fewer when that leaves too few programs to fill the GPU (twice its
    multiprocessors). Steps per tile: ``chunk_size`` (a power of two) or the tile budget over channels x n, at
    least 16 and at most L rounded up.
    """
    block_n = triton.next_power_of_2(n)
    block_d = 1
    while block_d * 2 * block_n <= 8 and group_size % (block_d * 2) == 0:
        block_d *= 2
    if device.type == "cuda":
        while block_d > 1 and batch * triton.cdiv(d, block_d) < 2 * _multiprocessors(device.index or 0):
            block_d //= 2
    if chunk_size is not None:
        if chunk_size < 1 or chunk_size & (chunk_size - 1):
            raise ValueError(f"chunk_size must be a power of two for the Triton scan, got {chunk_size}")
        steps = chunk_size
    else:
        steps = max(16, min(_TILE_ELEMS // (block_d * block_n), triton.next_power_of_2(length), 256))
    return TileConfig(block_d, block_n, steps, fwd_warps=4, bwd_warps=8)


def _bc_strides(m: Tensor, d: int) -> tuple[bool, int, int, tuple[int, int, int, int]]:
    """(time-varying, groups, channels per group, strides as (b, g, n, L)) of B or C.

    A time-invariant (d, n) matrix is read as d groups of one channel with zero batch and time strides.
    """
    if m.dim() == 2:
        return False, d, 1, (0, m.stride(0), m.stride(1), 0)
    if m.dim() == 3:
        return True, 1, d, (m.stride(0), 0, m.stride(1), m.stride(2))
    return True, m.shape[1], d // m.shape[1], tuple(m.stride())


def _check(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, extras: dict[str, Tensor | None]) -> None:
    from clipdehaze.models.ssm.selective_scan import _check_bc

    if A.is_complex():
        raise ValueError("the Triton selective scan supports real A only (as Mamba, VMamba and MambaIR use)")
    if u.dim() != 3 or delta.shape != u.shape or A.dim() != 2 or A.shape[0] != u.shape[1]:
        raise ValueError(f"expected u and delta (b, d, L) and A (d, n); got u {tuple(u.shape)}, "
                         f"delta {tuple(delta.shape)}, A {tuple(A.shape)}")
    _check_bc("B", B, u, A)
    _check_bc("C", C, u, A)
    tensors = {"u": u, "delta": delta, "A": A, "B": B, "C": C, **{k: v for k, v in extras.items() if v is not None}}
    if bad := [k for k, v in tensors.items() if v.dtype not in (torch.float32, torch.bfloat16, torch.float16)]:
        raise ValueError(f"the Triton selective scan takes float32, bfloat16 or float16 tensors; {bad} are "
                         f"{[str(tensors[k].dtype) for k in bad]} (backend='torch' scans float64)")
    if len({v.device for v in tensors.values()}) > 1:
        raise ValueError(f"all tensors must be on one device, got {sorted({str(v.device) for v in tensors.values()})}")
    if not u.is_cuda and not INTERPRETER:
        raise RuntimeError(f"the tensors are on {u.device}: Triton kernels run on CUDA tensors, or on CPU under "
                           "Triton's interpreter (TRITON_INTERPRET=1 set before triton is first imported)")


class _TritonScan(torch.autograd.Function):

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size):
        b, d, length = u.shape
        n = A.shape[1]
        b_varying, b_groups, b_group_size, b_strides = _bc_strides(B, d)
        c_varying, c_groups, c_group_size, c_strides = _bc_strides(C, d)
        cfg = tile_config(b, d, n, length, math.gcd(b_group_size, c_group_size), u.device, chunk_size)
        n_tiles = triton.cdiv(length, cfg.steps)
        keep = any(ctx.needs_input_grad[:8])
        out = torch.empty_like(u, memory_format=torch.contiguous_format)
        last = u.new_empty(b, d, n, dtype=torch.float32)
        entering = u.new_empty(b, n_tiles, d, n, dtype=torch.float32) if keep else last
        zs = z.stride() if z is not None else (0, 0, 0)
        grid = (triton.cdiv(d, cfg.block_d), b)
        _scan_fwd_kernel[grid](
            u, delta, A, B, C, D if D is not None else u, z if z is not None else u,
            delta_bias if delta_bias is not None else u, out, entering, last,
            d, n, length, n_tiles, b_group_size, c_group_size,
            *u.stride(), *delta.stride(), *zs, *out.stride(), *A.stride(), *b_strides, *c_strides,
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(delta_softplus),
            B_VARYING=b_varying, C_VARYING=c_varying, KEEP_ENTERING=keep,
            BLOCK_D=cfg.block_d, BLOCK_N=cfg.block_n, T=cfg.steps, num_warps=cfg.fwd_warps,
        )
        if keep:
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, entering)
            ctx.layout = (cfg, n_tiles, b_varying, c_varying, b_groups, c_groups, b_group_size, c_group_size,
                          b_strides, c_strides, bool(delta_softplus))
        ctx.set_materialize_grads(False)
        return out, last

    @staticmethod
    def backward(ctx, dout, dlast):
        u, delta, A, B, C, D, z, delta_bias, entering = ctx.saved_tensors
        (cfg, n_tiles, b_varying, c_varying, b_groups, c_groups, b_group_size, c_group_size,
         b_strides, c_strides, softplus) = ctx.layout
        b, d, length = u.shape
        n = A.shape[1]
        if dout is None:
            dout = u.new_zeros(()).expand(b, d, length)
        f32 = dict(dtype=torch.float32, device=u.device)
        du = torch.empty(b, d, length, dtype=u.dtype, device=u.device)
        ddelta = torch.empty(b, d, length, dtype=delta.dtype, device=u.device)
        dz = torch.empty(b, d, length, dtype=z.dtype, device=u.device) if z is not None else du
        dA = torch.empty(b, d, n, **f32)
        dB = torch.zeros(b, b_groups, n, length, **f32) if b_varying else torch.empty(b, d, n, **f32)
        dC = torch.zeros(b, c_groups, n, length, **f32) if c_varying else torch.empty(b, d, n, **f32)
        dD = torch.empty(b, d, **f32) if D is not None else dA
        dbias = torch.empty(b, d, **f32) if delta_bias is not None else dA
        zs = z.stride() if z is not None else (0, 0, 0)
        grid = (triton.cdiv(d, cfg.block_d), b)
        _scan_bwd_kernel[grid](
            u, delta, A, B, C, D if D is not None else u, z if z is not None else u,
            delta_bias if delta_bias is not None else u, dout, entering,
            dlast.contiguous() if dlast is not None else dA,
            du, ddelta, dz, dA, dB, dC, dD, dbias,
            d, n, length, n_tiles, b_group_size, c_group_size, b_groups, c_groups,
            *u.stride(), *delta.stride(), *zs, *dout.stride(), *A.stride(), *b_strides, *c_strides,
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus,
            B_VARYING=b_varying, C_VARYING=c_varying, HAS_DLAST=dlast is not None,
            BLOCK_D=cfg.block_d, BLOCK_N=cfg.block_n, T=cfg.steps, num_warps=cfg.bwd_warps,
        )
        dB = dB.view(B.shape) if b_varying else dB.sum(0)
        dC = dC.view(C.shape) if c_varying else dC.sum(0)
        return (du, ddelta, dA.sum(0).to(A.dtype), dB.to(B.dtype), dC.to(C.dtype),
                dD.sum(0).to(D.dtype) if D is not None else None, dz if z is not None else None,
                dbias.sum(0).to(delta_bias.dtype) if delta_bias is not None else None, None, None)


def selective_scan_triton(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                          z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = False,
                          return_last_state: bool = False, chunk_size: int | None = None):
    """The selective scan by the Triton kernels; arguments and result as :func:`.selective_scan`.

    ``chunk_size``: steps per tile (a power of two); default from :func:`tile_config`. ``last_state`` is float32.
    """
    _check(u, delta, A, B, C, {"D": D, "z": z, "delta_bias": delta_bias})
    out, last = _TritonScan.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size)
    return (out, last) if return_last_state else out
