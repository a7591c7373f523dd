#!/bin/bash
# Everything one call of bench/gpu_train.sh carries, from a fresh checkout, in one command (bench/README.md, "A
# fine-tune on the GPU from carried banks"): the project's .venv, the extra music (../shared/corpus/extra, fetched
# and built once into $EXTRA_HOME and linked at ../nafp-extra, where config/examples/dev_extra.yaml looks), the
# training banks of the bundled recipe without codec copies and with 10 validation songs (Snakemake, runs/gpu_pack),
# packed into .gpu_pack/ (a seeded subset of whole training songs, HOURS of them, as Opus at 12 kbit/s; validation
# songs and noise whole; responses as they are), and the wheels the GPU machine lacks in .whl_train/. Both folders
# are git-ignored; together with the working tree they must stay under the device tool's 64 MiB per call.
# A killed run is resumed by the same command (Snakemake's targets; the pack is written aside, then renamed).
#   bash bench/gpu_prepare.sh            # then the device call: "MINUTES=6.0 bash bench/gpu_train.sh",
#                                        # carry [".gpu_pack", ".whl_train"]
set -euo pipefail
cd "$(dirname "$0")/.."
HOURS=${HOURS:-6.19}
RUN=runs/gpu_pack
EXTRA_HOME=${EXTRA_HOME:-$HOME/nafp-extra}
CORPUS=../shared/corpus/extra

bash tools/setup.sh
if [ ! -d ../nafp-extra/music ]; then
  [ -d "$CORPUS" ] || { echo "gpu_prepare: $CORPUS is missing: the extra music cannot be built" >&2; exit 1; }
  if [ ! -d "$EXTRA_HOME/corpus/music" ]; then
    echo "gpu_prepare: fetching and building the extra music into $EXTRA_HOME (about 5 GB of downloads)"
    bash "$CORPUS/fetch_corpus.sh" "$EXTRA_HOME/src"
    rm -rf "$EXTRA_HOME/corpus.tmp" "$EXTRA_HOME/corpus"  # a build that did not finish
    python3 "$CORPUS/build_corpus.py" "$EXTRA_HOME/src" extra "$EXTRA_HOME/corpus.tmp"
    mv "$EXTRA_HOME/corpus.tmp" "$EXTRA_HOME/corpus"
  fi
  ln -sfn "$EXTRA_HOME/corpus" ../nafp-extra
fi

mkdir -p "$RUN"
cat > "$RUN/override.yaml" <<'EOF'
# bench/gpu_prepare.sh: what the GPU call trains on (bench/gpu_finetune.yaml has no codec copy either)
train:
  val_max_songs: 10
  augment:
    codec_prob: 0.0
EOF
banks=(results/model/audio/train.npy results/model/audio/val.npy results/noise/train.npy results/irs/train.npy)
.venv/bin/snakemake --cores "${CORES:-2}" --configfile config/examples/dev_extra.yaml \
    config/recipes/small_dev_extra.yaml "$RUN/override.yaml" --directory "$RUN" "${banks[@]}"

rm -rf .gpu_pack.tmp
B=$RUN/results
.venv/bin/python bench/gpu_pack.py pack train=$B/model/audio/train --out .gpu_pack.tmp --max-hours "$HOURS"
.venv/bin/python bench/gpu_pack.py pack val=$B/model/audio/val noise=$B/noise/train --out .gpu_pack.tmp
.venv/bin/python bench/gpu_pack.py pack irs=$B/irs/train --out .gpu_pack.tmp --raw
rm -rf .gpu_pack && mv .gpu_pack.tmp .gpu_pack

rm -rf .whl_train.tmp && mkdir .whl_train.tmp
# The GPU machine's Python (3.12) and platform; the project's pins from requirements.txt, and soundfile's own needs.
mapfile -t pins < <(grep -E '^(pytorch-optimizer|soundfile|soxr)==' requirements.txt)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl_train.tmp \
    "${pins[@]}" cffi==2.1.1 pycparser==3.12
rm -rf .whl_train && mv .whl_train.tmp .whl_train

# what travels besides: tracked files and untracked ones git does not ignore
tree=$(git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- | tail -1 | cut -f1)
total=$(( $(du -sb .gpu_pack .whl_train | awk '{s += $1} END {print s}') + tree ))
echo "gpu_prepare: .gpu_pack $(du -sh .gpu_pack | cut -f1), .whl_train $(du -sh .whl_train | cut -f1);" \
     "with the working tree $(( total / 1048576 )) MiB of the 64 MiB a call carries"
[ "$total" -lt $(( 64 * 1048576 )) ] || { echo "gpu_prepare: too large to carry: lower HOURS" >&2; exit 1; }
