#!/bin/bash
# Runs rank-sources on three targets at n 800 and writes the exact commands and their output.
# Sources (trained first where missing): for KEY in eform bandgap gvrh, `mattransfer --threads 1 train` on configs/pretrain_eform.yaml with
#   data: {dataset: KEY, n_samples: 941}, training: {max_epochs: 30} and output_dir runs/src_KEY (see bench/README.md).
# PYTHON=/path/to/python overrides the interpreter (default .venv/bin/python).
# `bench/rank_sources.sh pretrained` instead appends a run with packages' pre-trained models (no training):
# three targets at n 100, both scores (LogME and kernel-ridge CV), twice (the second pass reads the caches).
cd "$(dirname "$0")/.."
export COLUMNS=200 PYTHONPATH="$PWD/src" OMP_NUM_THREADS=1
out=bench/results/rank_sources.txt

# two_passes TARGETS OPTIONS: `rank-sources --target T OPTIONS` for each target, timed, twice (the second
# pass reads the caches the first one filled).
two_passes() {
  for pass in "pass 1" "pass 2 (same command again)"; do
    for t in $1; do
      cmd="mattransfer --threads 1 rank-sources --target $t $2"
      echo; echo "## $t, $pass"; echo "\$ $cmd"
      /usr/bin/time -f "wall %e s, max RSS %M kB" ${PYTHON:-.venv/bin/python} -m mattransfer.cli ${cmd#mattransfer } 2>&1 | grep -v "^INFO *\(train\|data\|reading\)"
    done
  done
}
if [ "$1" = pretrained ]; then
{
echo; echo "# mattransfer rank-sources with packages' pre-trained models: 3 targets x 4 sources, n 100, seed 0, --score logme krr_cv"
echo "# date: $(date -u +%FT%TZ); host: 2-core CPU shared by 5 sessions; 1 torch thread"
two_passes "phonons dielectric gvrh" "--n 100 --data-sources configs/shared-data.yaml --score logme krr_cv --sources cgcnn-mp:formation-energy cgcnn-mp:band-gap cgcnn-mp:shear-moduli chgnet:0.3.0"
} >> $out 2>&1
exit
fi
for key in eform bandgap gvrh; do  # the three 30-epoch sources, trained once
  [ -f runs/src_$key/model.ckpt ] && continue
  mkdir -p runs
  ${PYTHON:-.venv/bin/python} -c "import yaml; o = yaml.safe_load(open('configs/pretrain_eform.yaml'));
o.update(output_dir='runs/src_$key'); o['data'].update(dataset='$key', n_samples=941); o['training']['max_epochs'] = 30
yaml.safe_dump(o, open('runs/src_$key.yaml', 'w'))"
  ${PYTHON:-.venv/bin/python} -m mattransfer.cli --threads 1 -q train runs/src_$key.yaml
done
{
echo "# mattransfer rank-sources on the shared data: 3 targets x 3 sources, n 800, seed 0"
echo "# date: $(date -u +%FT%TZ); host: 2-core CPU shared with another developer; 1 torch thread"
echo "# sources: runs/src_{eform,bandgap,gvrh}/model.ckpt from mattransfer --threads 1 train runs/src_KEY.yaml"
echo "#   (configs/pretrain_eform.yaml with dataset KEY, n_samples 941, max_epochs 30, output_dir runs/src_KEY)"
two_passes "phonons dielectric expt_gap" "--n 800 --data-sources configs/shared-data.yaml --sources runs/src_eform/model.ckpt runs/src_bandgap/model.ckpt runs/src_gvrh/model.ckpt"
} > $out 2>&1
