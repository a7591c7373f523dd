"""Albums kept as one file with a cue sheet: the sheet is found and read, and answers name the track playing."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest

from workflow_lib.data.cuesheet import CueSheets, Track, decode_cue, parse_cue, track_at
from workflow_lib.database.catalogue import TrackNames, build_catalogue

# As Exact Audio Copy writes one: remarks, an album performer, pregaps (INDEX 00), a track without a performer.
EAC_SHEET = '''REM GENRE Jazz
REM DATE 1999
PERFORMER "The Band"
TITLE "Live at the Café"
FILE "The Band - Live at the Café.wav" WAVE
  TRACK 01 AUDIO
    TITLE "Opening"
    PERFORMER "The Band"
    INDEX 01 00:00:00
  TRACK 02 AUDIO
    TITLE "Café au lait"
    PERFORMER "Guest Singer"
    INDEX 00 03:58:50
    INDEX 01 04:00:15
  TRACK 03 AUDIO
    TITLE "Encore"
    INDEX 01 07:30:00
'''


def test_a_ripper_sheet_gives_each_track_its_start_title_and_performer():
    files = parse_cue(EAC_SHEET)
    assert len(files) == 1 and files[0].name == "The Band - Live at the Café.wav"
    assert (files[0].album, files[0].performer) == ("Live at the Café", "The Band")
    assert files[0].tracks == [Track(1, 0.0, "Opening", "The Band"), Track(2, 240.2, "Café au lait", "Guest Singer"),
                               Track(3, 450.0, "Encore", "The Band")]  # 15 frames of 75 = 0.2 s; album performer


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "cp1252"])
def test_sheets_written_by_windows_and_unix_rippers_decode(encoding):
    assert parse_cue(decode_cue(EAC_SHEET.encode(encoding)))[0].tracks[1].title == "Café au lait"


def test_the_track_at_an_offset_is_the_last_to_start_before_it():
    tracks = [Track(1, 2.0, "a", ""), Track(2, 60.0, "b", "")]
    assert track_at(tracks, 1.0) is None  # a hidden pregap before the first track
    assert track_at(tracks, 2.0).number == 1 and track_at(tracks, 59.9).number == 1
    assert track_at(tracks, 60.0).number == 2 and track_at(tracks, 500.0).number == 2
    assert track_at([], 10.0) is None and track_at(tracks, None) is None


def test_a_sheet_is_found_beside_the_image_under_its_name_or_by_its_file_line(tmp_path):
    (tmp_path / "Live.flac").write_bytes(b"")
    (tmp_path / "Live.cue").write_text(EAC_SHEET)  # named after the image; FILE names the WAV it was ripped to
    assert [t.number for t in CueSheets().tracks(tmp_path / "Live.flac")] == [1, 2, 3]
    other = tmp_path / "other"
    other.mkdir()
    (other / "The Band - Live at the Café.ape").write_bytes(b"")
    (other / "rip log.cue").write_bytes(EAC_SHEET.encode("cp1252"))  # another name; its FILE line names the image
    assert len(CueSheets().tracks(other / "The Band - Live at the Café.ape")) == 3
    (other / "Unrelated.flac").write_bytes(b"")
    assert CueSheets().tracks(other / "Unrelated.flac") == []


def test_a_sheet_of_one_file_per_track_gives_no_album_tracks(tmp_path):
    """Tracks already in files of their own are songs of their own: their sheet names no image."""
    sheet = "".join(f'FILE "0{i} - Song {i}.flac" WAVE\n  TRACK 0{i} AUDIO\n    TITLE "Song {i}"\n'
                    f"    INDEX 01 00:00:00\n" for i in (1, 2))
    (tmp_path / "album.cue").write_text(sheet)
    for i in (1, 2):
        (tmp_path / f"0{i} - Song {i}.flac").write_bytes(b"")
        assert CueSheets().tracks(tmp_path / f"0{i} - Song {i}.flac") == []  # one track: nothing to name apart


def test_a_sheet_whose_times_do_not_rise_is_not_used(tmp_path, caplog):
    (tmp_path / "x.flac").write_bytes(b"")
    (tmp_path / "x.cue").write_text(EAC_SHEET.replace("INDEX 01 07:30:00", "INDEX 01 01:00:00"))
    with caplog.at_level(logging.WARNING):
        assert CueSheets().tracks(tmp_path / "x.flac") == []
    assert "do not rise" in caplog.text


def test_a_sheet_inside_the_file_tags_is_read(tmp_path):
    import mutagen

    from workflow_lib.audio.files import write_audio

    image = tmp_path / "image.flac"
    write_audio(image, np.zeros(8000, np.float32))
    tags = mutagen.File(image)
    tags["CUESHEET"] = EAC_SHEET
    tags.save()
    assert [t.title for t in CueSheets().tracks(image)] == ["Opening", "Café au lait", "Encore"]
    # the catalogue hands the tags it read for the title to the sheet finder: the same tracks, the file opened once
    from workflow_lib.database.catalogue import catalogue_entry

    row = catalogue_entry("s1", image)
    assert [t["title"] for t in json.loads(row["tracks"])] == ["Opening", "Café au lait", "Encore"]


def test_the_catalogue_keeps_an_image_tracks_and_names_them_by_offset(tmp_path):
    from workflow_lib.audio.files import write_audio

    image, single = tmp_path / "The Band - Live.flac", tmp_path / "The Band - Single.flac"
    for p in (image, single):
        write_audio(p, np.zeros(8000, np.float32))
    (tmp_path / "The Band - Live.cue").write_text(EAC_SHEET)
    table = build_catalogue(pd.DataFrame({"song_id": ["live", "single"], "path": [str(image), str(single)]}))
    assert pd.isna(table.loc[1, "tracks"])  # a file of one song
    # an image without tags is named by its sheet, not by its file name
    assert table.loc[0, ["title", "artist"]].tolist() == ["Live at the Café", "The Band"]
    assert table.loc[1, ["title", "artist"]].tolist() == ["Single", "The Band"]
    names = TrackNames.from_catalogue(table)
    assert names.at("live", 300.0).title == "Café au lait" and names.at("single", 300.0) is None
    assert names.bounds("live") == [0.0, 240.2, 450.0] and names.bounds("single") == []
    assert not TrackNames.from_catalogue(table.drop(columns="tracks"))  # a catalogue made before cue sheets


@pytest.fixture
def names():
    return TrackNames({"album": [Track(1, 0.0, "One", "A"), Track(2, 100.0, "Two", "")]})


def test_a_scan_of_an_album_played_through_is_a_row_per_track(names):
    from workflow_lib.listener.scan import Occurrence, ScanResult
    from workflow_lib.listener.tracks import scan_by_tracks

    occ = [Occurrence(10.0, 70.0, "album", "Live", "The Band", 80.0, 140.0, 0.9),
           Occurrence(80.0, 90.0, "single", "Single", "X", 5.0, 15.0, 0.8)]
    rows = scan_by_tracks(ScanResult("rec", 90.0, occ, [], 1.0), names).rows()
    assert [(r["title"], r["artist"], r["track"], r["album"]) for r in rows] == [
        ("One", "A", 1, "Live"), ("Two", "The Band", 2, "Live"), ("Single", "X", None, None)]
    assert [(r["start_s"], r["end_s"], r["song_start_s"], r["song_end_s"]) for r in rows[:2]] == [
        (10.0, 30.0, 80.0, 100.0), (30.0, 70.0, 100.0, 140.0)]  # cut where track 2 starts in the recording
    assert rows[1]["track_start_s"] == 100.0
    uneven = TrackNames({"album": [Track(1, 0.0, "One", ""), Track(2, 100.1234, "Two", "")]})
    row = scan_by_tracks(ScanResult("rec", 90.0, occ[:1], [], 1.0), uneven).rows()[1]
    assert (row["start_s"], row["track_start_s"]) == (30.12, 100.123)  # rounded like every row


def test_the_listener_names_the_track_playing_and_cuts_its_summary_by_track(names):
    from dataclasses import replace

    from workflow_lib.listener.decisions import Decision, Heard, ListenSummary
    from workflow_lib.listener.tracks import decision_by_track, summary_by_tracks

    heard = Heard("album", "Live", "The Band", anchor=160, start_s=0.0, declared_s=4.0, end_s=40.0,
                  max_confidence=0.9, max_score=0.8)  # song time = stream time + 80 s
    summary = summary_by_tracks(ListenSummary([heard], 40.0, 80, 0, 0.0, 1.0, 1.0, 1.0), names)
    assert [(h.title, h.track, h.start_s, h.end_s, h.declared_s) for h in summary.heard] == [
        ("One", 1, 0.0, 20.0, 4.0), ("Two", 2, 20.0, 40.0, 20.0)]
    d = Decision(30.0, "match", "album", "Live", "The Band", 110.0, 80.0, 0.8, 0.5, 0.9, True, 4, 10, 1.0, 1.0,
                 1.0, -20.0)
    named = decision_by_track(d, names)
    assert (named.title, named.artist, named.track, named.track_start_s, named.album) == (
        "Two", "The Band", 2, 100.0, "Live")
    assert decision_by_track(replace(d, song_id="single"), names) == replace(d, song_id="single")
    # the terminal says when the album goes on to its next track (the core knows one song, so it has no event)
    import io

    from workflow_lib.cli.listen import Display

    out = io.StringIO()
    display = Display(out=out, live=False)
    display.names = names
    for pos in (98.0, 99.0, 100.5, 101.0):
        display(replace(d, song_pos_s=pos, stream_s=pos - 80.0))
    text = out.getvalue()
    assert text.count("next track:") == 1 and '"Two" - The Band (track 2)' in text
    assert "at 1:38.0" in text and "at 0:00.5" in text  # the time into the track playing


def test_a_cue_sheet_added_or_edited_changes_the_folder_listing(tmp_path):
    """The manifest's `listing` parameter: a sheet written after the image was indexed reruns the stages, so the
    catalogue takes its tracks (other files beside the music do not)."""
    from workflow_lib.audio.files import write_audio
    from workflow_lib.data.folders import audio_listing_digest

    write_audio(tmp_path / "Live.flac", np.zeros(8000, np.float32))
    before = audio_listing_digest([tmp_path])
    (tmp_path / "notes.txt").write_text("liner notes")
    assert audio_listing_digest([tmp_path]) == before
    (tmp_path / "Live.cue").write_text(EAC_SHEET)
    added = audio_listing_digest([tmp_path])
    assert added != before
    (tmp_path / "Live.cue").write_text(EAC_SHEET.replace("Encore", "Encore!"))
    assert audio_listing_digest([tmp_path]) != added
