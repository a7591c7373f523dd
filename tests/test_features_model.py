"""Front end, encoder, division head and the model file (generated signals only)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from workflow_lib.model.ensemble import EnsembleFingerprinter
from workflow_lib.model.features import FrontendConfig, LogMelFrontend
from workflow_lib.model.network import (DivisionHead, Encoder, Fingerprinter, ModelConfig, count_parameters, elu,
                                         model_config_from)
from workflow_lib.model.model_file import (MODEL_FORMAT, ModelFileError, load_fingerprinter, model_checksum,
                                           read_model_file, save_model)

TINY = ModelConfig(channels=[4, 4, 8, 8, 8, 8, 16, 16], dim=8, head_hidden=4, preset="small")


def tone(freq: float, n: int = 8000, sr: int = 8000, amp: float = 0.5) -> torch.Tensor:
    return amp * torch.sin(2 * torch.pi * freq * torch.arange(n) / sr)


def test_frontend_shape_and_per_sample_max_normalisation():
    fe = LogMelFrontend()
    wav = torch.stack([tone(440), 0.01 * tone(1500), torch.zeros(8000)])
    spec = fe(wav)
    assert spec.shape == (3, 1, 256, 32)
    assert spec.dtype == torch.float32
    # Each sample's own maximum is 0 (not the batch's), so quiet inputs are not pushed to the floor.
    assert torch.allclose(spec.amax(dim=(1, 2, 3)), torch.zeros(3))
    assert (spec <= 0).all()
    # Silence is flat: log10(0 + 0.06) everywhere, minus itself.
    assert torch.all(spec[2] == 0)


def test_frontend_puts_a_tone_in_the_right_band():
    fe = LogMelFrontend()
    c = fe.config
    spec = fe(torch.stack([tone(500), tone(2500)]))
    peak_band = spec[:, 0, :, 16].argmax(dim=-1)
    assert 0 < peak_band[0] < peak_band[1] < c.n_mels - 1
    # Slaney mel over 300-4000 Hz: 500 Hz lies in the lowest third of the bands, 2500 Hz in the upper half.
    assert peak_band[0] < c.n_mels // 3 and peak_band[1] > c.n_mels // 2


def test_frontend_batch_independent():
    fe = LogMelFrontend()
    a, b = tone(700), 0.001 * tone(1200)
    together = fe(torch.stack([a, b]))
    alone = fe(b[None])
    assert torch.allclose(together[1], alone[0], atol=1e-5)


def test_frontend_rejects_wrong_rank():
    with pytest.raises(ValueError, match="batch, samples"):
        LogMelFrontend()(torch.zeros(8000))


def test_frontend_config_round_trip():
    c = FrontendConfig()
    assert FrontendConfig.from_dict(c.to_dict()) == c
    assert c.n_frames == 32
    with pytest.raises(ValueError, match="unknown"):
        FrontendConfig.from_dict({**c.to_dict(), "bogus": 1})


@pytest.mark.parametrize("preset", ["small", "nafp"])
def test_fingerprinter_shapes_and_unit_norm(preset):
    torch.manual_seed(0)
    model = Fingerprinter(model_config_from(preset)).eval()
    with torch.inference_mode():
        z = model(torch.randn(3, 8000) * 0.1)
    assert z.shape == (3, 128)
    assert torch.allclose(z.norm(dim=1), torch.ones(3), atol=1e-5)


def test_preset_sizes():
    nafp = count_parameters(Fingerprinter(model_config_from("nafp")))
    small = count_parameters(Fingerprinter(model_config_from("small")))
    assert 16_000_000 < nafp < 18_000_000  # the paper's ~17 M (full-shape LayerNorm affines included)
    assert small < nafp / 5


def test_encoder_reduces_to_one_by_one_with_nafp_strides():
    enc = Encoder(TINY)
    shapes = []
    x = torch.zeros(2, 1, 256, 32)
    for block in enc.blocks:
        x = block(x)
        shapes.append(tuple(x.shape[2:]))
    # Frequency halves in every block; time halves except in blocks 5 and 7 (NAFP strides).
    assert shapes == [(128, 16), (64, 8), (32, 4), (16, 2), (8, 2), (4, 1), (2, 1), (1, 1)]


def test_layer_norm_covers_channels_freq_time():
    enc = Encoder(TINY)
    assert tuple(enc.blocks[0].norm_t.normalized_shape) == (4, 256, 16)


def test_division_head_equals_separate_group_mlps():
    torch.manual_seed(1)
    head = DivisionHead(channels=16, dim=4, hidden=3)
    x = torch.randn(5, 16)
    out = head(x)
    w1, b1 = head.fc1.weight[:, :, 0], head.fc1.bias  # (dim*hidden, C/dim)
    w2, b2 = head.fc2.weight[:, :, 0], head.fc2.bias  # (dim, hidden)
    expected = []
    for g in range(4):
        xg = x[:, 4 * g:4 * g + 4]
        h = F.elu(xg @ w1[3 * g:3 * g + 3].T + b1[3 * g:3 * g + 3])
        expected.append(h @ w2[g] + b2[g])
    assert torch.allclose(out, torch.stack(expected, 1), atol=1e-6)


def test_cpu_elu_matches_reference_value_and_gradient():
    x = torch.linspace(-30, 5, 1001, dtype=torch.float32, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    y, y_ref = elu(x), F.elu(x_ref)
    assert torch.allclose(y, y_ref, atol=1e-6)
    y.sum().backward()
    y_ref.sum().backward()
    assert torch.allclose(x.grad, x_ref.grad, atol=1e-6)


def test_cpu_elu_without_gradients_reuses_its_input_and_gives_the_same_values():
    x = torch.linspace(-30, 5, 1001, dtype=torch.float32)
    expected = F.elu(x)
    with torch.inference_mode():
        y = elu(x.clone())
    assert torch.allclose(y, expected, atol=1e-6)
    with torch.no_grad():
        given = x.clone()
        y = elu(given)
        assert y.data_ptr() == given.data_ptr()  # no new activation memory where nothing records a graph
    assert torch.allclose(y, expected, atol=1e-6)
    # A model's output is the same whether or not gradients are recorded.
    torch.manual_seed(0)
    model = Fingerprinter(ModelConfig(channels=[8] * 8, dim=8, head_hidden=4)).eval()
    wav = torch.randn(3, 8000) * 0.1
    with torch.no_grad():
        fast = model(wav)
    assert torch.allclose(model(wav), fast, atol=1e-5)


def test_model_config_validation():
    with pytest.raises(ValueError, match="divisible by dim"):
        ModelConfig(channels=[4] * 8, dim=3)
    with pytest.raises(ValueError, match="time strides"):
        ModelConfig(channels=[4] * 7, dim=4)
    with pytest.raises(ValueError, match="unknown preset"):
        model_config_from("huge")
    cfg = model_config_from("nafp", channels=[8] * 8, dim=8)
    assert cfg.channels == [8] * 8 and cfg.dim == 8 and cfg.preset == "nafp"
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


# --- model file --------------------------------------------------------------------------------------------------

@pytest.fixture
def saved_model(tmp_path):
    torch.manual_seed(2)
    model = Fingerprinter(TINY).eval()
    path = tmp_path / "model.pt"
    save_model(path, model.state_dict(), model.model_config, model.frontend_config, {"epochs": 3, "val_top1": 0.5})
    return model, path


def test_model_file_round_trip(saved_model):
    model, path = saved_model
    payload = torch.load(path, weights_only=True)  # no pickled code needed
    assert payload["format"] == MODEL_FORMAT and payload["train_meta"]["epochs"] == 3
    loaded = load_fingerprinter(path)
    assert not loaded.training
    wav = torch.randn(2, 8000) * 0.1
    with torch.inference_mode():
        assert torch.equal(loaded(wav), model(wav))
    assert loaded.model_config == TINY and loaded.dim == 8


def test_model_checksum(saved_model, tmp_path):
    _, path = saved_model
    c = model_checksum(path)
    assert len(c) == 16 and int(c, 16) >= 0
    assert model_checksum(path) == c
    other = tmp_path / "other.pt"
    other.write_bytes(path.read_bytes() + b"x")
    assert model_checksum(other) != c


def test_a_model_file_that_differs_from_its_recorded_checksum_is_refused(saved_model, tmp_path):
    import hashlib
    import shutil

    from workflow_lib.model.model_file import verify_checksum

    _, path = saved_model
    copy = tmp_path / "bundled.pt"
    shutil.copy(path, copy)
    with pytest.raises(ModelFileError, match="no recorded checksum"):
        verify_checksum(copy)
    (tmp_path / "bundled.pt.sha256").write_text(hashlib.sha256(copy.read_bytes()).hexdigest() + "  bundled.pt\n")
    verify_checksum(copy)  # as recorded: accepted
    copy.write_bytes(copy.read_bytes()[:-10])  # damaged
    with pytest.raises(ModelFileError, match="does not match the recorded"):
        verify_checksum(copy)


def test_model_file_errors_name_the_file(saved_model, tmp_path):
    _, path = saved_model
    with pytest.raises(ModelFileError, match="not found"):
        load_fingerprinter(tmp_path / "missing.pt")
    with pytest.raises(ModelFileError, match="not found"):
        model_checksum(tmp_path / "missing.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ModelFileError, match="truncated.pt.*corrupt"):
        load_fingerprinter(truncated)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(np.random.default_rng(0).bytes(2000))
    with pytest.raises(ModelFileError, match=r"garbage.pt: not a model file \(a model file is what training"):
        read_model_file(garbage)
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(ModelFileError, match=r"empty.pt: empty file \(0 bytes\), not a model file"):
        load_fingerprinter(tmp_path / "empty.pt")
    wrong = tmp_path / "wrong.pt"
    torch.save({"format": "something-else", "state_dict": {}}, wrong)
    with pytest.raises(ModelFileError, match="not a nafp-model/1"):
        load_fingerprinter(wrong)
    mismatched = tmp_path / "mismatched.pt"
    payload = torch.load(path, weights_only=True)
    payload["model_config"]["channels"] = [8] * 8
    torch.save(payload, mismatched)
    with pytest.raises(ModelFileError, match="do not match"):
        load_fingerprinter(mismatched)


def test_cpu_inference_in_chunks_equals_one_batch():
    torch.manual_seed(3)
    model = Fingerprinter(TINY).eval()
    wav = torch.randn(70, 8000) * 0.1  # > CPU_INFERENCE_CHUNK: split into 32 + 32 + 6
    with torch.no_grad():
        chunked = model(wav)
    whole = model(wav).detach()  # grad enabled: one batch
    assert torch.allclose(chunked, whole, atol=1e-5)


# --- PCEN front end ----------------------------------------------------------------------------------------------

def test_pcen_removes_a_static_band_gain_and_keeps_onsets():
    from workflow_lib.model.features import pcen

    torch.manual_seed(0)
    mel = torch.rand(1, 8, 32) + 0.5  # (batch, bands, frames)
    mel[:, :, 20:] *= 20.0  # an onset in every band at frame 20
    coloured = mel * torch.logspace(-1.5, 1.5, 8)[None, :, None]  # a +-30 dB static colouring across the bands
    a, b = pcen(mel, 31.25), pcen(coloured, 31.25)
    # Each band is divided by its own smoothed level: the colouring is (almost: gain 0.98) gone...
    assert (a - b).abs().max() < 0.1 * a.abs().max()
    # ...where a log spectrum would carry it whole (3 decades across the bands).
    spread = torch.log10(coloured).mean(-1)
    assert spread.max() - spread.min() > 2.5
    # The onset stands out, and a level that only sustains sinks back towards the steady value.
    assert (a[:, :, 20] > 2 * a[:, :, 15]).all() and (a[:, :, 31] < 0.6 * a[:, :, 20]).all()


def test_log_cmn_removes_a_static_band_gain_and_keeps_the_dynamics():
    from workflow_lib.model.features import log_mel_band_centred

    torch.manual_seed(0)
    mel = torch.rand(1, 8, 32) * 50 + 100.0  # well above the log offset
    mel[:, :, 20:] *= 20.0  # an onset in every band at frame 20
    coloured = mel * torch.logspace(-1.5, 1.5, 8)[None, :, None] * 3.0  # +-30 dB colouring and a gain
    a, b = log_mel_band_centred(mel, 0.06), log_mel_band_centred(coloured, 0.06)
    assert torch.allclose(a.mean(-1), torch.zeros(1, 8), atol=1e-5)  # each band centred on its own mean
    assert (a - b).abs().max() < 0.01  # the colouring and the gain are gone (up to the offset)
    assert (a[:, :, 20:].mean(-1) - a[:, :, :20].mean(-1) > 1.2).all()  # the 26 dB onset is kept in full


def test_frontend_compressions_and_their_identity():
    wav = tone(1000.0)[None] * torch.linspace(0.2, 1.0, 8000)
    assert LogMelFrontend(FrontendConfig(compression="pcen"))(wav).shape == (1, 1, 256, 32)
    assert LogMelFrontend(FrontendConfig(compression="log-cmn"))(wav).shape == (1, 1, 256, 32)
    both = LogMelFrontend(FrontendConfig(compression="log+pcen"))(wav)
    assert both.shape == (1, 2, 256, 32)
    assert torch.equal(both[:, :1], LogMelFrontend()(wav))  # the first channel is the log-mel of old
    centred = LogMelFrontend(FrontendConfig(compression="log+log-cmn"))(wav)
    assert centred.shape == (1, 2, 256, 32) and torch.equal(centred[:, :1], both[:, :1])
    assert torch.equal(centred[:, 1:], LogMelFrontend(FrontendConfig(compression="log-cmn"))(wav))
    swapped = LogMelFrontend(FrontendConfig(compression="log-cmn+log"))(wav)  # the same channels, other order
    assert torch.equal(swapped, centred.flip(1))
    # The log front end's identity (recorded with every shard and index) is what it was before PCEN existed.
    assert set(FrontendConfig().to_dict()) == {"sample_rate", "segment_samples", "n_fft", "hop_length", "n_mels",
                                               "f_min", "f_max", "log_offset"}
    c = FrontendConfig(compression="log+pcen", pcen_t_s=0.2)
    assert FrontendConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="unknown compression"):
        FrontendConfig(compression="cubic")


def test_a_two_channel_model_file_round_trips(tmp_path):
    torch.manual_seed(3)
    model = Fingerprinter(TINY, FrontendConfig(compression="log+pcen")).eval()
    path = tmp_path / "model.pt"
    save_model(path, model.state_dict(), model.model_config, model.frontend_config, {"epochs": 1})
    loaded = load_fingerprinter(path)
    wav = torch.randn(2, 8000) * 0.1
    with torch.inference_mode():
        assert torch.equal(loaded(wav), model(wav))
    assert loaded.frontend_config.compression == "log+pcen"


def test_an_ensemble_scores_by_the_weighted_mean_of_its_members_cosines(tmp_path):
    from workflow_lib.model.model_file import ENSEMBLE_FORMAT, save_ensemble

    torch.manual_seed(4)
    a = Fingerprinter(TINY).eval()
    b = Fingerprinter(TINY, FrontendConfig(compression="log-cmn")).eval()
    pa, pb, pe = tmp_path / "a.pt", tmp_path / "b.pt", tmp_path / "ens.pt"
    for m, p in ((a, pa), (b, pb)):
        save_model(p, m.state_dict(), m.model_config, m.frontend_config, {"epochs": 1})
    save_ensemble(pe, [pa, pb], [0.7, 0.3], {"note": "test"})
    assert torch.load(pe, weights_only=True)["format"] == ENSEMBLE_FORMAT
    ens = load_fingerprinter(pe)
    assert ens.dim == 16 and not ens.training
    wav = torch.randn(4, 8000) * 0.1
    with torch.inference_mode():
        z, za, zb = ens(wav), a(wav), b(wav)
    assert torch.allclose(z.norm(dim=1), torch.ones(4), atol=1e-5)
    assert torch.allclose(z @ z.T, 0.7 * (za @ za.T) + 0.3 * (zb @ zb.T), atol=1e-5)
    # the members share one mel spectrogram (they differ only after it), and get exactly their own fingerprints
    assert ens.shared_mel
    calls = []
    for m in ens.members:
        m.frontend.mel.register_forward_hook(lambda *_: calls.append(1))
    with torch.inference_mode():
        assert torch.equal(ens(wav), torch.cat([za * 0.7 ** 0.5, zb * 0.3 ** 0.5], dim=1))
    assert len(calls) == 1
    # members whose mel differs (another band range) each compute their own
    c = Fingerprinter(TINY, FrontendConfig(f_min=200.0)).eval()
    mixed = EnsembleFingerprinter([a, c], [0.5, 0.5])
    with torch.inference_mode():
        assert not mixed.shared_mel and torch.equal(mixed(wav), torch.cat([za, c(wav)], dim=1) * 0.5 ** 0.5)
    # its identity names both front ends and the weights: fingerprints of another mix are not interchangeable
    ident = ens.frontend_config.to_dict()
    assert ident["weights"] == [0.7, 0.3] and ident["ensemble"][1]["compression"] == "log-cmn"
    # a single-model reader refuses it by name (fine-tuning starts from one of its members, not from it)
    with pytest.raises(ModelFileError, match="ensemble of 2 models"):
        read_model_file(pe)


def test_an_ensemble_file_is_checked_before_it_is_written_and_when_it_is_read(saved_model, tmp_path):
    from workflow_lib.model.model_file import save_ensemble

    _, path = saved_model
    out = tmp_path / "ens.pt"
    with pytest.raises(ValueError, match="sum to 1"):
        save_ensemble(out, [path, path], [0.5, 0.6])
    with pytest.raises(ValueError, match="at least two"):
        save_ensemble(out, [path], [1.0])
    with pytest.raises(ModelFileError, match="not found"):
        save_ensemble(out, [path, tmp_path / "missing.pt"], [0.5, 0.5])
    assert not out.exists()
    save_ensemble(out, [path, path], [0.5, 0.5])
    payload = torch.load(out, weights_only=True)
    payload["members"][1]["model_config"]["channels"] = [8] * 8
    broken = tmp_path / "broken.pt"
    torch.save(payload, broken)
    with pytest.raises(ModelFileError, match=r"broken.pt \(member 1\).*do not match"):
        load_fingerprinter(broken)
