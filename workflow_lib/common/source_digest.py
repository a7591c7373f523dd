"""A digest of the package's own Python sources: what a result computed by this code depends on beyond its inputs.

Snakemake reruns a rule when its script, inputs or parameters change, not when the library the script calls does.
A no-match threshold depends on how the search ranks candidates (e.g. ``search.copies``), so the ``calibrate``
rule takes this digest as a parameter, and a results folder calibrated by older code is recalibrated by the next
run instead of keeping a threshold the search no longer matches. The calibration's cache key holds it too.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from workflow_lib.common.atomic import file_digest


def code_digest() -> str:
    """Digest of the package's Python sources (their paths and contents): any code change is a new digest."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode() + b"\0" + file_digest(path, 64).encode())
    return h.hexdigest()
