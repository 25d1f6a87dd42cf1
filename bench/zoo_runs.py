"""Fine-tune one pre-trained source on several targets, sizes and seeds; one CSV row per run (model zoo).

Each run is ``mattransfer train`` (a subprocess, so one failing run does not stop the rest) on an options
file written into ``<runs-dir>/<target>_n<n>_<method>_<pooling>_s<seed>/``, on the fixed test set of each
target (``test_fraction`` 0.1, ``test_seed`` 0, the defaults). The CSV gets one row per finished run:

    target,n,seed,encoder,method,pooling,head,test_mae,n_test,unit,wall_s

``wall_s`` is the whole command (start-up, data, featurizing or cache reads, training, testing). Rows
already in the CSV are skipped, so the same command resumes after an interruption and regenerates the
file when it is deleted. ``pooling`` is ``--pooling`` or the source's own, read back from each run's checkpoint;
``head`` is ``norm`` when the head standardises its input features (``head.input_norm``, the default for a
package's pre-trained model since it was measured), else ``plain`` (rows written before it have no head column).

Example (the CHGNet rows of docs/results/model-zoo/runs_chgnet.csv; commands in bench/README.md):
    OMP_NUM_THREADS=1 python bench/zoo_runs.py --source chgnet:0.3.0 --method heads \\
        --config '{"lr_head": 0.003}' --targets phonons dielectric --sizes 100 800 --seeds 0 1 2 \\
        --runs-dir ../runs/zoo --out docs/results/model-zoo/runs_chgnet.csv
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml

from mattransfer.models.model import load_source, read_checkpoint

COLUMNS = ["target", "n", "seed", "encoder", "method", "pooling", "head", "test_mae", "n_test", "unit", "wall_s"]
KEY = COLUMNS[:7]
SHARED_SOURCES = Path(__file__).parents[1] / "configs" / "shared-data.yaml"


def done_runs(out: Path) -> set[tuple[str, ...]]:
    """(target, n, seed, encoder, method, pooling, head) of the rows already written."""
    if not out.exists():
        return set()
    with out.open() as f:
        return {tuple(row.get(c) or "plain" for c in KEY) for row in csv.DictReader(f)}


def run_one(args: argparse.Namespace, pooling: str, target: str, n: int, seed: int) -> dict | None:
    """One ``mattransfer train``; its CSV row, or None (its error printed) when it failed."""
    # the source is in the name: two sources sharing a runs directory must not overwrite each other's runs
    source = re.sub(r"[^A-Za-z0-9.-]+", "-", args.source)
    name = f"{source}_{target}_n{n}_{args.method}_{pooling.replace('+', '-')}_s{seed}"
    run_dir = args.runs_dir.resolve() / name
    options = {
        "seed": seed, "device": "cpu", "threads": args.threads, "output_dir": str(run_dir),
        "data_sources": str(args.data_sources.resolve()), "data": {"dataset": target, "n_samples": n},
        "finetune": {"method": args.method, "read_from": args.source, "config": json.loads(args.config),
                     "allow_test_overlap": args.allow_test_overlap},
        "training": json.loads(args.training),
    }
    if args.pooling:
        options["model"] = {"encoder": {"name": args.source.split(":")[0], "pooling": args.pooling}}
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "options.yaml").write_text(yaml.safe_dump(options))
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "mattransfer.cli", "-q", "--threads", str(args.threads), "train",
                           str(run_dir / "options.yaml")], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        print(f"  FAILED {name}: {(done.stderr or done.stdout).strip().splitlines()[-1:]}", flush=True)
        return None
    metrics = json.loads((run_dir / "metrics.json").read_text())
    model = read_checkpoint(run_dir / "model.ckpt")["model"]  # what the run used
    return {"target": target, "n": n, "seed": seed, "encoder": args.source, "method": args.method,
            "pooling": model["encoder"]["pooling"], "head": "norm" if model["head"].get("input_norm") else "plain", "test_mae": f"{metrics['test']['mae']:.6g}", "n_test": metrics["n_test"],
            "unit": metrics["unit"], "wall_s": f"{wall:.1f}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, help="a pre-trained model name (chgnet:0.3.0) or checkpoint")
    parser.add_argument("--method", required=True, help="fine-tune method: heads, freeze, lora, full")
    parser.add_argument("--config", default="{}", help="the method's options as JSON, e.g. '{\"lr_head\": 0.003}'")
    parser.add_argument("--training", default="{}", help="training options as JSON, e.g. '{\"max_epochs\": 30}'")
    parser.add_argument("--allow-test-overlap", action="store_true",
                        help="accept a source that trained on some of the target's test structures (the count is"
                             " recorded in each run's metrics.json), as the study does")
    parser.add_argument("--pooling", help="the encoder's pooling (default: the encoder's own)")
    parser.add_argument("--targets", nargs="+", required=True)
    parser.add_argument("--sizes", nargs="+", type=int, required=True)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--runs-dir", type=Path, required=True, help="run directories go here (keep it outside git)")
    parser.add_argument("--data-sources", type=Path, default=SHARED_SOURCES)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    args.out.parent.mkdir(parents=True, exist_ok=True)
    source = load_source(args.source)  # the rows' key names its pooling and head either way
    pooling = args.pooling or source.encoder.pooling
    head = "norm" if source.config.head.input_norm else "plain"
    for target in args.targets:
        for n in args.sizes:
            for seed in args.seeds:
                if (target, str(n), str(seed), args.source, args.method, pooling, head) in done_runs(args.out):
                    continue
                row = run_one(args, pooling, target, n, seed)
                if row is None:
                    continue
                new = not args.out.exists()
                with args.out.open("a", newline="") as f:
                    writer = csv.DictWriter(f, COLUMNS)
                    if new:
                        writer.writeheader()
                    writer.writerow(row)
                print(f"  {target} n={n} seed={seed}: test MAE {row['test_mae']} {row['unit']} ({row['wall_s']} s)",
                      flush=True)


if __name__ == "__main__":
    main()
