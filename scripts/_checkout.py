"""Imported first by every Snakemake adapter: makes this checkout's workflow_lib importable in whatever environment
runs the job (the set-up's .venv has it installed from here already; a `--sdm conda` environment built from
envs/workflow.yaml has only its dependencies). Snakemake puts this folder on the adapters' import path."""
import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
