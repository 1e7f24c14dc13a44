"""What a recipe's training costs: seconds per training image, from a measured train-step rate or a stated
assumption, times the images a recipe's schedule feeds through the network.

A measurement is a ``clipdehaze-bench models`` result (``bench.json``: ``train_step_s`` at ``train_batch`` x
``train_crop``², on the device it ran on) or a ``make gpu-check`` one (``gpu-check.json``: ``train_images_per_s``
at batch 16 x 256², bf16 autocast, on the GPU it names). A rate measured at another crop is scaled by the pixel
count (the networks here are convolutions and window attention: work grows with the pixels). For a generator no
measurement covers, the estimate is ``3 x MACs(crop²) / rate`` (forward + backward ~ 3 forward passes) with an
assumed effective training rate, :data:`ASSUMED_TMACS` TMAC/s on one GPU unless the user gives another; the MACs
are counted on the published graph (:func:`clipdehaze.bench.generator_macs`). A loss with a frozen backbone (the
CR loss's ImageNet ResNet-152, ``loss=l1_cr*``) adds, per image, three forward passes of it (output, clear and hazy
image) and a backward through the output's, counted as 5 forward passes at the same assumed rate (a measured rate
covers the generator with L1 only). Validation passes are not counted.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Effective multiply-accumulates per second of mixed-precision training on one GPU, when nothing was measured.
#: An assumption, not a measurement: about 2% of an H100's dense fp16 tensor-core peak, which these small-channel
#: convolution / window-attention networks do not come near; measure with `make gpu-check` for a real figure.
ASSUMED_TMACS = 10.0
#: Training arithmetic per image over the forward pass alone (forward + backward ~ 3 forwards).
TRAIN_OVER_FORWARD = 3.0
#: A frozen loss backbone per training image: forwards of output, clear and hazy image + the output's backward.
LOSS_BACKBONE_OVER_FORWARD = 5.0


@dataclass
class Rate:
    """A measured training rate of one generator."""

    images_per_s: float
    crop: int
    device: str


@dataclass
class Throughput:
    """Seconds per training image per generator: measured rates where given, else the MAC-based assumption."""

    measured: dict[str, Rate] = field(default_factory=dict)
    source: str | None = None
    assumed_tmacs: float = ASSUMED_TMACS
    _macs: dict[tuple, int] = field(default_factory=dict)

    def seconds_per_image(self, generator: str, crop: int, model_kwargs: dict[str, Any] | None = None,
                          loss_backbone: str | None = None) -> tuple[float, str]:
        """(seconds, basis): ``basis`` is ``measured`` or ``assumed`` (``+ backbone`` when a loss backbone's
        assumed cost is added)."""
        rate_macs = self.assumed_tmacs * 1e12
        if (rate := self.measured.get(generator)) is not None:
            seconds, basis = (crop / rate.crop) ** 2 / rate.images_per_s, "measured"
        else:
            seconds, basis = TRAIN_OVER_FORWARD * self.macs(generator, crop, model_kwargs) / rate_macs, "assumed"
        if loss_backbone:
            seconds += LOSS_BACKBONE_OVER_FORWARD * backbone_macs(loss_backbone, crop) / rate_macs
            basis += f" + {loss_backbone}"
        return seconds, basis

    def macs(self, generator: str, crop: int, model_kwargs: dict[str, Any] | None = None) -> int:
        key = (generator, crop, json.dumps(model_kwargs or {}, sort_keys=True, default=str))
        if key not in self._macs:
            from clipdehaze.bench import generator_macs

            self._macs[key] = generator_macs(generator, size=crop, **(model_kwargs or {}))
        return self._macs[key]

    def describe(self, used: set[str]) -> list[str]:
        """The assumptions behind the estimates, one line each (``used``: the bases that occurred)."""
        lines = []
        if any(" + " in u for u in used):
            lines.append(f"+ <backbone>: the loss's frozen backbone (the CR loss's ImageNet network) adds "
                         f"{LOSS_BACKBONE_OVER_FORWARD:g} x its MACs(patch²) per image (forwards of output, clear and "
                         "hazy image, the output's backward) at the assumed rate below")
            used = {u.split(" + ")[0] for u in used} | {"assumed"}
        if "measured" in used:
            devices = sorted({r.device for r in self.measured.values()})
            lines.append(f"measured: training images/s from {self.source} on {', '.join(devices)}, scaled from the "
                         "measured crop to the recipe's by the pixel count; hours on that device")
        if "assumed" in used:
            lines.append(f"assumed (nothing measured for the generator): {TRAIN_OVER_FORWARD:g} x MACs(patch²) per "
                         f"training image (forward + backward) at an effective {self.assumed_tmacs:g} TMAC/s on one "
                         "GPU, an assumption, not a measurement (--assume-tmacs X to change it; --throughput "
                         "gpu-check.json from `make gpu-check`, or bench.json from `clipdehaze-bench models`, to "
                         "use a measured rate)")
        lines.append("steps = (epochs + 1) x floor(training images / batch) (upstream drops the last partial "
                     "batch); validation passes are not counted")
        return lines


def backbone_macs(arch: str, crop: int) -> int:
    """MACs of one forward of a torchvision classifier's feature stages (no pooling / classifier head) at crop²,
    counted on the meta device (shapes only)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from torchvision.models import get_model

    with torch.device("meta"):
        net = get_model(arch, weights=None)
        features = torch.nn.Sequential(*list(net.children())[:-2]).eval()
        x = torch.rand(1, 3, crop, crop)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        features(x)
    return counter.get_total_flops() // 2


def read_throughput(path: Path, assumed_tmacs: float = ASSUMED_TMACS) -> Throughput:
    """A ``bench.json`` (``clipdehaze-bench models``) or ``gpu-check.json`` (``make gpu-check``) as measured rates."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"--throughput {path}: not a readable JSON file ({e})") from e
    measured = {}
    if isinstance(data, dict) and data.get("kind") == "models" and isinstance(data.get("rows"), list):
        device = (data.get("environment") or {}).get("device", "?")
        for row in data["rows"]:
            if row.get("train_step_s"):
                measured[row["model"]] = Rate(row["train_batch"] / row["train_step_s"], int(row["train_crop"]),
                                              f"{device} (clipdehaze-bench, batch {row['train_batch']}, fp32)")
    elif isinstance(data, dict) and isinstance(data.get("models"), list):
        from clipdehaze.gpu_check import model_throughput

        defaults = inspect.signature(model_throughput).parameters
        crop, batch = defaults["crop"].default, defaults["batch"].default
        gpu = (data.get("environment") or {}).get("gpu", "?")
        for row in data["models"]:
            if row.get("train_images_per_s") and " (" not in row["model"]:
                measured[row["model"]] = Rate(float(row["train_images_per_s"]), crop,
                                              f"{gpu} (make gpu-check, batch {batch}, bf16)")
    else:
        raise ValueError(f"--throughput {path}: neither a clipdehaze-bench models result (bench.json) nor a "
                         "make gpu-check result (gpu-check.json)")
    if not measured:
        raise ValueError(f"--throughput {path}: holds no training rate of any generator")
    return Throughput(measured=measured, source=str(path), assumed_tmacs=assumed_tmacs)
