"""Which trained cascades the exported graphs can express (issue 17 options they cannot yet).

``cascade.flow_latent`` exports as is: the graphs are traced from ``DepthStage.classify``, which
computes the standardised flow latent itself (the flow runs a second time inside the classifier
graph); the parity gate checks it like any other run.
"""

from __future__ import annotations

from ..errors import DLSAError


def check_exportable(cfg) -> None:
    """Export builds hard-routing graphs: refuse a run whose cascade routes softly."""
    if cfg.cascade.exit_gate != "hard":
        raise DLSAError(f"cascade.exit_gate: {cfg.cascade.exit_gate} runs cannot be exported yet (the exported "
                        f"graphs route by a hard threshold); retrain with cascade.exit_gate: hard")
