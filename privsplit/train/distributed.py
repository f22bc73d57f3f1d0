"""Several training processes with PyTorch's own engine: torchrun + DistributedDataParallel.

``privsplit train --nproc N`` re-runs the same command under ``python -m torch.distributed.run
--standalone --nproc-per-node N``; a user's own ``torchrun`` across machines runs the same module
(``-m privsplit.cli.main train ...``). Inside, :func:`init_from_env` reads torchrun's variables
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) and joins the process group: gloo on the CPU, NCCL on GPUs.

How one model is trained by N processes exactly as by one (see ``privsplit.train.adversarial``):
every rank draws the same seeded batches and takes its shard of each global batch, so the global
batch and the step count are those of one process; the split model is wrapped in DDP; the
adversaries train identically on every rank (their gradients are averaged here); BatchNorm
re-estimation and the reference accuracy behind model selection are computed by rank 0 and broadcast.
Only rank 0 writes the run folder.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from privsplit.errors import ConfigError, PrivsplitError


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job (world 1: a plain single-process run)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, index):
        """This rank's share of a global batch (strided, so shard sizes differ by at most one)."""
        return index[self.rank :: self.world] if self.active else index

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum over ranks (float64 on the CPU, so gloo and NCCL alike)."""
        if not self.active:
            return list(values)
        t = torch.tensor(list(values), dtype=torch.float64, device=_collective_device())
        dist.all_reduce(t)
        return t.cpu().tolist()

    def broadcast_value(self, value: float) -> float:
        if not self.active:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=_collective_device())
        dist.broadcast(t, src=0)
        return float(t.item())

    def broadcast_module(self, module: nn.Module) -> None:
        """Rank 0's parameters and buffers to every rank."""
        if not self.active:
            return
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src=0)

    def average_gradients(self, params: Iterable[torch.Tensor]) -> None:
        """Mean of every gradient over ranks, in one flat buffer."""
        if not self.active:
            return
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def wrap(self, module: nn.Module, device: torch.device) -> nn.Module:
        """``module`` in DistributedDataParallel (itself when single-process)."""
        if not self.active:
            return module
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids, gradient_as_bucket_view=True)


def _collective_device() -> torch.device:
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device_type: str) -> DistContext:
    """Join torchrun's process group (gloo on CPU, NCCL on CUDA); world 1 outside torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        if device_type == "mps":
            raise ConfigError(
                "several processes on Apple MPS are not supported by torch: use --nproc 1 or --device cpu"
            )
        dist.init_process_group(backend=backend)
    if device_type == "cpu":
        torch.set_num_threads(1)  # one core per rank; torchrun sets OMP_NUM_THREADS=1 too
    return DistContext(rank=rank, world=world, local_rank=local_rank)


def local_rank_from_env() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def launch(nproc: int, module_args: Sequence[str]) -> int:
    """Run ``python -m privsplit.cli.main <module_args>`` in ``nproc`` processes under torchrun.

    The children's output passes through; torchrun's own failure report (a traceback per rank) is
    replaced by one line naming the failing rank's error.
    """
    if nproc < 1:
        raise ConfigError(f"--nproc must be >= 1, got {nproc}")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes",
        "1",
        "--nproc-per-node",
        str(nproc),
        "-m",
        "privsplit.cli.main",
        *module_args,
    ]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    errors: list[str] = []
    failed = False  # after torchrun's first own log line only its failure report follows
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith("privsplit ") and ": error: " in line:
            errors.append(line.strip())  # the children's one-line errors become the launcher's
            continue
        failed = failed or bool(_TORCHRUN_LOG.match(line))
        if failed or _BANNER.search(line):
            continue
        sys.stderr.write(line)
        sys.stderr.flush()
    code = proc.wait()
    if code != 0:
        detail = errors[0].split(": error: ", 1)[-1] if errors else f"torchrun exited with status {code}"
        raise TrainingLaunchError(f"{nproc}-process training failed: {detail}")
    return code


_TORCHRUN_LOG = re.compile(r"^[WEI]\d{4} \d\d:\d\d:\d\d")
_BANNER = re.compile(r"^\*{5,}\s*$|^Setting OMP_NUM_THREADS")


class TrainingLaunchError(PrivsplitError):
    exit_code = 1
