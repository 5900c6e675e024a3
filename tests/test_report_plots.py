"""Plots a person reads correctly: class ids (or names) as ticks in frequency order with the axis
saying so, integer bin ticks, labelled colorbars and y axes, the log-likelihood histogram clipped to
a robust range with the exit side marked, the min_purity line, and evaluate-features explaining
"n/a" instead of drawing empty bars.  Figures are caught before saving (report._save)."""

import numpy as np
import pytest

from dlsa_prod import feature_eval, report

COUNTS = np.array([5, 50, 20, 80, 10])  # frequency order: 3, 1, 2, 4, 0


@pytest.fixture
def figures(monkeypatch):
    caught = []
    monkeypatch.setattr(report, "_save", lambda fig, path: caught.append(fig))
    return caught


def _scored(depth=2, n=60, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(COUNTS)
    loglik = rng.normal(0, 1, (n, depth))
    loglik[0, 0] = -3000.0  # one far outlier, as flows give
    rows = {"DLSA": {"per_class_accuracy": [0.9, 0.5, None, 1.0, 0.2]}}
    return report.Scored(labels, labels.copy(), rng.integers(1, depth + 2, n), loglik, rows)


def _ticks(ax):
    return [t.get_text() for t in ax.get_xticklabels()]


def test_class_plots_tick_class_ids_in_frequency_order(figures):
    s = _scored()
    report.plot_per_class_accuracy(s, COUNTS, None)
    report.plot_routing_by_class(s, COUNTS, 2, None)
    for fig in figures:
        ax = fig.axes[0]
        assert _ticks(ax) == ["3", "1", "2", "4", "0"]
        assert ax.get_xlabel() == "class id, sorted by training frequency (head -> tail)"
        assert ax.get_ylabel()
    names = ["zero", "one", "two", "three", "four"]
    report.plot_per_class_accuracy(s, COUNTS, None, names)
    assert _ticks(figures[-1].axes[0]) == ["three", "one", "two", "four", "zero"]
    assert figures[-1].axes[0].get_xlabel().startswith("class, sorted by training frequency")


def test_many_classes_show_every_kth_id(figures):
    counts = np.arange(100, 0, -1)
    report.plot_routing_by_class(report.Scored(np.arange(100), np.arange(100), np.ones(100, int),
                                               np.zeros((100, 1)), {}), counts, 1, None)
    ax = figures[0].axes[0]
    assert _ticks(ax)[:3] == ["0", "3", "6"] and "every 3th shown" in ax.get_xlabel()


@pytest.mark.parametrize("bins,ticks,label", [(3, ["0", "1", "2"], "frequency bin (0 = head; 1-2 classes each)"),
                                              (5, ["3", "1", "2", "4", "0"], "class id (sorted by training frequency)")])
def test_confusion_has_integer_ticks_and_a_labelled_colorbar(figures, bins, ticks, label):
    report.plot_confusion_by_frequency(_scored(), COUNTS, bins, None)
    ax, bar = figures[0].axes
    assert _ticks(ax) == ticks and [t.get_text() for t in ax.get_yticklabels()] == ticks
    assert ax.get_xlabel() == f"predicted {label}" and ax.get_ylabel() == f"true {label}"
    assert bar.get_ylabel().startswith("share of the true")


def test_loglik_histogram_is_clipped_and_marks_the_exit_side(figures):
    s = _scored()
    report.plot_loglik_hist(s, [0.5, 0.0], None, guard_q001=-2.5)
    ax1, ax2 = figures[0].axes
    lo, hi = ax1.get_xlim()
    assert lo > -10 and lo <= -2.5 and hi >= s.loglik[:, 0].max()  # the -3000 outlier does not squash it
    assert "1 below the range" in ax1.get_xlabel() and "exit ->" in ax1.get_xlabel()
    assert "on to depth 2" in ax1.get_xlabel() and "on to regular classifier" in ax2.get_xlabel()
    legend = [t.get_text() for t in ax1.get_legend().get_texts()]
    assert legend[0] == "exits here (>= threshold)" and any("input guard" in t for t in legend)
    assert ax1.get_ylabel() == "test samples"
    assert not any("input guard" in t.get_text() for t in ax2.get_legend().get_texts())  # depth 1 only


def test_robust_range_includes_the_marks():
    ll = np.r_[np.linspace(0, 1, 99), -3000]
    lo, hi = report.robust_range(ll, 2.0)
    assert -1 < lo < 0 and hi > 2.0


def test_cluster_purity_draws_min_purity(figures, tiny_run):
    from dlsa_prod.run_data import load_run_splits
    from dlsa_prod.run_dir import load_run

    run = load_run(tiny_run)
    report.plot_cluster_purity(run, load_run_splits(run).train, None)
    ax = figures[0].axes[0]
    assert any(line.get_ydata()[0] == run.cfg.filter.min_purity for line in ax.get_lines())
    assert f"min_purity {run.cfg.filter.min_purity:g}" in [t.get_text() for t in ax.get_legend().get_texts()]


@pytest.fixture
def tiny_run(tmp_path, tiny_config):
    from dlsa_prod.pipeline import run_training

    run_training(tiny_config, tmp_path / "run")
    return tmp_path / "run"


def _row(**over):
    r = {"features": "feats/a", "dim": 8, "head_share_of_filtered": None, "head_recall": None,
         "train_cluster_purity": 0.8, "pure_clusters": 3, "plain_bsm_accuracy": 0.9, "plain_bsm_few_shot": 0.5,
         "notes": feature_eval.not_available_notes(0, True, 100)}
    return {**r, **over}


def test_feature_comparison_explains_na(tmp_path, monkeypatch):
    row = _row()
    assert row["notes"] == ["head share and head recall: n/a, no many-shot (head) class: none has more than 100 "
                            "training samples (set data.many_shot lower in --config)"]
    table = feature_eval.format_feature_table([row])
    assert "| n/a | n/a |" in table and table.splitlines()[-1] == f"feats/a: {row['notes'][0]}"
    assert feature_eval.not_available_notes(2, False, 100) == [
        "head share of filtered: n/a, no test sample clears the train threshold"]
    assert feature_eval.not_available_notes(2, True, 100) == []
    import matplotlib.pyplot as plt

    caught = []
    monkeypatch.setattr(plt, "close", lambda fig: caught.append(fig))
    feature_eval.plot_feature_table([row, _row(features="feats/b", head_recall=0.4, head_share_of_filtered=0.3, notes=[])],
                                    tmp_path / "c.png")
    fig = caught[0]
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts.count("n/a") == 2  # the two missing values of a, none for b
    assert any(row["notes"][0] in t.get_text() for t in fig.texts)
    assert (tmp_path / "c.png").is_file()


def test_report_command_draws_every_plot(tmp_path, tiny_run, figures):
    report.write_report(tiny_run, tmp_path / "rep", bins=3)
    assert len(figures) == 5 and all(f.axes[0].get_ylabel() for f in figures)
