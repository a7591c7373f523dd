"""NT-Xent (normalised temperature-scaled cross entropy), the contrastive objective of SimCLR and NAFP."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nt_xent(anchors: torch.Tensor, positives: torch.Tensor, temperature: float = 0.05) -> torch.Tensor:
    """Mean NT-Xent over all ``2N`` views of ``N`` pairs of L2-normalised embeddings ``(N, D)``.

    Each view's positive is its partner; the other ``2N - 2`` views in the batch are its negatives. This is the mean
    of NAFP's two directional terms (NAFP returns their sum, i.e. twice this value; the gradients differ only by that
    constant factor). Computed in float32 whatever the autocast dtype, because ``1 / temperature`` = 20 makes the
    logits exceed half precision's useful range.
    """
    if anchors.shape != positives.shape or anchors.dim() != 2:
        raise ValueError(f"nt_xent: expected two (N, D) tensors of the same shape, got {tuple(anchors.shape)} and "
                         f"{tuple(positives.shape)}")
    n = anchors.shape[0]
    if n < 2:
        raise ValueError("nt_xent: needs at least 2 pairs (a pair's negatives are the other pairs)")
    z = torch.cat([anchors, positives]).float()
    logits = z @ z.T / temperature
    # A view is not its own negative: remove self-similarity from the softmax.
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, targets)
