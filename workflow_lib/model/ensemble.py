"""Several fingerprinters searched as one: their fingerprints side by side in one vector.

Each member's L2-normalised fingerprint is scaled by the square root of its weight (the weights sum to 1) and the
scaled fingerprints are concatenated. The result is again of unit length, and the inner product of two such
vectors is the weighted mean of the members' cosines: one index, one search and one calibration score a
query by every member at once, and nothing downstream needs to know. Why: a log-mel model and a band-centred
log-mel model fail in different places (noise against ringing resonances, bench/README.md "Two models side by
side"), and one encoder of this size trained on both channels learns only the log's trade.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from workflow_lib.model.network import Fingerprinter


@dataclass(frozen=True)
class EnsembleFrontend:
    """The members' front ends and weights: what makes an ensemble's fingerprints comparable (stamped into shards
    and the index like a single model's front end)."""
    members: tuple[dict[str, Any], ...]
    weights: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"ensemble": [dict(m) for m in self.members], "weights": list(self.weights)}


def check_weights(weights: Sequence[float], n_members: int) -> tuple[float, ...]:
    """Weights as given when they are positive, one per member and sum to 1 (within 1e-6)."""
    w = tuple(float(x) for x in weights)
    if n_members < 2:
        raise ValueError(f"an ensemble needs at least two member models, got {n_members}")
    if len(w) != n_members or any(not x > 0 for x in w) or abs(sum(w) - 1.0) > 1e-6:
        raise ValueError(f"ensemble weights must be {n_members} positive numbers that sum to 1, got {list(w)}")
    return w


class EnsembleFingerprinter(nn.Module):
    """Waveform ``(B, 8000)`` -> ``(B, sum of the members' dims)``, of unit length: member ``i``'s fingerprint times
    ``sqrt(weights[i])``. The cosine of two ensemble fingerprints is ``sum_i weights[i] * cos_i``."""

    def __init__(self, members: Sequence[Fingerprinter], weights: Sequence[float]):
        super().__init__()
        self.weights = check_weights(weights, len(members))
        self.members = nn.ModuleList(members)
        framing = {(m.frontend_config.sample_rate, m.frontend_config.segment_samples) for m in members}
        if len(framing) != 1:
            raise ValueError(f"ensemble members frame the audio differently (sample rate, segment): {sorted(framing)}")
        self.register_buffer("scales", torch.tensor([w ** 0.5 for w in self.weights]), persistent=False)
        # Members that differ only in what follows the mel (e.g. log and band-centred log) share one spectrogram:
        # the front end is about a quarter of a member's time on a CPU.
        self.shared_mel = all(isinstance(m, Fingerprinter) for m in members) and \
            len({m.frontend_config.mel_settings for m in members}) == 1

    @property
    def frontend_config(self) -> EnsembleFrontend:
        return EnsembleFrontend(tuple(m.frontend_config.to_dict() for m in self.members), self.weights)

    @property
    def dim(self) -> int:
        return sum(m.dim for m in self.members)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        if self.shared_mel:
            mel = self.members[0].frontend.spectrogram(wav)
            parts = [m.encoder(m.frontend.compress(mel)) for m in self.members]
        else:
            parts = [m(wav) for m in self.members]
        return torch.cat([z * self.scales[i] for i, z in enumerate(parts)], dim=-1)
