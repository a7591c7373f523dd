"""Small deterministic stand-ins for the search tests: generated songs, a spectral encoder with the Fingerprinter
interface (waveform ``(B, 8000)`` -> L2-normalised ``(B, D)``), and a real fingerprint database over them."""

from __future__ import annotations

import faiss
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from workflow_lib.model.embed import embed_audio
from workflow_lib.database.index import FingerprintDB, RowMap
from workflow_lib.database.vectors import normalize
from workflow_lib.search.searcher import Searcher

SR = 8000


def synth_song(seed: int, seconds: float = 30.0) -> np.ndarray:
    """Random three-partial notes every 0.5 s with smooth envelopes: every second of every song differs."""
    rng = np.random.default_rng(seed)
    note = SR // 2
    t = np.arange(note) / SR
    env = np.hanning(note) ** 0.5
    out = []
    for _ in range(int(seconds * 2)):
        f = rng.uniform(300.0, 3500.0, size=3)
        out.append(sum(np.sin(2 * np.pi * fi * t + rng.uniform(0, 6.3)) for fi in f) / 3 * env)
    x = 0.4 * np.concatenate(out) + 0.003 * rng.standard_normal(len(out) * note)
    return x.astype(np.float32)


def resonate(x: np.ndarray, freqs_hz: tuple[float, ...], t60_s: float) -> np.ndarray:
    """``x`` through narrow two-pole resonances (a resonant space's modes, each at unit RMS) that ring for
    ``t60_s``."""
    import scipy.signal

    r = 10 ** (-3 / (t60_s * SR))  # -60 dB after t60_s
    out = np.zeros(len(x))
    for f in freqs_hz:
        y = scipy.signal.lfilter([1.0], [1.0, -2 * r * np.cos(2 * np.pi * f / SR), r * r], x)
        out += y / np.sqrt(np.mean(y ** 2))
    return out


class SpectralEncoder(nn.Module):
    """Log-magnitude STFT of the segment pooled to ``time_bins`` steps (some shift tolerance), mean-removed, through
    a fixed seeded random projection."""

    def __init__(self, dim: int = 64, n_fft: int = 512, hop: int = 256, time_bins: int = 4, seed: int = 0):
        super().__init__()
        self.n_fft, self.hop, self.dim, self.time_bins = n_fft, hop, dim, time_bins
        n_feat = (n_fft // 2 + 1) * time_bins
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("proj", torch.randn(n_feat, dim, generator=g) / n_feat ** 0.5)
        self.register_buffer("window", torch.hann_window(n_fft))

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(wav, self.n_fft, self.hop, window=self.window, return_complex=True).abs()
        feat = F.adaptive_avg_pool1d(torch.log(spec + 1e-3), self.time_bins)
        feat = feat - feat.mean(dim=(-2, -1), keepdim=True)
        return F.normalize(feat.flatten(1) @ self.proj, dim=-1)


def build_db(encoder: nn.Module, songs: dict[str, np.ndarray]) -> FingerprintDB:
    """A real ``FingerprintDB`` (exact inner-product index, float16 vectors) over the songs' fingerprints."""
    embs = [embed_audio(encoder, audio, batch_size=64, device="cpu") for audio in songs.values()]
    vectors = np.concatenate(embs).astype(np.float16)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(normalize(vectors))
    rows = RowMap.from_counts(list(songs), [len(e) for e in embs])
    return FingerprintDB(index, rows, vectors, {"model_checksum": "test", "ntotal": len(vectors)})


def build_searcher(songs: dict[str, np.ndarray], **kwargs) -> Searcher:
    db = build_db(SpectralEncoder(), songs)
    catalogue = {sid: (f"Title {sid}", f"Artist {sid}") for sid in songs}
    kwargs.setdefault("device", "cpu")
    return Searcher(SpectralEncoder(), db, catalogue, **kwargs)


def songs_sharing_a_part(rng: np.random.Generator, dim: int = 16) -> tuple[FingerprintDB, np.ndarray]:
    """A database of three 80-segment songs of random fingerprints (a, b, c; c's segments 0-39 are a noisy copy of
    a's 20-59, a part the two share) and its float32 vectors, for the search tests that need neighbours by hand."""
    vec = normalize(rng.standard_normal((240, dim)).astype(np.float32))
    vec[160:200] = normalize(vec[20:60] + 0.3 * rng.standard_normal((40, dim)).astype(np.float32))
    index = faiss.IndexFlatIP(dim)
    index.add(vec)
    return FingerprintDB(index, RowMap.from_counts(["a", "b", "c"], [80, 80, 80]), vec.astype(np.float16),
                         {"model_checksum": "x", "ntotal": len(vec)}), vec


def stub_database(monkeypatch, results, searcher) -> None:
    """The commands' database stood in for by ``searcher`` (or by what a callable ``searcher`` returns at each
    command), for a results folder ``results`` given an index/ folder so that it looks like one to the commands'
    first check."""
    from workflow_lib.cli import query as cli_query

    (results / "index").mkdir(parents=True, exist_ok=True)
    current = searcher if callable(searcher) else lambda: searcher
    monkeypatch.setattr(cli_query, "load_searcher", lambda args, overrides=None: (current(), {}))
