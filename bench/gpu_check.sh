#!/bin/bash
# One call of the device tool (a lent GPU machine): the training throughput on its GPU (batches drawn by the
# background thread and by worker processes) and the CUDA paths of the tests (training, embedding, search, scan,
# listener). Results into bench/README.md ("Training on a GPU").
# The machine has Python 3.12 with torch, numpy, pandas, pyarrow, scipy, pyyaml and pytest but not this project's
# other dependencies: they travel as wheels in .whl/ (git-ignored; bench/README.md has the download command).
# Run (device tool): command "bash bench/gpu_check.sh", carry [".whl"]; writes $OUT/{machine,throughput,tests}.txt.
set -o pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
# The scripts' tests run them as programs, which find the package installed (the set-up's pip install -e .).
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "no editable install"
{ date -u; nvidia-smi -L; nproc; python3 -c "import sys, torch, torchaudio; print(sys.version.split()[0], torch.__version__, torchaudio.__version__)"; } 2>&1 | tee "$OUT/machine.txt"
timeout 240 python3 bench/train_throughput.py --device cuda --threads 16 --presets small nafp \
    --batch-sizes 640 256 --view-workers 0 auto --steps 10 --inference-batches 4096 2>&1 \
    | tee "$OUT/throughput.txt"
timeout 150 python3 -m pytest -q -p no:cacheprovider -n 4 tests/test_train.py tests/test_augment.py \
    tests/test_features_model.py tests/test_ensemble.py tests/test_extract.py tests/test_index.py tests/test_search.py \
    tests/test_scan.py tests/test_whiten.py tests/test_listener_views.py tests/test_query_cli.py 2>&1 \
    | tee "$OUT/tests.txt"
