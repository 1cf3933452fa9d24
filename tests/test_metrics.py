"""Unsupervised classification scores from a contingency table, on hand-made clusterings (no
solo-learn needed): the table on the device, one-to-one (Hungarian) and many-to-one accuracy,
NMI against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import normalized_mutual_info_score

from cueco_plugin.metrics import cluster_scores, contingency_table

LABELS = [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]


def scores(clusters: list[int], labels: list[int]) -> dict[str, float]:
    k, c = max(clusters) + 1, max(labels) + 1
    return cluster_scores(contingency_table(torch.tensor(clusters), torch.tensor(labels), k, c))


# ---------------------------------------------------------------- contingency table
def test_contingency_table_counts_cluster_class_pairs() -> None:
    table = contingency_table(
        torch.tensor([0, 0, 1, 2, 2, 2]), torch.tensor([1, 1, 0, 1, 0, 1]), 4, 2
    )
    assert table.dtype == torch.int64 and table.shape == (4, 2)
    assert table.tolist() == [[0, 2], [1, 0], [1, 2], [0, 0]]  # cluster 3 is empty


def test_contingency_table_leaves_out_unlabelled_and_out_of_range_labels() -> None:
    clusters = torch.tensor([0, 0, 1, 1, 1, 2])
    labels = torch.tensor([0, -1, 1, -5, 1, 3])  # -1, -5: unlabelled; 3 >= C = 3
    table = contingency_table(clusters, labels, 3, 3)
    assert table.tolist() == [[1, 0, 0], [0, 2, 0], [0, 0, 0]]
    assert int(table.sum()) == 3


def test_contingency_table_is_built_on_the_device_of_the_clusters_and_sums_over_parts() -> None:
    gen = torch.Generator().manual_seed(0)
    clusters, labels = torch.randint(5, (300,), generator=gen), torch.randint(
        -1, 4, (300,), generator=gen
    )
    whole = contingency_table(clusters, labels, 5, 4)
    assert whole.device == clusters.device
    # summing per-batch (or per-rank) tables is the table of all samples
    parts = sum(contingency_table(c, y, 5, 4) for c, y in zip(clusters.split(70), labels.split(70)))
    assert torch.equal(parts, whole)
    expected = np.zeros((5, 4), dtype=np.int64)
    for c, y in zip(clusters.tolist(), labels.tolist()):
        if y >= 0:
            expected[c, y] += 1
    np.testing.assert_array_equal(whole.numpy(), expected)


# ---------------------------------------------------------------- scores
def test_perfect_clustering_scores_one() -> None:
    assert scores(LABELS, LABELS) == {"acc": 1.0, "acc_m2o": 1.0, "nmi": 1.0}


def test_permuted_cluster_ids_still_score_one() -> None:
    permuted = [[2, 0, 1][y] for y in LABELS]  # cluster ids are arbitrary names
    assert scores(permuted, LABELS) == pytest.approx({"acc": 1.0, "acc_m2o": 1.0, "nmi": 1.0})


def test_over_clustering_is_right_many_to_one_but_penalised_one_to_one() -> None:
    # every class split into two pure clusters: K = 6 > 3 classes
    result = scores([0, 0, 1, 2, 3, 3, 4, 4, 5, 5], LABELS)
    assert result["acc_m2o"] == 1.0
    # one-to-one: only one cluster per class can be matched -> 2 + 2 + 2 of 10 correct
    assert result["acc"] == pytest.approx(6 / 10)
    assert 0.0 < result["nmi"] < 1.0


def test_one_to_one_uses_the_optimal_matching_not_the_greedy_one() -> None:
    # cluster 0 = {class 0: 3, class 1: 3}, cluster 1 = {class 0: 2}: giving cluster 0 the
    # first of its tied majority classes (class 0) would leave cluster 1 with nothing
    table = np.array([[3, 3], [2, 0]])
    # matching 0->1, 1->0 gives 3 + 2 = 5; matching 0->0, 1->1 gives 3 + 0
    assert cluster_scores(table)["acc"] == pytest.approx(5 / 8)
    # without ties: row by row, greedy takes 0->0 (5), 1->1 (1), 2->2 (1) = 7 of 15;
    # the optimum is 0->1 (4), 1->0 (4), 2->2 (1) = 9
    table = np.array([[5, 4, 0], [4, 1, 0], [0, 0, 1]])
    assert cluster_scores(table)["acc"] == pytest.approx(9 / 15)
    assert cluster_scores(table)["acc_m2o"] == pytest.approx((5 + 4 + 1) / 15)


def test_single_cluster_for_several_classes_has_zero_nmi() -> None:
    result = scores([0] * len(LABELS), LABELS)
    assert result["nmi"] == 0.0
    assert result["acc_m2o"] == pytest.approx(4 / 10)
    assert result["acc"] == pytest.approx(4 / 10)
    # one class spread over several clusters: zero as well, as in scikit-learn
    assert cluster_scores(np.array([[3], [2]]))["nmi"] == 0.0
    assert normalized_mutual_info_score([0] * 5, [0, 0, 0, 1, 1]) == 0.0


def test_accepts_numpy_tables_and_torch_tables_alike() -> None:
    table = torch.tensor([[4, 1], [0, 5]])
    assert cluster_scores(table) == cluster_scores(table.numpy())
    assert cluster_scores(table)["acc"] == pytest.approx(9 / 10)


@pytest.mark.parametrize(("k", "c"), [(2, 2), (10, 10), (30, 10), (5, 20), (1, 1)])
def test_nmi_matches_scikit_learn_on_random_partitions(k: int, c: int) -> None:
    rng = np.random.default_rng(k * 100 + c)
    labels = rng.integers(0, c, 500)
    clusters = (labels + rng.integers(0, 3, 500)) % k
    table = contingency_table(torch.from_numpy(clusters), torch.from_numpy(labels), k, c)
    assert cluster_scores(table)["nmi"] == pytest.approx(
        normalized_mutual_info_score(labels, clusters), abs=1e-10
    )


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (np.array([1, 2, 3]), r"2-D .* got shape \(3,\)"),
        (np.zeros((2, 2, 2)), r"got shape \(2, 2, 2\)"),
        (np.array([[1, -1], [0, 2]]), r"count matrix .* got shape \(2, 2\)"),
        (np.zeros((3, 4)), r"at least one sample, got shape \(3, 4\) and total 0"),
        (torch.zeros(2, 2, dtype=torch.long), r"at least one sample, .* total 0"),
    ],
)
def test_a_bad_table_raises_value_error(table: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cluster_scores(table)  # type: ignore[arg-type]
