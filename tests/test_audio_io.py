from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from workflow_lib.audio.decoded import AudioDecodeError
from workflow_lib.audio.ffmpeg import has_ffmpeg
from workflow_lib.audio.files import audio_info, iter_audio, load_audio, resample
from tests.conftest import tone_mix

FORMATS = [("wav", "PCM_16"), ("flac", "PCM_16"), ("ogg", "VORBIS"), ("opus", "OPUS"), ("mp3", "MPEG_LAYER_III")]


def _write(path, audio, sr, subtype):
    fmt = {"opus": "OGG", "mp3": "MP3"}.get(path.suffix[1:], None)
    sf.write(str(path), audio, sr, subtype=subtype, format=fmt)


@pytest.mark.parametrize("ext,subtype", FORMATS)
@pytest.mark.parametrize("channels", [1, 2, 6])
def test_every_format_and_layout_decodes_to_8k_mono(tmp_path, ext, subtype, channels):
    if ext == "mp3" and channels > 2:
        pytest.skip("MP3 holds at most two channels")
    sr = 48000 if ext == "opus" else 44100
    mono = tone_mix(2.0, sr)
    audio = np.stack([mono] * channels, axis=1) if channels > 1 else mono
    path = tmp_path / f"x.{ext}"
    _write(path, audio, sr, subtype)
    out = load_audio(path)
    assert out.dtype == np.float32 and out.ndim == 1
    assert abs(len(out) - 16000) < 800  # codecs add a little padding / delay
    ref = resample(mono, sr)
    # The decoded signal carries the same content: strong correlation after aligning codec delay.
    n = min(len(out), len(ref)) - 2000
    best = max(np.corrcoef(out[d:d + n], ref[:n])[0, 1] for d in range(0, 1200, 8))
    assert best > 0.9, (ext, channels, best)


def test_channels_are_averaged(tmp_path):
    sr = 16000
    left = tone_mix(1.5, sr, freqs=(300.0,))
    path = tmp_path / "st.wav"
    sf.write(str(path), np.stack([left, -left], axis=1), sr)
    assert np.max(np.abs(load_audio(path))) < 1e-3  # opposite channels cancel in the mono mix


def test_resampling_accuracy():
    sr = 44100
    t = np.arange(sr * 2) / sr
    x = np.sin(2 * np.pi * 1000 * t).astype(np.float32)
    y = resample(x, sr, 8000)
    assert len(y) == 16000
    spec = np.abs(np.fft.rfft(y[4000:12000] * np.hanning(8000)))
    freqs = np.fft.rfftfreq(8000, 1 / 8000)
    assert abs(freqs[np.argmax(spec)] - 1000) <= 1
    # Above-Nyquist content is removed, not aliased.
    z = resample(np.sin(2 * np.pi * 6000 * t).astype(np.float32), sr, 8000)
    assert np.sqrt(np.mean(z[2000:-2000] ** 2)) < 0.01


def test_streaming_matches_whole_file(tmp_path):
    sr = 22050
    x = tone_mix(70.0, sr)
    path = tmp_path / "long.flac"
    sf.write(str(path), x, sr)
    chunks = list(iter_audio(path, chunk_seconds=7.0))
    assert all(len(c) == 56000 for c in chunks[:-1])
    joined = np.concatenate(chunks)
    assert abs(len(joined) - 70 * 8000) <= 2
    np.testing.assert_allclose(joined, resample(x, sr)[: len(joined)], atol=2e-3)


def test_info(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(str(path), np.zeros((4410, 2), np.float32), 44100)
    info = audio_info(path)
    assert (info.sample_rate, info.channels) == (44100, 2) and abs(info.duration_s - 0.1) < 1e-6


def test_corrupt_file_gives_clear_error(tmp_path):
    path = tmp_path / "bad.mp3"
    path.write_bytes(b"this is not audio at all" * 100)
    with pytest.raises(AudioDecodeError, match="bad.mp3"):
        load_audio(path)


@pytest.mark.parametrize("sr", [8000, 44100])
def test_non_finite_samples_are_a_clear_error(tmp_path, sr):
    """A float WAV holding NaN or infinity is not audio to fingerprint: named, not read as silence (the resampler
    spreads a NaN over its neighbours) and never handed to the model (at 8 kHz it would reach it as it is)."""
    import io

    from workflow_lib.audio.files import iter_wav_stream

    audio = tone_mix(3.0, sr).astype(np.float32)
    for bad in (np.nan, np.inf):
        x = audio.copy()
        x[sr:sr + 10] = bad
        path = tmp_path / f"bad_{sr}.wav"
        sf.write(str(path), x, sr, subtype="FLOAT")
        with pytest.raises(AudioDecodeError, match=r"bad_\d+.wav: non-finite samples \(NaN or infinity\) at 1.0 s"):
            load_audio(path)
        with pytest.raises(AudioDecodeError, match="stdin: non-finite samples"):
            list(iter_wav_stream(io.BytesIO(path.read_bytes())))
    sf.write(str(path), audio, sr, subtype="FLOAT")
    assert np.isfinite(load_audio(path)).all()


def test_missing_file(tmp_path):
    with pytest.raises(AudioDecodeError, match="no such file"):
        load_audio(tmp_path / "nope.wav")
    # A web address is not a missing file; the message gives it back as typed.
    with pytest.raises(AudioDecodeError, match=r"^https://example.org/a.mp3: a web address; nafp reads local files"):
        load_audio(Path("https://example.org/a.mp3"))
    # A link whose target is gone says so (exists() follows the link, so it read "no such file").
    (tmp_path / "gone.wav").symlink_to("moved/song.wav")
    with pytest.raises(AudioDecodeError, match=r"gone.wav: broken symbolic link \(to moved/song.wav\)"):
        load_audio(tmp_path / "gone.wav")


@pytest.mark.parametrize("ext", ["wav", "flac"])
def test_truncated_file_gives_clear_error(tmp_path, ext):
    path = tmp_path / f"t.{ext}"
    sf.write(str(path), tone_mix(5.0, 16000), 16000, subtype="PCM_16")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(AudioDecodeError, match=f"t.{ext}"):
        load_audio(path)


def _set_wav_sizes(path: Path, riff: int, data: int) -> None:
    raw = bytearray(path.read_bytes())
    at = raw.index(b"data")
    raw[4:8], raw[at + 4:at + 8] = riff.to_bytes(4, "little"), data.to_bytes(4, "little")
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("declared", [0, 0x7FFFF000, 0x7FFFFFFF, 0xFFFFFFFF])
@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24", "FLOAT"])
def test_a_recording_stopped_before_its_header_was_written_is_read_whole(tmp_path, caplog, declared, subtype):
    """A recorder writes a size it does not know yet (0, or a placeholder near 2^31 or 2^32) and the real one when
    it stops, so a recording stopped hard keeps it: its audio runs to the end of the file. A 0 read as no audio
    made such a query "too short: 0.00 s", a placeholder read as "truncated"."""
    path = tmp_path / "rec.wav"
    x = tone_mix(3.0, 16000)
    sf.write(str(path), np.stack([x, -x], axis=1), 16000, subtype=subtype)
    whole = load_audio(path)
    _set_wav_sizes(path, declared, declared)
    with caplog.at_level("WARNING", logger="workflow_lib.audio.files"):
        info, audio = audio_info(path), load_audio(path)
    assert info.frames == 48000 and info.duration_s == pytest.approx(3.0)
    np.testing.assert_allclose(audio, whole, atol=1e-6)
    assert "rec.wav: its header was never completed" in caplog.text and "3.0 s" in caplog.text


def test_an_empty_wav_with_a_tag_after_its_data_is_empty_and_a_cut_one_still_truncated(tmp_path):
    """A declared 0 is read as audio only when what follows is not whole chunks (a tag list); a size short of
    the placeholders that the file does not hold is still a truncated file."""
    path = tmp_path / "empty.wav"
    sf.write(str(path), np.zeros(0, np.float32), 16000, subtype="PCM_16")
    tag = b"LIST" + (16).to_bytes(4, "little") + b"INFOINAM" + (3).to_bytes(4, "little") + b"ab\0\0"
    path.write_bytes(path.read_bytes() + tag)
    assert audio_info(path).frames == 0 and len(load_audio(path)) == 0
    cut = tmp_path / "cut.wav"
    sf.write(str(cut), tone_mix(2.0, 16000), 16000, subtype="PCM_16")
    _set_wav_sizes(cut, 0x7FFE0000, 0x7FFE0000)
    with pytest.raises(AudioDecodeError, match="cut.wav: truncated: header declares"):
        load_audio(cut)


@pytest.mark.skipif(not has_ffmpeg(), reason="ffmpeg not installed")
@pytest.mark.parametrize("ext,codec", [("wv", "wavpack"), ("tta", "tta"), ("m4b", "alac"), ("mp2", "mp2"),
                                       ("aifc", "pcm_s16be")])
def test_lossless_and_other_collection_formats_are_read(tmp_path, ext, codec):
    """WavPack, TTA and ALAC audiobooks (ffmpeg), MPEG layer II and AIFF-C (libsndfile): formats of real
    collections that were rejected as "not an audio file" before."""
    import subprocess

    from workflow_lib.audio.files import AUDIO_EXTENSIONS

    wav = tmp_path / "s.wav"
    x = tone_mix(3.0, 44100, seed=2)
    sf.write(str(wav), x, 44100)
    out = tmp_path / f"s.{ext}"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(wav), "-c:a", codec, str(out)], check=True)
    assert f".{ext}" in AUDIO_EXTENSIONS
    got = load_audio(out)
    ref = load_audio(wav)
    assert abs(len(got) - len(ref)) < 0.06 * 8000 and abs(audio_info(out).duration_s - 3.0) < 0.06
    n = min(len(got), len(ref))
    if ext != "mp2":  # lossless: the same signal (ffmpeg's resampler, not soxr; mp2's decoder delay shifts it)
        assert np.corrcoef(got[:n], ref[:n])[0, 1] > 0.99


@pytest.mark.skipif(not has_ffmpeg(), reason="ffmpeg not installed")
def test_m4a_through_ffmpeg(tmp_path):
    import subprocess

    wav = tmp_path / "s.wav"
    sf.write(str(wav), tone_mix(2.0, 44100), 44100)
    m4a = tmp_path / "s.m4a"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(wav), "-c:a", "aac", str(m4a)], check=True)
    out = load_audio(m4a)
    assert abs(len(out) - 16000) < 1000 and audio_info(m4a).sample_rate == 44100
    # Cut before its index: ffprobe's lines come back as one line, without the demuxer's "[mov,... @ 0x55...]".
    cut = tmp_path / "cut.m4a"
    cut.write_bytes(m4a.read_bytes()[:len(m4a.read_bytes()) // 3])
    with pytest.raises(AudioDecodeError) as err:
        load_audio(cut)
    message = str(err.value)
    assert message.startswith(f"{cut}: ") and message.count(str(cut)) == 1
    assert "@ 0x" not in message and "\n" not in message and "moov atom not found" in message



@pytest.mark.skipif(not has_ffmpeg(), reason="ffmpeg not installed")
def test_the_sound_of_a_phone_video_is_read(tmp_path):
    """A clip filmed on a phone (.mov with a picture and AAC sound; a .3gp, a .mkv): its audio stream is decoded,
    the picture ignored. Before, `nafp query clip.mov` said "format not recognised"."""
    import subprocess

    from workflow_lib.audio.files import AUDIO_EXTENSIONS

    wav = tmp_path / "s.wav"
    sf.write(str(wav), tone_mix(3.0, 44100), 44100)
    ref = load_audio(wav)
    for ext in ("mov", "3gp", "mkv"):
        video = tmp_path / f"clip.{ext}"
        subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=duration=3:size=64x48:rate=5",
                        "-i", str(wav), "-shortest", "-c:v", "mpeg4", "-c:a", "aac", str(video)], check=True)
        assert video.suffix in AUDIO_EXTENSIONS
        got = load_audio(video)
        assert abs(len(got) - len(ref)) < 0.1 * 8000 and audio_info(video).sample_rate == 44100
        # the same sound, up to the AAC encoder's delay (which MKV does not undo): the best of lags up to 50 ms
        body = ref[800:-1600]
        best = max(np.corrcoef(got[800 + lag:800 + lag + len(body)], body)[0, 1] for lag in range(-400, 401, 2))
        assert best > 0.9, ext

def _damaged_aac(tmp_path, minutes: float = 3.0):
    """An AAC file whose middle 90 % has every 7th byte overwritten (issue 15: this hung every reader)."""
    import subprocess

    sr = 22050
    rng = np.random.default_rng(0)
    wav = tmp_path / "long.wav"
    sf.write(str(wav), (0.3 * tone_mix(minutes * 60, sr) + 0.05 * rng.standard_normal(int(minutes * 60 * sr)))
             .astype(np.float32), sr)
    m4a = tmp_path / "damaged.m4a"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(wav), "-c:a", "aac", "-b:a", "96k", str(m4a)], check=True)
    data = bytearray(m4a.read_bytes())
    lo, hi = int(0.05 * len(data)), int(0.95 * len(data))
    idx = np.arange(lo, hi, 7)
    data_np = np.frombuffer(data, dtype=np.uint8).copy()
    data_np[idx] = rng.integers(0, 256, len(idx), dtype=np.uint8)
    m4a.write_bytes(data_np.tobytes())
    return m4a


@pytest.mark.skipif(not has_ffmpeg(), reason="ffmpeg not installed")
def test_damaged_aac_is_rejected_with_a_reason_not_a_hang(tmp_path):
    """Decoded in a child process with a time limit, so a regression fails the test instead of hanging CI."""
    import subprocess
    import sys

    m4a = _damaged_aac(tmp_path)
    code = ("import sys\nfrom workflow_lib.audio.files import AudioDecodeError, load_audio\n"
            "try:\n    load_audio(sys.argv[1])\nexcept AudioDecodeError as e:\n    print('REJECTED', e)\n")
    res = subprocess.run([sys.executable, "-c", code, str(m4a)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "REJECTED" in res.stdout and "corrupt" in res.stdout, res.stdout


@pytest.mark.skipif(not has_ffmpeg(), reason="ffmpeg not installed")
def test_ffmpeg_decode_time_is_capped(tmp_path, monkeypatch):
    """A decoder that stalls is killed when the time budget is spent, and the file is rejected with that reason."""
    import workflow_lib.audio.ffmpeg as aio

    wav = tmp_path / "s.wav"
    sf.write(str(wav), tone_mix(2.0, 44100), 44100)
    m4a = tmp_path / "s.m4a"
    import subprocess
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(wav), "-c:a", "aac", str(m4a)], check=True)
    real_popen = subprocess.Popen

    def stalled(cmd, **kw):  # ffmpeg that produces nothing for a minute (a stuck decoder); ffprobe runs as usual
        return real_popen(["sleep", "60"] if cmd[0] == "ffmpeg" else cmd, **kw)

    monkeypatch.setattr(aio.subprocess, "Popen", stalled)
    monkeypatch.setattr(aio, "DECODE_TIMEOUT_BASE_S", 1.0)
    import time
    t0 = time.monotonic()
    with pytest.raises(AudioDecodeError, match="did not finish within"):
        load_audio(m4a)
    assert time.monotonic() - t0 < 30
