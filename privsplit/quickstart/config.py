"""What one quickstart does: the data, the models it trains and how hard it measures them."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from privsplit.errors import ConfigError
from privsplit.results import to_dict

QUICKSTART_SCHEMA_VERSION = 1

# Datasets whose task and private attribute the quickstart knows without being told.
DEFAULT_LABELS = {
    "digits": ("digit", "slant"),
    "celeba": ("Smiling", "Male"),
    "utkface": ("age_bin", "gender"),
}


@dataclass(frozen=True)
class QuickstartConfig:
    """Options of :func:`~privsplit.quickstart.run_quickstart`.

    The defaults are the full story on the embedded ``digits`` data (a few minutes on 2 cores);
    :meth:`smallest` is the cheapest run that still tells it (the end-to-end test's settings).
    ``curve_weights``: extra protected models trained with these adversary weights (0 = bottleneck
    and noise only), the intermediate points of the privacy-utility curve.
    """

    out: Path
    data: str = "digits"
    task: str | None = None  # None: DEFAULT_LABELS of the dataset
    private: str | None = None
    image_size: int | None = None
    limit: int | None = None
    seed: int = 0
    epochs: int | None = None  # None: each recipe's own (20 protected, 20 unprotected)
    curve_weights: tuple[float, ...] = (0.0,)
    purifier_epochs: int = 300
    probe_epochs: int | None = None  # None: the feature probe's own budget
    calibration: int = 256
    edge_runs: int = 200
    load_seconds: float = 3.0
    load_concurrency: tuple[int, ...] = (1, 8)
    infer_images: int = 64
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", Path(self.out))
        object.__setattr__(self, "curve_weights", tuple(float(w) for w in self.curve_weights))
        object.__setattr__(self, "load_concurrency", tuple(int(c) for c in self.load_concurrency))
        if any(w < 0 for w in self.curve_weights):
            raise ConfigError(f"--curve weights must be >= 0, got {list(self.curve_weights)}")
        for name in ("purifier_epochs", "calibration", "edge_runs", "infer_images"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not self.load_seconds > 0 or not self.load_concurrency or min(self.load_concurrency) < 1:
            raise ConfigError("the cloud load needs a duration > 0 s and concurrency levels >= 1")
        if self.task is None and self.private is None:
            defaults = DEFAULT_LABELS.get(self.dataset_name)
            if defaults is None:
                raise ConfigError(
                    f"{self.data}: the quickstart needs --task and --private for this dataset "
                    f"(it knows defaults for {', '.join(sorted(DEFAULT_LABELS))})"
                )
            object.__setattr__(self, "task", defaults[0])
            object.__setattr__(self, "private", defaults[1])
        if self.private is None:
            raise ConfigError("the quickstart measures attribute leakage: give the private attribute with --private")

    @property
    def dataset_name(self) -> str:
        return self.data.split(":", 1)[0]

    @classmethod
    def smallest(cls, out: str | Path, **overrides) -> QuickstartConfig:
        """No curve point, small attacker budgets and short measurements: the whole path in about 80 s
        on ``digits``. The models keep their recipes' epochs: a protected target trained shorter
        barely overfits, which leaves the membership probe nothing to measure."""
        settings: dict[str, Any] = dict(
            curve_weights=(),
            purifier_epochs=100,
            probe_epochs=15,
            calibration=64,
            edge_runs=30,
            load_seconds=1.0,
            load_concurrency=(1, 4),
            infer_images=16,
        )
        settings.update(overrides)
        return cls(out=Path(out), **settings)

    def with_(self, **changes) -> QuickstartConfig:
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        return to_dict(self)
