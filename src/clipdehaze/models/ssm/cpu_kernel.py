"""The compiled CPU selective scan (``cpu_scan.cpp``): built on first use, loaded with ctypes, PyTorch fallback.

The kernel computes, for every batch element b, scan direction k, channel c and state index n, along the
positions p_k(0), ..., p_k(L-1) that direction k visits:

    Δ_t = softplus(δ_t + bias)  (bias, softplus optional)
    h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t u_t,   y_t = <C_t, h_t> + D u_t   (D optional)

with the gradients of u, δ, A, B, C, D and bias from a hand-written adjoint. It reads its operands through
4-d views (batch, direction, position, channel | state) of any strides, so the same code serves
``selective_scan_torch``'s (b, d, L) tensors (one "direction" per channel group) and SS2D's channel-last
feature map scanned in four orders, where u is shared by the directions and y sums over them, without
materialising four reordered copies (:func:`scan`).

Why compiled: the recurrence is sequential in L, so an eager PyTorch scan issues a few dozen small ops per
step and writes intermediates to memory; here each step is a few vector instructions on data in cache,
one exponential per state element and pass, and every operand is read once per pass.

Building: a C++ compiler (``$CXX``, else g++, c++ or clang++) compiles the source into
``$CLIPDEHAZE_CACHE/kernels`` (else ``~/.cache/clipdehaze/kernels``), keyed by the source, the flags, the
compiler and the CPU, and takes about a second. Without a compiler, or when the build fails,
:func:`unavailable_reason` says why and ``selective_scan_torch`` runs its chunked PyTorch scan instead.
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
ABI_VERSION = 1
# Scan orders of a height x width map flattened row-major: bit 0 walks it column by column, bit 1 backwards.
ORDERS = {"rows": 0, "cols": 1, "rows_reversed": 2, "cols_reversed": 3}
_LANES = 16  # channels per work item, as kLanes in the source

# Tried in order; the first that compiles wins. -march=native: the library is built on and for this machine.
# -fno-trapping-math lets the compiler turn the selects of the exp / softplus code into vector blends (no
# floating-point traps are relied on); it changes no result, unlike -ffast-math, which is not used.
_COMMON_FLAGS = ["-O3", "-fno-trapping-math", "-fno-math-errno"]
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
                ("batch", "dirs", "length", "channels", "state", "height", "width", "chunk")] + [
        ("order", ctypes.c_void_p),
        ("u", ctypes.c_void_p), ("u_s", ctypes.c_int64 * 4),
        ("delta", ctypes.c_void_p), ("dl_s", ctypes.c_int64 * 4),
        ("A", ctypes.c_void_p),
        ("B", ctypes.c_void_p), ("b_s", ctypes.c_int64 * 4),
        ("C", ctypes.c_void_p), ("c_s", ctypes.c_int64 * 4),
        ("D", ctypes.c_void_p), ("bias", ctypes.c_void_p),
        ("softplus", ctypes.c_int32), ("threads", ctypes.c_int32),
        ("y", ctypes.c_void_p), ("y_s", ctypes.c_int64 * 4),
        ("checkpoints", ctypes.c_void_p), ("last_state", ctypes.c_void_p),
        ("grad_y", ctypes.c_void_p), ("gy_s", ctypes.c_int64 * 4),
        ("grad_last", ctypes.c_void_p),
    ] + [(name, ctypes.c_void_p) for name in ("du", "ddelta", "dA", "dB", "dC", "dD", "dbias")]


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
        fn.argtypes, fn.restype = [ctypes.POINTER(_ScanArgs)], None
    return lib, None


def unavailable_reason() -> str | None:
    """Why the compiled scan cannot run here (``None`` when it can). Builds it on the first call."""
    lib, reason = _library()
    if lib is None and not getattr(unavailable_reason, "warned", False):
        unavailable_reason.warned = True
        log.warning("the CPU selective scan runs the slower PyTorch path: %s", reason)
    return reason


def available(*tensors: Tensor) -> bool:
    """Whether :func:`scan` can take these tensors: on CPU, float32 or float64, and the kernel built."""
    return (all(t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) for t in tensors)
            and unavailable_reason() is None)


def _chunk(state: int) -> int:
    """Steps per chunk: the backward's per-chunk decays and states, 2 · chunk · state · 16 values, stay
    about 32 kB (in L1/L2); longer chunks only save the small per-chunk checkpoints."""
    return max(8, min(256, 256 // state))


def _ptr(t: Tensor | None) -> int | None:
    return t.data_ptr() if t is not None else None


def _strides(t: Tensor) -> tuple[int, int, int, int]:
    return tuple(t.stride())


class _Scan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, bias, orders, height, width, softplus, want_last):
        b, k, length, d = delta.shape
        n = A.shape[-1]
        chunk = _chunk(n)
        shared = u.shape[1] == 1 and k > 1
        y = torch.empty(b, 1, length, d, dtype=u.dtype) if shared else torch.empty_like(u)
        n_chunks = -(-length // chunk)
        checkpoints = (torch.empty(b, k, n_chunks, n, d, dtype=u.dtype)
                       if torch.is_grad_enabled() or any(ctx.needs_input_grad) else None)
        last = torch.empty(b, k, d, n, dtype=u.dtype) if want_last else None
        order = torch.tensor(orders, dtype=torch.int32)
        args = _ScanArgs(batch=b, dirs=k, length=length, channels=d, state=n, height=height, width=width,
                         chunk=chunk, order=order.data_ptr(),
                         u=u.data_ptr(), u_s=_u_strides(u, shared), delta=delta.data_ptr(), dl_s=_strides(delta),
                         A=A.data_ptr(), B=B.data_ptr(), b_s=_strides(B), C=C.data_ptr(), c_s=_strides(C),
                         D=_ptr(D), bias=_ptr(bias), softplus=int(softplus), threads=torch.get_num_threads(),
                         y=y.data_ptr(), y_s=_u_strides(y, shared),
                         checkpoints=_ptr(checkpoints), last_state=_ptr(last))
        lib, _ = _library()
        getattr(lib, f"clipdehaze_scan_forward_{_suffix(u)}")(ctypes.byref(args))
        ctx.save_for_backward(u, delta, A, B, C, D, bias, checkpoints, order)
        ctx.geometry = (height, width, softplus, shared, chunk)
        return y, last

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y, grad_last):
        u, delta, A, B, C, D, bias, checkpoints, order = ctx.saved_tensors
        height, width, softplus, shared, chunk = ctx.geometry
        b, k, length, d = delta.shape
        if grad_y is None:
            grad_y = torch.zeros(b, 1 if shared else k, length, d, dtype=u.dtype)
        grad_last = grad_last.contiguous() if grad_last is not None else None
        du = torch.empty(b, 1, length, d, dtype=u.dtype) if shared else torch.empty_like(u)
        ddelta = torch.empty_like(delta)
        dA, dB, dC = torch.empty_like(A), torch.empty(B.shape, dtype=B.dtype), torch.empty(C.shape, dtype=C.dtype)
        dD = torch.empty_like(D) if D is not None else None
        dbias = torch.empty_like(bias) if bias is not None else None
        args = _ScanArgs(batch=b, dirs=k, length=length, channels=d, state=A.shape[-1], height=height,
                         width=width, chunk=chunk, order=order.data_ptr(),
                         u=u.data_ptr(), u_s=_u_strides(u, shared), delta=delta.data_ptr(), dl_s=_strides(delta),
                         A=A.data_ptr(), B=B.data_ptr(), b_s=_strides(B), C=C.data_ptr(), c_s=_strides(C),
                         D=_ptr(D), bias=_ptr(bias), softplus=int(softplus), threads=torch.get_num_threads(),
                         checkpoints=checkpoints.data_ptr(),
                         grad_y=grad_y.data_ptr(), gy_s=_u_strides(grad_y, shared), grad_last=_ptr(grad_last),
                         du=du.data_ptr(), ddelta=ddelta.data_ptr(), dA=dA.data_ptr(), dB=dB.data_ptr(),
                         dC=dC.data_ptr(), dD=_ptr(dD), dbias=_ptr(dbias))
        lib, _ = _library()
        getattr(lib, f"clipdehaze_scan_backward_{_suffix(u)}")(ctypes.byref(args))
        return du, ddelta, dA, dB, dC, dD, dbias, None, None, None, None, None


def _u_strides(t: Tensor, shared: bool) -> tuple[int, int, int, int]:
    s = _strides(t)
    return (s[0], 0, s[2], s[3]) if shared else s


def _suffix(t: Tensor) -> str:
    return "f32" if t.dtype == torch.float32 else "f64"


def scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
         delta_bias: Tensor | None = None, delta_softplus: bool = False, orders: tuple[int, ...] | None = None,
         height: int = 1, width: int | None = None, return_last_state: bool = False):
    """Selective scan over views (batch, direction, position, channel): differentiable, any strides.

    Args:
        u: (b, 1 | K, L, d); with 1 and K > 1 every direction reads the same u and the output sums them.
        delta: (b, K, L, d), the pre-activation δ.
        A: (K, d, n); B, C: (b, K, L, n); D, delta_bias: (K, d) or None.
        orders: per direction, a value of :data:`ORDERS` (default: every direction walks positions 0..L-1);
            positions index a ``height`` x ``width`` map flattened row-major (``width`` defaults to L).
    Returns:
        y shaped like u, and with ``return_last_state`` the state after each direction's last step
        (b, K, d, n), else None.
    """
    k = delta.shape[1]
    orders = tuple(orders) if orders is not None else (ORDERS["rows"],) * k
    width = delta.shape[2] if width is None else width
    if len(orders) != k or height * width != delta.shape[2]:
        raise ValueError(f"need one order per direction ({k}) and height x width = L ({delta.shape[2]}); "
                         f"got {len(orders)} orders and {height} x {width}")
    A, D, delta_bias = (t.contiguous() if t is not None else None for t in (A, D, delta_bias))
    return _Scan.apply(u, delta, A, B, C, D, delta_bias, orders, height, width, delta_softplus, return_last_state)
