"""Deployment: ONNX bundles (fused / staged graphs), parity gate, TensorRT engines, Triton."""
