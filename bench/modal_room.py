"""The resonant weak spot on a physically different generator: small rigid rooms as a sum of their modes (issue 11).

The evaluation's resonant spaces come from the generators that training also uses (``data/acoustics.py``: 3-40
random modes or damped combs, the direct sound 5-25 dB under the ringing), so the model may have learnt that
generator rather than ringing. Here the same song starts as the evaluation's ``resonant`` queries are played
instead through small tiled rooms (a shower cubicle, a small bathroom or stairwell: 0.9-2.6 m, RT60 0.8-2.0 s),
whose response is the modal expansion of the wave equation in a rigid-walled box (Kuttruff, *Room Acoustics*,
ch. 3): every mode (nx, ny, nz) up to 3.9 kHz, about 15,000-65,000 of them, weighted by its shape at the source
and the microphone, each decaying at a rate set by the room's RT60 at its frequency with a per-mode spread (axial
modes hit fewer walls). Below the Schroeder frequency (0.5-2.2 kHz here) the modes stand apart and ring:
the narrow resonances of issue 11; above it they overlap into a dense tail. Nothing in training draws this.

The queries (the evaluation's unseen-song and unknown-song ``resonant`` starts, clean and at 5 dB with the run's
held-out noise) are written as files and answered by the evaluation's own code (``run_neural``, the product's
search; with ``--audfprint``, also audfprint on a database of the run's songs), and scored by its metrics.

``--family direct-ring`` plays them instead through training's own few-mode generator with the direct sound 0-10 dB
above the ringing (training draws it 5-25 dB under): few narrow resonances towering over a flat response.

    .venv/bin/python bench/modal_room.py RESULTS --out DIR [--family modal-room|direct-ring] [--rooms 16]
        [--lengths 1 3 5 10] [--audfprint]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import soundfile as sf  # noqa: E402

from workflow_lib import SAMPLE_RATE  # noqa: E402
from workflow_lib.audio.files import load_audio  # noqa: E402
from workflow_lib.common.atomic import write_parquet_atomic  # noqa: E402
from workflow_lib.data.acoustics import LN1000, estimate_rt60, modal_response  # noqa: E402
from workflow_lib.data.clipbank import ClipBank  # noqa: E402
from workflow_lib.evaluation.degrade import add_noise, limit_peak, reverberate  # noqa: E402
from workflow_lib.evaluation.metrics import compute_metrics  # noqa: E402

C = 343.0  # speed of sound, m/s
F_MAX = 3900.0  # the model hears up to 4 kHz; modes above would alias at 8 kHz
CONDITIONS = {"": None, "5 dB + ": 5.0}  # condition name prefixes


def modal_room(rng: np.random.Generator, rt60_s: float, dims_m: np.ndarray, src: np.ndarray, mic: np.ndarray,
               sr: int = SAMPLE_RATE, f_max: float = F_MAX) -> tuple[np.ndarray, dict]:
    """Pressure impulse response of a rigid-walled box from its modes: sum over modes of
    psi(src) psi(mic) / Lambda * sin(w t) / w * exp(-delta t), psi = prod cos(n_i pi x_i / L_i)."""
    n_max = [int(f_max * 2 * L / C) + 1 for L in dims_m]
    nx, ny, nz = np.meshgrid(*[np.arange(n + 1) for n in n_max], indexing="ij")
    n = np.stack([nx.ravel(), ny.ravel(), nz.ravel()], 1).astype(np.float64)
    f = C / 2 * np.sqrt(((n / dims_m) ** 2).sum(1))
    keep = (f > 20.0) & (f <= f_max)
    n, f = n[keep], f[keep]
    shape = np.prod(np.cos(n * np.pi * src / dims_m), 1) * np.prod(np.cos(n * np.pi * mic / dims_m), 1)
    norm = np.prod(np.where(n == 0, 1.0, 0.5), 1)  # integral of psi^2 over the box, over its volume
    # RT60 falls with frequency (air and the grout absorb more up high); axial and tangential modes meet fewer
    # walls and ring longer than oblique ones: +-25 % per mode.
    t60 = rt60_s * np.interp(np.log(f), np.log([125, 500, 1000, 2000, 4000]), [1.15, 1.0, 0.95, 0.8, 0.6])
    t60 *= (1.0 + 0.25 * (n == 0).sum(1) / 2) * rng.uniform(0.85, 1.15, len(f))
    amp = shape / norm / (2 * np.pi * f) * np.cos(0.5 * np.pi * f / f_max) ** 0.5  # taper towards f_max
    length = int(math.ceil(t60.max() * sr))
    t = np.arange(length) / sr
    h = np.zeros(length)
    for lo in range(0, len(f), 256):  # in blocks: modes x samples would not fit at once
        s = slice(lo, lo + 256)
        h += (amp[s, None] * np.sin(2 * np.pi * f[s, None] * t[None, :])
              * np.exp(-LN1000 * t[None, :] / t60[s, None])).sum(0)
    h /= max(np.abs(h).max(), 1e-12)
    h[-int(0.01 * sr):] *= np.linspace(1, 0, int(0.01 * sr))
    return h.astype(np.float32), {"modes": int(len(f)), "rt60_s": round(float(estimate_rt60(h)), 2),
                                  "dims_m": [round(float(x), 2) for x in dims_m], "peak_notch_db": peak_notch_db(h),
                                  "schroeder_hz": round(2000 * math.sqrt(rt60_s / float(np.prod(dims_m))))}


def peak_notch_db(h: np.ndarray, sr: int = SAMPLE_RATE) -> float:
    """Spread of the magnitude response between 300 and 3800 Hz around its 1/3-octave smoothing (highest peak to
    deepest notch), in dB."""
    spec = 20 * np.log10(np.abs(np.fft.rfft(h, 1 << 16)) + 1e-12)
    hz = np.fft.rfftfreq(1 << 16, 1 / sr)
    sel = (hz >= 300) & (hz <= 3800)
    smooth = np.array([spec[(hz >= f / 2 ** (1 / 6)) & (hz <= f * 2 ** (1 / 6))].mean() for f in hz[sel][::64]])
    dev = spec[sel] - np.interp(hz[sel], hz[sel][::64], smooth)
    return round(float(dev.max() - dev.min()), 1)


def direct_ring(rng: np.random.Generator, direct_db: tuple[float, float] = (0.0, 10.0)) -> tuple[np.ndarray, dict]:
    """Training's modal generator (``acoustics.modal_response``, T60 0.5-2 s) with the direct sound 0-10 dB *above*
    the ringing's energy instead of 5-25 dB under it: music heard through a few narrow resonances that tower over
    a flat response, as in a dish or a bowl close to the microphone."""
    h, info = modal_response(rng, (0.5, 2.0))
    new_db = float(rng.uniform(*direct_db))
    h[0] += 10 ** (new_db / 20) - 10 ** (info["direct_db"] / 20)
    return h / np.abs(h).max(), info | {"direct_db": round(new_db, 1), "rt60_s": round(float(estimate_rt60(h)), 2),
                                        "peak_notch_db": peak_notch_db(h)}


def draw_rooms(n: int, seed: int, family: str = "modal-room") -> list[tuple[np.ndarray, dict]]:
    rng = np.random.default_rng(seed)
    if family == "direct-ring":
        return [direct_ring(rng) for _ in range(n)]
    rooms = []
    for _ in range(n):
        dims = np.array([rng.uniform(0.9, 1.8), rng.uniform(0.9, 2.6), rng.uniform(2.0, 2.6)])
        src, mic = (dims * rng.uniform(0.15, 0.85, 3) for _ in range(2))
        rooms.append(modal_room(rng, float(np.exp(rng.uniform(np.log(0.8), np.log(2.0)))), dims, src, mic))
    return rooms


def make_queries(results: Path, out: Path, rooms: list[np.ndarray], lengths: list[float], seed: int,
                 family: str) -> pd.DataFrame:
    """The run's ``resonant`` starts, played through the modal rooms, clean and with held-out noise."""
    queries = pd.read_parquet(results / "eval" / "queries" / "queries.parquet")
    base = queries[(queries["condition"] == "resonant") & queries["length_s"].isin(lengths)
                   & queries["group"].isin(["unseen", "unknown"])]
    songs = pd.read_parquet(results / "manifest" / "songs.parquet")
    path = dict(zip(songs["song_id"].astype(str), songs["path"].astype(str)))
    noise = ClipBank(results / "noise" / "test")
    rng = np.random.default_rng(seed)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    rows = []
    for source, group in base.groupby("source_song_id", sort=True):
        audio = load_audio(path[str(source)])
        for q in group.itertuples():
            k = int(rng.integers(len(rooms)))
            wet = reverberate(audio, int(q.start_sample), int(round(q.length_s * SAMPLE_RATE)), rooms[k])
            for cond, snr in CONDITIONS.items():
                x = wet if snr is None else add_noise(wet, noise.random_excerpt(rng, len(wet)), snr)
                qid = f"{q.query_id}_{'n' if snr is not None else 'c'}"
                sf.write(out / "audio" / f"{qid}.flac", limit_peak(x), SAMPLE_RATE)
                rows.append(q._asdict() | {"query_id": qid, "condition": cond + family, "snr_db": snr,
                                           "ir": f"{family}{k}", "file": f"audio/{qid}.flac"})
    return pd.DataFrame(rows).drop(columns=["Index"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results", type=Path, help="an evaluation run's results folder")
    ap.add_argument("--out", type=Path, required=True, help="folder for the query files and answers")
    ap.add_argument("--rooms", type=int, default=16)
    ap.add_argument("--lengths", type=float, nargs="+", default=[1, 3, 5, 10])
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--family", choices=["modal-room", "direct-ring"], default="modal-room",
                    help="small rigid rooms from their modes, or training's few-mode spaces with a strong direct sound")
    ap.add_argument("--audfprint", action="store_true", help="answer the queries with audfprint too")
    args = ap.parse_args()
    t0 = time.perf_counter()
    drawn = draw_rooms(args.rooms, args.seed, args.family)
    for i, (_, info) in enumerate(drawn):
        print(f"{args.family}{i}: {info}")
    print(f"rooms drawn in {time.perf_counter() - t0:.0f} s")
    qpath = args.out / "queries.parquet"
    if not qpath.exists():
        # the query table last, whole or not at all: a killed run makes its files again
        write_parquet_atomic(make_queries(args.results, args.out, [h for h, _ in drawn], args.lengths, args.seed,
                                          args.family), qpath)
    queries = pd.read_parquet(qpath)
    print(f"{len(queries)} queries ready at {time.perf_counter() - t0:.0f} s")

    from workflow_lib.cli.query import load_searcher
    from workflow_lib.evaluation.neural import run_neural

    searcher, _ = load_searcher(argparse.Namespace(results=args.results, config=None))
    answers = [run_neural(searcher, queries, args.out)]
    if args.audfprint:
        from workflow_lib.evaluation.audfprint import AudfprintParams, build_database, run_queries

        songs = pd.read_parquet(args.results / "manifest" / "songs.parquet")
        afp = build_database(songs[songs["song_id"].isin(searcher.db.song_ids)], AudfprintParams(), threads=2)
        files = queries.assign(file=[str(args.out / f) for f in queries["file"]])
        answers.append(run_queries(afp, files, threads=2))
    print(f"answered at {time.perf_counter() - t0:.0f} s")
    metrics = compute_metrics(queries, pd.concat(answers, ignore_index=True))
    seen = metrics[metrics["group"] == "unseen"]
    print("\nsong top-1 % on unseen songs:")
    print((seen.pivot_table(index=["system", "condition"], columns="length_s", values="song_top1", sort=False)
           * 100).round(1).to_string())
    print("\nright and accepted %:")
    print((seen.pivot_table(index=["system", "condition"], columns="length_s", values="song_top1_accepted",
                            sort=False) * 100).round(1).to_string())
    unk = metrics[metrics["group"] == "unknown"]
    print("\nfalse positives % on unknown songs:")
    print((unk.pivot_table(index=["system", "condition"], columns="length_s", values="fpr", sort=False)
           * 100).round(2).to_string())


if __name__ == "__main__":
    main()
