"""export/serving/http_server.py: the stdlib JSON endpoint around Runtime, served on loopback with an
ephemeral port (in a thread, and once as the command-line script); the top-level export/ folder's
links to the package data; the float32-range check shared by features and images."""

import http.client
import importlib.util
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from dlsa_prod.errors import DLSAError
from dlsa_prod.images.preprocess import Preprocess
from dlsa_prod.runtime import Runtime

from fakes.deploy_run import tiny_run, trt_bundle

ROOT = Path(__file__).resolve().parents[1]
SERVER = ROOT / "export" / "serving" / "http_server.py"
TIMEOUT = 10


def _load_example():
    spec = importlib.util.spec_from_file_location("dlsa_serving_example", SERVER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """The shared tiny run's bundle (built once per session by whichever deployment test asks first)."""
    return {**tiny_run(tmp_path_factory), "bundle": trt_bundle(tmp_path_factory)}


@pytest.fixture(scope="module")
def served(bundle):
    example = _load_example()
    rt = Runtime(bundle["bundle"])
    server = example.make_server(rt, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield {"rt": rt, "port": server.server_address[1], "example": example}
    finally:
        server.shutdown()
        server.server_close()
        thread.join(TIMEOUT)
        assert not thread.is_alive()


def _request(port, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        payload = json.loads(resp.read())
        assert resp.getheader("Content-Type") == "application/json"
        return resp.status, payload
    finally:
        conn.close()


def _assert_one_line_error(status, payload, expected_status, match):
    assert status == expected_status, payload
    assert set(payload) == {"error"}
    assert "\n" not in payload["error"] and "Traceback" not in payload["error"]
    assert match in payload["error"], payload["error"]


def test_predict_matches_the_runtime(served, bundle):
    rt, port = served["rt"], served["port"]
    x = bundle["test"].features[:13]
    status, out = _request(port, "POST", "/predict", {"features": x.tolist()})
    assert status == 200, out
    ref = rt.predict(x)
    assert out["labels"] == ref.labels.tolist()
    assert out["exit_depth"] == ref.exit_depth.tolist()
    np.testing.assert_allclose(out["confidence"], ref.probabilities.max(axis=1), rtol=1e-6)
    assert set(out["exit_depth"]) <= set(range(1, rt.depth + 2))
    # integers are numbers too, and one row is a batch of one
    status, one = _request(port, "POST", "/predict", {"features": [[0] * rt.dim]})
    assert status == 200 and one["labels"] == rt.predict(np.zeros((1, rt.dim))).labels.tolist()


def test_concurrent_requests_share_one_runtime(served, bundle):
    rt, port = served["rt"], served["port"]
    x = bundle["test"].features
    batches = [x[i:i + 5] for i in range(0, 40, 5)]
    expected = [rt.predict(b).labels.tolist() for b in batches]
    results, errors = {}, []

    def client(i):
        try:
            results[i] = _request(port, "POST", "/predict", {"features": batches[i].tolist()})
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert not errors
    assert [results[i][1]["labels"] for i in range(len(batches))] == expected


def test_healthz_and_unknown_paths(served):
    rt, port = served["rt"], served["port"]
    status, health = _request(port, "GET", "/healthz")
    assert status == 200 and health["status"] == "ok"
    assert health["dim"] == rt.dim and health["num_classes"] == rt.num_classes
    assert "staged" in health["runs"]
    _assert_one_line_error(*_request(port, "GET", "/nope"), 404, "POST /predict")
    _assert_one_line_error(*_request(port, "POST", "/predicted", {"features": []}), 404, "POST /predict")


@pytest.mark.parametrize("body, match", [
    ("{not json", "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
    ('{"rows": [[1, 2]]}', '"features" key'),
    ("[[1, 2]]", '"features" key'),
    ('{"features": [[1, 2], [3]]}', "ragged"),
    ('{"features": [["a", "b"]]}', "numbers only"),
    ('{"features": [[true, false]]}', "numbers only"),
    ('{"features": [[1, 2, 3]]}', "shape (batch, 8), got (1, 3)"),
    ('{"features": [1, 2, 3, 4, 5, 6, 7, 8]}', "list of rows"),
    ('{"features": [[0, 0, 0, 0, 0, 0, 0, NaN]]}', "NaN or inf (first at row 0, column 7)"),
    ('{"features": [[0, 0, 0, 0, 0, 0, 0, 0], [0, 0, 1e300, 0, 0, 0, 0, 0]]}',
     "1e+300 at row 1, column 2 is beyond the float32 range"),
])
def test_bad_input_gets_400_with_one_line(served, body, match):
    _assert_one_line_error(*_request(served["port"], "POST", "/predict", body), 400, match)


def test_body_limits(served):
    port = served["port"]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:  # no Content-Length: refused without reading
        conn.putrequest("POST", "/predict")
        conn.endheaders()
        resp = conn.getresponse()
        assert resp.status == 411 and "Content-Length" in json.loads(resp.read())["error"]
    finally:
        conn.close()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:  # announced size over the limit: refused before the body is sent
        conn.putrequest("POST", "/predict")
        conn.putheader("Content-Length", str(served["example"].MAX_BODY_BYTES + 1))
        conn.endheaders()
        resp = conn.getresponse()
        assert resp.status == 413 and "exceeds the limit" in json.loads(resp.read())["error"]
    finally:
        conn.close()


def test_image_requests_are_parsed_as_pixels():
    example = _load_example()
    rt = SimpleNamespace(spec=SimpleNamespace(kind="image"), dim=None)
    px = example.parse_inputs(json.dumps({"images": [[[0, 255], [7, 9]]]}).encode(), rt)
    assert px.dtype == np.uint8 and px.tolist() == [[[0, 255], [7, 9]]]
    assert example.parse_inputs(b'{"images": [[[0.5]]]}', rt).dtype.kind == "f"
    with pytest.raises(example.BadRequest, match="0..255"):
        example.parse_inputs(b'{"images": [[[0, 256]]]}', rt)
    with pytest.raises(example.BadRequest, match='"images" key'):
        example.parse_inputs(b'{"features": [[1]]}', rt)


def test_command_line_server(bundle, tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    bad = subprocess.run([sys.executable, str(SERVER), "--bundle", str(tmp_path / "missing")],
                         capture_output=True, text=True, timeout=60, env=env)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    proc = subprocess.Popen([sys.executable, str(SERVER), "--bundle", str(bundle["bundle"]), "--port", "0",
                             "--layout", "fused"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=env)
    try:
        line = proc.stdout.readline()  # "serving BUNDLE (...) on http://127.0.0.1:PORT"
        assert line.startswith("serving ") and "http://127.0.0.1:" in line, line
        port = int(line.rsplit(":", 1)[1])
        status, health = _request(port, "GET", "/healthz")
        assert status == 200 and "fused" in health["runs"]
        x = bundle["test"].features[:4]
        status, out = _request(port, "POST", "/predict", {"features": x.tolist()})
        assert status == 200 and out["labels"] == Runtime(bundle["bundle"], layout="fused").predict(x).labels.tolist()
    finally:
        proc.terminate()
        proc.wait(TIMEOUT)


def test_top_level_export_folder_links_to_the_package_data():
    """export/ shows the deployment files without copying them: the links resolve to package data."""
    pairs = {"export/manifest.schema.json": "dlsa_prod/export/data/manifest.schema.json",
             "export/tensorrt/profiles.yaml": "dlsa_prod/export/data/tensorrt_profiles.yaml"}
    for link, target in pairs.items():
        p = ROOT / link
        assert p.is_symlink() and not os.path.isabs(os.readlink(p)), link
        assert p.resolve() == (ROOT / target).resolve()
    assert (ROOT / "export" / "README.md").is_file()


def test_images_beyond_float32_are_named_not_called_inf():
    prep = Preprocess((2, 3), 1, (0.5,), (0.25,))
    x = np.zeros((2, 1, 2, 3))
    x[1, 0, 1, 2] = 1e300
    with pytest.raises(DLSAError, match=r"image input value 1e\+300 at image 1, channel 0, row 1, column 2 is beyond "
                                        r"the float32 range") as exc:
        prep.to_nchw(x)
    assert "NaN" not in str(exc.value)
    x[1, 0, 1, 2] = np.nan  # HWC input is named in CHW terms after the layout is recognised
    with pytest.raises(DLSAError, match=r"image input contains NaN or inf \(first at image 1, channel 0, row 1, column 2\)"):
        prep.to_nchw(x.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(prep.to_nchw(np.zeros((1, 2, 3, 1))), np.full((1, 1, 2, 3), -2.0, np.float32))


def test_triton_client_example_prepares_inputs_from_the_spec(bundle, capsys):
    """The Triton client reads input/output names from the bundle spec; no Triton server runs here."""
    spec = importlib.util.spec_from_file_location("dlsa_triton_client_example",
                                                  ROOT / "export" / "serving" / "triton_client_example.py")
    client = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(client)
    from dlsa_prod.bundle_spec import read_spec

    bspec = read_spec(bundle["bundle"])
    name, x = client.graph_input(bspec, bundle["test"].features[:3].astype(np.float64))
    assert name == "x" and x.dtype == np.float32 and x.shape == (3, 8)
    with pytest.raises(DLSAError, match=r"shape \(batch, 8\)"):
        client.graph_input(bspec, np.zeros((2, 5)))
    labels, exits = client.labels_and_exits({"logits": np.eye(3, dtype=np.float32)[[2, 0]]})
    assert labels.tolist() == [2, 0] and exits.tolist() == [1, 1]
    assert client.main(["--bundle", str(bundle["bundle"]) + "-missing"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
