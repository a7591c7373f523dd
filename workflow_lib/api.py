"""Search a database from Python: the answers ``nafp query`` and ``nafp scan`` print, from a script or a notebook.

    from workflow_lib.api import Database

    db = Database.open("mydb")                      # a folder made by `nafp index` (or the workflow)
    answer = db.query("clip.m4a")                   # the object `nafp query --json` prints for the file
    answer = db.query(samples, sample_rate=44100)   # audio in memory: (n,), (n, channels) or (channels, n)
    rows = db.scan("radio_show.mp3")                # the objects `nafp scan --json` prints: songs and gaps
    stream = db.listen(sample_rate=48000)           # the listener: stream.push(block) -> its decisions
    db.songs                                        # what `nafp db list --csv` gives, as a DataFrame
    db.info                                         # what `nafp db info --json` prints
    db.add("new_album/"); db.remove("old_album/")   # `nafp db add` and `nafp db remove`

The folder is searched with the settings it was built with (its ``config.yaml``; ``config`` merges a file over
them, and the keyword arguments of ``Database.open`` override both), and the commands answer through the same
functions as this module (``answer``, ``scan_recording``), so a script and the command line cannot disagree.
Audio that cannot be read raises ``AudioDecodeError`` (a RuntimeError) or ValueError; a folder that cannot be
searched raises ``SetupError``. A database holds its model and index in memory: open it once, query it many times.
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from workflow_lib import SAMPLE_RATE, SEGMENT_S
from workflow_lib.common.layout import missing_results

# The listen section's keys that belong to the commands (where and on how many threads), not to the decision.
LISTEN_COMMAND_KEYS = ("device", "threads")


class SetupError(RuntimeError):
    """Nothing can be answered (missing results folder, model or index; bad settings)."""


def open_searcher(results: str | Path, config: str | Path | None = None, overrides: dict | None = None):
    """The ``Searcher`` of ``results`` and the settings it was built with: the model, index, catalogue and threshold
    of that folder, searched with its ``config.yaml`` (``config`` merged on top; ``overrides``, the ``search:``
    keys, win when not None). Raises ``SetupError``."""
    from workflow_lib.common.config import ConfigError, run_config
    from workflow_lib.common.layout import ResultsLayout
    from workflow_lib.search.searcher import Searcher, searcher_kwargs

    results = Path(results)
    if problem := missing_results(results):
        raise SetupError(problem)
    try:
        cfg, _ = run_config(results, config)
    except ConfigError as exc:
        raise SetupError(str(exc)) from None
    kw = searcher_kwargs(cfg.get("search", {}))
    kw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return Searcher.from_layout(ResultsLayout.of(results, cfg), **kw), cfg
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        raise SetupError(f"cannot load the database from {results}: {exc}") from None


def listen_config(cfg: dict):
    """The listening settings a results folder was built with (the scan's window, thresholds, hysteresis)."""
    from workflow_lib.listener.settings import ListenConfig

    return ListenConfig.from_dict({k: v for k, v in (cfg.get("listen") or {}).items()
                                   if k not in LISTEN_COMMAND_KEYS})


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


def _guess(g) -> dict:
    """A candidate song (``search.answers.BestGuess``) as the answer rows print it."""
    return {"song_id": g.song_id, "title": g.title, "artist": g.artist, "offset_s": _ms(g.offset_s),
            "score": round(g.score, 4), "track": None, "track_start_s": None, "album": None}


def row_for(path: str, match, error: str | None, duration_s: float | None, candidates: int = 0) -> dict:
    """The answer to one file as ``nafp query --json`` prints it: the match's fields, or the file's error;
    ``candidates`` > 0 also lists that many of the answer's candidate songs, best first (else None). ``copies``
    lists the other songs that hold the best guess's recording (one recording indexed from two files)."""
    if error is not None:
        return {"file": path, "error": error}
    g = match.best_guess
    return {"file": path, "match": match.is_match, "song_id": match.song_id, "title": match.title,
            "artist": match.artist, "offset_s": _ms(match.offset_s), "confidence": round(match.confidence, 4),
            "reason": match.reason, "best_guess": None if g is None else _guess(g),
            "candidates": [_guess(c) for c in match.candidates[:candidates]] if candidates > 0 else None,
            "copies": [_guess(c) for c in match.copies],
            "score": round(match.score, 4) if math.isfinite(match.score) else None,
            "decision": round(match.decision, 4) if math.isfinite(match.decision) else None,
            "threshold": round(match.threshold, 4), "mode": match.mode, "views": match.views,
            "whitened": match.whitened, "query_s": duration_s,
            "seconds": round(match.seconds_taken, 4), "file_start_s": None, "file_end_s": None, "occurrences": None,
            "track": None, "track_start_s": None, "album": None, "level_dbfs": None}


def with_song_path(record: dict, song_paths) -> dict:
    """``record`` (an answer, its best guess, a scan row, a listener decision or a heard song, as the commands print
    them) with ``song_path``: the file its song was fingerprinted from, as the catalogue records it (None without a
    song), so a script can open what was named."""
    song = record.get("song_id")
    return {**record, "song_path": song_paths.get(song) if song else None}


def summary_with_song_paths(summary: dict, song_paths) -> dict:
    """A listener summary (``ListenSummary.to_dict``) whose heard songs name their files (``with_song_path``)."""
    return {**summary, "heard": [with_song_path(h, song_paths) for h in summary["heard"]]}


def named_by_track(answer: dict, names) -> dict:
    """``answer`` (a row, or its ``best_guess``) named by the track playing at its offset when its song is an album
    image (``listener.tracks.track_fields``)."""
    from workflow_lib.listener.tracks import track_fields

    fields = track_fields(names, answer["song_id"], answer["offset_s"], answer["title"], answer["artist"])
    return answer if fields is None else {**answer, **fields, "track_start_s": round(fields["track_start_s"], 3)}


def _each_named(row: dict, name) -> dict:
    """``row`` (an answer) with ``name`` applied to it, its best guess, its candidates and its copies."""
    guess, ranked = row["best_guess"], row.get("candidates")
    return {**name(row), "best_guess": name(guess) if guess else None,
            "candidates": None if ranked is None else [name(c) for c in ranked],
            "copies": [name(c) for c in row["copies"]]}


def with_tracks(row: dict, names) -> dict:
    """A row's answer, best guess and candidates named by their tracks (``named_by_track``)."""
    if "error" in row or not names:
        return row
    return _each_named(row, lambda x: named_by_track(x, names))


def answer_file(searcher, audio, listen, name: str = "", whitened: bool | None = None):
    """The whole file's answer (``Match``) and, for a file longer than twice the listening window, which may hold
    the song in only part of it, its scan (``listener.scan.ScanResult``; None for a shorter file). The scan hears
    the file in the views its whole-file answer was searched in (``whitened`` None: as ``Searcher.two_views`` says
    for its length; a file query is worth the second pass a long recording's scan is not asked to make)."""
    match = searcher.identify(audio)
    if len(audio) <= 2 * listen.window_s * SAMPLE_RATE:
        return match, None
    from workflow_lib.listener.scan import scan_chunks

    if whitened is None:
        whitened = searcher.two_views(len(audio))
    return match, scan_chunks(searcher, [audio], listen, name=name, whitened=whitened)


def with_occurrence(row: dict, scan) -> dict:
    """The answer for a file whose scan found occurrences: the longest one, with its time range in the file (the
    whole file's copies only if they are of that song: another song's are not its copies)."""
    best = scan.best
    same_song = row["best_guess"] is not None and row["best_guess"]["song_id"] == best.song_id
    return {**row, "match": True, "song_id": best.song_id, "title": best.title, "artist": best.artist,
            "copies": row["copies"] if same_song else [],
            "offset_s": round(best.song_start_s, 3), "confidence": round(best.confidence, 4), "reason": None,
            "file_start_s": round(best.start_s, 3), "file_end_s": round(best.end_s, 3),
            "occurrences": len(scan.occurrences), "views": scan.stats.get("views", 1), "whitened": best.whitened,
            "seconds": round(row["seconds"] + scan.compute_s, 4), "track": best.track,
            "track_start_s": None if best.track_start_s is None else round(best.track_start_s, 3),
            "album": best.album}


def answer(searcher, audio: np.ndarray, listen, name: str, candidates: int = 0) -> dict:
    """The answer ``nafp query`` gives for ``audio`` (8 kHz mono): the whole file's, or for a long file the longest
    occurrence its scan found; named by the track when the song is an album image. ``candidates``: how many of the
    whole file's candidate songs to list too."""
    from workflow_lib.listener.tracks import scan_by_tracks

    names = searcher.tracks
    match, scan = answer_file(searcher, audio, listen, name)
    row = with_tracks(row_for(name, match, None, round(len(audio) / SAMPLE_RATE, 3), candidates), names)
    if match.reason == "silence":  # how quiet it was, so a capture too quiet is told from an empty one
        from workflow_lib.search.searcher import loudest_second_dbfs

        row["level_dbfs"] = loudest_second_dbfs(audio)
    if scan is not None and scan.occurrences:
        row = with_occurrence(row, scan_by_tracks(scan, names))
    return _each_named(row, lambda x: with_song_path(x, searcher.song_paths))


def scan_recording(searcher, chunks: Iterable[np.ndarray], listen, name: str, min_duration_s: float = 0.0,
                   workers: int = 1, whitened: bool = False):
    """``nafp scan``'s result for a recording's consecutive 8 kHz chunks (``listener.scan.scan_chunks``), an album
    image played through cut into its tracks. Raises ValueError for a recording shorter than one segment (nothing
    to scan, not even a gap) and AudioDecodeError for one that cannot be read."""
    from workflow_lib.listener.scan import scan_chunks
    from workflow_lib.listener.tracks import scan_by_tracks

    result = scan_chunks(searcher, chunks, listen, name=name, min_duration_s=min_duration_s, workers=workers,
                         whitened=whitened)
    if result.duration_s < SEGMENT_S:  # a recording shorter than one segment has nothing to scan
        raise ValueError(f"{result.name}: too short to scan: {result.duration_s:.2f} s (at least "
                         f"{SEGMENT_S:g} s needed)")
    return scan_by_tracks(result, searcher.tracks)


def describe(layout) -> dict:
    """``nafp db info --json``: the database's counts, model, index, sizes and edit history
    (``database.edit.database_info``), whether it is calibrated, and the advice to recalibrate it when it has grown
    since (``recalibrate``, None when the threshold still fits) or was calibrated on too little music
    (``little_music``, None when it had enough); ``calibrated_on``: the other music it was calibrated on
    (``search.threshold.calibration_music``)."""
    from workflow_lib.database.edit import database_info
    from workflow_lib.search.threshold import calibration_music, little_music_advice, recalibration_advice

    info = database_info(layout)
    info["calibrated"] = layout.threshold.exists()
    info["calibrated_on"] = calibration_music(layout.threshold) if info["calibrated"] else None
    info["recalibrate"] = recalibration_advice(layout.threshold, info["songs"])
    info["little_music"] = little_music_advice(layout.threshold)
    return info


@contextmanager
def _threads_kept() -> Iterator[None]:
    """torch's and FAISS's thread counts as they were before (the stages set them for their work)."""
    import faiss
    import torch

    before = torch.get_num_threads(), faiss.omp_get_max_threads()
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        faiss.omp_set_num_threads(before[1])


class Database:
    """A searchable folder opened once (``open``), then asked as often as needed (``query``, ``scan``, ``listen``)
    and edited (``add``, ``remove``). The keywords named ``threads`` set torch's and FAISS's thread counts for that
    call only."""

    def __init__(self, results: Path, config_file: str | Path | None = None, overrides: dict | None = None):
        self.results = results
        self._config_file, self._overrides = config_file, dict(overrides or {})
        self._load()

    def _load(self) -> None:
        self.searcher, self.config = open_searcher(self.results, self._config_file, self._overrides)
        self.searcher.warm_up()  # first-call set-up: not part of the first answer's time
        self.listen_settings = listen_config(self.config)  # the scan's and the listener's

    @classmethod
    def open(cls, results: str | Path = "results", config: str | Path | None = None, *, device: str | None = None,
             mode: str | None = None, top_k: int | None = None, nprobe: int | None = None) -> "Database":
        """The database of ``results`` with its own settings; ``config`` (a file) and the keywords (as the
        commands' options of the same names) override them. Raises ``SetupError``."""
        return cls(Path(results), config, {"device": device, "mode": mode, "top_k": top_k, "nprobe": nprobe})

    def add(self, *paths: str | os.PathLike, replace: bool = False, threads: int = 1) -> dict:
        """``nafp db add``: fingerprint files (or every audio file below folders) into the database, then search
        it with them. Returns ``{"added": [song ids], "fingerprints", "file", "skipped": [{path, reason}]}``;
        a file that cannot be a song, or whose audio is already in the database, is skipped with its reason.
        The threshold stays as calibrated (``nafp db info`` says when the database has grown enough to rerun it)."""
        from workflow_lib.common.layout import ResultsLayout
        from workflow_lib.database.edit import add_files

        data = self.config.get("data", {})
        device = self._overrides.get("device") or "auto"
        with _threads_kept():
            result = add_files(ResultsLayout.of(self.results, self.config), paths, device=device, threads=threads,
                               batch_size=self.searcher.batch_size, replace=replace,
                               min_duration_s=data.get("min_duration_s", 3.0),
                               silence_dbfs=data.get("silence_dbfs", -60.0))
        self._load()
        return result

    def remove(self, *songs: str | os.PathLike, threads: int = 1) -> tuple[list[str], list[str]]:
        """``nafp db remove``: songs out of the database by id, file or folder (every song whose file was below it).
        Returns (the song ids removed, what was not found). They stay out when the folders are indexed again."""
        from workflow_lib.common.layout import ResultsLayout
        from workflow_lib.database.edit import remove_songs

        with _threads_kept():
            removed, missing = remove_songs(ResultsLayout.of(self.results, self.config), [str(s) for s in songs],
                                            threads=threads)
        self._load()
        return removed, missing

    def query(self, audio: str | os.PathLike | np.ndarray, sample_rate: int | None = None,
              name: str | None = None, candidates: int = 0) -> dict:
        """The answer to a file or to samples in memory (``sample_rate`` then required): the object ``nafp query
        --json`` prints (``file`` is ``name``, else the path, else "samples"). ``match`` says whether the no-match
        rule trusts it; the song fields are None when it does not, and ``best_guess`` holds the nearest song;
        ``candidates`` > 0 lists that many candidate songs, best first (``nafp query --candidates``)."""
        samples, label = self._audio(audio, sample_rate, name)
        return answer(self.searcher, samples, self.listen_settings, label, candidates)

    def scan(self, audio: str | os.PathLike | np.ndarray, sample_rate: int | None = None, *,
             min_duration_s: float = 0.0, whitened: bool = False, threads: int = 1,
             name: str | None = None) -> list[dict]:
        """Every occurrence and gap of a recording (a file, read chunk by chunk, or samples in memory): the objects
        ``nafp scan --json`` prints, in order. The keywords are the command's options of the same names."""
        from workflow_lib.audio.files import iter_audio
        from workflow_lib.listener.scan import fingerprint_workers, whitened_view

        if whitened:
            whitened_view(self.searcher)  # a clear error when the folder has no two-view thresholds
        if isinstance(audio, (str, os.PathLike)):
            self._no_rate(sample_rate)
            chunks, label = iter_audio(audio), name or str(audio)
        else:
            samples, label = self._audio(audio, sample_rate, name)
            chunks = [samples]
        with _threads_kept():
            workers = fingerprint_workers(threads, self.searcher.device)
            result = scan_recording(self.searcher, chunks, self.listen_settings, label, min_duration_s, workers,
                                    whitened)
        return [with_song_path(r, self.searcher.song_paths) for r in result.rows()]

    def listen(self, sample_rate: int, channels: int = 1) -> "Stream":
        """The live listener for audio pushed as it comes (a capture callback, a network stream): ``Stream``. At
        ``sample_rate`` Hz, in blocks of shape ``(n,)`` or ``(n, channels)``."""
        from workflow_lib.listener.views import listener_core

        if not (isinstance(channels, int) and channels >= 1):
            raise ValueError(f"channels must be a positive integer, got {channels!r}")
        return Stream(listener_core(self.searcher, self.listen_settings), sample_rate, channels, self.searcher.tracks,
                      self.searcher.song_paths)

    @property
    def songs(self):
        """The songs in the database as ``nafp db list --csv`` gives them (a pandas DataFrame indexed by
        ``song_id``): title, artist, duration_s, path, tracks (how many its cue sheet names; 0 for a song of its own).
        """
        from workflow_lib.common.layout import ResultsLayout
        from workflow_lib.database.edit import list_songs

        return list_songs(ResultsLayout.of(self.results, self.config)).set_index("song_id", drop=False)

    @property
    def info(self) -> dict:
        """What ``nafp db info --json`` prints: counts, model, index, sizes, edits, calibration (``describe``)."""
        from workflow_lib.common.layout import ResultsLayout

        return describe(ResultsLayout.of(self.results, self.config))

    @staticmethod
    def _no_rate(sample_rate: Any) -> None:
        if sample_rate is not None:
            raise ValueError("sample_rate is for samples in memory; a file's rate is read from the file")

    @classmethod
    def _audio(cls, audio, sample_rate: int | None, name: str | None) -> tuple[np.ndarray, str]:
        from workflow_lib.audio.files import load_audio, samples_to_model_audio

        if isinstance(audio, (str, os.PathLike)):
            cls._no_rate(sample_rate)
            return load_audio(audio), name or str(audio)
        if sample_rate is None:
            raise ValueError("samples in memory need their sample_rate (Hz)")
        label = name or "samples"
        return samples_to_model_audio(audio, sample_rate, label), label


class Stream:
    """``nafp listen``'s decisions for audio pushed block by block (``Database.listen``): ``push`` returns the
    decisions of the hops its block completed, one per 0.5 s of audio, as the objects of `nafp listen --json`'s
    decision lines (``state`` is "match" while a song is declared; ``event`` marks a match, a change and a loss);
    ``finish`` ends the stream and returns the summary (``heard``: every song declared, with its times). The audio
    reaches the listener in the capture's blocks (``listen.block_s``) whatever the sizes pushed, so the decisions
    are those of `nafp listen --input FILE --fast` for the same audio."""

    def __init__(self, core, sample_rate: int, channels: int, names=None, song_paths=None):
        import soxr

        from workflow_lib.audio.files import mono_samples

        mono_samples(np.zeros((1, channels), np.float32), sample_rate, "stream", channels)  # a bad rate, now
        self.core, self.sample_rate, self.channels, self.names = core, int(sample_rate), channels, names
        self.song_paths = song_paths or {}
        self._resampler = soxr.ResampleStream(self.sample_rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ") \
            if self.sample_rate != SAMPLE_RATE else None
        self._block = max(1, int(round(core.config.block_s * self.sample_rate)))
        self._pending = np.zeros(0, np.float32)  # at the input rate: less than a block
        self._finished = False

    def push(self, block: np.ndarray) -> list[dict]:
        """Decisions for the hops this block completes (none while the first second fills)."""
        from workflow_lib.audio.files import mono_samples

        if self._finished:
            raise ValueError("the stream is finished: open another with Database.listen")
        x = np.concatenate([self._pending, mono_samples(block, self.sample_rate, "stream block", self.channels)])
        whole = len(x) - len(x) % self._block
        self._pending = x[whole:]
        out = []
        for at in range(0, whole, self._block):
            out += self._decide(x[at:at + self._block])
        return out

    def finish(self) -> dict:
        """The rest of the audio decided, the stream ended; the summary of `nafp listen --json` (``heard``...)."""
        from workflow_lib.listener.tracks import summary_by_tracks

        if not self._finished:
            self._decide(self._pending, last=True)
            self.core.finish()
            self._finished = True
        return summary_with_song_paths(summary_by_tracks(self.core.summary(), self.names).to_dict(), self.song_paths)

    def _decide(self, block: np.ndarray, last: bool = False) -> list[dict]:
        """One capture block through the resampler into the listener: a decision when it completes a hop."""
        from workflow_lib.listener.tracks import decision_by_track

        x = self._resampler.resample_chunk(block, last=last) if self._resampler is not None else block
        d = self.core.push(x) if len(x) else None
        return [] if d is None else [with_song_path(decision_by_track(d, self.names).to_dict(), self.song_paths)]
