"""CPU benchmark of the pure-PyTorch selective scan against a per-token loop and mambapy's parallel scan.

Each method does the same work, forward and backward (gradients of u, Δ, A, B and C), for Mamba's
selective scan (Gu & Dao 2023) with input-dependent B and C, as used by VMamba / MambaIR's SS2D:
discretisation exp(Δ A) and Δ B u, the scan over L, and the output contraction y_t = <C_t, h_t>.

- ``torch``: :func:`clipdehaze.models.ssm.selective_scan_torch` (chunked scan, hand-written backward).
- ``sequential (indexed)``: one Python step per token, reading x[..., t] each step, as the reference
  implementation in mamba-ssm (``selective_scan_ref``) and ``tests/test_ssm.py`` do; autograd then
  materialises a full-length gradient per step, so its backward grows as L².
- ``sequential (unbound)``: the same loop with the inputs split once into per-step views
  (``unbind``), the fastest per-token loop in eager PyTorch; linear in L.
- ``mambapy``: ``mambapy.pscan.pscan`` (Blelloch parallel scan over (B, L, D, N) tensors) plus the same
  discretisation and contraction, in mambapy's own (B, L, D) layout.

The loops are timed on their first ``sequential_steps`` tokens of the full-length inputs and the time
is scaled to L (per-step cost does not depend on the position, so this is linear extrapolation).

Run: ``python -m clipdehaze.models.ssm.bench [--lengths 4096 16384] [--repeats 3] [--threads N]``.
"""

from __future__ import annotations

import argparse
import time
from typing import Callable

import torch

from clipdehaze.models.ssm.selective_scan import selective_scan_torch

__all__ = ["format_table", "run_scan_benchmark"]


def _time(fn: Callable[[], None], repeats: int) -> float:
    """Best wall time of ``repeats`` runs after one warm-up run (seconds)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


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
    return {k: (v.transpose(-1, -2) if transpose and v.dim() == 3 else v).contiguous().requires_grad_()
            for k, v in tensors.items()}


def _torch_scan(x: dict[str, torch.Tensor]) -> None:
    selective_scan_torch(x["u"], x["delta"], x["A"], x["B"], x["C"]).sum().backward()


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


def run_scan_benchmark(lengths=(4096, 16384), batch: int = 2, d_inner: int = 192, d_state: int = 16,
                       repeats: int = 3, sequential_steps: int = 512, threads: int | None = None,
                       seed: int = 0) -> dict:
    """Time forward + backward of each method at each length; returns seconds and speed-up ratios.

    Returns ``{"config": {...}, "results": [{"length", "torch_s", "sequential_indexed_s",
    "sequential_unbound_s", "sequential_steps_timed", "mambapy_s", "speedup_vs_sequential_indexed",
    "speedup_vs_sequential_unbound", "speedup_vs_mambapy"}, ...]}``; mambapy entries are ``None`` when it is
    not installed (``pip install mambapy``, in the ``dev`` extra).
    """
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        from mambapy.pscan import pscan
    except ImportError:
        pscan = None
    results = []
    for length in lengths:
        base = _inputs(batch, d_inner, d_state, length, seed)
        steps = min(sequential_steps, length)
        row = {"length": length, "sequential_steps_timed": steps}
        row["torch_s"] = _time(lambda: _torch_scan(_leaves(base)), repeats)
        for name, unbind in (("indexed", False), ("unbound", True)):
            per_run = _time(lambda: _sequential(_leaves(base), steps, unbind), max(1, repeats // 2))
            row[f"sequential_{name}_s"] = per_run * length / steps
            row[f"speedup_vs_sequential_{name}"] = row[f"sequential_{name}_s"] / row["torch_s"]
        if pscan is not None:
            row["mambapy_s"] = _time(lambda: _mambapy_scan(_leaves(base, transpose=True), pscan), repeats)
            row["speedup_vs_mambapy"] = row["mambapy_s"] / row["torch_s"]
        else:
            row["mambapy_s"] = row["speedup_vs_mambapy"] = None
        results.append(row)
    config = dict(batch=batch, d_inner=d_inner, d_state=d_state, repeats=repeats,
                  threads=torch.get_num_threads(), torch=torch.__version__)
    return {"config": config, "results": results}


def format_table(report: dict) -> str:
    cfg = report["config"]
    lines = [f"selective scan, forward + backward, CPU, batch={cfg['batch']} d_inner={cfg['d_inner']} "
             f"d_state={cfg['d_state']}, {cfg['threads']} threads, torch {cfg['torch']}, best of {cfg['repeats']}",
             f"{'L':>6} | {'torch':>8} | {'seq. indexed':>12} {'ratio':>6} | {'seq. unbound':>12} {'ratio':>6} | "
             f"{'mambapy':>8} {'ratio':>6}"]
    for r in report["results"]:
        mp = (f"{r['mambapy_s']:8.3f} {r['speedup_vs_mambapy']:5.1f}x" if r["mambapy_s"] is not None
              else f"{'n/a':>8} {'':>6}")
        lines.append(f"{r['length']:>6} | {r['torch_s']:8.3f} | {r['sequential_indexed_s']:12.3f} "
                     f"{r['speedup_vs_sequential_indexed']:5.1f}x | {r['sequential_unbound_s']:12.3f} "
                     f"{r['speedup_vs_sequential_unbound']:5.1f}x | {mp}")
    steps = ", ".join(f"L={r['length']}: {r['sequential_steps_timed']}" for r in report["results"])
    lines.append(f"times in seconds; ratio = method time / torch time; sequential loops timed on the first "
                 f"tokens ({steps}) and scaled linearly to L")
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
