import math

import pytest
import torch

from pyro_dturbo.data import nmse_db, oracle_least_squares, support_f1


def test_nmse_db_hand_checked():
    truth = torch.tensor([3.0, 4.0])  # ||truth||^2 = 25
    assert nmse_db(truth, truth) == pytest.approx(10 * math.log10(1e-300 / 25))
    assert nmse_db(torch.tensor([3.0, 3.5]), truth) == pytest.approx(10 * math.log10(0.25 / 25))
    assert nmse_db(torch.zeros(2), truth) == pytest.approx(0.0)


def test_support_f1_hand_checked():
    truth = torch.tensor([1.0, 1.0, 0.0, 0.0])
    assert support_f1(torch.tensor([True, True, False, False]), truth) == 1.0
    # tp 1, fp 1, fn 1: 2 / 4
    assert support_f1(torch.tensor([True, False, True, False]), truth) == pytest.approx(0.5)
    assert support_f1(torch.zeros(4, dtype=torch.bool), torch.zeros(4)) == 1.0
    assert support_f1(torch.zeros(4, dtype=torch.bool), truth) == 0.0


def test_oracle_least_squares_is_exact_without_noise():
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(12, 8, generator=gen, dtype=torch.float64)
    support = torch.tensor([0, 1, 1, 0, 0, 1, 0, 0], dtype=torch.float64)
    w = torch.randn(8, generator=gen, dtype=torch.float64) * support
    estimate = oracle_least_squares(X, X @ w, support)
    assert estimate.dtype == torch.float64
    assert torch.allclose(estimate, w, atol=1e-10)
    assert torch.equal(
        oracle_least_squares(X, X @ w, torch.zeros(8)), torch.zeros(8, dtype=X.dtype)
    )
