"""The two precision vocabularies, defined once (torch-free: the CLI and the config read them).

* ``TRAIN_PRECISIONS``: how the flow MLP and the classifiers train (``training/precision.py``):
  fp32, tf32 (CUDA matmuls may use TF32) or bf16 (autocast).  The GMM term is IEEE fp32 always.
* ``ENGINE_PRECISIONS``: what a TensorRT engine computes (``backends/tensorrt_build.py``): fp32 (TF32
  cleared), tf32 or fp16.  tf32 and fp16 engines pass the precision gate or need
  ``--accept-precision-loss``.
"""

TRAIN_PRECISIONS = ("fp32", "tf32", "bf16")
ENGINE_PRECISIONS = ("fp32", "tf32", "fp16")
