"""Resumable contrastive training of the fingerprinter (NT-Xent, LAMB, warm-up + cosine), with validation.

One epoch visits every 1 s segment (0.5 s hop) of the training songs once, in a seeded shuffled order; each segment
gives a pair of independently jittered and degraded views. After every epoch: validation (NT-Xent on fixed
validation pairs and the top-1 hit rate of fixed degraded 1 s queries against every clean validation segment by
exact search), a row in ``metrics.csv``, the curves figure, and an atomic checkpoint holding everything needed to
continue (weights, optimizer, scheduler, AMP scaler, best weights, history, elapsed time). A killed run started
again continues after the last finished epoch; every random choice of epoch ``e`` derives from (seed, e), so the
result equals an uninterrupted run's.
"""

from __future__ import annotations

import logging
import math
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from workflow_lib import HOP_SAMPLES, SEGMENT_SAMPLES
from workflow_lib.audio.segments import frame
from workflow_lib.common.atomic import atomic_path
from workflow_lib.common.progress import progress
from workflow_lib.data.clipbank import ClipBank
from workflow_lib.model.embed import resolve_device
from workflow_lib.model.features import FrontendConfig
from workflow_lib.model.model_file import cpu_state_dict, model_checksum, save_model
from workflow_lib.model.network import Fingerprinter, ModelConfig, count_parameters
from workflow_lib.training.augment import (ViewParams, degrade, drop_first_channel, lpc_whiten_rows, mask_spectrogram,
                                           set_peak_db)
from workflow_lib.training.batches import BatchStream, view_workers
from workflow_lib.training.checkpoint import (CheckpointError, load_checkpoint, load_initial_weights, run_fingerprint,
                                              save_checkpoint, table_digest)
from workflow_lib.training.data import ViewBatch, ViewSource
from workflow_lib.training.losses import nt_xent
from workflow_lib.training.partner import Partner
from workflow_lib.training.plots import plot_training_curves
from workflow_lib.training.settings import TrainConfig

log = logging.getLogger(__name__)

METRIC_COLUMNS = ["epoch", "steps", "train_loss", "val_loss", "val_top1", "val_near", "val_song", "lr",
                  "sec_per_step", "pairs_per_s", "epoch_s", "elapsed_min"]
LOG_EVERY_S = 120.0


def codec_bank(song_bank: str | Path) -> ClipBank | None:
    """The codec copy written beside a song bank (``{prefix}_codec``), or None when it was not built."""
    prefix = Path(song_bank)
    codec = prefix.with_name(prefix.name + "_codec")
    if not codec.with_suffix(".npy").exists():
        return None
    return ClipBank(codec)


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine decay to ``min_ratio`` at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def epoch_label(epoch: int, schedule: str, horizon_epochs: int, max_epochs: int) -> str:
    """The progress bar's name for an epoch, with the count the run expects: with the time schedule, the epochs
    fitted after the first one. The first epoch's time includes the set-up, so the later ones can leave room for
    more than were fitted: those run on at the schedule's final rate (the best epoch is kept either way)."""
    if schedule == "time" and epoch == 1:
        return f"epoch 1 of \u2264{max_epochs}"
    if epoch > horizon_epochs:
        return f"epoch {epoch} (past the {horizon_epochs} fitted: final rate)"
    return f"epoch {epoch}/{horizon_epochs}"


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, warmup_steps: int, horizon: dict[str, int]
                   ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """LAMB (pytorch-optimizer's maintained implementation) with a per-step warm-up + cosine schedule.

    ``horizon["steps"]`` is where the cosine ends; it is read at every step, so the caller can fit it to the time
    budget once the first epoch has been timed.
    """
    from pytorch_optimizer import Lamb

    optimizer = Lamb(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, warmup_steps, horizon["steps"], cfg.min_lr_ratio))
    return optimizer, scheduler


def _to_device(views: ViewBatch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                               ViewParams, torch.Tensor | None]:
    pin = device.type == "cuda"

    def t(a: np.ndarray | torch.Tensor) -> torch.Tensor:
        # Worker processes hand tensors over (already pinned by the loader on a GPU); the thread, arrays.
        x = a if isinstance(a, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(a))
        if not pin:
            return x
        return (x if x.is_pinned() else x.pin_memory()).to(device, non_blocking=True)

    dev = t(views.device_irs) if views.device_irs is not None else None
    return t(views.audio), t(views.irs), t(views.noise), views.params.to_torch(device), dev


@torch.no_grad()
def degrade_views(views: ViewBatch, device: torch.device) -> tuple[torch.Tensor, ViewParams]:
    audio, irs, noise, params, device_irs = _to_device(views, device)
    if views.whiten is None:
        return degrade(audio, irs, noise, params, SEGMENT_SAMPLES, device_irs=device_irs), params
    # Only the whitened views are degraded over the predictor's fit length (SNR measured on the view itself), then
    # through their own inverse filter and cut to the segment at the drawn level; the others as a run without
    # whitening degrades them (``degrade`` uses only the history it needs): the long degradation is paid only
    # where it is used.
    whitened = torch.from_numpy(views.whiten).to(audio.device)
    plain = ~whitened

    def dev(rows: torch.Tensor) -> torch.Tensor | None:
        return device_irs[rows] if device_irs is not None else None

    wav = torch.empty(len(whitened), SEGMENT_SAMPLES, dtype=torch.float32, device=audio.device)
    if bool(plain.any()):
        wav[plain] = degrade(audio[plain], irs[plain], noise[plain], params.take(plain), SEGMENT_SAMPLES,
                             device_irs=dev(plain))
    if bool(whitened.any()):
        long = degrade(audio[whitened], irs[whitened], noise[whitened], params.take(whitened), views.fit_len,
                       device_irs=dev(whitened), measure_last=SEGMENT_SAMPLES)
        wav[whitened] = set_peak_db(lpc_whiten_rows(long, views.whiten_order)[..., -SEGMENT_SAMPLES:],
                                    params.gain_db[whitened])
    return wav, params


@torch.no_grad()
def embed(model: torch.nn.Module, wav: torch.Tensor, batch: int, device: torch.device,
          autocast: dict[str, Any]) -> torch.Tensor:
    """L2-normalised embeddings of waveforms (N, 8000), in batches, as float32 on ``device``."""
    out = []
    for i in range(0, len(wav), batch):
        with torch.autocast(**autocast):
            out.append(model(wav[i:i + batch].to(device)).float())
    return torch.cat(out) if out else torch.zeros(0, model.dim, device=device)


def train_step(model: Fingerprinter, views: ViewBatch, optimizer: torch.optim.Optimizer, scheduler: Any,
               scaler: Any, temperature: float, device: torch.device, autocast: dict[str, Any],
               partner: Partner | None = None) -> float:
    """One optimisation step on a batch of pairs (anchors first, then positives); returns the loss. With a
    ``partner``, the loss is the ensemble's (the partner's fingerprints fixed beside the model's)."""
    wav, params = degrade_views(views, device)
    with torch.autocast(**autocast):
        spec = mask_spectrogram(model.frontend(wav), params.time_mask, params.freq_mask)
        if views.first_channel_off is not None:
            spec = drop_first_channel(spec, torch.from_numpy(views.first_channel_off))
        z = model.encoder(spec)
        if partner is not None:
            z = partner.combine(wav, z)
        half = len(z) // 2
        loss = nt_xent(z[:half], z[half:], temperature)
    optimizer.zero_grad(set_to_none=True)
    if torch.isfinite(loss):  # a non-finite loss is reported by the caller; never step on it
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
    return loss.item()


class Validator:
    """Fixed validation pairs/queries (drawn once per run from the seed) and the clean segment database."""

    def __init__(self, source: ViewSource, cfg: TrainConfig, device: torch.device):
        self.source, self.cfg, self.device = source, cfg, device
        n = min(cfg.val_queries, len(source))
        rng = np.random.default_rng([cfg.seed, 2])
        self.rows = np.sort(rng.choice(len(source), n, replace=False)) if n else np.zeros(0, np.int64)
        # Degraded once, in chunks so a large query set never needs one huge FFT batch.
        chunks_a, chunks_b = [], []
        for i in range(0, n, cfg.eval_batch):
            pair = source.pairs(rng, self.rows[i:i + cfg.eval_batch])
            wav, _ = degrade_views(pair, device)
            half = len(wav) // 2
            # Queries are the positives: always degraded (an anchor may be the clean segment itself).
            chunks_a.append(wav[half:].cpu())
            chunks_b.append(wav[:half].cpu())
        self.queries = torch.cat(chunks_a) if chunks_a else torch.zeros(0, SEGMENT_SAMPLES)
        self.partners = torch.cat(chunks_b) if chunks_b else torch.zeros(0, SEGMENT_SAMPLES)

    def __len__(self) -> int:
        return len(self.rows)

    def database(self, model: torch.nn.Module, autocast: dict[str, Any]) -> torch.Tensor:
        """Embeddings of every clean segment of the validation songs, in the source's row order."""
        bank = self.source.songs
        parts = []
        for i in range(len(bank)):
            segs = frame(bank.clip(i), SEGMENT_SAMPLES, HOP_SAMPLES)
            for j in range(0, len(segs), self.cfg.eval_batch):
                parts.append(embed(model, torch.from_numpy(np.array(segs[j:j + self.cfg.eval_batch])),
                                   self.cfg.eval_batch, self.device, autocast))
        return torch.cat(parts)

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, autocast: dict[str, Any]) -> dict[str, float]:
        model.eval()
        try:
            q = embed(model, self.queries, self.cfg.eval_batch, self.device, autocast)
            p = embed(model, self.partners, self.cfg.eval_batch, self.device, autocast)
            bp = self.cfg.batch_pairs
            losses = [nt_xent(q[i:i + bp], p[i:i + bp], self.cfg.temperature).item()
                      for i in range(0, len(q) - bp + 1, bp)]
            if not losses and len(q) >= 2:  # fewer queries than one batch: one smaller batch
                losses = [nt_xent(q, p, self.cfg.temperature).item()]
            db = self.database(model, autocast)
            top1 = torch.cat([(q[i:i + 1024] @ db.T).argmax(1) for i in range(0, len(q), 1024)]).cpu().numpy()
        finally:
            model.train()
        true = self.rows
        src = self.source
        same_song = src.song_index[top1] == src.song_index[true]
        near = same_song & (np.abs(src.segment_index[top1] - src.segment_index[true]) <= 1)
        return {"val_loss": float(np.mean(losses)) if losses else float("nan"),
                "val_top1": float(np.mean(top1 == true)), "val_near": float(np.mean(near)),
                "val_song": float(np.mean(same_song))}


def train_model(train_bank: str | Path, val_bank: str | Path, noise_bank: str | Path | None,
                ir_bank: str | Path | None, model_path: str | Path, metrics_path: str | Path,
                curves_path: str | Path, checkpoint_path: str | Path, cfg: TrainConfig, model_cfg: ModelConfig,
                frontend_cfg: FrontendConfig | None = None, threads: int = 1,
                init_from: str | Path | None = None, partner: str | Path | None = None,
                partner_weight: float = 0.5) -> dict[str, Any]:
    """Train (or continue training) and write ``model.pt``, ``metrics.csv``, the curves PNG and the checkpoint.

    ``init_from`` (a model file) starts from its weights instead of random ones: fine-tuning a trained model (e.g.
    the bundled one) on a collection; its architecture must be ``model_cfg``'s. ``partner`` (a model file) trains
    the model as the second member of an ensemble with it, the partner held fixed (``training/partner.py``); the model's
    weight in it is ``partner_weight``, and validation scores the ensemble. The model alone is written.

    Bank arguments are clip-bank prefixes (``X`` for ``X.npy`` + ``X.parquet``). Returns the model's train_meta.
    """
    t_start = time.monotonic()
    frontend_cfg = frontend_cfg or FrontendConfig()
    torch.set_num_threads(max(1, int(threads)))
    device = resolve_device(cfg.device)
    use_amp = cfg.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    autocast = {"device_type": device.type, "dtype": amp_dtype, "enabled": use_amp}
    checkpoint_path = Path(checkpoint_path)

    if cfg.augment.first_channel_drop_prob > 0 and frontend_cfg.n_channels < 2:
        raise ValueError(f"train.augment.first_channel_drop_prob needs a front end of two or more channels "
                         f"(e.g. compression log+log-cmn); {frontend_cfg.compression!r} has one")
    train_songs, val_songs = ClipBank(train_bank), ClipBank(val_bank)
    noise = ClipBank(noise_bank) if noise_bank else None
    irs = ClipBank(ir_bank) if ir_bank else None
    codec_banks = [codec_bank(b) if cfg.augment.codec_prob > 0 else None for b in (train_bank, val_bank)]
    train_src = ViewSource(train_songs, noise, irs, cfg.augment, codec=codec_banks[0])
    if len(train_src) < cfg.batch_pairs:
        raise ValueError(f"{train_bank}: {len(train_src)} training segments, fewer than one batch of "
                         f"{cfg.batch_pairs} pairs (lower train.batch_size or add songs)")
    val_src = ViewSource(val_songs, noise, irs, cfg.augment, codec=codec_banks[1])
    steps_per_epoch = len(train_src) // cfg.batch_pairs
    horizon = {"steps": steps_per_epoch * cfg.max_epochs}
    warmup_steps = max(1, int(round(cfg.warmup_epochs * steps_per_epoch)))
    fingerprint = run_fingerprint(cfg, model_cfg, frontend_cfg, table_digest(train_songs, val_songs, noise, irs,
                                                                                    *codec_banks))

    torch.manual_seed(cfg.seed)
    model = Fingerprinter(model_cfg, frontend_cfg).to(device)
    if init_from is not None:
        load_initial_weights(model, init_from, model_cfg, frontend_cfg)
        fingerprint = run_fingerprint(cfg, model_cfg, frontend_cfg, fingerprint + model_checksum(init_from))
    fixed = Partner(partner, partner_weight, frontend_cfg, device) if partner is not None else None
    if fixed is not None:
        fingerprint = run_fingerprint(cfg, model_cfg, frontend_cfg, f"{fingerprint}+{fixed.checksum}:{fixed.weight}")
        log.info("training for an ensemble with %s (fixed, weight %.3g; this model's weight %.3g)", partner,
                 1 - fixed.weight, fixed.weight)
    optimizer, scheduler = make_optimizer(model, cfg, warmup_steps, horizon)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    workers = view_workers(cfg.view_workers, device)
    log.info("device %s (AMP %s), %d threads, batches drawn by %s; model %s: %d parameters; %d train songs / %d "
             "segments (%d steps of %d pairs per epoch); %d val songs / %d segments", device,
             amp_dtype if use_amp else "off", torch.get_num_threads(),
             f"{workers} worker processes" if workers else "a background thread", model_cfg.preset,
             count_parameters(model), len(train_songs), len(train_src), steps_per_epoch, cfg.batch_pairs,
             len(val_songs), len(val_src))

    # Progress of the running job beside the checkpoint: the declared outputs appear only when it finishes, so a
    # kill never leaves an output that looks complete.
    live_metrics = checkpoint_path.parent / "metrics.csv"
    live_curves = checkpoint_path.parent / "training_curves.png"  # (a save killed half-way: atomic_path's cleanup)
    # "partial": progress inside the running epoch (a mid-epoch checkpoint), None at an epoch's end.
    state: dict[str, Any] = {"epoch": 0, "history": [], "best_score": -1.0, "best_epoch": 0, "best_state": None,
                             "elapsed_s": 0.0, "stop_reason": None, "horizon_epochs": cfg.max_epochs,
                             "partial": None, "start": None}
    if checkpoint_path.exists():
        ckpt = load_checkpoint(checkpoint_path)
        if ckpt.get("fingerprint") != fingerprint:
            log.warning("%s belongs to a different configuration or data set; starting from scratch (it will be "
                        "overwritten after the first epoch)", checkpoint_path)
        else:
            try:
                model.load_state_dict(ckpt["model"])
                optimizer.load_state_dict(ckpt["optimizer"])
                scheduler.load_state_dict(ckpt["scheduler"])
                scaler.load_state_dict(ckpt["scaler"])
                torch.set_rng_state(ckpt["torch_rng"])
                state.update({k: ckpt[k] for k in state if k not in ("partial", "start")})
                # absent in checkpoints written before mid-epoch saves / before the starting weights were scored
                state["partial"], state["start"] = ckpt.get("partial"), ckpt.get("start")
            except (KeyError, RuntimeError, ValueError) as exc:
                raise CheckpointError(f"{checkpoint_path}: checkpoint does not fit this model ({exc}). Delete it "
                                      "to train from scratch.") from exc
            horizon["steps"] = steps_per_epoch * state["horizon_epochs"]
            log.info("resuming from %s after epoch %d (best val top-1 %.3f at epoch %d)", checkpoint_path,
                     state["epoch"], state["best_score"], state["best_epoch"])
            if state["partial"]:
                log.info("... and %d steps into epoch %d", state["partial"]["step"], state["epoch"] + 1)

    validator = Validator(val_src, cfg, device) if len(val_src) else None
    if validator is None:
        log.warning("no validation segments: no validation metrics and no early stopping; the last epoch is kept")
    elif init_from is not None and state["epoch"] == 0 and state["partial"] is None and state["start"] is None:
        # A fine-tune must never hand back a model worse than the one it started from: the starting weights are
        # scored like an epoch (epoch 0) and kept unless an epoch beats them.
        state["start"] = {"epoch": 0, "steps": 0,
                          **validator.evaluate(fixed.ensemble(model) if fixed is not None else model, autocast)}
        state["best_score"], state["best_epoch"] = state["start"]["val_top1"], 0
        state["best_state"] = cpu_state_dict(model)
        log.info("epoch 0 (the starting weights of %s): val loss %.4f, val top-1 %.3f (near %.3f, song %.3f)",
                 init_from, state["start"]["val_loss"], state["start"]["val_top1"], state["start"]["val_near"],
                 state["start"]["val_song"])
    budget_s = cfg.max_minutes * 60
    prior_elapsed = state["elapsed_s"]

    def elapsed() -> float:
        return prior_elapsed + time.monotonic() - t_start

    # The workers outlive epochs; on an error they stop with the stream's last reference.
    stream = BatchStream(train_src, cfg.seed, cfg.batch_pairs, workers, pin=device.type == "cuda")
    model.train()
    while state["stop_reason"] is None:
        epoch = state["epoch"] + 1
        if epoch > cfg.max_epochs:
            state["stop_reason"] = "max_epochs"
            break
        last_epoch_s = state["history"][-1]["epoch_s"] if state["history"] else 0.0
        if state["history"] and not state["partial"] and elapsed() + last_epoch_s > budget_s:
            state["stop_reason"] = "max_minutes"
            log.info("stopping: another epoch (~%.0f s) would exceed train.max_minutes (%.1f)", last_epoch_s,
                     cfg.max_minutes)
            break
        partial = state["partial"] or {"step": 0, "losses": [], "train_s": 0.0}
        losses: list[float] = list(partial["losses"])
        t_epoch = time.monotonic() - partial["train_s"]  # the epoch's clock counts the steps before a kill
        if epoch > state["horizon_epochs"] and not partial["step"]:
            log.info("epoch %d: time is left past the %d epochs the schedule was fitted to; it runs at the "
                     "schedule's final rate", epoch, state["horizon_epochs"])
        bar = progress(stream.epoch(epoch, start=partial["step"]), total=steps_per_epoch, initial=partial["step"],
                       desc=epoch_label(epoch, cfg.schedule, state["horizon_epochs"], cfg.max_epochs), unit="step",
                       mininterval=2, leave=False)
        next_log = time.monotonic() + LOG_EVERY_S
        next_save = time.monotonic() + cfg.checkpoint_minutes * 60
        for views in bar:
            loss = train_step(model, views, optimizer, scheduler, scaler, cfg.temperature, device, autocast,
                              fixed)
            if not math.isfinite(loss):
                raise FloatingPointError(f"epoch {epoch}: loss is {loss} (lower train.lr?)")
            losses.append(loss)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", refresh=False)
            if time.monotonic() > next_log:  # the log file gets progress too, not only the terminal's bar
                next_log += LOG_EVERY_S
                log.info("epoch %d: step %d/%d, loss %.4f, %.0f pairs/s", epoch, len(losses), steps_per_epoch,
                         np.mean(losses[-20:]), len(losses) * cfg.batch_pairs / (time.monotonic() - t_epoch))
            if time.monotonic() >= next_save and len(losses) < steps_per_epoch:
                # An epoch of a long run takes most of an hour on a CPU: a kill must not throw it all away.
                next_save = time.monotonic() + cfg.checkpoint_minutes * 60
                state["partial"] = {"epoch": epoch, "step": len(losses), "losses": losses,
                                    "train_s": time.monotonic() - t_epoch}
                state["elapsed_s"] = elapsed()
                save_checkpoint(checkpoint_path, fingerprint, state, model, optimizer, scheduler, scaler)
        bar.close()
        state["partial"] = None
        train_s = time.monotonic() - t_epoch
        scored = fixed.ensemble(model) if fixed is not None else model  # what will be searched
        metrics = validator.evaluate(scored, autocast) if validator else \
            {"val_loss": float("nan"), "val_top1": float("nan"), "val_near": float("nan"), "val_song": float("nan")}
        epoch_s = time.monotonic() - t_epoch
        row = {"epoch": epoch, "steps": len(losses), "train_loss": float(np.mean(losses)), **metrics,
               "lr": optimizer.param_groups[0]["lr"], "sec_per_step": train_s / max(1, len(losses)),
               "pairs_per_s": len(losses) * cfg.batch_pairs / train_s, "epoch_s": epoch_s,
               "elapsed_min": elapsed() / 60}
        state["history"].append(row)
        state["epoch"] = epoch
        if cfg.schedule == "time" and epoch == 1:
            # Fit the cosine to the epochs the time budget allows, so a time-limited run still ends at a low LR.
            fit = int(budget_s // max(elapsed(), 1e-3))
            state["horizon_epochs"] = max(1, min(cfg.max_epochs, fit))
            horizon["steps"] = steps_per_epoch * state["horizon_epochs"]
            log.info("learning-rate schedule fitted to %d epochs (first epoch incl. set-up: %.0f s, budget %.1f min)",
                     state["horizon_epochs"], elapsed(), cfg.max_minutes)
        score = metrics["val_top1"] if validator else float(epoch)
        if score > state["best_score"]:
            state["best_score"], state["best_epoch"] = score, epoch
            state["best_state"] = cpu_state_dict(model)
        log.info("epoch %d: train loss %.4f, val loss %.4f, val top-1 %.3f (near %.3f, song %.3f), lr %.2e, "
                 "%.0f pairs/s, %.0f s", epoch, row["train_loss"], row["val_loss"], row["val_top1"], row["val_near"],
                 row["val_song"], row["lr"], row["pairs_per_s"], epoch_s)
        if validator and cfg.patience > 0 and epoch - state["best_epoch"] >= cfg.patience:
            state["stop_reason"] = "early_stopping"
            log.info("early stopping: no better val top-1 for %d epochs (best %.3f at epoch %d)", cfg.patience,
                     state["best_score"], state["best_epoch"])
        state["elapsed_s"] = elapsed()
        save_checkpoint(checkpoint_path, fingerprint, state, model, optimizer, scheduler, scaler)
        _write_metrics(_metric_rows(state), live_metrics, live_curves, state["best_epoch"])
    stream.close()

    if state["best_state"] is None:
        raise RuntimeError("training finished without a single epoch (train.max_epochs < 1?)")
    best = state["start"] if state["best_epoch"] == 0 else state["history"][state["best_epoch"] - 1]
    if state["best_epoch"] == 0:
        log.warning("no epoch beat the starting weights on validation (val top-1 %.3f): %s holds them unchanged",
                    best["val_top1"], model_path)
    train_meta = {
        "format_version": 1, "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "epochs": state["epoch"], "best_epoch": state["best_epoch"], "stop_reason": state["stop_reason"],
        "val_top1": best["val_top1"], "val_near": best["val_near"], "val_song": best["val_song"],
        "val_loss": best["val_loss"], "start_val_top1": state["start"]["val_top1"] if state["start"] else None,
        "val_queries": len(validator) if validator else 0, "train_songs": len(train_songs),
        "train_segments": len(train_src), "val_songs": len(val_songs), "val_segments": len(val_src),
        "train_minutes": state["elapsed_s"] / 60, "schedule_epochs": state["horizon_epochs"],
        "device": str(device), "amp": use_amp,
        "parameters": count_parameters(model), "torch": str(torch.__version__), "config": cfg.to_dict(),
        "fingerprint": fingerprint, "init_from": model_checksum(init_from) if init_from is not None else None,
        "partner": {"model": fixed.checksum, "weight": fixed.weight} if fixed is not None else None,
    }
    save_model(model_path, state["best_state"], model_cfg, frontend_cfg, train_meta)
    _write_metrics(_metric_rows(state), metrics_path, curves_path, state["best_epoch"])
    log.info("wrote %s: epoch %d of %d (stopped by %s), val top-1 %.3f", model_path, state["best_epoch"],
             state["epoch"], state["stop_reason"], best["val_top1"])
    return train_meta


def _metric_rows(state: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-epoch rows, after the starting weights' scores (epoch 0) when a fine-tune scored them."""
    return ([state["start"]] if state["start"] else []) + state["history"]


def _write_metrics(history: list[dict[str, Any]], metrics_path: str | Path, curves_path: str | Path,
                   best_epoch: int | None = None) -> None:
    table = pd.DataFrame(history, columns=METRIC_COLUMNS)
    with atomic_path(metrics_path) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    plot_training_curves(table, curves_path, best_epoch)


# Keys of the config's `train:` section that the rules use (not part of TrainConfig).
RULE_KEYS = {"threads", "val_max_songs", "codecs", "init", "partner", "partner_weight"}


def train_from_config(train_bank: str | Path, val_bank: str | Path, noise_bank: str | Path | None,
                      ir_bank: str | Path | None, model_path: str | Path, metrics_path: str | Path,
                      curves_path: str | Path, checkpoint_path: str | Path, model_section: dict[str, Any],
                      train_section: dict[str, Any], threads: int = 1,
                      init_from: str | Path | None = None,
                      partner: str | Path | None = None) -> dict[str, Any]:
    """``train_model`` driven by the ``model:`` and ``train:`` sections of config/config.yaml (``init_from`` and
    ``partner``: the model files ``train.init`` and ``train.partner`` name, resolved by the rule)."""
    from workflow_lib.model.network import model_config_from

    m = {k: v for k, v in model_section.items() if k != "source"}  # where the model comes from: the rules' business
    model_cfg = model_config_from(m.pop("preset"), channels=m.pop("channels", None) or None, dim=m.pop("dim", None),
                                  head_hidden=m.pop("head_hidden", None))
    frontend_cfg = FrontendConfig(compression=m.pop("compression", "log"))
    if m:
        raise ValueError(f"config model: unknown keys {sorted(m)}")
    cfg = TrainConfig.from_dict({k: v for k, v in train_section.items() if k not in RULE_KEYS})
    return train_model(train_bank, val_bank, noise_bank, ir_bank, model_path, metrics_path, curves_path,
                       checkpoint_path, cfg, model_cfg, frontend_cfg, threads=threads, init_from=init_from,
                       partner=partner, partner_weight=float(train_section.get("partner_weight", 0.5)))
