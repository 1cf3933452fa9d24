"""Unsupervised classification metrics on hand-made clusterings (no solo-learn needed)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from cueco_plugin.cluster_metrics import (
    cluster_accuracy_many_to_one,
    cluster_accuracy_one_to_one,
    cluster_metrics,
    contingency_matrix,
    normalized_mutual_info,
)

LABELS = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])


def test_perfect_clustering_scores_one() -> None:
    assert cluster_metrics(LABELS, LABELS) == {"acc": 1.0, "acc_m2o": 1.0, "nmi": 1.0}


def test_permuted_cluster_ids_still_score_one() -> None:
    permuted = np.array([2, 0, 1])[LABELS]  # cluster ids are arbitrary names
    assert cluster_metrics(permuted, LABELS) == pytest.approx(
        {"acc": 1.0, "acc_m2o": 1.0, "nmi": 1.0}
    )


def test_over_clustering_is_right_many_to_one_but_penalised_one_to_one() -> None:
    # every class split into two pure clusters: K = 6 > 3 classes
    preds = np.array([0, 0, 1, 2, 3, 3, 4, 4, 5, 5])
    assert cluster_accuracy_many_to_one(preds, LABELS) == 1.0
    # one-to-one: only one cluster per class can be matched -> 2 + 2 + 2 of 10 correct
    assert cluster_accuracy_one_to_one(preds, LABELS) == pytest.approx(6 / 10)
    assert 0.0 < normalized_mutual_info(preds, LABELS) < 1.0


def test_one_to_one_uses_the_optimal_matching_not_the_greedy_one() -> None:
    # cluster 0 = {class 0: 3, class 1: 3}, cluster 1 = {class 0: 2}: giving cluster 0 the
    # first of its tied majority classes (class 0) would leave cluster 1 with nothing.
    preds = np.array([0, 0, 0, 0, 0, 0, 1, 1])
    labels = np.array([1, 1, 1, 0, 0, 0, 0, 0])
    # matching 0->1, 1->0 gives 3 + 2 = 5; matching 0->0, 1->? (class 0 taken) gives 3 + 0
    assert cluster_accuracy_one_to_one(preds, labels) == pytest.approx(5 / 8)


def test_single_cluster_for_several_classes_has_zero_nmi() -> None:
    preds = np.zeros_like(LABELS)
    assert normalized_mutual_info(preds, LABELS) == 0.0
    assert cluster_accuracy_many_to_one(preds, LABELS) == pytest.approx(4 / 10)
    assert cluster_accuracy_one_to_one(preds, LABELS) == pytest.approx(4 / 10)


def test_contingency_matrix_counts_cluster_class_pairs() -> None:
    table = contingency_matrix([0, 0, 1, 2], [1, 1, 0, 1])
    np.testing.assert_array_equal(table, [[0, 2], [1, 0], [0, 1]])


def test_accepts_torch_tensors() -> None:
    preds = torch.tensor([1, 1, 0, 0])
    labels = torch.tensor([0, 0, 1, 1])
    assert cluster_metrics(preds, labels)["acc"] == 1.0


@pytest.mark.skipif(importlib.util.find_spec("sklearn") is None, reason="scikit-learn missing")
def test_nmi_matches_scikit_learn_on_random_partitions() -> None:
    from sklearn.metrics import normalized_mutual_info_score

    rng = np.random.default_rng(0)
    for k, c in [(2, 2), (10, 10), (30, 10), (5, 20)]:
        labels = rng.integers(0, c, 500)
        preds = (labels + rng.integers(0, 3, 500)) % k
        assert normalized_mutual_info(preds, labels) == pytest.approx(
            normalized_mutual_info_score(labels, preds), abs=1e-10
        )


@pytest.mark.parametrize(
    ("preds", "labels", "message"),
    [
        ([0, 1], [0], "same length"),
        ([], [], "must not be empty"),
        ([0, -1], [0, 1], "predictions must be >= 0"),
        ([0.5, 1.0], [0, 1], "predictions must hold integers"),
        ([[0, 1]], [[0, 1]], "predictions must be 1-D"),
    ],
)
def test_bad_inputs_raise_value_error(preds, labels, message) -> None:
    with pytest.raises(ValueError, match=message):
        cluster_metrics(preds, labels)
