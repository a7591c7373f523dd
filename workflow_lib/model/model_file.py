"""The model file (``model.pt``): save, load, checksum. Format in docs/ARCHITECTURE.md ("Model file").

A plain dict of tensors and JSON-like values, so it loads with ``torch.load(..., weights_only=True)`` (no pickled
code runs when a model file is opened).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from workflow_lib.audio.segments import check_framing
from workflow_lib.common.atomic import atomic_path, file_digest
from workflow_lib.model.ensemble import EnsembleFingerprinter
from workflow_lib.model.features import FrontendConfig
from workflow_lib.model.network import Fingerprinter, ModelConfig

MODEL_FORMAT = "nafp-model/1"
ENSEMBLE_FORMAT = "nafp-ensemble/1"


class ModelFileError(RuntimeError):
    """A model file is missing, unreadable, corrupt or of another format; the message names the file."""


def cpu_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def save_model(path: str | Path, state_dict: dict[str, torch.Tensor], model_config: ModelConfig,
               frontend_config: FrontendConfig, train_meta: dict[str, Any]) -> None:
    """Write ``model.pt`` atomically. ``train_meta`` must be JSON-like (it is stored as plain values so the file
    loads with ``weights_only=True``)."""
    try:
        train_meta = json.loads(json.dumps(train_meta))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"train_meta must hold only JSON-like values ({exc})") from exc
    payload = {"format": MODEL_FORMAT, "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
               "model_config": model_config.to_dict(), "frontend_config": frontend_config.to_dict(),
               "train_meta": train_meta}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _load_payload(path: Path) -> Any:
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found (train one with `snakemake ... results/model/model.pt`)")
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        raise ModelFileError(f"{path}: empty file (0 bytes), not a model file")
    if head != b"PK\x03\x04":  # torch.save writes a zip archive; torch's own error for anything else is a page
        raise ModelFileError(f"{path}: not a model file (a model file is what training writes, a PyTorch archive)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, disallowed pickled objects...
        raise ModelFileError(f"{path}: not a readable model file, it may be corrupt or truncated "
                             f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from exc


def _check_model_payload(payload: Any, where: str) -> dict[str, Any]:
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ModelFileError(f"{where}: not a {MODEL_FORMAT} model file (format: {found!r})")
    missing = {"state_dict", "model_config", "frontend_config", "train_meta"} - set(payload)
    if missing:
        raise ModelFileError(f"{where}: model file lacks {sorted(missing)}")
    fe = payload["frontend_config"] if isinstance(payload["frontend_config"], dict) else {}
    try:
        check_framing(where, fe.get("sample_rate"), fe.get("segment_samples"))
    except ValueError as exc:
        raise ModelFileError(str(exc)) from None
    return payload


def read_model_file(path: str | Path) -> dict[str, Any]:
    """The validated payload dict of a (single) model file; an ensemble file is refused with a clear message."""
    path = Path(path)
    payload = _load_payload(path)
    if isinstance(payload, dict) and payload.get("format") == ENSEMBLE_FORMAT:
        raise ModelFileError(f"{path}: an ensemble of {len(payload.get('members', []))} models, not a single "
                             "model (use one of the models it was made from here)")
    return _check_model_payload(payload, str(path))


def save_ensemble(path: str | Path, member_paths: list[str | Path], weights: list[float],
                  meta: dict[str, Any] | None = None) -> None:
    """Write an ensemble model file (``nafp-ensemble/1``) holding the given model files whole, atomically. The
    ensemble is built once first, so members that would not load, or would not fit together (framing, weights),
    are refused here rather than when the file is used."""
    members = [read_model_file(p) for p in member_paths]
    try:
        EnsembleFingerprinter([_fingerprinter_from(m, str(p)) for m, p in zip(members, member_paths)], weights)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    meta = json.loads(json.dumps(meta or {}))
    meta["members"] = [{"file": Path(p).name, "checksum": model_checksum(p)} for p in member_paths]
    payload = {"format": ENSEMBLE_FORMAT, "members": members, "weights": [float(w) for w in weights],
               "train_meta": meta}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _fingerprinter_from(payload: dict[str, Any], where: str) -> Fingerprinter:
    try:
        model = Fingerprinter(ModelConfig.from_dict(payload["model_config"]),
                              FrontendConfig.from_dict(payload["frontend_config"]))
        model.load_state_dict(payload["state_dict"])
    except (ValueError, TypeError, RuntimeError) as exc:
        raise ModelFileError(f"{where}: weights do not match the stored model config ({exc})") from exc
    return model


def load_fingerprinter(path: str | Path, device: str | torch.device = "cpu") -> Fingerprinter | EnsembleFingerprinter:
    """The ready fingerprinter (front end + encoder, or an ensemble of them) in eval mode on ``device``."""
    path = Path(path)
    payload = _load_payload(path)
    if isinstance(payload, dict) and payload.get("format") == ENSEMBLE_FORMAT:
        members = payload.get("members")
        if not isinstance(members, list):
            raise ModelFileError(f"{path}: ensemble file lacks its member models")
        models = [_fingerprinter_from(_check_model_payload(m, f"{path} (member {i})"), f"{path} (member {i})")
                  for i, m in enumerate(members)]
        try:  # the ensemble checks the weights and that the members frame the audio alike
            model: Fingerprinter | EnsembleFingerprinter = EnsembleFingerprinter(models, payload.get("weights") or [])
        except ValueError as exc:
            raise ModelFileError(f"{path}: {exc}") from None
    else:
        model = _fingerprinter_from(_check_model_payload(payload, str(path)), str(path))
    return model.to(device).eval()


def model_checksum(path: str | Path) -> str:
    """SHA-256 of the file's bytes, first 16 hex digits: stamped into shards and the index to refuse mismatches."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found")
    return file_digest(path)


def verify_checksum(path: str | Path, checksum_file: str | Path | None = None) -> None:
    """Refuse a model file whose SHA-256 differs from the one recorded beside it (``<path>.sha256``, as for the
    bundled model): a damaged, truncated or replaced file would otherwise be used silently."""
    path = Path(path)
    checksum_file = Path(checksum_file) if checksum_file else path.with_name(path.name + ".sha256")
    if not checksum_file.is_file():
        raise ModelFileError(f"{path}: no recorded checksum ({checksum_file} is missing)")
    want = checksum_file.read_text().split()[0].strip().lower()
    got = file_digest(path, 64) if path.is_file() else "missing"
    if got != want:
        raise ModelFileError(f"{path}: SHA-256 {got[:16]}... does not match the recorded {want[:16]}... "
                             f"({checksum_file}): the file is damaged or was replaced; restore it "
                             "(git checkout models/) or point model.source at another model file")
