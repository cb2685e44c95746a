"""The data containers: a generated regression problem and a classification split."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["RegressionProblem", "ClassificationData"]


@dataclass
class RegressionProblem:
    """A generated sparse regression problem ``y = X w + e``.

    :ivar X: ``(M, N)`` design, i.i.d. ``N(0, 1/M)`` entries (unit-norm columns on average).
    :ivar y: ``(M,)`` observations. :ivar weight: the true ``w``. :ivar support: the true ``s``.
    :ivar noise_precision: the true ``beta``.
    """

    X: Tensor
    y: Tensor
    weight: Tensor
    support: Tensor
    noise_precision: float


@dataclass
class ClassificationData:
    """A classification data set split into train and test.

    Inputs are always ``float32`` (whatever the default dtype) and labels ``int64``, so a data
    set costs the same memory in a float64 test suite as in a run.

    :ivar str name: the data set's name (one of :data:`~pyro_dturbo.data.datasets.DATASETS`).
    :ivar x_train: ``(n_train,) + input_shape`` inputs. :ivar y_train: ``(n_train,)`` labels.
    :ivar x_test: ``(n_test,) + input_shape`` inputs. :ivar y_test: ``(n_test,)`` labels.
    :ivar int num_classes: labels lie in ``range(num_classes)``.
    :ivar input_shape: the shape of one example, ``(64,)`` for flat digits, ``(1, 8, 8)`` as
        an image.
    :ivar support: the teacher's true support masks by layer name (teacher-student only).
    :ivar teacher_weight: the teacher's weights by layer name (teacher-student only).

    Example::

        >>> data = load_dataset("digits")
        >>> data.x_train.shape, data.num_classes
        (torch.Size([1438, 64]), 10)
    """

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    input_shape: tuple[int, ...]
    support: dict[str, Tensor] | None = None
    teacher_weight: dict[str, Tensor] | None = None

    @property
    def num_features(self) -> int:
        """The number of input features, ``prod(input_shape)``."""
        return math.prod(self.input_shape)

    def to(self, device: torch.device | str) -> ClassificationData:
        """A copy with every tensor on ``device``.

        :param device: the target device.
        :type device: torch.device or str
        :returns: a new :class:`ClassificationData`; this one is unchanged.
        :rtype: ClassificationData
        """

        def move(masks: dict[str, Tensor] | None) -> dict[str, Tensor] | None:
            return None if masks is None else {k: v.to(device) for k, v in masks.items()}

        return dataclasses.replace(
            self,
            x_train=self.x_train.to(device),
            y_train=self.y_train.to(device),
            x_test=self.x_test.to(device),
            y_test=self.y_test.to(device),
            support=move(self.support),
            teacher_weight=move(self.teacher_weight),
        )

    def flat(self) -> ClassificationData:
        """A copy whose inputs are flattened to ``(n, num_features)``.

        :returns: a new :class:`ClassificationData` with ``input_shape == (num_features,)``.
        :rtype: ClassificationData
        """
        return dataclasses.replace(
            self,
            x_train=self.x_train.reshape(len(self.x_train), self.num_features),
            x_test=self.x_test.reshape(len(self.x_test), self.num_features),
            input_shape=(self.num_features,),
        )
