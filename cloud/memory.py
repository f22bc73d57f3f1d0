"""The server process's malloc arenas (``privsplit serve`` limits them to :data:`SERVE_ARENAS`).

glibc gives threads that allocate at the same time arenas of their own, up to 8 per core. A gRPC server
runs its RPCs on a pool of threads (``--rpc-threads``), so as the pool is first used the process's heap
spreads over more and more arenas, and the memory freed in one is not reused by another: measured with
benchmarks/serve_hardening.py's fuzz (20,000 hostile requests, docs/guides/device-credentials.md), RSS grew
14.3 % with glibc's default and 6.4 % with two arenas, and the Python memory the serving code holds stayed
level in both (benchmarks/fuzz_leak_check.py). The CLI therefore limits the arenas before it starts any
thread; an operator's own ``MALLOC_ARENA_MAX`` is left alone (glibc read it at start-up). Worker processes
(``--workers``) inherit the setting through the environment. Elsewhere (not glibc) nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

SERVE_ARENAS = 2
_M_ARENA_MAX = -8  # mallopt's parameter number (glibc malloc.h)


def limit_malloc_arenas(arenas: int = SERVE_ARENAS) -> int | None:
    """Limit this process (and the processes it starts) to ``arenas`` malloc arenas; return the number set, or
    None when ``MALLOC_ARENA_MAX`` was set already or this is not glibc."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    if mallopt(_M_ARENA_MAX, arenas) != 1:
        return None
    os.environ["MALLOC_ARENA_MAX"] = str(arenas)
    return arenas
