"""Cascade presets: named sets of ``cascade.*`` overrides, defined once for ``tune`` (its search space)
and the benchmarks (``benchmarks/longtail_suite.py`` builds its variants from these blocks)."""

from __future__ import annotations

# every cascade key at the value of the method as published
RESEARCH = {"cascade.base": "BSM", "cascade.regular": "train", "cascade.mix_base": False,
            "cascade.route_prior": False, "cascade.warm_start": False, "cascade.prior_temperature": 1.0,
            "cascade.route_share_from": "train", "cascade.crossfit_folds": 0,
            "cascade.crossfit_routing": "out_of_fold", "cascade.route_prior_strength": 1.0,
            "cascade.exit_gate": "hard", "cascade.prior_balance": False,
            "cascade.exit_train": "routed", "cascade.flow_latent": False}


def on_head(base: str, route_prior: bool = True) -> dict:
    """DLSA on a re-balanced baseline head: prior-shifted BASE as the regular classifier, exits mixed
    with BASE (weight on val), and (``route_prior``) the log route share added to every classifier."""
    out = {"cascade.base": base, "cascade.regular": "prior_shift", "cascade.mix_base": True}
    return {**out, "cascade.route_prior": True} if route_prior else out


# tune's search space (``cascade.preset``)
PRESETS = {"research": {"cascade.regular": "train", "cascade.mix_base": False, "cascade.route_prior": False},
           "route_prior": {"cascade.regular": "train", "cascade.mix_base": False, "cascade.route_prior": True},
           "on_BSM": on_head("BSM"),
           "on_cRT": on_head("cRT")}
