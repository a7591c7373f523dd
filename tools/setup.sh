#!/usr/bin/env bash
# Idempotent set-up: Debian packages (when root), the .venv with pinned packages, and this project in editable mode.
# A second run installs nothing: it checks what is there first.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(libportaudio2 ffmpeg pulseaudio pulseaudio-utils tmux)
PY=${PYTHON:-python3}

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ! "$PY" -c 'import venv, ensurepip' 2>/dev/null; then missing+=(python3-venv); fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "setup: WARNING: missing Debian packages (run as root or install them): ${missing[*]}" >&2
  fi
fi

if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "setup: Python >= 3.11 is required (found $("$PY" --version))" >&2
  exit 1
fi

want=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
stamp=.venv/.installed
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x .venv/bin/snakemake ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
echo "setup: installing pinned Python packages into .venv (torch is large: a few minutes the first time)"
.venv/bin/pip install -q --disable-pip-version-check -r requirements.txt 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/pip install -q --disable-pip-version-check --no-deps -e . 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c 'import torch, torchaudio, faiss, soundfile, snakemake' # fail here, not mid-run
echo "$want" > "$stamp"
echo "setup: done"
