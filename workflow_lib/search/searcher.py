"""Song and offset search of query audio: audio -> segment fingerprints -> ranked candidate songs
(``search.ranking``) -> the answer (``answers.Match``).

The best candidate's statistic (``threshold.decision_statistic``) is compared with a threshold calibrated on
out-of-database queries (``evaluation.calibration``). Queries of 3 s or more are also searched whitened
(``whiten.py``: a resonant space's ringing taken out) and the answer is the view the no-match rule trusts more, held
to the thresholds calibrated for that pick.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from workflow_lib import SAMPLE_RATE, SEGMENT_SAMPLES
from workflow_lib.audio.segments import QUERY_LEVEL_DBFS, QUERY_SILENCE_DBFS, frame, segment_levels_db
from workflow_lib.common.layout import ResultsLayout, is_bundled
from workflow_lib.database.other_music import is_other_music
from workflow_lib.search.answers import BestGuess, Match, SearchResult
from workflow_lib.search.ranking import MODES, Database, search_embeddings
from workflow_lib.search.threshold import Calibration, decision_statistic
from workflow_lib.search.whiten import WhitenedView

if TYPE_CHECKING:  # pandas and the catalogue module load when a catalogue is read
    import pandas as pd

    from workflow_lib.database.catalogue import TrackNames

log = logging.getLogger(__name__)

# Queries shorter than this are refused; between it and 1 s they are zero-padded to one segment.
MIN_QUERY_SAMPLES = SEGMENT_SAMPLES // 2
# A query whose answer as it is already reaches what only this share of unknown-song queries reach with the better of
# both views is not whitened (``Searcher.settled``): most matches, at about half the fingerprinting time
# (bench/README.md, "A settled answer needs no second view").
SETTLED_FPR = 0.001


def _pad_query(audio: np.ndarray) -> np.ndarray:
    """Queries between half a segment and one segment are zero-padded to one segment; shorter ones refused."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"query audio must be 1-D mono, got shape {audio.shape}")
    if len(audio) < MIN_QUERY_SAMPLES:
        raise ValueError(f"query too short: {len(audio) / SAMPLE_RATE:.2f} s (at least "
                         f"{MIN_QUERY_SAMPLES / SAMPLE_RATE:.1f} s needed)")
    if len(audio) < SEGMENT_SAMPLES:
        audio = np.pad(audio, (0, SEGMENT_SAMPLES - len(audio)))
    return audio


def loudest_second_dbfs(audio_8k: np.ndarray) -> float | None:
    """The level of a query's loudest second as its silence gate measures it (None for digital silence): what a
    "no match (silence)" answer heard."""
    loudest = float(np.max(segment_levels_db(frame(_pad_query(audio_8k))), initial=-np.inf))
    return round(loudest, 1) if np.isfinite(loudest) else None


class Searcher:
    """Model + fingerprint database + catalogue + no-match calibration: ``identify(audio_8k) -> Match``.

    Build it with ``Searcher.from_results("results")`` (or ``from_paths``); the pieces can also be passed directly
    (tests, the listener).
    """

    def __init__(self, fingerprinter, db: Database,
                 catalogue: dict[str, tuple[str | None, str | None]] | None = None,
                 calibration: Calibration | None = None, top_k: int = 20, max_candidates: int = 200,
                 mode: str = "sequence", batch_size: int = 64, device: str = "auto",
                 fallback_threshold: float = 0.5, n_results: int = 10,
                 whitened_view: WhitenedView | None = WhitenedView(), tracks: TrackNames | None = None,
                 song_paths: dict[str, str] | None = None):
        from workflow_lib.database.catalogue import TrackNames
        from workflow_lib.model.embed import resolve_device

        if mode not in MODES:
            raise ValueError(f"unknown search mode {mode!r} (choose from {MODES})")
        self.device = resolve_device(device)
        self.fingerprinter = fingerprinter.to(self.device).eval()
        self.db = db
        self.catalogue = catalogue or {}
        # the tracks of album images (``database.catalogue.TrackNames``): the commands name answers by track
        self.tracks = tracks if tracks is not None else TrackNames({})
        # song_id -> the file it was fingerprinted from (the catalogue's path): the commands' answers name it
        self.song_paths = song_paths or {}
        self.calibration = calibration
        self.top_k, self.max_candidates, self.mode = top_k, max_candidates, mode
        self.batch_size, self.n_results = batch_size, n_results
        self.fallback_threshold = fallback_threshold
        self.whitened_view = whitened_view or WhitenedView(order=0)
        made = WhitenedView.recorded((calibration.meta.get("whitened_view") if calibration is not None else None) or {})
        if calibration is not None and calibration.two_views is not None and made \
                and made != self.whitened_view.to_dict():
            log.warning("the whitened view is set up as %s, but the no-match threshold was calibrated with %s: "
                        "queries are searched as they are until it is recalibrated (run `nafp index` again on the "
                        "same folders, or the workflow's calibrate rule)", self.whitened_view.to_dict(), made)
            self.calibration = replace(calibration, two_views=None)

    # -- construction -------------------------------------------------------------------------------------------
    @classmethod
    def from_paths(cls, model_path: str | Path, index_dir: str | Path, catalogue_path: str | Path | None = None,
                   threshold_path: str | Path | None = None, nprobe: int | None = None,
                   **kwargs: Any) -> "Searcher":
        from workflow_lib.database.index import FingerprintDB
        from workflow_lib.model.model_file import load_fingerprinter, model_checksum

        from workflow_lib.model.embed import embedding_dim, resolve_device

        device = resolve_device(kwargs.get("device", "auto"))
        checksum = model_checksum(model_path)
        # Refuses an index built by another model (the fingerprints would not be comparable).
        db = FingerprintDB.load(index_dir, nprobe=nprobe, expect_model=checksum)
        fingerprinter = load_fingerprinter(model_path, device)
        dim = embedding_dim(fingerprinter, device)
        if dim != db.dim:
            raise ValueError(f"{model_path} makes {dim}-d fingerprints but {index_dir} holds {db.dim}-d ones: "
                             "rebuild the index with this model")
        from workflow_lib.database.catalogue import TrackNames, load_catalogue, song_paths

        table = load_catalogue(catalogue_path) if catalogue_path else None
        catalogue = catalogue_titles(table) if table is not None else None
        calibration = None
        if threshold_path is not None and not Path(threshold_path).exists():
            log.warning("%s not found: using the fixed fallback threshold %.2f on the match score; run the "
                        "'calibrate' rule for a threshold with a known false-positive rate", threshold_path,
                        kwargs.get("fallback_threshold", 0.5))
        elif threshold_path is not None:
            calibration = Calibration.load(threshold_path)
            cal_ck = calibration.meta.get("model_checksum")
            if cal_ck and cal_ck != checksum:
                raise ValueError(f"{threshold_path} was calibrated for model {cal_ck}, not {checksum}: "
                                 "rerun the 'calibrate' rule")
            used = {"top_k": kwargs.get("top_k", 20), "nprobe": nprobe,
                    "max_candidates": kwargs.get("max_candidates", 200)}
            differ = {k: (v, used[k]) for k, v in calibration.meta.get("search", {}).items()
                      if k in used and v != used[k]}
            if differ:
                log.warning("search settings differ from the calibration's (calibrated, now): %s; the "
                            "false-positive rate of the no-match rule may differ from its target", differ)
        kwargs["device"] = str(device)
        return cls(fingerprinter, db, catalogue, calibration, tracks=TrackNames.from_catalogue(table),
                   song_paths=song_paths(table) if table is not None else None, **kwargs)

    @classmethod
    def from_layout(cls, layout: ResultsLayout, **kwargs: Any) -> "Searcher":
        """A results folder's model (wherever ``model.source`` put it), index, catalogue and threshold."""
        if is_bundled(layout.model):
            from workflow_lib.model.model_file import verify_checksum

            verify_checksum(layout.model)
        return cls.from_paths(layout.model, layout.index, layout.catalogue, layout.threshold, **kwargs)

    @classmethod
    def from_results(cls, results: str | Path = "results", **kwargs: Any) -> "Searcher":
        """The standard layout written by the workflow, with the run's own model (see docs/ARCHITECTURE.md)."""
        return cls.from_layout(ResultsLayout(Path(results)), **kwargs)

    # -- use ----------------------------------------------------------------------------------------------------
    def embed(self, audio_8k: np.ndarray) -> np.ndarray:
        from workflow_lib.model.embed import embed_audio

        return embed_audio(self.fingerprinter, _pad_query(audio_8k), self.batch_size, self.device, QUERY_SILENCE_DBFS,
                           QUERY_LEVEL_DBFS)

    def search(self, emb: np.ndarray, mode: str | None = None,
               exclude_song: str | frozenset[str] | None = None) -> SearchResult:
        return search_embeddings(self.db, emb, self.top_k, mode or self.mode, self.max_candidates, self.n_results,
                                 exclude_song)

    def warm_up(self) -> None:
        """Do the first-call set-up now (the model's allocations; the predictor's scipy imports, a fifth of a second),
        so that no answer's time includes it."""
        self.embed(np.zeros(SAMPLE_RATE, dtype=np.float32))
        if self.whitened_view.enabled:
            self.whitened_view.make(np.random.default_rng(0).standard_normal(SEGMENT_SAMPLES).astype(np.float32))

    def embed_views(self, audio_8k: np.ndarray, whitened: bool = True,
                    timings: dict[str, float] | None = None) -> list[np.ndarray]:
        """Fingerprints of the query as it is and, when ``whitened`` and the whitened view applies to its length,
        of the query whitened (``WhitenedView.make``: gated, then whitened). ``timings`` (when given) gains the
        milliseconds spent."""
        t = timings if timings is not None else {}
        audio = _pad_query(audio_8k)
        t0 = time.perf_counter()
        embs = [self.embed(audio)]
        t["embed_ms"] = t.get("embed_ms", 0.0) + (time.perf_counter() - t0) * 1000.0
        if whitened and self.whitened_view.applies(len(audio)):
            embs.append(self.embed_whitened(audio, t))
        return embs

    def embed_whitened(self, audio_8k: np.ndarray, timings: dict[str, float] | None = None) -> np.ndarray:
        """Fingerprints of the query whitened (``embed_views``' second view); ``timings`` gains ``whiten_ms`` and
        the fingerprinting time in ``embed_ms``."""
        t = timings if timings is not None else {}
        t0 = time.perf_counter()
        audio = self.whitened_view.make(_pad_query(audio_8k))
        t1 = time.perf_counter()
        emb = self.embed(audio)
        t["whiten_ms"] = t.get("whiten_ms", 0.0) + (t1 - t0) * 1000.0
        t["embed_ms"] = t.get("embed_ms", 0.0) + (time.perf_counter() - t1) * 1000.0
        return emb

    def search_view(self, emb: np.ndarray, mode: str | None = None,
                    exclude_song: str | frozenset[str] | None = None, whitened: bool = False,
                    timings: dict[str, float] | None = None) -> SearchResult:
        """``search`` of one view's fingerprints, marked ``whitened`` as asked; ``timings`` gains ``search_ms``."""
        t0 = time.perf_counter()
        result = self.search(emb, mode, exclude_song)
        if timings is not None:
            timings["search_ms"] = timings.get("search_ms", 0.0) + (time.perf_counter() - t0) * 1000.0
        return replace(result, whitened=True) if whitened else result

    def search_views(self, embs: list[np.ndarray], mode: str | None = None,
                     exclude_song: str | frozenset[str] | None = None,
                     timings: dict[str, float] | None = None) -> list[SearchResult]:
        """Search each view's fingerprints (``embed_views``; the whitened view's result has ``whitened`` set). A
        query the silence gate empties is not searched whitened: silence stays silence."""
        out = [self.search_view(embs[0], mode, exclude_song, False, timings)]
        if not out[0].silent:
            out += [self.search_view(e, mode, exclude_song, True, timings) for e in embs[1:]]
        return out

    def pick_view(self, results: list[SearchResult]) -> SearchResult:
        """The view with the larger decision statistic (the first on ties), marked with how many were searched."""
        if len(results) == 1:
            return results[0]
        stats = [self.decision(r) for r in results]
        return replace(results[int(np.argmax(stats))], views=len(results))

    def two_views(self, n_samples: int, mode: str | None = None) -> bool:
        """Whether ``search_audio`` searches a query of ``n_samples`` in both views: in ``sequence`` mode (the one
        the calibrate rule searches its null queries in), when the whitened view applies to its length and the
        calibration holds thresholds for that pick (otherwise its false-positive rate would not be known). A
        ``vote`` answer ranks songs by votes, so its runner-up can score far below the winner on a whitened query of
        nothing known: that mode keeps one view."""
        return ((mode or self.mode) == "sequence" and self.calibration is not None
                and self.calibration.two_views is not None and self.whitened_view.applies(n_samples))

    def settled(self, result: SearchResult) -> bool:
        """Whether the query as it is (``result``) already answers for both views, so the whitened view need not be
        made: its decision statistic reaches the value that only ``SETTLED_FPR`` of the calibration's unknown-song
        queries reach with the better of the two views (and the two-view threshold). The better of two can only be
        higher, so such a query is accepted either way; what the whitened view could still change is which song is
        named, and only if a second song led its runner-up by as much, which unknown songs almost never do."""
        if self.calibration is None or self.calibration.two_views is None or not result.candidates:
            return False
        both = self.calibration.two_views
        bar = max(both.upper_point(result.n_segments, SETTLED_FPR), both.threshold(result.n_segments))
        return self.decision(result) >= bar

    def answer_views(self, plain: SearchResult, whitened: Callable[[], SearchResult] | None) -> SearchResult:
        """The answer from the query as it is (``plain``) and, when ``whitened`` is given (``two_views``), its
        whitened view's result, asked for only when ``plain`` is neither silent nor ``settled`` (a settled answer
        is marked ``views`` = 2: it is held to the two-view rule it already passes)."""
        if whitened is None or plain.silent:
            return plain
        if self.settled(plain):
            return replace(plain, views=2)
        return self.pick_view([plain, whitened()])

    def search_audio(self, audio_8k: np.ndarray, mode: str | None = None,
                     exclude_song: str | frozenset[str] | None = None,
                     timings: dict[str, float] | None = None) -> SearchResult:
        """Search 8 kHz query audio: as it is and, where ``two_views`` says so and the first answer is not already
        ``settled``, also whitened, keeping the view with the larger decision statistic (``views`` = 2 on the
        result)."""
        audio = _pad_query(audio_8k)
        plain = self.search_view(self.embed_views(audio, False, timings)[0], mode, exclude_song, False, timings)

        def whitened() -> SearchResult:
            return self.search_view(self.embed_whitened(audio, timings), mode, exclude_song, True, timings)

        return self.answer_views(plain, whitened if self.two_views(len(audio), mode) else None)

    def threshold(self, n_segments: int, views: int = 1) -> float:
        return self.calibration.for_views(views).threshold(n_segments) if self.calibration \
            else self.fallback_threshold

    @property
    def statistic(self) -> str:
        return self.calibration.statistic if self.calibration is not None else "score"

    def decision(self, result: SearchResult) -> float:
        """The no-match rule's statistic for this result (``calibrate.decision_statistic``); -inf when the best
        candidate is other music (``database.other_music``: never an answer)."""
        if result.other_music_leads:
            return float("-inf")
        return decision_statistic([c.score for c in result.candidates], self.statistic)

    def decide(self, result: SearchResult, seconds_taken: float = 0.0,
               timings: dict[str, float] | None = None) -> Match:
        """Turn ranked candidates into an answer with the no-match rule applied."""
        best = result.best
        thr = self.threshold(result.n_segments, result.views)
        if best is None or result.other_music_leads:  # (other music found: no song of the collection plays)
            reason = "other music" if best is not None else "silence" if result.silent else "no candidates"
            return Match(None, None, None, None, 0.0, False, result.n_segments, seconds_taken, result.mode,
                         float("nan"), thr, timings or {}, float("nan"), None, reason, result.views, result.whitened)
        stat = self.decision(result)
        if self.calibration is not None:
            conf = self.calibration.for_views(result.views).confidence(stat, result.n_segments)
        else:  # uncalibrated: the raw score is the only honest number there is
            conf = float(np.clip(best.score, 0.0, 1.0))
        ranked, copies = (tuple(BestGuess(c.song_id, *self.catalogue.get(c.song_id, (None, None)), c.offset_s,
                                          c.score) for c in found if not is_other_music(c.song_id))
                          for found in (result.candidates, result.copies))
        guess = ranked[0]
        if stat >= thr:
            return Match(best.song_id, guess.title, guess.artist, best.offset_s, conf, True, result.n_segments,
                         seconds_taken, result.mode, best.score, thr, timings or {}, stat, guess, None, result.views,
                         result.whitened, ranked, copies)
        return Match(None, None, None, None, conf, False, result.n_segments, seconds_taken, result.mode,
                     best.score, thr, timings or {}, stat, guess, "below threshold", result.views, result.whitened,
                     ranked, copies)

    def identify_embeddings(self, emb: np.ndarray, mode: str | None = None) -> Match:
        """Answer for ready ``(J, D)`` fingerprints, e.g. the listener's cached ones of the last few seconds."""
        t0 = time.perf_counter()
        result = self.search(emb, mode)
        dt = time.perf_counter() - t0
        return self.decide(result, dt, {"search_ms": dt * 1000.0})

    def identify_detailed(self, audio_8k: np.ndarray, mode: str | None = None) -> tuple[Match, SearchResult]:
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        result = self.search_audio(audio_8k, mode, timings=timings)
        return self.decide(result, time.perf_counter() - t0, timings), result

    def identify(self, audio_8k: np.ndarray, mode: str | None = None) -> Match:
        """8 kHz mono query -> best song, offset and confidence (``is_match`` False below the threshold)."""
        return self.identify_detailed(audio_8k, mode)[0]


def searcher_kwargs(search_cfg: dict) -> dict:
    """``Searcher.from_paths`` keyword arguments from the ``search:`` config section."""
    keys = ("top_k", "nprobe", "max_candidates", "batch_size", "fallback_threshold", "device", "mode")
    kw = {k: search_cfg[k] for k in keys if k in search_cfg}
    if "whitened_view" in search_cfg:
        kw["whitened_view"] = WhitenedView.from_config(search_cfg["whitened_view"])
    return kw


def catalogue_titles(table: pd.DataFrame) -> dict[str, tuple[str | None, str | None]]:
    """song_id -> (title, artist) of a catalogue (``database.catalogue.load_catalogue``; empty fields become None):
    what an answer shows."""
    return {str(s): (str(t) if t else None, str(a) if a else None)
            for s, t, a in zip(table["song_id"], table["title"], table["artist"])}
