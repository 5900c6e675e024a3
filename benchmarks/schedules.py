"""Classifier schedules on a ~1k and a ~15k training set: the four baselines (CE, BSM, LA, cRT),
each epoch (and LA's tau) selected on val, test accuracy mean +- std over seeds, for the
recommended config's schedule (run unchanged) and a grid of hand-set schedules.

    OMP_NUM_THREADS=1 python benchmarks/schedules.py --seeds 0,1,2
    python benchmarks/schedules.py --table

Stage-1 features: bench_out/features/fmnist_lt_r100 (longtail_suite.py) and its ~1k subsample
(_subsample.py).  Results: bench_out/schedules/<set>/<schedule>/seed_<k>.json and results.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import longtail_suite as suite  # noqa: E402
from _subsample import SMALL, small_features  # noqa: E402

from dlsa_prod.config import BASELINE_NAMES  # noqa: E402

ROOT = Path("bench_out/schedules")
FEATURES = Path("bench_out/features")
SETS = {"fmnist_lt_r100_1k": "fmnist_lt_r100", "fmnist_lt_r100": "fmnist_lt_r100"}
NAMES = BASELINE_NAMES


def hand(bs, lr, epoch):
    return {"data.batchsize": bs, "optim.lr": lr, "optim.epoch": epoch, "optim.updates": None, "optim.cos_lr": False,
            "eval_freq": 2}


# name -> regcls overrides; "config" = the recommended config's own schedule (configs/fmnist_lt_r100.yaml:
# 10000 updates of batch 128, cosine, lr [0.05, 0.1] chosen per classifier on val);
# "old_config" = its schedule before issue 17 (batch 512, lr 0.05, 20 epochs); updates6000_b128_lr0.1_cos
# = the config's schedule before the lr list (results of a changed config: delete its "config" directories)
SCHEDULES = {"config": {}, "old_config": hand(512, 0.05, 20) | {"optim.cos_lr": False, "optim.momentum": 0.9}}
for bs in (128, 512):
    for lr in (0.02, 0.05, 0.1):
        for ep in (20, 60):
            SCHEDULES[f"b{bs}_lr{lr}_e{ep}"] = hand(bs, lr, ep)


# set by optimizer updates (the candidates for the recommended config; not "hand-set")
for updates in (1000, 3000):
    for lr in (0.05, 0.1):
        SCHEDULES[f"updates{updates}_b128_lr{lr}"] = {"data.batchsize": 128, "optim.lr": lr, "optim.updates": updates,
                                                      "eval_freq": 2}


for updates in (6000, 8000, 10000):
    for lr in (0.05, 0.07, 0.1):
        SCHEDULES[f"updates{updates}_b128_lr{lr}_cos"] = {"data.batchsize": 128, "optim.lr": lr, "optim.updates": updates,
                                                          "optim.cos_lr": True, "eval_freq": 2}


def hand_set(schedule: str) -> bool:
    return schedule.startswith("b")


def features_of(name: str) -> Path:
    if name in SMALL:
        return small_features(name, FEATURES, suite.ensure_features)
    return suite.ensure_features(name, FEATURES)


def run_one(set_name: str, schedule: str, seed: int, config_overrides: dict) -> dict:
    out = ROOT / set_name / schedule / f"seed_{seed}.json"
    if out.is_file():
        return json.loads(out.read_text())
    from dlsa_prod.data import load_splits
    from dlsa_prod.evaluation import classifier_predictions
    from dlsa_prod.selection import logits_of, val_scores
    from dlsa_prod.training import train_baselines
    from dlsa_prod.training.baselines import TAU_GRID, implied_log_prior

    over = {"seed": seed, **config_overrides, **{f"regcls.{k}": v for k, v in SCHEDULES[schedule].items()}}
    cfg = suite.feature_config(SETS[set_name], features_of(set_name), over, "cpu")
    splits = load_splits(cfg.data, seed)
    res = {}
    for name, b in train_baselines(splits, cfg, "cpu", NAMES).items():
        pred = classifier_predictions(b.model, splits.test.features, "cpu")
        val_logits = logits_of(b.model, splits.val.features, "cpu")
        res[name] = {"test": float((pred == splits.test.labels).mean()), "epoch": b.epoch, "val": b.val_accuracy,
                     "val_scores": val_scores(val_logits, splits.val.labels, splits.num_classes), "info": b.info}
        if name == "CE":  # every tau of post-hoc logit adjustment: val scores and test accuracy (LA rules)
            test_logits = logits_of(b.model, splits.test.features, "cpu")
            log_prior = implied_log_prior("CE", splits.train_counts()).numpy()  # what LA subtracts
            res["_la_taus"] = {str(t): {"val": val_scores(val_logits - t * log_prior, splits.val.labels,
                                                          splits.num_classes),
                                        "test": float(((test_logits - t * log_prior).argmax(1)
                                                       == splits.test.labels).mean())} for t in TAU_GRID}
    res["_train_samples"] = int(len(splits.train))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res))
    return res


def table(seeds: list[int]) -> str:
    lines = []
    for set_name in SETS:
        rows = {}
        for schedule in SCHEDULES:
            files = [ROOT / set_name / schedule / f"seed_{s}.json" for s in seeds]
            if not all(f.is_file() for f in files):
                continue
            runs = [json.loads(f.read_text()) for f in files]
            rows[schedule] = {n: [100 * r[n]["test"] for r in runs] for n in NAMES}
            n_train = runs[0]["_train_samples"]
        if not rows:
            continue
        best = {n: max((s for s in rows if hand_set(s)), key=lambda s: np.mean(rows[s][n])) for n in NAMES
                if any(hand_set(s) for s in rows)}
        lines += [f"### {set_name} ({n_train} train samples; test accuracy %, mean ± std over seeds {seeds})", "",
                  "| schedule | " + " | ".join(NAMES) + " |", "|---|" + "---:|" * len(NAMES)]
        for s, r in rows.items():
            cells = []
            for n in NAMES:
                c = f"{np.mean(r[n]):.2f} ± {np.std(r[n]):.2f}"
                cells.append(f"**{c}**" if best.get(n) == s else c)
            lines.append(f"| {s} | " + " | ".join(cells) + " |")
        lines.append("")
        for s in rows:
            if not hand_set(s) and best:
                gaps = ", ".join(f"{n} {np.mean(rows[s][n]) - np.mean(rows[best[n]][n]):+.2f}" for n in NAMES)
                lines.append(f"- {s} minus the best hand-set schedule (points): {gaps}")
        for s in rows:
            runs = [json.loads((ROOT / set_name / s / f"seed_{k}.json").read_text()) for k in seeds]
            chosen = [f"{n} {'/'.join(str(r[n].get('info', {}).get('lr')) for r in runs)}" for n in NAMES
                      if any("lr" in r[n].get("info", {}) for r in runs)]
            if chosen:
                lines.append(f"- {s}: lr chosen on val per seed: " + ", ".join(chosen))
            taus = [r["LA"].get("info", {}).get("tau") for r in runs]
            if s == "config" and None not in taus:
                lines.append(f"- {s}: LA's tau per seed: " + "/".join(f"{t:g}" for t in taus))
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sets", default=",".join(SETS))
    p.add_argument("--schedules", default=",".join(SCHEDULES))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--table", action="store_true")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    if not args.table:
        for set_name in args.sets.split(","):
            for schedule in args.schedules.split(","):
                for seed in seeds:
                    run_one(set_name, schedule, seed, {})
                print("done", set_name, schedule, flush=True)
    text = table(seeds)
    print(text)
    ROOT.mkdir(parents=True, exist_ok=True)
    (ROOT / "results.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
