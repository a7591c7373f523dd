#!/bin/bash
# One call of the device tool (a lent GPU machine): rebuild the carried training banks and fine-tune the bundled
# model there (bench/gpu_finetune.yaml); bench/README.md, "A fine-tune on the GPU".
# Here first: `bash bench/gpu_prepare.sh` (the banks by Snakemake in runs/gpu_pack, packed by bench/gpu_pack.py into
# .gpu_pack/, the project's missing dependencies as wheels in .whl_train/; both git-ignored).
# Run (device tool): command "bash bench/gpu_train.sh", carry [".gpu_pack", ".whl_train"]; writes
# $OUT/{machine.txt, model.pt, metrics.csv, curves.png, train.log}.
set -o pipefail
OUT=${OUT:-/tmp/gpu_train}
MINUTES=${MINUTES:-6.0}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl_train/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
{ date -u; nvidia-smi -L; nproc; python3 -c "import sys, torch; print(sys.version.split()[0], torch.__version__)"; } \
    2>&1 | tee "$OUT/machine.txt"
start=$(date +%s)
python3 bench/gpu_pack.py unpack .gpu_pack --out /tmp/banks --workers "$(nproc)" 2>&1 | tee -a "$OUT/machine.txt" \
    || exit 1
echo "unpacked in $(( $(date +%s) - start )) s" | tee -a "$OUT/machine.txt"
python3 bench/gpu_train.py /tmp/banks "$OUT" --recipe config/recipes/small_dev_extra.yaml bench/gpu_finetune.yaml \
    ${EXTRA_RECIPE:-} --init models/nafp-small.pt --max-minutes "$MINUTES" ${DEVICE:+--device $DEVICE} 2>&1 \
    | grep -v "it/s\]$" | tail -60
echo "done in $(( $(date +%s) - start )) s" | tee -a "$OUT/machine.txt"
