"""Every TensorRT name dlsa_prod and its fake use exists in the real Python bindings of TensorRT 10.x
and 11.x, and the fake offers no name the real bindings lack.

The ``tensorrt-cu12-bindings`` (10.x) and ``tensorrt-cu13-bindings`` (11.x) wheels (~1.3 MB each) cannot
be imported without the GPU libraries, but their ``tensorrt.so`` holds every class, method and enum
name pybind11 registers, and their ``__init__.py`` the Python-level helpers (``nptype``).  Names are
matched as string suffixes: the linker merges a short string into the tail of a longer one (``INPUT``
lives inside ``CONDITIONAL_INPUT``).  Without the package registry the test skips, saying why.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from dlsa_prod.backends.device_memory import HostMemory
from dlsa_prod.runtime import Runtime

from fakes.deploy_run import fake_tensorrt, tiny_run

ROOT = Path(__file__).resolve().parents[1]
WHEELS = {"10.x": "tensorrt-cu12-bindings==10.16.1.11", "11.x": "tensorrt-cu13-bindings==11.4.0.106"}
PACKAGE_FILES = ["dlsa_prod/backends/tensorrt_build.py", "dlsa_prod/backends/tensorrt_runner.py"]


@pytest.fixture(scope="module")
def real_names(tmp_path_factory) -> dict[str, tuple[set, set]]:
    """release -> (strings of tensorrt.so, names defined in tensorrt_bindings/__init__.py)."""
    d = tmp_path_factory.mktemp("trt_wheels")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.11",
           "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64", "-d", str(d),
           *WHEELS.values()]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                             env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    except subprocess.TimeoutExpired:
        pytest.skip("pip could not reach the package registry in 300 s to fetch the TensorRT bindings wheels")
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"TensorRT bindings wheels not downloadable here (no package registry?): {last}")
    out = {}
    for release, req in WHEELS.items():
        name, version = req.split("==")
        wheel = next(d.glob(f"{name.replace('-', '_')}-{version}-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            so = z.read("tensorrt_bindings/tensorrt.so")
            init = z.read("tensorrt_bindings/__init__.py").decode()
        strings = {m.group().decode() for m in re.finditer(rb"[A-Za-z_][A-Za-z0-9_]+", so)}
        defined = {n.name for n in ast.parse(init).body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        defined |= {t.id for n in ast.parse(init).body if isinstance(n, ast.Assign) for t in n.targets
                    if isinstance(t, ast.Name)}
        out[release] = (strings, defined)
    return out


def _present(name: str, strings: set, defined: set) -> bool:
    return name in defined or name in strings or any(s.endswith(name) for s in strings)


def package_attribute_chains() -> set[str]:
    """Every ``trt.A`` and ``trt.A.B`` in the package's TensorRT modules (B: an enum member or nested name)."""
    names = set()
    for f in PACKAGE_FILES:
        for node in ast.walk(ast.parse((ROOT / f).read_text())):
            if isinstance(node, ast.Attribute):
                chain, cur = [], node
                while isinstance(cur, ast.Attribute):
                    chain.append(cur.attr)
                    cur = cur.value
                if isinstance(cur, ast.Name) and cur.id == "trt":
                    names.update(reversed(chain))
    return names - {"__version__"}


def names_used_at_run_time(tmp_path_factory) -> set[str]:
    """Methods and properties of TensorRT objects the package touches in a full build and run."""
    from dlsa_prod.export.bundle import TrtOptions, export_bundle

    run = tiny_run(tmp_path_factory)
    with fake_tensorrt() as trt:
        trt.USED.clear()
        out = tmp_path_factory.mktemp("names") / "bundle"
        export_bundle(run["run"], out, trt=TrtOptions(batches=[1, 16, 32], memory=HostMemory()))
        for layout in ("fused", "staged"):
            Runtime(out, layout=layout, backend="tensorrt", memory=HostMemory()).predict(
                np.concatenate([run["test"].features] * 2)[:40])
        return set(trt.USED)


def fake_names() -> set[str]:
    """Public module names, class attributes and enum members the fake offers."""
    import enum
    import types

    with fake_tensorrt() as trt:
        out = set()
        for name, obj in vars(trt).items():
            if name.startswith("_") or name in trt.FAKE_ONLY or isinstance(obj, types.ModuleType) \
                    or name == "annotations":
                continue
            out.add(name)
            if isinstance(obj, type):
                if issubclass(obj, enum.Enum):
                    out |= set(obj.__members__)
                else:
                    out |= {a for a in vars(obj) if not a.startswith("_")}
                    out |= {a for a, v in vars(obj).items() if isinstance(v, int) and a.isupper()}
        return out


def test_every_name_the_package_uses_exists_in_both_releases(real_names, tmp_path_factory):
    used = package_attribute_chains() | names_used_at_run_time(tmp_path_factory)
    assert {"set_input_shape", "execute_async_v3", "set_memory_pool_limit", "get_tensor_profile_shape", "TF32",
            "get_tensor_dtype", "set_tensor_address", "add_optimization_profile", "nptype"} <= used
    for release, (strings, defined) in real_names.items():
        missing = sorted(n for n in used if not _present(n, strings, defined))
        assert not missing, f"TensorRT {release} bindings lack {missing}"


def test_the_fake_offers_no_name_the_real_bindings_lack(real_names):
    offered = fake_names()
    assert {"IExecutionContext", "execute_async_v3", "FP16", "WORKSPACE", "get_tensor_dtype"} <= offered
    for release, (strings, defined) in real_names.items():
        extra = sorted(n for n in offered if not _present(n, strings, defined))
        assert not extra, f"the fake offers {extra}, which the TensorRT {release} bindings do not have"
