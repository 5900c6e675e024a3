"""The precision gate for reduced-precision serving: TensorRT tf32/fp16 engines and ONNX Runtime's
TensorRT provider (whose "fp32" lets TensorRT use TF32).

Such a backend is measured against fp32 on the bundle's validation inputs and refused, with one
line, unless ``accept_precision_loss`` (CLI: ``--accept-precision-loss``) when either holds:

* its exit agreement with fp32 is below ``MIN_EXIT_AGREEMENT`` (99.5%): routing compares a
  log-likelihood of magnitude ~1e2..1e3 with a threshold, so small GEMM errors move samples
  between classifiers;
* its validation accuracy drops by more than ``MAX_ACCURACY_DROP_POINTS`` (0.5 points).

The report (agreements, accuracy change, the rule and the verdict) is what the manifest records.
Torch-free: the runtime uses it too.
"""

from __future__ import annotations

import numpy as np

from ..errors import DLSAError

MIN_EXIT_AGREEMENT = 0.995
MAX_ACCURACY_DROP_POINTS = 0.5


class PrecisionLossError(DLSAError):
    """A reduced-precision backend routes or predicts measurably differently from fp32."""


def routing_report(ref: dict, logits: np.ndarray, exit_depth: np.ndarray, labels: np.ndarray | None) -> dict:
    """Agreement with the fp32 reference (``ref``: pred, exit) and, with LABELS for the first rows,
    the accuracy change in points."""
    pred = logits.argmax(1)
    out = {"samples": int(len(pred)), "pred_agreement": float((pred == ref["pred"]).mean()),
           "exit_agreement": float((exit_depth == ref["exit"]).mean())}
    if labels is not None and len(labels):
        n = len(labels)
        out["accuracy_change"] = float((pred[:n] == labels).mean() - (ref["pred"][:n] == labels).mean())
    return out


def judge(report: dict, what: str, accept: bool) -> dict:
    """Add the gate's verdict to REPORT; raise one line when it fails and the loss is not accepted."""
    reasons = []
    if report["exit_agreement"] < MIN_EXIT_AGREEMENT:
        reasons.append(f"exit agreement with fp32 {100 * report['exit_agreement']:.2f}% "
                       f"(< {100 * MIN_EXIT_AGREEMENT:.1f}%)")
    drop = -100 * report.get("accuracy_change", 0.0)
    if drop > MAX_ACCURACY_DROP_POINTS:
        reasons.append(f"val accuracy -{drop:.2f} points (> {MAX_ACCURACY_DROP_POINTS} allowed)")
    report["gate"] = {"min_exit_agreement": MIN_EXIT_AGREEMENT, "max_accuracy_drop_points": MAX_ACCURACY_DROP_POINTS,
                      "passed": not reasons, "accepted_loss": bool(reasons) and bool(accept)}
    if reasons and not accept:
        raise PrecisionLossError(f"{what}: {'; '.join(reasons)}; refused (pass --accept-precision-loss, or "
                                 f"accept_precision_loss=True, to use it anyway)")
    return report
