"""The routing rule of the DLSA cascade, in one place.

A sample exits at depth d (1-based) when its depth-d log-likelihood is at least that depth's
threshold; the first depth that takes it wins; NaN never exits; a sample no depth takes exits at
D + 1, the regular classifier.  Everything that routes calls this module: the PyTorch model
(``DLSAModel``), the fused and staged graphs, every backend's staged layout (``layouts.run_staged``),
training (the cascade and cross-fitting) and feature evaluation.

Three forms of the same rule:

* ``exits(loglik, threshold, cluster)``: the exit mask of one depth (numpy or torch);
* ``staged_route``: per-sample routing, each sample runs the filters of the depths it reaches and
  only the classifier it exits at (the staged layout, ``DLSAModel.forward``);
* ``masked_route``: every depth computed for the whole batch, exits picked with masks, deepest
  first (the fused graph: no data-dependent shapes);
* ``soft_cascade``: soft exit gates (``cascade.exit_gate: soft``, training and evaluation only; export
  refuses them): each depth mixes its exit classifier's log-probabilities with the rest's by
  sigmoid(slope * (loglik - threshold) + offset); a depth without a gate is the hard cut ``exits``.

Arrays go through an ``ArrayOps`` (``backends.layouts.NumpyOps`` / ``TorchOps``) so one code path
serves numpy, torch CPU and device memory.  Torch-free: the ONNX Runtime path imports it.

To change the rule (per-cluster thresholds, for instance), change ``exits`` here and where
thresholds are computed and stored (``training/cascade.py``): every router hands ``exits`` the
sample's cluster at that depth, the PyTorch model and the fused graph pass each depth's threshold
buffer as it is (any shape: ``DepthStage`` loads the shape it is given), and run directories
store ``threshold.tolist()``.  The staged backends read thresholds from the bundle manifest,
which holds one float per depth (``bundle_spec.py``): a rule with other thresholds ships once the
manifest carries them.
"""

from __future__ import annotations


def exits(loglik, threshold, cluster=None):
    """Mask of the samples that exit at this depth: loglik >= threshold (NaN compares False).
    cluster: each sample's cluster at this depth (every router passes it), for rules that read it;
    the rule as shipped does not."""
    return loglik >= threshold


def regular_exit(depth: int) -> int:
    """The exit depth reported for the regular classifier."""
    return depth + 1


def split_indices(loglik, threshold, cluster=None):
    """(exit indices, continue indices), ascending, of a torch loglik vector: ``exits`` as index lists
    for training.  A scalar threshold goes to the native ``filter_split`` op: about 2x faster than
    mask + nonzero at ImageNet-LT's 115k training rows and 7x at 4k on one CPU thread
    (``benchmarks/filter_split.py``; table in docs/architecture.md); any other threshold (a rule
    that reads more than one number) takes ``exits``' mask."""
    import torch

    if not isinstance(threshold, torch.Tensor) or threshold.dim() == 0:
        from .ops import filter_split

        return filter_split(loglik, float(threshold))
    out = exits(loglik, threshold, cluster)
    return torch.nonzero(out).flatten(), torch.nonzero(~out).flatten()


def staged_route(route, classify, regular, x, thresholds, depth: int, ops, record=None):
    """Per-sample routing.  ``route(d, xr) -> (loglik, cluster)`` for the samples still remaining at
    depth d, ``classify(d, x_exit, cluster_exit) -> logits``, ``regular(x_rest) -> logits``;
    ``record(d, remaining_index, loglik)`` sees each depth's scores (optional).  Returns
    (logits, exit_depth) as arrays of ``ops``.  One host round trip per depth: how many exit."""
    b = ops.rows(x)
    logits = None
    exit_depth = ops.full(b, regular_exit(depth), like=x)
    remaining = ops.arange(b, like=x)
    xr = x
    for d in range(1, depth + 1):
        if ops.rows(remaining) == 0:
            break
        ll, cluster = route(d, xr)
        if record is not None:
            record(d, remaining, ll)
        out = exits(ll, thresholds[d - 1], cluster)
        n_out = ops.count(out)
        if n_out:
            lo = classify(d, xr[out], cluster[out])
            if logits is None:
                logits = ops.empty((b, lo.shape[1]), like=lo)
            idx = remaining[out]
            logits[idx] = lo
            exit_depth[idx] = d
        if n_out == ops.rows(remaining):
            remaining = remaining[:0]
            break
        keep = ~out
        remaining = remaining[keep]
        xr = xr[keep]
    if ops.rows(remaining):
        lr = regular(xr)
        if logits is None:
            logits = ops.empty((b, lr.shape[1]), like=lr)
        logits[remaining] = lr
    return logits, exit_depth


def masked_route(exit_masks, stage_logits, logits, exit_depth, ops):
    """Fused routing: ``logits`` / ``exit_depth`` start as the regular classifier's; the first depth
    whose mask holds wins, so the masks are applied deepest first."""
    for d in range(len(exit_masks) - 1, -1, -1):
        logits = ops.where(ops.column(exit_masks[d]), stage_logits[d], logits)
        exit_depth = ops.where(exit_masks[d], d + 1, exit_depth)
    return logits, exit_depth


def gate_weight(loglik, threshold, slope, offset):
    """s in (0, 1): the exit classifier's share of the log-probabilities (torch tensors)."""
    return (slope * (loglik - threshold) + offset).sigmoid()


def soft_cascade(logp_exit: list, loglik: list, clusters: list, thresholds: list, gates: list, logp_regular):
    """z_1 of z_d = s_d * logp_exit_d + (1 - s_d) * z_{d+1}, z_{D+1} = logp_regular (torch tensors);
    ``gates``: one (slope, offset) per depth, None = the hard cut."""
    z = logp_regular
    for d in reversed(range(len(logp_exit))):
        if gates[d] is None:
            s = exits(loglik[d], thresholds[d], clusters[d]).to(z.dtype)
        else:
            s = gate_weight(loglik[d], thresholds[d], *gates[d])
        z = s[:, None] * logp_exit[d] + (1 - s[:, None]) * z
    return z
