"""lca: Latent-Condensed Attention (arXiv:2604.12452) for PyTorch.

`lca.ops` holds the CUDA kernels as torch ops (prefill over [representatives ;
raw rows], condense for GQA and MLA, full causal attention from the same
kernel); `lca.reference` holds the same functions in plain PyTorch, written
from lca-spec.md, for checks and for baselines.
"""

__all__ = ["ops", "reference"]
