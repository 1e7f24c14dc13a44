"""Selective state-space operators: Mamba's selective scan (Gu & Dao 2023) and the SS2D layer of
VMamba (Liu et al. 2024) / MambaIR (Guo et al. ECCV 2024).

The scan runs, for CUDA tensors, mamba-ssm's CUDA kernel when it is installed, else our Triton kernels
(:mod:`.triton_scan`, nothing to compile); for CPU tensors the compiled CPU kernel (:mod:`.cpu_kernel`, built on
first use with the machine's C++ compiler); and the exact pure-PyTorch chunked scan otherwise. Importing this
package needs neither mamba-ssm, Triton nor a compiler. Benchmark: ``clipdehaze-bench scan``.
"""

from clipdehaze.models.ssm.selective_scan import (
    BACKENDS,
    cuda_kernel_unavailable_reason,
    selective_scan,
    selective_scan_torch,
    triton_unavailable_reason,
)
from clipdehaze.models.ssm.ss2d import SS2D

__all__ = ["BACKENDS", "SS2D", "cuda_kernel_unavailable_reason", "selective_scan", "selective_scan_torch",
           "triton_unavailable_reason"]
