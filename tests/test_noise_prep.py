"""Noise preparation: hold-out by file, babble from held-out speech, generated fallback, skipping, bank format."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import soundfile as sf

from workflow_lib.data.clipbank import ClipBank
from workflow_lib.data.noise import TARGET_RMS, active_pieces, prepare_noise

SR_IN = 16000  # files are written at 16 kHz so decoding also resamples


def _noise(seconds: float, seed: int, sr: int = SR_IN) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(int(seconds * sr)) * rng.uniform(0.01, 0.3)
    return x.astype(np.float32)


def _speech_like(seconds: float, seed: int, sr: int = SR_IN) -> np.ndarray:
    """Voiced 'syllables': a harmonic tone switched on and off at about 4 Hz, with a distinct pitch per file."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = rng.uniform(90, 250)
    tone = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 8))
    gate = (np.sin(2 * np.pi * rng.uniform(3, 5) * t) > 0).astype(float)
    return (0.2 * tone * gate).astype(np.float32)


def _write(path, audio, sr=SR_IN):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), audio, sr)
    return path


def _run(noise, speech, out, **kw):
    args = dict(test_fraction=0.3, max_clip_s=2.0, babble_speakers=(2, 3), babble_clips=3, babble_clip_s=2.0,
                generated_clips=3, seed=2)  # seed 2: the hash alone puts some of n00..n07 on each side
    args.update(kw)
    return prepare_noise(noise, speech, out, **args)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("noise")
    noise = [_write(root / "noise" / f"n{i:02d}.wav", _noise(3.0, i)) for i in range(8)]
    speech = [_write(root / "speech" / f"s{i:02d}.flac", _speech_like(1.5, 100 + i)) for i in range(10)]
    return root, noise, speech


@pytest.fixture(scope="module")
def banks(dataset):
    root, noise, speech = dataset
    out = root / "out"
    summary = _run(noise, speech, out)
    return out, summary, ClipBank(out / "train"), ClipBank(out / "test")


def test_split_is_disjoint_by_file_and_covers_all(banks, dataset):
    _, noise, _ = dataset
    _, summary, train, test = banks
    src = {s: set(b.meta.loc[b.meta["kind"] == "noise", "source"]) for s, b in (("train", train), ("test", test))}
    assert src["train"] and src["test"]
    assert not src["train"] & src["test"]
    assert src["train"] | src["test"] == {str(p) for p in noise}
    assert summary["noise_files"] == {"given": 8, "skipped": 0}


def test_split_is_stable_when_files_are_added(banks, dataset, tmp_path):
    root, noise, speech = dataset
    _, _, train, test = banks
    extra = [_write(tmp_path / f"extra{i}.wav", _noise(2.0, 50 + i)) for i in range(3)]
    _run(noise + extra, [], tmp_path / "out")
    before = set(test.meta.loc[test.meta["kind"] == "noise", "source"])
    after = set(ClipBank(tmp_path / "out" / "test").meta["source"])
    assert before == after - {str(p) for p in extra}


def test_clips_are_capped_and_rms_normalised(banks):
    _, _, train, test = banks
    for bank in (train, test):
        assert bank.samples.dtype == np.float16
        assert (bank.lengths <= 2 * 8000).all() and (bank.lengths > 0).all()
        for i in range(len(bank)):
            clip = bank.clip(i)
            assert clip.dtype == np.float32
            assert np.sqrt(np.mean(clip ** 2)) == pytest.approx(TARGET_RMS, rel=0.02)
        excerpt = bank.random_excerpt(np.random.default_rng(0), 8000)
        assert excerpt.shape == (8000,) and np.isfinite(excerpt).all()


def test_babble_uses_held_out_speech(banks, dataset):
    _, _, speech = dataset
    _, summary, train, test = banks
    names = {p.name for p in speech}
    used = {}
    for split, bank in (("train", train), ("test", test)):
        rows = bank.meta[bank.meta["kind"] == "babble"]
        assert len(rows) == 3
        used[split] = {n for src in rows["source"] for n in src.split(";")}
        assert used[split] <= names
        assert bank.lengths[rows.index].tolist() == [2 * 8000] * 3
    assert not used["train"] & used["test"]  # test babble never contains a training speaker's clip
    assert summary["train"]["babble"] == summary["test"]["babble"] == 3


def test_babble_mixes_several_talkers(banks):
    _, _, train, _ = banks
    i = int(np.flatnonzero(train.meta["kind"] == "babble")[0])
    # single talkers are gated on/off at ~4 Hz; a mix of 2-3 talkers is rarely quiet
    frames = np.sqrt(np.mean(train.clip(i)[: 16000].reshape(-1, 400) ** 2, axis=1))
    assert (frames < 0.1 * frames.max()).mean() < 0.3


def test_generated_fallback_with_notice(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="workflow_lib.data.noise"):
        summary = _run([], [], tmp_path, generated_clips=8)
    assert any("no noise folders configured: using generated noise" in r.getMessage() for r in caplog.records)
    assert summary["generated_fallback"] is True
    train, test = ClipBank(tmp_path / "train"), ClipBank(tmp_path / "test")
    for bank in (train, test):
        assert len(bank) == 8 and set(bank.meta["kind"]) == {"generated"}
        assert bank.meta["source"].nunique() == 8  # every generator type is used
        for i in range(len(bank)):
            assert np.sqrt(np.mean(bank.clip(i) ** 2)) == pytest.approx(TARGET_RMS, rel=0.02)
    # train and test are different noise, not the same draws
    assert not np.allclose(train.clip(0)[:1000], test.clip(0)[:1000])
    # coloured noises really differ in spectral slope: brown is darker than white
    def low_share(x):
        spec = np.abs(np.fft.rfft(x)) ** 2
        return spec[: len(spec) // 8].sum() / spec.sum()
    names = list(train.meta["name"])
    white = train.clip(next(i for i, n in enumerate(names) if n.endswith("white")))
    brown = train.clip(next(i for i, n in enumerate(names) if n.endswith("brown")))
    assert low_share(brown) > 0.9 > 0.3 > low_share(white)


def test_bad_and_silent_files_are_skipped_with_reason(tmp_path, caplog):
    good = [_write(tmp_path / f"g{i}.wav", _noise(2.0, i)) for i in range(3)]
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" + bytes(100))
    silent = _write(tmp_path / "silent.wav", np.zeros(SR_IN * 2, np.float32))
    with caplog.at_level(logging.WARNING, logger="workflow_lib.data.noise"):
        summary = _run(good + [broken, silent], [], tmp_path / "out")
    reasons = {s["path"]: s["reason"] for s in summary["skipped"]}
    assert set(reasons) == {str(broken), str(silent)}
    assert "unreadable" in reasons[str(broken)] and "silent" in reasons[str(silent)]
    assert any(str(broken) in r.getMessage() for r in caplog.records)
    assert summary["noise_files"] == {"given": 5, "skipped": 2}
    sources = set(ClipBank(tmp_path / "out" / "train").meta["source"]) | set(
        ClipBank(tmp_path / "out" / "test").meta["source"])
    assert sources == {str(p) for p in good}


def test_no_usable_noise_is_an_error(tmp_path):
    broken = tmp_path / "broken.ogg"
    broken.write_bytes(b"not audio at all")
    with pytest.raises(ValueError, match="data.noise_dirs.*broken.ogg"):
        _run([broken], [], tmp_path / "out")


def test_digital_silence_is_cut_out():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(8000), np.zeros(8000), rng.standard_normal(12000), np.zeros(40)])
    pieces = active_pieces(x.astype(np.float32))
    assert [len(p) for p in pieces] == [8000, 12000 + 40]  # the 5 ms tail of zeros is too short to matter


def test_single_file_is_split_between_train_and_test(tmp_path):
    one = _write(tmp_path / "only.wav", _noise(5.0, 3))
    summary = _run([one], [], tmp_path / "out", max_clip_s=30.0)
    train, test = ClipBank(tmp_path / "out" / "train"), ClipBank(tmp_path / "out" / "test")
    assert len(train) == len(test) == 1
    assert train.lengths[0] + test.lengths[0] == 5 * 8000
    assert test.lengths[0] == pytest.approx(0.3 * 5 * 8000, abs=10)
    assert summary["train"]["clips"] == summary["test"]["clips"] == 1


def test_empty_test_side_gets_a_file(tmp_path):
    files = [_write(tmp_path / f"f{i}.wav", _noise(1.0, i)) for i in range(3)]
    _run(files, [], tmp_path / "out", test_fraction=0.0)
    train, test = ClipBank(tmp_path / "out" / "train"), ClipBank(tmp_path / "out" / "test")
    assert len(test) == 1 and len(train) == 2


def test_short_events_are_strung_into_clips(tmp_path):
    """One key press per file (0.2 s): too short for a clip alone, so events are chained with pauses."""
    rng = np.random.default_rng(1)
    files = []
    for i in range(12):
        click = rng.standard_normal(int(0.2 * SR_IN)) * np.exp(-np.arange(int(0.2 * SR_IN)) / 400)
        files.append(_write(tmp_path / f"key{i:02d}.wav", click.astype(np.float32)))
    summary = _run(files, [], tmp_path / "out", max_clip_s=1.0)
    assert summary["noise_files"]["skipped"] == 0
    used = []
    for split in ("train", "test"):
        bank = ClipBank(tmp_path / "out" / split)
        assert len(bank) >= 1 and bank.meta["name"].str.startswith("events-").all()
        used += [n for src in bank.meta["source"] for n in src.split(";")]
    assert sorted(used) == sorted(p.name for p in files)  # every event used once, on one side only


def test_single_speech_file_is_split_in_time(tmp_path, dataset):
    _, noise, _ = dataset
    one = _write(tmp_path / "talk.flac", _speech_like(6.0, 7))
    summary = _run(noise[:2], [one], tmp_path / "out")
    assert summary["train"]["babble"] == summary["test"]["babble"] == 3
    assert summary["speech_files"] == {"given": 1, "decoded": 2, "skipped": 0}  # two halves, decoded once each
