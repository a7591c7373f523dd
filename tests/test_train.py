"""NT-Xent, the learning-rate schedule, song banks and resumable training on tiny generated data."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

import workflow_lib.training.train as train_mod
from workflow_lib.training.augment import AugmentConfig
from workflow_lib.data.clipbank import ClipBank, write_clip_bank
from workflow_lib.training.losses import nt_xent
from workflow_lib.model.network import ModelConfig
from workflow_lib.model.model_file import load_fingerprinter, model_checksum
from workflow_lib.training.checkpoint import CheckpointError, load_initial_weights
from workflow_lib.training.settings import TrainConfig
from workflow_lib.training.train import epoch_label, lr_factor, train_from_config, train_model
from workflow_lib.training.data import build_song_bank

TINY = ModelConfig(channels=[4, 4, 8, 8, 8, 8, 16, 16], dim=8, head_hidden=4, preset="small")


# --- loss ----------------------------------------------------------------------------------------------------------

def naive_nt_xent(a: torch.Tensor, b: torch.Tensor, tau: float) -> float:
    z = torch.cat([a, b])
    n2 = len(z)
    total = 0.0
    for i in range(n2):
        pos = (i + n2 // 2) % n2
        sims = [float(z[i] @ z[k]) / tau for k in range(n2) if k != i]
        total += -(float(z[i] @ z[pos]) / tau - math.log(sum(math.exp(s) for s in sims)))
    return total / n2


def test_nt_xent_known_value_for_orthogonal_pairs():
    n, tau = 4, 0.5
    a = torch.eye(8)[:n]
    loss = nt_xent(a, a.clone(), tau)
    # Positive similarity 1, all 2n - 2 negatives 0: -log(e^2 / (e^2 + 6)).
    assert loss.item() == pytest.approx(math.log(1 + 6 * math.exp(-2)), rel=1e-6)
    # Same pairs with the negatives at similarity -1 (antipodal): smaller loss.
    b = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert nt_xent(b, b.clone(), tau).item() == pytest.approx(math.log(1 + math.exp(-4) + math.exp(-4)), rel=1e-6)


def test_nt_xent_matches_a_direct_computation():
    g = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(6, 16, generator=g), dim=1)
    b = torch.nn.functional.normalize(a + 0.3 * torch.randn(6, 16, generator=g), dim=1)
    assert nt_xent(a, b, 0.1).item() == pytest.approx(naive_nt_xent(a, b, 0.1), rel=1e-5)
    assert nt_xent(a, b, 0.1).item() == pytest.approx(nt_xent(b, a, 0.1).item(), rel=1e-6)


def test_nt_xent_prefers_matching_pairs():
    g = torch.Generator().manual_seed(1)
    a = torch.nn.functional.normalize(torch.randn(8, 16, generator=g), dim=1)
    good = nt_xent(a, a.clone())
    shuffled = nt_xent(a, a[torch.roll(torch.arange(8), 1)])
    assert good < 0.01 < shuffled
    with pytest.raises(ValueError, match="same shape"):
        nt_xent(a, a[:4])


def test_lr_warmup_then_cosine():
    f = [lr_factor(s, 10, 110, 0.01) for s in range(111)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert f[60] == pytest.approx(0.505, abs=1e-3)  # half-way down the cosine
    assert f[110] == pytest.approx(0.01)
    assert all(x >= y for x, y in zip(f[9:], f[10:]))


def test_epochs_past_a_fitted_schedule_say_so():
    # a time schedule fitted to 2 epochs from a slow first one (set-up included) that has time for a third: it runs
    # at the final rate and must not read "epoch 3/2"
    assert epoch_label(1, "time", 12, 12) == "epoch 1 of \u226412"
    assert epoch_label(2, "time", 2, 12) == "epoch 2/2"
    assert epoch_label(3, "time", 2, 12) == "epoch 3 (past the 2 fitted: final rate)"
    assert epoch_label(1, "epochs", 16, 16) == "epoch 1/16"
    assert lr_factor(3 * 10, 5, 2 * 10, 0.01) == pytest.approx(0.01)  # past the horizon: the final rate


# --- song bank -----------------------------------------------------------------------------------------------------

def test_build_song_bank_decodes_once_and_skips_bad_files(tmp_path):
    import soundfile as sf

    rng = np.random.default_rng(0)
    paths = []
    for i, secs in enumerate([3.0, 2.5, 0.5]):
        p = tmp_path / f"s{i}.wav"
        sf.write(p, (0.3 * rng.standard_normal(int(secs * 16000))).astype(np.float32), 16000)
        paths.append(p)
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF0000WAVEjunk")
    songs = pd.DataFrame({"song_id": ["a", "b", "c", "d", "e"], "path": [str(p) for p in paths] +
                          [str(broken), str(paths[0])]})
    splits = pd.DataFrame({"song_id": ["a", "b", "c", "d", "e"], "split": ["train"] * 4 + ["val"]})
    songs.to_parquet(tmp_path / "songs.parquet")
    splits.to_parquet(tmp_path / "splits.parquet")
    summary = build_song_bank(tmp_path / "songs.parquet", tmp_path / "splits.parquet", "train", tmp_path / "bank")
    bank = ClipBank(tmp_path / "bank")
    assert summary["songs"] == 2 and summary["skipped"] == 2  # too short, undecodable
    assert list(bank.meta["song_id"]) == ["a", "b"]
    assert bank.samples.dtype == np.float16 and list(bank.lengths) == [24000, 20000]
    assert summary["segments"] == 5 + 4
    assert not list(tmp_path.glob(".bank*"))  # no temporary files left
    # the codec copy: aligned sample for sample, one codec per song (by a hash of its id), clearly degraded
    summary = build_song_bank(tmp_path / "songs.parquet", tmp_path / "splits.parquet", "train", tmp_path / "cb",
                              codecs=["mp3-16k", "gsm"])
    clean, coded = ClipBank(tmp_path / "cb"), ClipBank(tmp_path / "cb_codec")
    assert np.array_equal(clean.starts, coded.starts) and np.array_equal(clean.lengths, coded.lengths)
    assert set(coded.meta["codec"]) <= {"mp3-16k", "gsm"} and sum(summary["codecs"].values()) == 2
    for i in range(len(clean)):
        a, b = clean.clip(i), coded.clip(i)
        assert not np.allclose(a, b) and np.corrcoef(a, b)[0, 1] > 0.3
    assert "codec" not in clean.meta and not list(tmp_path.glob(".cb*"))
    with pytest.raises(ValueError, match="unknown codecs"):
        build_song_bank(tmp_path / "songs.parquet", tmp_path / "splits.parquet", "train", tmp_path / "x",
                        codecs=["amr"])


# --- training ------------------------------------------------------------------------------------------------------

def synth_song(rng: np.random.Generator, seconds: float, sr: int = 8000) -> np.ndarray:
    """A random melody of decaying harmonic notes: every second sounds different."""
    n = int(seconds * sr)
    out = np.zeros(n, np.float32)
    pos = 0
    while pos < n:
        dur = min(int(rng.uniform(0.1, 0.4) * sr), n - pos)
        t = np.arange(dur) / sr
        f = 200 * 2 ** (rng.integers(0, 36) / 12)
        out[pos:pos + dur] = (0.3 * np.sin(2 * np.pi * f * t) + 0.1 * np.sin(4 * np.pi * f * t)) * np.exp(-4 * t)
        pos += dur
    return out


@pytest.fixture(scope="module")
def banks(tmp_path_factory):
    d = tmp_path_factory.mktemp("banks")
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 2)):
        ids = [f"{split}{i}" for i in range(n)]
        write_clip_bank(d / split, [synth_song(rng, 6) for _ in range(n)], pd.DataFrame({"song_id": ids, "name": ids}))
    write_clip_bank(d / "noise", [0.1 * rng.standard_normal(30000).astype(np.float32)], pd.DataFrame({"name": ["n"]}))
    ir = (rng.standard_normal(800) * np.exp(-np.arange(800) / 100)).astype(np.float32)
    write_clip_bank(d / "irs", [ir / np.linalg.norm(ir)], pd.DataFrame({"name": ["r"]}), dtype="float32")
    return d


def run(banks, out, cfg: TrainConfig, model_cfg: ModelConfig = TINY):
    return train_model(banks / "train", banks / "val", banks / "noise", banks / "irs", out / "model.pt",
                       out / "metrics.csv", out / "curves.png", out / "checkpoints" / "last.pt", cfg, model_cfg)


CFG = TrainConfig(max_epochs=2, batch_size=8, val_queries=12, eval_batch=16, lr=1e-3, warmup_epochs=0.5,
                  patience=0, schedule="epochs", augment=AugmentConfig(max_ir_s=0.05))


def test_training_writes_all_outputs(banks, tmp_path):
    meta = run(banks, tmp_path, CFG)
    assert meta["epochs"] == 2 and meta["stop_reason"] == "max_epochs"
    payload = torch.load(tmp_path / "model.pt", weights_only=True)
    assert payload["train_meta"]["train_segments"] == 3 * 11 and payload["train_meta"]["val_queries"] == 12
    model = load_fingerprinter(tmp_path / "model.pt")
    with torch.inference_mode():
        assert model(torch.zeros(2, 8000)).shape == (2, 8)
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert list(metrics["epoch"]) == [1, 2] and metrics["steps"].tolist() == [8, 8]
    assert metrics[["train_loss", "val_loss", "val_top1", "lr", "sec_per_step"]].notna().all().all()
    assert (tmp_path / "curves.png").stat().st_size > 1000
    assert (tmp_path / "checkpoints" / "last.pt").exists()
    assert not [p for p in tmp_path.rglob(".*") if p.is_file()]  # temp files all renamed


def kill_at_loss_call(monkeypatch, n: int):
    """Make the ``n``-th NT-Xent call raise KeyboardInterrupt, as a kill would (8 training steps per epoch of CFG,
    then 3 validation batches); returns the function that undoes it."""
    calls = {"n": 0}
    real = train_mod.nt_xent

    def dies(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt("simulated kill")
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "nt_xent", dies)
    return lambda: monkeypatch.setattr(train_mod, "nt_xent", real)


def test_resume_after_interrupt_equals_uninterrupted_run(banks, tmp_path, monkeypatch):
    run(banks, tmp_path / "straight", CFG)

    revive = kill_at_loss_call(monkeypatch, 8 + 3 + 2)  # the 2nd step of epoch 2
    with pytest.raises(KeyboardInterrupt):
        run(banks, tmp_path / "killed", CFG)
    ckpt = torch.load(tmp_path / "killed" / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 1 and not (tmp_path / "killed" / "model.pt").exists()
    revive()
    run(banks, tmp_path / "killed", CFG)

    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "checkpoints" / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["scheduler"] == b["scheduler"]
    for key in ("train_loss", "val_loss", "val_top1"):
        assert [r[key] for r in a["history"]] == [r[key] for r in b["history"]]
    ma = torch.load(tmp_path / "straight" / "model.pt", weights_only=True)["state_dict"]
    mb = torch.load(tmp_path / "killed" / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(ma[k], mb[k]) for k in ma)


def test_a_kill_mid_epoch_resumes_from_the_last_step_saved_and_ends_as_the_uninterrupted_run(banks, tmp_path,
                                                                                                monkeypatch):
    run(banks, tmp_path / "straight", CFG)
    every_step = TrainConfig(**{**CFG.__dict__, "checkpoint_minutes": 0})  # a runtime setting: same run
    revive = kill_at_loss_call(monkeypatch, 8 + 3 + 4)  # the 4th step of epoch 2
    with pytest.raises(KeyboardInterrupt):
        run(banks, tmp_path / "killed", every_step)
    ckpt = torch.load(tmp_path / "killed" / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["partial"]["epoch"] == 2 and ckpt["partial"]["step"] == 3
    revive()
    run(banks, tmp_path / "killed", every_step)

    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "checkpoints" / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2 and b["partial"] is None
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for key in ("steps", "train_loss", "val_loss", "val_top1"):
        assert [r[key] for r in a["history"]] == [r[key] for r in b["history"]]


def test_batches_drawn_by_worker_processes_train_the_same_model(banks, tmp_path):
    """train.view_workers changes who draws the batches, never the batches: the same weights as the thread's, and
    the checkpoint of one resumes under the other (a runtime setting)."""
    run(banks, tmp_path / "thread", TrainConfig(**{**CFG.__dict__, "view_workers": 0}))
    run(banks, tmp_path / "workers", TrainConfig(**{**CFG.__dict__, "view_workers": 2}))
    a = torch.load(tmp_path / "thread" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "workers" / "checkpoints" / "last.pt", weights_only=True)
    assert a["fingerprint"] == b["fingerprint"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert [r["train_loss"] for r in a["history"]] == [r["train_loss"] for r in b["history"]]
    with pytest.raises(ValueError, match="view_workers"):
        TrainConfig(view_workers=-1)


def test_a_checkpoint_from_before_mid_epoch_saves_still_resumes(banks, tmp_path, monkeypatch, caplog):
    revive = kill_at_loss_call(monkeypatch, 8 + 3 + 1)
    with pytest.raises(KeyboardInterrupt):
        run(banks, tmp_path, CFG)
    revive()
    path = tmp_path / "checkpoints" / "last.pt"
    old = torch.load(path, weights_only=True)
    del old["partial"]  # the key checkpoints of older versions lack
    torch.save(old, path)
    with caplog.at_level("INFO"):
        meta = run(banks, tmp_path, CFG)
    assert "resuming from" in caplog.text and "different configuration" not in caplog.text
    assert meta["epochs"] == 2


def test_finished_run_is_not_retrained(banks, tmp_path, monkeypatch):
    run(banks, tmp_path, CFG)
    monkeypatch.setattr(train_mod, "nt_xent", lambda *a, **k: pytest.fail("trained again"))
    meta = run(banks, tmp_path, CFG)
    assert meta["epochs"] == 2


def test_corrupt_checkpoint_gives_a_clear_error(banks, tmp_path):
    ckpt = tmp_path / "checkpoints" / "last.pt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"PK\x03\x04 this is not a checkpoint")
    with pytest.raises(CheckpointError, match=r"last\.pt.*corrupt.*Delete it"):
        run(banks, tmp_path, CFG)
    torch.save({"something": 1}, ckpt)
    with pytest.raises(CheckpointError, match="not a nafp-checkpoint"):
        run(banks, tmp_path, CFG)


def test_checkpoint_of_another_configuration_is_not_resumed(banks, tmp_path, caplog):
    run(banks, tmp_path, CFG)
    other = TrainConfig(**{**CFG.__dict__, "max_epochs": 1, "lr": 5e-4})
    with caplog.at_level("WARNING"):
        meta = run(banks, tmp_path, other)
    assert "different configuration" in caplog.text
    assert meta["epochs"] == 1


def test_early_stopping_keeps_the_best_epoch(banks, tmp_path, monkeypatch):
    scores = iter([0.5, 0.7, 0.6, 0.4, 0.9])

    def fake_evaluate(self, model, autocast):
        return {"val_loss": 1.0, "val_top1": next(scores), "val_near": 0.0, "val_song": 0.0}

    monkeypatch.setattr(train_mod.Validator, "evaluate", fake_evaluate)
    cfg = TrainConfig(**{**CFG.__dict__, "max_epochs": 5, "patience": 2})
    meta = run(banks, tmp_path, cfg)
    assert meta["stop_reason"] == "early_stopping" and meta["epochs"] == 4
    assert meta["best_epoch"] == 2 and meta["val_top1"] == 0.7


def test_a_fine_tune_keeps_the_starting_weights_unless_an_epoch_beats_them(banks, tmp_path, monkeypatch, caplog):
    run(banks, tmp_path / "start", CFG)
    start = torch.load(tmp_path / "start" / "model.pt", weights_only=True)["state_dict"]

    def fine_tune(out, scores):
        it = iter(scores)
        monkeypatch.setattr(train_mod.Validator, "evaluate", lambda self, model, autocast: {
            "val_loss": 1.0, "val_top1": next(it), "val_near": 0.0, "val_song": 0.0})
        return train_model(banks / "train", banks / "val", banks / "noise", banks / "irs", out / "model.pt",
                           out / "metrics.csv", out / "curves.png", out / "checkpoints" / "last.pt", CFG, TINY,
                           init_from=tmp_path / "start" / "model.pt")

    with caplog.at_level("INFO"):
        meta = fine_tune(tmp_path / "worse", [0.8, 0.5, 0.6])  # the starting weights, then the two epochs
    assert "epoch 0 (the starting weights" in caplog.text and "holds them unchanged" in caplog.text
    assert meta["best_epoch"] == 0 and meta["val_top1"] == 0.8 and meta["start_val_top1"] == 0.8
    kept = torch.load(tmp_path / "worse" / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(kept[k], start[k]) for k in start)
    metrics = pd.read_csv(tmp_path / "worse" / "metrics.csv")
    assert metrics["epoch"].tolist() == [0, 1, 2] and metrics["val_top1"].tolist() == [0.8, 0.5, 0.6]

    meta = fine_tune(tmp_path / "better", [0.4, 0.5, 0.6])
    assert meta["best_epoch"] == 2 and meta["val_top1"] == 0.6 and meta["start_val_top1"] == 0.4
    kept = torch.load(tmp_path / "better" / "model.pt", weights_only=True)["state_dict"]
    assert not all(torch.equal(kept[k], start[k]) for k in start)
    # A run from random weights has no epoch 0.
    assert pd.read_csv(tmp_path / "start" / "metrics.csv")["epoch"].tolist() == [1, 2]


def test_time_budget_stops_and_fits_the_schedule(banks, tmp_path):
    # A budget shorter than one epoch: the first epoch always runs, the cosine is fitted to it, then it stops.
    cfg = TrainConfig(**{**CFG.__dict__, "max_epochs": 5, "max_minutes": 1e-4, "schedule": "time"})
    meta = run(banks, tmp_path, cfg)
    assert meta["stop_reason"] == "max_minutes" and meta["epochs"] == 1 and meta["schedule_epochs"] == 1
    assert torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["horizon_epochs"] == 1


def test_train_from_config_sections(banks, tmp_path):
    model_section = {"preset": "small", "channels": [4, 4, 8, 8, 8, 8, 16, 16], "dim": 8, "head_hidden": 4}
    train_section = {**CFG.to_dict(), "max_epochs": 1, "threads": 1, "val_max_songs": 0}
    meta = train_from_config(banks / "train", banks / "val", banks / "noise", banks / "irs", tmp_path / "m.pt",
                             tmp_path / "m.csv", tmp_path / "c.png", tmp_path / "ck" / "last.pt", model_section,
                             train_section)
    assert meta["epochs"] == 1 and load_fingerprinter(tmp_path / "m.pt").model_config.channels[0] == 4
    assert load_fingerprinter(tmp_path / "m.pt").frontend_config.compression == "log"
    # model.compression chooses the trained model's front end (the bundled pair's second member: log-cmn)
    train_from_config(banks / "train", banks / "val", banks / "noise", banks / "irs", tmp_path / "c.pt",
                      tmp_path / "c.csv", tmp_path / "c2.png", tmp_path / "ck2" / "last.pt",
                      {**model_section, "compression": "log-cmn"}, train_section)
    assert load_fingerprinter(tmp_path / "c.pt").frontend_config.compression == "log-cmn"
    # train.partner (resolved by the rule to a file) and train.partner_weight: trained for the pair with m.pt fixed
    meta = train_from_config(banks / "train", banks / "val", banks / "noise", banks / "irs", tmp_path / "p.pt",
                             tmp_path / "p.csv", tmp_path / "p.png", tmp_path / "ck3" / "last.pt", model_section,
                             {**train_section, "partner": "m.pt", "partner_weight": 0.3}, partner=tmp_path / "m.pt")
    assert meta["partner"] == {"model": model_checksum(tmp_path / "m.pt"), "weight": 0.3}
    with pytest.raises(ValueError, match="unknown train config keys"):
        train_from_config(banks / "train", banks / "val", None, None, tmp_path / "m.pt", tmp_path / "m.csv",
                          tmp_path / "c.png", tmp_path / "ck" / "last.pt", model_section, {"bogus": 1})


def test_cuda_request_without_cuda_is_refused(banks, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(RuntimeError, match="no CUDA"):
        run(banks, tmp_path, TrainConfig(**{**CFG.__dict__, "device": "cuda"}))


def test_validation_queries_are_degraded_even_with_clean_anchors(banks):
    from workflow_lib.audio.segments import frame
    from workflow_lib.training.train import Validator
    from workflow_lib.training.data import ViewSource

    songs = ClipBank(banks / "val")
    cfg = TrainConfig(**{**CFG.__dict__, "augment": AugmentConfig(max_ir_s=0.05, clean_anchor_prob=1.0)})
    src = ViewSource(songs, ClipBank(banks / "noise"), ClipBank(banks / "irs"), cfg.augment)
    val = Validator(src, cfg, torch.device("cpu"))
    clean = np.concatenate([frame(songs.clip(i)) for i in range(len(songs))])[val.rows]
    q = val.queries.numpy()
    corr = np.sum(q * clean, 1) / np.linalg.norm(q, axis=1) / np.linalg.norm(clean, axis=1)
    assert np.all(corr < 0.99)  # not the database segment itself
    p = val.partners.numpy()  # the clean anchors: the database segments up to level
    corr_p = np.sum(p * clean, 1) / np.linalg.norm(p, axis=1) / np.linalg.norm(clean, axis=1)
    assert np.all(corr_p > 0.999)


def test_training_without_validation_songs_keeps_the_last_epoch(banks, tmp_path, caplog):
    write_clip_bank(tmp_path / "empty", [], pd.DataFrame({"song_id": [], "name": []}))
    with caplog.at_level("WARNING"):
        meta = train_model(banks / "train", tmp_path / "empty", None, None, tmp_path / "model.pt",
                           tmp_path / "metrics.csv", tmp_path / "curves.png", tmp_path / "ck" / "last.pt", CFG, TINY)
    assert "no validation segments" in caplog.text and "no training noise" in caplog.text
    assert meta["best_epoch"] == 2 and meta["val_queries"] == 0
    assert load_fingerprinter(tmp_path / "model.pt").dim == 8


def test_fine_tuning_may_change_the_compression_or_add_a_channel_but_not_the_input_shape(tmp_path, caplog):
    from workflow_lib.model.features import FrontendConfig
    from workflow_lib.model.model_file import save_model
    from workflow_lib.model.network import Fingerprinter

    tiny = ModelConfig(channels=[4, 4, 8, 8, 8, 8, 16, 16], dim=8, head_hidden=4, preset="small")
    torch.manual_seed(0)
    trained = Fingerprinter(tiny, FrontendConfig())
    path = tmp_path / "log.pt"
    save_model(path, trained.state_dict(), tiny, trained.frontend_config, {"epochs": 1})

    cmn = Fingerprinter(tiny, FrontendConfig(compression="log-cmn"))
    load_initial_weights(cmn, path, tiny, cmn.frontend_config)  # same input shape: allowed, said
    assert all(torch.equal(a, b) for a, b in zip(cmn.state_dict().values(), trained.state_dict().values()))
    assert "compression 'log' -> 'log-cmn'" in caplog.text
    # A channel added after the model's own starts with zero weights: the same fingerprints as the model's.
    two = Fingerprinter(tiny, FrontendConfig(compression="log+log-cmn")).eval()
    load_initial_weights(two, path, tiny, two.frontend_config)
    wav = torch.randn(3, 8000) * 0.1
    with torch.inference_mode():
        assert torch.allclose(two(wav), trained.eval()(wav), atol=1e-6)
    swapped = Fingerprinter(tiny, FrontendConfig(compression="pcen"))
    swapped_path = tmp_path / "pcen.pt"
    save_model(swapped_path, swapped.state_dict(), tiny, swapped.frontend_config, {"epochs": 1})
    with pytest.raises(ValueError, match="another front end"):  # its channel would not be the first
        load_initial_weights(two, swapped_path, tiny, two.frontend_config)
    narrow = FrontendConfig(n_mels=128)
    with pytest.raises(ValueError, match="another front end"):
        load_initial_weights(Fingerprinter(tiny, narrow), path, tiny, narrow)


def test_pairs_without_the_first_channel_train_only_the_second(banks, tmp_path):
    from workflow_lib.model.features import FrontendConfig
    from workflow_lib.model.network import Fingerprinter
    from workflow_lib.training.data import ViewSource

    log_only = TrainConfig(**{**CFG.__dict__, "augment": AugmentConfig(max_ir_s=0.05, first_channel_drop_prob=0.5)})
    with pytest.raises(ValueError, match="two or more channels"):
        run(banks, tmp_path, log_only)
    # Every pair without the log channel: no gradient reaches its first-layer weights, plenty reaches the other's.
    augment = AugmentConfig(max_ir_s=0.05, first_channel_drop_prob=1.0)
    src = ViewSource(ClipBank(banks / "train"), ClipBank(banks / "noise"), ClipBank(banks / "irs"), augment)
    torch.manual_seed(0)
    model = Fingerprinter(TINY, FrontendConfig(compression="log+log-cmn"))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # the step leaves the weights; the gradients stay
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    views = src.pairs(np.random.default_rng(0), np.arange(8))
    loss = train_mod.train_step(model, views, optimizer, scheduler, scaler, 0.1, torch.device("cpu"),
                                {"device_type": "cpu", "dtype": torch.bfloat16, "enabled": False})
    assert math.isfinite(loss)
    grad = dict(model.named_parameters())["encoder.blocks.0.conv_t.weight"].grad
    assert grad.shape[1] == 2
    assert torch.all(grad[:, 0] == 0) and grad[:, 1].abs().sum() > 0


def test_a_run_killed_before_an_augmentation_option_existed_keeps_its_fingerprint():
    from workflow_lib.model.features import FrontendConfig
    from workflow_lib.training.checkpoint import run_fingerprint

    # The value the code of 2026-12-01 (before first_channel_drop_prob) computed for this configuration.
    assert run_fingerprint(CFG, TINY, FrontendConfig(), "data") == "ed5218c1428e6d7b"
    dropped = TrainConfig(**{**CFG.__dict__, "augment": AugmentConfig(max_ir_s=0.05, first_channel_drop_prob=0.5)})
    assert run_fingerprint(dropped, TINY, FrontendConfig(), "data") != "ed5218c1428e6d7b"


def test_training_beside_a_fixed_partner_scores_the_ensemble_and_leaves_the_partner_as_it_was(banks, tmp_path,
                                                                                              caplog):
    from workflow_lib.model.features import FrontendConfig
    from workflow_lib.model.model_file import save_ensemble
    from workflow_lib.model.network import Fingerprinter
    from workflow_lib.training.data import ViewSource
    from workflow_lib.training.partner import Partner

    one_epoch = TrainConfig(**{**CFG.__dict__, "max_epochs": 1})
    run(banks, tmp_path / "partner", one_epoch)
    partner_file = tmp_path / "partner" / "model.pt"
    before = model_checksum(partner_file)

    # One step: the loss is the NT-Xent of the ensemble's fingerprints; no gradient reaches the partner.
    fixed = Partner(partner_file, 0.3, FrontendConfig(), torch.device("cpu"))
    src = ViewSource(ClipBank(banks / "train"), ClipBank(banks / "noise"), ClipBank(banks / "irs"),
                     AugmentConfig(max_ir_s=0.05))
    torch.manual_seed(1)
    member = Fingerprinter(TINY)
    optimizer = torch.optim.SGD(member.parameters(), lr=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    autocast = {"device_type": "cpu", "dtype": torch.bfloat16, "enabled": False}
    seen = {}
    real = train_mod.nt_xent

    def spy(a, b, t):
        seen["z"] = torch.cat([a, b]).detach()
        return real(a, b, t)

    views = src.pairs(np.random.default_rng(0), np.arange(8))
    train_mod.nt_xent = spy
    try:
        train_mod.train_step(member, views, optimizer, scheduler, scaler, 0.1, torch.device("cpu"), autocast, fixed)
    finally:
        train_mod.nt_xent = real
    z = seen["z"]
    assert z.shape == (16, 16)  # partner's 8 dims, then the member's 8
    assert torch.allclose(z.norm(dim=1), torch.ones(16), atol=1e-5)
    assert torch.allclose(z[:, :8].norm(dim=1), torch.full((16,), 0.7 ** 0.5), atol=1e-5)
    wav, _ = train_mod.degrade_views(views, torch.device("cpu"))
    with torch.no_grad():
        assert torch.allclose(z[:, :8], fixed.model(wav) * 0.7 ** 0.5, atol=1e-5)
    assert all(p.grad is None for p in fixed.model.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in member.parameters())
    fixed.ensemble(member).train()
    assert not fixed.model.model.training  # the partner stays in eval mode whatever its ensemble is set to

    # A whole run: the member alone is written, stamped with its partner; the partner file is untouched.
    meta = train_model(banks / "train", banks / "val", banks / "noise", banks / "irs", tmp_path / "m" / "model.pt",
                       tmp_path / "m" / "metrics.csv", tmp_path / "m" / "curves.png",
                       tmp_path / "m" / "checkpoints" / "last.pt", one_epoch, TINY, partner=partner_file,
                       partner_weight=0.3)
    assert meta["partner"] == {"model": before, "weight": 0.3} and model_checksum(partner_file) == before
    assert load_fingerprinter(tmp_path / "m" / "model.pt").dim == 8
    save_ensemble(tmp_path / "pair.pt", [partner_file, tmp_path / "m" / "model.pt"], [0.7, 0.3], {})
    assert load_fingerprinter(tmp_path / "pair.pt").dim == 16
    # Another weight is another run: its checkpoint is not resumed.
    with caplog.at_level("WARNING"):
        train_model(banks / "train", banks / "val", banks / "noise", banks / "irs", tmp_path / "m2" / "model.pt",
                    tmp_path / "m2" / "metrics.csv", tmp_path / "m2" / "curves.png",
                    tmp_path / "m" / "checkpoints" / "last.pt", one_epoch, TINY, partner=partner_file,
                    partner_weight=0.6)
    assert "different configuration" in caplog.text
    with pytest.raises(ValueError, match="between 0 and 1"):
        Partner(partner_file, 1.0, FrontendConfig(), torch.device("cpu"))
    with pytest.raises(ValueError, match="ensemble"):
        Partner(tmp_path / "pair.pt", 0.5, FrontendConfig(), torch.device("cpu"))
