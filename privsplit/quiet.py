"""Silence third-party start-up noise at its source, keeping real warnings.

What reached the terminal before (``privsplit export``, the quickstart): TensorFlow/LiteRT INFO lines
("oneDNN custom operations are on", "Created TensorFlow Lite XNNPACK delegate", absl's
"All log messages before absl::InitializeLog()"), torch's pytree notice that registering an Enum is
deprecated (logged by ``torch.utils._pytree`` when torchao registers its enums) and torchao's failed load
of C++ extensions built for another Python/CUDA (``Failed to load .../torchao/_C*.so``).

:func:`silence_startup_noise` must run before those libraries are imported (the CLI entry calls it first
thing). It raises the C++ log threshold to WARNING (``TF_CPP_MIN_LOG_LEVEL=1``: INFO is dropped, warnings
and errors stay) unless the user set it, and filters exactly those two Python log records; every other
warning of those loggers still gets through.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading

# (logger name, pattern of the one message dropped from it)
_NOISE = (
    ("torch.utils._pytree", re.compile(r"is an Enum subclass and is now natively supported by torch\.compile")),
    ("torchao", re.compile(r"^Failed to load \S*torchao\S*_C\S*\.so: Could not load this library")),
)


class _DropMessage(logging.Filter):
    def __init__(self, pattern: re.Pattern) -> None:
        super().__init__()
        self.pattern = pattern

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is not ours to judge
            return True
        return not self.pattern.search(message)


def silence_startup_noise() -> None:
    """Idempotent: set the C++ log level (unless already set) and install the two log filters once."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # TensorFlow and LiteRT: drop INFO, keep WARNING/ERROR
    for name, pattern in _NOISE:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessage) and f.pattern is pattern for f in logger.filters):
            logger.addFilter(_DropMessage(pattern))


# LiteRT logs this INFO line through its own minimal logger (no environment switch) when an interpreter
# first creates its default CPU delegate.
XNNPACK_INFO = b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU."


class _LineDropper:
    """Forwards bytes to ``fd`` as they come, except whole lines that start with ``prefix``."""

    def __init__(self, fd: int, prefix: bytes) -> None:
        self.fd, self.prefix, self.buf = fd, prefix, b""

    def feed(self, chunk: bytes, *, final: bool = False) -> None:
        self.buf += chunk
        while self.buf:
            if self.buf.startswith(self.prefix):
                end = self.buf.find(b"\n")
                if end < 0 and not final:
                    return  # wait for the rest of the line, then drop it
                self.buf = b"" if end < 0 else self.buf[end + 1 :]
                continue
            if self.prefix.startswith(self.buf) and not final:
                return  # may still become the dropped line
            cuts = [i for i in (self.buf.find(b"\n"), self.buf.find(b"\r")) if i >= 0]
            cut = min(cuts) + 1 if cuts else len(self.buf)
            os.write(self.fd, self.buf[:cut])
            self.buf = self.buf[cut:]


@contextlib.contextmanager
def drop_native_stderr(prefix: bytes = XNNPACK_INFO):
    """Filter native writes to stderr (fd 2) during the block: every line that starts with ``prefix`` is dropped.

    For log lines of native libraries that Python cannot filter. Everything else (progress bars, warnings) is
    passed on as it is written, by a thread reading a pipe.
    """
    fd = 2  # native libraries write to fd 2 whatever sys.stderr is
    try:
        os.fstat(fd)
    except OSError:  # no stderr at all: nothing to filter
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    read_end, write_end = os.pipe()
    dropper = _LineDropper(saved, prefix)

    def pump() -> None:
        while chunk := os.read(read_end, 65536):
            dropper.feed(chunk)

    thread = threading.Thread(target=pump, name="privsplit-stderr-filter", daemon=True)
    thread.start()
    os.dup2(write_end, fd)
    os.close(write_end)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, fd)  # closes the pipe's last write end: the pump sees EOF
        thread.join()
        os.close(read_end)
        dropper.feed(b"", final=True)
        os.close(saved)
