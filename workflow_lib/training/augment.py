"""Degradation chain for training views and validation queries, as batched torch on the training device.

Random choices are drawn on the host with numpy (``sample_view_params``) and passed in as tensors, so a run is
reproducible on any device and the on-device part (``degrade`` and ``mask_spectrogram``) is a pure function of its
inputs. The chain follows a real capture, in order:

1. the source as played: a low-bitrate codec copy of the song (``codec_prob``), a playback speed change
   (``speed_prob``: radio and DJ speed-ups; done by the loader, which resamples the window) and broadcast-style
   level compression (``compress_prob``);
2. the playback device and the space: a measured loudspeaker/cabinet response (``device_ir_prob``) chained with a
   room or a resonant space (``reverb_prob``, ``resonant_share``), as one linear convolution fed with the audio that
   precedes the view, so the reverb tail is real;
3. background noise at a drawn SNR;
4. the recording device: band limits and up to ``eq_bands`` peaking EQ bands of up to +-20 dB (a small speaker's or
   phone microphone's colouring; it filters the noise too), then a random level;
5. optionally (``whiten_prob``), the search's second view: the view through the inverse of its own long linear
   predictor fitted on the ``whiten_fit_s`` it ends (``lpc_whiten_rows``), as the search whitens a query;
6. time and frequency masking on the log-mel.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
import torchaudio.functional as AF

from workflow_lib import SAMPLE_RATE
from workflow_lib.common.config import check_keys

# Samples of extra history given to the IIR filters so their start-up transient falls outside the view.
FILTER_SETTLE = 256
MAX_EQ_BANDS = 6
# Level detector of the compressor: RMS over this many samples (30 ms), and the gain is smoothed over the same.
COMPRESS_WINDOW = 240


@dataclass(frozen=True)
class AugmentConfig:
    jitter_s: float = 0.2  # each view starts up to this far (either way) from the segment's grid position
    noise_prob: float = 1.0
    snr_db: tuple[float, float] = (0.0, 10.0)
    reverb_prob: float = 0.8
    resonant_share: float = 0.0  # of the reverberated views, the share in a resonant (ringing) space
    device_ir_prob: float = 0.0  # a measured device (speaker/cabinet) response chained with the room
    max_ir_s: float = 1.0  # longer IRs are cut (this is also the audio context fed to the reverb)
    highpass_prob: float = 0.5
    highpass_hz: tuple[float, float] = (100.0, 700.0)
    lowpass_prob: float = 0.5
    lowpass_hz: tuple[float, float] = (1500.0, 3800.0)
    eq_prob: float = 0.5  # peaking EQ bands at random centre frequencies (the recording device's colouring)
    eq_bands: tuple[int, int] = (1, 1)  # how many bands, inclusive range
    eq_gain_db: tuple[float, float] = (-12.0, 12.0)
    codec_prob: float = 0.0  # the view is cut from the song's low-bitrate codec copy
    speed_prob: float = 0.0  # playback speed change (pitch moves with it, as on radio / a sped-up deck)
    speed: tuple[float, float] = (0.95, 1.05)
    compress_prob: float = 0.0  # broadcast-style level compression of the source
    compress_ratio: tuple[float, float] = (2.0, 8.0)
    compress_threshold_db: tuple[float, float] = (-30.0, -10.0)  # relative to the excerpt's loudest 30 ms
    gain_db: tuple[float, float] = (-20.0, 0.0)  # output peak level
    time_mask_prob: float = 0.3
    time_mask_frames: int = 6  # widest time mask, in mel frames (32 frames = 1 s)
    freq_mask_prob: float = 0.3
    freq_mask_bins: int = 40  # widest frequency mask, in mel bands (of 256)
    clean_anchor_prob: float = 0.0  # share of pairs whose anchor is the clean on-grid segment
    # Share of pairs whose two views both lose the front end's first channel (zeroed). For a two-channel front end
    # (log+log-cmn): those pairs must be told apart on the second channel alone, so it learns to carry identity
    # instead of being ignored beside the first. Both views of a pair together, so no view is asked to match
    # itself with and without the channel.
    first_channel_drop_prob: float = 0.0
    # Share of degraded views that are whitened as the search's second view whitens a query (search/whiten.py):
    # through the inverse of their own order-``whiten_order`` linear predictor, fitted on the ``whiten_fit_s`` of
    # degraded audio that end with the view, or the view alone if shorter (the search whitens queries of 3 s or more
    # as a whole). Teaches the encoder that a whitened query is still its song.
    whiten_prob: float = 0.0
    whiten_fit_s: float = 3.0
    whiten_order: int = 96

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name.endswith("_prob") and not 0.0 <= v <= 1.0:
                raise ValueError(f"augment.{f.name} must be in [0, 1], got {v}")
            if isinstance(v, (tuple, list)):
                if len(v) != 2 or v[0] > v[1]:
                    raise ValueError(f"augment.{f.name} must be a [low, high] range, got {v}")
                object.__setattr__(self, f.name, (float(v[0]), float(v[1])))
        if self.jitter_s < 0 or self.max_ir_s <= 0 or self.time_mask_frames < 0 or self.freq_mask_bins < 0:
            raise ValueError("augment: jitter_s, mask widths must be >= 0 and max_ir_s > 0")
        if not 0.0 <= self.resonant_share <= 1.0:
            raise ValueError(f"augment.resonant_share must be in [0, 1], got {self.resonant_share}")
        if self.eq_bands[0] < 1 or self.eq_bands[1] > MAX_EQ_BANDS:
            raise ValueError(f"augment.eq_bands must lie within [1, {MAX_EQ_BANDS}], got {list(self.eq_bands)}")
        object.__setattr__(self, "eq_bands", (int(self.eq_bands[0]), int(self.eq_bands[1])))
        if self.speed[0] <= 0.5 or self.speed[1] >= 2.0:
            raise ValueError(f"augment.speed must lie within (0.5, 2), got {list(self.speed)}")
        if self.whiten_order < 1 or self.whiten_fit_s * SAMPLE_RATE <= 2 * self.whiten_order:
            raise ValueError(f"augment: whiten_order must be >= 1 and whiten_fit_s long enough to fit it, got "
                             f"{self.whiten_order} and {self.whiten_fit_s} s")
        object.__setattr__(self, "whiten_order", int(self.whiten_order))
        if self.compress_ratio[0] < 1.0:
            raise ValueError(f"augment.compress_ratio must be >= 1, got {list(self.compress_ratio)}")
        if self.highpass_hz[0] <= 0 or self.lowpass_hz[1] >= SAMPLE_RATE / 2:
            raise ValueError(f"augment: filter cut-offs must lie inside (0, {SAMPLE_RATE // 2}) Hz")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "AugmentConfig":
        check_keys(d, (f.name for f in fields(cls)), "augment config")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


@dataclass
class ViewParams:
    """Per-view random choices (arrays of length B; numpy on the host, torch on the device)."""

    snr_db: Any  # +inf where no noise is added
    highpass_hz: Any  # 0 where off
    lowpass_hz: Any  # 0 where off
    eq_hz: Any  # (B, bands)
    eq_q: Any  # (B, bands)
    eq_gain_db: Any  # (B, bands), 0 where off
    compress_ratio: Any  # 1 where off
    compress_threshold_db: Any
    gain_db: Any
    time_mask: Any  # (B, 2) start, width in frames (width 0 = no mask)
    freq_mask: Any  # (B, 2) start, width in mel bands

    def to_torch(self, device: torch.device | str) -> "ViewParams":
        return ViewParams(**{f.name: torch.as_tensor(np.asarray(getattr(self, f.name)), device=device)
                             for f in fields(self)})

    def take(self, rows: Any) -> "ViewParams":
        """The choices of the views ``rows`` (an index array or mask of the same kind as the fields)."""
        return ViewParams(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})

    @staticmethod
    def concat(parts: list["ViewParams"]) -> "ViewParams":
        return ViewParams(**{f.name: np.concatenate([np.asarray(getattr(p, f.name)) for p in parts])
                             for f in fields(ViewParams)})


def sample_view_params(rng: np.random.Generator, n: int, cfg: AugmentConfig, n_frames: int = 32,
                       n_mels: int = 256) -> ViewParams:
    """Draw the chain's random choices for ``n`` views (the reverb IR and noise excerpt are drawn by the loader)."""

    def on(p: float) -> np.ndarray:
        return rng.random(n) < p

    def uniform(lo_hi: tuple[float, float]) -> np.ndarray:
        return rng.uniform(lo_hi[0], lo_hi[1], n)

    snr = np.where(on(cfg.noise_prob), uniform(cfg.snr_db), np.inf)
    hp = np.where(on(cfg.highpass_prob), uniform(cfg.highpass_hz), 0.0)
    lp = np.where(on(cfg.lowpass_prob), uniform(cfg.lowpass_hz), 0.0)
    # EQ centres log-uniform over the front end's band; Q between a broad tilt and a narrow notch. Every view
    # draws MAX_EQ_BANDS bands (so the draws do not depend on the band count) and keeps the first k.
    bands = MAX_EQ_BANDS
    eq_hz = np.exp(rng.uniform(math.log(300.0), math.log(3600.0), (n, bands)))
    eq_q = rng.uniform(0.5, 3.0, (n, bands))
    eq_gain = rng.uniform(cfg.eq_gain_db[0], cfg.eq_gain_db[1], (n, bands))
    k = rng.integers(cfg.eq_bands[0], cfg.eq_bands[1] + 1, n)
    eq_gain = np.where(on(cfg.eq_prob)[:, None] & (np.arange(bands)[None, :] < k[:, None]), eq_gain, 0.0)
    comp_on = on(cfg.compress_prob)
    ratio = np.where(comp_on, uniform(cfg.compress_ratio), 1.0)
    threshold = uniform(cfg.compress_threshold_db)
    gain = uniform(cfg.gain_db)

    def mask(p: float, max_width: int, size: int) -> np.ndarray:
        width = np.where(on(p), rng.integers(1, max(max_width, 1) + 1, n), 0) if max_width > 0 else np.zeros(n)
        width = np.minimum(width, size)
        start = (rng.random(n) * (size - width + 1)).astype(np.int64)
        return np.stack([start, width], axis=1).astype(np.int64)

    return ViewParams(snr.astype(np.float32), hp.astype(np.float32), lp.astype(np.float32), eq_hz.astype(np.float32),
                      eq_q.astype(np.float32), eq_gain.astype(np.float32), ratio.astype(np.float32),
                      threshold.astype(np.float32), gain.astype(np.float32),
                      mask(cfg.time_mask_prob, cfg.time_mask_frames, n_frames),
                      mask(cfg.freq_mask_prob, cfg.freq_mask_bins, n_mels))


# --- pure tensor functions -------------------------------------------------------------------------------------

def _fast_fft_len(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n: FFT sizes with large prime factors are several times slower."""
    best = 1 << (n - 1).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            m = p35
            while m < n:
                m *= 2
            best = min(best, m)
            p35 *= 3
        p5 *= 5
    return best


def reverberate(audio: torch.Tensor, irs: torch.Tensor | list[torch.Tensor], out_len: int) -> torch.Tensor:
    """Last ``out_len`` samples of the linear convolution of each row of ``audio`` (B, L) with its IR (B, K), or
    with a chain of IRs (a list of (B, K_i): e.g. a loudspeaker's response, then the room's).

    The first ``L - out_len`` samples are history: with ``L - out_len >= sum(K_i - 1)`` every output sample sees the
    full response applied to real preceding audio, so the reverb tail is that of the music before the view, not
    silence and not the circular wrap-around of an FFT of the view alone.
    """
    chain = [irs] if isinstance(irs, torch.Tensor) else list(irs)
    length = audio.shape[-1]
    n = _fast_fft_len(length + sum(h.shape[-1] - 1 for h in chain))
    spec = torch.fft.rfft(audio.float(), n=n)
    for h in chain:
        spec = spec * torch.fft.rfft(h.float(), n=n)
    return torch.fft.irfft(spec, n=n)[..., length - out_len:length]


def moving_average(x: torch.Tensor, width: int) -> torch.Tensor:
    """Centred running mean over ``width`` samples along the last axis (cumulative sums: O(L) for any width)."""
    width = max(1, min(int(width), x.shape[-1]))
    pad_l, pad_r = width // 2, width - 1 - width // 2
    padded = torch.nn.functional.pad(x, (pad_l + 1, pad_r), mode="replicate")
    c = padded.double().cumsum(-1)
    return ((c[..., width:] - c[..., :-width]) / width).to(x.dtype)


def compress(audio: torch.Tensor, ratio: torch.Tensor, threshold_db: torch.Tensor,
             window: int = COMPRESS_WINDOW) -> torch.Tensor:
    """Feed-forward level compression per row: above ``threshold_db`` (relative to the row's loudest ``window``),
    the level rises only ``1 / ratio`` dB per dB. The gain is smoothed over the window; ratio 1 leaves a row as
    it is."""
    active = ratio > 1.0
    if not bool(active.any()):
        return audio
    x = audio[active].float()
    level = 10 * torch.log10(moving_average(x.pow(2), window) + 1e-10)
    level = level - level.amax(-1, keepdim=True)
    over = (level - threshold_db[active].unsqueeze(-1)).clamp_min(0.0)
    gain_db = moving_average(-over * (1 - 1 / ratio[active].unsqueeze(-1)), window)
    out = audio.float().clone()
    out[active] = x * torch.pow(10.0, gain_db / 20)
    return out


def mix_at_snr(signal: torch.Tensor, noise: torch.Tensor, snr_db: torch.Tensor,
               measure_last: int | None = None) -> torch.Tensor:
    """``signal + g * noise`` with ``g`` per row such that the power ratio is ``snr_db`` (inf: no noise).

    Powers are measured over the last ``measure_last`` samples (the part that becomes the view). Silent rows get
    noise at the level a -40 dBFS signal would, so a silent excerpt still trains against noise.
    """
    m = measure_last or signal.shape[-1]
    p_sig = signal[..., -m:].pow(2).mean(-1).clamp_min(1e-8)
    p_noise = noise[..., -m:].pow(2).mean(-1).clamp_min(1e-12)
    g = torch.sqrt(p_sig / p_noise * torch.pow(10.0, -snr_db.float() / 10.0))
    g = torch.where(torch.isfinite(snr_db), g, torch.zeros_like(g))
    return signal + g.unsqueeze(-1) * noise


def biquad_coefficients(kind: str, freq_hz: torch.Tensor, q: torch.Tensor | float = 0.7071,
                        gain_db: torch.Tensor | float = 0.0, sample_rate: int = SAMPLE_RATE
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row biquad ``(b, a)`` of shape (B, 3), normalised so a0 = 1 (RBJ audio EQ cookbook).

    ``kind`` is ``lowpass``, ``highpass`` or ``peaking``. Rows with ``freq_hz <= 0`` (or zero gain for ``peaking``)
    get the identity filter, so a whole batch runs through one batched ``lfilter`` call.
    """
    freq = freq_hz.float()
    q = torch.as_tensor(q, dtype=torch.float32, device=freq.device).expand_as(freq)
    gain = torch.as_tensor(gain_db, dtype=torch.float32, device=freq.device).expand_as(freq)
    w0 = 2 * math.pi * freq.clamp(1.0, sample_rate / 2 - 1.0) / sample_rate
    cos, alpha = torch.cos(w0), torch.sin(w0) / (2 * q)
    if kind == "lowpass":
        b = torch.stack([(1 - cos) / 2, 1 - cos, (1 - cos) / 2], -1)
        a = torch.stack([1 + alpha, -2 * cos, 1 - alpha], -1)
        active = freq > 0
    elif kind == "highpass":
        b = torch.stack([(1 + cos) / 2, -(1 + cos), (1 + cos) / 2], -1)
        a = torch.stack([1 + alpha, -2 * cos, 1 - alpha], -1)
        active = freq > 0
    elif kind == "peaking":
        amp = torch.pow(10.0, gain / 40)
        b = torch.stack([1 + alpha * amp, -2 * cos, 1 - alpha * amp], -1)
        a = torch.stack([1 + alpha / amp, -2 * cos, 1 - alpha / amp], -1)
        active = (freq > 0) & (gain != 0)
    else:
        raise ValueError(f"unknown biquad kind {kind!r}")
    b, a = b / a[:, :1], a / a[:, :1]
    identity = torch.tensor([1.0, 0.0, 0.0], device=freq.device).expand_as(b)
    keep = active.unsqueeze(-1)
    return torch.where(keep, b, identity), torch.where(keep, a, identity)


def apply_biquads(audio: torch.Tensor, filters: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Run each row of ``audio`` (B, T) through its own cascade of biquads (``torchaudio.functional.lfilter``)."""
    out = audio.float()
    for b, a in filters:
        out = AF.lfilter(out, a, b, clamp=False, batching=True)
    return out


def set_peak_db(audio: torch.Tensor, peak_db: torch.Tensor) -> torch.Tensor:
    """Scale each row to the given peak level in dBFS (silent rows stay silent)."""
    peak = audio.abs().amax(-1, keepdim=True).clamp_min(1e-6)
    return audio / peak * torch.pow(10.0, peak_db.float() / 20).unsqueeze(-1)


def degrade(audio: torch.Tensor, irs: torch.Tensor, noise: torch.Tensor, params: ViewParams,
            out_len: int, sample_rate: int = SAMPLE_RATE, device_irs: torch.Tensor | None = None,
            measure_last: int | None = None) -> torch.Tensor:
    """Waveform part of the chain for B views.

    ``audio`` (B, L): each view's last ``out_len`` samples preceded by ``L - out_len`` samples of history (at least
    the IR lengths - 1 + ``FILTER_SETTLE``). ``irs`` (B, K): room / resonant-space responses, a unit impulse for
    rows without reverb; ``device_irs`` (B, Kd), optional: playback-device responses chained with them.
    ``noise`` (B, >= out_len + FILTER_SETTLE). The SNR is that of the last ``measure_last`` samples (default:
    all ``out_len``). Returns (B, out_len) float32. Only the history the chain needs is used (more is ignored), so
    the view does not depend on how much a caller hands in: the compressor's level is taken over that window.
    """
    tail = out_len + FILTER_SETTLE
    chain = [irs] if device_irs is None else [device_irs, irs]
    need = tail + sum(h.shape[-1] - 1 for h in chain)
    if audio.shape[-1] < need:
        raise ValueError(f"degrade: {audio.shape[-1]} samples of audio is too little history for responses of "
                         f"{[h.shape[-1] for h in chain]} samples and {out_len}-sample views")
    source = compress(audio[..., -need:], params.compress_ratio, params.compress_threshold_db)
    wet = reverberate(source, chain, tail)
    mixed = mix_at_snr(wet, noise[..., -tail:].float(), params.snr_db, measure_last=measure_last or out_len)
    eq = params.eq_gain_db if params.eq_gain_db.dim() == 2 else params.eq_gain_db.unsqueeze(-1)
    eq_hz = params.eq_hz if params.eq_hz.dim() == 2 else params.eq_hz.unsqueeze(-1)
    eq_q = params.eq_q if params.eq_q.dim() == 2 else params.eq_q.unsqueeze(-1)
    filters = [biquad_coefficients("highpass", params.highpass_hz, sample_rate=sample_rate),
               biquad_coefficients("lowpass", params.lowpass_hz, sample_rate=sample_rate)]
    for band in range(eq.shape[-1]):
        if bool((eq[:, band] != 0).any()):  # bands every row has off cost nothing
            filters.append(biquad_coefficients("peaking", eq_hz[:, band], eq_q[:, band], eq[:, band],
                                               sample_rate=sample_rate))
    filtered = apply_biquads(mixed, filters)
    return set_peak_db(filtered[..., -out_len:], params.gain_db)


def lpc_whiten_rows(audio: torch.Tensor, order: int, ridge: float = 1e-3) -> torch.Tensor:
    """Each row of ``audio`` (B, L) through the inverse filter of its own order-``order`` linear predictor
    (autocorrelation method, ``ridge`` a white-noise correction on the zero lag), at the row's own RMS: the batched
    torch form of ``search.whiten.lpc_whiten`` (same filter, same output, tested), so training views can be
    whitened on the training device as the search whitens a query. Silent rows come back as they are."""
    x = audio.double()
    length = x.shape[-1]
    if length <= order:
        raise ValueError(f"lpc_whiten_rows: order {order} needs more than {order} samples, got {length}")
    n = _fast_fft_len(length + order + 1)
    spec = torch.fft.rfft(x, n=n)
    r = torch.fft.irfft(spec.real ** 2 + spec.imag ** 2, n=n)[..., :order + 1]
    live = r[..., 0] > 0
    lags = r.clone()
    lags[..., 0] = torch.where(live, lags[..., 0] * (1 + ridge), torch.ones_like(lags[..., 0]))
    idx = torch.arange(order, device=x.device)
    toeplitz = lags[..., (idx[:, None] - idx[None, :]).abs()]
    a = torch.linalg.solve(toeplitz, -lags[..., 1:order + 1])
    b = torch.cat([torch.ones_like(a[..., :1]), a], dim=-1)
    out = torch.fft.irfft(spec * torch.fft.rfft(b, n=n), n=n)[..., :length]
    rms_in = x.pow(2).mean(-1, keepdim=True).sqrt()
    rms_out = out.pow(2).mean(-1, keepdim=True).sqrt().clamp_min(1e-30)
    out = torch.where(live.unsqueeze(-1), out * rms_in / rms_out, x)
    return out.to(audio.dtype)


def drop_first_channel(spec: torch.Tensor, off: torch.Tensor) -> torch.Tensor:
    """Zero the first input channel of the views of a batch (B, C, F, T) where ``off`` (B,) is true."""
    if spec.shape[1] < 2:
        raise ValueError("dropping the first channel needs a front end of two or more channels, got "
                         f"{spec.shape[1]}")
    first = torch.arange(spec.shape[1], device=spec.device) == 0
    hit = off.to(spec.device, torch.bool)[:, None] & first[None, :]
    return torch.where(hit[:, :, None, None], torch.zeros((), dtype=spec.dtype, device=spec.device), spec)


def mask_spectrogram(spec: torch.Tensor, time_mask: torch.Tensor, freq_mask: torch.Tensor) -> torch.Tensor:
    """Per-view time and frequency masks on a front-end batch (B, C, F, T), the same cells in every channel.

    ``time_mask`` / ``freq_mask`` are (B, 2) ``[start, width]`` (width 0: none). Masked cells take the view's
    minimum (per channel), i.e. they look like a dropout or a band with no energy, rather than the loudest bin.
    """
    b, _, f, t = spec.shape
    t_idx = torch.arange(t, device=spec.device)
    f_idx = torch.arange(f, device=spec.device)
    ts, tw = time_mask[:, :1], time_mask[:, 1:]
    fs, fw = freq_mask[:, :1], freq_mask[:, 1:]
    t_hit = (t_idx >= ts) & (t_idx < ts + tw)  # (B, T)
    f_hit = (f_idx >= fs) & (f_idx < fs + fw)  # (B, F)
    hit = (t_hit[:, None, :] | f_hit[:, :, None]).unsqueeze(1)
    fill = spec.amin(dim=(-2, -1), keepdim=True)
    return torch.where(hit, fill, spec)
