"""An ensemble model file (two fingerprinters searched as one) through the real extraction, index and search."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from tests.search_helpers import SR, synth_song
from workflow_lib.audio.files import write_audio
from workflow_lib.database.fingerprint_file import ShardMeta, read_meta
from workflow_lib.database.extract import extract_songs, load_model
from workflow_lib.database.index_build import build_index
from workflow_lib.model.features import FrontendConfig
from workflow_lib.model.model_file import save_ensemble, save_model
from workflow_lib.model.network import Fingerprinter, ModelConfig
from workflow_lib.search.searcher import Searcher

TINY = ModelConfig(channels=[4, 4, 8, 8, 8, 8, 16, 16], dim=8, head_hidden=4)


@pytest.fixture(scope="module")
def ensemble_results(tmp_path_factory):
    root = tmp_path_factory.mktemp("ens")
    paths = []
    for i, compression in enumerate(("log", "log-cmn")):
        torch.manual_seed(10 + i)
        m = Fingerprinter(TINY, FrontendConfig(compression=compression))
        save_model(root / f"m{i}.pt", m.state_dict(), TINY, m.frontend_config, {})
        paths.append(root / f"m{i}.pt")
    r = root / "results"
    save_ensemble(r / "model" / "model.pt", paths, [0.6, 0.4])
    songs = []
    for i in range(3):
        p = root / "music" / f"s{i}.flac"
        p.parent.mkdir(exist_ok=True)
        write_audio(p, synth_song(60 + i, 20.0))
        songs.append({"song_id": f"s{i}", "path": str(p)})
    model, identity = load_model(r / "model" / "model.pt", "cpu")
    extract_songs(model, identity, pd.DataFrame(songs), r / "fingerprints" / "shard-0.parquet", device="cpu")
    build_index([r / "fingerprints" / "shard-0.parquet"], r / "index")
    return r


def test_an_ensemble_database_is_stamped_with_both_front_ends_and_finds_a_clip(ensemble_results):
    r = ensemble_results
    meta: ShardMeta = read_meta(r / "fingerprints" / "shard-0.parquet")
    assert meta.dim == 16 and meta.frontend["weights"] == [0.6, 0.4]
    assert [fe.get("compression", "log") for fe in meta.frontend["ensemble"]] == ["log", "log-cmn"]
    searcher = Searcher.from_paths(r / "model" / "model.pt", r / "index", device="cpu")
    clip = synth_song(61, 20.0)[int(4.0 * SR):int(9.0 * SR)]  # s1 from 4 s: on the hop grid
    result = searcher.search(searcher.embed(clip))
    assert result.best.song_id == "s1" and result.best.start_segment == 8  # 4 s at the 0.5 s hop
    assert result.best.score == pytest.approx(1.0, abs=2e-3)  # float16 storage


def test_a_member_model_cannot_search_an_ensemble_database(ensemble_results, tmp_path):
    r = ensemble_results
    with pytest.raises(ValueError, match="model"):
        Searcher.from_paths(r.parent / "m0.pt", r / "index", device="cpu")


def test_the_bundled_pair_is_the_model_the_bundled_one_grew_from_and_a_band_centred_one_trained_beside_it():
    """models/nafp-small-pair.pt: its checksum as recorded; its first member is the bundled model's predecessor, the
    one models/nafp-small.pt was fine-tuned from (2026-12-05, train_meta init_from); its second was trained for the
    pair with that very model held fixed (train.partner)."""
    from workflow_lib.common.layout import BUNDLED_MODEL, BUNDLED_MODELS, is_bundled, model_source_path
    from workflow_lib.model.model_file import load_fingerprinter, verify_checksum

    pair = model_source_path("bundled-pair", ".")
    assert pair == BUNDLED_MODELS["bundled-pair"] and is_bundled(pair)
    verify_checksum(pair)
    ens, single = load_fingerprinter(pair), load_fingerprinter(BUNDLED_MODEL)
    assert ens.weights == (0.5, 0.5) and ens.dim == 2 * single.dim
    assert [m.frontend_config.compression for m in ens.members] == ["log", "log-cmn"]
    payload = torch.load(pair, map_location="cpu", weights_only=False)
    first = payload["train_meta"]["members"][0]["checksum"]
    assert first.startswith(torch.load(BUNDLED_MODEL, map_location="cpu", weights_only=True)["train_meta"]["init_from"])
    assert payload["members"][1]["train_meta"]["partner"] == {"model": first, "weight": 0.5}
    wav = torch.from_numpy(synth_song(5, 2.0)[:SR])[None]
    with torch.inference_mode():
        assert torch.allclose(ens(wav)[:, :single.dim] * 2 ** 0.5, ens.members[0](wav), atol=1e-6)
