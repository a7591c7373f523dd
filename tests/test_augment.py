"""Degradation chain and training views (generated signals only)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from workflow_lib.augment import (FILTER_SETTLE, AugmentConfig, ViewParams, apply_biquads, biquad_coefficients,
                                  degrade, mask_spectrogram, mix_at_snr, reverberate, sample_view_params)
from workflow_lib.clipbank import ClipBank, write_clip_bank
from workflow_lib.train_data import ViewSource, prefetch


def snr_db(signal: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    return 10 * torch.log10(signal.pow(2).mean(-1) / noise.pow(2).mean(-1))


def tones(freqs, n=8000, sr=8000):
    t = torch.arange(n) / sr
    return torch.stack([0.5 * torch.sin(2 * torch.pi * f * t) for f in freqs])


def test_mix_at_snr_hits_the_drawn_snr():
    g = torch.Generator().manual_seed(0)
    signal = torch.randn(6, 8000, generator=g) * torch.tensor([[0.01], [0.1], [0.3], [1.0], [0.05], [0.2]])
    noise = torch.randn(6, 8000, generator=g) * 3.0
    target = torch.tensor([0.0, 2.5, 5.0, 7.5, 10.0, -3.0])
    mixed = mix_at_snr(signal, noise, target)
    measured = snr_db(signal, mixed - signal)
    assert torch.allclose(measured, target, atol=1e-3)


def test_mix_at_snr_measures_only_the_view_part_and_inf_means_clean():
    signal = torch.cat([torch.zeros(1, 500), torch.ones(1, 1000) * 0.2], 1)
    noise = torch.randn(1, 1500, generator=torch.Generator().manual_seed(1))
    mixed = mix_at_snr(signal, noise, torch.tensor([6.0]), measure_last=1000)
    assert torch.allclose(snr_db(signal[:, -1000:], (mixed - signal)[:, -1000:]), torch.tensor([6.0]), atol=1e-3)
    assert torch.equal(mix_at_snr(signal, noise, torch.tensor([float("inf")])), signal)


def test_sampled_snr_within_configured_range():
    cfg = AugmentConfig(snr_db=(0.0, 10.0), noise_prob=0.7)
    p = sample_view_params(np.random.default_rng(0), 2000, cfg)
    finite = p.snr_db[np.isfinite(p.snr_db)]
    assert finite.min() >= 0 and finite.max() <= 10
    assert 0.6 < len(finite) / 2000 < 0.8
    assert finite.std() > 2  # spread over the range, not a constant


def test_reverberate_is_linear_convolution_fed_by_preceding_audio():
    rng = np.random.default_rng(0)
    audio = rng.standard_normal((3, 1200)).astype(np.float32)
    irs = rng.standard_normal((3, 300)).astype(np.float32)
    out = reverberate(torch.from_numpy(audio), torch.from_numpy(irs), 800)
    for i in range(3):
        full = np.convolve(audio[i], irs[i])  # linear, no wrap-around
        np.testing.assert_allclose(out[i].numpy(), full[400:1200], atol=1e-4)


def test_reverb_tail_comes_from_the_audio_before_the_view():
    # A click 100 samples before the view and a delayed-echo IR: the echo lands inside the view.
    audio = torch.zeros(1, 1000)
    audio[0, 400] = 1.0
    ir = torch.zeros(1, 301)
    ir[0, 0], ir[0, 300] = 1.0, 0.5
    out = reverberate(audio, ir, 500)  # the view is samples 500..999
    assert out[0, 200].item() == pytest.approx(0.5, abs=1e-5)  # 400 + 300 = 700 -> view sample 200
    assert out.abs().sum().item() == pytest.approx(0.5, abs=1e-3)


def test_biquads_band_limit():
    x = tones([200.0, 3000.0])
    lp = biquad_coefficients("lowpass", torch.tensor([1000.0, 1000.0]))
    y = apply_biquads(x, [lp])[:, 1000:]
    assert y[0].pow(2).mean() > 0.9 * x[0, 1000:].pow(2).mean()  # 200 Hz passes
    assert y[1].pow(2).mean() < 0.05 * x[1, 1000:].pow(2).mean()  # 3 kHz is cut
    hp = biquad_coefficients("highpass", torch.tensor([1000.0, 1000.0]))
    y = apply_biquads(x, [hp])[:, 1000:]
    assert y[0].pow(2).mean() < 0.1 * x[0, 1000:].pow(2).mean()
    assert y[1].pow(2).mean() > 0.9 * x[1, 1000:].pow(2).mean()


def test_biquads_off_rows_are_identity():
    x = torch.randn(3, 2000, generator=torch.Generator().manual_seed(0))
    filters = [biquad_coefficients("highpass", torch.zeros(3)), biquad_coefficients("lowpass", torch.zeros(3)),
               biquad_coefficients("peaking", torch.full((3,), 1000.0), 1.0, torch.zeros(3))]
    assert torch.allclose(apply_biquads(x, filters), x, atol=1e-6)


def test_peaking_eq_boosts_its_band():
    x = tones([1000.0, 250.0])
    eq = biquad_coefficients("peaking", torch.tensor([1000.0, 1000.0]), 2.0, torch.tensor([12.0, 12.0]))
    y = apply_biquads(x, [eq])[:, 1000:]
    gain = 10 * torch.log10(y.pow(2).mean(-1) / x[:, 1000:].pow(2).mean(-1))
    assert gain[0] == pytest.approx(12.0, abs=0.5)
    assert abs(gain[1]) < 2.0


def _params(n: int, **kw) -> ViewParams:
    base = dict(snr_db=np.full(n, np.inf, np.float32), highpass_hz=np.zeros(n, np.float32),
                lowpass_hz=np.zeros(n, np.float32), eq_hz=np.full(n, 1000.0, np.float32),
                eq_q=np.ones(n, np.float32), eq_gain_db=np.zeros(n, np.float32), gain_db=np.zeros(n, np.float32),
                time_mask=np.zeros((n, 2), np.int64), freq_mask=np.zeros((n, 2), np.int64))
    base.update(kw)
    return ViewParams(**base).to_torch("cpu")


def test_degrade_identity_chain_returns_the_view_at_the_drawn_level():
    rng = np.random.default_rng(0)
    audio = torch.from_numpy(rng.uniform(-0.5, 0.5, (2, 600 + FILTER_SETTLE + 8000)).astype(np.float32))
    irs = torch.zeros(2, 601)
    irs[:, 0] = 1.0
    out = degrade(audio, irs, torch.zeros(2, 8000 + FILTER_SETTLE),
                  _params(2, gain_db=np.array([0.0, -20.0], np.float32)), 8000)
    assert out.shape == (2, 8000)
    ref = audio[:, -8000:]
    assert torch.allclose(out[0], ref[0] / ref[0].abs().max(), atol=1e-5)
    assert out[1].abs().max().item() == pytest.approx(0.1, rel=1e-4)


def test_degrade_applies_ir_and_noise():
    rng = np.random.default_rng(1)
    audio = torch.from_numpy(rng.uniform(-0.5, 0.5, (1, 600 + FILTER_SETTLE + 8000)).astype(np.float32))
    dry_ir = torch.zeros(1, 601)
    dry_ir[0, 0] = 1.0
    wet_ir = torch.from_numpy((rng.standard_normal(601) * np.exp(-np.arange(601) / 100)).astype(np.float32))[None]
    noise = torch.from_numpy(rng.standard_normal((1, 8000 + FILTER_SETTLE)).astype(np.float32))
    dry = degrade(audio, dry_ir, noise, _params(1), 8000)
    wet = degrade(audio, wet_ir, torch.zeros_like(noise), _params(1), 8000)
    expected = np.convolve(audio[0].numpy(), wet_ir[0].numpy())[audio.shape[1] - 8000:audio.shape[1]]
    np.testing.assert_allclose(wet[0].numpy(), expected / np.abs(expected).max(), atol=1e-4)
    assert not torch.allclose(wet, dry, atol=1e-2)
    noisy = degrade(audio, dry_ir, noise, _params(1, snr_db=np.array([0.0], np.float32)), 8000)
    # At 0 dB SNR the clean part explains about half the (peak-normalised) power.
    residual = noisy - dry * (noisy * dry).sum() / dry.pow(2).sum()
    assert 0.3 < (residual.pow(2).sum() / noisy.pow(2).sum()).item() < 0.7


def test_degrade_needs_enough_history():
    with pytest.raises(ValueError, match="history"):
        degrade(torch.zeros(1, 8000), torch.ones(1, 100), torch.zeros(1, 8256), _params(1), 8000)


def test_mask_spectrogram():
    spec = -torch.rand(3, 1, 256, 32, generator=torch.Generator().manual_seed(0))
    tm = torch.tensor([[5, 4], [0, 0], [0, 0]])
    fm = torch.tensor([[0, 0], [100, 20], [0, 0]])
    out = mask_spectrogram(spec, tm, fm)
    mins = spec.amin(dim=(-2, -1))
    assert torch.all(out[0, 0, :, 5:9] == mins[0]) and torch.equal(out[0, 0, :, :5], spec[0, 0, :, :5])
    assert torch.equal(out[0, 0, :, 9:], spec[0, 0, :, 9:])
    assert torch.all(out[1, 0, 100:120, :] == mins[1]) and torch.equal(out[1, 0, :100], spec[1, 0, :100])
    assert torch.equal(out[2], spec[2])


def test_sampled_masks_fit_inside_the_spectrogram():
    p = sample_view_params(np.random.default_rng(3), 500, AugmentConfig(time_mask_prob=1, freq_mask_prob=0.5))
    assert np.all(p.time_mask[:, 1] >= 1) and np.all(p.time_mask.sum(1) <= 32)
    assert np.all(p.freq_mask.sum(1) <= 256) and 0.4 < np.mean(p.freq_mask[:, 1] > 0) < 0.6


def test_augment_config_validation():
    with pytest.raises(ValueError, match="noise_prob"):
        AugmentConfig(noise_prob=1.5)
    with pytest.raises(ValueError, match="snr_db"):
        AugmentConfig(snr_db=(10.0, 0.0))
    cfg = AugmentConfig()
    assert AugmentConfig.from_dict(cfg.to_dict()) == cfg


# --- views from a song bank ----------------------------------------------------------------------------------

def position_song(n: int) -> np.ndarray:
    """Sample i holds (i mod 4096) / 2048 - 1: exact in float16, so a view's start can be read back."""
    return ((np.arange(n) % 4096) / 2048 - 1).astype(np.float32)


@pytest.fixture
def banks(tmp_path):
    rng = np.random.default_rng(0)
    write_clip_bank(tmp_path / "songs", [position_song(24000), position_song(16000)],
                    pd.DataFrame({"song_id": ["a", "b"], "name": ["a", "b"]}))
    write_clip_bank(tmp_path / "noise", [rng.standard_normal(20000).astype(np.float32) * 0.1],
                    pd.DataFrame({"name": ["n"]}))
    ir = (rng.standard_normal(1000) * np.exp(-np.arange(1000) / 150)).astype(np.float32)
    write_clip_bank(tmp_path / "irs", [ir / np.sqrt((ir ** 2).sum())], pd.DataFrame({"name": ["r"]}),
                    dtype="float32")
    return ClipBank(tmp_path / "songs"), ClipBank(tmp_path / "noise"), ClipBank(tmp_path / "irs")


def test_view_source_grid_and_jitter(banks):
    songs, noise, irs = banks
    src = ViewSource(songs, noise, irs, AugmentConfig(jitter_s=0.2))
    assert len(src) == 5 + 3  # (24000 - 8000) / 4000 + 1 and (16000 - 8000) / 4000 + 1
    assert src.history == 1000 - 1 + FILTER_SETTLE
    rows = np.repeat(np.arange(len(src)), 50)
    views = src.views(np.random.default_rng(0), rows)
    first = views.audio[:, src.history]  # first sample of each view
    start = np.round((first + 1) * 2048).astype(int)  # position mod 4096
    nominal = src.segment_index[rows] * 4000
    offset = (start - nominal % 4096 + 2048) % 4096 - 2048
    assert np.abs(offset).max() <= 1600  # +-0.2 s
    assert np.abs(offset).max() > 1000 and len(np.unique(offset)) > 100
    length = songs.lengths[src.song_index[rows]]
    assert np.all(nominal + offset >= 0) and np.all(nominal + offset + 8000 <= length)


def test_history_before_the_song_start_is_silence(banks):
    songs, noise, irs = banks
    src = ViewSource(songs, noise, irs, AugmentConfig(jitter_s=0.0))
    v = src.views(np.random.default_rng(0), np.array([0]))  # segment 0 of song a starts at sample 0
    assert np.all(v.audio[0, :src.history] == 0)
    np.testing.assert_array_equal(v.audio[0, src.history:], position_song(8000))


def test_pair_views_differ(banks):
    songs, noise, irs = banks
    src = ViewSource(songs, noise, irs, AugmentConfig())
    pair = src.pairs(np.random.default_rng(0), np.arange(len(src)))
    audio, ir, nz, params = (torch.from_numpy(pair.audio), torch.from_numpy(pair.irs), torch.from_numpy(pair.noise),
                             pair.params.to_torch("cpu"))
    wav = degrade(audio, ir, nz, params, 8000)
    n = len(src)
    assert wav.shape == (2 * n, 8000)
    diff = (wav[:n] - wav[n:]).pow(2).mean(-1) / wav[:n].pow(2).mean(-1)
    assert torch.all(diff > 1e-3)


def test_clean_anchors_are_on_grid_and_undegraded(banks):
    songs, noise, irs = banks
    src = ViewSource(songs, noise, irs, AugmentConfig(clean_anchor_prob=1.0, time_mask_prob=1.0))
    n = len(src)
    pair = src.pairs(np.random.default_rng(0), np.arange(n))
    anchor_first = np.round((pair.audio[:n, src.history] + 1) * 2048).astype(int)
    np.testing.assert_array_equal(anchor_first, (src.segment_index * 4000) % 4096)
    assert np.all(np.isinf(pair.params.snr_db[:n])) and np.all(pair.irs[:n, 1:] == 0)
    assert np.all(pair.params.time_mask[:n] == 0) and np.all(pair.params.time_mask[n:, 1] > 0)
    assert np.isfinite(pair.params.snr_db[n:]).all()


def test_views_without_noise_or_ir_banks(banks):
    songs, _, _ = banks
    src = ViewSource(songs, None, None, AugmentConfig())
    v = src.views(np.random.default_rng(0), np.arange(3))
    assert np.all(np.isinf(v.params.snr_db)) and v.irs.shape == (3, 1) and np.all(v.irs == 1)


def test_epoch_batches_visit_every_segment_once(banks):
    songs, noise, irs = banks
    src = ViewSource(songs, noise, irs, AugmentConfig())
    rows_seen = []
    original = src.pairs

    def spy(rng, rows):
        rows_seen.extend(rows.tolist())
        return original(rng, rows)

    src.pairs = spy
    batches = list(src.epoch_batches(np.random.default_rng(0), 4))
    assert len(batches) == 2 and batches[0].audio.shape[0] == 8
    assert sorted(rows_seen) == list(range(8))


def test_prefetch_keeps_order_and_raises():
    assert list(prefetch(iter(range(20)), depth=2)) == list(range(20))

    def broken():
        yield 1
        raise OSError("disk gone")

    out = []
    with pytest.raises(OSError, match="disk gone"):
        for x in prefetch(broken()):
            out.append(x)
    assert out == [1]
