"""The listener on a real audio device: a private PulseAudio daemon with a null sink; a database song is played into
the sink with ``paplay`` and ``scripts/listen.py`` captures the sink's monitor through sounddevice -> PortAudio ->
ALSA's pulse plugin (Debian libasound2-plugins, a dependency of the pulseaudio package), at the device's native
rate. It must name the song.

The daemon runs as the current user (root included: PulseAudio only warns that it is not meant to run as root
unless ``--system``; ``--system=false`` keeps it a per-user daemon) with its own runtime, state and home folders
under the test's temporary folder, no default script (``-n``: only the null sink and a native-protocol socket with
anonymous access are loaded), and is stopped by its PID at the end. Skipped only when the pulseaudio / paplay /
pactl programs (Debian: pulseaudio, pulseaudio-utils; tools/setup.sh installs them) are not installed.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.listener_helpers import listener_world
from workflow_lib.audio.files import resample

REPO = Path(__file__).resolve().parents[1]
PULSEAUDIO, PAPLAY, PACTL = (shutil.which(p) for p in ("pulseaudio", "paplay", "pactl"))

pytestmark = pytest.mark.skipif(
    not (PULSEAUDIO and PAPLAY and PACTL),
    reason="needs the pulseaudio, paplay and pactl programs (Debian packages pulseaudio and pulseaudio-utils, "
           "installed by tools/setup.sh)")

SINK = "nafp_test"


def _stop(proc: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    """Stop one process we started, by its PID; escalate to SIGKILL if it does not exit."""
    if proc is None or proc.poll() is not None:
        return
    os.kill(proc.pid, sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)


@pytest.fixture
def pulse(tmp_path):
    """A private PulseAudio daemon with a null sink; yields the environment its clients need."""
    rt = tmp_path / "pulse-rt"
    rt.mkdir(mode=0o700)
    home = tmp_path / "pulse-home"
    home.mkdir()
    socket = rt / "native"
    env = {**os.environ, "XDG_RUNTIME_DIR": str(rt), "PULSE_RUNTIME_PATH": str(rt), "PULSE_STATE_PATH": str(home),
           "HOME": str(home)}
    env.pop("PULSE_SERVER", None)
    log_path = tmp_path / "pulseaudio.log"
    cmd = [PULSEAUDIO, "--daemonize=no", "--system=false", "-n", "--exit-idle-time=-1", "--disallow-exit",
           "--disable-shm=yes", "--log-target=stderr",
           f"--load=module-null-sink sink_name={SINK} rate=44100 channels=2",
           f"--load=module-native-protocol-unix socket={socket} auth-anonymous=1"]
    with open(log_path, "w") as log:
        daemon = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    client = {**env, "PULSE_SERVER": f"unix:{socket}"}
    try:
        deadline = time.monotonic() + 30
        while True:
            if daemon.poll() is not None:
                pytest.fail(f"pulseaudio exited with {daemon.returncode}:\n{log_path.read_text()[-3000:]}")
            ok = subprocess.run([PACTL, "info"], env=client, capture_output=True, text=True, timeout=10)
            if ok.returncode == 0:
                break
            if time.monotonic() > deadline:
                pytest.fail(f"pulseaudio did not answer within 30 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        # What the ALSA 'pulse' device records: the null sink's monitor (whatever is played into the sink).
        subprocess.run([PACTL, "set-default-source", f"{SINK}.monitor"], env=client, check=True, timeout=10)
        yield client
    finally:
        _stop(daemon)


class LineReader:
    """Collects a child's stdout lines on a thread, so the test can wait for one with a timeout."""

    def __init__(self, stream):
        self.lines: list[str] = []
        self._q: queue.Queue[str | None] = queue.Queue()
        self._t = threading.Thread(target=self._run, args=(stream,), daemon=True)
        self._t.start()

    def _run(self, stream) -> None:
        for line in stream:
            self._q.put(line)
        self._q.put(None)

    def wait_for(self, pred, timeout: float) -> dict | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._q.get(timeout=0.2)
            except queue.Empty:
                continue
            if line is None:
                return None
            self.lines.append(line)
            obj = json.loads(line)
            if pred(obj):
                return obj
        return None

    def rest(self, timeout: float = 20.0) -> None:
        self.wait_for(lambda o: False, timeout)


@pytest.fixture(scope="module")
def world(tmp_path_factory, request):
    return listener_world(tmp_path_factory, getattr(request.config, "cache", None))


def test_listener_names_a_song_played_into_a_pulseaudio_sink(pulse, world, tmp_path):
    devices = subprocess.run([sys.executable, str(REPO / "scripts" / "listen.py"), "--list-devices", "--json"],
                             env=pulse, capture_output=True, text=True, timeout=60)
    assert devices.returncode == 0, devices.stderr
    names = [d["name"] for d in json.loads(devices.stdout)]
    assert "pulse" in names, f"PortAudio does not see PulseAudio through ALSA (libasound2-plugins?): {names}"

    sid = world.db_ids[1]
    song = world.songs[sid]
    clip = tmp_path / "played.wav"
    sf.write(clip, resample(song[3 * 8000:15 * 8000], 8000, 44100), 44100)  # 12 s from 3 s into the song

    listener = player = None
    try:
        err_path = tmp_path / "listener.stderr"
        with open(err_path, "w") as err:  # a file, not a pipe nobody reads (a full pipe would block the child)
            listener = subprocess.Popen(
                [sys.executable, str(REPO / "scripts" / "listen.py"), "--results", str(world.results), "--device",
                 "pulse", "--json", "--search-device", "cpu"],
                env={**pulse, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE, stderr=err, text=True)
        out = LineReader(listener.stdout)
        started = out.wait_for(lambda o: o["type"] == "message" and o["text"].startswith("Listening to"), 60)
        assert started is not None, f"no start message; stderr:\n{err_path.read_text()[-3000:]}"
        assert "pulse" in started["text"]
        # The monitor of the idle sink delivers silence first: the listener must be deciding before the music.
        assert out.wait_for(lambda o: o["type"] == "decision", 30) is not None
        player = subprocess.Popen([PAPLAY, f"--device={SINK}", str(clip)], env=pulse)
        match = out.wait_for(lambda o: o["type"] == "decision" and o["event"] == "match", 40)
        assert match is not None, "no match declared while the song played:\n" + "".join(out.lines[-10:])
        assert match["song_id"] == sid
        # Its offset: the clip starts 3 s into the song; the stream started earlier (silence), so compare positions.
        os.kill(listener.pid, signal.SIGINT)  # Ctrl-C: a clean exit with a summary
        out.rest()
        try:
            rc = listener.wait(30)
        except subprocess.TimeoutExpired:
            pytest.fail("the listener did not exit after Ctrl-C; last output:\n" + "".join(out.lines[-3:]) +
                        f"\nstderr:\n{err_path.read_text()[-3000:]}")
        assert rc == 0, err_path.read_text()[-3000:]
    finally:
        _stop(player)
        _stop(listener, signal.SIGKILL)
    summary = json.loads(out.lines[-1])
    assert summary["type"] == "summary" and summary["device"] == "pulse"
    assert [h["song_id"] for h in summary["heard"]] == [sid]
    heard = summary["heard"][0]
    # The clip starts 3 s into the song. The first segment heard is the first that overlaps the music, which starts
    # up to a segment (1 s) before it, and the alignment is read to the hop (0.5 s): seen at 2.0 and 2.5.
    assert 3.0 - 1.0 - 0.5 <= heard["song_start_s"] <= 15.0 and heard["song_end_s"] > heard["song_start_s"]
    assert summary["overflows"] >= 0 and summary["decisions"] > 0 and np.isfinite(summary["compute_ms_p50"])
