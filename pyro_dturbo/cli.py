"""The ``dturbo`` command.

Subcommands::

    dturbo demo [--out results/demo] [--seed 0]     # Turbo-VBI vs SVI vs oracle, < 2 minutes
    dturbo compress --dataset digits --model mlp --prior chain --epochs 100 --seed 0 --out DIR
    dturbo federate --config configs/federated_digits.yaml --out DIR   # every method, in process

also runnable as ``python -m pyro_dturbo.cli demo``. Every subcommand writes JSON and a plot
into its ``--out`` folder and prints where.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

import pyro_dturbo
from pyro_dturbo.experiments.regression import (
    METHODS,
    compare_regression,
    format_regression_table,
    save_comparison,
    smallest_successful_m,
    summarise_regression,
)

__all__ = ["main", "build_parser"]

#: The demo's comparison: N = 512 (the benchmark's size), three M across the chain prior's phase
#: transition, three seeds. SVI gets few steps so the whole run stays well under two minutes on
#: two cores; the full comparison is ``benchmarks/regression.py``. The problems are float64.
DEMO_NUM_WEIGHTS = 512
DEMO_NUM_OBS = (96, 128, 160)
DEMO_SEEDS = 3
DEMO_METHODS = ("turbo-chain", "turbo-independent", "svi", "oracle")
DEMO_SVI_STEPS = 300
DEMO_DTYPE = torch.float64


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _demo(args: argparse.Namespace) -> int:
    seeds = list(range(args.seed, args.seed + args.seeds))
    config = {
        "num_weights": args.num_weights,
        "num_obs": list(args.num_obs),
        "seeds": seeds,
        "methods": list(args.methods),
        "svi_steps": args.svi_steps,
        "p01": 0.01,
        "p10": 0.1,
        "snr_db": 30.0,
        "dtype": str(DEMO_DTYPE).removeprefix("torch."),
    }
    print(
        f"dturbo demo: clustered sparse regression, N={args.num_weights}, "
        f"M in {list(args.num_obs)}, {len(seeds)} seeds, methods {', '.join(args.methods)}"
    )
    start = time.perf_counter()
    records = compare_regression(
        args.num_obs,
        seeds,
        num_weights=args.num_weights,
        methods=args.methods,
        svi_steps=args.svi_steps,
        dtype=DEMO_DTYPE,
        progress_bar=not args.no_progress_bar,
    )
    elapsed = time.perf_counter() - start
    paths = save_comparison(
        records, args.out, "demo", config=config, extra={"wall_time_s": elapsed}
    )
    print(format_regression_table(summarise_regression(records)))
    smallest = smallest_successful_m(records)
    print(
        "smallest M with >= 90% success: "
        + ", ".join(f"{k} {'-' if v is None else v}" for k, v in smallest.items())
    )
    print(f"{elapsed:.1f} s; wrote {paths['json']} and {paths['png']}")
    return 0


#: the flag of each field :func:`~pyro_dturbo.experiments.compress.check_compression` names
COMPRESS_FLAGS = {
    "dataset": "--dataset",
    "model": "--model",
    "device": "--device",
    "prior": "--prior",
    "data_root": "--data-root",
    "out": "--out",
}


def _compress(args: argparse.Namespace) -> int:
    from pyro_dturbo.experiments.compress import (
        COMPRESS_NETWORK,
        CompressConfig,
        ConfigError,
        check_compression,
        run_compression,
    )

    # the schedule and the flags are checked before anything is loaded or trained
    if args.warmup_epochs + args.finetune_epochs >= args.epochs:
        print(
            f"dturbo compress: --warmup-epochs ({args.warmup_epochs}) + --finetune-epochs "
            f"({args.finetune_epochs}) must be below --epochs ({args.epochs}): no epoch would "
            "be left to decide the support",
            file=sys.stderr,
        )
        return 2
    if args.hidden and args.model != "mlp":
        print(
            f"dturbo compress: --hidden applies to --model mlp only, not {args.model!r}",
            file=sys.stderr,
        )
        return 2
    try:
        network = COMPRESS_NETWORK.replace(
            epochs=args.epochs,
            warmup_epochs=args.warmup_epochs,
            finetune_epochs=args.finetune_epochs,
            kl_weight=args.kl_weight,
            weight_prior=args.weight_prior,
            finetune=args.finetune,
        )
    except ValueError as error:  # a setting out of range, named
        print(f"dturbo compress: {error}", file=sys.stderr)
        return 2
    config = CompressConfig(
        dataset=args.dataset,
        model=args.model,
        prior=args.prior,
        network=network,
        dense_epochs=args.dense_epochs,
        seed=args.seed,
        data_root=None if args.data_root is None else str(args.data_root),
        download=args.download,
        device=args.device,
    )
    if args.hidden:
        config.hidden = tuple(args.hidden)
    # the prior's layers, the data root and --out, before any data is loaded
    try:
        check_compression(config, args.out)
    except ConfigError as error:
        flag = COMPRESS_FLAGS.get(error.field, error.field)
        print(f"dturbo compress: {flag}: {error}", file=sys.stderr)
        return 2
    print(
        f"dturbo compress: {args.model} on {args.dataset}, prior {args.prior}, "
        f"{args.epochs} epochs ({args.warmup_epochs} warm-up, last {args.finetune_epochs} "
        f"fine-tuning), seed {args.seed}"
    )
    try:
        report = run_compression(config, args.out, progress_bar=not args.no_progress_bar)
    except (ValueError, FileNotFoundError, ImportError) as error:
        print(f"dturbo compress: {error}", file=sys.stderr)
        return 2
    kept = ", ".join(f"{k} {v}" for k, v in report["neurons_kept"].items())
    print(
        f"accuracy dense {report['accuracy_dense']:.4f} -> compressed "
        f"{report['accuracy_compressed']:.4f}; density {report['density']:.4f} "
        f"({100 * report['fraction_pruned']:.1f}% pruned, "
        f"{100 * report['fraction_in_whole_units']:.0f}% of it in whole rows/columns)"
    )
    print(
        f"FLOPs {report['flops_dense']} -> {report['flops_compressed']} "
        f"({100 * report['flops_compressed'] / report['flops_dense']:.1f}%); units kept: {kept}"
    )
    print(f"bytes {report['bytes_dense']} -> {report['bytes_compressed']}")
    print(f"wrote {', '.join(report['files'])}")
    return 0


#: the engines of ``dturbo federate``: in process, a local Flower deployment (a SuperLink and
#: one SuperNode per client on 127.0.0.1), Flower's simulation engine (Ray)
FEDERATE_ENGINES = ("inprocess", "flower", "flower-sim")


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default in its help; an option whose default is ``None`` (required,
    or taken from the config) says so in its own help text instead."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def _method_list(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated method names, got {text!r}")
    return names


def _writable_folder(path: Path) -> str | None:
    """Create ``path`` if needed and check a file can be written there; the problem, or None."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".dturbo-write-test-"):
            pass
    except OSError as error:
        return f"--out {path} is not a writable folder ({error.strerror or error})"
    return None


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """A config dict as JSON reads it back, without ``methods`` (checkpoints are per method)."""
    plain: dict[str, Any] = json.loads(json.dumps(config))
    plain.pop("methods", None)
    return plain


def _federate(args: argparse.Namespace) -> int:  # noqa: C901 (one check per input, in order)
    from pyro_dturbo.federation.config import FederatedConfig

    def fail(message: str) -> int:
        print(f"dturbo federate: {message}", file=sys.stderr)
        return 2

    if args.engine != "inprocess":
        missing = _missing_engine(args.engine)
        if missing is not None:
            return fail(missing)
    try:
        config = FederatedConfig.from_yaml(Path(args.config))
        overrides: dict[str, Any] = {
            key: value
            for key, value in (
                ("rounds", args.rounds),
                ("methods", args.methods),
                ("seed", args.seed),
            )
            if value is not None
        }
        if overrides:
            config = config.replace(**overrides)
    except (ValueError, FileNotFoundError) as error:  # a bad field, named
        return fail(str(error))
    out = Path(args.out)
    problem = _writable_folder(out)
    if problem is not None:
        return fail(problem)
    if args.engine != "inprocess":
        return _federate_flower(args, config, out, fail)
    checkpoints = out / "checkpoints"
    if args.fresh and checkpoints.exists():
        shutil.rmtree(checkpoints)
    stamp = checkpoints / "config.json"
    if stamp.exists() and _comparable(json.loads(stamp.read_text())) != _comparable(
        config.to_dict()
    ):
        return fail(
            f"the checkpoints in {checkpoints} are of a different config; "
            "rerun with --fresh to start over"
        )

    from pyro_dturbo.experiments.federated import summary_lines, write_federated_report
    from pyro_dturbo.experiments.tables import write_json
    from pyro_dturbo.federation.base import RoundRecord
    from pyro_dturbo.federation.simulation import run_federated

    write_json(stamp, config.to_dict())
    model = f"mlp {list(config.hidden)}" if config.model == "mlp" else config.model
    print(
        f"dturbo federate: {model} on {config.dataset}, {config.clients} clients "
        f"({config.partition['type']}, participation {config.participation:g}), "
        f"{config.rounds} rounds, methods {', '.join(config.methods)}"
    )
    start = time.perf_counter()

    def announce(name: str, record: RoundRecord) -> None:
        if record.round == config.rounds:
            print(
                f"  {name}: {record.round} rounds done, accuracy {record.accuracy:.4f} "
                f"({time.perf_counter() - start:.0f} s so far)",
                flush=True,
            )

    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)  # restored below: the caller's setting is kept
    try:
        result = run_federated(
            config,
            out,
            progress_bar=not args.no_progress,
            resume=not args.fresh,
            hook_fn=announce if args.no_progress else None,
        )
        elapsed = time.perf_counter() - start
        paths = write_federated_report(result, out)  # its machine info records the threads
    except (ValueError, FileNotFoundError, ImportError) as error:
        return fail(str(error))
    finally:
        torch.set_num_threads(threads)
    print("\n".join(summary_lines(result)))
    written = [str(p) for p in paths.values()]
    print(f"{elapsed:.1f} s; wrote {', '.join(written[:-1])} and {written[-1]}")
    return 0


def _missing_engine(engine: str) -> str | None:
    """Why ``engine`` cannot run here (a package missing), or None."""
    import importlib.util

    if importlib.util.find_spec("flwr") is None:
        return (
            f"--engine {engine} needs Flower: pip install 'pyro-dturbo[flower]' "
            "(or use --engine inprocess)"
        )
    if engine == "flower-sim" and importlib.util.find_spec("ray") is None:
        return (
            "--engine flower-sim needs Flower's simulation engine (Ray): "
            "pip install 'pyro-dturbo[flower-sim]' (or use --engine flower)"
        )
    return None


def _federate_flower(
    args: argparse.Namespace, config: Any, out: Path, fail: Callable[[str], int]
) -> int:
    """``--engine flower``: a local SuperLink and SuperNodes; ``flower-sim``: Flower's
    simulation engine. Both write the in-process engine's ``report.json``."""
    from pyro_dturbo.experiments.federated import summary_lines

    config_file = out / "config.yaml"  # the config as run, overrides applied
    config_file.write_text(config.to_yaml())
    model = f"mlp {list(config.hidden)}" if config.model == "mlp" else config.model
    print(
        f"dturbo federate: {model} on {config.dataset}, {config.clients} clients on "
        f"{'a local Flower deployment' if args.engine == 'flower' else 'Flower simulation'}, "
        f"{config.rounds} rounds, methods {', '.join(config.methods)}",
        flush=True,
    )
    start = time.perf_counter()

    def announce(row: dict[str, Any]) -> None:
        if args.no_progress and row["round"] == config.rounds:
            print(
                f"  {row['method']}: {row['round']} rounds done, accuracy "
                f"{row['accuracy']:.4f} ({time.perf_counter() - start:.0f} s so far)",
                flush=True,
            )

    import signal

    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # the deployment's cleanup runs as on Ctrl-C

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        if args.engine == "flower":
            from pyro_dturbo.federation.deployment import FlowerError, run_local

            try:
                report = run_local(
                    config_file,
                    out,
                    config.clients,
                    total_rounds=config.rounds * len(config.methods),
                    threads=args.threads,
                    round_timeout=args.round_timeout,
                    progress_bar=not args.no_progress,
                    on_round=announce,
                )
            except FlowerError as error:
                return fail(f"Flower: {error}")
        else:
            from pyro_dturbo.federation.flower import run_simulation_engine

            report = run_simulation_engine(
                config_file, out, threads=args.threads, round_timeout=args.round_timeout
            )
    except (ValueError, FileNotFoundError, ImportError) as error:
        return fail(str(error))
    except KeyboardInterrupt:
        print(
            "dturbo federate: interrupted; every Flower process started was stopped",
            file=sys.stderr,
        )
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    print("\n".join(summary_lines(report)))
    logs = f" (Flower logs in {out / 'flower'})" if args.engine == "flower" else ""
    print(f"{time.perf_counter() - start:.1f} s; wrote {out / 'report.json'}{logs}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``dturbo`` argument parser (one subparser per subcommand)."""
    from pyro_dturbo.experiments.compress import COMPRESS_NETWORK

    parser = argparse.ArgumentParser(
        prog="dturbo",
        description="Structured Bayesian compression with Turbo-VBI on Pyro.",
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {pyro_dturbo.__version__}"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="compare Turbo-VBI, SVI and the oracle on clustered sparse regression",
        description=(
            "Clustered sparse regression (N=512, chain p01=0.01, p10=0.1, 30 dB): Turbo-VBI with "
            "chain and independent priors, Pyro SVI and oracle least squares at M = 96, 128, 160 "
            "over 3 seeds. Writes demo.json and demo.png into --out."
        ),
    )
    demo.add_argument("--out", type=Path, default=Path("results/demo"), help="output folder")
    demo.add_argument("--seed", type=int, default=0, help="first problem seed")
    demo.add_argument("--no-progress-bar", action="store_true", help="hide the progress bar")
    # small-size switches for tests and quick looks; hidden from --help
    hidden = argparse.SUPPRESS
    demo.add_argument("--num-weights", type=_positive_int, default=DEMO_NUM_WEIGHTS, help=hidden)
    demo.add_argument(
        "--num-obs", type=_positive_int, nargs="+", default=list(DEMO_NUM_OBS), help=hidden
    )
    demo.add_argument("--seeds", type=_positive_int, default=DEMO_SEEDS, help=hidden)
    demo.add_argument(
        "--methods", nargs="+", choices=METHODS, default=list(DEMO_METHODS), help=hidden
    )
    demo.add_argument("--svi-steps", type=_positive_int, default=DEMO_SVI_STEPS, help=hidden)
    demo.set_defaults(func=_demo)

    from pyro_dturbo.data.datasets import DATASETS
    from pyro_dturbo.models.zoo import ZOO

    compress = sub.add_parser(
        "compress",
        help="train a network with Turbo-VBI, prune it and export a compact model",
        formatter_class=_DefaultsFormatter,
        description=(
            "Trains the dense network, then Turbo-VBI from its weights, prunes at q(s) > 0.5 and "
            "exports the compact model. Writes report.json, support.png and compact.pt (the "
            "compact model; read it with pyro_dturbo.compression.load_compact) into --out."
        ),
    )
    compress.add_argument("--dataset", choices=DATASETS, default="digits", help="data set")
    compress.add_argument("--model", choices=sorted(ZOO), default="mlp", help="zoo network")
    compress.add_argument(
        "--prior",
        default="chain",
        help="chain, independent, grid, or a YAML file written by SparsePrior.to_yaml",
    )
    compress.add_argument(
        "--epochs",
        type=_positive_int,
        default=COMPRESS_NETWORK.epochs,
        help="Turbo-VBI epochs, all phases",
    )
    compress.add_argument(
        "--warmup-epochs",
        type=int,
        default=COMPRESS_NETWORK.warmup_epochs,
        help="first epochs of w-steps only, before the first support update",
    )
    compress.add_argument(
        "--finetune-epochs",
        type=int,
        default=COMPRESS_NETWORK.finetune_epochs,
        help="last epochs under the frozen support",
    )
    compress.add_argument(
        "--dense-epochs", type=_positive_int, default=30, help="epochs of the dense network first"
    )
    compress.add_argument(
        "--kl-weight", type=float, default=1.0, help="weight of the KL term (1: the ELBO)"
    )
    compress.add_argument(
        "--weight-prior",
        choices=("mean_field", "log_mixture"),
        default="mean_field",
        help="prior precision of the w-steps (see NetworkModuleA)",
    )
    compress.add_argument(
        "--finetune",
        choices=("map", "vb"),
        default="map",
        help="fine-tuning under the frozen support: posterior-mean steps or VB steps",
    )
    compress.add_argument(
        "--hidden",
        type=_positive_int,
        nargs="+",
        help="MLP hidden widths (--model mlp only; default: 256 256)",
    )
    compress.add_argument("--seed", type=int, default=0, help="seed of data, init and training")
    compress.add_argument("--data-root", type=Path, help="folder with MNIST / CIFAR files")
    compress.add_argument("--download", action="store_true", help="download missing files")
    compress.add_argument("--device", default="cpu", help="cpu or cuda")
    compress.add_argument(
        "--out", type=Path, default=Path("results/compress_run"), help="output folder"
    )
    compress.add_argument("--no-progress-bar", action="store_true", help="no tqdm bars")
    compress.set_defaults(func=_compress)

    federate = sub.add_parser(
        "federate",
        help="run federated D-Turbo-VBI and the baselines from a YAML config",
        formatter_class=_DefaultsFormatter,
        description=(
            "Runs every method of the config (D-Turbo-VBI variants, FedAvg, FedAvg + top-k, "
            "STC) on its clients, counting the bytes of every message. Writes report.json, "
            "accuracy_vs_bytes.png and support.png into --out, checkpoints into "
            "--out/checkpoints (a rerun resumes from them), and prints one line per method."
        ),
    )
    federate.add_argument(
        "--config",
        type=Path,
        required=True,
        metavar="FILE",
        help="the experiment's YAML file, e.g. configs/federated_digits.yaml (required)",
    )
    federate.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="output folder (required)"
    )
    federate.add_argument(
        "--engine",
        choices=FEDERATE_ENGINES,
        default="inprocess",
        help="where clients run: inprocess (all in this process); flower (a local Flower "
        "SuperLink and one SuperNode per client, stopped at the end; needs the flower extra); "
        "flower-sim (Flower's simulation engine; needs the flower-sim extra)",
    )
    federate.add_argument(
        "--round-timeout",
        type=_positive_float,
        default=120.0,
        metavar="S",
        help="Flower engines: seconds to wait for a round's replies (a client that does not "
        "answer keeps its last contribution)",
    )
    federate.add_argument(
        "--rounds", type=_positive_int, metavar="N", help="rounds (default: the config's)"
    )
    federate.add_argument(
        "--methods",
        type=_method_list,
        metavar="A,B",
        help="methods, comma-separated, e.g. dturbo,fedavg (default: the config's)",
    )
    federate.add_argument("--seed", type=int, metavar="S", help="seed (default: the config's)")
    federate.add_argument(
        "--threads",
        type=_positive_int,
        default=1,
        metavar="N",
        help="torch threads while training: the clients' models are small, and more threads "
        "than free cores slow every step down many times over",
    )
    federate.add_argument(
        "--no-progress", action="store_true", help="no progress bars (a line per method instead)"
    )
    federate.add_argument(
        "--fresh",
        action="store_true",
        help="delete --out/checkpoints first and start over instead of resuming",
    )
    federate.set_defaults(func=_federate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``dturbo`` command line; returns the exit status.

    :param argv: arguments without the program name (default ``sys.argv[1:]``).
    :raises SystemExit: on bad arguments (status 2), as argparse does.

    Example::

        >>> main(["demo", "--out", "results/demo"])
        0
    """
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)


if __name__ == "__main__":
    sys.exit(main())
