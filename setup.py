"""Build dlsa_prod and its native ops extension ``dlsa_prod._C``.

Install with ``pip install --no-build-isolation -e .`` (after torch): without build isolation
the build sees the installed torch, so pip does not fetch a fresh (multi-GB) torch into an
isolated environment, and the extension is built against the torch it will run with.
pyproject.toml makes every pip (>= 21.3) take the standards-based build path: without it, an
older pip (e.g. 23.2 with ``wheel`` installed) falls back to ``setup.py develop``, which
setuptools >= 80 runs as a nested, build-isolated pip that cannot see torch.

Native ops (DLSA_PROD_NATIVE):
  * default: built; the install FAILS (one clear message) when torch cannot be imported in the
    build environment, instead of silently installing without the kernels;
  * DLSA_PROD_NATIVE=0: no extension (pure-torch GEMM path; e.g. a quick wheel).
CUDA kernels are added to the extension when
  * DLSA_PROD_FORCE_CUDA=1 (or DLSA_PROD_CUDA=1): always (a CUDA toolkit must be found), or
  * by default: torch is a CUDA build, a toolkit (CUDA_HOME / nvcc) is found and a GPU is visible.
DLSA_PROD_CUDA=0 disables them.
"""

import glob
import os
import re
import site
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name):
    v = os.environ.get(name, "").strip().lower()
    return None if v in ("", "auto") else v in ("1", "true", "yes", "on")


def _version():
    """The one version string, dlsa_prod.__version__ (read without importing the package)."""
    with open(os.path.join(ROOT, "dlsa_prod", "__init__.py"), encoding="utf-8") as fh:
        return re.search(r'^__version__ = "([^"]+)"', fh.read(), re.M).group(1)


def _extensions():
    if _flag("DLSA_PROD_NATIVE") is False:
        sys.stderr.write("dlsa_prod: DLSA_PROD_NATIVE=0: building without native ops (pure-torch path)\n")
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError as exc:
        raise SystemExit(
            f"dlsa_prod: cannot build the native ops: torch is not importable in the build environment ({exc}).\n"
            "  Install torch first, then install with build isolation off:\n"
            "    pip install --no-build-isolation -e .\n"
            "  (or set DLSA_PROD_NATIVE=0 to install without native ops, on the slower pure-torch path)") from None
    force = _flag("DLSA_PROD_FORCE_CUDA") or _flag("DLSA_PROD_CUDA")
    disabled = _flag("DLSA_PROD_CUDA") is False
    toolkit = CUDA_HOME is not None and torch.version.cuda is not None
    if force and not toolkit:
        raise RuntimeError("DLSA_PROD_FORCE_CUDA=1 but no CUDA toolkit (CUDA_HOME) or a CPU-only torch build")
    with_cuda = not disabled and toolkit and (bool(force) or torch.cuda.is_available())
    # the same source list as CMakeLists.txt: csrc/*.cpp (schemas, settings), cpu/, autograd/ (+ cuda/)
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp"))
                     + glob.glob(os.path.join("csrc", "autograd", "*.cpp")))
    include_dirs = [os.path.join(ROOT, "csrc"), os.path.join(ROOT, "csrc", "include")]
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
    version=_version(),
    description="Production DLSA (Dynamic Label Space Adjustment) for long-tailed recognition",
    packages=find_packages(include=["dlsa_prod", "dlsa_prod.*"]),
    # data files read through importlib.resources (bundle manifest schema, TensorRT profiles)
    package_data={"dlsa_prod.export": ["data/*.json", "data/*.yaml"]},
    python_requires=">=3.10",
    install_requires=["torch", "numpy", "onnx", "onnxruntime", "onnxscript", "click", "h5py", "pyyaml",
                      "pydantic>=2", "tqdm", "safetensors", "matplotlib", "scikit-learn", "jsonschema"],
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    entry_points={"console_scripts": ["dlsa-prod=dlsa_prod.cli:main"]},
)
