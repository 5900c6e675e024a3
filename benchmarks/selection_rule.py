"""How often does the shipped model (best_on_val) turn out test-best, or within 0.5 points of it?

Trains each case once per seed (DLSA + the four baselines, the config's own settings), stores every
method's val and test logits under bench_out/selection/<case>/seed_<k>.npz, then scores selection
rules on them offline: the rule before issue 17 (val accuracy, ties to the first baseline in the
list, DLSA must beat every baseline strictly) and the candidates for the new rule.

    OMP_NUM_THREADS=1 python benchmarks/selection_rule.py --cases quickstart,digits_lt --seeds 0,1,2
    python benchmarks/selection_rule.py --table          # only re-score the stored logits
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from dlsa_prod.config import BASELINE_NAMES, load_config
from dlsa_prod.selection import DLSA, paired_interval, select_model, val_scores

sys.path.insert(0, str(Path(__file__).parent))
ROOT = Path("bench_out/selection")
FEATURES = Path("bench_out/features")
ORDER = BASELINE_NAMES


def case_config(case: str, seed: int):
    import longtail_suite as suite

    if case == "quickstart":
        return load_config("configs/quickstart.yaml", [f"seed={seed}", "device=cpu"])
    if case == "quickstart_r50":
        return load_config("configs/quickstart.yaml", [f"seed={seed}", "device=cpu", "data.digits.imbalance_ratio=50"])
    from _subsample import SMALL, small_features

    bench, _, variant = case.partition(":")
    overrides = {"seed": seed}
    if variant:
        overrides.update({**suite.RESEARCH_CASCADE, **suite.VARIANTS[variant][1]})
    if bench in SMALL:
        return suite.feature_config(SMALL[bench][0], small_features(bench, FEATURES, suite.ensure_features),
                                    overrides, "cpu")
    return suite.feature_config(bench, suite.ensure_features(bench, FEATURES), overrides, "cpu")


def store_case(case: str, seed: int, cache=None) -> Path:
    """cache: a TrainCache shared by the cases (cases on one data set and seed share the baselines)."""
    from dlsa_prod.pipeline import load_data, seed_everything, train_models
    from dlsa_prod.selection import method_val_logits

    out = ROOT / case.replace(":", "__") / f"seed_{seed}.npz"
    if out.is_file():
        return out
    cfg = case_config(case, seed)
    gen = seed_everything(cfg.seed)
    splits, _ = load_data(cfg, Path("/tmp"), "cpu", gen)
    models = train_models(splits, cfg, "cpu", gen, cache=cache)
    arrays = {"val_y": splits.val.labels, "test_y": splits.test.labels, "num_classes": splits.num_classes}
    for split in ("val", "test"):
        for k, v in method_val_logits(models.dlsa.model, models.baseline_models, getattr(splits, split), "cpu").items():
            arrays[f"{split}_{k}"] = v
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **arrays)
    return out


def old_rule(val: dict) -> str:
    """Before issue 17: highest val accuracy; ties to DLSA's disadvantage, then to the first baseline listed."""
    names = [k for k in ORDER if k in val] + [DLSA]
    top = max(val[k]["accuracy"] for k in names)
    return next(k for k in names if val[k]["accuracy"] == top)


def ranked_rule(key, paired: bool):
    def rule(val: dict, logits: dict, y: np.ndarray, c: int) -> str:
        base = sorted((k for k in val if k != DLSA), key=lambda k: (key(val[k]), ORDER.index(k)))[0]
        if paired:
            lo = paired_interval(logits[DLSA].argmax(1) == y, logits[base].argmax(1) == y, y)[1]
            return DLSA if lo > 0 else base
        return DLSA if key(val[DLSA]) < key(val[base]) else base
    return rule


def loglik_bootstrap_rule(val: dict, logits: dict, y: np.ndarray, c: int) -> str:
    """Baselines by balanced log-loss; DLSA if a paired bootstrap interval of the log-loss gain clears 0."""
    import torch

    base = sorted((k for k in val if k != DLSA), key=lambda k: (val[k]["balanced_log_loss"], ORDER.index(k)))[0]
    nll = {k: -torch.log_softmax(torch.from_numpy(np.asarray(logits[k], np.float64)), 1)[
        torch.arange(len(y)), torch.from_numpy(y)].numpy() for k in (DLSA, base)}
    d = nll[base] - nll[DLSA]
    rng = np.random.default_rng([0, 1717])
    boot = np.mean([d[y == k][rng.integers(0, (y == k).sum(), (2000, (y == k).sum()))].mean(1) for k in np.unique(y)], 0)
    return DLSA if np.quantile(boot, 0.025) > 0 else base


RULES = {
    "old: val acc, ties to first listed": None,
    "acc, ties by log-loss; DLSA strictly better": ranked_rule(lambda s: (-s["accuracy"], s["balanced_log_loss"]), False),
    "bal. acc, ties by log-loss; paired bootstrap": ranked_rule(lambda s: (-s["balanced_accuracy"], s["balanced_log_loss"]), True),
    "bal. log-loss; DLSA by lower log-loss (no paired test)": ranked_rule(lambda s: (s["balanced_log_loss"],), False),
    "bal. log-loss; paired bootstrap of the log-loss gain": loglik_bootstrap_rule,
    "bal. log-loss; paired bootstrap (shipped rule)": None,
}


def score_rules(cases: list[str]) -> str:
    rows = {r: [] for r in RULES}
    n = 0
    for case in cases:
        for f in sorted((ROOT / case.replace(":", "__")).glob("seed_*.npz")):
            z = np.load(f)
            c = int(z["num_classes"])
            methods = [k[4:] for k in z.files if k.startswith("val_") and k != "val_y"]
            vlog = {m: z[f"val_{m}"] for m in methods}
            val = {m: val_scores(vlog[m], z["val_y"], c) for m in methods}
            test = {m: float((z[f"test_{m}"].argmax(1) == z["test_y"]).mean()) for m in methods}
            top = max(test.values())
            n += 1
            for r, fn in RULES.items():
                if r.startswith("old"):
                    pick = old_rule(val)
                elif fn is None:
                    pick = select_model(vlog, z["val_y"], c)["model"]
                else:
                    pick = fn(val, vlog, z["val_y"], c)
                rows[r].append((test[pick] == top, top - test[pick] <= 0.005 + 1e-12, top - test[pick], case, pick))
    lines = [f"{n} runs ({', '.join(cases)}; seeds as stored)", "",
             "| rule | shipped = test-best | within 0.5 pt | mean regret (pt) | worst regret (pt) |",
             "|---|---:|---:|---:|---:|"]
    for r, v in rows.items():
        lines.append(f"| {r} | {sum(x[0] for x in v)}/{len(v)} | {sum(x[1] for x in v)}/{len(v)} | "
                     f"{100 * np.mean([x[2] for x in v]):.2f} | {100 * max(x[2] for x in v):.2f} |")
    old_name, new_name = list(RULES)[0], list(RULES)[-1]
    lines += ["", "| data set | runs | old rule: test-best / within 0.5 | shipped rule: test-best / within 0.5 |",
              "|---|---:|---:|---:|"]
    for case in cases:
        o = [x for x in rows[old_name] if x[3] == case]
        n_ = [x for x in rows[new_name] if x[3] == case]
        if o:
            lines.append(f"| {case} | {len(o)} | {sum(x[0] for x in o)} / {sum(x[1] for x in o)} | "
                         f"{sum(x[0] for x in n_)} / {sum(x[1] for x in n_)} |")
    lines += ["", "picks per run (shipped rule): " + "; ".join(f"{x[3]}: {x[4]}" for x in rows[list(RULES)[-1]])]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default="quickstart,quickstart_r50,digits_lt")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--table", action="store_true")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    cases = args.cases.split(",")
    if not args.table:
        from dlsa_prod.training.train_cache import TrainCache

        cache = TrainCache()
        for case in cases:
            for s in args.seeds.split(","):
                print("stored", store_case(case, int(s), cache), flush=True)
    text = score_rules(cases)
    print(text)
    ROOT.mkdir(parents=True, exist_ok=True)
    (ROOT / "results.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
