"""Progress bars of training: see :mod:`privsplit.progress` (one helper for the whole kit)."""

from privsplit.progress import SilentBar, progress_bar

__all__ = ["SilentBar", "progress_bar"]
