"""Bundles: export + parity gate, the typed spec, runtime (fused / staged, threads, validation,
chunking), bad and edited bundles, CLI export/bench."""

import json
import re
import shutil
import subprocess
import sys
import tracemalloc

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from dlsa_prod.bundle_spec import BundleError, read_spec
from dlsa_prod.cli import main
from dlsa_prod.errors import DLSAError
from dlsa_prod.export.bundle import export_bundle
from dlsa_prod.export.parity import RANDOM_FEATURES, ParityError, borderline
from dlsa_prod.run_dir import load_run
from dlsa_prod.runtime import Runtime

from conftest import run_in_threads
from fakes.deploy_run import count_rows_per_graph, tiny_run, trt_bundle


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    t = tiny_run(tmp_path_factory)
    return {**t, "bundle": trt_bundle(tmp_path_factory)}


def _copy(trained, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(trained["bundle"], b)
    return b


def test_bundle_contents_and_parity(trained):
    spec = read_spec(trained["bundle"])
    m = spec.manifest
    assert spec.depth == 2 and spec.dim == 8 and spec.num_classes == 6 and spec.kind == "features"
    assert spec.layouts == ["fused", "staged"]
    staged = spec.graphs("staged")
    assert set(staged) == {"filter_1", "classifier_1", "filter_2", "classifier_2", "regular"}
    assert [(t.name, t.dtype, t.shape) for t in staged["classifier_1"].inputs] == [
        ("x", "float32", ("batch", 8)), ("cluster", "int64", ("batch",))]
    assert [t.name for t in spec.graphs("fused")["fused"].outputs] == ["logits", "pred", "exit_depth", "loglik"]
    for layout in ("fused", "staged"):
        r = m["parity"][layout]
        assert r["pred_agreement"] == 1.0 and r["exit_agreement"] == 1.0 and r["max_logit_rel_err"] <= 1e-4
        assert m["parity"]["torch"][layout]["exit_agreement"] == 1.0
    assert m["parity"]["inputs"]["random"] == RANDOM_FEATURES
    assert "samples.npy" not in m["files"] and m["samples"]["file"] == "samples.npy"
    assert all(len(h) == 64 for h in m["files"].values())
    for f in (trained["bundle"] / "staged").glob("*.onnx"):
        model = onnx.load(str(f))
        assert all(n.domain in ("", "ai.onnx") for n in model.graph.node)
        props = {p.key: p.value for p in model.metadata_props}
        assert json.loads(props["dlsa.thresholds"]) == m["thresholds"] and props["dlsa.depth"] == "2"


@pytest.mark.parametrize("layout", ["fused", "staged"])
def test_runtime_matches_pytorch(trained, layout):
    model = load_run(trained["run"]).model
    x = trained["test"].features
    with torch.no_grad():
        ref = model(torch.from_numpy(x))
    rt = Runtime(trained["bundle"], layout=layout)
    out = rt.predict(x)
    # where ONNX Runtime placed the nodes (onnxruntime >= 1.23 records it), not just what is registered
    assert re.fullmatch(rf"onnxruntime CPUExecutionProvider \[CPUExecutionProvider 100% of \d+ nodes\] {layout}",
                        rt.describe()), rt.describe()
    np.testing.assert_array_equal(out.labels, ref.pred.numpy())
    np.testing.assert_array_equal(out.exit_depth, ref.exit_depth.numpy())
    np.testing.assert_allclose(out.logits, ref.logits.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out.probabilities.sum(1), 1.0, rtol=1e-5)
    assert set(np.unique(out.exit_depth)) <= {1, 2, 3}


def test_staged_runs_each_sample_only_as_deep_as_it_goes(trained):
    rt = Runtime(trained["bundle"], layout="staged")
    seen = count_rows_per_graph(rt)
    x = trained["test"].features
    out = rt.predict(x)
    n1 = int((out.exit_depth == 1).sum())
    assert seen["filter_1"] == len(x)
    assert seen["filter_2"] == len(x) - n1  # samples exiting at depth 1 never run depth 2
    assert seen["classifier_1"] == n1 and seen["regular"] == int((out.exit_depth == 3).sum())


def test_predict_works_in_chunks_with_bounded_memory(trained):
    x = np.tile(trained["test"].features, (200, 1))  # 24000 rows
    whole = Runtime(trained["bundle"], layout="staged", chunk_rows=10 ** 6)
    rt = Runtime(trained["bundle"], layout="staged", chunk_rows=1000)
    sizes = []
    run = rt.executor.run
    rt.executor.run = lambda xs, timer=None: (sizes.append(len(xs)), run(xs, timer))[1]
    x64 = x.astype(np.float64)
    tracemalloc.start()
    out = rt.predict(x64)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert max(sizes) == 1000 and sum(sizes) == len(x)
    ref = whole.predict(x)
    np.testing.assert_array_equal(out.exit_depth, ref.exit_depth)
    np.testing.assert_allclose(out.logits, ref.logits, rtol=1e-6, atol=1e-6)
    outputs = out.labels.nbytes + out.exit_depth.nbytes + out.logits.nbytes + out.probabilities.nbytes
    assert peak < outputs + x64.nbytes // 4  # the results plus a few chunks, never a float32 copy of all rows
    with pytest.raises(DLSAError, match="chunk_rows"):
        Runtime(trained["bundle"], chunk_rows=0)


def test_runtime_is_thread_safe(trained):
    rt = Runtime(trained["bundle"], layout="staged")
    x = trained["test"].features
    batches = [x[i:i + 7 + i % 5] for i in range(0, 100, 4)]
    expected = [rt.predict(b) for b in batches]
    errors, results = [], {}

    def worker(tid):
        try:
            for rep in range(5):
                for i, b in enumerate(batches):
                    p = rt.predict(b)
                    results[(tid, rep, i)] = (p.labels, p.exit_depth, p.logits)
        except Exception as exc:  # surfaced below
            errors.append(exc)

    run_in_threads(worker, 8)
    assert not errors
    for (tid, rep, i), (labels, exits, logits) in results.items():
        np.testing.assert_array_equal(labels, expected[i].labels)
        np.testing.assert_array_equal(exits, expected[i].exit_depth)
        np.testing.assert_array_equal(logits, expected[i].logits)


def test_runtime_input_validation(trained):
    rt = Runtime(trained["bundle"], layout="fused")
    with pytest.raises(DLSAError, match=r"shape \(batch, 8\)"):
        rt.predict(np.zeros((3, 5), np.float32))
    with pytest.raises(DLSAError, match=r"NaN or inf \(first at row 0, column 0\)"):
        rt.predict(np.full((2, 8), np.nan, np.float32))
    big = np.zeros((3, 8))
    big[2, 5] = 1e300
    with pytest.raises(DLSAError, match=r"1e\+300 at row 2, column 5 is beyond the float32 range") as exc:
        rt.predict(big)
    assert "NaN" not in str(exc.value)
    chunked = Runtime(trained["bundle"], layout="fused", chunk_rows=4)  # rows are numbered in the whole input
    with pytest.raises(DLSAError, match=r"at row 9, column 5 is beyond"):
        chunked.predict(np.concatenate([np.zeros((7, 8)), big]))
    with pytest.raises(DLSAError, match=r"first at row 6, column 1\)"):
        chunked.predict(np.where(np.arange(80).reshape(10, 8) == 49, np.inf, 0.0))
    with pytest.raises(DLSAError, match="numeric"):
        rt.predict(np.array([["a"] * 8]))
    assert rt.predict(np.zeros((0, 8), np.float32)).labels.shape == (0,)
    np.testing.assert_array_equal(rt.predict(trained["test"].features[:5].astype(np.float64)).labels,
                                  rt.predict(trained["test"].features[:5]).labels)


def test_runtime_does_not_import_torch(trained):
    code = ("import sys, numpy as np; from dlsa_prod.runtime import Runtime; "
            f"rt = Runtime({str(trained['bundle'])!r}); rt.predict(np.zeros((2, 8), np.float32)); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bad_bundles(trained, tmp_path):
    b = _copy(trained, tmp_path)
    (b / "staged" / "regular.onnx").write_bytes(b"garbage")
    with pytest.raises(BundleError, match="regular.onnx: sha256 mismatch"):
        Runtime(b)
    (b / "staged" / "regular.onnx").unlink()
    with pytest.raises(BundleError, match="regular.onnx: missing from the bundle"):
        Runtime(b)
    shutil.rmtree(b)
    b = _copy(trained, tmp_path)
    m = json.loads((b / "manifest.json").read_text())
    for key, value, match in [("format_version", 99, "format version 99 is newer"),
                              ("format_version", 1, "format version 1 is older.*re-export"),
                              ("format_version", "3", "format_version must be an integer \\(this dlsa_prod reads "
                                                      "3\\), got '3'")]:
        (b / "manifest.json").write_text(json.dumps({**m, key: value}))
        with pytest.raises(BundleError, match=match):
            Runtime(b)
    (b / "manifest.json").write_text(json.dumps({**m, "input": {**m["input"], "dim": "eight"}}))
    with pytest.raises(BundleError, match="manifest field input.dim"):
        Runtime(b)
    (b / "manifest.json").write_bytes(json.dumps(m).encode()[:40] + b"\xff\xfe" + json.dumps(m).encode()[40:])
    with pytest.raises(BundleError, match=r"manifest.json: not UTF-8 text \(byte 0xff at offset 40\)"):
        Runtime(b)
    res = CliRunner().invoke(main, ["bench", str(b), "--duration", "0.1"])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and "not UTF-8" in res.output
    (b / "manifest.json").unlink()
    with pytest.raises(BundleError, match="not a dlsa_prod bundle"):
        Runtime(b)
    (b / "manifest.json").write_text(json.dumps({k: v for k, v in m.items() if k != "layouts"} | {
        "layouts": {"staged": m["layouts"]["staged"]}}))
    with pytest.raises(BundleError, match="layout 'fused' not in this bundle"):
        Runtime(b, layout="fused")


@pytest.mark.parametrize("edit", ["thresholds", "depth", "num_classes", "io", "names", "train_counts"])
def test_edited_manifest_is_refused_by_the_graph_metadata(trained, tmp_path, edit):
    b = _copy(trained, tmp_path)
    m = json.loads((b / "manifest.json").read_text())
    if edit == "thresholds":
        m["thresholds"][0] += 0.5
    elif edit == "depth":  # schema-valid and self-consistent, but the graphs say 2
        m["depth"], m["thresholds"] = 1, m["thresholds"][:1]
    elif edit == "num_classes":
        m["classes"]["num_classes"] = 7
    elif edit == "names":  # returned to clients by the HTTP example
        m["classes"]["names"] = [f"class {i}" for i in range(6)]
    elif edit == "train_counts":
        m["classes"]["train_counts"][0] += 1
    else:
        m["layouts"]["staged"]["graphs"]["regular"]["inputs"][0]["name"] = "features"
    (b / "manifest.json").write_text(json.dumps(m))
    what = {"io": "the IO of graph regular differs", "names": r"classes \(names, train_counts, shot_groups\) differ",
            "train_counts": r"classes \(names, train_counts, shot_groups\) differ"}.get(edit, f"{edit} is")
    with pytest.raises(BundleError, match=what) as exc:
        Runtime(b)
    assert "re-export" in str(exc.value) and "\n" not in str(exc.value)


def test_missing_samples_only_matter_to_bench(trained, tmp_path):
    b = _copy(trained, tmp_path)
    (b / "samples.npy").unlink()
    assert Runtime(b).predict(trained["test"].features[:3]).labels.shape == (3,)
    res = CliRunner().invoke(main, ["bench", str(b), "--batch", "1", "--duration", "0.05"])
    assert res.exit_code == 2 and "samples.npy: missing (bench needs" in res.output


def test_corrupted_graph_fails_the_gate_and_leaves_no_bundle(trained, tmp_path):
    def corrupt(tmp):
        path = tmp / "single.onnx"
        graph = onnx.load(str(path))
        for init in graph.graph.initializer:
            arr = onnx.numpy_helper.to_array(init)
            if arr.ndim == 2 and arr.shape[0] == 6:  # a classifier weight (6 classes)
                init.CopyFrom(onnx.numpy_helper.from_array(arr * 1.5, init.name))
                break
        onnx.save(graph, str(path))

    out = tmp_path / "bundle"
    with pytest.raises(ParityError, match="parity gate failed for the single graph on onnxruntime"):
        export_bundle(trained["run"], out, model="CE", features=trained["dir"] / "test.npz", _after_export=corrupt)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_borderline_samples_are_excluded():
    ll = np.array([[0.0, np.nan], [5.0, 1.0], [3.0, 2.0000001]], np.float32)
    assert borderline(ll, np.array([0.0, 2.0], np.float32)).tolist() == [True, False, True]


def test_cli_export_and_bench(trained, tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli_bundle"
    res = runner.invoke(main, ["export", str(trained["run"]), "--out", str(out), "--layout", "staged",
                               "--triton", str(tmp_path / "triton")])
    assert res.exit_code == 2 and "--triton serves the fused graph" in res.output and not out.exists()
    res = runner.invoke(main, ["export", str(trained["run"]), "--out", str(out), "--layout", "fused"])
    assert res.exit_code == 0, res.output
    assert "fused pred 1.0000 exit 1.0000" in res.output
    res = runner.invoke(main, ["bench", str(out), "--batch", "1,16", "--warmup", "0.05", "--duration", "0.1",
                               "--threads", "1", "--run", str(trained["run"]), "--json", str(tmp_path / "b.json")])
    assert res.exit_code == 0, res.output  # a single-layout bundle: bench defaults to the layouts it has
    assert "threads: 1 (ONNX Runtime intra-op and PyTorch" in res.output
    assert re.search(r"ran: onnxruntime CPUExecutionProvider \[CPUExecutionProvider 100% of \d+ nodes\] fused", res.output)
    rows = json.loads((tmp_path / "b.json").read_text())
    methods = {r["method"] for r in rows}
    assert "pytorch eager" in methods and len(methods) == 2
    assert any(m.startswith("onnxruntime CPUExecutionProvider [CPUExecutionProvider 100% of") for m in methods)
    assert all(r["p50_ms"] > 0 for r in rows)
    res = runner.invoke(main, ["bench", str(trained["bundle"]), "--batch", "4", "--warmup", "0", "--duration",
                               "0.05", "--json", str(tmp_path / "c.json")])
    assert res.exit_code == 0, res.output
    rows = json.loads((tmp_path / "c.json").read_text())
    assert {r.get("layout") for r in rows} == {None, "fused", "staged"}  # eager from the bundle's parent run
    staged = [r for r in rows if r.get("layout") == "staged"]
    assert all(abs(sum(r["stage_share"].values()) - 1) < 1e-6 for r in staged)


@pytest.mark.parametrize("drop", ["fused", "staged", "torch", "tensorrt"])
def test_a_bundle_missing_a_parity_report_does_not_load(trained, tmp_path, drop):
    b = _copy(trained, tmp_path)
    m = json.loads((b / "manifest.json").read_text())
    assert m["artifacts"]["tensorrt"]["parity"]  # the fixture bundle has (fake) TensorRT engines
    if drop == "torch":
        del m["parity"]["torch"]["staged"]
    elif drop == "tensorrt":
        m["artifacts"]["tensorrt"]["parity"] = {}
    else:
        del m["parity"][drop]
    (b / "manifest.json").write_text(json.dumps(m))
    layout, backend = {"torch": ("staged", "torch"), "tensorrt": ("fused", "tensorrt")}.get(drop, (drop, "onnxruntime"))
    with pytest.raises(BundleError, match=f"no parity report for the {layout} layout on {backend} "
                                          r"\(export interrupted, or manifest edited\); re-export"):
        Runtime(b)
    res = CliRunner().invoke(main, ["bench", str(b), "--duration", "0.05"])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and "no parity report" in res.output


def test_an_export_killed_during_its_parity_check_leaves_nothing_loadable(trained, tmp_path):
    script = f"""
import os
from dlsa_prod.export import bundle
bundle._gate = lambda *a, **k: os._exit(9)  # killed while the parity gate runs
bundle.export_bundle({str(trained["run"])!r}, {str(tmp_path / "bundle")!r})
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr
    hidden = [p for p in tmp_path.iterdir() if p.name.startswith(".bundle.exporting-")]
    assert len(hidden) == 1 and json.loads((hidden[0] / "manifest.json").read_text())["parity"] == {}
    with pytest.raises(BundleError, match="no parity report for the fused layout on onnxruntime"):
        Runtime(hidden[0])
    res = CliRunner().invoke(main, ["bench", str(hidden[0]), "--duration", "0.05"])
    assert res.exit_code == 2 and "no parity report" in res.output
