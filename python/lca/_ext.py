"""Loads the C++/CUDA extension: a prebuilt `lca._C` (pip install ./python)
or, failing that, a just-in-time build of the repository's sources."""

import os
import pathlib
import sys

_ext = None


def load():
    global _ext
    if _ext is not None:
        return _ext
    try:
        from . import _C  # type: ignore[attr-defined]

        _ext = _C
        return _ext
    except ImportError:
        pass
    import torch.utils.cpp_extension as cpp

    root = pathlib.Path(__file__).resolve().parents[2]
    sources = [root / "python/csrc/bindings.cpp"]
    sources += [root / "src/core" / f for f in ("dtype.cpp", "params.cpp", "tensor.cpp")]
    sources += sorted((root / "src/cuda").glob("*.cu")) + sorted((root / "src/cuda").glob("*.cpp"))
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0a")
    print("lca: building the CUDA extension (first use; a minute or two)...", file=sys.stderr, flush=True)
    _ext = cpp.load(
        name="lca_C",
        sources=[str(s) for s in sources],
        extra_include_paths=[str(root / "include"), str(root / "src")],
        extra_cflags=["-O3", "-std=c++20"],
        extra_cuda_cflags=["-O3", "-std=c++20", "--expt-relaxed-constexpr"],
        verbose=bool(os.environ.get("LCA_BUILD_VERBOSE")),
    )
    return _ext
