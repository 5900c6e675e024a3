"""Under ONNX export the GMM op decomposes into standard ONNX ops that ONNX Runtime runs."""

import numpy as np
import onnx
import onnxruntime as ort
import torch

from dlsa_prod.models import FlowGMM

# logsumexp with an explicit max shift: TensorRT imports ReduceLogSumExp without one (see
# tests/test_tensorrt_graphs.py), so it must not appear in any exported graph
STANDARD = {"MatMul", "ReduceMax", "Exp", "ReduceSum", "Log", "ArgMax"}


class _Scores(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        out = self.model(x)
        return out.loglik, out.cluster


def test_flow_gmm_exports_to_standard_ops(tmp_path):
    torch.manual_seed(0)
    model = FlowGMM(12, 9, 0.3, hidden_size=24).eval()
    x = torch.randn(5, 12)
    path = tmp_path / "gmm.onnx"
    torch.onnx.export(_Scores(model).eval(), (x,), str(path), input_names=["x"], output_names=["loglik", "cluster"],
                      dynamo=True, dynamic_shapes=({0: torch.export.Dim("batch")},))
    graph = onnx.load(str(path)).graph
    ops_used = {n.op_type for n in graph.node}
    assert all(n.domain in ("", "ai.onnx") for n in graph.node), "custom-domain node in the graph"
    assert STANDARD <= ops_used, ops_used
    assert "ReduceLogSumExp" not in ops_used
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    xb = torch.randn(17, 12)  # another batch size: the batch axis is dynamic
    ll, cl = sess.run(None, {"x": xb.numpy()})
    ref = model(xb)  # native op when built
    np.testing.assert_allclose(ll, ref.loglik.detach().numpy(), rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(cl, ref.cluster.numpy())
