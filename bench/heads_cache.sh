#!/bin/bash
# First and second `heads` fine-tune of one pre-trained source on one dataset, from an empty cache:
# the first run featurizes and encodes every structure it uses, the second reads both from the cache.
# Usage: bench/heads_cache.sh SOURCE DATASET N RUNS_DIR   (output: bench/results/heads_cache_<source>.txt)
# Run from the repository root with mattransfer importable (PYTHONPATH=src or the venv).
set -euo pipefail
source=$1 dataset=$2 n=$3 runs=$4
out=bench/results/heads_cache_${source//:/-}.txt
cache=$(mktemp -d)  # an empty cache: the first run pays for everything
mkdir -p "$runs"
cat > "$runs/heads_cache.yaml" <<YAML
seed: 0
device: cpu
threads: 1
output_dir: $runs/heads_cache
data_sources: $(pwd)/configs/shared-data.yaml
data: {dataset: $dataset, n_samples: $n}
finetune: {method: heads, read_from: "$source", config: {lr_head: 0.003}}
YAML
{
  echo "command: bench/heads_cache.sh $*"
  echo "date: $(date -u +%FT%TZ)  load average: $(cut -d' ' -f1-3 /proc/loadavg)  git: $(git rev-parse --short HEAD)"
  for run in first second; do
    start=$(date +%s.%N)
    MATTRANSFER_CACHE=$cache OMP_NUM_THREADS=1 python -m mattransfer.cli -q --threads 1 train "$runs/heads_cache.yaml" >/dev/null
    end=$(date +%s.%N)
    python - "$run" "$start" "$end" "$runs/heads_cache/metrics.json" <<'PY'
import json, sys
run, start, end, path = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
m = json.load(open(path))
print(f"{run} run: command wall {end - start:.1f} s; in-process wall {m['wall_seconds']:.1f} s, of which head"
      f" training (fit) {m['fit_seconds']:.1f} s, so {m['wall_seconds'] - m['fit_seconds']:.1f} s data, featurizing,"
      f" encoding and testing; test MAE {m['test']['mae']:.1f} {m['unit']} (n_test {m['n_test']})")
PY
  done
  echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$out"
rm -rf "$cache"
