"""README's quickstart table is what `dlsa-prod train configs/quickstart.yaml` prints (issue 17): the
baselines to the digit, DLSA within the spread README states (cpu_threads is 1 in the config, so the
machine's core count does not change it)."""

import re
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ("overall", "many", "medium", "few", "balanced")


def readme_quickstart() -> tuple[dict[str, list[float]], float, float]:
    """({row name: the five % columns}, overall spread, per-group spread) from README."""
    text = (ROOT / "README.md").read_text()
    block = text.split("Quickstart output", 1)[1].split("```", 2)[1]
    rows = {}
    for line in block.splitlines():
        m = re.match(r"^(DLSA|plain \w+)( \*)?\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s", line)
        if m:
            rows[m.group(1)] = [float(m.group(i)) for i in range(3, 8)]
    words = r"\s+".join("DLSA's row moves by up to ([\d.]+) points overall and ([\d.]+) points per shot group".split())
    spread = re.search(words, text)
    assert spread, "README must state the quickstart's measured spread"
    return rows, float(spread.group(1)), float(spread.group(2))


def printed_rows(report: str) -> dict[str, list[float]]:
    return {m.group(1): [float(m.group(i)) for i in range(3, 8)] for m in (
        re.match(r"^(DLSA|plain \w+)( \*)?\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s", line)
        for line in report.splitlines()) if m}


def test_quickstart_prints_readme_table(tmp_path):
    from dlsa_prod.config import load_config
    from dlsa_prod.pipeline import comparison_report, run_training

    rows, overall, per_group = readme_quickstart()
    assert set(rows) == {"DLSA", "plain CE", "plain BSM", "plain LA", "plain cRT"}
    cfg = load_config(str(ROOT / "configs" / "quickstart.yaml"))
    printed = printed_rows(comparison_report(run_training(cfg, tmp_path / "run")))
    assert set(printed) == set(rows)
    for name, want in rows.items():
        if name != "DLSA":
            assert printed[name] == want, name  # the baselines do not move with threads
            continue
        for col, got, ref in zip(COLUMNS, printed[name], want):
            tol = overall if col in ("overall", "balanced") else per_group
            assert abs(got - ref) <= tol + 1e-9, (col, got, ref)


def test_cpu_threads_is_fixed_for_the_run_and_restored(tiny_files, tmp_path):
    import torch

    from conftest import tiny_config_dict
    from dlsa_prod.config import config_from_dict
    from dlsa_prod.errors import ConfigError
    from dlsa_prod.pipeline import run_training

    train, test = tiny_files
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        run_training(config_from_dict(tiny_config_dict(train, test, max_depth=1, cpu_threads=1)), tmp_path / "run")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert "CPU threads: 1" in (tmp_path / "run" / "train.log").read_text()
    try:
        config_from_dict(tiny_config_dict(train, test, cpu_threads=0))
        raise AssertionError("cpu_threads 0 accepted")
    except ConfigError as exc:
        assert "cpu_threads" in str(exc)
