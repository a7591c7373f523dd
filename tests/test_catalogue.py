"""Song catalogue: tags first, else names from the file name; the rule's table; command-line additions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.db_helpers import song_audio, write_fingerprint_file
from workflow_lib.audio.files import write_audio
from workflow_lib.database.catalogue import (added_catalogue_rows, catalogue_entry, load_catalogue, names_from_filename,
                                    read_tags, upsert_catalogue, write_catalogue)
from workflow_lib.database.fingerprint_file import ShardMeta


@pytest.mark.parametrize("name, expected", [
    ("Queen - Bohemian Rhapsody.mp3", ("Bohemian Rhapsody", "Queen")),
    ("01 - Hello World.flac", ("Hello World", "")),
    ("03. my_song.ogg", ("my song", "")),
    ("derived__muldjord__armygeddon.mp3", ("armygeddon", "muldjord")),
    ("nexuiz-music__sixtyfour_.mp3", ("sixtyfour", "nexuiz-music")),
    ("2001.wav", ("2001", "")),
    ("plain.wav", ("plain", "")),
])
def test_names_from_the_file_name(name, expected):
    assert names_from_filename(f"/music/x/{name}") == expected


def test_tags_win_over_the_file_name(tmp_path):
    tagged = tmp_path / "Wrong Artist - wrong title.flac"
    write_audio(tagged, song_audio(1.0, 0), tags={"title": "Real Title", "artist": "Real Artist"})
    assert read_tags(tagged) == ("Real Title", "Real Artist")
    assert catalogue_entry("id1", tagged) == {"song_id": "id1", "title": "Real Title", "artist": "Real Artist",
                                              "path": str(tagged), "tracks": None}  # one song, not an album image
    untagged = tmp_path / "Some Band - Some Song.wav"
    write_audio(untagged, song_audio(1.0, 1))
    assert read_tags(untagged) == ("", "")
    assert catalogue_entry("id2", untagged)["title"] == "Some Song"
    garbage = tmp_path / "Artist - Broken.mp3"
    garbage.write_bytes(b"\x00" * 100)
    assert catalogue_entry("id3", garbage)["artist"] == "Artist"  # unreadable tags fall back, never fail


def test_catalogue_rule_covers_every_song_and_command_line_additions(tmp_path):
    a = tmp_path / "A - One.wav"
    b = tmp_path / "two.flac"
    write_audio(a, song_audio(1.0, 0))
    write_audio(b, song_audio(1.0, 1), tags={"title": "Two", "artist": "B"})
    songs = tmp_path / "songs.parquet"
    pd.DataFrame({"song_id": ["a", "b"], "path": [str(a), str(b)], "duration_s": [1.0, 1.0],
                  "collection": "music"}).to_parquet(songs)
    added = write_fingerprint_file(tmp_path / "added.parquet", {"c": np.ones((2, 4), np.float32) / 2})
    # Catalogue rows stored in the metadata the way scripts/db.py add does it.
    import pyarrow.parquet as pq

    t = pq.read_table(added)
    meta = ShardMeta.from_schema(t.schema, added)
    meta.extra = {"catalogue": [{"song_id": "c", "title": "Three", "artist": "C", "path": "/x/c.wav"},
                                {"song_id": "skipped", "title": "?", "artist": "", "path": "/x/s.wav"}]}
    pq.write_table(t.replace_schema_metadata(meta.to_metadata()), added)

    out = tmp_path / "catalogue.parquet"
    write_catalogue(songs, out, extra=[added_catalogue_rows([added])])
    cat = load_catalogue(out)
    assert list(cat.columns) == ["song_id", "title", "artist", "path", "tracks"]
    assert cat.loc["a", ["title", "artist"]].tolist() == ["One", "A"]
    assert cat.loc["b", ["title", "artist"]].tolist() == ["Two", "B"]
    assert cat.loc["c", "title"] == "Three" and "skipped" not in cat.index  # only songs actually added

    upsert_catalogue(out, pd.DataFrame([{"song_id": "a", "title": "New", "artist": "Z", "path": str(a)}]))
    cat = load_catalogue(out)
    assert len(cat) == 3 and cat.loc["a", "title"] == "New"


def test_missing_or_malformed_catalogue_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.parquet"):
        load_catalogue(tmp_path / "nothing.parquet")
    bad = tmp_path / "bad.parquet"
    pd.DataFrame({"song_id": ["a"]}).to_parquet(bad)
    with pytest.raises(ValueError, match="lacks columns"):
        load_catalogue(bad)
