"""CPU benchmark of the selective scan: our two scans against a per-token loop and mambapy, and against
this machine's lower bound for the work.

Each method does the same work, forward and backward (gradients of u, Δ, A, B and C), for Mamba's
selective scan (Gu & Dao 2023) with input-dependent B and C, as used by VMamba / MambaIR's SS2D:
discretisation exp(Δ A) and Δ B u, the scan over L, and the output contraction y_t = <C_t, h_t>.

- ``compiled``: :func:`clipdehaze.models.ssm.selective_scan_torch` with the compiled CPU kernel.
- ``chunked``: the same function's pure-PyTorch chunked scan (hand-written backward), the CPU path before
  the kernel and the path on devices without mamba-ssm.
- ``sequential (indexed)``: one Python step per token, reading x[..., t] each step, as the reference
  implementation in mamba-ssm (``selective_scan_ref``) and ``tests/test_ssm.py`` do; autograd then
  materialises a full-length gradient per step, so its backward grows as L².
- ``sequential (unbound)``: the same loop with the inputs split once into per-step views
  (``unbind``), the fastest per-token loop in eager PyTorch; linear in L.
- ``mambapy``: ``mambapy.pscan.pscan`` (Blelloch parallel scan over (B, L, D, N) tensors) plus the same
  discretisation and contraction, in mambapy's own (B, L, D) layout.

The loops are timed on their first ``sequential_steps`` tokens of the full-length inputs and the time
is scaled to L (per-step cost does not depend on the position, so this is linear extrapolation).

**Lower bound.** No implementation can beat the larger of (a) the bytes the forward and the backward must at
least read and write (every operand and result once per pass, nothing else stored) divided by this machine's
memory bandwidth, measured as a large tensor copy, and (b) the transcendentals it cannot avoid (one exp per
state element per pass, and with softplus on Δ one exp and one log per Δ element per pass) divided by the
fastest exponential throughput measured (torch.exp or torch.exp2 on cache-resident tensors). The rates are measured
again before every timed run of the compiled scan and the best seen in the run is kept, so bound and scan are
measured side by side. The tables give each scan's time (best of the repeats, the fresh leaf tensors of each run
not timed) as a multiple of that bound. Besides the (b, d, L) case, the bound is taken at CLIPHaze's own shapes:
SS2D's four-direction scan at the first stage of ``cliphaze_t`` (24 channels, d_state 1, dt_rank 2, the full
resolution of a 256² image and of the train step's batch of four 128² crops), as CLIPHaze calls it (one
channel-last map read in place by the four scan orders, Δ from its low-rank factor, Δ bias, softplus and D inside
the scan), where Δ's bytes are the low-rank factor's.

Run: ``python -m clipdehaze.models.ssm.bench [--lengths 4096 16384] [--repeats 3] [--threads N]``.
"""

from __future__ import annotations

import argparse
import time
from functools import partial
from typing import Callable

import torch

from clipdehaze.models.ssm import cpu_kernel
from clipdehaze.models.ssm.selective_scan import selective_scan_torch
from clipdehaze.models.ssm.ss2d import scan_map

__all__ = ["format_table", "machine_floors", "raise_floors", "run_scan_benchmark", "scan_bound"]


def _time(fn: Callable, repeats: int, setup: Callable | None = None, floors: dict | None = None) -> float:
    """Best wall time of ``repeats`` runs after one warm-up run (seconds). With ``setup``, ``fn(setup())`` is run and
    only ``fn`` timed (fresh leaf tensors are not part of the scan). With ``floors``, the machine's rates are measured
    again before every run and ``floors`` keeps the best seen (:func:`raise_floors`): the bound and the scan are
    measured side by side, so load from other jobs cannot favour one of them."""
    def once() -> float:
        arg = (setup(),) if setup is not None else ()
        start = time.perf_counter()
        fn(*arg)
        return time.perf_counter() - start

    once()
    best = float("inf")
    for _ in range(repeats):
        if floors is not None:
            raise_floors(floors, machine_floors(repeats=1))
            once()  # the floors' large copies evict the caches: warm them again, untimed
        best = min(best, once())
    return best


def raise_floors(floors: dict, measured: dict) -> None:
    """Keep in ``floors`` the faster of its rates and ``measured``'s (a lower bound assumes the best rate seen)."""
    if measured["copy_bytes_per_s"] > floors["copy_bytes_per_s"]:
        floors["copy_bytes_per_s"] = measured["copy_bytes_per_s"]
    if measured["exp_per_s"] > floors["exp_per_s"]:
        floors["exp_per_s"], floors["exp_op"] = measured["exp_per_s"], measured["exp_op"]


def machine_floors(repeats: int = 5) -> dict[str, float]:
    """This machine's memory bandwidth (bytes read + written by a 256 MB tensor copy, per second) and exponential
    throughput (elements per second, best of torch.exp and torch.exp2 over cache-resident sizes): the rates a
    lower bound may assume, so the best of several measurements."""
    src = torch.empty(1 << 25)
    dst = torch.empty_like(src)
    copy_s = _time(lambda: dst.copy_(src), repeats)
    del src, dst
    exp_rate, exp_op = 0.0, ""
    for size in (1 << 16, 1 << 18, 1 << 20):
        x = -torch.rand(size)
        out = torch.empty_like(x)
        calls = max(1, (1 << 24) // size)
        for name, fn in (("torch.exp", torch.exp), ("torch.exp2", torch.exp2)):
            def run(fn=fn):
                for _ in range(calls):
                    fn(x, out=out)
            rate = size * calls / _time(run, repeats)
            if rate > exp_rate:
                exp_rate, exp_op = rate, f"{name} on {size} elements"
    return {"copy_bytes_per_s": 2 * (1 << 25) * 4 / copy_s, "exp_per_s": exp_rate, "exp_op": exp_op,
            "threads": torch.get_num_threads()}


def scan_bound(bytes_moved: float, transcendentals: float, floors: dict[str, float]) -> dict[str, float | str]:
    memory_s = bytes_moved / floors["copy_bytes_per_s"]
    exp_s = transcendentals / floors["exp_per_s"]
    return {"bound_s": max(memory_s, exp_s), "memory_s": memory_s, "exp_s": exp_s,
            "limit": "memory" if memory_s >= exp_s else "exp"}


def _work(batch: int, dirs: int, length: int, d: int, n: int, shared_u: bool, softplus: bool,
          itemsize: int = 4, dt_rank: int | None = None) -> tuple[float, float]:
    """(bytes, transcendentals) of forward + backward at least: every operand read and every result written
    once per pass. u and y are (batch, L, d) when shared by the directions, else (batch, dirs, L, d). With
    ``dt_rank``, Δ comes low-rank (SS2D's projection inside the scan): dt_rank values per position and direction
    and a (d, dt_rank) projection per direction instead of d values."""
    u = batch * length * d * (1 if shared_u else dirs)
    delta = batch * dirs * length * (d if dt_rank is None else dt_rank)
    bc = 2 * batch * dirs * length * n
    # A, and D and the Δ bias where used, and a low-rank Δ's projection
    params = dirs * d * (n + (2 if softplus else 0) + (dt_rank or 0))
    forward = u + delta + bc + params + u               # reads, then y
    backward = (u + delta + bc + params + u) + (u + delta + bc + params)  # reads incl. ȳ, then the gradients
    exps = 2 * (batch * dirs * length * d * n + (2 * batch * dirs * length * d if softplus else 0))
    return (forward + backward) * itemsize, exps


def _inputs(batch: int, d_inner: int, d_state: int, length: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return dict(
        u=torch.randn(batch, d_inner, length, generator=g),
        delta=torch.rand(batch, d_inner, length, generator=g) * 0.1,
        A=-torch.rand(d_inner, d_state, generator=g) - 0.5,
        B=torch.randn(batch, d_state, length, generator=g),
        C=torch.randn(batch, d_state, length, generator=g),
    )


def _leaves(tensors: dict[str, torch.Tensor], transpose: bool = False) -> dict[str, torch.Tensor]:
    """Fresh leaf copies requiring grad; ``transpose`` gives mambapy's (B, L, ·) layout."""
    return {k: (v.transpose(-1, -2) if transpose and v.dim() == 3 else v).contiguous().detach().requires_grad_()
            for k, v in tensors.items()}


def _scan(x: dict[str, torch.Tensor], implementation: str) -> None:
    selective_scan_torch(x["u"], x["delta"], x["A"], x["B"], x["C"], implementation=implementation).sum().backward()


def _sequential(x: dict[str, torch.Tensor], steps: int, unbind: bool) -> None:
    u, delta, A, B, C = x["u"], x["delta"], x["A"], x["B"], x["C"]
    if unbind:
        u, delta, B, C = (t[..., :steps].unbind(-1) for t in (u, delta, B, C))

    def at(t, i):
        return t[i] if unbind else t[..., i]

    h = A.new_zeros(x["u"].shape[0], *A.shape)
    ys = []
    for i in range(steps):
        dt = at(delta, i).unsqueeze(-1)
        h = torch.exp(dt * A) * h + dt * at(B, i).unsqueeze(1) * at(u, i).unsqueeze(-1)
        ys.append((h * at(C, i).unsqueeze(1)).sum(-1))
    torch.stack(ys, dim=-1).sum().backward()


def _mambapy_scan(x: dict[str, torch.Tensor], pscan) -> None:
    u, delta, A, B, C = x["u"], x["delta"], x["A"], x["B"], x["C"]   # (b, L, d), (b, L, n)
    delta_a = torch.exp(delta.unsqueeze(-1) * A)                      # (b, L, d, n)
    bx = delta.unsqueeze(-1) * B.unsqueeze(2) * u.unsqueeze(-1)
    hs = pscan(delta_a, bx)
    (hs @ C.unsqueeze(-1)).squeeze(3).sum().backward()


# CLIPHaze's scans at full resolution: cliphaze_t's first stage (24 channels, expand 1, d_state 1, dt_rank 2), four
# scan directions, for one 256² image (inference) and the bench's train batch of four 128² crops.
CLIPHAZE_CASES = (("cliphaze_t stage 1, 1 x 256²", 1, 256, 256), ("cliphaze_t stage 1, 4 x 128²", 4, 128, 128))
_CLIPHAZE_CHANNELS, _CLIPHAZE_STATE, _CLIPHAZE_RANK, _DIRECTIONS = 24, 1, 2, 4


def _ss2d_operands(batch: int, h: int, w: int, seed: int) -> dict[str, torch.Tensor]:
    """The SS2D scan's operands as SS2D computes them: the channel-last map u (b, H·W, d) and, per pixel and
    direction, the low-rank Δ factor, B and C (b, L, 4, ·) and per direction the Δ projection (4, d, r);
    distributed like an SS2D's at initialisation (Δ around Mamba's initial time steps, A = -1)."""
    g = torch.Generator().manual_seed(seed)
    k, d, n, r, length = _DIRECTIONS, _CLIPHAZE_CHANNELS, _CLIPHAZE_STATE, _CLIPHAZE_RANK, h * w
    return dict(u=torch.randn(batch, length, d, generator=g), dts=torch.randn(batch, length, k, r, generator=g),
                dt_proj=torch.randn(k, d, r, generator=g) * r ** -0.5,
                B=torch.randn(batch, length, k, n, generator=g), C=torch.randn(batch, length, k, n, generator=g),
                A=-torch.ones(k, d, n), D=torch.ones(k, d), bias=torch.full((k, d), -4.0))


def _ss2d_compiled(x: dict[str, torch.Tensor], h: int, w: int) -> None:
    b, _, d = x["u"].shape
    scan_map(x["u"].view(b, h, w, d), x["dts"], x["B"], x["C"], x["A"], x["D"], x["dt_proj"],
             x["bias"]).sum().backward()


def _ss2d_chunked(x: dict[str, torch.Tensor], h: int, w: int) -> None:
    """The path the compiled one replaced: the full Δ, four reordered copies in (b, 4·d, L), the chunked scan,
    merged back. SS2D direction k walks rows for k even, columns for k odd, backwards for k >= 2."""
    b, length, d = x["u"].shape

    def per_direction(t):  # (b, L, 4, c) per pixel -> (b, 4, c, L) in each direction's order
        seqs = []
        for k in range(_DIRECTIONS):
            s = t[:, :, k].transpose(1, 2)
            if k % 2:
                s = s.unflatten(2, (h, w)).transpose(2, 3).flatten(2)
            seqs.append(s.flip(-1) if k >= 2 else s)
        return torch.stack(seqs, 1)

    delta = torch.einsum("blkr,kdr->blkd", x["dts"], x["dt_proj"])
    u = per_direction(x["u"].unsqueeze(2).expand(-1, -1, _DIRECTIONS, -1))
    y = selective_scan_torch(u.flatten(1, 2), per_direction(delta).flatten(1, 2), x["A"].flatten(0, 1),
                             per_direction(x["B"]), per_direction(x["C"]), x["D"].flatten(),
                             delta_bias=x["bias"].flatten(), delta_softplus=True,
                             implementation="chunked").view(b, _DIRECTIONS, d, length)
    y_rows = y[:, 0] + y[:, 2].flip(-1)
    y_cols = y[:, 1] + y[:, 3].flip(-1)
    (y_rows + y_cols.view(b, d, w, h).transpose(2, 3).reshape(b, d, length)).sum().backward()


def run_scan_benchmark(lengths=(4096, 16384), batch: int = 2, d_inner: int = 192, d_state: int = 16,
                       repeats: int = 3, sequential_steps: int = 512, threads: int | None = None,
                       seed: int = 0, cliphaze_cases=CLIPHAZE_CASES) -> dict:
    """Time forward + backward of each method at each length, and both scans at CLIPHaze's shapes; every time
    also as a multiple of this machine's lower bound (:func:`machine_floors`, :func:`scan_bound`).

    Returns ``{"config", "floors", "results": [{"length", "compiled_s", "chunked_s", "sequential_indexed_s",
    "sequential_unbound_s", "sequential_steps_timed", "mambapy_s", "<method>_vs_compiled" ratios, "bound": {...},
    "compiled_vs_bound", "chunked_vs_bound"}, ...], "cliphaze": [{"case", "batch", "height", "width",
    "compiled_s", "chunked_s", "bound", ...}]}``. ``compiled_s`` is ``None`` (and the ratios to it too) where the
    kernel is unavailable (``compiled_unavailable`` says why); mambapy entries are ``None`` when it is not
    installed (``pip install mambapy``, in the ``dev`` extra).
    """
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        from mambapy.pscan import pscan
    except ImportError:
        pscan = None
    floors = machine_floors()
    compiled_reason = cpu_kernel.unavailable_reason()
    results = []
    for length in lengths:
        base = _inputs(batch, d_inner, d_state, length, seed)
        steps = min(sequential_steps, length)
        row = {"length": length, "sequential_steps_timed": steps}
        leaves = partial(_leaves, base)
        row["compiled_s"] = (_time(lambda x: _scan(x, "compiled"), repeats, leaves, floors)
                             if compiled_reason is None else None)
        row["chunked_s"] = _time(lambda x: _scan(x, "chunked"), repeats, leaves)
        for name, unbind in (("indexed", False), ("unbound", True)):
            per_run = _time(lambda x: _sequential(x, steps, unbind), max(1, repeats // 2), leaves)
            row[f"sequential_{name}_s"] = per_run * length / steps
        row["mambapy_s"] = (_time(lambda x: _mambapy_scan(x, pscan), repeats, partial(_leaves, base, transpose=True))
                            if pscan is not None else None)
        reference = row["compiled_s"]
        for method in ("chunked", "sequential_indexed", "sequential_unbound", "mambapy"):
            t = row[f"{method}_s"]
            row[f"{method}_vs_compiled"] = t / reference if t is not None and reference else None
        results.append(row)
    cliphaze = []
    for case, b, h, w in cliphaze_cases:
        base = _ss2d_operands(b, h, w, seed)
        row = {"case": case, "batch": b, "height": h, "width": w, "channels": _CLIPHAZE_CHANNELS,
               "d_state": _CLIPHAZE_STATE, "directions": _DIRECTIONS}
        leaves = partial(_leaves, base)
        row["compiled_s"] = (_time(lambda x: _ss2d_compiled(x, h, w), repeats, leaves, floors)
                             if compiled_reason is None else None)
        row["chunked_s"] = _time(lambda x: _ss2d_chunked(x, h, w), max(1, repeats // 2), leaves)
        cliphaze.append(row)
    # Every bound from the best rates seen in the whole run.
    for row in results:
        row["bound"] = scan_bound(*_work(batch, 1, row["length"], d_inner, d_state, False, False), floors)
    for row in cliphaze:
        row["bound"] = scan_bound(*_work(row["batch"], _DIRECTIONS, row["height"] * row["width"], _CLIPHAZE_CHANNELS,
                                         _CLIPHAZE_STATE, True, True, dt_rank=_CLIPHAZE_RANK), floors)
    for row in (*results, *cliphaze):
        for method in ("compiled", "chunked"):
            t = row[f"{method}_s"]
            row[f"{method}_vs_bound"] = t / row["bound"]["bound_s"] if t is not None else None
    config = dict(batch=batch, d_inner=d_inner, d_state=d_state, repeats=repeats,
                  threads=torch.get_num_threads(), torch=torch.__version__, compiled_unavailable=compiled_reason)
    return {"config": config, "floors": floors, "results": results, "cliphaze": cliphaze}


def _s(t: float | None, width: int = 8) -> str:
    return f"{t:{width}.4f}" if t is not None else f"{'n/a':>{width}}"


def _x(r: float | None) -> str:
    return f"{r:6.1f}x" if r is not None else f"{'':>7}"


def format_table(report: dict) -> str:
    cfg, fl = report["config"], report["floors"]
    lines = [f"machine floors ({fl['threads']} threads): memory {fl['copy_bytes_per_s'] / 1e9:.1f} GB/s "
             f"(256 MB tensor copy, bytes read + written), exponentials {fl['exp_per_s'] / 1e9:.2f} G/s "
             f"({fl['exp_op']}); the best rates measured in the run, re-measured before every timed compiled scan"]
    if cfg.get("compiled_unavailable"):
        lines.append(f"compiled scan unavailable: {cfg['compiled_unavailable']}")
    lines += ["", f"selective scan, forward + backward, CPU, batch={cfg['batch']} d_inner={cfg['d_inner']} "
              f"d_state={cfg['d_state']}, {cfg['threads']} threads, torch {cfg['torch']}, best of {cfg['repeats']}",
              f"{'L':>6} | {'bound':>8} {'limit':>6} | {'compiled':>8} {'/bound':>7} | {'chunked':>8} {'/bound':>7} "
              f"{'/comp.':>7} | {'seq. indexed':>12} {'/comp.':>7} | {'seq. unbound':>12} {'/comp.':>7} | "
              f"{'mambapy':>8} {'/comp.':>7}"]
    for r in report["results"]:
        bd = r["bound"]
        lines.append(f"{r['length']:>6} | {_s(bd['bound_s'])} {bd['limit']:>6} | {_s(r['compiled_s'])} "
                     f"{_x(r['compiled_vs_bound'])} | {_s(r['chunked_s'])} {_x(r['chunked_vs_bound'])} "
                     f"{_x(r['chunked_vs_compiled'])} | {_s(r['sequential_indexed_s'], 12)} "
                     f"{_x(r['sequential_indexed_vs_compiled'])} | {_s(r['sequential_unbound_s'], 12)} "
                     f"{_x(r['sequential_unbound_vs_compiled'])} | {_s(r['mambapy_s'])} {_x(r['mambapy_vs_compiled'])}")
    steps = ", ".join(f"L={r['length']}: {r['sequential_steps_timed']}" for r in report["results"])
    lines.append(f"times in seconds; /bound = time / lower bound; /comp. = time / compiled time; sequential loops "
                 f"timed on the first tokens ({steps}) and scaled linearly to L")
    if report.get("cliphaze"):
        lines += ["", "CLIPHaze's scans at full resolution (SS2D: 4 scan orders of one channel-last map, Δ bias + "
                  "softplus + D inside the scan), forward + backward; chunked = the four-copy path it replaced",
                  f"{'case':<30} | {'state elements':>14} | {'bound':>8} {'limit':>6} | {'compiled':>8} "
                  f"{'/bound':>7} | {'chunked':>8} {'/bound':>7}"]
        for r in report["cliphaze"]:
            bd = r["bound"]
            elems = r["batch"] * r["height"] * r["width"] * r["channels"] * r["d_state"] * r["directions"]
            lines.append(f"{r['case']:<30} | {elems:>14,} | {_s(bd['bound_s'])} {bd['limit']:>6} | "
                         f"{_s(r['compiled_s'])} {_x(r['compiled_vs_bound'])} | {_s(r['chunked_s'])} "
                         f"{_x(r['chunked_vs_bound'])}")
    lines.append("bound = max(bytes of every operand and result once per pass / memory rate, transcendentals "
                 "(1 exp per state element, +2 per Δ element with softplus, per pass) / exponential rate)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--d-inner", type=int, default=192)
    parser.add_argument("--d-state", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sequential-steps", type=int, default=512)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    print(format_table(run_scan_benchmark(tuple(args.lengths), args.batch, args.d_inner, args.d_state, args.repeats,
                                          args.sequential_steps, args.threads)))


if __name__ == "__main__":
    main()
