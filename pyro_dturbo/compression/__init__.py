"""From a trained sparse Bayesian network to a model one can ship, and what it costs.

After Turbo-VBI the support posterior ``q(s_n = 1)`` says which weights are active. One module
per job:

- :mod:`~pyro_dturbo.compression.prune`: :func:`prune` sets the masks (``q(s = 1) > 0.5``, or
  ``|mu| > 0.01``); :func:`magnitude_masks` / :func:`apply_masks` are the unstructured
  baseline (global magnitude pruning to a density).
- :mod:`~pyro_dturbo.compression.export`: :func:`to_plain` (plain ``nn.Linear`` /
  ``nn.Conv2d`` layers holding the pruned posterior mean) and :func:`export_compact` (a smaller
  dense network with the dead units removed, led by an :class:`InputSelect` if inputs go),
  :func:`save_compact` / :func:`load_compact` (one file, read back with
  ``weights_only=True``).
- :mod:`~pyro_dturbo.compression.cost`: :func:`count_macs` and :func:`sparse_macs`.
- :mod:`~pyro_dturbo.compression.codec`: the sparse codec, dense, element-wise (COO) and
  run-length payloads as real ``bytes`` with exact decoders, and their byte counts
  (:func:`weight_bytes`).
- :mod:`~pyro_dturbo.compression.report`: :func:`compression_report` (a JSON-ready dict) and
  :func:`plot_support` (:func:`support_figure` unsaved).

References

[1] A. Xia, I. W. Tsang, V. K. N. Lau, "Structured Bayesian Compression for Deep Neural Networks
    Based on the Turbo-VBI Approach", IEEE TSP 2023 (arXiv:2302.10483), Sec. V-VI.
"""

from pyro_dturbo.compression.codec import (
    FORMATS,
    VALUE_DTYPES,
    decode,
    decode_dense,
    decode_elementwise,
    decode_run_length,
    encode,
    encode_dense,
    encode_elementwise,
    encode_run_length,
    run_length_decode,
    run_length_encode,
    weight_bytes,
)
from pyro_dturbo.compression.cost import count_macs, sparse_macs
from pyro_dturbo.compression.export import (
    COMPACT_MODULES,
    InputSelect,
    export_compact,
    load_compact,
    save_compact,
    to_plain,
)
from pyro_dturbo.compression.prune import DEFAULT_THRESHOLDS, apply_masks, magnitude_masks, prune
from pyro_dturbo.compression.report import (
    LayerReport,
    compression_report,
    plot_support,
    support_figure,
)

__all__ = [
    "DEFAULT_THRESHOLDS",
    "prune",
    "magnitude_masks",
    "apply_masks",
    "to_plain",
    "InputSelect",
    "export_compact",
    "COMPACT_MODULES",
    "save_compact",
    "load_compact",
    "count_macs",
    "sparse_macs",
    "FORMATS",
    "VALUE_DTYPES",
    "encode",
    "decode",
    "encode_dense",
    "decode_dense",
    "encode_elementwise",
    "decode_elementwise",
    "encode_run_length",
    "decode_run_length",
    "run_length_encode",
    "run_length_decode",
    "weight_bytes",
    "LayerReport",
    "compression_report",
    "plot_support",
    "support_figure",
]
