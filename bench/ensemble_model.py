"""Write an ensemble model file: several model files searched as one (``workflow_lib.model.ensemble``).

    python bench/ensemble_model.py OUT.pt MODEL_A.pt MODEL_B.pt [--weights 0.5 0.5]

Each member's fingerprint is scaled by the square root of its weight and the fingerprints are put side by side, so a
search scores every candidate by the weighted mean of the members' cosines. The file holds the members whole; use it
wherever a model file goes (``model.source``, ``nafp index --model``); a database must be extracted with it.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workflow_lib.model.model_file import ModelFileError, save_ensemble  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("members", type=Path, nargs="+", help="model files (at least two)")
    ap.add_argument("--weights", type=float, nargs="+", help="one per member, summing to 1 (default: equal)")
    args = ap.parse_args()
    weights = args.weights or [1.0 / len(args.members)] * len(args.members)
    try:
        save_ensemble(args.out, args.members, weights,
                      {"finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    except (ModelFileError, ValueError) as exc:
        sys.exit(str(exc))
    print(f"{args.out}: ensemble of {len(args.members)} models, weights {weights}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
