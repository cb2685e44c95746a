"""Data: generated problems with a known truth, classification sets, and federated partitions.

- :mod:`~pyro_dturbo.data.containers`: :class:`RegressionProblem`, :class:`ClassificationData`.
- :mod:`~pyro_dturbo.data.synthetic`: :func:`clustered_sparse_regression` (a compressed-sensing
  problem with a Markov-chain support) and :func:`teacher_student` (a sparse linear teacher
  with a known support).
- :mod:`~pyro_dturbo.data.metrics`: :func:`nmse_db`, :func:`support_f1` and the reference
  :func:`oracle_least_squares`.
- :mod:`~pyro_dturbo.data.datasets`: :func:`load_dataset` for every name in :data:`DATASETS`;
  :mod:`~pyro_dturbo.data.images` reads the image sets in torchvision's layout.
- :mod:`~pyro_dturbo.data.partition`: :func:`partition` of example indices among federated
  clients (IID, Dirichlet label skew, label shards).
"""

from pyro_dturbo.data.containers import ClassificationData, RegressionProblem
from pyro_dturbo.data.datasets import DATASETS, load_dataset
from pyro_dturbo.data.metrics import nmse_db, oracle_least_squares, support_f1
from pyro_dturbo.data.partition import PARTITION_SCHEMES, partition
from pyro_dturbo.data.synthetic import clustered_sparse_regression, teacher_student

__all__ = [
    "RegressionProblem",
    "clustered_sparse_regression",
    "oracle_least_squares",
    "nmse_db",
    "support_f1",
    "ClassificationData",
    "DATASETS",
    "PARTITION_SCHEMES",
    "load_dataset",
    "teacher_student",
    "partition",
]
