"""Training a model for an ensemble: the loss is taken on the ensemble's fingerprint, with the other member fixed.

Two models trained apart and then averaged (``model.ensemble``) each learn every view on their own; the pair only
gains where their errors differ. Trained beside a fixed partner, the new member's gradient comes from the pairs the
*ensemble* still confuses: its views are matched by the weighted mean of the two cosines, so the member is pushed to
separate what the partner cannot and is left alone where the partner already does (the boosting idea applied to a
contrastive loss). The member alone is saved; ``model_file.save_ensemble`` puts the two together afterwards with the
same weights.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from workflow_lib.model.ensemble import EnsembleFingerprinter
from workflow_lib.model.features import FrontendConfig
from workflow_lib.model.model_file import load_fingerprinter, model_checksum
from workflow_lib.model.network import Fingerprinter


class FrozenMember(nn.Module):
    """A trained fingerprinter held fixed: always in eval mode (``train()`` does not change that), no gradients."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.requires_grad_(False).eval()

    @property
    def frontend_config(self) -> FrontendConfig:
        return self.model.frontend_config

    @property
    def dim(self) -> int:
        return self.model.dim

    def train(self, mode: bool = True) -> "FrozenMember":
        super().train(mode)
        self.model.eval()
        return self

    @torch.no_grad()
    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        return self.model(wav)


class Partner:
    """The fixed member of the ensemble being trained for, and the weights: the partner's is ``1 - weight``, the
    trained member's ``weight`` (the order of ``save_ensemble``'s members: partner first)."""

    def __init__(self, path: str | Path, weight: float, member_frontend: FrontendConfig, device: torch.device):
        if not 0.0 < weight < 1.0:
            raise ValueError(f"partner weight (the trained member's share) must be between 0 and 1, got {weight}")
        self.path, self.weight = Path(path), float(weight)
        self.checksum = model_checksum(path)
        model = load_fingerprinter(path, device)
        if not isinstance(model, Fingerprinter):
            raise ValueError(f"partner {path} is an ensemble; train beside a single model file")
        fc = model.frontend_config
        if (fc.sample_rate, fc.segment_samples) != (member_frontend.sample_rate, member_frontend.segment_samples):
            raise ValueError(f"partner {path} frames the audio as {(fc.sample_rate, fc.segment_samples)} (sample "
                             f"rate, segment), the model being trained as "
                             f"{(member_frontend.sample_rate, member_frontend.segment_samples)}")
        self.model = FrozenMember(model)
        self._scales = ((1.0 - self.weight) ** 0.5, self.weight ** 0.5)

    @property
    def weights(self) -> tuple[float, float]:
        return 1.0 - self.weight, self.weight

    def combine(self, wav: torch.Tensor, member_z: torch.Tensor) -> torch.Tensor:
        """The ensemble fingerprint of ``wav`` given the trained member's own (unit) fingerprints ``member_z``:
        what ``EnsembleFingerprinter`` computes, with the gradient flowing into the member only."""
        partner_z = self.model(wav).to(member_z.dtype)
        return torch.cat([partner_z * self._scales[0], member_z * self._scales[1]], dim=-1)

    def ensemble(self, member: nn.Module) -> EnsembleFingerprinter:
        """The ensemble as it will be searched (for validation): partner first, then the member."""
        return EnsembleFingerprinter([self.model, member], self.weights)
