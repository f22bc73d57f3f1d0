"""Per-device bearer tokens from a file the server re-reads while it runs (``privsplit serve --device-tokens``).

The file holds one device a line, ``DEVICE-ID SHA256-HEX-OF-TOKEN`` (``#`` starts a comment), so it holds no
secret: a stolen copy does not let anyone in. ``privsplit devices add`` appends a line and prints the token
once; ``privsplit devices revoke`` removes it. The server checks the file's identity (inode, size, mtime) at
most every :data:`POLL_S` seconds, on the calls that arrive (no thread), and reloads it when it changed: a
revoked device is refused within ``POLL_S`` without a restart, on new calls and on the next message of a
stream it already holds open. A file that cannot be read or parsed at run time refuses every device until it
is fixed (fail closed); at start it is a one-line :class:`ConfigError` naming the file and line.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from privsplit.errors import ConfigError

log = logging.getLogger(__name__)

POLL_S = 1.0  # revocation takes effect within this (plus one call)
DEVICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
_HEX64 = re.compile(r"[0-9a-f]{64}")


def token_digest(token: str) -> str:
    """The sha256 hex of a token, as the tokens file stores it."""
    return hashlib.sha256(token.encode()).hexdigest()


def check_device_id(device: str) -> str:
    if not DEVICE_ID.fullmatch(device):
        raise ConfigError(
            f"device id {device!r} is not usable: 1-128 characters of letters, digits and . _ : @ -, "
            "starting with a letter or digit"
        )
    return device


@dataclass(frozen=True)
class DeviceTable:
    """Parsed tokens file: token digest -> device id."""

    by_digest: dict[str, str]

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(sorted(self.by_digest.values()))


def parse_tokens(text: str, path: Path) -> DeviceTable:
    """Parse a tokens file; ConfigError naming the line at fault."""
    by_digest: dict[str, str] = {}
    seen: set[str] = set()
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        where = f"--device-tokens {path} line {number}"
        if len(parts) != 2 or not _HEX64.fullmatch(parts[1].lower()):
            raise ConfigError(f"{where}: expected 'DEVICE-ID SHA256-HEX' (write it with `privsplit devices add`)")
        device, digest = parts[0], parts[1].lower()
        try:
            check_device_id(device)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if device in seen:
            raise ConfigError(f"{where}: device {device!r} is listed twice; keep one line per device")
        if digest in by_digest:
            raise ConfigError(f"{where}: the same token is listed for {by_digest[digest]!r}; issue each its own")
        seen.add(device)
        by_digest[digest] = device
    return DeviceTable(by_digest)


def read_tokens(path: Path) -> DeviceTable:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"--device-tokens {path}: cannot read it ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"--device-tokens {path}: not text; one 'DEVICE-ID SHA256-HEX' a line") from None
    return parse_tokens(text, path)


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


class DeviceTokens:
    """The live table of a tokens file. :meth:`identify` a presented token; :meth:`active` asks whether a
    device is still listed (streams re-ask on each message). Thread-safe; reloads are cheap and rare."""

    def __init__(self, path: Path, *, poll_s: float = POLL_S, clock=time.monotonic) -> None:
        self.path = Path(path)
        self._poll_s = poll_s
        self._clock = clock
        self._lock = threading.Lock()
        self._stamp = _stamp(self.path)
        self._table = read_tokens(self.path)  # at start a bad file is a ConfigError
        self._revoked: dict[str, str] = {}  # digest -> device id, for the refusal's message
        self._checked = clock()
        self.reloads = 0

    @property
    def devices(self) -> tuple[str, ...]:
        self.refresh()
        return self._table.devices

    def refresh(self) -> None:
        """Reload the file if it changed (checked at most every ``poll_s``)."""
        now = self._clock()
        if now - self._checked < self._poll_s:
            return
        with self._lock:
            if now - self._checked < self._poll_s:
                return
            self._checked = now
            stamp = _stamp(self.path)
            if stamp == self._stamp:
                return
            self._stamp = stamp
            old = self._table
            try:
                table = read_tokens(self.path)
            except ConfigError as exc:
                table = DeviceTable({})
                log.error("%s; refusing every device until the file is fixed", exc)
            for digest, device in old.by_digest.items():
                if digest not in table.by_digest:
                    self._revoked[digest] = device
            for digest in table.by_digest:
                self._revoked.pop(digest, None)
            if len(self._revoked) > 100_000:  # bounded: only for the message
                self._revoked.clear()
            self._table = table
            self.reloads += 1
            gone = sorted(set(old.by_digest.values()) - set(table.by_digest.values()))
            log.warning(
                "device tokens reloaded from %s: %d devices%s",
                self.path,
                len(table.by_digest),
                f" (revoked: {', '.join(gone)})" if gone else "",
            )

    def identify(self, token: str) -> str | None:
        """The device id of ``token``, or None."""
        self.refresh()
        return self._table.by_digest.get(token_digest(token))

    def revoked(self, token: str) -> str | None:
        """The device id ``token`` belonged to, if it was revoked while the server ran."""
        return self._revoked.get(token_digest(token))

    def active(self, device: str, token_digest_hex: str) -> bool:
        self.refresh()
        return self._table.by_digest.get(token_digest_hex) == device
