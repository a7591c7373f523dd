# Paths, helpers and checks shared by all rules files (the snakemake-workflows layout: rules files hold rules only).
import glob
import os
import sys

from snakemake.exceptions import WorkflowError

from workflow_lib.common.layout import is_bundled, model_source_path, null_bank_path, other_music_path
from workflow_lib.common.source_digest import code_digest
from workflow_lib.database.catalogue import CATALOGUE_FORMAT
from workflow_lib.model.model_file import ModelFileError, verify_checksum

# A run killed with Snakemake itself (kill -9, power loss) leaves Snakemake's lock files: the same command must
# resume, so the main process removes locks that no live run of this workflow holds (common/locks.py).
if workflow.is_main_process:
    from workflow_lib.common.locks import clear_stale_snakemake_locks

    if clear_stale_snakemake_locks():
        print("Removed the locks of an earlier run that was killed; resuming.", file=sys.stderr)

RESULTS = config["results"]
LOGS = "logs"
# Every rule runs in this one environment (all stages share workflow_lib); see the README on --sdm conda.
ENV = "../envs/workflow.yaml"

# With no music configured the built-in synthetic demo corpus is generated and used instead.
USE_DEMO = len(config["data"]["music_dirs"]) == 0

# The result files of every stage (docs/ARCHITECTURE.md describes their formats). Rules name their outputs from
# this table; downstream rules refer to upstream outputs through rules.<name>.output.
PATHS = {
    "config": f"{RESULTS}/config.yaml",
    "demo_catalogue": f"{RESULTS}/demo_corpus/catalogue.csv",
    "demo_music": f"{RESULTS}/demo_corpus/music",
    "songs": f"{RESULTS}/manifest/songs.parquet",
    "rejected": f"{RESULTS}/manifest/rejected.parquet",
    "rejected_csv": f"{RESULTS}/manifest/rejected.csv",  # CSV copies: what people open (the Parquet is for code)
    "splits": f"{RESULTS}/split/splits.parquet",
    "splits_csv": f"{RESULTS}/split/splits.csv",
    "noise": f"{RESULTS}/noise/{{side}}",  # clip bank prefix; side = train | test
    "irs": f"{RESULTS}/irs/{{side}}",
    "song_bank": f"{RESULTS}/model/audio/{{split}}",  # split = train | val
    "model": f"{RESULTS}/model/model.pt",
    "train_metrics": f"{RESULTS}/model/metrics.csv",
    "train_curves": f"{RESULTS}/model/training_curves.png",
    "checkpoint": f"{RESULTS}/model/checkpoints/last.pt",  # not an output: kept across a killed run's rerun
    "shard": f"{RESULTS}/fingerprints/shard-{{shard}}.parquet",
    "added": f"{RESULTS}/fingerprints/added",  # `nafp db add` records (not outputs: edits of a built database)
    "removed": f"{RESULTS}/fingerprints/removed_songs.txt",
    "index_dir": f"{RESULTS}/index",
    "catalogue": f"{RESULTS}/catalogue.parquet",
    "threshold": f"{RESULTS}/index/threshold.json",
    "thresholds_csv": f"{RESULTS}/index/thresholds.csv",
    "eval_dir": f"{RESULTS}/eval",
}
# `nafp index` runs with results "." (the folder itself): "./x" would draw a Snakemake warning per file.
PATHS = {key: os.path.normpath(path) for key, path in PATHS.items()}
INDEX_FILES = [f"{PATHS['index_dir']}/{name}" for name in ("index.faiss", "index_meta.parquet", "vectors.f16.npy",
                                                            "index.json")]
SHARD_FILES = expand(PATHS["shard"], shard=range(config["extract"]["n_shards"]))


def bank(kind, side):
    """The two files of a clip bank (``kind`` noise | irs | song_bank)."""
    key = "split" if kind == "song_bank" else "side"
    return multiext(PATHS[kind].format(**{key: side}), ".npy", ".parquet")


def _check_dirs(key):
    missing = [d for d in config["data"][key] if not os.path.isdir(d)]
    if missing:
        raise WorkflowError(f"config data.{key}: not a folder: {', '.join(missing)}")


for _key in ("music_dirs", "distractor_dirs", "unknown_dirs", "noise_dirs", "speech_dirs", "ir_dirs"):
    _check_dirs(_key)
_fractions = config["split"]["fractions"]
if abs(sum(_fractions.values()) - 1.0) > 1e-6:  # checked at start, not after the manifest decoded everything
    raise WorkflowError(f"config split.fractions must sum to 1, got {sum(_fractions.values()):g} ({_fractions})")


def music_dirs():
    return [PATHS["demo_music"]] if USE_DEMO else config["data"]["music_dirs"]


def demo_marker(wildcards=None):
    return [PATHS["demo_catalogue"]] if USE_DEMO else []


def music_listing(wildcards=None):
    """A digest of the audio files below the music, distractor and unknown folders (paths, sizes, modification
    times): as a parameter of the manifest it reruns the scan when a file is added, removed or changed (the demo
    corpus is an input of its own)."""
    if USE_DEMO:
        return ""
    from workflow_lib.data.folders import audio_listing_digest

    data = config["data"]
    return audio_listing_digest([*data["music_dirs"], *data["distractor_dirs"], *data["unknown_dirs"]], skip=[RESULTS])


# The low-bitrate codec copy of the songs is built only when training draws codec views.
TRAIN_CODECS = config["train"]["codecs"] if config["train"]["augment"]["codec_prob"] > 0 else []


def song_bank_files(split):
    files = bank("song_bank", split)
    if TRAIN_CODECS:
        files += multiext(PATHS["song_bank"].format(split=split) + "_codec", ".npy", ".parquet")
    return files


def added_fingerprints(wildcards=None):
    """Fingerprint files written by `nafp db add` (none in a fresh results folder)."""
    return sorted(glob.glob(f"{PATHS['added']}/*.parquet"))


def removed_songs_file(wildcards=None):
    return [PATHS["removed"]] if os.path.exists(PATHS["removed"]) else []


def eval_results(wildcards=None):
    out = [rules.eval_neural.output.results]
    if config["evaluate"]["baseline_audfprint"]:
        out.append(rules.baseline_audfprint.output.results)
    return out


# The model every stage after training uses: trained here (model.source: train), the bundled one, or a file.
def _model_file():
    source = config["model"]["source"]
    path = model_source_path(source, ".")
    if path is None:
        return PATHS["model"]
    if not path.is_file():
        raise WorkflowError(f"config model.source: {source} names no model file ({path}); use train, bundled, "
                            "bundled-pair or the path of a model file")
    _verify(path)
    return str(path)


def _verify(path):
    """The bundled model must be the file its checksum names (a damaged copy is refused at once)."""
    if is_bundled(path):
        try:
            verify_checksum(path)
        except ModelFileError as exc:
            raise WorkflowError(str(exc))


MODEL_FILE = _model_file()


def _params_without(section, later_keys, in_use):
    """A config section as a rule's params, without keys added later while they change nothing (``in_use`` false):
    runs made before the keys existed keep their params and are not retrained (or rerun)."""
    return dict(section) if in_use else {k: v for k, v in section.items() if k not in later_keys}


MODEL_PARAMS = _params_without(config["model"], {"compression"}, config["model"]["compression"] != "log")
TRAIN_PARAMS = _params_without(config["train"], {"partner", "partner_weight"}, config["train"]["partner"] != "none")
# How many processes draw the batches changes the speed, never the model: left at auto, runs keep their params.
TRAIN_PARAMS = _params_without(TRAIN_PARAMS, {"view_workers"}, config["train"].get("view_workers", "auto") != "auto")
_MONITORING = config["evaluate"]["monitoring"]
MONITORING_PARAMS = _params_without(_MONITORING, {"room_pool", "whitened"},
                                    _MONITORING.get("room_pool", "room") != "room"
                                    or _MONITORING.get("whitened", False))


def _train_model_file(key):
    """The model file a train key names (none | bundled | a path), checksum-verified: an input of the train rule."""
    value = config["train"][key]
    path = model_source_path(value, ".") if value != "none" else None
    if path is not None and not path.is_file():
        raise WorkflowError(f"config train.{key}: {value} names no model file ({path})")
    if path is not None:
        _verify(path)
    return [str(path)] if path is not None else []


def init_model(wildcards=None):
    """The model file training starts from (train.init)."""
    return _train_model_file("init")


def partner_model(wildcards=None):
    """The model file held fixed beside the trained one (train.partner)."""
    return _train_model_file("partner")


# The evaluate keys that define the queries (for params: toggling the baseline or the modes reruns only what uses
# them, not the query set or the calibration), and the search keys that change results (not batch size or device).
QUERY_PLAN = {k: v for k, v in config["evaluate"].items()
              if k not in ("modes", "baseline_audfprint", "audfprint", "monitoring")}


def monitoring_results(wildcards=None):
    return [rules.monitor.output.results] if config["evaluate"]["monitoring"]["enabled"] else []


SEARCH_PARAMS = {k: v for k, v in config["search"].items() if k not in ("batch_size", "device", "mode")}
# Off, the bundled other music is left out of the params: results folders made before it keep their calibration.
SEARCH_PARAMS["calibration"] = _params_without(config["search"]["calibration"], {"bundled_other_music"},
                                               config["search"]["calibration"]["bundled_other_music"])
# The package's Python sources (common/source_digest.py): a threshold calibrated by older search code is fitted
# again by the next run instead of being kept beside a search that ranks candidates differently.
CODE_DIGEST = code_digest()


# Off, the other music is left out of the index's params: indexes built before it keep theirs.
INDEX_PARAMS = _params_without({k: v for k, v in config["index"].items() if k != "threads"}, {"other_music"},
                               config["index"]["other_music"])


def other_music_input(wildcards=None):
    """The model's other music the index holds beside the songs (index.other_music), when the model has it."""
    path = other_music_path(MODEL_FILE)
    return [str(path)] if config["index"]["other_music"] and path.is_file() else []


def null_bank_input(wildcards=None):
    """The bundled other music the calibration adds (search.calibration.bundled_other_music), when the model has one:
    an input, so a new bank recalibrates."""
    path = null_bank_path(MODEL_FILE)
    return [str(path)] if config["search"]["calibration"]["bundled_other_music"] and path.is_file() else []
