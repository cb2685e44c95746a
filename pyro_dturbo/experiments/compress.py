"""One compression experiment, end to end: data, dense network, Turbo-VBI, pruning, report.

:func:`run_compression` is what ``dturbo compress``, ``benchmarks/compress.py`` and the
tutorial call; :class:`CompressConfig` holds its settings, the Turbo-VBI ones as a
:class:`~pyro_dturbo.inference.network.NetworkConfig`. It trains the dense network first (the
reference and the initialisation), then Turbo-VBI from its weights, prunes at ``q(s) > 0.5``,
exports the compact model and reports.
The baselines of the benchmark live here too, each as one function of the same inputs:
magnitude pruning of the dense network to a given density (with the same fine-tuning epochs),
mean-field SVI (Pyro ``AutoNormal``) under a Gaussian prior, pruned by ``|mu|``, and sparse
variational dropout (:mod:`~pyro_dturbo.inference.sparse_vd`), which finds its own density.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import pyro
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from pyro_dturbo.compression import (
    apply_masks,
    compression_report,
    export_compact,
    magnitude_masks,
    plot_support,
    prune,
    save_compact,
    to_plain,
)
from pyro_dturbo.data import ClassificationData, load_dataset
from pyro_dturbo.data.datasets import DATASETS
from pyro_dturbo.data.images import IMAGE_DATASETS
from pyro_dturbo.experiments.tables import write_json
from pyro_dturbo.inference.network import NetworkConfig, evaluate_accuracy, fit_network
from pyro_dturbo.inference.sparse_vd import fit_sparse_vd, sparse_vd_layers
from pyro_dturbo.models.layers import network_model, sparse_layers, to_sparse_bayes
from pyro_dturbo.models.prior import SparsePrior
from pyro_dturbo.models.support import IndependentSupport
from pyro_dturbo.models.zoo import ZOO, build_model, layer_names

__all__ = [
    "COMPRESS_NETWORK",
    "CompressConfig",
    "ConfigError",
    "check_compression",
    "support_title",
    "network_prior",
    "train_dense",
    "run_compression",
    "magnitude_baseline",
    "svi_baseline",
    "sparse_vd_baseline",
]

FLAT_MODELS = ("mlp", "lenet300100")


def network_prior(kind: str = "chain", **overrides: Any) -> SparsePrior:
    """The benchmark's network priors by name: ``"chain"`` (rows, ``p01 = 0.05``,
    ``p10 = 0.2``), ``"independent"`` (``p = 0.2``, the chain's stationary density), or
    ``"grid"`` (the authors' TensorFlow demo's (github.com/cxiaab/D-turbo-vbi-FL, commit 8a89cc7)
    row-and-column MRF); active ``Gamma(1, 1)``, inactive
    ``Gamma(1, 1e-4)``.
    """
    from pyro_dturbo.models.support import GridMRFSupport, MarkovChainSupport

    gammas: dict[str, Any] = {"active": (1.0, 1.0), "inactive": (1.0, 1e-4)}
    gammas.update(overrides)
    supports = {
        "chain": lambda: MarkovChainSupport(0.05, 0.2),
        "independent": lambda: IndependentSupport(0.2),
        "grid": lambda: GridMRFSupport(0.05, 0.2, bp_iters=20),
    }
    if kind not in supports:
        raise ValueError(f"unknown prior {kind!r}; choose one of {sorted(supports)} or a YAML file")
    return SparsePrior(supports[kind](), **gammas)


#: The Turbo-VBI settings of a compression run by default: 100 epochs, the last 50 of them
#: fine-tuning under the frozen support (3 warm-up, so 47 decide the support, as the 80 epochs
#: with 30 fine-tuning that ``benchmarks/compress.py`` runs). Chosen by
#: ``benchmarks/compress_defaults.py`` on seeds 3 and 4 of the digits MLP and of LeNet-300-100 on
#: mnist-5k, then checked on seeds 0-2 (``results/compress_defaults.json``): the support, so
#: the density and FLOPs, is that of 30 fine-tuning epochs; the accuracy lost is no higher on
#: any digits seed (0-4) and lower on 4 of the 5 LeNet seeds, but still above 1 point on most.
COMPRESS_NETWORK = NetworkConfig(
    epochs=100, batch_size=64, lr=2e-3, warmup_epochs=3, finetune_epochs=50
)


@dataclass
class CompressConfig:
    """Settings of one compression run (defaults: the digits MLP of the README).

    ``network`` holds the Turbo-VBI settings (:class:`~pyro_dturbo.inference.network.
    NetworkConfig`, default :data:`COMPRESS_NETWORK`): its ``epochs`` include the last
    ``finetune_epochs`` that train ``q(w)`` under the frozen support, its ``batch_size`` is also
    the dense training's, and ``weight_prior`` / ``kl_weight`` are as in
    :class:`~pyro_dturbo.inference.network.NetworkModuleA`. ``seed`` seeds the whole run (the
    split, the initial weights, the dense training and Turbo-VBI): the fit runs with
    ``network.replace(seed=seed)``.

    Example::

        >>> config = CompressConfig(hidden=(64,), network=COMPRESS_NETWORK.replace(epochs=20))
        >>> report = run_compression(config, "results/run")
    """

    dataset: str = "digits"
    model: str = "mlp"
    hidden: tuple[int, ...] = (256, 256)
    prior: str | SparsePrior = "chain"
    network: NetworkConfig = field(default_factory=lambda: COMPRESS_NETWORK)
    dense_epochs: int = 30
    dense_lr: float = 3e-3
    seed: int = 0
    data_root: str | None = None
    download: bool = False
    device: str = "cpu"
    dataset_kwargs: dict[str, Any] = field(default_factory=dict)

    def resolved_prior(self) -> SparsePrior:
        """The prior: a :class:`SparsePrior` as given, a YAML file, or :func:`network_prior`."""
        if isinstance(self.prior, SparsePrior):
            return self.prior
        if self.prior.endswith((".yaml", ".yml")):
            return SparsePrior.from_yaml(Path(self.prior))
        return network_prior(self.prior)

    def network_config(self) -> NetworkConfig:
        """The Turbo-VBI settings the run uses: ``network`` with this run's ``seed``."""
        return self.network.replace(seed=self.seed)

    def to_dict(self) -> dict[str, Any]:
        """A flat JSON-ready dict: the run's fields, the resolved prior's dict under
        ``"prior"`` and every field of :meth:`network_config` at the top level."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name != "network":
                out[f.name] = getattr(self, f.name)
        out["hidden"] = list(self.hidden)
        out["dataset_kwargs"] = dict(self.dataset_kwargs)
        out["prior"] = self.resolved_prior().to_dict()
        out.update(self.network_config().to_dict())
        return out


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"device {name!r} is not a torch device ({error})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {name!r}: torch has no CUDA device here (a CPU build, or no GPU); use 'cpu'"
        )
    return device


class ConfigError(ValueError):
    """A setting of a compression run that cannot work, found before anything is loaded.

    :ivar str field: the :class:`CompressConfig` field it is about (``"prior"``,
        ``"data_root"``, ...), or ``"out"`` for the output folder; ``dturbo compress`` names
        the flag from it.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _layer_names(config: CompressConfig) -> list[str]:
    """The weight layers' names of ``config.model`` (they do not depend on the data's sizes,
    so the model is built at its default sizes, with ``config.hidden`` for the MLP)."""
    factory = ZOO[config.model]
    skeleton = factory(1, hidden=tuple(config.hidden)) if config.model == "mlp" else factory()
    return layer_names(skeleton)


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".dturbo-write-test-"):
            pass
    except OSError as error:
        raise ConfigError(
            "out", f"{out} is not a writable folder ({error.strerror or error})"
        ) from None


def check_compression(config: CompressConfig, out: str | Path | None = None) -> SparsePrior:
    """Check a run's settings before any data is loaded or anything trained.

    In order: the data set and model names, the device, the prior (a name or a YAML file that
    parses), the prior's per-layer overrides (``layer_priors``) against the model's layer
    names, the data root of an image data set (given, and an existing folder unless
    ``download``), and ``out`` (created if missing, and a file can be written there).

    :param CompressConfig config: the run.
    :param out: the output folder, if the run writes one.
    :returns: the resolved prior.
    :rtype: SparsePrior
    :raises ConfigError: naming the field (:attr:`ConfigError.field`) and the problem.
    """
    if config.dataset not in DATASETS:
        raise ConfigError(
            "dataset", f"unknown dataset {config.dataset!r}; valid names are {list(DATASETS)}"
        )
    if config.model not in ZOO:
        raise ConfigError("model", f"unknown model {config.model!r}; choose one of {sorted(ZOO)}")
    try:
        _device(config.device)
    except ValueError as error:
        raise ConfigError("device", str(error)) from None
    try:
        prior = config.resolved_prior()
    except (ValueError, OSError) as error:
        raise ConfigError("prior", str(error)) from None
    try:
        prior.check_layer_names(_layer_names(config))
    except ValueError as error:
        raise ConfigError("prior", f"{error} (model {config.model!r})") from None
    if config.dataset in IMAGE_DATASETS:
        if config.data_root is None:
            raise ConfigError(
                "data_root",
                f"dataset {config.dataset!r} is not bundled: a data root is required",
            )
        root = Path(config.data_root).expanduser()
        if root.exists() and not root.is_dir():
            raise ConfigError("data_root", f"data root {root} is not a folder")
        if not root.exists() and not config.download:
            raise ConfigError(
                "data_root",
                f"data root {root} does not exist (download=True, --download on the command "
                "line, fetches the data set there)",
            )
    if out is not None:
        _check_writable(Path(out))
    return prior


def support_title(config: CompressConfig, prior: SparsePrior | None = None) -> str:
    """The title of a run's ``support.png``: the data set, the model and the prior (its name,
    or its YAML file and support type; ``+ N layer overrides`` when it has some).

    Example::

        >>> support_title(CompressConfig(dataset="digits", model="mlp", prior="chain"))
        'q(s = 1): mlp on digits, chain prior'
    """
    prior = prior if prior is not None else config.resolved_prior()
    if isinstance(config.prior, str) and not config.prior.endswith((".yaml", ".yml")):
        name = config.prior
    elif isinstance(config.prior, str):
        name = f"{Path(config.prior).name} ({prior.support.kind})"
    else:
        name = prior.support.kind
    if prior.layer_priors:
        name += f" + {len(prior.layer_priors)} layer override(s)"
    return f"q(s = 1): {config.model} on {config.dataset}, {name} prior"


def _load(config: CompressConfig) -> ClassificationData:
    _device(config.device)
    if config.model not in ZOO:
        raise ValueError(f"unknown model {config.model!r}; choose one of {sorted(ZOO)}")
    data = load_dataset(
        config.dataset,
        data_root=config.data_root,
        download=config.download,
        seed=config.seed,
        flatten=config.model in FLAT_MODELS,
        **config.dataset_kwargs,
    )
    return data.to(config.device)


def _build(config: CompressConfig, data: ClassificationData) -> nn.Module:
    kwargs: dict[str, Any] = {"hidden": tuple(config.hidden)} if config.model == "mlp" else {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        net = build_model(
            config.model, input_shape=data.input_shape, num_classes=data.num_classes, **kwargs
        )
    return net.to(device=config.device, dtype=data.x_train.dtype)  # follow the data


def train_dense(
    net: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int = 0,
    masks: dict[str, Tensor] | None = None,
    progress_bar: bool = False,
) -> list[float]:
    """Minibatch Adam on the cross-entropy (the dense SGD reference); returns epoch times.

    With ``masks`` (layer name -> bool) the masked weights stay zero (fine-tuning a pruned net).
    """
    opt = torch.optim.Adam(net.parameters(), lr=lr, foreach=True)
    gen = torch.Generator().manual_seed(seed)
    modules = dict(net.named_modules())
    times = []
    net.train()
    for _ in tqdm(range(epochs), desc="dense", disable=not progress_bar, leave=False):
        start = time.perf_counter()
        perm = torch.randperm(len(y), generator=gen).to(x.device)
        for i in range(0, len(y), batch_size):
            idx = perm[i : i + batch_size]
            loss = F.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if masks:
                with torch.no_grad():
                    for name, mask in masks.items():
                        modules[name].weight.mul_(mask)  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    net.eval()
    return times


def run_compression(
    config: CompressConfig,
    out: str | Path | None = None,
    *,
    progress_bar: bool = False,
) -> dict[str, Any]:
    """Dense training, Turbo-VBI, pruning, the compact model and the report; writes
    ``report.json``, ``support.png`` and ``compact.pt`` (the compact model of
    :func:`~pyro_dturbo.compression.export_compact`, written by
    :func:`~pyro_dturbo.compression.save_compact`; read it with
    :func:`~pyro_dturbo.compression.load_compact`) into ``out`` if given.

    :returns: the report (see :func:`~pyro_dturbo.compression.compression_report`) with
        ``accuracy_dense``, ``accuracy_compressed``, ``density``, ``flops_dense``,
        ``flops_compressed``, ``neurons_kept``, ``bytes_dense``, ``bytes_compressed``, timings
        (``epoch_time_dense``, ``epoch_time_turbo`` and their ratio) and the config.
    """
    prior = check_compression(config, out)  # before anything is loaded or trained
    data = _load(config)
    dense = _build(config, data)
    network = config.network_config()
    dense_times = train_dense(
        dense,
        data.x_train,
        data.y_train,
        epochs=config.dense_epochs,
        batch_size=network.batch_size,
        lr=config.dense_lr,
        seed=config.seed,
        progress_bar=progress_bar,
    )
    bayes = to_sparse_bayes(dense, prior)
    start = time.perf_counter()
    result = fit_network(
        bayes,
        data.x_train,
        data.y_train,
        prior,
        network,
        progress_bar=progress_bar,
        eval_data=(data.x_test, data.y_test),
    )
    turbo_time = time.perf_counter() - start
    prune(bayes)
    report = compression_report(
        bayes, data.input_shape, x_test=data.x_test, y_test=data.y_test, dense_net=dense
    )
    turbo_epoch = sum(r["time"] for r in result.history) / network.epochs
    dense_epoch = sum(dense_times) / len(dense_times)
    report.update(
        dataset=config.dataset,
        model=config.model,
        epoch_time_dense=dense_epoch,
        epoch_time_turbo=turbo_epoch,
        epoch_time_ratio=turbo_epoch / dense_epoch,
        wall_time_turbo=turbo_time,
        history=result.history,
        config=config.to_dict(),
    )
    compact = export_compact(bayes, data.input_shape)
    if out is not None:
        out = Path(out)
        files = [
            write_json(out / "report.json", report),
            plot_support(bayes, out / "support.png", title=support_title(config, prior)),
            save_compact(compact, out / "compact.pt"),
        ]
        report["files"] = [str(f) for f in files]
    report["_net"] = bayes
    report["_compact"] = compact
    report["_dense"] = dense
    report["_data"] = data
    return report


def magnitude_baseline(
    dense: nn.Module,
    data: ClassificationData,
    density: float,
    *,
    finetune_epochs: int,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
) -> dict[str, Any]:
    """Global magnitude pruning of the dense network to ``density``, then fine-tuning with the
    masks fixed for ``finetune_epochs`` (the Turbo run's fine-tuning budget)."""
    masks = magnitude_masks(dense, density)
    pruned = apply_masks(dense, masks)
    before = evaluate_accuracy(pruned, data.x_test, data.y_test)
    train_dense(
        pruned,
        data.x_train,
        data.y_train,
        epochs=finetune_epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        masks=masks,
    )
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    return {
        "method": "magnitude",
        "density": kept / total,
        "accuracy_before_finetune": before,
        "accuracy": evaluate_accuracy(pruned, data.x_test, data.y_test),
    }


def svi_baseline(
    dense: nn.Module,
    data: ClassificationData,
    density: float,
    *,
    epochs: int,
    finetune_epochs: int = 0,
    batch_size: int = 64,
    lr: float = 2e-3,
    weight_scale: float = 1.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Mean-field SVI (Pyro ``AutoNormal``) on the same network under a ``N(0, weight_scale^2)``
    prior, started at the dense weights; pruned by ``|mu|`` to ``density``, then the pruned
    means fine-tuned with the masks fixed for ``finetune_epochs`` (as :func:`magnitude_baseline`).
    ``accuracy_before_finetune`` is the pruned posterior mean's.

    The guide's parameters live in a fresh param store for the duration
    (``pyro.get_param_store().scope()``): the global store is the same before and after."""
    from pyro.infer import SVI, Trace_ELBO
    from pyro.infer.autoguide import AutoNormal, init_to_value
    from pyro.optim import Adam as PyroAdam  # type: ignore[attr-defined]

    net = to_sparse_bayes(dense)
    init = {f"{name}.weight": layer.weight_loc.detach() for name, layer in sparse_layers(net)}
    num_data = len(data.y_train)

    def model(x: Tensor, y: Tensor) -> Tensor:
        return network_model(net, x, y, None, num_data=num_data, weight_scale=weight_scale)

    gen = torch.Generator().manual_seed(seed)
    # a fresh param store for the guide: the user's global store is left as it was
    with pyro.get_param_store().scope(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        guide = AutoNormal(model, init_loc_fn=init_to_value(values=init), init_scale=1e-3)
        svi = SVI(model, guide, PyroAdam({"lr": lr}), Trace_ELBO())
        start = time.perf_counter()
        for _ in range(epochs):
            perm = torch.randperm(num_data, generator=gen).to(data.x_train.device)
            for i in range(0, num_data, batch_size):
                idx = perm[i : i + batch_size]
                svi.step(data.x_train[idx], data.y_train[idx])
        elapsed = time.perf_counter() - start
        medians = {name: value.detach() for name, value in guide.median().items()}
    with torch.no_grad():
        for name, layer in sparse_layers(net):
            layer.weight_loc.copy_(medians[f"{name}.weight"])
    accuracy_dense = evaluate_accuracy(net, data.x_test, data.y_test)
    magnitudes = torch.cat(
        [layer.weight_loc.detach().abs().flatten() for _, layer in sparse_layers(net)]
    )
    keep = max(1, math.ceil(density * magnitudes.numel()))
    threshold = float(magnitudes.topk(keep).values[-1])
    masks = prune(net, rule="magnitude", threshold=threshold * (1 - 1e-12))
    kept = sum(int(mask.sum()) for mask in masks.values())
    accuracy_pruned = evaluate_accuracy(net, data.x_test, data.y_test)
    structure = compression_report(net, data.input_shape)
    # the same fine-tuning budget as the magnitude baseline: the pruned means, masks fixed
    plain = to_plain(net)
    train_dense(
        plain,
        data.x_train,
        data.y_train,
        epochs=finetune_epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        masks={name: mask.to(data.x_train.dtype) for name, mask in masks.items()},
    )
    return {
        "method": "svi",
        "density": kept / magnitudes.numel(),
        "accuracy_unpruned": accuracy_dense,
        "accuracy_before_finetune": accuracy_pruned,
        "accuracy": evaluate_accuracy(plain, data.x_test, data.y_test),
        "epoch_time": elapsed / epochs,
        **{
            key: structure[key]
            for key in ("flops_ratio", "fraction_in_whole_units", "neurons_kept")
        },
    }


#: The entries of :func:`compression_report` that the masks alone decide (FLOPs, whole units,
#: bytes): what :func:`sparse_vd_baseline` and the benchmark's baselines copy into a record.
STRUCTURE_KEYS = (
    "flops_dense",
    "flops_compressed",
    "flops_ratio",
    "fraction_in_whole_units",
    "neurons_kept",
    "bytes_dense",
    "bytes_compressed",
    "bytes_coo",
    "bytes_rle",
)


def sparse_vd_baseline(
    dense: nn.Module,
    data: ClassificationData,
    *,
    epochs: int,
    batch_size: int = 64,
    lr: float = 1e-3,
    warmup_epochs: int = 5,
    seed: int = 0,
) -> dict[str, Any]:
    """Sparse variational dropout [Molchanov et al. 2017] started at the dense weights
    (:func:`~pyro_dturbo.inference.sparse_vd.fit_sparse_vd`), pruned at ``log alpha > 3``.

    Unlike the other baselines it is not given a density: the KL to the log-uniform prior
    decides how many weights go. ``accuracy`` is the pruned plain network's,
    ``accuracy_unpruned`` that of the weights ``theta`` without the mask; the FLOPs, bytes and
    neurons are :func:`compression_report`'s of the pruned plain network (as for magnitude
    pruning). ``dense`` is not changed.
    """
    start = time.perf_counter()
    result = fit_sparse_vd(
        dense,
        data.x_train,
        data.y_train,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        warmup_epochs=warmup_epochs,
    )
    elapsed = time.perf_counter() - start
    svd = result.svd_net
    thresholds = [layer.threshold for _, layer in sparse_vd_layers(svd)]
    for _, layer in sparse_vd_layers(svd):
        layer.threshold = math.inf  # nothing pruned: the trained theta
    accuracy_unpruned = evaluate_accuracy(svd, data.x_test, data.y_test)
    for (_, layer), threshold in zip(sparse_vd_layers(svd), thresholds, strict=True):
        layer.threshold = threshold
    structure = compression_report(result.net, data.input_shape)
    return {
        "method": "sparse-vd",
        "density": result.density,
        "accuracy_unpruned": accuracy_unpruned,
        "accuracy": evaluate_accuracy(result.net, data.x_test, data.y_test),
        "epoch_time": elapsed / epochs,
        "kl": result.history[-1]["kl"],
        **{key: structure[key] for key in STRUCTURE_KEYS},
    }
