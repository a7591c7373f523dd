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
BUNDLED_MODEL = os.path.join(workflow.basedir, "models", "nafp-small.pt")


def _model_file():
    source = config["model"]["source"]
    if source == "train":
        return f"{RESULTS}/model/model.pt"
    if source == "bundled":
        return BUNDLED_MODEL
    if not os.path.isfile(source):
        raise WorkflowError(f"config model.source: {source} is not a model file (use train, bundled or a path)")
    return source


MODEL_FILE = _model_file()
