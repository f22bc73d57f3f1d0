"""The main job end to end (``privsplit quickstart``): train, purify, export, flash, serve, infer, measure, report."""

from privsplit.quickstart.config import QuickstartConfig
from privsplit.report.layout import QuickstartLayout

__all__ = ["QuickstartConfig", "QuickstartLayout", "run_quickstart"]


def __getattr__(name: str):
    if name == "run_quickstart":
        from privsplit.quickstart.pipeline import run_quickstart

        return run_quickstart
    raise AttributeError(name)
