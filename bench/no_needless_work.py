"""Wall time and peak memory of `mattransfer datasets` (three calls) and of the README's pre-training
on 941 eform samples, with a given source tree: before/after issue 11 (metadata cache, only the
used rows decoded and featurized).

What it measures
    Each command runs as its own process under ``/usr/bin/time`` (wall seconds, user+sys CPU
    seconds, peak RSS), with one torch thread and a fresh, empty cache (``MATTRANSFER_CACHE`` in a
    temporary folder), so graphs and row counts are built from scratch:

    1. ``mattransfer datasets --data-sources configs/shared-data.yaml``, three times in a row (the
       first call counts rows; from the second on the cache answers);
    2. ``mattransfer train configs/pretrain_eform.yaml`` with ``max_epochs`` cut to ``--epochs``
       (default 2; the data loading and featurization this measures do not depend on it) and
       ``output_dir`` in the temporary folder.

    ``--source DIR`` runs the package from another checkout's ``src`` (``PYTHONPATH``), e.g. a
    worktree of main for the "before" numbers; default: this checkout. The 1-minute load average
    is recorded before each command (the development machine is shared).

How to run (by hand, not a test; ~3 min after, ~7 min before, on the loaded 2-core machine)
    git worktree add /tmp/before main
    .venv/bin/python bench/no_needless_work.py --source /tmp/before/src --label before
    .venv/bin/python bench/no_needless_work.py --label after

It writes ``bench/results/no_needless_work_<label>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def timed(command: list[str], env: dict[str, str]) -> dict:
    """Run ``command`` under /usr/bin/time; its wall and CPU seconds, peak RSS and output's last lines."""
    result = subprocess.run(["/usr/bin/time", "-f", "TIME %e %U %S %M", *command], env=env, cwd=ROOT,
                            capture_output=True, text=True)
    wall, user, system, rss_kb = map(float, re.findall(r"TIME (\S+) (\S+) (\S+) (\S+)", result.stderr)[-1])
    return {"command": " ".join(command), "returncode": result.returncode, "wall_s": wall, "cpu_s": user + system,
            "peak_rss_mb": rss_kb / 1024, "load_before": os.getloadavg()[0],
            "log": [line for line in (result.stdout + result.stderr).splitlines() if "INFO" in line or "MAE" in line][-8:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=ROOT / "src", help="the package's source folder to run")
    parser.add_argument("--label", default="after")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PYTHONPATH": str(args.source.resolve()), "OMP_NUM_THREADS": "1",
               "MATTRANSFER_CACHE": str(Path(tmp) / "cache"), "COLUMNS": "160"}
        cli = [sys.executable, "-m", "mattransfer.cli", "--threads", "1"]
        runs = {}
        for k in (1, 2, 3):
            runs[f"datasets_call_{k}"] = timed([*cli, "datasets", "--data-sources", "configs/shared-data.yaml"], env)
            print(f"datasets call {k}: {runs[f'datasets_call_{k}']['wall_s']:.2f} s wall,"
                  f" {runs[f'datasets_call_{k}']['cpu_s']:.2f} s CPU", flush=True)
        options = yaml.safe_load((ROOT / "configs" / "pretrain_eform.yaml").read_text())
        options["output_dir"] = str(Path(tmp) / "run")
        options["data_sources"] = str(ROOT / "configs" / "shared-data.yaml")
        options["training"]["max_epochs"] = args.epochs
        path = Path(tmp) / "pretrain.yaml"
        path.write_text(yaml.safe_dump(options))
        runs["pretrain_eform_941"] = timed([*cli, "train", str(path)], env)
        print(f"pretrain eform 941, {args.epochs} epochs: {runs['pretrain_eform_941']['wall_s']:.1f} s wall,"
              f" {runs['pretrain_eform_941']['cpu_s']:.1f} s CPU, peak RSS {runs['pretrain_eform_941']['peak_rss_mb']:.0f} MB")
        print("\n".join(runs["pretrain_eform_941"]["log"]))
    report = {"command": " ".join(["python", *sys.argv]), "label": args.label, "source": str(args.source),
              "epochs": args.epochs, "runs": runs, "cores": os.cpu_count()}
    out = ROOT / "bench" / "results" / f"no_needless_work_{args.label}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
