"""Shared stand-ins for the extraction / index / catalogue tests: a deterministic encoder with the Fingerprinter
interface, generated songs, synthetic fingerprint files and a tiny real ``model.pt``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from torch import nn

from workflow_lib.audio.files import write_audio
from workflow_lib.database.fingerprint_file import ModelIdentity, ShardMeta, fingerprint_table

SR = 8000


class ProjectionFingerprinter(nn.Module):
    """Waveform ``(B, 8000)`` -> fixed seeded random projection -> L2 normalisation. Counts segments it embeds."""

    def __init__(self, dim: int = 16, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("proj", torch.randn(8000, dim, generator=g) / 8000 ** 0.5)
        self.dim = dim
        self.segments_seen = 0

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        self.segments_seen += len(wav)
        return F.normalize(wav @ self.proj, dim=-1)


class FailingFingerprinter(ProjectionFingerprinter):
    """Raises (like a kill) once it has embedded ``fail_after`` batches."""

    def __init__(self, fail_after: int, **kw):
        super().__init__(**kw)
        self.fail_after, self.batches = fail_after, 0

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        self.batches += 1
        if self.batches > self.fail_after:
            raise KeyboardInterrupt("simulated kill")
        return super().forward(wav)


def song_audio(seconds: float, seed: int) -> np.ndarray:
    """Band-limited noise bursts: every segment differs from every other."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(int(seconds * SR)).astype(np.float32)
    x = np.convolve(x, np.ones(4, dtype=np.float32) / 4, mode="same")
    return (0.3 * x / (np.abs(x).max() + 1e-9)).astype(np.float32)


def write_songs(folder: Path, lengths: dict[str, float], seed: int = 0) -> dict[str, Path]:
    """One WAV per song id with the given lengths (seconds)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for i, (sid, seconds) in enumerate(lengths.items()):
        p = folder / f"{sid}.wav"
        write_audio(p, song_audio(seconds, seed + i))
        out[sid] = p
    return out


def unit_vectors(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def write_fingerprint_file(path: Path, songs: dict[str, np.ndarray], checksum: str = "model-a",
                           dtype: str = "float16") -> Path:
    """A fingerprint file holding ``songs`` (song id -> (J, D) vectors) in the given order."""
    ids = list(songs)
    dim = next(iter(songs.values())).shape[1]
    meta = ShardMeta.for_identity(ModelIdentity(checksum, {"n_mels": 256}, dim), dtype,
                                  sources={s: "sig" for s in ids}, n_songs=len(ids),
                                  n_rows=sum(len(v) for v in songs.values()))
    table = fingerprint_table(ids, [len(songs[s]) for s in ids], np.concatenate([songs[s] for s in ids]), meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=97)  # small row groups: songs straddle group boundaries
    return path


def save_tiny_model(path: Path, seed: int = 0) -> Path:
    """A real (untrained) narrow Fingerprinter saved as model.pt."""
    from workflow_lib.model.features import FrontendConfig
    from workflow_lib.model.network import Fingerprinter, ModelConfig
    from workflow_lib.model.model_file import save_model

    torch.manual_seed(seed)
    cfg = ModelConfig(channels=[4, 4, 4, 4, 8, 8, 8, 8], dim=8, head_hidden=4, preset="small")
    model = Fingerprinter(cfg, FrontendConfig())
    save_model(path, model.state_dict(), cfg, FrontendConfig(), {"note": "test"})
    return path
