import math

import pytest
import torch

from pyro_dturbo.data import clustered_sparse_regression, teacher_student
from tests.data.common import assert_well_formed as _assert_well_formed

# ---- teacher-student ---------------------------------------------------------------------


def test_teacher_support_and_labels_follow_the_teacher():
    data = teacher_student(num_train=2000, num_test=500, in_features=32, num_classes=4, seed=5)
    _assert_well_formed(data)
    assert data.support is not None and data.teacher_weight is not None
    mask, weight = data.support["fc1"], data.teacher_weight["fc1"]
    assert mask.dtype == torch.bool and mask.shape == (4, 32)
    assert mask.any(dim=-1).all()
    assert torch.equal(weight != 0, mask)
    assert weight.abs()[mask].min() >= 1.5  # weight_scale / 2
    for x, y in ((data.x_train, data.y_train), (data.x_test, data.y_test)):
        accuracy = float(((x @ weight.T).argmax(dim=-1) == y).double().mean())
        assert accuracy > 0.6  # chance is about 1/4


def test_teacher_rows_never_empty_even_when_sparse():
    data = teacher_student(num_train=10, num_test=10, in_features=5, num_classes=50, p01=0.01)
    assert data.support is not None
    assert data.support["fc1"].any(dim=-1).all()


def test_teacher_is_reproducible_and_ignores_default_dtype():
    a = teacher_student(num_train=50, num_test=20, seed=2)
    torch.set_default_dtype(torch.float32)
    try:
        b = teacher_student(num_train=50, num_test=20, seed=2)
    finally:
        torch.set_default_dtype(torch.float64)
    c = teacher_student(num_train=50, num_test=20, seed=3)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert a.support is not None and b.support is not None and c.support is not None
    assert torch.equal(a.support["fc1"], b.support["fc1"])
    assert not torch.equal(a.x_train, c.x_train)


# ---- clustered sparse regression ---------------------------------------------------------


def test_clustered_regression_shapes_snr_and_truth():
    problem = clustered_sparse_regression(200, 300, snr_db=20.0, seed=3)
    assert problem.X.shape == (200, 300) and problem.y.shape == (200,)
    assert problem.X.dtype == torch.float64
    support = problem.support
    assert set(support.unique().tolist()) <= {0.0, 1.0} and support.any()
    assert torch.equal(problem.weight != 0, support > 0.5)
    signal = problem.X @ problem.weight
    noise = problem.y - signal
    measured_snr = 10 * math.log10(float(signal.pow(2).mean()) / float(noise.pow(2).mean()))
    assert abs(measured_snr - 20.0) < 1.5
    assert problem.noise_precision == pytest.approx(
        1 / (float(signal.pow(2).mean()) / 10**2.0), rel=1e-12
    )


def test_clustered_regression_is_reproducible_and_leaves_global_rng():
    state = torch.get_rng_state()
    a = clustered_sparse_regression(20, 40, seed=1, dtype=torch.float32)
    assert torch.equal(torch.get_rng_state(), state)
    b = clustered_sparse_regression(20, 40, seed=1, dtype=torch.float32)
    assert a.X.dtype == torch.float32
    assert torch.equal(a.X, b.X) and torch.equal(a.y, b.y) and torch.equal(a.support, b.support)
    assert not torch.equal(a.X, clustered_sparse_regression(20, 40, seed=2).X.float())


@pytest.mark.parametrize("kwargs", [{"num_obs": 0}, {"num_weights": 0}, {"p01": 0.0}, {"p10": 1.0}])
def test_clustered_regression_rejects_bad_arguments(kwargs):
    args = {"num_obs": 10, "num_weights": 10, **kwargs}
    with pytest.raises(ValueError):
        clustered_sparse_regression(**args)
