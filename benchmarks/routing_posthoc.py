"""Post-hoc variants of a finished depth-1 benchmark variant's runs (issue 17, deliverable 5), each
parameter chosen on val (200 images), test only reported:

- soft gate between the exit and the regular classifier's log-probabilities (slope, offset by val
  accuracy or by class-balanced val log-loss);
- per-cluster / per-predicted-class / per-depth fallback to the regular classifier where val says
  the exit classifier is worse;
- one mixing weight of exit and regular log-probabilities everywhere;
- logit adjustment (minus t log train prior) of the cascade or of its exit classifier;
- lambda * log p_bal(y | cluster) (class-balanced, smoothed cluster likelihood) added at the exit or everywhere.

    python benchmarks/routing_posthoc.py fmnist_lt_r100 on_cRT_warm_cf_tau
"""
import sys
from pathlib import Path
import numpy as np, torch
from dlsa_prod.data import read_features
from dlsa_prod.run_dir import load_run
torch.set_num_threads(1)
bench, variant = sys.argv[1], sys.argv[2]
root = Path("bench_out/longtail_suite") / bench / variant
feat = Path("bench_out/features") / bench
val, test = read_features(feat / "feature_val.h5"), read_features(feat / "feature_test.h5")

def parts(run, fs):
    x = torch.from_numpy(fs.features)
    with torch.no_grad():
        st = run.model.stages[0]
        ll, cl = st.route(x)
        E, R, C = st.classify(x, cl), run.model.regular(x), run.baselines["cRT"](x)
    ls = lambda t: torch.log_softmax(t, 1).numpy()
    return dict(ll=ll.numpy(), cl=cl.numpy(), E=ls(E), R=ls(R), C=ls(C), thr=float(st.threshold), y=fs.labels)

def soft(p, a, b, scale):
    u = (p["ll"] - p["thr"]) / scale
    s = (u + b >= 0).astype(float) if a == np.inf else 1 / (1 + np.exp(-(a * u + b)))
    return s[:, None] * p["E"] + (1 - s[:, None]) * p["R"]

def acc(z, y): return float((z.argmax(1) == y).mean())
def bnll(z, y):
    lp = z - np.logaddexp.reduce(z, axis=1, keepdims=True)
    per = -lp[np.arange(len(y)), y]
    return float(np.mean([per[y == c].mean() for c in np.unique(y)]))

A = [0.5, 1, 2, 4, 8, np.inf]
B = [-2, -1, -0.5, 0, 0.5, 1, 2]
rows = {}
def add(name, v, t): rows.setdefault(name, []).append((v, t))
for sd in sorted(root.glob("seed_*")):
    run = load_run(sd)
    pv, pt = parts(run, val), parts(run, test)
    scale = float(np.std(pv["ll"]))
    hard = lambda p: soft(p, np.inf, 0, scale)
    add("hard (as trained)", acc(hard(pv), pv["y"]), acc(hard(pt), pt["y"]))
    add("cRT", acc(pv["C"], pv["y"]), acc(pt["C"], pt["y"]))
    for crit in ("acc", "nll"):
        best = None
        for a in A:
            for b in B:
                z = soft(pv, a, b, scale)
                key = (acc(z, pv["y"]), -bnll(z, pv["y"])) if crit == "acc" else (-bnll(z, pv["y"]), acc(z, pv["y"]))
                if best is None or key > best[0]:
                    best = (key, a, b)
        _, a, b = best
        add(f"soft gate by val {crit}", acc(soft(pv, a, b, scale), pv["y"]), acc(soft(pt, a, b, scale), pt["y"]))
        print(sd.name, crit, "a", a, "b", b)
    # per-cluster fallback: exiting samples of cluster k use R when val (exiting in k) says E is worse
    ev = pv["ll"] >= pv["thr"]
    use_r = set()
    for k in np.unique(pv["cl"][ev]):
        m = ev & (pv["cl"] == k)
        if (pv["R"][m].argmax(1) == pv["y"][m]).sum() > (pv["E"][m].argmax(1) == pv["y"][m]).sum():
            use_r.add(int(k))
    def fb(p, clusters):
        z = hard(p).copy()
        m = (p["ll"] >= p["thr"]) & np.isin(p["cl"], list(clusters))
        z[m] = p["R"][m]
        return z
    add("per-cluster fallback", acc(fb(pv, use_r), pv["y"]), acc(fb(pt, use_r), pt["y"]))
    # per-predicted-class fallback at depth 1
    use_c = set()
    pe = pv["E"].argmax(1)
    for c in range(pv["E"].shape[1]):
        m = ev & (pe == c)
        if m.any() and (pv["R"][m].argmax(1) == pv["y"][m]).sum() > (pv["E"][m].argmax(1) == pv["y"][m]).sum():
            use_c.add(c)
    def fc(p, classes):
        z = hard(p).copy()
        m = (p["ll"] >= p["thr"]) & np.isin(p["E"].argmax(1), list(classes))
        z[m] = p["R"][m]
        return z
    add("per-predicted-class fallback", acc(fc(pv, use_c), pv["y"]), acc(fc(pt, use_c), pt["y"]))
    # depth-level fallback: exit vs regular on the exiting val samples
    add("depth fallback (R if val says so)", *[acc(soft(p, np.inf, 0, scale) if (pv["E"][ev].argmax(1) == pv["y"][ev]).sum() >= (pv["R"][ev].argmax(1) == pv["y"][ev]).sum() else p["R"], p["y"]) for p in (pv, pt)])
    # log-prob averaging of E and R everywhere (w on val)
    best = max(((acc(w * pv["E"] + (1 - w) * pv["R"], pv["y"]), -bnll(w * pv["E"] + (1 - w) * pv["R"], pv["y"])), w) for w in np.linspace(0, 1, 11))
    w = best[1]
    add(f"constant mix everywhere (w on val)", acc(w * pv["E"] + (1 - w) * pv["R"], pv["y"]), acc(w * pt["E"] + (1 - w) * pt["R"], pt["y"]))
    print(sd.name, "clusters->R", len(use_r), "classes->R", sorted(use_c), "w", w)
print(f"\n{bench}/{variant}: val / test accuracy, mean ± std over seeds")
for k, v in rows.items():
    v = 100 * np.array(v)
    print(f"{k:40s} val {v[:,0].mean():.2f} ± {v[:,0].std(ddof=1):.2f}   test {v[:,1].mean():.2f} ± {v[:,1].std(ddof=1):.2f}   per-seed test {np.round(v[:,1],2).tolist()}")

# --- post-hoc logit adjustment of the whole cascade's log-probs, tau on val
rows2 = {}
for sd in sorted(root.glob("seed_*")):
    run = load_run(sd)
    pv, pt = parts(run, val), parts(run, test)
    scale = float(np.std(pv["ll"]))
    lp = np.log(np.asarray(run.meta["train_class_counts"], float)); lp -= np.logaddexp.reduce(lp)
    zv, zt = soft(pv, np.inf, 0, scale), soft(pt, np.inf, 0, scale)
    grid = np.linspace(-1, 1, 9)
    best = max(((acc(zv - t * lp, pv["y"]), -bnll(zv - t * lp, pv["y"]), -abs(t)), t) for t in grid)[1]
    rows2.setdefault("cascade - t log prior (t on val)", []).append((acc(zv - best * lp, pv["y"]), acc(zt - best * lp, pt["y"])))
    # only the exit head adjusted
    ev, et = pv["ll"] >= pv["thr"], pt["ll"] >= pt["thr"]
    def adj(z, m, t):
        z = z.copy(); z[m] = z[m] - t * lp; return z
    best = max(((acc(adj(zv, ev, t), pv["y"]), -bnll(adj(zv, ev, t), pv["y"]), -abs(t)), t) for t in grid)[1]
    rows2.setdefault("exit head - t log prior (t on val)", []).append((acc(adj(zv, ev, best), pv["y"]), acc(adj(zt, et, best), pt["y"])))
    print(sd.name, "t", best)
for k, v in rows2.items():
    v = 100 * np.array(v)
    print(f"{k:40s} val {v[:,0].mean():.2f} ± {v[:,0].std(ddof=1):.2f}   test {v[:,1].mean():.2f} ± {v[:,1].std(ddof=1):.2f}   per-seed test {np.round(v[:,1],2).tolist()}")

# --- lambda * log p_bal(y | cluster): the flow's clusters as an explicit product-of-experts term
tr = read_features(feat / "feature_train.h5")
rows = {}
for sd in sorted(root.glob("seed_*")):
    run = load_run(sd)
    st = run.model.stages[0]
    C = run.model.num_classes
    with torch.no_grad():
        _, cl_tr = st.route(torch.from_numpy(tr.features))
    K = st.filter.num_cluster
    # the run's train split = feature_train minus nothing (val is its own file)
    hist = np.zeros((K, C)); np.add.at(hist, (cl_tr.numpy(), tr.labels), 1)
    out = {}
    for name, fs in (("val", val), ("test", test)):
        x = torch.from_numpy(fs.features)
        with torch.no_grad():
            o = run.model(x)
            ll, cl = st.route(x)
        out[name] = (torch.log_softmax(o.logits, 1).numpy(), cl.numpy(), (ll >= st.threshold).numpy(), fs.labels)
    for alpha in (1.0,):
        lk = np.log((hist + alpha) / (hist.sum(0, keepdims=True) + K * alpha))  # log p(k | y)
        lpy = lk - np.logaddexp.reduce(lk, axis=1, keepdims=True)  # log p_bal(y | k)
        for where in ("exit", "all"):
            def z(name, lam):
                lp, cl, ex, y = out[name]
                m = ex if where == "exit" else np.ones_like(ex)
                zz = lp.copy(); zz[m] += lam * lpy[cl[m]]
                return zz
            grid = [0, 0.1, 0.25, 0.5, 0.75, 1.0]
            yv, yt = out["val"][3], out["test"][3]
            lam = max(grid, key=lambda l: (acc(z("val", l), yv), -l))
            rows.setdefault(f"+lam log p_bal(y|k) at {where}", []).append((acc(z("val", lam), yv), acc(z("test", lam), yt)))
            print(sd.name, where, "lam", lam, "test at each lam", [round(100*acc(z('test', l), yt), 2) for l in grid], "val", [round(100*acc(z('val', l), yv), 1) for l in grid])
for k, v in rows.items():
    v = 100 * np.array(v)
    print(f"{k:40s} val {v[:,0].mean():.2f} ± {v[:,0].std(ddof=1):.2f}   test {v[:,1].mean():.2f} ± {v[:,1].std(ddof=1):.2f}")
