"""privsplit.export: the trained encoder as quantized TFLite / ONNX artefacts, parity and signed bundles.

Main entry point: :func:`privsplit.export.pipeline.export_run` (also importable from here; the heavy
modules load on first use).
"""

from __future__ import annotations

from privsplit._lazy import lazy_exports

_LAZY = {
    "export_run": "privsplit.export.pipeline",
    "ExportResult": "privsplit.export.pipeline",
    "ExportFormat": "privsplit.export.formats",
    "ALL_FORMATS": "privsplit.export.formats",
    "parse_formats": "privsplit.export.formats",
    "ParityReport": "privsplit.export.parity",
    "FormatParity": "privsplit.export.parity",
    "generate_keys": "privsplit.export.signing",
    "write_triton_repository": "privsplit.export.triton",
    "TritonRepository": "privsplit.export.triton",
}

__getattr__, __all__ = lazy_exports("privsplit.export", _LAZY)
