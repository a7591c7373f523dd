"""Other music in the index: songs no collection of a user holds, indexed beside it and never given as an answer.

A small collection leaves the no-match rule little to tell its songs from other music by: a clip of other music
finds its nearest collection song at a lead that the calibration's few songs seldom showed, and with the rule set
for 1 %, 3-6 % of clean 1-3 s clips of other music were answered with a song (bench/README.md, "Other music in the
index"). Indexed beside the collection, other music is what most such clips find first, and an answer naming it is
no match (reason ``other music``), while a clip of a collection song still finds its own song first.

The bundled models ship the fingerprints of the songs their bank of null queries was cut from (``null_bank``):
``models/<model>.other.parquet``, a fingerprint file whose song ids carry ``PREFIX``. ``nafp index`` adds it to the
index (``index.other_music``); the calibration then searches the bank's queries in the same index, each without its
own song (leave-one-song-out). A song of the collection that is one of them (one recording, two files) is answered
as the collection's own: ``search.ranking.without_copies`` puts the collection's copy first.
"""

from __future__ import annotations

PREFIX = "other-music:"


def is_other_music(song_id: object) -> bool:
    """Whether a song id of the index is other music (never an answer, never listed)."""
    return str(song_id).startswith(PREFIX)


def other_music_id(title: str) -> str:
    """The index's song id of the bank song titled ``title`` (``null_bank``: ``meta['songs'][i]['title']``)."""
    return PREFIX + title


def count_other_music(song_ids) -> int:
    """How many of ``song_ids`` are other music."""
    return sum(1 for s in song_ids if is_other_music(s))


def collection_songs(sidecar: dict) -> int:
    """The songs of the collection an index holds, from its sidecar (``index.read_sidecar``): its songs but the
    other music."""
    return int(sidecar.get("n_songs", 0)) - int(sidecar.get("other_music_songs", 0))
