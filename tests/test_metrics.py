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
