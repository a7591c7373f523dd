"""Built-in demo corpus: count, format, tags, determinism, distinct songs, no exact loops."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from workflow_lib.data.demo_corpus import generate_demo_corpus

N_SONGS, DURATION_S, SEED = 4, 20.0, 7


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    table = generate_demo_corpus(out, N_SONGS, DURATION_S, SEED)
    return out, table


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _audio(out, name) -> np.ndarray:
    x, sr = sf.read(out / "music" / name, dtype="float32")
    assert sr == 8000
    return x


def test_files_format_and_catalogue(corpus):
    out, table = corpus
    files = sorted((out / "music").glob("*.flac"))
    assert [f.name for f in files] == [f"demo-{i:03d}.flac" for i in range(N_SONGS)]
    for f in files:
        info = sf.info(f)
        assert (info.samplerate, info.channels, info.subtype) == (8000, 1, "PCM_16")
        assert info.frames == int(DURATION_S * 8000)
    cat = pd.read_csv(out / "catalogue.csv")
    assert list(cat.columns[:3]) == ["file", "title", "artist"]
    assert cat["file"].tolist() == [f.name for f in files]
    assert cat["title"].is_unique
    pd.testing.assert_frame_equal(cat[["file", "title", "artist"]], table[["file", "title", "artist"]])
    for f, row in zip(files, cat.itertuples()):  # tags match the catalogue
        meta = sf.SoundFile(f).copy_metadata()
        assert (meta["title"], meta["artist"]) == (row.title, row.artist)


def test_levels_are_sane(corpus):
    out, table = corpus
    for name in table["file"]:
        x = _audio(out, name)
        rms = float(np.sqrt(np.mean(x ** 2)))
        assert 0.03 < rms < 0.5 and np.abs(x).max() < 1.0
        # no long silence anywhere: every second carries signal (except the fade-out at the very end)
        per_second = np.sqrt(np.mean(x[: len(x) // 8000 * 8000].reshape(-1, 8000) ** 2, axis=1))
        assert per_second[:-2].min() > 0.005


def test_bit_identical_for_a_seed_and_independent_of_count(corpus, tmp_path):
    out, _ = corpus
    again = generate_demo_corpus(tmp_path / "a", N_SONGS + 1, DURATION_S, SEED)
    for i in range(N_SONGS):
        name = f"demo-{i:03d}.flac"
        assert _digest(out / "music" / name) == _digest(tmp_path / "a" / "music" / name)
    assert len(again) == N_SONGS + 1
    other = generate_demo_corpus(tmp_path / "b", 1, DURATION_S, SEED + 1)
    assert not np.allclose(_audio(out, "demo-000.flac"), _audio(tmp_path / "b", other["file"][0]))


def _max_self_match(x: np.ndarray, seg: int = 8000) -> float:
    """Largest normalised cross-correlation of any 1 s segment with the song elsewhere (>= 1 s away), any lag."""
    n = 1 << int(np.ceil(np.log2(len(x) + seg)))
    spec_x = np.fft.rfft(x, n)
    energy = np.concatenate([[0.0], np.cumsum(x.astype(np.float64) ** 2)])
    window_norm = np.sqrt(np.maximum(energy[seg:] - energy[:-seg], 1e-12))  # |x[lag:lag+seg]| for every lag
    lags = np.arange(len(window_norm))
    best = 0.0
    for start in range(0, len(x) - seg + 1, seg // 2):
        s = x[start:start + seg]
        corr = np.fft.irfft(spec_x * np.conj(np.fft.rfft(s, n)), n)[:len(window_norm)]
        corr = np.abs(corr) / (np.linalg.norm(s) * window_norm + 1e-12)
        corr[np.abs(lags - start) < seg] = 0
        best = max(best, float(corr.max()))
    return best


def test_no_exact_loops_within_a_song(corpus):
    out, table = corpus
    # control: the measure does flag a looped signal (a 1.3 s bar repeated) as identical
    rng = np.random.default_rng(0)
    looped = np.tile(rng.standard_normal(10400), 8)
    assert _max_self_match(looped) > 0.99
    for name in table["file"]:
        assert _max_self_match(_audio(out, name)) < 0.9, name


def _segment_spectra(x: np.ndarray) -> np.ndarray:
    """Unit-norm mean log spectrum of each 1 s segment at 0.5 s hop."""
    n = (len(x) - 8000) // 4000 + 1
    segs = np.stack([x[j * 4000:j * 4000 + 8000] for j in range(n)])
    idx = np.arange(0, 8000 - 256 + 1, 128)[:, None] + np.arange(256)
    spec = np.log(np.abs(np.fft.rfft(segs[:, idx] * np.hanning(256), axis=-1)) ** 2 + 1e-6).mean(axis=1)
    spec -= spec.mean(axis=1, keepdims=True)
    return spec / np.linalg.norm(spec, axis=1, keepdims=True)


def test_songs_are_distinct(corpus):
    """A segment's most similar non-overlapping segment almost always comes from the same song."""
    out, table = corpus
    feats = [_segment_spectra(_audio(out, name)) for name in table["file"]]
    allf = np.concatenate(feats)
    song = np.concatenate([np.full(len(f), i) for i, f in enumerate(feats)])
    pos = np.concatenate([np.arange(len(f)) for f in feats])
    sim = allf @ allf.T
    sim[(song[:, None] == song[None, :]) & (np.abs(pos[:, None] - pos[None, :]) < 2)] = -np.inf
    nearest = sim.argmax(axis=1)
    assert (song[nearest] == song).mean() > 0.8
    # and the songs differ in musical make-up, not just in rendering
    assert table["key"].nunique() + table["tempo_bpm"].nunique() >= N_SONGS + 2


def test_rerun_with_fewer_songs_removes_the_others(tmp_path):
    generate_demo_corpus(tmp_path, 3, 5.0, 1)
    (tmp_path / "music" / "notes.txt").write_text("kept")
    generate_demo_corpus(tmp_path, 2, 5.0, 1)
    assert sorted(p.name for p in (tmp_path / "music").iterdir()) == ["demo-000.flac", "demo-001.flac", "notes.txt"]


def test_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="n_songs"):
        generate_demo_corpus(tmp_path, 0, 10.0, 1)
