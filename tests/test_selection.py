"""The shipping rule (selection.py): continuous ranking of the baselines, paired bootstrap for DLSA."""

import numpy as np

from dlsa_prod.selection import paired_interval, select_model, shipped_model, val_scores


def _logits(labels, wrong, confidence, c=4):
    """Logits right on every sample except the indices in `wrong`, with margin `confidence`."""
    pred = labels.copy()
    pred[wrong] = (labels[wrong] + 1) % c
    return np.eye(c)[pred] * confidence


def test_val_scores_are_class_balanced():
    y = np.array([0] * 9 + [1])
    s = val_scores(_logits(y, [9], 3.0, 2), y, 2)
    assert s["accuracy"] == 0.9 and s["balanced_accuracy"] == 0.5
    assert s["balanced_log_loss"] > val_scores(_logits(y, [0], 3.0, 2), y, 2)["balanced_log_loss"]


def test_tied_baselines_are_ranked_by_log_loss_not_list_order():
    y = np.repeat(np.arange(4), 25)
    logits = {"dlsa": _logits(y, [0, 1, 2, 3, 4], 2.0), "CE": _logits(y, [0, 1, 2], 0.5),
              "BSM": _logits(y, [0, 1, 2], 3.0), "LA": _logits(y, [5, 6, 7], 1.0)}
    rec = select_model(logits, y, 4)
    assert rec["best_baseline"] == "BSM" and rec["model"] == "BSM"
    assert set(rec["scores"]) == {"dlsa", "CE", "BSM", "LA"} and "log-loss" in rec["rule"]


def test_dlsa_ships_only_when_the_paired_interval_clears_zero():
    y = np.repeat(np.arange(4), 25)
    base = _logits(y, list(range(0, 100, 4))[:12], 2.0)  # 12 errors
    by_one = select_model({"dlsa": _logits(y, list(range(0, 100, 4))[:11], 2.0), "BSM": base}, y, 4)
    assert by_one["model"] == "BSM"  # one image is not evidence
    low, high = by_one["dlsa_minus_baseline"]["low"], by_one["dlsa_minus_baseline"]["high"]
    assert low <= 0 < high and "cannot separate them" in by_one["note"] and "interval" in by_one["note"]
    clear = select_model({"dlsa": _logits(y, [], 2.0), "BSM": base}, y, 4)
    assert clear["model"] == "dlsa" and clear["dlsa_minus_baseline"]["low"] > 0 and clear["note"] is None
    worse = select_model({"dlsa": _logits(y, list(range(40)), 2.0), "BSM": base}, y, 4)
    assert worse["model"] == "BSM" and "baseline is better" in worse["note"]
    same = select_model({"dlsa": base, "BSM": base}, y, 4)
    assert same["model"] == "BSM" and "cannot separate them" in same["note"]


def test_paired_interval_is_seeded_and_paired():
    y = np.repeat(np.arange(2), 30)
    a, b = np.ones(60, bool), np.ones(60, bool)
    b[:6] = False
    point, low, high = paired_interval(a, b, y, seed=3)
    assert (point, low, high) == paired_interval(a, b, y, seed=3)
    assert low <= point <= high and point == 0.1
    assert paired_interval(a, a, y) == (0.0, 0.0, 0.0)  # identical models: no spread (paired)


def test_shipped_model_reads_old_and_new_entries():
    assert shipped_model("BSM") == "BSM" and shipped_model({"model": "dlsa"}) == "dlsa"
    assert shipped_model(None) is None and shipped_model({}) is None and shipped_model("") is None
