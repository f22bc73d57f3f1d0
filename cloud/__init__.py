"""privsplit.cloud: the gRPC backend hosting the server layers and the purifier (no torch).

* :func:`create_server` / :func:`serve` (:mod:`~privsplit.cloud.server`): Open Inference Protocol over
  gRPC (health, reflection, TLS / mTLS, bearer token, metrics, graceful drain);
* :class:`ModelHost` (:mod:`~privsplit.cloud.model_host`): a verified cloud bundle on onnxruntime;
* :class:`DynamicBatcher` (:mod:`~privsplit.cloud.batcher`); pure handlers in
  :mod:`~privsplit.cloud.handlers`; the thin servicer in :mod:`~privsplit.cloud.servicer`;
* :func:`supervise` (:mod:`~privsplit.cloud.workers`): ``serve --workers N``, N processes on one port;
* :func:`run_load` (:mod:`~privsplit.cloud.loadgen`): the load probe behind ``privsplit bench cloud``.

Importing this package is cheap; the names below load on first use.
"""

from __future__ import annotations

from privsplit._lazy import lazy_exports

_LAZY = {
    "ServeConfig": "privsplit.cloud.config",
    "BatchConfig": "privsplit.cloud.config",
    "TlsConfig": "privsplit.cloud.config",
    "read_token": "privsplit.proto.channel",
    "ModelHost": "privsplit.cloud.model_host",
    "ModelSpec": "privsplit.cloud.model_host",
    "DynamicBatcher": "privsplit.cloud.batcher",
    "Metrics": "privsplit.cloud.metrics",
    "CloudServer": "privsplit.cloud.server",
    "create_server": "privsplit.cloud.server",
    "serve": "privsplit.cloud.server",
    "supervise": "privsplit.cloud.workers",
    "LoadSpec": "privsplit.cloud.loadgen",
    "LoadPoint": "privsplit.cloud.loadgen",
    "LoadResult": "privsplit.cloud.loadgen",
    "run_load": "privsplit.cloud.loadgen",
}

__getattr__, __all__ = lazy_exports("privsplit.cloud", _LAZY)
