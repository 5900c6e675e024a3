"""Which trained cascades the exported graphs can express (issue 17 options they cannot yet)."""

from __future__ import annotations

from ..errors import DLSAError


def check_exportable(cfg) -> None:
    """Export builds hard-routing graphs whose classifiers read the feature: refuse a run whose
    cascade routes softly or feeds the flow latent to its classifiers."""
    if cfg.cascade.flow_latent:
        raise DLSAError("cascade.flow_latent: true runs cannot be exported yet (the exported graphs feed the "
                        "feature, not the flow latent, to the classifiers); retrain with cascade.flow_latent: false")
    if cfg.cascade.exit_gate != "hard":
        raise DLSAError(f"cascade.exit_gate: {cfg.cascade.exit_gate} runs cannot be exported yet (the exported "
                        f"graphs route by a hard threshold); retrain with cascade.exit_gate: hard")
