# Paths and helpers shared by all rules files.
import os

from snakemake.exceptions import WorkflowError

RESULTS = "results"
LOGS = "logs"

# With no music configured the built-in synthetic demo corpus is generated and used instead.
USE_DEMO = len(config["data"]["music_dirs"]) == 0
DEMO_DIR = f"{RESULTS}/demo_corpus"


def _check_dirs(key):
    missing = [d for d in config["data"][key] if not os.path.isdir(d)]
    if missing:
        raise WorkflowError(f"config data.{key}: not a folder: {', '.join(missing)}")


for _key in ("music_dirs", "distractor_dirs", "noise_dirs", "speech_dirs", "ir_dirs"):
    _check_dirs(_key)


def music_dirs():
    return [f"{DEMO_DIR}/music"] if USE_DEMO else config["data"]["music_dirs"]


def demo_marker(wildcards=None):
    return [f"{DEMO_DIR}/catalogue.csv"] if USE_DEMO else []


# The model every stage after training uses: trained here (model.source: train), the bundled one, or a file.
from workflow_lib.common.layout import model_source_path


def _model_file():
    source = config["model"]["source"]
    path = model_source_path(source, ".")
    if path is None:
        return f"{RESULTS}/model/model.pt"
    if not path.is_file():
        raise WorkflowError(f"config model.source: {source} names no model file ({path}); use train, bundled or "
                            "the path of a model.pt")
    return str(path)


MODEL_FILE = _model_file()
