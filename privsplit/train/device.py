"""Where training runs: device choice, mixed-precision policy and a batch feeder over uint8 images.

``--device auto`` picks CUDA, then Apple's MPS, then the CPU. The CPU is the reference and runs in
float32; CUDA runs its forward passes under bfloat16 autocast where the GPU supports it (no loss
scaling needed, unlike float16). The images stay uint8 until they reach the device: on an
accelerator the whole decoded array goes there once when it fits (CelebA 10k at 64 px is 123 MB),
otherwise each batch is gathered into pinned memory and copied with ``non_blocking`` one batch
ahead of the compute (a prefetch of one), so no epoch ever decodes or converts an image twice.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum

import numpy as np
import torch

from privsplit.errors import ConfigError

# Above this size the uint8 images stay in host memory and travel batch by batch.
RESIDENT_LIMIT_BYTES = 2 << 30


class DeviceKind(str, Enum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"
    MPS = "mps"


class Precision(str, Enum):
    FLOAT32 = "float32"
    BFLOAT16 = "bfloat16"


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(kind: DeviceKind | str, *, local_rank: int = 0) -> torch.device:
    """The torch device for ``kind``; an accelerator that is not there raises :class:`ConfigError`."""
    try:
        kind = DeviceKind(kind)
    except ValueError:
        raise ConfigError(f"unknown device {kind!r}; choose from {[k.value for k in DeviceKind]}") from None
    if kind is DeviceKind.AUTO:
        if torch.cuda.is_available():
            kind = DeviceKind.CUDA
        elif _mps_available():
            kind = DeviceKind.MPS
        else:
            kind = DeviceKind.CPU
    if kind is DeviceKind.CUDA:
        if not torch.cuda.is_available():
            raise ConfigError(
                f"--device cuda: torch {torch.__version__} sees no CUDA GPU on this machine; "
                "use --device cpu (or auto), or install a CUDA build of torch"
            )
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise ConfigError(
                f"process {local_rank} needs a GPU but this machine has {count}: lower --nproc to {count}"
            )
        return torch.device("cuda", local_rank)
    if kind is DeviceKind.MPS:
        if not _mps_available():
            raise ConfigError(
                "--device mps: this torch build or machine has no Apple MPS device; use --device cpu or auto"
            )
        return torch.device("mps")
    return torch.device("cpu")


@dataclass(frozen=True)
class DevicePolicy:
    """The device and the precision of its forward passes."""

    device: torch.device
    precision: Precision = Precision.FLOAT32

    @classmethod
    def for_device(cls, device: torch.device) -> DevicePolicy:
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return cls(device, Precision.BFLOAT16)
        return cls(device, Precision.FLOAT32)

    @property
    def accelerator(self) -> bool:
        return self.device.type != "cpu"

    def prepare(self) -> None:
        """Seeded runs reproducible on this device too: deterministic cuDNN kernels, no autotuning."""
        if self.device.type == "cuda":
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False

    def autocast(self):
        """Mixed precision around a forward pass (a no-op in float32)."""
        if self.precision is Precision.FLOAT32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def describe(self) -> str:
        return f"{self.device} ({self.precision.value})"


class BatchFeeder:
    """uint8 ``(N, H, W, C)`` images -> normalised float ``(B, C, H, W)`` batches on the device.

    ``gather(index)`` converts one batch; ``stream(batches)`` yields ``(index, x)`` with the next
    batch's copy already issued while the current one computes.
    """

    def __init__(self, images: np.ndarray, mean: torch.Tensor, std: torch.Tensor, policy: DevicePolicy) -> None:
        self.policy = policy
        device = policy.device
        u8 = torch.from_numpy(np.ascontiguousarray(images))
        self.resident = not policy.accelerator or u8.numel() <= RESIDENT_LIMIT_BYTES
        if self.resident:
            self.images = u8.to(device)
        else:
            self.images = u8  # gathered per batch into pinned memory
        self.mean = mean.to(device).view(1, -1, 1, 1)
        self.std = std.to(device).view(1, -1, 1, 1)

    def __len__(self) -> int:
        return len(self.images)

    def _raw(self, index: np.ndarray) -> torch.Tensor:
        idx = torch.from_numpy(np.asarray(index, dtype=np.int64))
        if self.resident:
            return self.images[idx.to(self.images.device)]
        batch = self.images.index_select(0, idx).pin_memory()
        return batch.to(self.policy.device, non_blocking=True)

    def _convert(self, raw: torch.Tensor) -> torch.Tensor:
        return (raw.permute(0, 3, 1, 2).float().div_(255.0) - self.mean) / self.std

    def gather(self, index: np.ndarray) -> torch.Tensor:
        return self._convert(self._raw(index))

    def pixels(self, index: np.ndarray) -> torch.Tensor:
        """The batch in [0, 1] pixel space (the reconstruction adversary's target)."""
        return self._raw(index).permute(0, 3, 1, 2).float().div_(255.0)

    def stream(self, batches) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        pending = None
        for index in batches:
            raw = self._raw(index)
            if pending is not None:
                yield pending[0], self._convert(pending[1])
            pending = (index, raw)
        if pending is not None:
            yield pending[0], self._convert(pending[1])
