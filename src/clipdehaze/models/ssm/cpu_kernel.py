"""The compiled CPU selective scan (``cpu_scan.cpp``): built on first use, loaded with ctypes, PyTorch fallback.

The kernel computes, for every batch element b, scan direction k, channel c and state index n, along the
positions p_k(0), ..., p_k(L-1) that direction k visits:

    δ_t = given, or dt_proj[k] @ dts_t (a low-rank Δ, as SS2D's projection makes it)
    Δ_t = softplus(δ_t + bias)  (bias, softplus optional)
    h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t u_t,   y_t = <C_t, h_t> + D u_t   (D optional)

with the gradients of u, δ (or dts and dt_proj), A, B, C, D and bias from a hand-written adjoint. Directions come
in groups that read one input map u and sum their outputs into one y (:func:`scan`), so the same code serves
``selective_scan_torch``'s (b, d, L) tensors (a group of one direction per channel group of B and C) and SS2D's
channel-last map walked row by row and column by column, forwards and backwards, in place (one map read by every
group, and summed into one output or one per group). Operands are read through views of any strides. d_state is at
most :data:`MAX_STATE`.

Why compiled: the recurrence is sequential in L, so an eager PyTorch scan issues a few dozen small ops per
step and writes intermediates to memory; here each step is a few vector instructions on data in cache,
one exponential per state element and pass, and every operand is read once per pass.

Building: a C++ compiler (``$CXX``, else g++, c++ or clang++) compiles the source into
``$CLIPDEHAZE_CACHE/kernels`` (else ``~/.cache/clipdehaze/kernels``), keyed by the source, the flags, the
compiler and the CPU; it takes 10-20 s of CPU time (an instance per state size and item width, float32 and float64).
Without a compiler, or when the build fails, :func:`unavailable_reason` says why and ``selective_scan_torch`` runs
its chunked PyTorch scan instead.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

log = logging.getLogger(__name__)

__all__ = ["ORDERS", "available", "scan", "unavailable_reason"]

SOURCE = Path(__file__).with_name("cpu_scan.cpp")
ABI_VERSION = 4
#: Largest state size the kernel runs (padded to a power of two inside); larger ones take the chunked PyTorch scan.
MAX_STATE = 16
# Scan orders of a height x width map flattened row-major: bit 0 walks it column by column, bit 1 backwards.
ORDERS = {"rows": 0, "cols": 1, "rows_reversed": 2, "cols_reversed": 3}

# Tried in order; the first that compiles wins. -march=native: the library is built on and for this machine.
# -fno-trapping-math lets the compiler turn the selects of the exp / softplus code into vector blends (no
# floating-point traps are relied on); -ffp-contract=fast fuses a * b + c into one FMA instruction where the CPU has
# one (one rounding instead of two: results differ from separate operations in the last bit, never by more). Not
# -ffast-math: the exp / log range reductions depend on IEEE rounding. -Wno-psabi: the vector types are internal.
_COMMON_FLAGS = ["-O3", "-fno-trapping-math", "-fno-math-errno", "-ffp-contract=fast", "-Wno-psabi"]
_FLAG_SETS = (
    [*_COMMON_FLAGS, "-march=native", "-mprefer-vector-width=512", "-fopenmp"],
    [*_COMMON_FLAGS, "-march=native", "-fopenmp"],
    [*_COMMON_FLAGS, "-fopenmp"],
    _COMMON_FLAGS,
)


def _cache_dir() -> Path:
    if os.environ.get("CLIPDEHAZE_CACHE"):
        return Path(os.environ["CLIPDEHAZE_CACHE"]).expanduser() / "kernels"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "clipdehaze" / "kernels"


def _cpu_signature() -> str:
    """What -march=native depends on: the CPU's model and feature flags (a shared cache may serve other CPUs)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "\n".join(sorted({ln for ln in lines if ln.startswith(("model name", "flags", "Features"))}))
    except OSError:
        return platform.processor() + platform.machine()


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


class _ScanArgs(ctypes.Structure):
    """Mirror of ``ScanArgs`` in cpu_scan.cpp."""

    _fields_ = [(name, ctypes.c_int64) for name in
                ("batch", "groups", "dirs_per_group", "length", "channels", "state", "height", "width", "chunk",
                 "lanes", "dt_rank")] + [
        ("order", ctypes.c_void_p),
        ("u", ctypes.c_void_p), ("u_s", ctypes.c_int64 * 4),
        ("delta", ctypes.c_void_p), ("dl_s", ctypes.c_int64 * 5),
        ("dt_w", ctypes.c_void_p),
        ("A", ctypes.c_void_p),
        ("B", ctypes.c_void_p), ("b_s", ctypes.c_int64 * 5),
        ("C", ctypes.c_void_p), ("c_s", ctypes.c_int64 * 5),
        ("D", ctypes.c_void_p), ("bias", ctypes.c_void_p),
        ("softplus", ctypes.c_int32), ("threads", ctypes.c_int32), ("merge_groups", ctypes.c_int32),
        ("y", ctypes.c_void_p), ("y_s", ctypes.c_int64 * 4),
        ("checkpoints", ctypes.c_void_p), ("last_state", ctypes.c_void_p),
        ("grad_y", ctypes.c_void_p), ("gy_s", ctypes.c_int64 * 4),
        ("grad_last", ctypes.c_void_p),
        ("du", ctypes.c_void_p), ("du_s", ctypes.c_int64 * 4),
    ] + [(name, ctypes.c_void_p) for name in ("ddelta", "ddt_w", "dA", "dB", "dC", "dD", "dbias")]


def _build(compiler: str) -> tuple[Path | None, str]:
    source = SOURCE.read_bytes()
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    errors = []
    for flags in _FLAG_SETS:
        key = hashlib.sha256(b"\0".join([source, " ".join(flags).encode(), version.encode(),
                                         _cpu_signature().encode()])).hexdigest()[:20]
        target = _cache_dir() / f"cpu_scan-{key}{'.dll' if os.name == 'nt' else '.so'}"
        if target.is_file():
            return target, ""
        target.parent.mkdir(parents=True, exist_ok=True)
        # Built under a temporary name and renamed: concurrent first uses (test workers, DDP ranks) never
        # load a half-written library.
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            out = Path(tmp) / target.name
            cmd = [compiler, *flags, "-std=c++17", "-shared", "-fPIC", str(SOURCE), "-o", str(out)]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode == 0:
                os.replace(out, target)
                log.info("built the CPU selective-scan kernel: %s", target)
                return target, ""
            errors.append(f"{' '.join(flags)}: {res.stderr.strip().splitlines()[-1:] or res.returncode}")
    return None, "; ".join(errors)


@functools.cache
def _library() -> tuple[ctypes.CDLL | None, str | None]:
    compiler = _compiler()
    if compiler is None:
        return None, "no C++ compiler found (set CXX, or install g++ or clang++)"
    try:
        path, errors = _build(compiler)
        if path is None:
            return None, f"compiling {SOURCE.name} failed ({errors})"
        lib = ctypes.CDLL(str(path))
        if lib.clipdehaze_scan_abi_version() != ABI_VERSION:
            return None, f"{path} has another ABI version than this module"
    except OSError as err:
        return None, f"building or loading {SOURCE.name} failed: {err}"
    for name in ("forward_f32", "forward_f64", "backward_f32", "backward_f64"):
        fn = getattr(lib, f"clipdehaze_scan_{name}")
        fn.argtypes, fn.restype = [ctypes.POINTER(_ScanArgs)], ctypes.c_int
    return lib, None


@functools.cache
def _warn(reason: str) -> None:
    log.warning("the CPU selective scan runs the slower PyTorch path: %s", reason)


def unavailable_reason() -> str | None:
    """Why the compiled scan cannot run here (``None`` when it can). Builds it on the first call."""
    lib, reason = _library()
    if lib is None:
        _warn(reason)
    return reason


def available(*tensors: Tensor) -> bool:
    """Whether :func:`scan` can take these tensors: on CPU (or the meta device: shapes only, as MAC counting runs
    networks), float32 or float64, and the kernel built."""
    return (all(t.device.type in ("cpu", "meta") and t.dtype in (torch.float32, torch.float64) for t in tensors)
            and unavailable_reason() is None)


_LANES = 16  # channels per vector block, kLanes in the source


def _geometry(batch: int, groups: int, channels: int, state: int, threads: int,
              dtype: torch.dtype = torch.float32) -> tuple[int, int]:
    """(lanes, chunk): channels per work item (16 times a power of two, as compiled in) and steps per chunk.

    An item reads each position's row once for all its channels, so items are as wide as the state allows (its
    state x lanes values stay in vector registers: up to 4 blocks at state 1, 2 at state 2, 1 from 4 on; float64,
    for tests, one block) without leaving a thread more work than a narrower split would. A chunk keeps the backward's
    per-step decays and decayed states, 2 x chunk x state x lanes values, near 32 kB, in cache; longer chunks
    would only save the small per-chunk checkpoints."""
    padded = 1 << max(0, state - 1).bit_length()
    blocks = -(-channels // _LANES)
    limit = 1 if dtype == torch.float64 else max(1, 4 // padded)
    # The widest item (fewest per-step overheads) among those that load the busiest thread least (items handed to
    # the least loaded thread, largest first, as the dynamic schedule about does).
    options = []
    per_item = 1
    while per_item <= min(blocks, limit):
        sizes = sorted([per_item] * (blocks // per_item) + [blocks % per_item] * bool(blocks % per_item),
                       reverse=True) * (batch * groups)
        loads = [0] * max(1, threads)
        for size in sorted(sizes, reverse=True):
            loads[loads.index(min(loads))] += size
        options.append((max(loads), -per_item))
        per_item *= 2
    lanes = -min(options)[1] * _LANES
    return lanes, max(8, min(256, 4096 // (padded * lanes)))


def _ptr(t: Tensor | None) -> int | None:
    return t.data_ptr() if t is not None else None


def _group_strides(t: Tensor) -> tuple[int, ...]:
    """A (b, G, L, d) operand's strides; a map shared by the groups (G = 1) steps by 0 from group to group."""
    return (t.stride(0), 0 if t.shape[1] == 1 else t.stride(1), *t.stride()[2:])


def _args(u, delta, dt_w, A, B, C, D, bias, orders, height, width, softplus, y, checkpoints, last):
    """The kernel's arguments, and the order tensor they point into (keep it alive for the call)."""
    b, groups, length, per_group = delta.shape[:4]
    d, n = A.shape[1:]
    threads = torch.get_num_threads()
    merge = u.shape[1] == 1 < groups
    # With merged groups only one group's items run at a time.
    lanes, chunk = _geometry(b, 1 if merge else groups, d, n, threads, u.dtype)
    order = torch.tensor(orders, dtype=torch.int32)
    args = _ScanArgs(batch=b, groups=groups, dirs_per_group=per_group, length=length, channels=d, state=n,
                     height=height, width=width, chunk=chunk, lanes=lanes,
                     dt_rank=dt_w.shape[-1] if dt_w is not None else 0, order=order.data_ptr(),
                     u=u.data_ptr(), u_s=_group_strides(u), delta=delta.data_ptr(), dl_s=delta.stride(),
                     dt_w=_ptr(dt_w), merge_groups=int(merge),
                     A=A.data_ptr(), B=B.data_ptr(), b_s=B.stride(), C=C.data_ptr(), c_s=C.stride(),
                     D=_ptr(D), bias=_ptr(bias), softplus=int(softplus), threads=threads,
                     y=_ptr(y), y_s=_group_strides(y) if y is not None else (0,) * 4,
                     checkpoints=_ptr(checkpoints), last_state=_ptr(last))
    return args, order


def _call(name: str, t: Tensor, args: _ScanArgs) -> None:
    lib, _ = _library()
    fn = getattr(lib, f"clipdehaze_scan_{name}_{'f32' if t.dtype == torch.float32 else 'f64'}")
    if fn(ctypes.byref(args)):
        raise RuntimeError(f"the compiled scan has no instance for d_state {args.state} with {args.lanes} lanes")


class _Scan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, dt_w, A, B, C, D, bias, orders, height, width, softplus, want_last):
        b, groups, length, per_group = delta.shape[:4]
        k, (d, n) = groups * per_group, A.shape[1:]
        y = torch.empty_like(u)  # u's layout: a (b, d, L) caller's view of y is then contiguous
        _, chunk = _geometry(b, 1 if u.shape[1] == 1 < groups else groups, d, n, torch.get_num_threads(), u.dtype)
        checkpoints = (torch.empty(b, k, -(-length // chunk), n, d, dtype=u.dtype)
                       if torch.is_grad_enabled() or any(ctx.needs_input_grad) else None)
        last = torch.empty(b, k, d, n, dtype=u.dtype) if want_last else None
        args, order = _args(u, delta, dt_w, A, B, C, D, bias, orders, height, width, softplus, y, checkpoints,
                            last)
        _call("forward", u, args)
        ctx.save_for_backward(u, delta, dt_w, A, B, C, D, bias, checkpoints)
        ctx.geometry = (orders, height, width, softplus)
        return y, last

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y, grad_last):
        u, delta, dt_w, A, B, C, D, bias, checkpoints = ctx.saved_tensors
        orders, height, width, softplus = ctx.geometry
        b, groups, length, per_group = delta.shape[:4]
        k, n = groups * per_group, A.shape[-1]
        grad_y = grad_y if grad_y is not None else torch.zeros_like(u)
        # du is written with its own strides (u's layout where u is dense, as y).
        du, dA = torch.empty_like(u), torch.empty_like(A)
        # dB and dC (and a low-rank Δ's gradient) come out direction-major (b, k, L, ·); viewed back to the
        # operands' (b, G, L, J, ·).
        dB, dC = (torch.empty(b, groups, per_group, length, n, dtype=u.dtype) for _ in range(2))
        if dt_w is None:
            ddelta, ddt_w = torch.empty_like(delta), None
        else:
            ddelta = torch.empty(b, groups, per_group, length, dt_w.shape[-1], dtype=u.dtype)
            ddt_w = torch.empty_like(dt_w)
        dD = torch.empty_like(D) if D is not None else None
        dbias = torch.empty_like(bias) if bias is not None else None
        args, order = _args(u, delta, dt_w, A, B, C, D, bias, orders, height, width, softplus, None, checkpoints,
                            None)
        args.grad_y, args.gy_s = grad_y.data_ptr(), _group_strides(grad_y)
        grad_last = grad_last.contiguous() if grad_last is not None else None
        args.grad_last = _ptr(grad_last)
        args.du, args.du_s = du.data_ptr(), _group_strides(du)
        for name, t in (("ddelta", ddelta), ("ddt_w", ddt_w), ("dA", dA), ("dB", dB), ("dC", dC), ("dD", dD),
                        ("dbias", dbias)):
            setattr(args, name, _ptr(t))
        _call("backward", u, args)
        if dt_w is not None:
            ddelta = ddelta.transpose(2, 3)
        return (du, ddelta, ddt_w, dA, dB.transpose(2, 3), dC.transpose(2, 3), dD, dbias,
                None, None, None, None, None)


def scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
         delta_bias: Tensor | None = None, delta_softplus: bool = False, orders: tuple[int, ...] | None = None,
         height: int = 1, width: int | None = None, return_last_state: bool = False, dt_proj: Tensor | None = None):
    """Selective scan of G groups of J directions each over views of any strides; differentiable.

    Args:
        u: (b, G, L, d), one input map per group, read by each of its directions; or (b, 1, L, d), one map that
            every group reads and that y sums all directions into (the groups then run one after another).
        delta: (b, G, L, J, d), the pre-activation δ of direction j of group g at each position of the map; with
            ``dt_proj``, the low-rank (b, G, L, J, r) factor instead, and δ = dt_proj[k] @ delta per position.
        B, C: (b, G, L, J, n), n <= :data:`MAX_STATE`.
        A: (G·J, d, n); D, delta_bias: (G·J, d) or None; dt_proj: (G·J, d, r) or None. Direction k = g·J + j.
        orders: per direction, a value of :data:`ORDERS` (default: every direction walks positions 0..L-1);
            positions index a ``height`` x ``width`` map flattened row-major (``width`` defaults to L).
    Returns:
        y shaped like u: each group's directions summed (all directions for one shared map), and with
        ``return_last_state`` the state after each direction's last step (b, G·J, d, n), else None.
    """
    groups, length, per_group = delta.shape[1:4]
    k = groups * per_group
    orders = tuple(orders) if orders is not None else (ORDERS["rows"],) * k
    width = length if width is None else width
    if (len(orders) != k or height * width != length or u.shape[0] != delta.shape[0] or u.shape[2] != length
            or u.shape[1] not in (1, groups)):
        raise ValueError(f"need u (b, G, L, d) with delta (b, G, L, J, ·), one order per direction ({k}) and "
                         f"height x width = L ({length}); got u {tuple(u.shape)}, delta {tuple(delta.shape)}, "
                         f"{len(orders)} orders and {height} x {width}")
    if A.shape[-1] > MAX_STATE:
        raise ValueError(f"the compiled scan runs d_state <= {MAX_STATE}, got {A.shape[-1]}")
    if dt_proj is not None and (dt_proj.shape != (k, u.shape[-1], delta.shape[-1])):
        raise ValueError(f"dt_proj must be (G·J, d, r) = ({k}, {u.shape[-1]}, {delta.shape[-1]}), "
                         f"got {tuple(dt_proj.shape)}")
    if u.device.type == "meta":  # shapes only
        last = u.new_empty(u.shape[0], k, u.shape[-1], A.shape[-1]) if return_last_state else None
        return torch.empty_like(u), last
    A, D, delta_bias, dt_proj = (t.contiguous() if t is not None else None for t in (A, D, delta_bias, dt_proj))
    # A full δ's gradient is written with δ's strides: views with gaps or overlaps are copied.
    if dt_proj is None and torch.empty_like(delta).stride() != delta.stride():
        delta = delta.contiguous()
    return _Scan.apply(u, delta, dt_proj, A, B, C, D, delta_bias, orders, height, width, delta_softplus,
                       return_last_state)
