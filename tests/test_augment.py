"""Degradation chain and training views (generated signals only)."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import torch

from workflow_lib.training.augment import (FILTER_SETTLE, AugmentConfig, ViewParams, apply_biquads, biquad_coefficients,
                                  compress, degrade, drop_first_channel, lpc_whiten_rows, mask_spectrogram,
                                  mix_at_snr, reverberate, sample_view_params, set_peak_db)
from workflow_lib.data.clipbank import ClipBank, write_clip_bank
from workflow_lib.training.batches import BatchStream, view_workers
from workflow_lib.training.data import ViewSource


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
                compress_ratio=np.ones(n, np.float32), compress_threshold_db=np.full(n, -20.0, np.float32),
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


def test_drop_first_channel_zeroes_only_the_first_channel_of_the_chosen_views():
    spec = torch.rand(3, 2, 8, 4, generator=torch.Generator().manual_seed(0)) + 1.0
    out = drop_first_channel(spec, torch.tensor([True, False, True]))
    assert torch.all(out[[0, 2], 0] == 0) and torch.equal(out[[0, 2], 1], spec[[0, 2], 1])
    assert torch.equal(out[1], spec[1])
    with pytest.raises(ValueError, match="two or more channels"):
        drop_first_channel(spec[:, :1], torch.tensor([True, False, True]))


def test_sampled_masks_fit_inside_the_spectrogram():
    p = sample_view_params(np.random.default_rng(3), 500, AugmentConfig(time_mask_prob=1, freq_mask_prob=0.5))
    assert np.all(p.time_mask[:, 1] >= 1) and np.all(p.time_mask.sum(1) <= 32)
    assert np.all(p.freq_mask.sum(1) <= 256) and 0.4 < np.mean(p.freq_mask[:, 1] > 0) < 0.6


def test_augment_config_validation():
    with pytest.raises(ValueError, match="noise_prob"):
        AugmentConfig(noise_prob=1.5)
    with pytest.raises(ValueError, match="whiten_order"):
        AugmentConfig(whiten_prob=0.3, whiten_order=0)
    with pytest.raises(ValueError, match="whiten_fit_s"):
        AugmentConfig(whiten_prob=0.3, whiten_fit_s=0.02)
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


def test_the_first_channel_is_dropped_from_both_views_of_a_pair_and_the_views_stay_as_they_were(banks):
    songs, noise, irs = banks
    rows = np.tile(np.arange(8), 50)
    plain = ViewSource(songs, noise, irs, AugmentConfig()).pairs(np.random.default_rng(0), rows)
    assert plain.first_channel_off is None
    dropped = ViewSource(songs, noise, irs, AugmentConfig(first_channel_drop_prob=0.5)).pairs(
        np.random.default_rng(0), rows)
    np.testing.assert_array_equal(dropped.audio, plain.audio)  # drawn last: the views are those of a run without
    np.testing.assert_array_equal(dropped.noise, plain.noise)
    off = dropped.first_channel_off
    n = len(rows)
    assert off.shape == (2 * n,) and np.array_equal(off[:n], off[n:])
    assert 0.4 < off[:n].mean() < 0.6


def test_views_without_noise_or_ir_banks(banks):
    songs, _, _ = banks
    src = ViewSource(songs, None, None, AugmentConfig())
    v = src.views(np.random.default_rng(0), np.arange(3))
    assert np.all(np.isinf(v.params.snr_db)) and v.irs.shape == (3, 1) and np.all(v.irs == 1)


def test_an_epoch_visits_every_segment_once(banks):
    songs, noise, irs = banks
    src = ViewSource(songs, noise, irs, AugmentConfig())
    order = src.epoch_order([0, 1, 1], 4)
    assert len(order) == 2 and src.batch([0, 1, 1, 0], order[0]).audio.shape[0] == 8
    assert sorted(np.concatenate(order).tolist()) == list(range(8))
    assert [o.tolist() for o in order] == [o.tolist() for o in src.epoch_order([0, 1, 1], 4)]
    assert [o.tolist() for o in order] != [o.tolist() for o in src.epoch_order([0, 1, 2], 4)]


def _same_batches(a, b) -> bool:
    def arr(x):
        return x.numpy() if isinstance(x, torch.Tensor) else x

    return all(np.array_equal(arr(x.audio), arr(y.audio)) and np.array_equal(arr(x.irs), arr(y.irs)) and
               np.array_equal(x.params.snr_db, y.params.snr_db) for x, y in zip(a, b, strict=True))


def test_a_resumed_epoch_and_worker_processes_draw_the_batches_of_one_thread(banks):
    """Batch i depends on (seed, epoch, i) alone: resuming after batch 1, or drawing in worker processes, gives the
    very views the background thread draws; another epoch gives others."""
    songs, noise, irs = banks
    src = ViewSource(songs, noise, irs, AugmentConfig())
    with BatchStream(src, 0, 2) as thread:
        whole = list(thread.epoch(3))
        assert len(whole) == len(thread) == 4
        assert _same_batches(whole[1:], list(thread.epoch(3, start=1)))
        assert not np.array_equal(next(thread.epoch(4)).audio, whole[0].audio)
    with BatchStream(src, 0, 2, workers=2) as workers:
        drawn = list(workers.epoch(3))
        assert isinstance(drawn[0].audio, torch.Tensor)  # handed over through shared memory
        assert _same_batches(whole, drawn)
        assert _same_batches(whole[2:], list(workers.epoch(3, start=2)))  # the same workers, a second pass


def test_view_workers_setting(monkeypatch):
    import workflow_lib.training.batches as batches

    assert view_workers("auto", torch.device("cpu")) == 0
    assert 1 <= batches.usable_cpus() <= (os.cpu_count() or 1)
    for cpus, workers in [(8, 6), (64, 16), (2, 0), (1, 0)]:  # a GPU job's CPUs (SLURM: its allocation) but two
        monkeypatch.setattr(batches, "usable_cpus", lambda: cpus)
        assert view_workers("auto", torch.device("cuda")) == workers
    assert view_workers(3, torch.device("cpu")) == 3
    for bad in (-1, True, "4", 2.0):
        with pytest.raises(ValueError, match="view_workers"):
            view_workers(bad, torch.device("cpu"))


# --- the issue-11 chain: long rooms, resonant spaces, device chaining, codec, speed, compression -------------

def _decaying_ir(seconds: float, rt60: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 8000)) / 8000
    h = rng.standard_normal(len(t)) * 10 ** (-3 * t / rt60)
    h[0] = 1.0
    return (h / np.linalg.norm(h)).astype(np.float32)


def test_reverb_tail_length_follows_a_long_ir():
    """A 2 s IR leaves energy 1.5 s after the dry signal ends (IRs are no longer cut to 1 s)."""
    ir = torch.from_numpy(_decaying_ir(2.0, 2.0))[None]
    dry = torch.zeros(1, 16000 + 8000 + FILTER_SETTLE)
    dry[0, :16000] = torch.from_numpy(np.random.default_rng(1).standard_normal(16000).astype(np.float32))
    # the view is the last 8000 samples: it starts 1 s after the dry signal ended and lasts 1 s
    wet = reverberate(dry, ir, 8000)
    late = wet[0, 4000:].pow(2).mean()  # 1.5-2.0 s after the end
    assert late > 1e-4 * dry[0, :16000].pow(2).mean()
    # ... and a source built with max_ir_s 3 keeps the whole 2 s response
    src_cfg = AugmentConfig(max_ir_s=3.0)
    assert src_cfg.max_ir_s == 3.0


@pytest.fixture
def kind_banks(tmp_path):
    rng = np.random.default_rng(0)
    song = np.sin(2 * np.pi * 500 * np.arange(48000) / 8000).astype(np.float32) * 0.5
    write_clip_bank(tmp_path / "songs", [song, song[:40000]], pd.DataFrame({"song_id": ["a", "b"],
                                                                             "name": ["a", "b"]}))
    codec = [np.clip(song + 0.05 * rng.standard_normal(len(song)), -1, 1).astype(np.float32),
             np.clip(song[:40000] + 0.05 * rng.standard_normal(40000), -1, 1).astype(np.float32)]
    write_clip_bank(tmp_path / "songs_codec", codec, pd.DataFrame({"song_id": ["a", "b"], "name": ["a", "b"]}))
    write_clip_bank(tmp_path / "noise", [rng.standard_normal(20000).astype(np.float32) * 0.1],
                    pd.DataFrame({"name": ["n"]}))
    room, ring = _decaying_ir(2.0, 2.0, 1), _decaying_ir(1.0, 0.8, 2)
    dev = _decaying_ir(0.02, 0.01, 3)
    write_clip_bank(tmp_path / "irs", [room, ring, dev],
                    pd.DataFrame({"name": ["room", "ring", "dev"], "kind": ["room", "resonant", "device"]}),
                    dtype="float32")
    return (ClipBank(tmp_path / "songs"), ClipBank(tmp_path / "noise"), ClipBank(tmp_path / "irs"),
            ClipBank(tmp_path / "songs_codec"))


def test_irs_are_drawn_by_kind_and_the_device_is_chained_with_the_room(kind_banks):
    songs, noise, irs, _ = kind_banks
    cfg = AugmentConfig(max_ir_s=3.0, reverb_prob=1.0, resonant_share=0.5, device_ir_prob=1.0)
    src = ViewSource(songs, noise, irs, cfg)
    assert src.ir_len == 16000 and src.device_len == 160  # the 2 s room is kept whole
    assert src.history == 16000 - 1 + 160 - 1 + FILTER_SETTLE
    batch = src.views(np.random.default_rng(0), np.arange(len(src)).repeat(20))
    room, ring, dev = (irs.clip(i) for i in range(3))
    used = [("room" if np.allclose(r[:len(room)], room) else "ring" if np.allclose(r[:len(ring)], ring)
             else "?") for r in batch.irs]
    assert "?" not in used and 0.3 < used.count("ring") / len(used) < 0.7
    # every view also has the device response, chained (not drawn instead of the room)
    assert np.allclose(batch.device_irs[:, :len(dev)], dev)
    # the chain applies both: output = x * device * room (one linear convolution)
    t = torch.from_numpy
    params = src.views(np.random.default_rng(1), np.zeros(1, np.int64)).params
    params.snr_db[:] = np.inf
    params.eq_gain_db[:] = 0
    params.highpass_hz[:] = params.lowpass_hz[:] = 0
    params.gain_db[:] = 0
    params.compress_ratio[:] = 1
    out = degrade(t(batch.audio[:1]), t(batch.irs[:1]), t(batch.noise[:1]), params.to_torch("cpu"), 8000,
                  device_irs=t(batch.device_irs[:1]))
    full = np.convolve(np.convolve(batch.audio[0], batch.device_irs[0]), batch.irs[0])[:batch.audio.shape[1]]
    ref = full[-8000:] / np.abs(full[-8000:]).max()
    np.testing.assert_allclose(out[0].numpy(), ref, atol=2e-3)


def test_device_eq_colours_the_room_noise_too():
    """The recording device filters what reaches the microphone: music and the room's noise alike."""
    n = 8000 + FILTER_SETTLE
    audio = torch.zeros(1, n)
    audio[0, :] = 0.01 * torch.randn(1, n, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(1, n, generator=torch.Generator().manual_seed(1))
    p = _params(1, snr_db=np.array([-30.0], np.float32), eq_hz=np.full((1, 2), 1000.0, np.float32),
                eq_q=np.full((1, 2), 2.0, np.float32), eq_gain_db=np.array([[20.0, 0.0]], np.float32))
    out = degrade(audio, torch.ones(1, 1), noise, p, 8000)[0].numpy()
    spec = np.abs(np.fft.rfft(out)) ** 2
    f = np.fft.rfftfreq(len(out), 1 / 8000)
    boost = spec[(f > 900) & (f < 1100)].mean() / spec[(f > 2500) & (f < 3000)].mean()
    assert boost > 30  # +20 dB at 1 kHz on what is almost all noise


def test_codec_and_speed_views_differ_from_the_clean_view_as_expected(kind_banks):
    songs, noise, _, codec = kind_banks
    rows = np.zeros(200, np.int64) + 2
    plain = ViewSource(songs, None, None, AugmentConfig(jitter_s=0.0, reverb_prob=0.0))
    base = plain.views(np.random.default_rng(0), rows).audio
    coded = ViewSource(songs, None, None, AugmentConfig(jitter_s=0.0, reverb_prob=0.0, codec_prob=1.0),
                       codec=codec).views(np.random.default_rng(0), rows).audio
    assert not np.allclose(coded, base) and np.corrcoef(coded[0], base[0])[0, 1] > 0.9  # same music, codec noise
    fast = ViewSource(songs, None, None, AugmentConfig(jitter_s=0.0, reverb_prob=0.0, speed_prob=1.0,
                                                         speed=(1.04, 1.04))).views(np.random.default_rng(0), rows)
    spec = np.abs(np.fft.rfft(fast.audio[0, -8000:]))
    peak_hz = np.argmax(spec) * 8000 / 8000
    assert peak_hz == pytest.approx(520.0, abs=2.0)  # 500 Hz played 4 % faster
    with pytest.raises(ValueError, match="not aligned"):
        ViewSource(songs, None, None, AugmentConfig(), codec=noise)


def test_compression_narrows_the_dynamics():
    t = torch.arange(16000) / 8000
    x = torch.sin(2 * torch.pi * 300 * t) * torch.where(t < 1.0, 1.0, 0.05)  # loud second, then -26 dB
    y = compress(x[None], torch.tensor([6.0]), torch.tensor([-20.0]))[0]
    def level(a):
        return 10 * torch.log10(a.pow(2).mean())
    before = level(x[:7000]) - level(x[9000:])
    after = level(y[:7000]) - level(y[9000:])
    assert before == pytest.approx(26.0, abs=0.5) and after < before - 4
    assert torch.equal(compress(x[None], torch.tensor([1.0]), torch.tensor([-20.0]))[0], x)  # ratio 1: off


def test_views_are_reproducible_for_a_seed(kind_banks):
    songs, noise, irs, codec = kind_banks
    cfg = AugmentConfig(max_ir_s=3.0, resonant_share=0.3, device_ir_prob=0.3, codec_prob=0.3, speed_prob=0.3,
                        compress_prob=0.3, eq_bands=(1, 4))
    a = ViewSource(songs, noise, irs, cfg, codec=codec).pairs(np.random.default_rng(5), np.arange(6))
    b = ViewSource(songs, noise, irs, cfg, codec=codec).pairs(np.random.default_rng(5), np.arange(6))
    for x, y in ((a.audio, b.audio), (a.irs, b.irs), (a.noise, b.noise), (a.device_irs, b.device_irs),
                 (a.params.eq_gain_db, b.params.eq_gain_db), (a.params.compress_ratio, b.params.compress_ratio)):
        np.testing.assert_array_equal(x, y)


def test_a_sped_up_last_segment_ends_in_silence_not_in_the_next_song(tmp_path):
    """Played 5 % faster, a song's last segment needs samples past its end: they are silence. The first song must
    not borrow the second's samples, and the bank's last song must not run past the end of the bank."""
    first = np.full(16000, 0.5, np.float32)
    second = np.full(12000, -0.5, np.float32)
    write_clip_bank(tmp_path / "songs", [first, second], pd.DataFrame({"song_id": ["a", "b"], "name": ["a", "b"]}))
    songs = ClipBank(tmp_path / "songs")
    src = ViewSource(songs, None, None, AugmentConfig(jitter_s=0.0, reverb_prob=0.0, speed_prob=1.0,
                                                      speed=(1.05, 1.05)))
    last = [int(np.flatnonzero(src.song_index == s)[-1]) for s in (0, 1)]
    for row, level in zip(last, (0.5, -0.5)):
        audio = src._cut(songs.samples, int(src.song_index[row]), int(src.segment_index[row]) * 4000, 1.05)
        assert len(audio) == src.window
        tail = audio[-200:]  # past the song's end: silence (resampling rings only at the edge)
        assert np.all(np.abs(tail) < 0.05), tail[:5]
        assert np.sign(np.median(audio[-8000:-1000])) == np.sign(level)  # the song itself, never the other one


# --- whitened views ---------------------------------------------------------------------------------------------

def test_batched_whitening_is_the_searchs_whitening():
    """lpc_whiten_rows gives, row by row, what the search's lpc_whiten gives a query: the same filter at the same
    level; a silent row comes back silent."""
    import scipy.signal

    from workflow_lib.search.whiten import lpc_whiten

    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 12000))
    for i, f0 in enumerate((400.0, 1300.0)):  # a narrow resonance far above the rest: what the whitening takes out
        b, a = scipy.signal.iirpeak(f0, 40, fs=8000)
        x[i] = scipy.signal.lfilter(b, a, x[i]) + 0.05 * x[i]
    x[2] = 0.0
    x = x.astype(np.float32)
    y = lpc_whiten_rows(torch.from_numpy(x), 48).numpy()
    for i in range(3):
        np.testing.assert_allclose(y[i], lpc_whiten(x[i], 48), atol=1e-6)
    assert np.abs(y[0] - x[0]).max() > 0.1 * np.abs(x[0]).max()  # it did filter
    assert np.all(y[2] == 0)
    with pytest.raises(ValueError, match="order"):
        lpc_whiten_rows(torch.zeros(1, 40), 48)


def test_whitened_views_are_the_plain_views_whitened_on_their_fit_length(banks, tmp_path):
    """With whiten_prob the views are those of a run without it (drawn last; only more history for the fit), a
    share of them is whitened, and degrade_views gives the other views as that run does (degraded from its
    shorter window: the compressor's level is that window's, and the long fit is paid only where it is used) and
    the whitened ones through the inverse filter of the last whiten_fit_s of their degraded audio, cut to the
    segment at the drawn level."""
    from workflow_lib.training.train import degrade_views

    _, _, irs = banks
    # Fading songs: the audio before a view is louder than the view, so a compressor that looked further back
    # would compress it differently.
    fade = [np.random.default_rng(i).standard_normal(n).astype(np.float32) * np.geomspace(1, 0.02, n, dtype=np.float32)
            for i, n in enumerate((24000, 16000))]
    write_clip_bank(tmp_path / "fading", fade, pd.DataFrame({"song_id": ["a", "b"], "name": ["a", "b"]}))
    songs = ClipBank(tmp_path / "fading")
    rows = np.tile(np.arange(8), 8)
    base = dict(jitter_s=0.0, max_ir_s=0.05, reverb_prob=1.0, compress_prob=1.0, compress_threshold_db=(-12.0, -6.0),
                time_mask_prob=0.0, freq_mask_prob=0.0)
    plain = ViewSource(songs, None, irs, AugmentConfig(**base)).pairs(np.random.default_rng(0), rows)
    src = ViewSource(songs, None, irs, AugmentConfig(**base, whiten_prob=0.5, whiten_fit_s=1.5, whiten_order=32))
    views = src.pairs(np.random.default_rng(0), rows)
    assert plain.whiten is None and views.audio.shape[1] == plain.audio.shape[1] + 4000
    np.testing.assert_array_equal(views.audio[:, 4000:], plain.audio)
    np.testing.assert_array_equal(views.irs, plain.irs)
    np.testing.assert_array_equal(views.params.eq_gain_db, plain.params.eq_gain_db)
    assert 0.3 < views.whiten.mean() < 0.7 and views.fit_len == 12000 and views.whiten_order == 32
    short = ViewSource(songs, None, irs, AugmentConfig(**base, whiten_prob=0.5, whiten_fit_s=0.5, whiten_order=32))
    assert short.fit_len == 8000 and short.history == ViewSource(songs, None, irs, AugmentConfig(**base)).history
    cpu = torch.device("cpu")
    wav, params = degrade_views(views, cpu)
    ref, _ = degrade_views(plain, cpu)
    w = torch.from_numpy(views.whiten)
    assert wav.shape == ref.shape == (len(views.whiten), 8000)
    torch.testing.assert_close(wav[~w], ref[~w], atol=1e-4, rtol=0)
    long = degrade(torch.from_numpy(views.audio), torch.from_numpy(views.irs), torch.from_numpy(views.noise),
                   params, 12000)
    expected = set_peak_db(lpc_whiten_rows(long[w], 32)[:, -8000:], params.gain_db[w])
    torch.testing.assert_close(wav[w], expected, atol=1e-5, rtol=0)
    assert ((wav[w] - ref[w]).abs().amax(-1) > 0.05).all()  # whitened, not the plain view
