"""Selective state-space operators: Mamba's selective scan (Gu & Dao 2023) and the SS2D layer of
VMamba (Liu et al. 2024) / MambaIR (Guo et al. ECCV 2024).

The scan uses mamba-ssm's CUDA kernel when it is installed and the tensors are on a GPU, the compiled CPU
kernel (:mod:`.cpu_kernel`, built on first use with the machine's C++ compiler) for CPU tensors, and the exact
pure-PyTorch chunked scan otherwise; importing this package never requires mamba-ssm or a compiler.
Benchmark: ``python -m clipdehaze.models.ssm.bench`` (or ``clipdehaze-bench scan``).
"""

from clipdehaze.models.ssm.selective_scan import (
    BACKENDS,
    cuda_kernel_unavailable_reason,
    selective_scan,
    selective_scan_torch,
)
from clipdehaze.models.ssm.ss2d import SS2D

__all__ = ["BACKENDS", "SS2D", "cuda_kernel_unavailable_reason", "selective_scan", "selective_scan_torch"]
