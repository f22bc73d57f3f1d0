"""Where a quickstart folder keeps what it made: one place, written by the quickstart and read by the report.

It lives in the report layer, below the quickstart (which builds the report at its end), so the two never import
each other both ways.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

UNPROTECTED = "unprotected"
PROTECTED = "protected"


def curve_run_name(adv_weight: float) -> str:
    """Run name of an intermediate privacy-utility point (``protected-adv0`` = bottleneck and noise only)."""
    return f"protected-adv{adv_weight:g}"


@dataclass(frozen=True)
class QuickstartLayout:
    root: Path

    @property
    def state(self) -> Path:
        return self.root / "quickstart.json"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    def run(self, name: str) -> Path:
        return self.runs / name

    @property
    def export(self) -> Path:
        return self.root / "export"

    @property
    def edge_bundle(self) -> Path:
        return self.export / "edge"

    @property
    def cloud_bundle(self) -> Path:
        return self.export / "cloud"

    @property
    def parity(self) -> Path:
        return self.export / "parity.json"

    @property
    def device(self) -> Path:
        return self.root / "device"

    @property
    def key_prefix(self) -> Path:
        return self.root / "keys" / "privsplit"

    @property
    def public_key(self) -> Path:
        return self.key_prefix.with_suffix(".pub")

    @property
    def measure(self) -> Path:
        return self.root / "measure"

    @property
    def flash(self) -> Path:
        return self.measure / "flash.json"

    @property
    def edge_infer(self) -> Path:
        return self.measure / "edge_infer.json"

    def edge_bench(self, runtime: str) -> Path:
        return self.measure / f"edge_bench_{runtime}.json"

    @property
    def cloud_load(self) -> Path:
        return self.measure / "cloud_load.json"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def report_md(self) -> Path:
        return self.root / "report.md"

    @property
    def report_html(self) -> Path:
        return self.root / "report.html"
