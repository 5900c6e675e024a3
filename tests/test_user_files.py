"""Users' files are safe: --force replaces only directories this package wrote, never the cwd or a
directory holding the inputs; leftovers of killed runs are cleaned; weights are verified on load;
relative data paths follow the config file."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from dlsa_prod.cli import main
from dlsa_prod.errors import RunDirError
from dlsa_prod.run_dir import (MARKER, StagingDir, check_replaceable, load_run, load_state, read_marker,
                               remove_stale, write_marker)

from conftest import tiny_config_dict


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A trained tiny run whose config uses paths relative to the config file's directory."""
    from conftest import blobs

    from dlsa_prod.data import write_features

    d = tmp_path_factory.mktemp("userfiles")
    (d / "data").mkdir()
    write_features(d / "data" / "train.npz", blobs([60, 40, 25, 12], dim=6, seed=1))
    write_features(d / "data" / "test.npz", blobs([10] * 4, dim=6, seed=1))
    tree = tiny_config_dict("data/train.npz", "data/test.npz", max_depth=1, baselines=["CE"])
    tree["gmflow"]["optim"]["epoch"] = 2
    tree["cacls"]["optim"]["epoch"] = tree["regcls"]["optim"]["epoch"] = 2
    (d / "conf").mkdir()
    cfg = d / "conf" / "c.yaml"
    cfg.write_text(yaml.safe_dump(tree).replace("data/train.npz", "../data/train.npz")
                   .replace("data/test.npz", "../data/test.npz"))
    old = os.getcwd()
    os.chdir(d / "data")  # relative paths in the config are relative to its file, not to the cwd
    try:
        res = CliRunner().invoke(main, ["train", str(cfg), "--out", str(d / "run")])
    finally:
        os.chdir(old)
    assert res.exit_code == 0, res.output
    return d


# ----------------------------------------------------------------------------- --force
def test_check_replaceable_rules(tmp_path, monkeypatch):
    target = tmp_path / "out"
    assert check_replaceable(target, "run", force=False) == target  # new directory: fine
    (target / "sub").mkdir(parents=True)
    (target / "sub" / "thesis.tex").write_text("years of work")
    with pytest.raises(RunDirError, match="output directory exists \\(use --force"):
        check_replaceable(target, "run", force=False)
    with pytest.raises(RunDirError, match=f"not written by dlsa-prod \\(no {MARKER} marker\\)"):
        check_replaceable(target, "run", force=True)
    write_marker(target, "bundle")
    with pytest.raises(RunDirError, match="is a dlsa-prod bundle directory, not a run"):
        check_replaceable(target, "run", force=True)
    write_marker(target, "run")
    with pytest.raises(RunDirError, match="out/sub: was not written by dlsa-prod"):  # the marker does not list it
        check_replaceable(target, "run", force=True)
    write_marker(target, "run", ["sub", "sub/thesis.tex"])
    assert check_replaceable(target, "run", force=True) == target
    # never a directory holding an input, the cwd or a parent of it, or a symbolic link
    with pytest.raises(RunDirError, match="holds .*train.npz, an input of this command"):
        check_replaceable(target, "run", [target / "sub" / "train.npz"], force=True)
    monkeypatch.chdir(target / "sub")
    with pytest.raises(RunDirError, match="is the current directory or holds it"):
        check_replaceable(target, "run", force=True)
    with pytest.raises(RunDirError, match="is the current directory"):
        check_replaceable(Path("."), "run", force=True)
    (tmp_path / "link").symlink_to(target)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RunDirError, match="symbolic link"):
        check_replaceable(tmp_path / "link", "run", force=True)
    assert (target / "sub" / "thesis.tex").read_text() == "years of work"


def test_train_force_refuses_before_any_work(tiny_files, tmp_path, monkeypatch):
    train, test = tiny_files
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config_dict(train, test)))
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "sub" / "thesis.tex").write_text("keep me")
    runner = CliRunner()
    res = runner.invoke(main, ["train", str(cfg), "--out", str(tmp_path / "d"), "--force"])
    assert res.exit_code == 2 and "not written by dlsa-prod" in res.output
    assert res.output.count("\n") == 1 and (tmp_path / "d" / "sub" / "thesis.tex").read_text() == "keep me"
    res = runner.invoke(main, ["train", str(cfg), "--out", str(tmp_path), "--force"])  # holds the config and data
    assert res.exit_code == 2 and "an input of this command" in res.output
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(main, ["train", str(cfg), "--out", ".", "--force"])
    assert res.exit_code == 2 and "is the current directory" in res.output and "data:" not in res.output
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_force_refuses_a_marked_directory_holding_a_users_file(tmp_path):
    target = tmp_path / "out"
    with StagingDir(target, force=False) as staging:
        (staging.path / "model.bin").write_text("tool")
        (staging.path / "plots").mkdir()
        (staging.path / "plots" / "a.png").write_text("tool")
        staging.commit()
    assert read_marker(target)["files"] == ["model.bin", "plots", "plots/a.png"]
    assert check_replaceable(target, "run", force=True) == target
    inner = target / "bundle"  # written later by another command (export's default RUN/bundle): its own marker
    with StagingDir(inner, force=False, kind="bundle") as staging:
        (staging.path / "fused.onnx").write_text("tool")
        staging.commit()
    assert check_replaceable(target, "run", force=True) == target
    for user_file, named in ((target / "NOTES.md", target / "NOTES.md"), (target / "plots" / "mine.png", None),
                             (inner / "mine.txt", None), (target / "mydata" / "x", target / "mydata")):
        user_file.parent.mkdir(exist_ok=True)
        user_file.write_text("mine")
        with pytest.raises(RunDirError, match=f"^{named or user_file}: was not written by dlsa-prod; --force replaces"):
            check_replaceable(target, "run", force=True)
        user_file.unlink()
    with pytest.raises(RunDirError, match="mydata: was not"):  # an empty directory the tool did not make counts too
        check_replaceable(target, "run", force=True)
    (target / "mydata").rmdir()
    leftover = target / f".bundle.exporting-{_dead_pid()}"  # an export into RUN/bundle killed: ours, not the user's
    leftover.mkdir()
    write_marker(leftover, "bundle")
    (leftover / "fused.onnx").write_text("tool")
    assert check_replaceable(target, "run", force=True) == target
    marker = json.loads((target / MARKER).read_text())
    del marker["files"]  # a run written by an older dlsa-prod: what is inside is unknown
    (target / MARKER).write_text(json.dumps(marker))
    with pytest.raises(RunDirError, match="marker lists no files \\(written by an older dlsa-prod\\)"):
        check_replaceable(target, "run", force=True)


def test_train_force_keeps_the_users_files(tiny_run, tmp_path):
    import shutil

    run = tmp_path / "r1"
    shutil.copytree(tiny_run / "run", run)
    (run / "NOTES.md").write_text("my notes")
    (run / "mydata").mkdir()
    (run / "mydata" / "x.csv").write_text("1,2")
    res = CliRunner().invoke(main, ["train", str(tiny_run / "conf" / "c.yaml"), "--out", str(run), "--force"])
    assert res.exit_code == 2 and res.output.count("\n") == 1, res.output
    assert f"{run / 'NOTES.md'}: was not written by dlsa-prod" in res.output
    assert (run / "NOTES.md").read_text() == "my notes" and (run / "mydata" / "x.csv").read_text() == "1,2"


def test_train_force_replaces_its_own_run(tiny_run, tmp_path):
    run = tiny_run / "run"
    assert read_marker(run)["kind"] == "run"
    res = CliRunner().invoke(main, ["train", str(tiny_run / "conf" / "c.yaml"), "--out", str(run), "--force",
                                    "--set", "seed=3"])
    assert res.exit_code == 0, res.output
    assert yaml.safe_load((run / "config.yaml").read_text())["seed"] == 3
    assert not [p for p in tiny_run.iterdir() if p.name.startswith(".run.")]


# ----------------------------------------------------------------------------- leftovers of killed runs
def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_remove_stale_only_touches_marked_dead_leftovers(tmp_path):
    dead = _dead_pid()
    stale = tmp_path / f".run.partial-{dead}"
    stale.mkdir()
    write_marker(stale, "run")
    unmarked = tmp_path / f".mine.partial-{dead}"  # same pattern, but not ours: kept
    unmarked.mkdir()
    live = tmp_path / f".run.exporting-{os.getppid()}"  # process still alive: kept
    live.mkdir()
    write_marker(live, "bundle")
    assert remove_stale(tmp_path) == [stale]
    assert not stale.exists() and unmarked.is_dir() and live.is_dir()


def test_staging_dir_of_a_killed_process_is_removed_by_the_next_run(tmp_path):
    script = textwrap.dedent(f"""
        import sys, time
        from dlsa_prod.run_dir import StagingDir
        s = StagingDir({str(tmp_path / 'run')!r}, force=False)
        print(s.path, flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    left = Path(proc.stdout.readline().strip())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    assert left.is_dir() and left.name == f".run.partial-{proc.pid}"
    staging = StagingDir(tmp_path / "run", force=False)
    assert not left.exists()
    staging.commit()
    assert read_marker(tmp_path / "run")["kind"] == "run"


def _commit_killed_between_renames(target: Path) -> int:
    """Run StagingDir.commit() in a child whose second rename exits the process (as a kill would); its PID."""
    script = textwrap.dedent(f"""
        import os
        from pathlib import Path
        from dlsa_prod.run_dir import StagingDir
        real = os.replace
        def replace(src, dst):
            if Path(src).name.startswith(".run.partial-"):  # the second rename: the new directory into place
                os._exit(9)
            real(src, dst)
        with StagingDir(Path({str(target)!r}), force=True) as s:
            (s.path / "new.txt").write_text("new")
            os.replace = replace
            s.commit()
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate()
    assert proc.returncode == 9, err
    return proc.pid


def test_a_kill_between_the_final_renames_restores_the_previous_directory(tmp_path):
    target = tmp_path / "run"
    with StagingDir(target, force=False) as staging:
        (staging.path / "old.txt").write_text("previous run")
        staging.commit()
    pid = _commit_killed_between_renames(target)
    assert not target.exists() and (tmp_path / f".run.old-{pid}").is_dir()
    assert (tmp_path / f".run.partial-{pid}").is_dir()
    StagingDir(tmp_path / "other", force=False).abort()  # the next command writing there restores it
    assert (target / "old.txt").read_text() == "previous run"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    # reading the run (eval, export, report) restores it too
    pid = _commit_killed_between_renames(target)
    assert not target.exists()
    with pytest.raises(RunDirError, match="config.yaml: missing"):  # restored, then read
        load_run(target)
    assert (target / "old.txt").read_text() == "previous run"


# ----------------------------------------------------------------------------- weights verified on load
def test_weights_carry_sha256_and_are_verified(tiny_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run / "run", run)
    meta = json.loads((run / "meta.json").read_text())
    assert set(meta["sha256"]) == {"model.safetensors", "baseline_CE.safetensors"}
    data = bytearray((run / "model.safetensors").read_bytes())
    data[-5] ^= 0xFF
    (run / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(RunDirError, match=r"model.safetensors: sha256 differs from the one recorded in meta.json"):
        load_run(run)
    res = CliRunner().invoke(main, ["eval", str(run)])
    assert res.exit_code == 2 and res.output.startswith("error: ") and res.output.count("\n") == 1
    # a truncated file (sha256 not recorded, as in older runs) is named as unreadable, not a traceback
    (run / "model.safetensors").write_bytes(bytes(data[:100]))
    del meta["sha256"]
    (run / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(RunDirError, match=r"model.safetensors: not a readable safetensors file"):
        load_run(run)


def test_load_state_mismatch_errors(tmp_path):
    from dlsa_prod.run_dir import save_module

    path = tmp_path / "w.safetensors"
    save_module(torch.nn.Linear(4, 3), path)
    load_state(torch.nn.Linear(4, 3), path)  # fits
    with pytest.raises(RunDirError, match=r"w.safetensors: does not match the run's config \(size mismatch"):
        load_state(torch.nn.Linear(5, 3), path)
    with pytest.raises(RunDirError, match=r"w.safetensors: does not match the run's config \(Missing key"):
        load_state(torch.nn.Sequential(torch.nn.Linear(4, 3)), path)
    with pytest.raises(RunDirError, match=r"w.safetensors: does not match the run's config \(Unexpected key"):
        load_state(torch.nn.Linear(4, 3, bias=False), path)
    with pytest.raises(RunDirError, match="nope.safetensors: missing"):
        load_state(torch.nn.Linear(4, 3), tmp_path / "nope.safetensors")


# ----------------------------------------------------------------------------- relative paths, eval default
def test_relative_paths_are_stored_absolute_and_commands_work_elsewhere(tiny_run, tmp_path, monkeypatch):
    saved = yaml.safe_load((tiny_run / "run" / "config.yaml").read_text())
    assert saved["data"]["train"] == str(tiny_run / "data" / "train.npz")
    monkeypatch.chdir(tmp_path)  # elsewhere: eval (own test split) and report still find the data
    runner = CliRunner()
    res = runner.invoke(main, ["eval", str(tiny_run / "run"), "--json", "m.json"])
    assert res.exit_code == 0, res.output
    assert "test split" in res.output
    test = json.loads((tiny_run / "run" / "metrics.json").read_text())["test"]
    assert json.loads((tmp_path / "m.json").read_text())["dlsa"]["accuracy"] == pytest.approx(test["dlsa"]["accuracy"])
    res = runner.invoke(main, ["report", str(tiny_run / "run"), "--out", "rep"])
    assert res.exit_code == 0, res.output
    assert read_marker(tmp_path / "rep")["kind"] == "report" and (tmp_path / "rep" / "cluster_purity.png").is_file()
    res = runner.invoke(main, ["report", str(tiny_run / "run"), "--out", "rep", "--bins", "2"])  # exists: --force
    assert res.exit_code == 2 and "output directory exists (use --force" in res.output and res.output.count("\n") == 1
    res = runner.invoke(main, ["report", str(tiny_run / "run"), "--out", "rep", "--bins", "2", "--force"])
    assert res.exit_code == 0, res.output
    (tmp_path / "rep" / "my_notes.md").write_text("mine")  # a user's file inside: even --force refuses
    res = runner.invoke(main, ["report", str(tiny_run / "run"), "--out", "rep", "--force"])
    assert res.exit_code == 2 and "my_notes.md: was not written by dlsa-prod" in res.output
    assert (tmp_path / "rep" / "my_notes.md").read_text() == "mine"
    res = runner.invoke(main, ["report", str(tiny_run / "run"), "--out", str(tiny_run / "run")])
    assert res.exit_code == 2 and "run: is " in res.output and "an input of this command" in res.output
    (tmp_path / "other").mkdir()
    write_marker(tmp_path / "other", "run")
    res = runner.invoke(main, ["report", str(tiny_run / "run"), "--out", "other", "--force"])
    assert res.exit_code == 2 and "is a dlsa-prod run directory, not a report" in res.output


def test_report_failing_midway_leaves_no_half_written_directory(tiny_run, tmp_path, monkeypatch):
    from dlsa_prod import report

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(report, "plot_confusion_by_frequency", broken)  # after three plots are written
    with pytest.raises(RuntimeError, match="disk full"):
        report.write_report(tiny_run / "run", tmp_path / "rep")
    assert list(tmp_path.iterdir()) == []


def test_failed_commands_create_no_directories(tiny_run, tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["report", str(tmp_path / "no_run")])
    assert res.exit_code == 2 and "no_run: run directory not found" in res.output and res.output.count("\n") == 1
    res = runner.invoke(main, ["report", str(tiny_run / "run"), "--out", str(tmp_path / "a" / "b" / "rep"),
                               "--features", str(tmp_path / "missing.npz")])
    assert res.exit_code == 2 and "missing.npz" in res.output
    assert list(tmp_path.iterdir()) == []  # neither the run's path nor the output's parents were created
    staging = StagingDir(tmp_path / "x" / "y" / "out", force=False)
    (tmp_path / "x" / "keep").mkdir()  # appeared meanwhile: kept, with its parent
    staging.abort()
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["keep"]


def test_staging_dir_as_a_context_aborts_on_any_exception(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with StagingDir(tmp_path / "new" / "out", force=False) as staging:
            (staging.path / "half.txt").write_text("half")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    with StagingDir(tmp_path / "out", force=False) as staging:
        (staging.path / "whole.txt").write_text("whole")
        staging.commit()
    assert (tmp_path / "out" / "whole.txt").read_text() == "whole" and read_marker(tmp_path / "out")["kind"] == "run"


def test_commit_replaces_its_own_directory_despite_an_old_leftover_of_this_pid(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    write_marker(target, "run", ["previous.txt"])
    (target / "previous.txt").write_text("previous")
    leftover = tmp_path / f".out.old-{os.getpid()}"  # an earlier process with this PID was killed mid-commit
    leftover.mkdir()
    write_marker(leftover, "run")
    (leftover / "x.txt").write_text("x")
    with StagingDir(target, force=True) as staging:
        (staging.path / "new.txt").write_text("new")
        staging.commit()
    assert sorted(p.name for p in target.iterdir()) == [MARKER, "new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_an_output_that_cannot_be_created_is_one_line(tiny_run, tmp_path):
    (tmp_path / "afile").write_text("mine")
    res = CliRunner().invoke(main, ["report", str(tiny_run / "run"), "--out", str(tmp_path / "afile" / "rep")])
    assert res.exit_code == 2 and res.output.count("\n") == 1
    assert "afile/rep: cannot create the output directory here" in res.output
    assert (tmp_path / "afile").read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


# ----------------------------------------------------------------------------- run settings verified on load
def test_an_edited_run_setting_is_refused_but_paths_and_device_may_change(tiny_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run / "run", run)
    original = (run / "config.yaml").read_text()
    tree = yaml.safe_load(original)
    tree["device"] = "auto"  # another machine, data moved: allowed
    tree["data"]["test"] = str(tmp_path / "moved_test.npz")
    (run / "config.yaml").write_text(yaml.safe_dump(tree))
    assert load_run(run).cfg.device == "auto"
    for section, key, value in (("gmflow", "model", {"log_scale_clamp": 5.0}), ("filter", "min_purity", 0.5)):
        tree = yaml.safe_load(original)
        tree[section][key] = {**tree[section][key], **value} if isinstance(value, dict) else value
        (run / "config.yaml").write_text(yaml.safe_dump(tree))
        with pytest.raises(RunDirError, match=r"config.yaml: settings differ from the ones this run was trained "
                                              r"with \(settings_sha256 in meta.json\)"):
            load_run(run)
        for command in (["eval", str(run)], ["export", str(run), "--out", str(tmp_path / "b")]):
            res = CliRunner().invoke(main, command)
            assert res.exit_code == 2 and res.output.count("\n") == 1 and "settings differ" in res.output
    assert not (tmp_path / "b").exists()


def test_a_run_trained_before_a_setting_existed_still_loads(tiny_run, tmp_path):
    """A setting added to the package after a run was trained is absent from its config.yaml and from
    the digest recorded then: the run loads with the setting's default.  Deleting a setting from a run
    that was trained with it is still refused, and so is editing one of an older run."""
    import json
    import shutil

    from dlsa_prod.config import config_from_dict, settings_sha256

    run = tmp_path / "run"
    shutil.copytree(tiny_run / "run", run)
    original = yaml.safe_load((run / "config.yaml").read_text())
    meta = json.loads((run / "meta.json").read_text())

    tree = yaml.safe_load((run / "config.yaml").read_text())
    del tree["cascade"]["calibrate_by"]  # as written before the setting existed
    (run / "config.yaml").write_text(yaml.safe_dump(tree))
    with pytest.raises(RunDirError, match="settings differ"):  # this run's digest covers the deleted setting
        load_run(run)

    old = {**meta, "settings_sha256": settings_sha256(config_from_dict(tree), written=tree)}
    assert old["settings_sha256"] != meta["settings_sha256"]
    (run / "meta.json").write_text(json.dumps(old))
    assert load_run(run).cfg.cascade.calibrate_by == "accuracy"

    tree["filter"]["min_purity"] = original["filter"]["min_purity"] / 2  # an older run's setting edited
    (run / "config.yaml").write_text(yaml.safe_dump(tree))
    with pytest.raises(RunDirError, match="settings differ"):
        load_run(run)


def test_duplicate_keys_in_a_runs_config_are_refused(tiny_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run / "run", run)
    (run / "config.yaml").write_text((run / "config.yaml").read_text() + "seed: 5\n")
    with pytest.raises(RunDirError, match=r"config.yaml: unreadable \(.*duplicate key 'seed' \(first given on line"):
        load_run(run)


# ----------------------------------------------------------------------------- a full disk
@pytest.fixture
def small_disk(tmp_path):
    """A 512 KiB tmpfs (root only; skipped where mounting is not permitted), unmounted afterwards."""
    d = tmp_path / "disk"
    d.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(d)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root (the injected-error test covers the rest)")
    yield d
    subprocess.run(["umount", "-l", str(d)], check=False)


def _fill(disk: Path, free_pages: int) -> None:
    """Leave about FREE_PAGES pages of 4 KiB free on DISK."""
    filler = disk / "filler"
    filler.unlink(missing_ok=True)
    st = os.statvfs(disk)
    with open(filler, "wb") as fh:
        fh.write(b"\0" * max(0, st.f_bavail * st.f_frsize - free_pages * 4096))


def _disk_full_line(res) -> None:
    assert res.exit_code == 2, res.output
    last = res.output.strip().splitlines()[-1]
    assert last.startswith("error: ") and "No space left on device" in last and "Traceback" not in res.output
    assert "Logging error" not in res.output


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*") if ".tmp" in p.name or ".partial-" in p.name
                  or ".old-" in p.name or ".exporting-" in p.name or ".reporting-" in p.name)


def test_a_full_disk_is_one_line_for_every_command(tiny_run, small_disk, tmp_path):
    import shutil

    runner = CliRunner()
    conf = str(tiny_run / "conf" / "c.yaml")
    bundle = tmp_path / "bundle"
    assert runner.invoke(main, ["export", str(tiny_run / "run"), "--out", str(bundle)]).exit_code == 0
    shutil.copytree(tiny_run / "run", small_disk / "run")  # an earlier run, kept intact by train --force
    before = {p.name: p.read_bytes() for p in (small_disk / "run").iterdir() if p.is_file()}
    commands = [
        (1, ["train", conf, "--out", str(small_disk / "new")]),  # the log file hits the limit
        (3, ["train", conf, "--out", str(small_disk / "new")]),  # the weights do
        (3, ["train", conf, "--out", str(small_disk / "run"), "--force"]),
        (0, ["eval", str(tiny_run / "run"), "--json", str(small_disk / "m.json")]),
        (0, ["bench", str(bundle), "--batch", "1", "--warmup", "0.01", "--duration", "0.02", "--json",
             str(small_disk / "b.json")]),
        (2, ["report", str(tiny_run / "run"), "--out", str(small_disk / "rep")]),
        (2, ["export", str(tiny_run / "run"), "--out", str(small_disk / "b")]),
    ]
    for free, command in commands:
        _fill(small_disk, free)
        res = runner.invoke(main, command)
        _disk_full_line(res)
        assert _leftovers(small_disk) == [], command
        assert sorted(p.name for p in small_disk.iterdir()) == ["filler", "run"], command
        assert {p.name: p.read_bytes() for p in (small_disk / "run").iterdir() if p.is_file()} == before


def test_an_injected_write_error_is_one_line_and_leaves_nothing(tiny_run, tmp_path, monkeypatch):
    """The same without root: ENOSPC injected into the writes (text/JSON, safetensors, plots)."""
    import errno
    import pathlib

    import matplotlib.figure
    import safetensors.torch
    from safetensors import SafetensorError

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def safetensors_no_space(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    runner = CliRunner()
    out = tmp_path / "out"
    out.mkdir()
    train = ["train", str(tiny_run / "conf" / "c.yaml"), "--out", str(out / "run")]
    eval_json = ["eval", str(tiny_run / "run"), "--json", str(out / "m.json")]
    report = ["report", str(tiny_run / "run"), "--out", str(out / "rep")]
    for target, name, fake, commands in ((safetensors.torch, "save_file", safetensors_no_space, [train]),
                                         (pathlib.Path, "write_text", no_space, [train, eval_json, report]),
                                         (matplotlib.figure.Figure, "savefig", no_space, [report])):
        with monkeypatch.context() as m:
            m.setattr(target, name, fake)
            for command in commands:
                _disk_full_line(runner.invoke(main, command))
                assert list(out.iterdir()) == [], (name, command)
