import numpy as np
import pytest

from dlsa_prod.metrics import classification_metrics, format_table, routing_share, shot_groups


def test_shot_groups_thresholds():
    g = shot_groups(np.array([150, 101, 100, 20, 19, 5]), many=100, few=20)
    assert g["many"].tolist() == [0, 1] and g["medium"].tolist() == [2, 3] and g["few"].tolist() == [4, 5]


def test_metrics_hand_computed_and_empty_group_is_null():
    counts = np.array([200, 50, 60])  # no few-shot class
    y = np.array([0, 0, 1, 1, 2, 2])
    p = np.array([0, 0, 1, 0, 0, 0])
    m = classification_metrics(y, p, counts)
    assert m["accuracy"] == pytest.approx(3 / 6)
    assert m["many_shot"] == pytest.approx(1.0)
    assert m["medium_shot"] == pytest.approx((0.5 + 0.0) / 2)
    assert m["few_shot"] is None
    assert m["balanced_accuracy"] == pytest.approx(0.5)
    assert m["per_class_accuracy"] == [1.0, 0.5, 0.0]
    assert "n/a" in format_table({"x": m})


def test_per_class_null_when_class_absent_from_eval_split():
    m = classification_metrics(np.array([0, 0]), np.array([0, 1]), np.array([10, 10]))
    assert m["per_class_accuracy"] == [0.5, None]


def test_routing_share():
    assert routing_share(np.array([1, 1, 2, 3]), depth=2) == [0.5, 0.25, 0.25]


def test_routing_by_class_rows_sum_to_one_per_class():
    from dlsa_prod.metrics import format_routing_by_class, routing_by_class

    rows = routing_by_class(np.array([1, 1, 2, 3, 3]), np.array([0, 1, 1, 0, 2]), depth=2, num_classes=4)
    assert rows == [[0.5, 0.5, 0.0, None], [0.0, 0.5, 0.0, None], [0.5, 0.0, 1.0, None]]
    assert "regular" in format_routing_by_class(rows) and "n/a" in format_routing_by_class(rows)


def test_gap_line_and_marked_table():
    from dlsa_prod.metrics import gap_line

    test = {"dlsa": {"accuracy": 0.7, "many_shot": 0.9, "medium_shot": None, "few_shot": 0.5},
            "plain_BSM": {"accuracy": 0.75, "many_shot": 0.8, "medium_shot": 0.6, "few_shot": 0.6}}
    assert gap_line(test, "plain_BSM") == ("DLSA - plain BSM: overall -5.00, many +10.00, medium n/a, "
                                           "few -10.00 (points)")
    table = format_table({"DLSA": test["dlsa"], "plain BSM": test["plain_BSM"]}, best="plain BSM")
    assert "plain BSM *" in table and table.endswith("* best on val")


def test_score_models_picks_best_on_val_not_on_test(monkeypatch):
    """best_on_val comes from the val split (or from `select` when given), never from test."""
    from types import SimpleNamespace

    from dlsa_prod import pipeline
    from dlsa_prod.data import FeatureSet, Splits

    def fs(name, n=40):
        return FeatureSet(np.zeros((n, 2), np.float32), np.repeat(np.arange(2), n // 2), name)

    splits = Splits(fs("train"), fs("val"), fs("test"), 2)
    # the winner per split: DLSA wins on test only, CE on val, BSM on the selection part
    winner = {"val": "plain_CE", "test": "dlsa", "select": "plain_BSM"}

    def fake_evaluate(model, baselines, f, counts, device, many, few):
        return {k: {"accuracy": 0.9 if k == winner[f.source] else 0.5} for k in ("dlsa", "plain_CE", "plain_BSM")}

    def fake_logits(dlsa, baselines, f, device):  # the winner right everywhere and confident, the others at chance
        right = np.eye(2)[f.labels] * 4.0
        return {k: right if f"plain_{k}" == winner[f.source] or k == winner[f.source] else np.zeros((len(f.labels), 2))
                for k in ("dlsa", "CE", "BSM")}

    monkeypatch.setattr(pipeline, "evaluate", fake_evaluate)
    monkeypatch.setattr(pipeline, "method_val_logits", fake_logits)
    base = SimpleNamespace(model=None, epoch=1, val_accuracy=0.5, info={})
    models = SimpleNamespace(dlsa=SimpleNamespace(model=SimpleNamespace(depth=1), depth_reports=[],
                                                  train_exit_depth=np.ones(40, np.int64)),
                             baselines={"CE": base, "BSM": base}, baseline_models={"CE": None, "BSM": None},
                             dropped={})
    cfg = SimpleNamespace(seed=0, data=SimpleNamespace(many_shot=100, few_shot=20))
    assert pipeline.score_models(models, splits, cfg, "cpu")["best_on_val"]["model"] == "CE"
    assert pipeline.score_models(models, splits, cfg, "cpu", select=fs("select"))["best_on_val"]["model"] == "BSM"
