"""Long-tail benchmark suite: DLSA variants vs the four baselines, 3 seeds, on real long-tailed data.

Stage 1 (once per benchmark, seed 0): the project's own image pipeline trains the backbone and
extracts features (``dlsa_prod.images.stage.image_splits``); they are written to
``<features>/<name>/feature_{train,val,test}.h5`` and reused by every later run (the CPU cost of a
backbone is paid once).  Everything downstream -- the flows, DLSA's classifiers, every baseline --
is trained once per seed on those features with ``dlsa_prod.seeds.run_seeds``.

    nice -n 10 python benchmarks/longtail_suite.py --bench fmnist_lt_r100 --variants research,prior_shift
    python benchmarks/longtail_suite.py --table            # collect every finished variant into markdown

Benchmarks: fmnist_lt_r100, fmnist_lt_r10 (Fashion-MNIST-LT at imbalance ratios 100 and 10),
digits_lt (scikit-learn digits, ratio 10).  Variants: see VARIANTS (each a set of --set overrides).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

from dlsa_prod.cascade_presets import RESEARCH, on_head
from dlsa_prod.config import config_from_dict, load_config
from dlsa_prod.data import write_features
from dlsa_prod.device import resolve_device
from dlsa_prod.metrics import display_name
from dlsa_prod.seeds import SUMMARY_KEYS, run_seeds
from dlsa_prod.training.train_cache import TrainCache
from dlsa_prod.selection import shipped_model

BENCHMARKS = {"fmnist_lt_r100": "configs/fmnist_lt_r100.yaml", "fmnist_lt_r10": "configs/fmnist_lt_r10.yaml",
              "digits_lt": "configs/digits_lt.yaml"}

# Building blocks of the cross-fitting-era variants below.
ON_CRT_ROUTE = on_head("cRT")
ROUTE = {"cascade.route_prior": True}
WARM = {"cascade.warm_start": True}
CF2 = {"cascade.crossfit_folds": 2}
DEPLOYED = {"cascade.crossfit_routing": "deployed"}
TAU = {"cascade.route_prior_strength": "val"}
KEPT = {**ON_CRT_ROUTE, **CF2, **TAU, **WARM, "cascade.flow_latent": True, "cascade.exit_train": "all"}  # configs'

# name -> (description, overrides).  "research" is the method as published (the baseline of each change).
VARIANTS = {
    "research": ("research DLSA (the cascade as published)", {}),
    "warm_start": ("classifiers warm-started from the plain BSM classifier", {"cascade.warm_start": True}),
    "prior_shift": ("regular classifier = plain BSM on all samples + remainder's label prior",
                    {"cascade.regular": "prior_shift"}),
    "mix_base": ("exit logits mixed with plain BSM's (weight on val)", {"cascade.mix_base": True}),
    "prior_T2": ("cluster-prior temperature 2", {"cascade.prior_temperature": 2.0}),
    "prior_T05": ("cluster-prior temperature 0.5", {"cascade.prior_temperature": 0.5}),
    "per_depth": ("per-depth proportions 0.2, 0.4", {"cascade.llh_proportions": [0.2, 0.4]}),
    "q0": ("flow likelihood unweighted (q = 0: head classes modelled best, exit first)",
           {"gmflow.data.weight_q": 0.0}),
    "on_cRT": ("DLSA on the cRT head: prior-shifted cRT regular + mixing",
               on_head("cRT", route_prior=False)),
    "on_LA": ("DLSA on the LA head: prior-shifted LA regular + mixing",
              on_head("LA", route_prior=False)),
    "route_prior": ("every classifier's logits + log(share of its class routed there): the test-time label prior",
                    {"cascade.route_prior": True}),
    "route_prior_mix": ("route prior + mixing with plain BSM",
                        {"cascade.route_prior": True, "cascade.mix_base": True}),
    "route_prior_warm": ("route prior + warm start",
                         {"cascade.route_prior": True, "cascade.warm_start": True}),
    "on_cRT_route": ("DLSA on the cRT head with route priors everywhere: prior-shifted cRT regular, exits mixed "
                     "with cRT, + log route share", ON_CRT_ROUTE),
    "on_LA_route": ("the same on the LA head", on_head("LA")),
    "on_cRT_full": ("on the cRT head: warm start from cRT + route priors + mixing + prior-shifted cRT regular",
                    {**ON_CRT_ROUTE, **WARM}),
    "on_cRT_warm_route": ("on the cRT head: warm start from cRT + route priors + prior-shifted cRT regular",
                          {"cascade.base": "cRT", "cascade.regular": "prior_shift", "cascade.route_prior": True,
                           "cascade.warm_start": True}),
    "on_cRT_route_val": ("on_cRT_route with route shares counted on held-out val (not the flow's training samples)",
                         {**ON_CRT_ROUTE, "cascade.route_share_from": "val"}),
    "route_prior_val": ("route_prior with route shares counted on val",
                        {"cascade.route_prior": True, "cascade.route_share_from": "val"}),
    "combined": ("prior_shift + mix_base + warm_start",
                 {"cascade.regular": "prior_shift", "cascade.mix_base": True, "cascade.warm_start": True}),
    "crossfit": ("research cascade with 2-fold cross-fitted routing: each training sample routed by a flow "
                 "that never saw it", CF2),
    "crossfit3": ("research cascade with 3-fold cross-fitted routing", {"cascade.crossfit_folds": 3}),
    "crossfit_deployed": ("research cascade, cross-fit routing 'deployed': one flow trained on half the samples "
                          "routes all of them at its held-out half's threshold", {**CF2, **DEPLOYED}),
    "crossfit_route": ("cross-fitted routing + route prior", {**CF2, **ROUTE}),
    "crossfit_route_tau": ("cross-fitted routing + route prior, strength chosen on val", {**CF2, **ROUTE, **TAU}),
    "crossfit_cRT_mix": ("cross-fitted routing, exits mixed with cRT (weight on val), regular trained on the remainder",
                         {**CF2, "cascade.base": "cRT", "cascade.mix_base": True}),
    "route_prior_warm_cf_tau": ("route_prior_warm + cross-fitting + strength on val",
                                {**ROUTE, **WARM, **CF2, **TAU}),
    "on_cRT_route_tau": ("on_cRT_route with the route prior strength chosen on val", {**ON_CRT_ROUTE, **TAU}),
    "on_cRT_route_cf": ("on_cRT_route with 2-fold cross-fitted routing", {**ON_CRT_ROUTE, **CF2}),
    "on_cRT_route_cf3": ("on_cRT_route with 3-fold cross-fitted routing",
                         {**ON_CRT_ROUTE, "cascade.crossfit_folds": 3}),
    "on_cRT_route_cfd": ("on_cRT_route with cross-fit routing 'deployed'", {**ON_CRT_ROUTE, **CF2, **DEPLOYED}),
    "on_cRT_route_cf_tau": ("on_cRT_route_cf with the route prior strength chosen on val",
                            {**ON_CRT_ROUTE, **CF2, **TAU}),
    "on_cRT_route_cfd_tau": ("on_cRT_route_cfd with the route prior strength chosen on val",
                             {**ON_CRT_ROUTE, **CF2, **DEPLOYED, **TAU}),
    "on_cRT_cf_tau0": ("on_cRT_route_cf at route prior strength 0: the regular classifier is cRT itself, exits "
                       "mixed with cRT (the Bayes view: the route is a function of x, so a calibrated posterior "
                       "needs no route prior)", {**ON_CRT_ROUTE, **CF2, "cascade.route_prior_strength": 0.0}),
    "on_cRT_warm_cf_tau": ("on_cRT_route_cf_tau + every classifier warm-started from cRT (kept until issue 17)",
                           {**ON_CRT_ROUTE, **CF2, **TAU, **WARM}),
    "kept_soft": ("on_cRT_warm_cf_tau with soft exit gates: exit and remainder log-probabilities mixed by "
                  "sigmoid(slope * (loglik - threshold) + offset), slope and offset chosen on val",
                  {**ON_CRT_ROUTE, **CF2, **TAU, **WARM, "cascade.exit_gate": "soft"}),
    "kept_balanced": ("on_cRT_warm_cf_tau with class-balanced cluster priors (each class's share of a cluster "
                      "divided by its training count)", {**ON_CRT_ROUTE, **CF2, **TAU, **WARM,
                                                        "cascade.prior_balance": True}),
    **{f"kept_p{round(100 * q)}": (f"on_cRT_warm_cf_tau with filter.llh_proportion {q} (research: 0.3)",
                                   {**ON_CRT_ROUTE, **CF2, **TAU, **WARM, "filter.llh_proportion": q})
       for q in (0.15, 0.5, 0.7, 0.9)},
    "kept_exit_all": ("on_cRT_warm_cf_tau with the cluster-aided classifier trained on every sample (its cluster "
                      "prior from the depth-1 flow), used for those that exit", {**ON_CRT_ROUTE, **CF2, **TAU, **WARM,
                                                                                "cascade.exit_train": "all"}),
    "kept_exit_all_soft": ("kept_exit_all with soft exit gates", {**ON_CRT_ROUTE, **CF2, **TAU, **WARM,
                                                                  "cascade.exit_train": "all",
                                                                  "cascade.exit_gate": "soft"}),
    "kept_latent": ("on_cRT_warm_cf_tau with the flow latent as the cluster-aided classifier's second input",
                    {**ON_CRT_ROUTE, **CF2, **TAU, **WARM, "cascade.flow_latent": True}),
    "kept_latent_all": ("kept_latent with the cluster-aided classifier trained on every sample (the kept "
                        "configuration: the cascade section of configs/*.yaml)",
                        KEPT),
    **{f"kept_latent_all_p{round(100 * q)}": (f"kept_latent_all with filter.llh_proportion {q}",
                                              {**KEPT, "filter.llh_proportion": q})
       for q in (0.5, 0.7, 0.9)},
    "latent_d2": ("kept_latent_all with max_depth 2", {**KEPT, "max_depth": 2}),
    # the flow behind the latent (docs/benchmarks.md, "Ceiling")
    "latent_flow_e30": ("kept_latent_all, flow trained 30 epochs (10)", {**KEPT, "gmflow.optim.epoch": 30}),
    "latent_flow_k50": ("kept_latent_all, 50 clusters (100)", {**KEPT, "gmflow.model.num_cluster": 50}),
    "latent_flow_k200": ("kept_latent_all, 200 clusters (100)", {**KEPT, "gmflow.model.num_cluster": 200}),
    "latent_flow_b4": ("kept_latent_all, 4 MADE blocks (2)", {**KEPT, "gmflow.model.n_blocks": 4}),
    "latent_flow_h2": ("kept_latent_all, 2 hidden layers per MADE block (1)", {**KEPT, "gmflow.model.n_hidden": 2}),
    "mlp_heads": ("kept_latent_all with every classifier (baselines too) an MLP, one hidden layer of 256: "
                  "what nonlinear heads reach on the same features", {**KEPT, "regcls.model.hidden_layers": [256],
                                                                      "cacls.model.hidden_layers": [256]}),
}
# route prior strength and mixing weights by class-balanced val log-loss instead of val accuracy
VARIANTS.update({name: (f"{of} with cascade.calibrate_by: log_loss", {**VARIANTS[of][1],
                                                                      "cascade.calibrate_by": "log_loss"})
                 for name, of in (("loss_cal", "kept_latent_all"), ("loss_cal_p90", "kept_latent_all_p90"),
                                  ("loss_cal_d2", "latent_d2"))})


def ensure_features(name: str, features_root: Path) -> Path:
    """Stage 1 once (seed 0) through the project's image pipeline; later calls reuse the files."""
    out = features_root / name
    if all((out / f"feature_{s}.h5").is_file() for s in ("train", "val", "test")):
        return out
    from dlsa_prod.images.stage import image_splits
    from dlsa_prod.pipeline import seed_everything

    cfg = load_config(BENCHMARKS[name], ["seed=0", f"backbone.cache_dir={out / 'cache'}"])
    device = resolve_device(cfg.device)
    with tempfile.TemporaryDirectory() as tmp:
        splits, _ = image_splits(cfg, Path(tmp), device, seed_everything(0))
    out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val", "test"):
        write_features(out / f"feature_{split}.h5", getattr(splits, split))
    return out


def feature_config(name: str, feat_dir: Path, overrides: dict, device: str) -> "object":
    """The benchmark's config with data read from the stage-1 features (no backbone section)."""
    tree = yaml.safe_load(Path(BENCHMARKS[name]).read_text())
    data = tree["data"]
    tree["data"] = {"source": "features", "feat_dir": str(feat_dir), "many_shot": data["many_shot"],
                    "few_shot": data["few_shot"]}
    tree.pop("backbone", None)
    tree["device"] = device
    return config_from_dict(tree, BENCHMARKS[name], [f"{k}={json.dumps(v)}" for k, v in overrides.items()])


# Every variant starts from the research cascade, whatever the config's own cascade section says.
RESEARCH_CASCADE = RESEARCH  # every cascade key reset before a variant applies its own


def run_variant(name: str, variant: str, seeds: list[int], root: Path, features_root: Path, device: str,
                cache: TrainCache | None = None) -> dict:
    """cache: shared by the variants of one invocation (identical baselines and flows trained once)."""
    feat_dir = ensure_features(name, features_root)
    cfg = feature_config(name, feat_dir, {**RESEARCH_CASCADE, **VARIANTS[variant][1]}, device)
    t0 = time.perf_counter()
    summary = run_seeds(cfg, root / name / variant, seeds, force=True, cache=cache)
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    (root / name / variant / "seconds.txt").write_text(f"{summary['seconds']}\n")
    return summary


def run_tuned(name: str, seeds: list[int], candidates: int, root: Path, features_root: Path, device: str) -> str:
    """`dlsa-prod tune` once per seed (val halves: epochs / configurations), then mean +- std of the
    chosen configuration's test metrics next to the baselines of the same run (markdown)."""
    from dlsa_prod.seeds import format_summary, summarise
    from dlsa_prod.tune import run_tune

    feat_dir = ensure_features(name, features_root)
    per_seed, chosen, beats = {}, [], []
    for seed in seeds:
        cfg = feature_config(name, feat_dir, {"seed": seed}, device)
        res = run_tune(cfg, root / name / "tuned" / f"seed_{seed}", candidates)
        per_seed[seed] = json.loads((root / name / "tuned" / f"seed_{seed}" / "run" / "metrics.json").read_text())
        chosen.append(res["chosen"])
        beats.append(shipped_model(res["best_on_val"]))
    summary = {"seeds": seeds, "test": summarise(per_seed, "test"), "select": summarise(per_seed, "select"),
               "chosen": chosen, "best_on_val": beats}
    (root / name / "tuned" / "tuned_summary.json").write_text(json.dumps(summary, indent=2))
    table = format_summary(summary["test"], f"{name}: val-tuned DLSA (test, mean ± std over seeds {seeds})",
                           {b: beats.count(b) for b in dict.fromkeys(beats)})
    sel = format_summary(summary["select"], "selection half of val (chose the configuration; never an epoch)")
    text = table + "\n\n" + sel + "\n\nchosen per seed: " + "; ".join(json.dumps(c) for c in chosen)
    (root / name / "tuned" / "tuned_summary.md").write_text(text + "\n")
    return text


def _cell(s: dict) -> str:
    return "n/a" if s["mean"] is None else f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f}"


def collect_table(root: Path) -> str:
    """Markdown: per benchmark, the baselines (from the research run) and every finished DLSA variant."""
    out = []
    for name in BENCHMARKS:
        bench = root / name
        if not bench.is_dir():
            continue
        out += [f"### {name}", "", "| method | " + " | ".join(l for _, l in SUMMARY_KEYS) + " | val overall | best on val |",
                "|---|" + "---:|" * (len(SUMMARY_KEYS) + 1) + "---|"]
        first = True
        for variant in VARIANTS:
            f = bench / variant / "seeds_summary.json"
            if not f.is_file():
                continue
            s = json.loads(f.read_text())
            bests = [shipped_model(json.loads((bench / variant / f"seed_{k}" / "metrics.json").read_text())["best_on_val"])
                     for k in s["seeds"]]
            best = ", ".join(f"{b} {bests.count(b)}x" for b in dict.fromkeys(bests))
            for m, row in s["test"].items():
                if m != "dlsa" and not first:
                    continue
                label = f"DLSA {variant}" if m == "dlsa" else display_name(m)
                out.append(f"| {label} | " + " | ".join(_cell(row[k]) for k, _ in SUMMARY_KEYS)
                           + f" | {_cell(s['val'][m]['accuracy'])} | {best if m == 'dlsa' else ''} |")
            first = False
        out.append("")
    return "\n".join(out)


def explain(name: str, variant: str, root: Path, features_root: Path, against: str | None = None) -> str:
    """Where DLSA wins or loses against the best baseline on val, per exit depth and shot group
    (test samples grouped by where DLSA routes them; both models scored on the same samples), mean over seeds."""
    import numpy as np

    from dlsa_prod.data import read_features
    from dlsa_prod.evaluation import cascade_predictions, classifier_predictions
    from dlsa_prod.metrics import run_shot_thresholds, shot_groups
    from dlsa_prod.run_dir import load_run

    test = read_features(features_root / name / "feature_test.h5")
    rows: dict[str, list] = {}
    for seed_dir in sorted((root / name / variant).glob("seed_*")):
        run = load_run(seed_dir)
        metrics = json.loads((seed_dir / "metrics.json").read_text())
        best = against or max(run.baselines, key=lambda k: metrics["val"][f"plain_{k}"]["accuracy"])
        pred, exits = cascade_predictions(run.model, test.features, "cpu")
        base = classifier_predictions(run.baselines[best], test.features, "cpu")
        groups = shot_groups(np.asarray(run.meta["train_class_counts"]), *run_shot_thresholds(run.meta))
        group_of = np.empty(len(run.meta["train_class_counts"]), object)
        for g, ids in groups.items():
            group_of[ids] = g
        for d in range(1, run.model.depth + 2):
            for g in ("many", "medium", "few"):
                m = (exits == d) & (group_of[test.labels] == g)
                if m.any():
                    key = f"{'regular' if d == run.model.depth + 1 else f'depth {d}'} / {g}"
                    rows.setdefault(key, []).append((m.mean(), (pred[m] == test.labels[m]).mean(),
                                                     (base[m] == test.labels[m]).mean(), best))
    who = f"plain {against}" if against else "the best baseline on val"
    out = [f"#### {name} / {variant}: DLSA vs {who}, on the test samples DLSA routes to each exit (mean of seeds)",
           "", "| exit / shot group | share of test | DLSA acc | baseline acc | gap (points) | baseline |",
           "|---|---:|---:|---:|---:|---|"]
    for key, vals in rows.items():
        share, acc, bacc = (float(np.mean([v[i] for v in vals])) for i in range(3))
        names = ", ".join(sorted({v[3] for v in vals}))
        out.append(f"| {key} | {100 * share:.1f}% | {100 * acc:.2f} | {100 * bacc:.2f} | {100 * (acc - bacc):+.2f} | {names} |")
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bench", default="fmnist_lt_r100", help=f"comma-separated: {', '.join(BENCHMARKS)}")
    p.add_argument("--variants", default="research", help=f"comma-separated: {', '.join(VARIANTS)}")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--out", type=Path, default=Path("bench_out/longtail_suite"))
    p.add_argument("--features", type=Path, default=Path("bench_out/features"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: fair on a shared machine)")
    p.add_argument("--table", action="store_true", help="only print the collected markdown table")
    p.add_argument("--explain", metavar="BENCH/VARIANT", help="per exit depth and shot group: where DLSA loses (BENCH/VARIANT:BASELINE compares with that baseline)")
    p.add_argument("--tune", action="store_true", help="run dlsa-prod tune per seed instead of the variants")
    p.add_argument("--candidates", type=int, default=6, help="--tune: configurations per seed")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    if args.explain:
        name, rest = args.explain.split("/")
        variant, _, against = rest.partition(":")
        print(explain(name, variant, args.out, args.features, against or None))
        return 0
    if args.tune:
        for name in args.bench.split(","):
            print(run_tuned(name, [int(s) for s in args.seeds.split(",")], args.candidates, args.out, args.features,
                            args.device))
        return 0
    if not args.table:
        seeds = [int(s) for s in args.seeds.split(",")]
        for name in args.bench.split(","):
            cache = TrainCache()  # one per data set: its variants share the baselines and identical flows
            for variant in args.variants.split(","):
                run_variant(name, variant, seeds, args.out, args.features, args.device, cache)
    table = collect_table(args.out)
    print(table)
    (args.out / "results.md").write_text(table + "\n")


if __name__ == "__main__":
    sys.exit(main())
