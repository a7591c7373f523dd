"""Audio -> fingerprints: the one embedding path shared by extraction, search and the listener.

Audio is cut into 1 s segments at 0.5 s hop with ``segments.frame`` and run through the fingerprinter in batches.
``iter_embed_chunks`` does the same for a stream of chunks (e.g. ``audio_io.iter_audio`` on an hour-long file): it
carries the last partial segment's samples over to the next chunk, so segment ``j`` always covers samples
``[j * hop, j * hop + seg)`` of the whole stream and the result equals ``embed_audio`` on the concatenated audio,
while memory stays bounded by the chunk size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from torch import nn

from workflow_lib import HOP_SAMPLES, SEGMENT_SAMPLES
from workflow_lib.audio.files import iter_audio
from workflow_lib.audio.segments import SILENCE_DBFS, frame, n_segments, segment_levels_db

DEFAULT_BATCH_SIZE = 256


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device '{device}' requested but no CUDA device is available (use 'auto' or 'cpu')")
    return dev


def module_device(module: nn.Module) -> torch.device:
    """Device of the module's first parameter (CPU for a module without parameters)."""
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


class CompiledFingerprinter(nn.Module):
    """A fingerprinter whose encoder runs through ``torch.compile`` (same outputs within 1e-6).

    Inductor fuses the ELU and LayerNorm passes into the convolutions; whether that beats eager depends on the
    model and hardware: with the current encoder (which runs cache-sized chunks eagerly on CPU) it measured 3-8x
    *slower* on this project's CPU (bench/README.md), so extraction uses it only when ``extract.compile`` is set.
    The log-mel front end stays eager (inductor does not generate code for complex STFT ops). The batch dimension
    is compiled as dynamic, so songs' last, shorter batches do not trigger recompiles. If compilation fails (e.g.
    no C++ compiler), it logs why and falls back to eager.
    """

    def __init__(self, fingerprinter: nn.Module):
        super().__init__()
        self.inner = fingerprinter
        self.split = hasattr(fingerprinter, "frontend") and hasattr(fingerprinter, "encoder")
        target = fingerprinter.encoder if self.split else fingerprinter
        self.compiled = torch.compile(target, dynamic=True)
        self.failed = False
        for name in ("dim", "frontend_config", "model_config"):
            if hasattr(fingerprinter, name):
                setattr(self, name, getattr(fingerprinter, name))

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        if self.failed:
            return self.inner(wav)
        try:
            return self.compiled(self.inner.frontend(wav)) if self.split else self.compiled(wav)
        except Exception as exc:  # inductor raises many types (missing compiler, unsupported op...)
            import logging
            logging.getLogger(__name__).warning("torch.compile failed (%s: %s); using the eager model",
                                                type(exc).__name__, str(exc).splitlines()[0][:200])
            self.failed = True
            return self.inner(wav)


def optimize_for_inference(fingerprinter: nn.Module) -> nn.Module:
    """Wrap an eval-mode fingerprinter for bulk extraction (``torch.compile``; first call compiles, ~20 s)."""
    return CompiledFingerprinter(fingerprinter.eval())


@torch.inference_mode()
def embedding_dim(fingerprinter: nn.Module, device: torch.device | str | None = None) -> int:
    """Output dimension, from the ``dim`` attribute when the model has one, else from one forward pass."""
    dim = getattr(fingerprinter, "dim", None)
    if isinstance(dim, int):
        return dim
    dev = module_device(fingerprinter) if device is None else resolve_device(device)
    return int(fingerprinter(torch.zeros(1, SEGMENT_SAMPLES, device=dev)).shape[-1])


@torch.inference_mode()
def embed_segments(fingerprinter: nn.Module, segments: np.ndarray, batch_size: int = DEFAULT_BATCH_SIZE,
                   device: torch.device | str | None = None, silence_dbfs: float | None = SILENCE_DBFS,
                   levels: np.ndarray | None = None, raise_to_dbfs: float | None = None) -> np.ndarray:
    """Embed ready-cut segments ``(n, 8000)`` -> ``(n, D)`` float32, ``batch_size`` at a time.

    Segments quieter than ``silence_dbfs`` (the silence gate, ``segments.SILENCE_DBFS``) get a zero vector: it
    scores 0 against everything, so silence is never a neighbour in the database and never searched in a query.
    ``levels``: the segments' ``segment_levels_db`` when the caller has them already (measured once, not twice).
    ``raise_to_dbfs``: the segments quieter than this (and not gated) are raised to it before the model (a query's,
    ``segments.QUERY_LEVEL_DBFS``).
    """
    if segments.ndim != 2 or segments.shape[1] != SEGMENT_SAMPLES:
        raise ValueError(f"segments must have shape (n, {SEGMENT_SAMPLES}), got {segments.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dev = module_device(fingerprinter) if device is None else resolve_device(device)
    n = len(segments)
    if n == 0:
        return np.zeros((0, embedding_dim(fingerprinter, dev)), dtype=np.float32)
    if levels is None and (silence_dbfs is not None or raise_to_dbfs is not None):
        levels = segment_levels_db(segments)
    loud = np.flatnonzero(levels >= silence_dbfs) if silence_dbfs is not None else np.arange(n)
    gain = None
    if raise_to_dbfs is not None:
        lv = np.asarray(levels, np.float64)  # digital silence (-inf) is left as it is, gated or not
        gain = np.where(np.isfinite(lv), 10.0 ** (np.maximum(raise_to_dbfs - lv, 0.0) / 20.0), 1.0).astype(np.float32)
    out = np.zeros((n, embedding_dim(fingerprinter, dev)), dtype=np.float32)
    for i in range(0, len(loud), batch_size):
        rows = loud[i:i + batch_size]
        # The strided view from frame() is read-only and overlapping: copy each batch into one writable block.
        batch = np.array(segments[rows], dtype=np.float32, order="C")
        if gain is not None:
            batch *= gain[rows, None]
        out[rows] = fingerprinter(torch.from_numpy(batch).to(dev)).float().cpu().numpy()
    return out


def embed_audio(fingerprinter: nn.Module, audio_8k: np.ndarray, batch_size: int = DEFAULT_BATCH_SIZE,
                device: torch.device | str | None = None, silence_dbfs: float | None = SILENCE_DBFS,
                raise_to_dbfs: float | None = None) -> np.ndarray:
    """8 kHz mono audio -> ``(J, D)`` float32 fingerprints, one per 1 s segment at 0.5 s hop (J may be 0); the gate
    and the raise as in ``embed_segments``."""
    audio = np.ascontiguousarray(audio_8k, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"audio must be 1-D mono, got shape {audio.shape}")
    return embed_segments(fingerprinter, frame(audio), batch_size, device, silence_dbfs,
                          raise_to_dbfs=raise_to_dbfs)


def iter_embed_chunks(fingerprinter: nn.Module, chunks: Iterable[np.ndarray], batch_size: int = DEFAULT_BATCH_SIZE,
                      device: torch.device | str | None = None, with_levels: bool = False,
                      silence_dbfs: float | None = SILENCE_DBFS) -> Iterator[tuple]:
    """Yield ``(first_segment, embeddings)`` blocks for a stream of consecutive audio chunks (with ``with_levels``:
    ``(first_segment, embeddings, levels_dbfs)``).

    The samples after the last whole segment of a chunk are kept and prefixed to the next chunk, so the segments
    (and their indices) are exactly those of ``embed_audio`` on the concatenated stream.
    """
    for first, segs in iter_segment_chunks(chunks):
        levels = segment_levels_db(segs)
        emb = embed_segments(fingerprinter, segs, batch_size, device, silence_dbfs, levels)
        yield (first, emb, levels) if with_levels else (first, emb)


def iter_segment_chunks(chunks: Iterable[np.ndarray]) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(first_segment, segments)`` for a stream of consecutive audio chunks: the whole 1 s segments
    (``segments.frame``) each chunk completes, numbered as in the concatenated stream (``iter_embed_chunks``
    embeds them; the scan hands them to several workers)."""
    carry = np.zeros(0, dtype=np.float32)
    next_segment = 0
    for chunk in chunks:
        buf = np.concatenate([carry, np.asarray(chunk, dtype=np.float32)]) if len(carry) else \
            np.ascontiguousarray(chunk, dtype=np.float32)
        n = n_segments(len(buf))
        if n:
            yield next_segment, frame(buf)
            next_segment += n
            carry = buf[n * HOP_SAMPLES:].copy()  # fewer than SEGMENT_SAMPLES samples: the next segment's head
        else:
            carry = buf


def embed_file(fingerprinter: nn.Module, path: str | Path, batch_size: int = DEFAULT_BATCH_SIZE,
               device: torch.device | str | None = None, chunk_seconds: float = 60.0) -> np.ndarray:
    """Decode and embed a file chunk by chunk (bounded memory) -> ``(J, D)`` float32.

    Raises ``audio_io.AudioDecodeError`` for unreadable files.
    """
    blocks = [e for _, e in iter_embed_chunks(fingerprinter, iter_audio(path, chunk_seconds=chunk_seconds),
                                              batch_size, device)]
    if not blocks:
        return np.zeros((0, embedding_dim(fingerprinter, device)), dtype=np.float32)
    return np.concatenate(blocks)
