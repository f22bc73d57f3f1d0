"""The purifier's training modes (torch-free, so the CLI can list them without loading torch)."""

from __future__ import annotations

from enum import Enum


class PurifierMode(str, Enum):
    AE = "ae"  # autoencoder correction fitted to the original scores; keeps every label
    ADVERSARIAL = "adversarial"  # also against a membership discriminator and an inversion decoder; keeps labels
    SWAP = "swap"  # ae + the label swapper: changes the label of a few member-like records

    @property
    def keeps_labels(self) -> bool:
        return self is not PurifierMode.SWAP
