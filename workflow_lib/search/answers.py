"""What a search returns: its ranked candidate songs (``Candidate``, ``SearchResult``; ``search.ranking``) and the
answer the no-match rule makes of them (``Match``, holding the strongest candidate as its ``BestGuess``;
``search.searcher``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from workflow_lib import HOP_S
from workflow_lib.database.other_music import is_other_music


@dataclass(frozen=True)
class Candidate:
    song_id: str
    start_segment: int
    score: float  # mean aligned cosine similarity over the query's segments
    support: float  # sequence: summed neighbour similarity; vote: number of votes
    votes: int = 0  # query segments with the aligned database segment (+-1 hop) among their nearest neighbours
    shift: float = 0.0  # where between the neighbouring alignments the score peaks, in hops (``subhop``)

    @property
    def offset_s(self) -> float:
        """Song position of the query's start (s): the aligned segment's, moved to the score's peak."""
        return (self.start_segment + self.shift) * HOP_S


@dataclass
class SearchResult:
    """Ranked candidates (best first; at most one per song) for one query."""

    mode: str
    n_segments: int
    candidates: list[Candidate]
    silent: bool = False  # every query segment was below the silence gate: nothing was searched
    # 2: held to the better-of-two-views rule (searched whitened too, unless settled as it is: ``Searcher.settled``)
    views: int = 1
    whitened: bool = False  # these candidates are the whitened view's
    # songs that hold the best candidate's music at their alignments (one recording indexed from two files), best
    # first: left out of ``candidates`` (``without_copies``), so the no-match rule reads the best other music
    copies: list[Candidate] = field(default_factory=list)

    @property
    def best(self) -> Candidate | None:
        return self.candidates[0] if self.candidates else None

    @property
    def copy_ids(self) -> frozenset[str]:
        return frozenset(c.song_id for c in self.copies)

    @property
    def other_music_leads(self) -> bool:
        """The best candidate is the index's other music (``database.other_music``): no match, whatever its scores."""
        return self.best is not None and is_other_music(self.best.song_id)


@dataclass(frozen=True)
class BestGuess:
    """A candidate song of a search, with its offset and match score: the strongest is the answer's best guess,
    whether or not the no-match rule accepted it."""

    song_id: str
    title: str | None
    artist: str | None
    offset_s: float
    score: float


@dataclass(frozen=True)
class Match:
    """The answer for one query.

    ``song_id``, ``title``, ``artist`` and ``offset_s`` are set only when the no-match rule accepts the best
    candidate (``is_match``); otherwise they are None and ``reason`` says why (``silence``, ``no candidates``,
    ``below threshold``, ``other music``: the index's other music, ``database.other_music``, leads). ``best_guess``
    holds the strongest candidate of the collection, if any (none for ``other music``). ``confidence`` has one
    meaning everywhere (query, listen, scan): the share of calibration queries of unknown songs of this length
    whose decision statistic is lower than this answer's, i.e. 1 - its empirical p-value under "the song is not in
    the database"; 0.99 means 1 unknown-song query in 100 scores as high (among queries searched in as many
    ``views``; an answer settled as it is, ``Searcher.settled``, is scored on that view: about 0.999 or more).
    ``score`` is the best candidate's match score (mean aligned cosine similarity), ``decision`` the
    calibrated statistic compared with ``threshold``.
    """

    song_id: str | None
    title: str | None
    artist: str | None
    offset_s: float | None
    confidence: float
    is_match: bool
    n_segments: int
    seconds_taken: float
    mode: str
    score: float = float("nan")
    threshold: float = float("nan")
    timings: dict[str, float] = field(default_factory=dict)
    decision: float = float("nan")
    best_guess: BestGuess | None = None
    reason: str | None = None
    views: int = 1  # 2: the better-of-two-views rule (``SearchResult.views``); the threshold is the one for it
    whitened: bool = False  # the answer came from the whitened view
    # the answering view's candidate songs, best first (the best guess first of them; ``Searcher.n_results`` at most)
    candidates: tuple[BestGuess, ...] = ()
    # other songs of the database that hold the best guess's recording (``SearchResult.copies``), best first
    copies: tuple[BestGuess, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
