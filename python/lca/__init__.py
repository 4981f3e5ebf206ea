"""lca: Latent-Condensed Attention (arXiv:2604.12452) for PyTorch.

`lca.ops` holds the CUDA kernels as torch ops (prefill over [representatives ;
raw rows], condense for GQA and MLA, full causal attention from the same
kernel); `lca.reference` holds the same functions in plain PyTorch, written
from lca-spec.md, for checks and for baselines. `lca.attention` is the
differentiable LCA attention for training; `lca.patch` / `lca.unpatch` put it
into Hugging Face models; `lca.finetune` and `lca.evaluate` are the quality
study's tools. `lca.mtla` is MTLA (mtla-spec.md) in the same form: `lca.patch_mtla` adds its
hyper-networks to a DeepSeek-V2 model, `lca.load_mtla` loads a folder saved with them.
"""

__all__ = ["ops", "reference", "attention", "mtla", "patch", "unpatch", "is_patched", "patch_mtla", "load_mtla"]


def __getattr__(name):
    # Lazy, so that `import lca` needs neither torch nor transformers until a tool is used.
    if name in ("patch", "unpatch", "is_patched"):
        from . import hf

        return getattr(hf, name)
    if name in ("patch_mtla", "load_mtla"):
        from . import mtla

        return getattr(mtla, name)
    raise AttributeError(f"module 'lca' has no attribute {name!r}")
