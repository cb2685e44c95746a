"""The experiment drivers behind the ``dturbo`` command and the benchmarks.

- :mod:`~pyro_dturbo.experiments.regression`: Turbo-VBI against SVI, NUTS and the oracle on
  clustered sparse regression (:func:`compare_regression`, :func:`compare_with_nuts`), their
  summaries, table, plot and JSON (:func:`save_comparison`).
- :mod:`~pyro_dturbo.experiments.compress`: one network compression run
  (:class:`CompressConfig`, :func:`run_compression`), the dense reference
  (:func:`train_dense`) and the baselines (:func:`magnitude_baseline`, :func:`svi_baseline`).
- :mod:`~pyro_dturbo.experiments.tables`: what the drivers and the benchmarks share to report
  numbers (:func:`median`, :func:`summarise`, :func:`format_table`, :func:`machine_info`,
  :func:`write_json`).
"""

from pyro_dturbo.experiments.compress import (
    COMPRESS_NETWORK,
    CompressConfig,
    magnitude_baseline,
    network_prior,
    run_compression,
    svi_baseline,
    train_dense,
)
from pyro_dturbo.experiments.regression import (
    METHODS,
    SUCCESS_MARGIN_DB,
    TURBO_METHODS,
    compare_regression,
    compare_with_nuts,
    format_regression_table,
    grid_layout,
    plot_phase_transition,
    regression_priors,
    save_comparison,
    smallest_successful_m,
    summarise_nuts,
    summarise_regression,
)
from pyro_dturbo.experiments.tables import (
    format_table,
    machine_info,
    median,
    summarise,
    write_json,
)

__all__ = [
    "METHODS",
    "TURBO_METHODS",
    "SUCCESS_MARGIN_DB",
    "grid_layout",
    "regression_priors",
    "compare_regression",
    "summarise_regression",
    "smallest_successful_m",
    "format_regression_table",
    "plot_phase_transition",
    "compare_with_nuts",
    "summarise_nuts",
    "save_comparison",
    "COMPRESS_NETWORK",
    "CompressConfig",
    "network_prior",
    "train_dense",
    "run_compression",
    "magnitude_baseline",
    "svi_baseline",
    "median",
    "summarise",
    "format_table",
    "machine_info",
    "write_json",
]
