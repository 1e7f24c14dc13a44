"""The Triton selective scan, run by Triton's interpreter on CPU, against the PyTorch scan.

Forward, last state and every input gradient are compared with ``selective_scan_torch`` in float64 (itself checked
against the step-by-step recurrence in test_ssm.py) on small shapes: odd lengths over several tiles with a partial
last one, d_state 1 and 16, B/C shared by all channels, grouped and time-invariant, with and without z / D /
delta_bias / softplus. tests/conftest.py turns the interpreter on where there is no CUDA; on a GPU machine the
`cuda`-marked tests in test_gpu.py compare the compiled kernels instead.
"""

from __future__ import annotations

import pytest
import torch

from clipdehaze.models.ssm import SS2D, selective_scan, selective_scan_torch, triton_unavailable_reason
from clipdehaze.models.ssm.selective_scan import _triton_scan
from conftest import require_or_skip
from test_ssm import assert_close, cast, make_inputs

triton_scan, _import_error = _triton_scan()
if triton_scan is None:
    require_or_skip("triton-interpreter", f"Triton is not importable: {_import_error}", allow_module_level=True)
if not triton_scan.INTERPRETER:
    require_or_skip("triton-interpreter", "Triton was imported without its interpreter (TRITON_INTERPRET=1 must be "
                    "set before triton is first imported; tests/conftest.py does so on machines without CUDA); on a "
                    "GPU test_gpu.py checks the compiled kernels", allow_module_level=True)

from clipdehaze.models.ssm.triton_scan import selective_scan_triton, tile_config  # noqa: E402


def _grads(fn, inputs, weights):
    leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items() if v is not None}
    y, last = fn(**leaves)
    ((y * weights[0]).sum() + (last * weights[1]).sum()).backward()
    return y.detach(), last.detach(), {k: v.grad for k, v in leaves.items()}


# (B/C layout, d_state, extras): every layout at d_state 1 and 16, each of z / D / delta_bias on and off somewhere.
CASES = [
    dict(bc="variable", n=1),
    dict(bc="variable", n=16, D=False, z=False, bias=False),
    dict(bc="grouped", n=1, z=False),
    dict(bc="grouped", n=16),
    dict(bc="invariant", n=1, D=False, bias=False),
    dict(bc="invariant", n=16, z=False),
]


def _case_id(case):
    return "-".join(f"{k}={v}" for k, v in case.items())


@pytest.mark.parametrize("softplus", [True, False])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_forward_and_every_gradient_match_the_torch_scan(case, softplus):
    # L = 37 in tiles of 16: three tiles, the last one partial, so state and adjoint carries cross two borders.
    d, length = (8, 37) if case["n"] == 1 else (4, 37)
    inputs = make_inputs(d=d, length=length, seed=1, **case)
    w = (torch.randn(2, d, length, dtype=torch.float64), torch.randn(2, d, case["n"], dtype=torch.float64))
    y_ref, last_ref, g_ref = _grads(lambda **kw: selective_scan_torch(
        **kw, delta_softplus=softplus, return_last_state=True), inputs, w)
    y, last, g = _grads(lambda **kw: selective_scan_triton(
        **kw, delta_softplus=softplus, return_last_state=True, chunk_size=16), cast(inputs), w)
    assert y.dtype == torch.float32 and last.dtype == torch.float32
    assert_close(y, y_ref, 1e-4)
    assert_close(last, last_ref, 1e-4)
    assert g.keys() == g_ref.keys()
    for k in g_ref:
        assert g[k].dtype == torch.float32 and g[k].shape == g_ref[k].shape, k
        assert_close(g[k], g_ref[k], 1e-4)


@pytest.mark.parametrize("length", [1, 5, 19])
def test_default_tiles_and_short_sequences(length):
    # The default tile is at least 16 steps: one partly filled tile, and L = 1.
    inputs = make_inputs(length=length, n=4, bc="grouped")
    w = (torch.randn(2, 8, length, dtype=torch.float64), torch.randn(2, 8, 4, dtype=torch.float64))
    ref = _grads(lambda **kw: selective_scan_torch(**kw, delta_softplus=True, return_last_state=True), inputs, w)
    got = _grads(lambda **kw: selective_scan_triton(**kw, delta_softplus=True, return_last_state=True),
                 cast(inputs), w)
    for a, b in zip(got[:2], ref[:2]):
        assert_close(a, b, 1e-4)
    for k in ref[2]:
        assert_close(got[2][k], ref[2][k], 1e-4)


def test_last_state_gradient_alone():
    inputs = make_inputs(length=21, n=2, bc="variable")
    w = torch.zeros(2, 8, 21, dtype=torch.float64), torch.randn(2, 8, 2, dtype=torch.float64)
    _, _, g_ref = _grads(lambda **kw: selective_scan_torch(**kw, return_last_state=True), inputs, w)
    _, _, g = _grads(lambda **kw: selective_scan_triton(**kw, return_last_state=True, chunk_size=8), cast(inputs), w)
    for k in g_ref:
        assert_close(g[k], g_ref[k], 1e-4)


def test_strided_inputs_are_read_in_place():
    """SS2D hands the scan views: B and C split out of one projection, u a transposed copy's view."""
    torch.manual_seed(0)
    b, d, n, length = 2, 8, 3, 23
    u = torch.randn(b, length, d).transpose(1, 2)
    delta = torch.rand(b, d, 2 * length)[..., ::2]
    proj = torch.randn(b, 2, 2 * n + 1, length)
    _, B, C = torch.split(proj, [1, n, n], dim=2)
    A = -torch.rand(d, n) - 0.5
    assert not (u.is_contiguous() or delta.is_contiguous() or B.is_contiguous())
    args = (u, delta, A, B, C, torch.randn(d))
    expected = selective_scan_torch(*(t.double() for t in args), delta_softplus=True)
    assert_close(selective_scan_triton(*args, delta_softplus=True), expected, 1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.slow
def test_half_precision_inputs_scan_in_float32(dtype):
    """Low-precision inputs are accepted; the state stays float32, so the output equals the float32 scan of the
    same (rounded) inputs up to rounding the output once, and the gradients have the inputs' dtypes."""
    inputs = cast(make_inputs(length=37, n=4, bc="grouped"), dtype)
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    out = selective_scan_triton(**leaves, delta_softplus=True, chunk_size=16)
    assert out.dtype == dtype
    out.float().square().sum().backward()
    assert all(v.grad.dtype == dtype and torch.isfinite(v.grad).all() for v in leaves.values())
    expected = selective_scan_torch(**cast(inputs, torch.float64), delta_softplus=True)
    assert_close(out, expected, 1e-2 if dtype == torch.bfloat16 else 2e-3)


def test_ss2d_with_the_triton_backend_matches_torch():
    torch.manual_seed(0)
    layer = SS2D(d_model=4, d_state=2, expand=1, scan_backend="torch")
    x = torch.randn(1, 3, 5, 4)
    ref_out = layer(x)
    ref_out.square().sum().backward()
    ref_grads = {k: p.grad.clone() for k, p in layer.named_parameters()}
    layer.zero_grad()
    layer.scan_backend = "triton"
    out = layer(x)
    out.square().sum().backward()
    torch.testing.assert_close(out, ref_out, rtol=1e-4, atol=1e-6)
    for k, p in layer.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[k], rtol=1e-4, atol=1e-6, msg=k)


def test_auto_backend_keeps_the_torch_scan_for_cpu_tensors(monkeypatch):
    """The interpreter is a test device: `auto` sends CPU tensors to the PyTorch scan even when it is on."""
    monkeypatch.setattr(triton_scan, "selective_scan_triton", lambda *a, **k: pytest.fail("Triton used on CPU"))
    inputs = cast(make_inputs(length=9))
    torch.testing.assert_close(selective_scan(**inputs, backend="auto"),
                               selective_scan(**inputs, backend="torch"), rtol=0, atol=0)
    assert triton_unavailable_reason(inputs["u"]) is None  # explicit backend="triton" would run interpreted


def test_triton_backend_refusals_say_why(monkeypatch):
    inputs = make_inputs(length=5)
    with pytest.raises(RuntimeError, match="backend='triton'.*float64"):
        selective_scan(**inputs, backend="triton")
    with pytest.raises(ValueError, match="power of two"):
        selective_scan_triton(**cast(inputs), chunk_size=12)
    monkeypatch.setattr(triton_scan, "INTERPRETER", False)
    with pytest.raises(RuntimeError, match="CUDA tensors.*TRITON_INTERPRET=1"):
        selective_scan(**cast(inputs), backend="triton")


def test_tile_config_keeps_a_program_inside_one_bc_group():
    cpu = torch.device("cpu")
    for n, group_size, block_d in [(1, 24, 8), (1, 6, 2), (1, 5, 1), (2, 8, 4), (16, 192, 1)]:
        cfg = tile_config(batch=2, d=4 * group_size, n=n, length=4096, group_size=group_size, device=cpu)
        assert cfg.block_d == block_d and group_size % cfg.block_d == 0
        assert cfg.block_n >= n and cfg.block_n & (cfg.block_n - 1) == 0
        assert cfg.steps & (cfg.steps - 1) == 0 and cfg.block_d * cfg.block_n * cfg.steps <= 1024
    assert tile_config(1, 8, 4, 5, 8, cpu).steps == 16
