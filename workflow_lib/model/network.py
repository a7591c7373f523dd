"""NAFP encoder (separable-convolution blocks) and the division projection head.

Layout follows the reference implementation (mimbres/neural-audio-fp, ``nnfp.py``): each of the 8 blocks is
Conv(1x3, stride along time) -> ELU -> LayerNorm -> Conv(3x1, stride 2 along frequency) -> ELU -> LayerNorm, where
LayerNorm normalises over (channels, freq, time) with an element-wise affine, as in the paper. Time strides are
(2, 2, 2, 2, 1, 2, 1, 2), so a (256 x 32) log-mel reaches (1 x 1) after 8 blocks. The division head splits the
final channel vector into ``dim`` groups and maps each group through its own Linear -> ELU -> Linear to one value;
it is written as two grouped 1x1 convolutions, which is the same maths as ``dim`` separate small MLPs in one op.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from workflow_lib.model.features import FrontendConfig, LogMelFrontend
from workflow_lib.common.config import check_keys

# Largest batch the encoder runs at once on CPU in inference (see Encoder.forward).
CPU_INFERENCE_CHUNK = 32
# Stride along time of each block's 1x3 convolution (the 3x1 convolution always halves frequency).
NAFP_TIME_STRIDES = (2, 2, 2, 2, 1, 2, 1, 2)

PRESETS: dict[str, dict[str, Any]] = {
    # Paper size (~17 M parameters with the full-shape LayerNorm affines); meant for a GPU.
    "nafp": {"channels": [128, 128, 256, 256, 512, 512, 1024, 1024], "dim": 128, "head_hidden": 32},
    # Laptop-CPU size (~1.3 M parameters). The first block is kept at 16 channels: its (C, 128..256, 16) activations
    # dominate CPU time, and at 32 channels a batch no longer fits the L3 cache (measured 2-4x slower per step).
    "small": {"channels": [16, 32, 64, 64, 128, 128, 256, 256], "dim": 128, "head_hidden": 32},
}


@dataclass(frozen=True)
class ModelConfig:
    channels: list[int] = field(default_factory=lambda: list(PRESETS["small"]["channels"]))
    dim: int = 128
    head_hidden: int = 32
    time_strides: list[int] = field(default_factory=lambda: list(NAFP_TIME_STRIDES))
    preset: str = "small"

    def __post_init__(self) -> None:
        if len(self.channels) != len(self.time_strides):
            raise ValueError(f"model: {len(self.channels)} channels but {len(self.time_strides)} time strides")
        if any(c < 1 for c in self.channels) or self.dim < 1 or self.head_hidden < 1:
            raise ValueError("model: channels, dim and head_hidden must be positive")
        if self.channels[-1] % self.dim:
            raise ValueError(f"model: last channel count {self.channels[-1]} must be divisible by dim {self.dim} "
                             "(the division head splits it into dim equal groups)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        check_keys(d, (f.name for f in fields(cls)), "model config")
        return cls(**{k: list(v) if isinstance(v, (list, tuple)) else v for k, v in d.items()})


def model_config_from(preset: str, channels: list[int] | None = None, dim: int | None = None,
                      head_hidden: int | None = None) -> ModelConfig:
    """A preset with optional overrides (``None`` keeps the preset's value)."""
    if preset not in PRESETS:
        raise ValueError(f"model.preset: unknown preset {preset!r} (choose from {sorted(PRESETS)})")
    p = PRESETS[preset]
    cfg = ModelConfig(channels=list(p["channels"]), dim=p["dim"], head_hidden=p["head_hidden"], preset=preset)
    overrides = {k: v for k, v in {"channels": list(channels) if channels else None, "dim": dim,
                                   "head_hidden": head_hidden}.items() if v is not None}
    return replace(cfg, **overrides) if overrides else cfg


class _CpuElu(torch.autograd.Function):
    """ELU as ``exp(min(x, 0)) - 1 + max(x, 0)``: on CPU ``F.elu`` goes through a scalar ``expm1`` and is ~2x
    slower than this, and the first block's activations make ELU the largest cost of the whole CPU forward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        y = torch.exp(x.clamp(max=0)).sub_(1).add_(x.clamp(min=0))
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        return grad * (y.clamp(max=0) + 1)  # 1 where x > 0, exp(x) = y + 1 elsewhere


def elu(x: torch.Tensor) -> torch.Tensor:
    """ELU (alpha 1): ``F.elu`` on accelerators and under ``torch.compile`` (which fuses it into neighbouring
    kernels), the faster formulation in eager CPU mode. When no gradient is recorded (extraction, search, the
    listener) it overwrites ``x``: every caller passes a convolution's fresh output that nothing else holds, and
    reusing its memory saves two of the formulation's five passes over the largest activations."""
    if x.device.type == "cpu" and x.dtype == torch.float32 and not torch.compiler.is_compiling():
        if torch.is_grad_enabled() and x.requires_grad:
            return _CpuElu.apply(x)
        positive = x.clamp(min=0)
        return x.clamp_(max=0).exp_().sub_(1).add_(positive)
    return F.elu(x)


def _conv_out(n: int, stride: int) -> int:
    # kernel 3, padding 1 along the strided axis (padding 0 and kernel 1 on the other axis gives n // 1).
    return (n - 1) // stride + 1


class SeparableBlock(nn.Module):
    """Conv(1x3) -> ELU -> LayerNorm -> Conv(3x1) -> ELU -> LayerNorm on ``(B, C, F, T)``."""

    def __init__(self, c_in: int, c_out: int, in_shape: tuple[int, int], time_stride: int):
        super().__init__()
        f, t = in_shape
        t1 = _conv_out(t, time_stride)
        f2 = _conv_out(f, 2)
        self.conv_t = nn.Conv2d(c_in, c_out, (1, 3), stride=(1, time_stride), padding=(0, 1))
        self.norm_t = nn.LayerNorm([c_out, f, t1])
        self.conv_f = nn.Conv2d(c_out, c_out, (3, 1), stride=(2, 1), padding=(1, 0))
        self.norm_f = nn.LayerNorm([c_out, f2, t1])
        self.out_shape = (f2, t1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm_t(elu(self.conv_t(x)))
        return self.norm_f(elu(self.conv_f(x)))


class DivisionHead(nn.Module):
    """Split ``(B, C)`` into ``dim`` groups of ``C / dim``; each group: Linear -> ELU -> Linear to 1 value."""

    def __init__(self, channels: int, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Conv1d(channels, dim * hidden, kernel_size=1, groups=dim)
        self.fc2 = nn.Conv1d(dim * hidden, dim, kernel_size=1, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(elu(self.fc1(x.unsqueeze(-1)))).squeeze(-1)


class Encoder(nn.Module):
    """Front-end features ``(B, C, F, T)`` (C: the front end's channels) -> L2-normalised embedding ``(B, dim)``."""

    def __init__(self, config: ModelConfig, input_shape: tuple[int, int] = (256, 32), in_channels: int = 1):
        super().__init__()
        self.config = config
        blocks = []
        shape, c_in = input_shape, in_channels
        for c_out, ts in zip(config.channels, config.time_strides):
            block = SeparableBlock(c_in, c_out, shape, ts)
            blocks.append(block)
            shape, c_in = block.out_shape, c_out
        if shape != (1, 1):
            raise ValueError(f"model: input {input_shape} reduces to {shape} after {len(blocks)} blocks, not (1, 1); "
                             "time strides and the front end do not match")
        self.blocks = nn.Sequential(*blocks)
        self.head = DivisionHead(c_in, config.dim, config.head_hidden)

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        if (len(spec) > CPU_INFERENCE_CHUNK and spec.device.type == "cpu" and not torch.is_grad_enabled()
                and not torch.compiler.is_compiling()):
            # The first blocks' activations of a large batch overflow the CPU caches: in chunks of 32 inference
            # is ~3x faster (measured at batch 256, 1 thread). Training needs them all for backward anyway.
            return torch.cat([self._embed(chunk) for chunk in spec.split(CPU_INFERENCE_CHUNK)])
        return self._embed(spec)

    def _embed(self, spec: torch.Tensor) -> torch.Tensor:
        h = self.blocks(spec).flatten(1)
        return F.normalize(self.head(h).float(), dim=-1)


class Fingerprinter(nn.Module):
    """Front end + encoder: waveform ``(B, 8000)`` -> L2-normalised fingerprint ``(B, dim)``."""

    def __init__(self, model_config: ModelConfig, frontend_config: FrontendConfig | None = None):
        super().__init__()
        self.frontend = LogMelFrontend(frontend_config)
        fc = self.frontend.config
        self.encoder = Encoder(model_config, (fc.n_mels, fc.n_frames), fc.n_channels)

    @property
    def model_config(self) -> ModelConfig:
        return self.encoder.config

    @property
    def frontend_config(self) -> FrontendConfig:
        return self.frontend.config

    @property
    def dim(self) -> int:
        return self.encoder.config.dim

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.frontend(wav))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
