"""Metrics: hand-computed accuracy-matrix values, uncertainty identities, ECE and AUROC."""
import itertools
import math

import numpy as np
import pytest
import torch

from mesu_snn import metrics as M

R3 = [[0.9, None, None],
      [0.6, 0.8, None],
      [0.5, 0.7, 0.95]]


def test_accuracy_matrix_metrics_by_hand():
    assert M.average_accuracy(R3) == pytest.approx((0.5 + 0.7 + 0.95) / 3)
    assert M.average_accuracy_curve(R3).tolist() == pytest.approx([0.9, 0.7, (0.5 + 0.7 + 0.95) / 3])
    assert M.backward_transfer(R3) == pytest.approx(((0.5 - 0.9) + (0.7 - 0.8)) / 2)
    # forgetting: task 0 best 0.9 -> 0.5; task 1 best 0.8 -> 0.7
    assert M.forgetting(R3) == pytest.approx((0.4 + 0.1) / 2)
    assert M.learning_accuracy(R3).tolist() == pytest.approx([0.9, 0.8, 0.95])
    assert M.average_last_k(R3, 2) == pytest.approx((0.7 + 0.95) / 2)
    assert M.average_last_k(R3, 3) == pytest.approx(M.average_accuracy(R3))


def test_forgetting_uses_the_best_earlier_accuracy_not_the_first():
    R = [[0.5, None, None], [0.9, 0.7, None], [0.6, 0.7, 0.8]]   # task 0 improved after task 1
    assert M.forgetting(R) == pytest.approx(((0.9 - 0.6) + 0.0) / 2)
    assert M.backward_transfer(R) == pytest.approx(((0.6 - 0.5) + 0.0) / 2)


def test_single_task_and_summary():
    assert M.backward_transfer([[0.7]]) == 0.0 and M.forgetting([[0.7]]) == 0.0
    s = M.summarize(R3, last_k=5)
    assert s["last_k"] == 3 and s["accuracy_matrix"][0][1] is None
    assert s["learning_accuracy"] == pytest.approx((0.9 + 0.8 + 0.95) / 3)
    assert s["learning_accuracy_per_task"] == pytest.approx([0.9, 0.8, 0.95])


@pytest.mark.parametrize("bad", [[[0.5, 0.2]], [[None]], [[0.5, None], [None, 0.3]], [[1.5]], []])
def test_bad_matrices_raise(bad):
    with pytest.raises(ValueError):
        M.average_accuracy(bad)


def test_last_k_range():
    with pytest.raises(ValueError):
        M.average_last_k(R3, 0)
    with pytest.raises(ValueError):
        M.average_last_k(R3, 4)


def test_entropy_split_identities():
    g = torch.Generator().manual_seed(0)
    out = torch.randn(6, 20, 5, generator=g) * 2
    u = M.uncertainty_split(out)
    assert torch.allclose(u["total"], u["aleatoric"] + u["epistemic"])
    assert (u["epistemic"] >= 0).all() and (u["total"] <= math.log(5) + 1e-9).all()
    # identical samples: no epistemic part; one sample: none either
    same = out[:1].expand(4, -1, -1)
    assert torch.allclose(M.mutual_information(same), torch.zeros(20, dtype=torch.float64), atol=1e-12)
    assert torch.equal(M.mutual_information(out[:1]), torch.zeros(20, dtype=torch.float64))
    # two confident samples that disagree: total = log 2, aleatoric ~ 0, MI ~ log 2
    dis = torch.tensor([[[50.0, 0.0]], [[0.0, 50.0]]])
    assert M.predictive_entropy(dis).item() == pytest.approx(math.log(2), abs=1e-6)
    assert M.aleatoric_entropy(dis).item() == pytest.approx(0.0, abs=1e-6)
    assert M.mutual_information(dis).item() == pytest.approx(math.log(2), abs=1e-6)


def test_accuracy_uses_the_model_average():
    out = torch.tensor([[[3.0, 0.0]], [[0.0, 1.0]]])     # sample mean favours class 0
    assert M.accuracy(out, torch.tensor([0])) == 1.0
    with pytest.raises(ValueError):
        M.accuracy(out, torch.tensor([0, 1]))


def test_ece_by_hand():
    # four predictions, confidences 0.9, 0.9, 0.6, 0.6 (one sample): bins (0.8,0.9] and (0.5,0.6] with 15 bins?
    p = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    out = torch.log(p).unsqueeze(0)
    y = torch.tensor([0, 1, 0, 0])
    # 10 bins: conf 0.9 -> bin (0.8, 0.9]: acc 1/2, conf 0.9; conf 0.6 -> bin (0.5, 0.6]: acc 1/2, conf 0.6
    expected = 0.5 * abs(0.5 - 0.9) + 0.5 * abs(0.5 - 0.6)
    assert M.expected_calibration_error(out, y, n_bins=10) == pytest.approx(expected)
    # perfectly confident and right: 0
    assert M.expected_calibration_error(torch.tensor([[[100.0, 0.0]]]), torch.tensor([0])) == pytest.approx(0.0)
    with pytest.raises(ValueError):
        M.expected_calibration_error(out, y, n_bins=0)


def _auroc_brute(a, b):
    return np.mean([1.0 if o > i else 0.5 if o == i else 0.0 for i, o in itertools.product(a, b)])


def test_auroc_matches_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(5):
        a = rng.integers(0, 6, size=17).astype(float)
        b = rng.integers(2, 8, size=11).astype(float)
        assert M.auroc(a, b) == pytest.approx(_auroc_brute(a, b))
    assert M.auroc([0, 1], [2, 3]) == 1.0 and M.auroc([2, 3], [0, 1]) == 0.0
    assert M.auroc(torch.zeros(3), torch.zeros(2)) == 0.5
    with pytest.raises(ValueError):
        M.auroc([], [1.0])
    with pytest.raises(ValueError):
        M.auroc([float("nan")], [1.0])


def test_auroc_and_ece_on_known_cases():
    """AUROC orientation: OOD (positive) scored higher -> 1, lower -> 0, identical -> 0.5; ECE
    of a hand-computed case."""
    from mesu_snn import metrics as Mx
    assert Mx.auroc([0.1, 0.2], [0.8, 0.9]) == 1.0
    assert Mx.auroc([0.8, 0.9], [0.1, 0.2]) == 0.0
    assert Mx.auroc([0.5, 0.5], [0.5]) == 0.5
    # two examples, one sample: confidences 0.9 (correct) and 0.6 (wrong) -> bins of width 1/15:
    # ECE = 1/2·|1 − 0.9| + 1/2·|0 − 0.6| = 0.35
    p = torch.tensor([[[0.9, 0.1], [0.4, 0.6]]])
    out = p.log()
    ece = Mx.expected_calibration_error(out, torch.tensor([0, 0]))
    assert abs(ece - 0.35) < 1e-6
