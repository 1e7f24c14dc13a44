"""Selective scan backends and the SS2D layer.

The PyTorch scan is checked against a plain step-by-step float64 recurrence (forward and gradients of
every input), the backend switch against the machine it runs on, and SS2D on odd image sizes.
"""

from __future__ import annotations

import importlib
import importlib.util
import shutil
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from clipdehaze.models.ssm import SS2D, cpu_kernel, selective_scan, selective_scan_torch

# The package re-exports the function under the module's name, so fetch the module itself.
scan_module = importlib.import_module("clipdehaze.models.ssm.selective_scan")


def reference_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t u_t, y_t = C_t h_t + D u_t, one step per token (Gu & Dao 2023)."""
    b, d, length = u.shape
    n = A.shape[1]
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    if delta_softplus:
        delta = F.softplus(delta)

    def at(m, t):  # (b, d, n) view of B or C at time t
        if m.dim() == 2:
            return m.expand(b, d, n)
        if m.dim() == 3:
            return m[:, None, :, t].expand(b, d, n)
        return m[..., t].repeat_interleave(d // m.shape[1], dim=1)

    h = u.new_zeros(b, d, n)
    ys = []
    for t in range(length):
        h = torch.exp(delta[:, :, t, None] * A) * h + delta[:, :, t, None] * at(B, t) * u[:, :, t, None]
        ys.append((h * at(C, t)).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D[:, None] * u
    if z is not None:
        y = y * F.silu(z)
    return y, h


def make_inputs(b=2, d=8, n=4, length=7, bc="variable", groups=2, D=True, z=True, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    shapes = {"invariant": (d, n), "variable": (b, n, length), "grouped": (b, groups, n, length)}
    return dict(
        u=rnd(b, d, length),
        delta=torch.rand(b, d, length, generator=g, dtype=torch.float64) * 0.5 - 0.2,
        A=-torch.exp(rnd(d, n) * 0.5),
        B=rnd(*shapes[bc]),
        C=rnd(*shapes[bc]),
        D=rnd(d) if D else None,
        z=rnd(b, d, length) if z else None,
        delta_bias=rnd(d) * 0.1 if bias else None,
    )


def cast(inputs, dtype=torch.float32):
    return {k: (v.to(dtype) if v is not None else None) for k, v in inputs.items()}


def grads(fn, inputs, weights):
    leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items() if v is not None}
    y, last = fn(**leaves)
    ((y * weights[0]).sum() + (last * weights[1]).sum()).backward()
    return y.detach(), last.detach(), {k: v.grad for k, v in leaves.items()}


def assert_close(actual, expected, rtol, label=""):
    scale = expected.abs().max().clamp_min(1e-12)
    err = (actual.double() - expected).abs().max() / scale
    assert err < rtol, f"{label} max error {err:.2e} relative to max |expected| {scale:.2e}"


CASES = [
    dict(bc="invariant"),
    dict(bc="variable"),
    dict(bc="grouped"),
    dict(bc="variable", D=False, z=False, bias=False),
    dict(bc="grouped", D=True, z=False, bias=True),
    dict(bc="invariant", D=False, z=True, bias=False),
]


def compiled_kernel_or_skip():
    reason = cpu_kernel.unavailable_reason()
    if reason is not None:
        assert shutil.which("g++") is None and shutil.which("clang++") is None, reason
        from conftest import require_or_skip

        require_or_skip("cxx", f"no compiled CPU scan here: {reason}")


# The compiled kernel takes input-dependent B and C only; time-invariant ones always run the chunked scan.
IMPL_CASES = [(impl, case) for impl in ("chunked", "compiled") for case in CASES
              if impl == "chunked" or case["bc"] != "invariant"]


@pytest.mark.parametrize("length", [1, 7, 130])
@pytest.mark.parametrize("implementation,case", IMPL_CASES,
                         ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) if isinstance(c, dict) else c)
@pytest.mark.parametrize("softplus", [False, True])
def test_torch_scan_matches_sequential_reference(implementation, case, length, softplus):
    if implementation == "compiled":
        compiled_kernel_or_skip()
    inputs = make_inputs(length=length, **case)
    w = torch.randn(2, 8, length, dtype=torch.float64), torch.randn(2, 8, 4, dtype=torch.float64)
    y_ref, last_ref, g_ref = grads(lambda **kw: reference_scan(**kw, delta_softplus=softplus), inputs, w)
    # float64 run: the algorithm itself is exact; float32 run: the 1e-4 budget of the public contract.
    for dtype, rtol in ((torch.float64, 1e-10), (torch.float32, 1e-4)):
        y, last, g = grads(lambda **kw: selective_scan_torch(**kw, delta_softplus=softplus, return_last_state=True,
                                                              implementation=implementation),
                           cast(inputs, dtype), w)
        assert y.dtype == dtype
        assert_close(y, y_ref, rtol)
        assert_close(last, last_ref, rtol)
        assert g.keys() == g_ref.keys()
        for k in g_ref:
            assert_close(g[k], g_ref[k], rtol)


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 64])
def test_every_chunk_size_is_exact(chunk_size):
    # chunk 7 of L = 50 leaves a partial last chunk; the backward's checkpoint blocks vary with it.
    inputs = make_inputs(length=50, bc="grouped")
    w = torch.randn(2, 8, 50, dtype=torch.float64), torch.randn(2, 8, 4, dtype=torch.float64)
    y_ref, last_ref, g_ref = grads(lambda **kw: reference_scan(**kw, delta_softplus=True), inputs, w)
    y, last, g = grads(lambda **kw: selective_scan_torch(**kw, delta_softplus=True, return_last_state=True,
                                                          chunk_size=chunk_size), inputs, w)
    assert_close(y, y_ref, 1e-10)
    assert_close(last, last_ref, 1e-10)
    for k in g_ref:
        assert_close(g[k], g_ref[k], 1e-10)


@pytest.mark.parametrize("d_state,length", [(1, 601), (16, 37)])
def test_compiled_scan_d_state_1_and_16_odd_lengths(d_state, length):
    """Several chunks (256 steps at d_state 1, 16 at 16) with a partial last one, and 20 channels: one full
    16-channel block and a partial one; every optional input and a gradient on the last state."""
    compiled_kernel_or_skip()
    inputs = make_inputs(d=20, n=d_state, length=length, bc="grouped", groups=4)
    w = torch.randn(2, 20, length, dtype=torch.float64), torch.randn(2, 20, d_state, dtype=torch.float64)
    y_ref, last_ref, g_ref = grads(lambda **kw: reference_scan(**kw, delta_softplus=True), inputs, w)
    for dtype, rtol in ((torch.float64, 1e-10), (torch.float32, 1e-4)):
        y, last, g = grads(lambda **kw: selective_scan_torch(**kw, delta_softplus=True, return_last_state=True,
                                                              implementation="compiled"), cast(inputs, dtype), w)
        assert_close(y, y_ref, rtol)
        assert_close(last, last_ref, rtol)
        for k in g_ref:
            assert_close(g[k], g_ref[k], rtol)


def scan_order(code, h, w):
    """Pixel indices (row-major) in the order a direction visits them: ORDERS' bit 0 columns, bit 1 reversed."""
    grid = torch.arange(h * w).view(h, w)
    order = (grid.t() if code & 1 else grid).flatten()
    return order.flip(0) if code & 2 else order


@pytest.mark.parametrize("threads", [1, 2])
def test_compiled_grouped_scan_matches_the_reference_per_direction(threads):
    """SS2D's use: groups of directions that read one channel-last map (b, G, L, d) each in its own order
    (all four orders appear), their outputs summed per pixel of the group's map."""
    compiled_kernel_or_skip()
    g = torch.Generator().manual_seed(1)
    b, h, w, d, n, G, J = 2, 5, 7, 20, 3, 2, 2
    L = h * w
    orders = [cpu_kernel.ORDERS[o] for o in ("rows", "cols_reversed", "cols", "rows_reversed")]  # k = g J + j

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    leaves = dict(u=rnd(b, G, L, d), delta=rnd(b, G, L, J, d) - 1, A=-torch.rand(G * J, d, n, generator=g,
                  dtype=torch.float64) - 0.2, B=rnd(b, G, L, J, n), C=rnd(b, G, L, J, n), D=rnd(G * J, d),
                  bias=rnd(G * J, d) * 0.1)
    gy = rnd(b, G, L, d)

    def reference(u, delta, A, B, C, D, bias):
        ys = []
        for grp in range(G):
            y = 0
            for j in range(J):
                k = grp * J + j
                idx = scan_order(orders[k], h, w)

                def seq(t):  # (b, L, c) at the group's pixels -> direction k's sequence (b, c, L)
                    return t[:, idx].transpose(1, 2)

                yk, _ = reference_scan(seq(u[:, grp]), seq(delta[:, grp, :, j]), A[k], seq(B[:, grp, :, j]),
                                       seq(C[:, grp, :, j]), D[k], delta_bias=bias[k], delta_softplus=True)
                y = y + torch.empty_like(yk).index_copy_(2, idx, yk)
            ys.append(y.transpose(1, 2))
        return torch.stack(ys, 1)

    expected = [t.detach().clone().requires_grad_() for t in leaves.values()]
    y_ref = reference(*expected)
    g_ref = torch.autograd.grad((y_ref * gy).sum(), expected)
    actual = [t.detach().clone().requires_grad_() for t in leaves.values()]
    torch.set_num_threads(threads)
    try:
        y, _ = cpu_kernel.scan(*actual[:5], actual[5], actual[6], delta_softplus=True, orders=orders, height=h,
                               width=w)
        g_act = torch.autograd.grad((y * gy).sum(), actual)
    finally:
        torch.set_num_threads(1)
    assert_close(y, y_ref.detach(), 1e-10)
    for name, a, e in zip(leaves, g_act, g_ref):
        assert a.shape == e.shape, name
        assert_close(a, e, 1e-10, name)


def test_without_a_compiler_the_chunked_scan_runs_and_compiled_says_why(monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", "false")   # found on PATH, fails every build
    monkeypatch.setenv("CLIPDEHAZE_CACHE", str(tmp_path))
    monkeypatch.setattr(cpu_kernel, "_compiler", lambda: shutil.which("false"))
    cpu_kernel._library.cache_clear()
    try:
        reason = cpu_kernel.unavailable_reason()
        assert reason is not None and "cpu_scan.cpp" in reason
        inputs = cast(make_inputs(length=9))
        y = selective_scan_torch(**inputs)
        torch.testing.assert_close(y, selective_scan_torch(**inputs, implementation="chunked"), rtol=0, atol=0)
        with pytest.raises(RuntimeError, match="compiling cpu_scan.cpp failed"):
            selective_scan_torch(**inputs, implementation="compiled")
        assert not SS2D(d_model=8, d_state=2)(torch.randn(1, 3, 4, 8)).isnan().any()
    finally:
        cpu_kernel._library.cache_clear()


@pytest.mark.parametrize("bad", [dict(B=torch.zeros(2, 3, 4, 7)), dict(C=torch.zeros(2, 4, 6)),
                                 dict(A=torch.zeros(8, 4, dtype=torch.complex64))])
def test_invalid_inputs_are_rejected(bad):
    inputs = {**cast(make_inputs(length=7)), **bad}
    with pytest.raises(ValueError):
        selective_scan_torch(**inputs)


def test_large_decay_does_not_overflow():
    # Δ·A of -1e4 per step: a formulation with exp(+ΣΔA) would overflow, the scan must not.
    inputs = make_inputs(length=40, bc="variable", bias=False)
    inputs["delta"] = inputs["delta"].abs() * 1e3 + 10
    y_ref, _ = reference_scan(**inputs)
    y = selective_scan_torch(**cast(inputs))
    assert torch.isfinite(y).all()
    assert_close(y, y_ref, 1e-4)


def test_half_precision_input_keeps_its_dtype():
    inputs = cast(make_inputs(length=9), torch.bfloat16)
    assert selective_scan(**inputs).dtype == torch.bfloat16


def test_return_last_state_only_gradient():
    inputs = make_inputs(length=20, bc="invariant")
    w = torch.zeros(2, 8, 20, dtype=torch.float64), torch.randn(2, 8, 4, dtype=torch.float64)
    _, _, g_ref = grads(reference_scan, inputs, w)
    _, _, g = grads(lambda **kw: selective_scan_torch(**kw, return_last_state=True), inputs, w)
    for k in g_ref:
        assert_close(g[k], g_ref[k], 1e-10)


def test_auto_backend_uses_torch_on_cpu():
    inputs = cast(make_inputs(length=11))
    torch.testing.assert_close(selective_scan(**inputs, backend="auto"),
                               selective_scan(**inputs, backend="torch"), rtol=0, atol=0)


def test_cuda_backend_on_cpu_tensors_raises_a_clear_error():
    inputs = cast(make_inputs(length=5))
    with pytest.raises(RuntimeError, match="backend='cuda'") as info:
        selective_scan(**inputs, backend="cuda")
    assert "not importable" in str(info.value) or "CUDA tensors only" in str(info.value)
    with pytest.raises(ValueError, match="backend must be one of"):
        selective_scan(**inputs, backend="tvm")


def test_importable_kernel_is_still_skipped_for_cpu_tensors(monkeypatch):
    calls = []
    monkeypatch.setattr(scan_module, "_mamba_kernel", lambda: (lambda *args: calls.append(args), None))
    inputs = cast(make_inputs(length=5))
    assert scan_module.selective_scan(**inputs).shape == (2, 8, 5)
    assert not calls
    with pytest.raises(RuntimeError, match="CUDA tensors only"):
        scan_module.selective_scan(**inputs, backend="cuda")


class _BrokenModule(types.ModuleType):
    """Stands for a mamba-ssm whose compiled extension fails to load."""

    def __getattr__(self, name):
        raise OSError("libcudart.so.12: cannot open shared object file")


@pytest.mark.parametrize("breakage", ["missing", "broken"])
def test_module_imports_without_a_working_mamba_ssm(monkeypatch, breakage):
    names = ["mamba_ssm", "mamba_ssm.ops", "mamba_ssm.ops.selective_scan_interface"]
    if breakage == "missing":
        monkeypatch.setitem(sys.modules, "mamba_ssm", None)
    else:
        for name in names:
            monkeypatch.setitem(sys.modules, name, _BrokenModule(name))
    try:
        module = importlib.reload(scan_module)
        assert module.cuda_kernel_unavailable_reason() is not None
        assert "not importable" in module.cuda_kernel_unavailable_reason()
        inputs = cast(make_inputs(length=6))
        assert module.selective_scan(**inputs).shape == (2, 8, 6)
        with pytest.raises(RuntimeError, match="not importable"):
            module.selective_scan(**inputs, backend="cuda")
    finally:
        monkeypatch.undo()
        importlib.reload(scan_module)


@pytest.mark.parametrize("shape", [(1, 7, 9, 16), (2, 13, 5, 8), (1, 1, 1, 4)])
def test_ss2d_shapes_and_backward(shape):
    torch.manual_seed(0)
    layer = SS2D(d_model=shape[-1], d_state=8, dropout=0.1)
    x = torch.randn(*shape, requires_grad=True)
    out = layer(x)
    assert out.shape == x.shape
    out.square().mean().backward()
    assert torch.isfinite(x.grad).all()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("d_state,shape", [(1, (2, 7, 9, 16)), (16, (1, 5, 3, 24))])
def test_ss2d_channel_last_path_equals_the_four_copy_path(monkeypatch, d_state, shape, threads):
    """The compiled channel-last SS2D against the pre-kernel path (four reordered copies through the
    chunked scan), same weights: outputs and every gradient. With two threads and these widths (24 and 36 inner
    channels) the row and column walks run side by side into two outputs; with one, into one."""
    compiled_kernel_or_skip()
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)  # what scan_map decides by
    torch.manual_seed(0)
    layer = SS2D(d_model=shape[-1], d_state=d_state, expand=1.5)
    x = torch.randn(*shape, requires_grad=True)
    w = torch.randn(*shape)

    def run():
        out = layer(x)
        return out, torch.autograd.grad((out * w).sum(), [x, *layer.parameters()])

    out, g = run()
    monkeypatch.setattr(cpu_kernel, "available", lambda *tensors: False)
    out_ref, g_ref = run()
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-6)
    for (name, _), a, e in zip([("x", x), *layer.named_parameters()], g, g_ref):
        assert_close(a, e.double(), 1e-5, name)


def test_ss2d_rejects_an_unknown_backend():
    with pytest.raises(ValueError, match="scan_backend"):
        SS2D(d_model=8, scan_backend="tvm")


def test_ss2d_parameters_follow_mambair():
    layer = SS2D(d_model=16, d_state=8)
    shapes = {k: tuple(v.shape) for k, v in layer.state_dict().items()}
    assert shapes == {
        "in_proj.weight": (64, 16), "conv2d.weight": (32, 1, 3, 3), "conv2d.bias": (32,),
        "x_proj_weight": (4, 1 + 16, 32), "dt_projs_weight": (4, 32, 1), "dt_projs_bias": (4, 32),
        "A_logs": (128, 8), "Ds": (128,), "out_norm.weight": (32,), "out_norm.bias": (32,),
        "out_proj.weight": (16, 32),
    }
    dt = F.softplus(layer.dt_projs_bias)
    assert dt.min() >= 1e-4 and dt.max() <= 0.1 + 1e-6
    torch.testing.assert_close(layer.A_logs.exp()[0], torch.arange(1, 9, dtype=torch.float32))


def test_ss2d_scan_orders_match_a_per_direction_reference():
    """Each of the four directions scans the image in its own order and is mapped back before the sum."""
    torch.manual_seed(0)
    layer = SS2D(d_model=8, d_state=4).eval()
    b, h, w = 2, 3, 5
    xs = torch.randn(b, layer.d_inner, h, w)
    merged = layer.forward_core(xs)
    seqs = [xs.flatten(2), xs.transpose(2, 3).flatten(2)]
    seqs += [s.flip(-1) for s in seqs]
    d = layer.d_inner
    A = -layer.A_logs.exp().view(4, d, -1)
    expected = torch.zeros(b, d, h * w)
    for k, s in enumerate(seqs):
        x_dbl = torch.einsum("bdl,cd->bcl", s, layer.x_proj_weight[k])
        dts, Bs, Cs = torch.split(x_dbl, [layer.dt_rank, layer.d_state, layer.d_state], dim=1)
        dts = torch.einsum("brl,dr->bdl", dts, layer.dt_projs_weight[k])
        y, _ = reference_scan(s.double(), dts.double(), A[k].double(), Bs.double(), Cs.double(),
                              layer.Ds.view(4, d)[k].double(), delta_bias=layer.dt_projs_bias[k].double(),
                              delta_softplus=True)
        y = y.float()
        if k >= 2:
            y = y.flip(-1)
        if k % 2 == 1:
            y = y.view(b, d, w, h).transpose(2, 3).flatten(2)
        expected += y
    torch.testing.assert_close(merged, expected, rtol=1e-4, atol=1e-5)


def test_benchmark_runs_and_reports_ratios_and_the_bound():
    from clipdehaze.models.ssm.bench import _work, format_table, run_scan_benchmark

    report = run_scan_benchmark(lengths=(32,), batch=1, d_inner=4, d_state=2, repeats=1, sequential_steps=8,
                                cliphaze_cases=(("tiny", 1, 4, 6),))
    (row,) = report["results"]
    assert row["length"] == 32 and row["sequential_steps_timed"] == 8
    assert row["chunked_s"] > 0 and row["sequential_unbound_vs_compiled"] > 0
    assert (row["mambapy_s"] is None) == (importlib.util.find_spec("mambapy") is None)
    floors = report["floors"]
    assert floors["copy_bytes_per_s"] > 1e8 and floors["exp_per_s"] > 1e7
    bound = row["bound"]
    assert bound["bound_s"] == max(bound["memory_s"], bound["exp_s"]) > 0
    assert row["compiled_vs_bound"] == pytest.approx(row["compiled_s"] / bound["bound_s"])
    (tiny,) = report["cliphaze"]
    assert tiny["compiled_s"] > 0 and tiny["chunked_s"] > 0 and tiny["bound"]["bound_s"] > 0
    assert "lower bound" in format_table(report) and "tiny" in format_table(report)
    # The work counted at (b, d, L) = (1, 4, 32), n = 2, float32: forward reads u, Δ (128 each), B and C (64 each),
    # A (8) and writes y (128); the backward reads those and ȳ and writes the five gradients; one exp per state
    # element (256) per pass.
    reads = 128 + 128 + 64 + 64 + 8
    assert _work(1, 1, 32, 4, 2, False, False) == ((reads + 128 + reads + 128 + reads) * 4, 2 * 256)


def test_benchmark_ss2d_ops_compute_the_same_gradients():
    """The bench's compiled SS2D scan and the four-copy chunked path it is compared with do the same work."""
    from clipdehaze.models.ssm import bench

    compiled_kernel_or_skip()
    operands = bench._ss2d_operands(2, 5, 7, seed=0)
    grads = []
    for op in (bench._ss2d_compiled, bench._ss2d_chunked):
        leaves = bench._leaves(operands)
        op(leaves, 5, 7)
        grads.append({k: v.grad for k, v in leaves.items()})
    for k in grads[1]:
        assert_close(grads[0][k], grads[1][k].double(), 1e-5, k)


def test_compiled_scan_takes_non_contiguous_inputs():
    compiled_kernel_or_skip()
    inputs = make_inputs(length=33, bc="grouped")
    strided = {k: (v.transpose(-1, -2).contiguous().transpose(-1, -2) if v is not None and v.dim() >= 2 else v)
               for k, v in inputs.items()}
    assert not strided["u"].is_contiguous() and not strided["B"].is_contiguous()
    torch.testing.assert_close(selective_scan_torch(**strided, implementation="compiled"),
                               selective_scan_torch(**inputs, implementation="chunked"), rtol=1e-10, atol=1e-10)


def test_compiled_grouped_scan_takes_views_with_gaps():
    """u and delta as strided slices (their gradients are written with the operands' strides)."""
    compiled_kernel_or_skip()
    g = torch.Generator().manual_seed(2)
    big_u = torch.randn(2, 1, 30, 40, generator=g, dtype=torch.float64)
    big_delta = torch.randn(2, 1, 30, 1, 40, generator=g, dtype=torch.float64)
    A = -torch.rand(1, 20, 2, generator=g, dtype=torch.float64)
    B, C = torch.randn(2, 2, 1, 30, 1, 2, generator=g, dtype=torch.float64)
    results = []
    for make in (lambda t: t[..., ::2], lambda t: t[..., ::2].contiguous()):
        u, delta = (t.clone().requires_grad_() for t in (big_u, big_delta))
        y, _ = cpu_kernel.scan(make(u), make(delta), A, B, C, delta_softplus=True)
        results.append((y, *torch.autograd.grad((y * y).sum(), (u, delta))))
    for a, e in zip(*results):
        assert_close(a, e, 1e-12)


@pytest.mark.parametrize("threads", [1, 2])
def test_compiled_scan_of_one_shared_map_with_low_rank_delta(threads):
    """SS2D's use since the kernel reads the map in place: one (b, 1, L, d) map read by two groups of two directions
    (all four orders), every direction summed into one output, and Δ given low-rank (δ = dt_proj[k] @ dts per
    position) and formed inside the kernel. Against the reference per direction, float64, output and every
    gradient (the low-rank factor's and the projection's included)."""
    compiled_kernel_or_skip()
    g = torch.Generator().manual_seed(3)
    b, h, w, d, n, r, G, J = 2, 6, 5, 20, 1, 3, 2, 2
    L = h * w
    orders = [cpu_kernel.ORDERS[o] for o in ("rows", "rows_reversed", "cols", "cols_reversed")]

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    leaves = dict(u=rnd(b, 1, L, d), dts=rnd(b, G, L, J, r) * 0.5, dt_proj=rnd(G * J, d, r) * 0.5,
                  A=-torch.rand(G * J, d, n, generator=g, dtype=torch.float64) - 0.2, B=rnd(b, G, L, J, n),
                  C=rnd(b, G, L, J, n), D=rnd(G * J, d), bias=rnd(G * J, d) * 0.1 - 1)
    gy = rnd(b, 1, L, d)

    def reference(u, dts, dt_proj, A, B, C, D, bias):
        y = 0
        for k in range(G * J):
            grp, j = divmod(k, J)
            idx = scan_order(orders[k], h, w)
            delta = torch.einsum("blr,dr->bld", dts[:, grp, :, j], dt_proj[k])

            def seq(t):  # (b, L, c) at the map's pixels -> direction k's sequence (b, c, L)
                return t[:, idx].transpose(1, 2)

            yk, _ = reference_scan(seq(u[:, 0]), seq(delta), A[k], seq(B[:, grp, :, j]), seq(C[:, grp, :, j]), D[k],
                                   delta_bias=bias[k], delta_softplus=True)
            y = y + torch.empty_like(yk).index_copy_(2, idx, yk)
        return y.transpose(1, 2).unsqueeze(1)

    expected = [t.detach().clone().requires_grad_() for t in leaves.values()]
    y_ref = reference(*expected)
    g_ref = torch.autograd.grad((y_ref * gy).sum(), expected)
    actual = [t.detach().clone().requires_grad_() for t in leaves.values()]
    u, dts, dt_proj, A, B, C, D, bias = actual
    torch.set_num_threads(threads)
    try:
        y, _ = cpu_kernel.scan(u, dts, A, B, C, D, bias, delta_softplus=True, orders=orders, height=h, width=w,
                               dt_proj=dt_proj)
        g_act = torch.autograd.grad((y * gy).sum(), actual)
    finally:
        torch.set_num_threads(1)
    assert y.shape == (b, 1, L, d)
    assert_close(y, y_ref.detach(), 1e-10)
    for name, a, e in zip(leaves, g_act, g_ref):
        assert a.shape == e.shape, name
        assert_close(a, e, 1e-10, name)


@pytest.mark.parametrize("dtype,d_state,rtol", [(torch.float64, 8, 1e-10), (torch.float32, 16, 1e-4)])
def test_compiled_scan_of_channel_strided_operands_walked_both_ways(dtype, d_state, rtol):
    """(b, d, L)-style operands (a channel stride of L, B and C with a state stride of L), walked forwards and
    backwards: the kernel gathers and scatters them a square tile at a time (as many channels and steps as a vector
    holds; d_state = that size takes the tiled path for B and C too), with partial tiles at the end. Against the
    reference per direction."""
    compiled_kernel_or_skip()
    g = torch.Generator().manual_seed(4)
    b, d, L, J = 2, 21, 53, 2
    orders = [cpu_kernel.ORDERS["rows"], cpu_kernel.ORDERS["rows_reversed"]]

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    # Stored (b, 1, d, L) / (b, 1, J, n, L) and viewed (b, 1, L, d) / (b, 1, L, J, n): strided channels and states.
    leaves = dict(u=rnd(b, 1, d, L), delta=rnd(b, 1, J, d, L) - 1, A=-torch.rand(J, d, d_state, generator=g,
                  dtype=torch.float64) - 0.2, B=rnd(b, 1, J, d_state, L), C=rnd(b, 1, J, d_state, L), D=rnd(J, d),
                  bias=rnd(J, d) * 0.1)
    gy = rnd(b, 1, L, d)

    def views(u, delta, A, B, C, D, bias):
        return (u.transpose(2, 3), delta.permute(0, 1, 4, 2, 3), A, B.permute(0, 1, 4, 2, 3), C.permute(0, 1, 4, 2, 3),
                D, bias)

    def reference(u, delta, A, B, C, D, bias):
        y = 0
        for j in range(J):
            flip = (lambda t: t.flip(-1)) if j else (lambda t: t)
            yk, _ = reference_scan(flip(u[:, 0]), flip(delta[:, 0, j]), A[j], flip(B[:, 0, j]), flip(C[:, 0, j]), D[j],
                                   delta_bias=bias[j], delta_softplus=True)
            y = y + flip(yk)
        return y.transpose(1, 2).unsqueeze(1)

    expected = [t.detach().clone().requires_grad_() for t in leaves.values()]
    y_ref = reference(*expected)
    g_ref = torch.autograd.grad((y_ref * gy).sum(), expected)
    actual = [t.detach().to(dtype).requires_grad_() for t in leaves.values()]
    u, delta, A, B, C, D, bias = views(*actual)
    assert u.stride(3) == L and B.stride(4) == L
    y, _ = cpu_kernel.scan(u, delta, A, B, C, D, bias, delta_softplus=True, orders=orders)
    g_act = torch.autograd.grad((y * gy.to(dtype)).sum(), actual)
    assert_close(y, y_ref.detach(), rtol)
    for name, a, e in zip(leaves, g_act, g_ref):
        assert_close(a, e, rtol, name)


@pytest.mark.slow
def test_portable_build_without_native_instructions_is_exact(monkeypatch, tmp_path):
    """The kernel built without -march=native (the fallback flags: generic vector code instead of the AVX-512
    exponent, logarithm and shuffles) gives the same scan: SS2D's shared-map low-rank case against the build in use,
    float64 exactly and float32 to rounding."""
    compiled_kernel_or_skip()
    g = torch.Generator().manual_seed(5)
    b, h, w, d, r = 1, 7, 6, 20, 2
    L = h * w
    args = dict(u=torch.randn(b, 1, L, d, generator=g), delta=torch.randn(b, 2, L, 2, r, generator=g),
                A=-torch.rand(4, d, 1, generator=g) - 0.2, B=torch.randn(b, 2, L, 2, 1, generator=g),
                C=torch.randn(b, 2, L, 2, 1, generator=g), D=torch.randn(4, d, generator=g),
                delta_bias=torch.randn(4, d, generator=g) * 0.1 - 2, dt_proj=torch.randn(4, d, r, generator=g))
    kw = dict(delta_softplus=True, orders=(0, 2, 1, 3), height=h, width=w)

    def run(dtype):
        leaves = {k: v.to(dtype).requires_grad_() for k, v in args.items()}
        y, _ = cpu_kernel.scan(**leaves, **kw)
        return [y, *torch.autograd.grad(y.square().sum(), list(leaves.values()))]

    native = {dtype: run(dtype) for dtype in (torch.float64, torch.float32)}
    monkeypatch.setenv("CLIPDEHAZE_CACHE", str(tmp_path))
    monkeypatch.setattr(cpu_kernel, "_FLAG_SETS", ([*cpu_kernel._COMMON_FLAGS, "-fopenmp"],))
    cpu_kernel._library.cache_clear()
    try:
        assert cpu_kernel.unavailable_reason() is None
        for dtype, rtol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
            for a, e in zip(run(dtype), native[dtype]):
                assert_close(a, e.double(), rtol)
    finally:
        cpu_kernel._library.cache_clear()
