"""Packaging: the wheel carries the package data and the declared requirements, installs into a
clean virtual environment, and runs from there; the version is defined once.

The wheel is built with DLSA_PROD_NATIVE=0 (no C++ compile, a few seconds): the extension build
itself is covered by the editable install that every other native test runs on, and by ctest.
The venv sees the site-packages of the interpreter running the tests for the dependencies (torch
etc.), whether that is the system interpreter or a user's venv (``--system-site-packages`` would
show a venv's *base* interpreter instead, without torch); dlsa_prod must come from the wheel, not
from the source tree."""

import os
import re
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import dlsa_prod

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DATA = ["dlsa_prod/export/data/manifest.schema.json", "dlsa_prod/export/data/tensorrt_profiles.yaml"]


def _pip(python, *args, cwd=None, env=None):
    res = subprocess.run([str(python), "-m", "pip", "--disable-pip-version-check", *args], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    src = tmp_path_factory.mktemp("src")  # a copy: the build writes build/ and *.egg-info next to setup.py
    for name in ("setup.py", "pyproject.toml"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "dlsa_prod", src / "dlsa_prod",
                    ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyc"))
    out = tmp_path_factory.mktemp("wheels")
    env = dict(os.environ, DLSA_PROD_NATIVE="0")
    _pip(sys.executable, "wheel", ".", "--no-build-isolation", "--no-deps", "-w", str(out), cwd=src, env=env)
    (whl,) = out.glob("dlsa_prod-*.whl")
    return whl


def test_version_is_defined_once():
    setup_py = (ROOT / "setup.py").read_text()
    assert not re.search(r"version\s*=\s*[\"']\d", setup_py), "setup.py restates the version"
    assert re.fullmatch(r"\d+\.\d+\.\d+", dlsa_prod.__version__)


def test_wheel_carries_package_data_and_requirements(wheel):
    assert wheel.name.startswith(f"dlsa_prod-{dlsa_prod.__version__}-")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        meta = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        entry_points = zf.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    for data in PACKAGE_DATA:
        assert data in names, f"{data} missing from the wheel"
    assert "dlsa_prod/cli.py" in names and not any(n.endswith(".so") for n in names)
    required = {re.split(r"[<>=;\s\[]", line.split(":", 1)[1].strip())[0].lower()
                for line in meta.splitlines() if line.startswith("Requires-Dist:")}
    assert {"torch", "onnx", "onnxruntime", "onnxscript", "jsonschema", "pyyaml"} <= required, required
    assert "dlsa-prod = dlsa_prod.cli:main" in entry_points


def dependency_site_dirs() -> list[str]:
    """The site-packages directories of the interpreter running the tests (a venv's own, and its base's
    when the venv was made with --system-site-packages), and the user site when it is enabled."""
    dirs = list(site.getsitepackages())
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    return [d for d in dict.fromkeys(dirs) if Path(d).is_dir()]


def make_venv_seeing_this_interpreter(venv: Path) -> Path:
    """A venv whose own site-packages comes first, followed by this interpreter's (a .pth file that
    runs site.addsitedir, so their .pth files work as they do here); returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    own = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                         capture_output=True, text=True, check=True).stdout.strip()
    lines = [f"import site; site.addsitedir({d!r})" for d in dependency_site_dirs()]
    (Path(own) / "_dependencies_of_the_test_interpreter.pth").write_text("\n".join(lines) + "\n")
    return python


def test_the_test_venv_sees_this_interpreters_packages(tmp_path):
    """Run from a venv (as most users do), the wheel's venv must see that venv's torch, not the base's."""
    python = make_venv_seeing_this_interpreter(tmp_path / "venv")
    res = subprocess.run([str(python), "-c", "import sys, torch, pip; print(sys.prefix); print(torch.__file__)"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert res.returncode == 0, res.stderr[-2000:]
    prefix, torch_file = res.stdout.strip().splitlines()[-2:]
    assert Path(prefix) == tmp_path / "venv"
    import torch

    assert Path(torch_file).resolve() == Path(torch.__file__).resolve()  # the very torch this run uses


def test_wheel_installs_and_runs_in_a_clean_venv(wheel, tmp_path):
    venv = tmp_path / "venv"
    python = make_venv_seeing_this_interpreter(venv)
    _pip(python, "install", "--no-deps", "--no-index", str(wheel))
    # hide a host editable install of dlsa_prod (its import hook would serve dlsa_prod._C from the tree)
    code = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]; "
            "import dlsa_prod, json; from dlsa_prod.bundle_spec import package_data; "
            "from dlsa_prod.ops import native; "
            "print(dlsa_prod.__file__); print(dlsa_prod.__version__); "
            "print(json.loads(package_data('manifest.schema.json').read_text())['type']); "
            "print(native.gmm_path('cpu'))")
    res = subprocess.run([str(python), "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert res.returncode == 0, res.stderr[-3000:]
    where, version, schema_type, path = res.stdout.strip().splitlines()[-4:]
    assert Path(where).is_relative_to(venv), where  # the wheel's copy, not the source tree
    assert version == dlsa_prod.__version__ and schema_type == "object"
    assert path.startswith("pure-torch GEMM (native ops not built")  # built with DLSA_PROD_NATIVE=0
    cli = subprocess.run([str(venv / "bin" / "dlsa-prod"), "--help"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert cli.returncode == 0 and "train" in cli.stdout, cli.stderr[-2000:]
