"""privsplit: privacy-preserving split inference, from training to the edge device and the cloud.

Importing this package is cheap and never imports torch, so the edge side (``privsplit.edge``)
runs on devices without it. Heavy parts are imported where they are used.
"""

from privsplit.errors import (
    BundleError,
    ConfigError,
    DataError,
    MissingDependencyError,
    PrivsplitError,
    RunError,
)

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "PrivsplitError",
    "DataError",
    "ConfigError",
    "RunError",
    "BundleError",
    "MissingDependencyError",
]
