"""README's examples run as pasted: the Runtime snippet and the HTTP example (both extracted from
README.md; the only change is the HTTP port, 8000 -> a free one, so parallel test runs do not
collide), in a directory where runs/quickstart is the shared tiny run with its bundle.  Also the
hints and messages of issue 18: --set "did you mean", a --seeds directory given to export, and the
default feature cache outside the current directory."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from dlsa_prod.cli import main

from fakes.deploy_run import tiny_run, trt_bundle

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def readme_block(language: str, containing: str) -> str:
    blocks = [b for b in re.findall(rf"```{language}\n(.*?)```", README, re.S) if containing in b]
    assert len(blocks) == 1, f"expected one {language} block with {containing!r} in README.md, found {len(blocks)}"
    return blocks[0]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A directory laid out like the repository root after the quickstart and its export."""
    run = tiny_run(tmp_path_factory)["run"]
    trt_bundle(tmp_path_factory)  # RUN/bundle
    d = tmp_path_factory.mktemp("readme")
    (d / "runs").mkdir()
    (d / "runs" / "quickstart").symlink_to(run)
    (d / "export").symlink_to(ROOT / "export")
    return d


def _env():
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}" + os.environ.get("PYTHONPATH", ""),
            "OMP_NUM_THREADS": "1"}


def test_runtime_snippet_runs_as_pasted(workdir):
    code = readme_block("python", "from dlsa_prod.runtime import Runtime")
    r = subprocess.run([sys.executable, "-c", code], cwd=workdir, capture_output=True, text=True, env=_env(),
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Prediction [")  # names its return type
    assert "True" in r.stdout  # in_distribution of validation rows


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(shutil.which("curl") is None, reason="the README example uses curl")
def test_http_example_runs_as_pasted(workdir):
    script = readme_block("bash", "export/serving/http_server.py --bundle runs/quickstart/bundle")
    assert "8000" in script
    script = script.replace("8000", str(_free_port()))
    env = _env()
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # `python` is this interpreter
    r = subprocess.run(["bash", "-c", script], cwd=workdir, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    health, answer = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert health["status"] == "ok"
    assert set(answer) >= {"labels", "confidence", "exit_depth", "in_distribution"} and len(answer["labels"]) == 2


def test_readme_documents_the_options_as_the_cli_has_them():
    assert "[--batch 1,8,64,256]" in README and "[--batch 1,64,256]" not in README
    table = README[README.index("## Command line"):README.index("### Your files are safe")]
    export_row = next(line for line in table.splitlines() if line.startswith("| `dlsa-prod export"))
    report_row = next(line for line in table.splitlines() if line.startswith("| `dlsa-prod report"))
    assert "[--features FILE]" in export_row and "[--features FILE]" in report_row
    assert "../shared" not in README and "/work/shared" not in README
    assert README.index("## From images") < README.index("## Deployment")
    assert "runs/.feature_cache" not in README


def test_set_typo_suggests_the_key(tmp_path):
    r = CliRunner().invoke(main, ["train", str(ROOT / "configs" / "quickstart.yaml"), "--out", str(tmp_path / "r"),
                                  "--set", "gmflow.optim.lrr=0.1"])
    assert r.exit_code == 2
    assert r.output.strip() == "error: --set: gmflow.optim.lrr: unknown key; did you mean gmflow.optim.lr?"
    r = CliRunner().invoke(main, ["train", str(ROOT / "configs" / "quickstart.yaml"), "--out", str(tmp_path / "r"),
                                  "--set", "max_dept=2"])
    assert r.output.strip() == "error: --set: max_dept: unknown key; did you mean max_depth?"


def test_a_config_file_typo_also_suggests(tmp_path):
    from dlsa_prod.config import ConfigError, config_from_dict

    data = {"source": "digits"}
    with pytest.raises(ConfigError, match=r"^c\.yaml: filter\.llh_proportio: unknown key; did you mean "
                                          r"filter\.llh_proportion\?$"):
        config_from_dict({"data": data, "filter": {"llh_proportio": 0.3}}, "c.yaml")
    with pytest.raises(ConfigError, match=r"^c\.yaml: zzz: unknown key$"):
        config_from_dict({"data": data, "zzz": 1}, "c.yaml")


@pytest.mark.parametrize("command", [["export"], ["eval"], ["report"]])
def test_a_seeds_directory_names_seed_0(tmp_path, workdir, command):
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    (seeds / "seed_0").symlink_to(workdir / "runs" / "quickstart")
    (seeds / "seed_1").symlink_to(workdir / "runs" / "quickstart")
    r = CliRunner().invoke(main, [*command, str(seeds)])
    assert r.exit_code == 2
    assert r.output.strip() == (f"error: {seeds}: holds one run per seed (train --seeds); give one of them, "
                                f"e.g. {seeds / 'seed_0'}")


def test_feature_cache_defaults_to_the_user_cache(monkeypatch, tmp_path):
    from dlsa_prod.config import BackboneConfig
    from dlsa_prod.user_cache import feature_cache_dir

    monkeypatch.setenv("DLSA_PROD_CACHE", str(tmp_path / "c"))
    assert BackboneConfig().cache_dir is None
    assert feature_cache_dir(None) == tmp_path / "c" / "features"
    assert feature_cache_dir(tmp_path / "mine") == tmp_path / "mine"
    monkeypatch.delenv("DLSA_PROD_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert feature_cache_dir(None) == tmp_path / "xdg" / "dlsa_prod" / "features"


def test_export_prints_no_torch_axis_warning(tmp_path, workdir):
    r = subprocess.run([sys.executable, "-W", "default", "-m", "dlsa_prod", "export", str(workdir / "runs" / "quickstart"),
                        "--out", str(tmp_path / "b"), "--layout", "fused"], capture_output=True, text=True,
                       env=_env(), timeout=300)
    assert r.returncode == 0, r.stderr
    assert "will not be used" not in r.stderr and "UserWarning" not in r.stderr
