"""``clipdehaze-bench``: speed and size of every generator, the CLIP prior and the selective scan.

    clipdehaze-bench models [--models dehazeformer_t cliphaze_t ...] [--out outputs/bench]
    clipdehaze-bench clip        # zero-shot map / embeddings, live vs cached (tiny_random and ViT-B/32 random)
    clipdehaze-bench scan        # selective scan vs this machine's lower bound, loops, mambapy; cliphaze_t profile
                                 # and its goal ratios
    clipdehaze-bench all

``models`` reports per generator variant: parameters; MACs at a given size (``torch.utils.flop_counter``, MACs =
FLOPs / 2: convolutions and matmuls, elementwise ops not counted), on the published implementation's graph (the
papers' figures) and on the fused graph this code executes; inference latency, images/s and peak memory at
256² and 1024² (untiled, and tiled at 256 px with 32 px overlap); the layout copies of one inference at the MAC size
(bytes moved by copy / contiguous / clone / cat / flip operations, and their share of the activation bytes:
:mod:`clipdehaze.utils.traffic`, counted per ATen operation, so the figure carries over to other devices); a
training-step time (AdamW, batch 4, 128² crops);
for CLIP-conditioned generators the step is timed with the CLIP inputs computed live and served from the cache.
The step is the one training runs: L1 plus the generator's ``auxiliary_losses`` where it has any (the SAR weather
net's CLIP-SRD, whose frozen-CLIP teacher features of input and target are computed live in both columns, as in
training); the row's ``train_loss`` names the terms.
Peak memory is measured in a fresh subprocess per case (CPU: max RSS growth over the process after the model is
built; CUDA: ``torch.cuda.max_memory_allocated``). When both models of a goal in :data:`GOALS` are listed (CLIPHaze
against the DehazeFormer it competes with), their time ratios are measured side by side (:func:`goal_ratios`) and
reported after the table. Results go to ``bench.json`` and ``bench.md``. Speed targets live here, never as timed
assertions in tests.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

SCHEMA_VERSION = 1
DEFAULT_CLIP = {"model_name": "ViT-B-32", "pretrained": None, "warn_random": False}


# ----------------------------------------------------------------------------------------------------- helpers
def _timeit(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    """Median seconds of ``fn`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of softmax(q kᵀ) v as two batched matmuls, as torch counts the CUDA attention kernels."""
    *batch, s_q, d = query_shape
    s_k, d_v = key_shape[-2], value_shape[-1]
    return 2 * math.prod(batch) * s_q * s_k * (d + d_v)


def _uncounted_attention_kernels() -> dict[Any, Callable[..., int]]:
    """Fused attention kernels that torch's flop counter does not know in some versions (torch 2.14 has no
    formula for the CPU flash kernel, so every ``F.scaled_dot_product_attention`` on CPU counted 0 MACs, while
    the same call on meta or CUDA counted its two matmuls). Counted here with the same formula."""
    from torch.utils.flop_counter import flop_registry

    kernels = {}
    for name in ("_scaled_dot_product_flash_attention_for_cpu",):
        op = getattr(torch.ops.aten, name, None)
        if op is not None and op not in flop_registry:
            kernels[op] = _sdpa_flops
    return kernels


def count_macs(model: torch.nn.Module, x: torch.Tensor, inputs: dict[str, torch.Tensor],
               graph: str = "upstream") -> int:
    """Multiply-accumulates of one forward: torch.utils.flop_counter's FLOPs / 2 (convolutions and matmuls).

    ``graph="upstream"`` (default) counts the published implementation's operations (modules with a fused
    equivalent run their literal upstream form, see :class:`clipdehaze.models.layers.UpstreamGraph`): the
    architecture's MACs, comparable with the papers' figures. ``graph="executed"`` counts what this code runs.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from clipdehaze.models import upstream_graph

    if graph not in ("upstream", "executed"):
        raise ValueError(f"graph must be 'upstream' or 'executed', got {graph!r}")
    with torch.no_grad(), upstream_graph(model, enabled=graph == "upstream"), \
            FlopCounterMode(display=False, custom_mapping=_uncounted_attention_kernels()) as counter:
        model(x, **inputs)
    return counter.get_total_flops() // 2


def copy_traffic(model: torch.nn.Module, x: torch.Tensor, inputs: dict[str, Any]) -> dict[str, Any]:
    """Layout copies of one inference forward (:func:`clipdehaze.utils.traffic.layout_traffic`): bytes read and
    written by copy / contiguous / clone / cat / flip operations, as MB and as a percentage of the activation bytes
    (every tensor the forward allocates)."""
    from clipdehaze.utils.traffic import layout_traffic

    with torch.no_grad():
        t = layout_traffic(lambda: model(x, **inputs))
    return {"copy_mb": round(t["layout_bytes"] / 2**20, 1), "activation_mb": round(t["activation_bytes"] / 2**20, 1),
            "copy_pct": round(100 * t["share"], 1)}


def dummy_clip_inputs(model: torch.nn.Module, x: torch.Tensor) -> dict[str, Any]:
    """Random tensors shaped like the CLIP inputs a generator asks for (for MACs, which ignore values); an
    ``image_encoder`` returns random embeddings of the images it is given."""
    from clipdehaze.models import clip_inputs_of

    d = getattr(model, "clip_dim", None) or getattr(model, "text_dim", None) or 512
    b, _, h, w = x.shape
    shapes = {"text_feature": (b, 1, d), "image_embedding": (b, d), "density_map": (b, 1, h, w),
              "dense_features": (b, d, max(1, h // 32), max(1, w // 32))}

    def encoder(images: torch.Tensor) -> torch.Tensor:
        return torch.rand(images.shape[0], d, device=images.device)

    return {n: encoder if n == "image_encoder" else torch.rand(shapes[n], device=x.device)
            for n in clip_inputs_of(model)}


def generator_macs(name: str, size: int = 256, graph: str = "upstream", **kwargs) -> int:
    """MACs of the generator alone (the frozen CLIP's own cost excluded) at ``size``².

    Networks are counted on the meta device (shapes only: instant, no memory). Parameter-free priors (dcp) run on
    real CPU tensors: they are cheap, and kornia's box filter picks a different, uncounted kernel on meta.
    """
    from clipdehaze.models import create_generator

    device = "meta"
    with torch.device(device):
        model = create_generator(name, **kwargs).eval()
    if not any(True for _ in model.parameters()):
        device = "cpu"
        model = create_generator(name, **kwargs).eval()
    with torch.device(device):
        x = torch.rand(1, 3, size, size)
        inputs = dummy_clip_inputs(model, x)
    return count_macs(model, x, inputs, graph=graph)


def _build(name: str, clip_cfg: dict[str, Any] | None, device: torch.device):
    from clipdehaze.models import clip_inputs_of, create_generator

    model = create_generator(name).to(device).eval()
    prior = None
    if clip_inputs_of(model) or model.auxiliary_terms:
        from clipdehaze.models.clip import FrozenCLIP

        prior = FrozenCLIP(**(clip_cfg or DEFAULT_CLIP)).to(device)
        # The CLIP width follows the prior, as ${clip_dim:...} does in the model configs.
        for key in ("clip_dim", "text_dim"):
            if getattr(model, key, prior.embed_dim) != prior.embed_dim:
                model = create_generator(name, **{key: prior.embed_dim}).to(device).eval()
    return model, prior


def _clip_inputs(model, prior, x):
    from clipdehaze.models import clip_inputs_of

    names = clip_inputs_of(model)
    return prior.generator_inputs(names, x) if names else {}


# ----------------------------------------------------------------------------------------------------- models
def _tiled_fn(model, inputs: dict[str, torch.Tensor], x: torch.Tensor):
    """The generator over tiles of ``x`` as ``clipdehaze-predict`` runs it (CLIP maps cropped per tile)."""
    from clipdehaze.utils.tiling import crop_inputs

    def fn(t, box):
        return model(t, **crop_inputs(inputs, x.shape[-2:], box, t.shape[-2:]))
    return fn


def _memory_worker(name: str, size: int, tiled: bool, tile: int, clip_cfg: dict | None) -> dict[str, Any]:
    """Run in a fresh process: peak memory of one inference."""
    from clipdehaze.utils.memory import peak_memory_bytes
    from clipdehaze.utils.tiling import tiled_forward

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, prior = _build(name, clip_cfg, device)
    x = torch.rand(1, 3, size, size, device=device)
    inputs = _clip_inputs(model, prior, x)

    def work():
        with torch.no_grad():
            if tiled:
                tiled_forward(_tiled_fn(model, inputs, x), x, tile=tile, overlap=tile // 8)
            else:
                model(x, **inputs)
    peak = peak_memory_bytes(work, device)
    return {"peak_mb": round(peak / 2**20, 1) if peak is not None else None}


def sample_image(size: int) -> torch.Tensor:
    """A natural photo (scikit-image's astronaut) resized to size x size, (1, 3, size, size) in [0, 1]."""
    from skimage import data

    img = torch.from_numpy(data.astronaut()).permute(2, 0, 1)[None].float() / 255
    return torch.nn.functional.interpolate(img, size=(size, size), mode="bicubic", antialias=True).clamp(0, 1)


def seam_difference(model, prior, size: int, tile: int, device: torch.device) -> dict[str, float]:
    """Tiled (``tile`` px, overlap tile / 8, as the bench's tiled runs) against untiled inference on a natural
    photo: the largest absolute difference and the PSNR of the tiled output against the untiled one."""
    from clipdehaze.utils.tiling import tiled_forward

    x = sample_image(size).to(device)
    inputs = _clip_inputs(model, prior, x)
    with torch.no_grad():
        whole = model(x, **inputs).clamp(0, 1)
        tiled = tiled_forward(_tiled_fn(model, inputs, x), x, tile=tile, overlap=tile // 8).clamp(0, 1)
    mse = (tiled - whole).square().mean().item()
    return {"max_abs": (tiled - whole).abs().max().item(),
            "psnr_db": 10 * math.log10(1 / mse) if mse > 0 else float("inf")}


def _peak_memory(name: str, size: int, tiled: bool, tile: int, clip_cfg: dict | None,
                 timeout: float) -> float | None:
    cmd = [sys.executable, "-m", "clipdehaze.bench", "_memory", name, str(size), str(int(tiled)), str(tile),
           json.dumps(clip_cfg)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]
    except (subprocess.SubprocessError, ValueError, IndexError, KeyError):
        return None


def bench_model(name: str, *, sizes=(256, 1024), mac_size: int = 256, repeats: int = 3, train_batch: int = 4,
                train_crop: int = 128, clip_cfg: dict | None = None, memory: bool = True, tile: int = 256,
                max_untiled_gmacs: float = 60.0, timeout: float = 600.0,
                compile_mode: str | None = None) -> dict[str, Any]:
    from clipdehaze.utils.tiling import tiled_forward

    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, prior = _build(name, clip_cfg, device)
    params = sum(p.numel() for p in model.parameters())
    x = torch.rand(1, 3, mac_size, mac_size, device=device)
    inputs = _clip_inputs(model, prior, x)
    macs = count_macs(model, x, inputs)
    executed = count_macs(model, x, inputs, graph="executed")
    row: dict[str, Any] = {"model": name, "params": params, "macs_g": round(macs / 1e9, 3),
                           "exec_macs_g": round(executed / 1e9, 3), "mac_size": mac_size,
                           "clip": prior.model_id if prior is not None else None, "device": device.type}
    row.update(copy_traffic(model, x, inputs))
    gmacs_256 = macs / 1e9 * (256 / mac_size) ** 2
    for size in sizes:
        x = torch.rand(1, 3, size, size, device=device)
        inputs = _clip_inputs(model, prior, x)
        for tiled in (False, True) if size > tile else (False,):
            key = f"{size}{'_tiled' if tiled else ''}"
            if not tiled and size > tile and gmacs_256 > max_untiled_gmacs:
                row[f"latency_s_{key}"] = None  # too slow untiled on this device; the tiled run is reported
                continue

            def run(tiled=tiled, x=x, inputs=inputs):
                with torch.no_grad():
                    if tiled:
                        return tiled_forward(_tiled_fn(model, inputs, x), x, tile=tile, overlap=tile // 8)
                    return model(x, **inputs)

            lat = _timeit(run, repeats=repeats if size <= tile else 1)
            row[f"latency_s_{key}"] = round(lat, 4)
            row[f"images_per_s_{key}"] = round(1.0 / lat, 2) if lat > 0 else None
            if memory:
                row[f"peak_mb_{key}"] = _peak_memory(name, size, tiled, tile, clip_cfg, timeout)
        if size == tile:
            # Self-ensemble (tta=flip / tta=x8 in eval and predict): what it costs over one forward pass.
            from clipdehaze.utils.tta import self_ensemble

            for mode in ("flip", "x8"):
                def ensemble(mode=mode, x=x, inputs=inputs):
                    with torch.no_grad():
                        return self_ensemble(model, x, mode, inputs)

                lat_tta = _timeit(ensemble, repeats=repeats)
                row[f"latency_s_{size}_tta_{mode}"] = round(lat_tta, 4)
                row[f"tta_{mode}_cost"] = round(lat_tta / row[f"latency_s_{size}"], 2) if row[f"latency_s_{size}"] else None
        if size > tile and row.get(f"latency_s_{size}") is not None:
            seam = seam_difference(model, prior, size, tile, device)
            row[f"seam_max_abs_{size}"] = round(seam["max_abs"], 5)
            row[f"seam_psnr_db_{size}"] = round(seam["psnr_db"], 2)

    if params:
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        xb = torch.rand(train_batch, 3, train_crop, train_crop, device=device)
        yb = torch.rand_like(xb)
        cached = _clip_inputs(model, prior, xb)
        aux = model.auxiliary_terms

        def step(live: bool):
            inputs = _clip_inputs(model, prior, xb) if live else cached
            out = model(xb, **inputs)
            loss = torch.nn.functional.l1_loss(out, yb)
            if aux:  # unit weights: a term's weight does not change the step's cost
                loss = loss + sum(model.auxiliary_losses(xb, yb, out, prior).values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        row["train_step_s"] = round(_timeit(lambda: step(False), repeats=repeats), 4)
        # ema.enabled=true: the same step plus GeneratorEMA's update after it (the callback itself, driven as
        # Lightning drives it, one update per optimiser step).
        from types import SimpleNamespace

        from clipdehaze.callbacks import GeneratorEMA

        ema, holder, fake_trainer = GeneratorEMA(), SimpleNamespace(generator=model), SimpleNamespace(global_step=0)
        ema.setup(None, holder, "fit")

        def step_with_ema():
            step(False)
            fake_trainer.global_step += 1
            ema.on_train_batch_end(fake_trainer, holder, None, None, 0)

        row["train_step_s_ema"] = round(_timeit(step_with_ema, repeats=repeats), 4)
        row["ema_cost"] = round(row["train_step_s_ema"] / row["train_step_s"], 3) if row["train_step_s"] else None
        if compile_mode is not None:
            # What compile.enabled=true does in training (nn.Module.compile, in place); the first step compiles.
            model.compile(mode=None if compile_mode == "default" else compile_mode)
            start = time.perf_counter()
            step(False)
            row["compile_s"] = round(time.perf_counter() - start, 2)
            row["train_step_s_compiled"] = round(_timeit(lambda: step(False), repeats=repeats), 4)
            row["compile_speedup"] = round(row["train_step_s"] / row["train_step_s_compiled"], 3)
            model._compiled_call_impl = None
        if prior is not None:
            row["train_step_s_clip_live"] = round(_timeit(lambda: step(True), repeats=repeats), 4)
        row["train_batch"], row["train_crop"] = train_batch, train_crop
        row["train_loss"] = " + ".join(("l1", *aux))
    return row


# ----------------------------------------------------------------------------------------------- scan profile
PROFILE_PARTS = ("scan", "SS2D other", "window attention", "CAM", "rest")


def _module_part(module: torch.nn.Module) -> str | None:
    from clipdehaze.models.generators.cliphaze import (
        CLIPAggregation,
        ConcatAggregation,
        SumAggregation,
        WindowSelfAttention,
    )
    from clipdehaze.models.ssm import SS2D

    if isinstance(module, SS2D):
        return "SS2D"
    if isinstance(module, WindowSelfAttention):
        return "window attention"
    if isinstance(module, (CLIPAggregation, SumAggregation, ConcatAggregation)):
        return "CAM"
    return None


class _PartTimer:
    """Wall time of CLIPHaze's parts inside real steps: module hooks time each part's forward and backward
    (the autograd engine runs a module's backward nodes back to back: they carry higher sequence numbers than
    the sibling path's), and the selective scan, inside SS2D, is timed around its function and its autograd
    backward."""

    def __init__(self, model: torch.nn.Module):
        from clipdehaze.models.ssm import cpu_kernel, ss2d
        from clipdehaze.models.ssm.selective_scan import _ChunkedScan

        self.seconds = dict.fromkeys(("scan", "SS2D", "window attention", "CAM"), 0.0)
        self.handles = []
        for m in model.modules():
            part = _module_part(m)
            if part is not None:
                start = self._start(m)
                stop = self._stop(m, part)
                self.handles += [m.register_forward_pre_hook(lambda mod, args, start=start: start()),
                                 m.register_forward_hook(lambda mod, args, out, stop=stop: stop()),
                                 m.register_full_backward_pre_hook(lambda mod, g, start=start: start()),
                                 m.register_full_backward_hook(lambda mod, gi, go, stop=stop: stop())]
        self.patched = [(cpu_kernel, "scan"), (ss2d, "selective_scan"),
                        (cpu_kernel._Scan, "backward"), (_ChunkedScan, "backward")]
        self.saved = [owner.__dict__[attr] for owner, attr in self.patched]
        for (owner, attr), fn in zip(self.patched, self.saved):
            setattr(owner, attr, self._timed(fn))

    def _start(self, key):
        def start():
            self._t0 = getattr(self, "_t0", {})
            self._t0[id(key)] = time.perf_counter()
        return start

    def _stop(self, key, part):
        def stop():
            self.seconds[part] += time.perf_counter() - self._t0.pop(id(key))
        return stop

    def _timed(self, fn):
        wrapped_fn = fn.__func__ if isinstance(fn, staticmethod) else fn

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return wrapped_fn(*args, **kwargs)
            finally:
                self.seconds["scan"] += time.perf_counter() - t0
        return staticmethod(timed) if isinstance(fn, staticmethod) else timed

    def close(self):
        for h in self.handles:
            h.remove()
        for (owner, attr), fn in zip(self.patched, self.saved):
            setattr(owner, attr, fn)


def profile_cliphaze(name: str = "cliphaze_t", size: int = 256, batch: int = 1, repeats: int = 3) -> dict[str, Any]:
    """Where ``name``'s time goes at ``size``², inference (no grad) and one train step (L1, AdamW): the selective
    scan, the rest of SS2D (projections, convolution, norm, gate), window attention, the CAM, and the rest
    (FFN, norms, convolutions of the U-Net, loss, optimiser), each timed inside the step (:class:`_PartTimer`),
    medians over ``repeats`` steps after a warm-up. CLIP inputs are given precomputed (random), so the frozen
    CLIP's own cost is excluded."""
    from clipdehaze.models import create_generator

    torch.manual_seed(0)
    model = create_generator(name)
    x = torch.rand(batch, 3, size, size)
    inputs = dummy_clip_inputs(model, x)
    target = torch.rand_like(x)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def infer():
        with torch.no_grad():
            model.eval()(x, **inputs)

    def step():
        loss = torch.nn.functional.l1_loss(model.train()(x, **inputs), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    result: dict[str, Any] = {"model": name, "size": size, "batch": batch}
    for kind, fn in (("inference", infer), ("train step", step)):
        fn()
        runs = []
        for _ in range(repeats):
            timer = _PartTimer(model)
            try:
                t0 = time.perf_counter()
                fn()
                total = time.perf_counter() - t0
            finally:
                timer.close()
            t = timer.seconds
            runs.append({"total": total, "scan": t["scan"], "SS2D other": t["SS2D"] - t["scan"],
                         "window attention": t["window attention"], "CAM": t["CAM"],
                         "rest": total - t["SS2D"] - t["window attention"] - t["CAM"]})
        med = {k: sorted(r[k] for r in runs)[len(runs) // 2] for k in runs[0]}
        times = {p: med[p] for p in PROFILE_PARTS}
        result[kind] = {"total_s": med["total"], "seconds": times,
                        "shares": {k: v / sum(times.values()) for k, v in times.items()}}
    return result


def format_profile(prof: dict[str, Any]) -> str:
    head = f"{prof['model']} at {prof['batch']} x {prof['size']}², time share by part (seconds)"
    lines = [head, f"{'':<12} | {'total':>7} | " + " | ".join(f"{p:>16}" for p in PROFILE_PARTS)]
    for kind in ("inference", "train step"):
        r = prof[kind]
        cells = [f"{r['shares'][p] * 100:5.1f}% ({r['seconds'][p]:6.3f})" for p in PROFILE_PARTS]
        lines.append(f"{kind:<12} | {r['total_s']:7.3f} | " + " | ".join(f"{c:>16}" for c in cells))
    lines.append("parts timed inside the step, forward and backward (medians); SS2D other = projections (out_proj "
                 "with the CAM's share fused in), depthwise conv, norm, gate; window attention = window copy, QKV, "
                 "attention, output projection (with the CAM's share); CAM = the rest of the aggregation; rest = FFN, "
                 "norms, U-Net convolutions, loss, optimiser; CLIP inputs precomputed")
    return "\n".join(lines)


# (model, reference, what, goal ratio): what = "inference <size>" (batch 1, no grad) or "train step" (L1 + AdamW on
# a batch of 4 128² crops). CLIPHaze-T against DehazeFormer-S (equal parameters, 1.28 M) for inference and against
# DehazeFormer-T for the train step; CLIPHaze-S and -B keep the same ratios against the DehazeFormer of equal
# parameters: -B (2.52 M; CLIPHaze-S 2.46 M) and -M (4.64 M; CLIPHaze-B 4.68 M).
GOALS = (
    ("cliphaze_t", "dehazeformer_s", "inference 256", 0.8),
    ("cliphaze_t", "dehazeformer_s", "inference 1024", 0.8),
    ("cliphaze_t", "dehazeformer_t", "train step", 1.2),
    ("cliphaze_s", "dehazeformer_b", "inference 256", 0.8),
    ("cliphaze_s", "dehazeformer_b", "inference 1024", 0.8),
    ("cliphaze_s", "dehazeformer_b", "train step", 1.2),
    ("cliphaze_b", "dehazeformer_m", "inference 256", 0.8),
    ("cliphaze_b", "dehazeformer_m", "inference 1024", 0.8),
    ("cliphaze_b", "dehazeformer_m", "train step", 1.2),
)


def goals_for(names: list[str], goals=GOALS) -> tuple:
    """The goals whose two models are both in ``names``."""
    return tuple(g for g in goals if g[0] in names and g[1] in names)


def goal_ratios(repeats: int = 5, goals=GOALS) -> list[dict[str, Any]]:
    """Each goal's model against its reference, side by side in one process: every round times every model once per
    measurement in turn (inference: no grad, batch 1; train step: L1 + AdamW on 4 x 128² crops), so load drift and
    other jobs hit all alike; after a warm-up round, the best (minimum) of ``repeats`` rounds per model and
    measurement, whose ratio is compared with the goal."""
    from clipdehaze.models import create_generator

    names = sorted({n for g in goals for n in g[:2]})
    whats = sorted({g[2] for g in goals})
    torch.manual_seed(0)
    models = {n: create_generator(n) for n in names}
    opts = {n: torch.optim.AdamW(m.parameters(), lr=1e-4) for n, m in models.items()}
    xb = torch.rand(4, 3, 128, 128)
    yb = torch.rand_like(xb)
    images = {w: torch.rand(1, 3, int(w.split()[1]), int(w.split()[1])) for w in whats if w.startswith("inference")}
    inputs = {(n, w): dummy_clip_inputs(m, images.get(w, xb)) for n, m in models.items() for w in whats}

    def run(n: str, what: str) -> None:
        model = models[n]
        if what.startswith("inference"):
            with torch.no_grad():
                model.eval()(images[what], **inputs[(n, what)])
            return
        loss = torch.nn.functional.l1_loss(model.train()(xb, **inputs[(n, what)]), yb)
        opts[n].zero_grad(set_to_none=True)
        loss.backward()
        opts[n].step()

    needed = sorted({(n, g[2]) for g in goals for n in g[:2]}, key=lambda k: (k[1], k[0]))
    best: dict[tuple[str, str], float] = {}
    for r in range(repeats + 1):  # the first round warms up
        for n, what in needed:
            t0 = time.perf_counter()
            run(n, what)
            if r:
                best[(n, what)] = min(best.get((n, what), math.inf), time.perf_counter() - t0)
    rows = []
    for ours, ref, what, goal in goals:
        ratio = best[(ours, what)] / best[(ref, what)]
        rows.append({"model": ours, "reference": ref, "what": what, "model_s": best[(ours, what)],
                     "reference_s": best[(ref, what)], "ratio": ratio, "goal": goal, "met": ratio <= goal})
    return rows


def format_goals(rows: list[dict[str, Any]]) -> str:
    lines = [f"goals, measured side by side (models alternated each round, best of the rounds; {torch.get_num_threads()} "
             "threads):"]
    for r in rows:
        what = r["what"] + ("²" if r["what"].startswith("inference") else " 4 x 128²")
        lines.append(f"  {r['model']} {what}: {r['model_s']:.3f} s vs {r['reference']} {r['reference_s']:.3f} s "
                     f"= {r['ratio']:.2f}x (goal <= {r['goal']}x: {'met' if r['met'] else 'NOT met'})")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------- report
def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def models_markdown(rows: list[dict[str, Any]]) -> str:
    sizes = sorted({int(k.split("_")[2]) for r in rows for k in r if k.startswith("latency_s_")})
    cols = [("model", "model"), ("params", "params (M)"), ("macs_g", "MACs (G)"), ("exec_macs_g", "executed MACs (G)")]
    if any("copy_pct" in r for r in rows):
        cols += [("copy_mb", "layout copies (MB)"), ("activation_mb", "activations (MB)"), ("copy_pct", "copies %")]
    for n in sizes:
        for suffix, tag in (("", ""), ("_tiled", " tiled")):
            if any(f"latency_s_{n}{suffix}" in r for r in rows):
                cols += [(f"latency_s_{n}{suffix}", f"{n}²{tag} s"), (f"images_per_s_{n}{suffix}", f"{n}²{tag} img/s"),
                         (f"peak_mb_{n}{suffix}", f"{n}²{tag} MB")]
        if any(f"seam_max_abs_{n}" in r for r in rows):
            cols += [(f"seam_max_abs_{n}", f"{n}² seam max abs diff"), (f"seam_psnr_db_{n}", f"{n}² seam PSNR dB")]
    if any("tta_x8_cost" in r for r in rows):
        cols += [("tta_flip_cost", "tta=flip × latency"), ("tta_x8_cost", "tta=x8 × latency")]
    cols += [("train_step_s", "train step s"), ("train_step_s_clip_live", "train step s (CLIP live)"),
             ("train_loss", "train loss"), ("ema_cost", "ema × step")]
    if any("train_step_s_compiled" in r for r in rows):
        cols += [("compile_s", "compile s (first step)"), ("train_step_s_compiled", "train step s compiled"),
                 ("compile_speedup", "compile speed-up")]
    lines = ["| " + " | ".join(c[1] for c in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        vals = []
        for key, _ in cols:
            v = r.get(key)
            vals.append(f"{v / 1e6:.3f}" if key == "params" and v is not None else _fmt(v))
        lines.append("| " + " | ".join(vals) + " |")
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    return {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
            "threads": torch.get_num_threads(),
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}


def run_models(names: list[str], out: Path, goal_repeats: int = 3, **kw) -> dict[str, Any]:
    rows = []
    for name in names:
        print(f"bench {name} ...", flush=True)
        rows.append(bench_model(name, **kw))
        print(f"  {rows[-1]}", flush=True)
    result = {"schema_version": SCHEMA_VERSION, "kind": "models", "environment": environment(),
              "settings": {k: v for k, v in kw.items() if k != "clip_cfg"}, "rows": rows}
    goals = goals_for(names)
    if goals and goal_repeats:
        result["goals"] = goal_ratios(repeats=goal_repeats, goals=goals)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    md = (f"# clipdehaze-bench models\n\n{environment()}\n\nMACs: torch.utils.flop_counter (FLOPs/2, conv+matmul) at "
          f"{kw.get('mac_size', 256)}², generator alone: 'MACs' on the published implementation's graph (the "
          f"papers' convention), 'executed MACs' on the fused equivalent this code runs. Latency: median, batch 1, "
          f"no grad; img/s = 1 / latency. Seam: tiled ({kw.get('tile', 256)} px tiles, overlap 1/8) against "
          f"untiled output on a natural photo (scikit-image's astronaut), largest absolute difference and PSNR in "
          f"[0, 1]. Train step: AdamW, batch {kw.get('train_batch', 4)}, "
          f"{kw.get('train_crop', 128)}² crops, L1 plus the generator's training-only terms ('train loss': "
          f"srd = the SAR weather net's CLIP-SRD, frozen-CLIP teacher computed live in both columns); the "
          f"generator's CLIP inputs cached unless noted. 'tta=flip/x8 × latency': self-ensemble latency at "
          f"{kw.get('tile', 256)}² over one forward pass (eval/predict tta=); 'ema × step': the train step with "
          f"GeneratorEMA's update (ema.enabled=true) over the step without it. Layout copies: bytes read + written "
          f"by copy / contiguous / clone / cat / flip operations in one {kw.get('mac_size', 256)}² inference, "
          f"'copies %' of the activation bytes (every tensor the forward allocates; clipdehaze.utils.traffic).\n\n"
          + models_markdown(rows) + "\n"
          + (f"\n{format_goals(result['goals'])}\n" if result.get("goals") else ""))
    (out / "bench.md").write_text(md)
    print(md)
    return result


def default_model_list() -> list[str]:
    from clipdehaze.models import list_generators

    return [n for n in list_generators() if not n.endswith("_test")]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_memory"]:
        name, size, tiled, tile, clip_cfg = argv[1], int(argv[2]), bool(int(argv[3])), int(argv[4]), json.loads(argv[5])
        print(json.dumps(_memory_worker(name, size, tiled, tile, clip_cfg)))
        return 0
    ap = argparse.ArgumentParser(prog="clipdehaze-bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", nargs="?", default="all", choices=["models", "clip", "scan", "all"])
    ap.add_argument("--models", nargs="+", default=None, help="generator names (default: every non-test variant)")
    ap.add_argument("--sizes", nargs="+", type=int, default=[256, 1024])
    ap.add_argument("--mac-size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats per case (models and scan)")
    ap.add_argument("--train-batch", type=int, default=4, help="models: the timed train step's batch size")
    ap.add_argument("--train-crop", type=int, default=128, help="models: the timed train step's crop size")
    ap.add_argument("--no-memory", action="store_true", help="skip the per-case peak-memory subprocesses")
    ap.add_argument("--no-profile", action="store_true",
                    help="scan: skip the cliphaze_t profile and the side-by-side goal ratios")
    ap.add_argument("--max-untiled-gmacs", type=float, default=60.0,
                    help="skip untiled inference above 256 px for models heavier than this at 256²")
    ap.add_argument("--clip-model", default="ViT-B-32", help="open_clip architecture (random weights) for CLIP nets")
    ap.add_argument("--compile", nargs="?", const="default", default=None, metavar="MODE",
                    help="also time the train step with the generator torch.compiled (compile.enabled=true; MODE: "
                         "default | reduce-overhead | max-autotune)")
    ap.add_argument("--goal-repeats", type=int, default=None,
                    help="models: rounds of the side-by-side goal ratios of the listed models (default: --repeats; "
                         "0: skip them)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--out", default="outputs/bench")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.what in ("models", "all"):
        run_models(args.models or default_model_list(), out, sizes=tuple(args.sizes), mac_size=args.mac_size,
                   repeats=args.repeats, train_batch=args.train_batch, train_crop=args.train_crop,
                   memory=not args.no_memory, max_untiled_gmacs=args.max_untiled_gmacs,
                   compile_mode=args.compile,
                   goal_repeats=args.repeats if args.goal_repeats is None else args.goal_repeats,
                   clip_cfg={"model_name": args.clip_model, "pretrained": None, "warn_random": False})
    if args.what in ("clip", "all"):
        from clipdehaze.models.clip import bench as clip_bench

        res = clip_bench.run_clip_benchmark()
        (out / "clip.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
        print(clip_bench.format_table(res))
    if args.what in ("scan", "all"):
        from clipdehaze.models.ssm import bench as scan_bench

        res = scan_bench.run_scan_benchmark(repeats=args.repeats)
        print(scan_bench.format_table(res), flush=True)
        if not args.no_profile:
            res["profile"] = profile_cliphaze(repeats=args.repeats)
            print("\n" + format_profile(res["profile"]), flush=True)
            res["goals"] = goal_ratios(repeats=max(3, args.repeats),
                                       goals=goals_for(["cliphaze_t", "dehazeformer_s", "dehazeformer_t"]))
            print("\n" + format_goals(res["goals"]))
        (out / "scan.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
