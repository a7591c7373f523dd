"""Log-mel front end shared by training, extraction and the listener.

NAFP settings: 1 s windows at 8 kHz, STFT n_fft 1024 / hop 256 (zero-padded by n_fft/2 on both sides, so 32 frames),
**magnitude** (power 1) Slaney mel filterbank with 256 bands over 300-4000 Hz, then ``log10(mel + 0.06)`` and the
**per-sample** maximum subtracted. The reference TF code subtracts the maximum over the whole batch, which makes a
fingerprint depend on what else is in the batch; per-sample normalisation keeps extraction batch-independent and
makes the features invariant to the overall gain of the input. The +0.06 floor keeps near-silent bins from
dominating the log scale (quiet passages map to a flat floor instead of amplified noise).

``compression`` can replace the log by per-channel energy normalisation (``pcen``: each band divided by its own
smoothed past, which takes away a static colouring and flattens what only rings on), or keep the log and remove
each band's mean over the window (``log-cmn``); ``a+b`` gives the encoder both as two input channels (``log+pcen``,
``log+log-cmn``). The default stays ``log``; bench/README.md ("The front end and ringing") measures the others.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torchaudio
from torch import nn

from workflow_lib import SAMPLE_RATE, SEGMENT_SAMPLES
from workflow_lib.common.config import check_keys


COMPRESSIONS = ("log", "pcen", "log+pcen", "log-cmn", "log+log-cmn", "log-cmn+log")


@dataclass(frozen=True)
class FrontendConfig:
    sample_rate: int = SAMPLE_RATE
    segment_samples: int = SEGMENT_SAMPLES
    n_fft: int = 1024
    hop_length: int = 256
    n_mels: int = 256
    f_min: float = 300.0
    f_max: float = 4000.0
    log_offset: float = 0.06
    # "log": log10(mel + log_offset), per-sample max removed (NAFP). "pcen": per-channel energy normalisation
    # (Wang et al. 2017, librosa's defaults): each band divided by its own smoothed past (time constant pcen_t_s),
    # which keeps onsets and flattens what only sustains or rings. "log+pcen": both, as two input channels.
    # "log-cmn": log10(mel + log_offset) minus each band's mean over the window (the spectral form of cepstral
    # mean normalisation): a static colouring goes, as with PCEN, but the log's compression of noise stays and
    # nothing depends on where the window starts. "log+log-cmn": the log and the band-centred log as two channels;
    # "log-cmn+log" the same in the other order (a band-centred model fine-tuned with the log added after its own).
    compression: str = "log"
    pcen_t_s: float = 0.4

    def __post_init__(self) -> None:
        if self.compression not in COMPRESSIONS:
            raise ValueError(f"front end: unknown compression {self.compression!r} (choose from {COMPRESSIONS})")

    @property
    def n_channels(self) -> int:
        return len(self.compression.split("+"))

    @property
    def mel_settings(self) -> tuple:
        """What the magnitude mel spectrogram depends on (not the compression after it): front ends equal here
        can share one spectrogram (``ensemble.EnsembleFingerprinter``)."""
        return (self.sample_rate, self.segment_samples, self.n_fft, self.hop_length, self.n_mels, self.f_min,
                self.f_max)

    @property
    def n_frames(self) -> int:
        # center=True framing: one frame per hop plus the first.
        return 1 + self.segment_samples // self.hop_length

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.compression == "log":  # as before these fields existed: the same identity for shards and indexes
            d.pop("compression")
            d.pop("pcen_t_s")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FrontendConfig":
        check_keys(d, (f.name for f in fields(cls)), "front-end config")
        return cls(**d)


def pcen(mel: torch.Tensor, frames_per_s: float, t_s: float = 0.4, gain: float = 0.98, bias: float = 2.0,
         power: float = 0.5, eps: float = 1e-6, start: str = "first", floor: float = 0.0) -> torch.Tensor:
    """Per-channel energy normalisation of ``(..., n_mels, n_frames)`` magnitudes: ``(E / (eps + M)^gain + bias)^power
    - bias^power`` with ``M`` a first-order low-pass of ``E`` along time (librosa's smoothing coefficient for the
    time constant), started at the ``first`` frame (librosa; the front end's) or at each band's ``mean`` over the
    window. ``floor`` > 0 keeps ``M`` above that share of the window's loudest smoothed level. The last two are
    variants that bench/frontend_invariance.py screens."""
    t_frames = t_s * frames_per_s
    b = ((1 + 4 * t_frames ** 2) ** 0.5 - 1) / (2 * t_frames ** 2)
    init = mel[..., :1] if start == "first" else mel.mean(dim=-1, keepdim=True)
    a_coeffs = torch.tensor([1.0, b - 1.0], dtype=mel.dtype, device=mel.device)
    b_coeffs = torch.tensor([b, 0.0], dtype=mel.dtype, device=mel.device)
    # lfilter starts from rest: filter the difference from the start level, then add it back (unit DC gain).
    smooth = torchaudio.functional.lfilter(mel - init, a_coeffs, b_coeffs, clamp=False) + init
    if floor > 0:
        smooth = torch.maximum(smooth, floor * smooth.amax(dim=(-2, -1), keepdim=True))
    return (mel / (eps + smooth).pow(gain) + bias).pow(power) - bias ** power


def log_mel_band_centred(mel: torch.Tensor, log_offset: float) -> torch.Tensor:
    """``log10(mel + offset)`` minus each band's mean over the window's frames."""
    logmel = torch.log10(mel + log_offset)
    return logmel - logmel.mean(dim=-1, keepdim=True)


def log_mel_normalise(mel: torch.Tensor, log_offset: float) -> torch.Tensor:
    """``log10(mel + offset)`` minus each sample's maximum over (freq, time); the maximum bin becomes 0."""
    logmel = torch.log10(mel + log_offset)
    return logmel - logmel.amax(dim=(-2, -1), keepdim=True)


class LogMelFrontend(nn.Module):
    """Waveform ``(B, segment_samples)`` float -> normalised log-mel ``(B, 1, n_mels, n_frames)``.

    Always computed in float32 (also under CUDA autocast): the log of small magnitudes loses too much in half
    precision.
    """

    def __init__(self, config: FrontendConfig | None = None):
        super().__init__()
        self.config = config or FrontendConfig()
        c = self.config
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=c.sample_rate, n_fft=c.n_fft, hop_length=c.hop_length, f_min=c.f_min, f_max=c.f_max,
            n_mels=c.n_mels, power=1.0, center=True, pad_mode="constant", norm="slaney", mel_scale="slaney")

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        return self.compress(self.spectrogram(wav))

    def spectrogram(self, wav: torch.Tensor) -> torch.Tensor:
        """Waveform ``(B, segment_samples)`` -> magnitude mel ``(B, n_mels, n_frames)``, float32."""
        if wav.dim() != 2:
            raise ValueError(f"expected waveform of shape (batch, samples), got {tuple(wav.shape)}")
        with torch.autocast(device_type=wav.device.type, enabled=False):
            return self.mel(wav.float())

    def compress(self, mel: torch.Tensor) -> torch.Tensor:
        """Magnitude mel ``(B, n_mels, n_frames)`` -> the encoder's input ``(B, channels, n_mels, n_frames)``."""
        with torch.autocast(device_type=mel.device.type, enabled=False):
            channels = [self._compress(mel.float(), part) for part in self.config.compression.split("+")]
            return torch.stack(channels, dim=1)

    def _compress(self, mel: torch.Tensor, kind: str) -> torch.Tensor:
        c = self.config
        if kind == "log":
            return log_mel_normalise(mel, c.log_offset)
        if kind == "log-cmn":
            return log_mel_band_centred(mel, c.log_offset)
        return pcen(mel, c.sample_rate / c.hop_length, c.pcen_t_s)
