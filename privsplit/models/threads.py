"""Torch settings for fitting small models (purifier, probe attackers, inversion decoders)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["tiny_model_threads"]


@contextlib.contextmanager
def tiny_model_threads() -> Iterator[None]:
    """One torch thread, subnormal floats flushed to zero, while fitting small models on a few
    thousand rows at most.

    Intra-op parallelism has nothing to split there, and on a loaded 2-core machine the thread
    hand-offs cost ~30x (measured: 25 s -> 0.8 s for 50 purifier epochs). Subnormals appear as the
    gradients of converged weights shrink, and every sgemm touching them slows down: the 64 px
    inversion decoder went from 2.8 s to 40 s per epoch after ~50 epochs on CelebA. The caller's
    thread count is restored on exit, and flushing is switched back off.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(before)
