"""Build dlsa_prod and its native ops extension ``dlsa_prod._C``.

CPU kernels are always built.  CUDA kernels are added when
  * DLSA_PROD_FORCE_CUDA=1 (or DLSA_PROD_CUDA=1): always (a CUDA toolkit must be found), or
  * by default: torch is a CUDA build, a toolkit (CUDA_HOME / nvcc) is found and a GPU is visible.
DLSA_PROD_CUDA=0 disables them.  Install with ``pip install --no-build-isolation -e .`` so
pip does not fetch a fresh (multi-GB) torch into an isolated build environment.
"""

import glob
import os
import site
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name):
    v = os.environ.get(name, "").strip().lower()
    return None if v in ("", "auto") else v in ("1", "true", "yes", "on")


def _extensions():
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError:
        sys.stderr.write("dlsa_prod: torch is not installed; building without native ops\n")
        return [], {}
    force = _flag("DLSA_PROD_FORCE_CUDA") or _flag("DLSA_PROD_CUDA")
    disabled = _flag("DLSA_PROD_CUDA") is False
    toolkit = CUDA_HOME is not None and torch.version.cuda is not None
    if force and not toolkit:
        raise RuntimeError("DLSA_PROD_FORCE_CUDA=1 but no CUDA toolkit (CUDA_HOME) or a CPU-only torch build")
    with_cuda = not disabled and toolkit and (bool(force) or torch.cuda.is_available())
    sources = [os.path.join("csrc", "ops.cpp")] + sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp"))
                                                      + glob.glob(os.path.join("csrc", "autograd", "*.cpp")))
    include_dirs = [os.path.join(ROOT, "csrc")]
    cxx = ["-O3", "-fopenmp", "-DDLSA_PROD_PYTHON_MODULE"]
    kwargs = dict(extra_link_args=["-fopenmp"])
    if with_cuda:
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cpp")) + glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        # pip's CUDA wheels ship the cuBLAS/cuSPARSE headers that torch's CUDA headers include
        for sp in site.getsitepackages() + [site.getusersitepackages()]:
            inc = os.path.join(sp, "nvidia", "cu13", "include")
            if os.path.isdir(inc):
                include_dirs.append(inc)
        ext = CUDAExtension("dlsa_prod._C", sources, include_dirs=include_dirs,
                            extra_compile_args={"cxx": cxx + ["-DDLSA_PROD_WITH_CUDA"],
                                                "nvcc": ["-O3", "--expt-relaxed-constexpr",
                                                         "-DDLSA_PROD_WITH_CUDA"]}, **kwargs)
    else:
        ext = CppExtension("dlsa_prod._C", sources, include_dirs=include_dirs,
                           extra_compile_args={"cxx": cxx}, **kwargs)
    sys.stderr.write(f"dlsa_prod: building native ops for CPU{' and CUDA' if with_cuda else ''}\n")
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()

setup(
    name="dlsa_prod",
    version="0.1.0",
    description="Production DLSA (Dynamic Label Space Adjustment) for long-tailed recognition",
    packages=find_packages(include=["dlsa_prod", "dlsa_prod.*"]),
    python_requires=">=3.10",
    install_requires=["torch", "numpy", "onnx", "onnxruntime", "click", "h5py", "pyyaml", "pydantic>=2",
                      "tqdm", "safetensors", "matplotlib", "scikit-learn", "jsonschema"],
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    entry_points={"console_scripts": ["dlsa-prod=dlsa_prod.cli:main"]},
)
