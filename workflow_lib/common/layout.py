"""Where the files of a results folder live (docs/ARCHITECTURE.md), for the commands that read or edit one."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUNDLED_MODEL = REPO / "models" / "nafp-small.pt"
# The models shipped in models/ (see models/README.md), by the name model.source and `nafp index --model` take:
# "bundled" the log-mel model (the default: fastest), "bundled-pair" it and a band-centred model searched as one
# (twice the compute, better in resonant spaces and noisy rooms).
BUNDLED_MODELS = {"bundled": BUNDLED_MODEL, "bundled-pair": REPO / "models" / "nafp-small-pair.pt"}


def missing_results(results: str | Path) -> str | None:
    """The error for a results folder that does not exist or is not one (checked first by every command), else
    None. A results folder holds the settings it was built with (``config.yaml``) or an index; a folder with
    neither is most often the music folder given as ``--results``."""
    results = Path(results)
    if not results.is_dir():
        return f"results folder not found: {results} (run the workflow or `nafp index` first, or pass --results)"
    if not (results / "index").is_dir() and not (results / "config.yaml").is_file():
        return (f"{results} is not a results folder (it has no index/ and no config.yaml); `nafp index MUSIC_FOLDER "
                f"--results DB_FOLDER` makes one, and --results DB_FOLDER then searches it")
    return None


def is_bundled(path: str | Path) -> bool:
    return Path(path).resolve() in {p.resolve() for p in BUNDLED_MODELS.values()}


def null_bank_path(model_path: str | Path) -> Path:
    """Where a model file's bank of other music's null queries lies (``evaluation.null_bank``): beside it,
    ``models/nafp-small.pt`` -> ``models/nafp-small.null.npz``."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.stem + ".null.npz")


def other_music_path(model_path: str | Path) -> Path:
    """Where a model file's other music lies (``database.other_music``): beside it, ``models/nafp-small.pt`` ->
    ``models/nafp-small.other.parquet``."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.stem + ".other.parquet")


def model_source_path(source: str, run_dir: str | Path) -> Path | None:
    """The model file a ``model.source`` names: None for ``train`` (the run's own), the bundled model, or a path
    (relative paths are relative to the run directory, as in the workflow)."""
    if source == "train":
        return None
    if source in BUNDLED_MODELS:
        return BUNDLED_MODELS[source]
    p = Path(source)
    return p if p.is_absolute() else Path(run_dir) / p


@dataclass(frozen=True)
class ResultsLayout:
    root: Path
    model_source: str = "train"

    @classmethod
    def of(cls, results: str | Path, config: dict | None = None) -> "ResultsLayout":
        source = str(((config or {}).get("model") or {}).get("source", "train"))
        return cls(Path(results), source)

    @property
    def model(self) -> Path:
        return model_source_path(self.model_source, self.root.parent) or self.root / "model" / "model.pt"

    @property
    def index(self) -> Path:
        return self.root / "index"

    @property
    def threshold(self) -> Path:
        return self.root / "index" / "threshold.json"

    @property
    def catalogue(self) -> Path:
        return self.root / "catalogue.parquet"

    @property
    def added(self) -> Path:
        return self.root / "fingerprints" / "added"

    @property
    def removed(self) -> Path:
        return self.root / "fingerprints" / "removed_songs.txt"

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"
