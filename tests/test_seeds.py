import json

import pytest

from dlsa_prod.config import config_from_dict
from dlsa_prod.errors import ConfigError
from dlsa_prod.seeds import mean_std, parse_seeds, run_seeds

from conftest import tiny_config_dict


def test_parse_seeds_and_mean_std():
    assert parse_seeds("0, 1,2") == [0, 1, 2]
    for bad in ("a,b", "", "1,1"):
        with pytest.raises(ConfigError, match="--seeds"):
            parse_seeds(bad)
    s = mean_std([0.5, 0.7, None])
    assert s["mean"] == pytest.approx(0.6) and s["std"] == pytest.approx(0.1414213, rel=1e-5) and s["n"] == 2
    assert mean_std([0.3])["std"] == 0.0 and mean_std([None])["mean"] is None


def test_run_seeds_writes_runs_and_summary(tiny_files, tmp_path):
    train, test = tiny_files
    tree = tiny_config_dict(train, test, max_depth=1, baselines=["BSM", "LA"])
    tree["gmflow"]["optim"]["epoch"] = 2
    summary = run_seeds(config_from_dict(tree), tmp_path / "seeds", [0, 1])
    out = tmp_path / "seeds"
    assert (out / "seed_0" / "meta.json").is_file() and (out / "seed_1" / "meta.json").is_file()
    metas = [json.loads((out / f"seed_{s}" / "meta.json").read_text()) for s in (0, 1)]
    assert [m["seed"] for m in metas] == [0, 1] and all("best_on_val" in m for m in metas)
    saved = json.loads((out / "seeds_summary.json").read_text())
    assert saved["seeds"] == [0, 1] and set(saved["test"]) == {"dlsa", "plain_BSM", "plain_LA"}
    acc = saved["test"]["dlsa"]["accuracy"]
    per_seed = [json.loads((out / f"seed_{s}" / "metrics.json").read_text())["test"]["dlsa"]["accuracy"] for s in (0, 1)]
    assert acc["values"] == per_seed and acc["mean"] == pytest.approx(sum(per_seed) / 2)
    assert "±" in (out / "seeds_summary.md").read_text() and summary["best_on_val"] == saved["best_on_val"]


def test_seeds_cli_flag(tiny_files, tmp_path):
    from click.testing import CliRunner

    import yaml

    from dlsa_prod.cli import main

    train, test = tiny_files
    tree = tiny_config_dict(train, test, max_depth=1, baselines=["BSM"])
    tree["gmflow"]["optim"]["epoch"] = 2
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump(tree))
    res = CliRunner().invoke(main, ["train", str(cfg_file), "--out", str(tmp_path / "s"), "--seeds", "3,4"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "s" / "seeds_summary.json").read_text())["seeds"] == [3, 4]
    bad = CliRunner().invoke(main, ["train", str(cfg_file), "--out", str(tmp_path / "t"), "--seeds", "x"])
    assert bad.exit_code == 2 and "--seeds" in bad.output


def test_config_seeds_must_be_distinct(tiny_files):
    train, test = tiny_files
    with pytest.raises(ConfigError, match="seeds must be distinct"):
        config_from_dict(tiny_config_dict(train, test, seeds=[1, 1]))


def test_seed_and_seeds_together_is_one_line_error(tiny_files, tmp_path):
    from click.testing import CliRunner

    import yaml

    from dlsa_prod.cli import main

    train, test = tiny_files
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump(tiny_config_dict(train, test, seeds=[0, 1])))
    res = CliRunner().invoke(main, ["train", str(cfg_file), "--out", str(tmp_path / "s"), "--seed", "3"])
    assert res.exit_code == 2 and "--seed 3 with the config's seeds [0, 1]" in res.output and res.output.count("\n") == 1
    assert not (tmp_path / "s").exists()
