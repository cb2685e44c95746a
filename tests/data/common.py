"""Helpers shared by the data tests."""

from __future__ import annotations

import torch

from pyro_dturbo.data import ClassificationData


def assert_well_formed(data: ClassificationData) -> None:
    assert data.x_train.dtype == torch.float32 and data.x_test.dtype == torch.float32
    assert data.y_train.dtype == torch.int64 and data.y_test.dtype == torch.int64
    assert data.x_train.shape == (len(data.y_train),) + data.input_shape
    assert data.x_test.shape == (len(data.y_test),) + data.input_shape
    for y in (data.y_train, data.y_test):
        assert int(y.min()) >= 0 and int(y.max()) < data.num_classes
    assert torch.isfinite(data.x_train).all() and torch.isfinite(data.x_test).all()
