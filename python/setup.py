"""pip install --no-build-isolation ./python   (needs PyTorch with CUDA and nvcc)."""
import pathlib

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CUDAExtension

root = pathlib.Path(__file__).resolve().parent.parent
sources = ["csrc/bindings.cpp"]
sources += [str(root / "src/core" / f) for f in ("dtype.cpp", "params.cpp", "tensor.cpp")]
sources += sorted(str(p) for p in (root / "src/cuda").glob("*.cu")) + sorted(str(p) for p in (root / "src/cuda").glob("*.cpp"))

setup(
    name="lca",
    version="0.1.0",
    packages=["lca"],
    ext_modules=[
        CUDAExtension(
            "lca._C",
            sources,
            include_dirs=[str(root / "include"), str(root / "src")],
            extra_compile_args={"cxx": ["-O3", "-std=c++20"],
                                "nvcc": ["-O3", "-std=c++20", "--expt-relaxed-constexpr",
                                         "-gencode=arch=compute_90a,code=sm_90a"]},
        )
    ],
    cmdclass={"build_ext": BuildExtension},
)
