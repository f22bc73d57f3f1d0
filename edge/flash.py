"""Installing an edge bundle on a device: a local folder (an SD card, a mounted rootfs) or ``ssh://``.

Device layout::

    TARGET/releases/<version>/          the bundle's files, as exported
    TARGET/releases/<version>.sha256    their checksums (``sha256sum -c`` format), written on install
    TARGET/current -> releases/<version>   the active release (a relative symlink)
    TARGET/.privsplit-history           activated versions, oldest first (for --rollback)
    TARGET/.privsplit-recent            releases by last activation, oldest first (what --keep keeps)
    TARGET/.privsplit-lock/             held while a flash or rollback runs (``mkdir`` is atomic)
    TARGET/trust/                       trust root, revocations, newest release (:mod:`~privsplit.edge.trust`)

:func:`flash` verifies the bundle here against the device's trust root (signature first, then hashes;
the first ``--trust-key`` installs the root; a release older than the newest installed is refused
unless ``allow_downgrade``), uploads it into a
fresh ``releases/.incoming-*`` folder, verifies every hash *on the device*, moves it to
``releases/<version>`` and only then switches ``current`` with one ``rename(2)`` of a new symlink over
the old one (atomic). A transfer that fails, is interrupted or arrives corrupted never touches
``current``; its leftovers are removed by the next flash. The ``keep`` most recently activated releases
stay (rollbacks count as activations); :func:`rollback` re-verifies the previous one and switches back to
it. Re-flashing the current version (its copy on the device was damaged) first points ``current`` at
the verified new copy, so ``current`` never resolves to nothing, not even between two renames.

Both kinds of target run the same POSIX ``sh`` scripts (locally with ``sh``, remotely over the system
``ssh``; files go with ``cp`` / ``scp``), so the device needs only ``sh``, coreutils and ``sha256sum``
(or ``shasum``). One flash at a time per target: a second one finds the lock and stops without
touching anything; a lock left by a killed flash is taken over (owner process gone, or over an hour old).
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from urllib.parse import urlsplit

from privsplit.bundle import MANIFEST, SIGNATURE, Bundle, BundleKind, load_bundle, sha256_file
from privsplit.edge.trust import (
    FIX_UNSIGNED,
    ROOT_KEY,
    TRUST_DIR,
    TrustState,
    as_public_key,
    check_signer,
    key_id_of,
    public_pem,
)
from privsplit.errors import BundleError, ConfigError, PrivsplitError
from privsplit.results import check_schema, from_dict, save_json, to_dict

FLASH_RESULT_SCHEMA_VERSION = 1

HISTORY = ".privsplit-history"
RECENT = ".privsplit-recent"
LOCK = ".privsplit-lock"
_SAFE = re.compile(r"^[A-Za-z0-9._+@~/-]+$")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


class FlashError(PrivsplitError):
    """Installing, verifying or switching a release on the device failed; ``current`` is unchanged."""

    exit_code = 8


@dataclass(frozen=True)
class LocalTarget:
    path: Path

    def __str__(self) -> str:
        return str(self.path)


@dataclass(frozen=True)
class SshTarget:
    host: str
    path: str  # absolute path on the device
    user: str | None = None
    port: int | None = None
    identity: Path | None = None  # private key file (ssh -i)
    known_hosts: Path | None = None  # pinned host keys (StrictHostKeyChecking=yes with this file)
    options: tuple[str, ...] = ()  # extra `-o Key=Value` options
    limit_kbps: int | None = None  # scp -l: bandwidth cap (Kbit/s) for slow links
    timeout_s: float = 600.0

    def __str__(self) -> str:
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port else ""
        return f"ssh://{user}{self.host}{port}{self.path}"

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def _common(self, port_flag: str) -> list[str]:
        args = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=15"]
        if self.port:
            args += [port_flag, str(self.port)]
        if self.identity:
            args += ["-i", str(self.identity), "-o", "IdentitiesOnly=yes"]
        if self.known_hosts:
            args += ["-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes"]
        for opt in self.options:
            args += ["-o", opt]
        return args


Target = LocalTarget | SshTarget


def parse_target(text: str, **ssh) -> Target:
    """``/path`` or ``ssh://[user@]host[:port]/path`` (``ssh`` keywords: identity, known_hosts, options, limit_kbps)."""
    if not text.startswith("ssh://"):
        if "://" in text:
            raise ConfigError(f"--to {text!r}: use a folder or ssh://user@host[:port]/path")
        return LocalTarget(Path(text))
    parts = urlsplit(text)
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"--to {text!r}: the port is not a number in 1..65535") from None
    if not parts.hostname or not parts.path or parts.path == "/":
        raise ConfigError(f"--to {text!r}: give ssh://user@host[:port]/absolute/path")
    if not _SAFE.match(parts.path) or ".." in parts.path.split("/"):
        raise ConfigError(
            f"--to {text!r}: the device path may hold only letters, digits and ._+@~/- (no spaces or '..')"
        )
    return SshTarget(host=parts.hostname, path=parts.path.rstrip("/"), user=parts.username, port=port, **ssh)


# ---- running scripts on the device -------------------------------------------------------------------
_SUMCHECK = """sumcheck() {
  if command -v sha256sum >/dev/null 2>&1; then sha256sum -c "$1" >/dev/null
  elif command -v shasum >/dev/null 2>&1; then shasum -a 256 -c "$1" >/dev/null
  else echo "privsplit flash: the device has neither sha256sum nor shasum" >&2; return 127; fi
}
switch() {  # atomically point `current` at releases/$1: rename a fresh symlink over the old one
  ln -s "releases/$1" ".current-$2"
  mv -T ".current-$2" current 2>/dev/null || mv -h ".current-$2" current 2>/dev/null \
|| { rm -f ".current-$2"; echo "privsplit flash: cannot rename the current link (mv -T / mv -h)" >&2; return 1; }
}
"""


def _sh(target: Target, script: str, *args: str) -> str:
    """Run ``script`` with ``sh -s -- args`` on the device; return stdout; FlashError with its stderr."""
    if isinstance(target, LocalTarget):
        cmd = ["sh", "-s", "--", *args]
        timeout = 300.0
    else:
        remote = " ".join(["sh", "-s", "--", *(shlex.quote(a) for a in args)])
        cmd = ["ssh", *target._common("-p"), target.destination, remote]
        timeout = target.timeout_s
    try:
        proc = subprocess.run(cmd, input=_SUMCHECK + script, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as exc:
        raise FlashError(
            f"{exc.filename} not found: install the OpenSSH client (ssh, scp) to flash over ssh://"
        ) from None
    except subprocess.TimeoutExpired:
        raise FlashError(f"{target}: the device did not answer within {timeout:g} s") from None
    if proc.returncode != 0:
        err = proc.stderr.strip().splitlines()
        tail = " | ".join(err[-3:]) or f"exit status {proc.returncode}"
        if isinstance(target, SshTarget) and proc.returncode == 255:
            raise FlashError(
                f"cannot run commands on {target} over ssh: {tail} (check the address, --identity and --known-hosts)"
            )
        raise FlashError(f"{target}: {tail}")
    return proc.stdout


def _upload(target: Target, bundle_root: Path, files: list[str], staging: str) -> int:
    """Copy the bundle's files into ``releases/<staging>`` on the device; return the bytes sent."""
    sent = sum((bundle_root / f).stat().st_size for f in files)
    if isinstance(target, LocalTarget):
        dest = target.path / "releases" / staging
        try:
            for name in files:
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(bundle_root / name, dest / name)
        except OSError as exc:
            raise FlashError(f"copying the bundle to {dest} failed ({exc}); the active release is unchanged") from None
        return sent
    cmd = ["scp", "-q", "-r", *target._common("-P")]
    if target.limit_kbps:
        cmd += ["-l", str(target.limit_kbps)]
    host = f"[{target.host}]" if ":" in target.host else target.host
    remote = f"{target.user + '@' if target.user else ''}{host}:{target.path}/releases/{staging}"
    try:
        proc = subprocess.run(
            [*cmd, str(bundle_root), remote], capture_output=True, text=True, timeout=target.timeout_s
        )
    except subprocess.TimeoutExpired:
        raise FlashError(
            f"scp to {target} did not finish within {target.timeout_s:g} s; the active release is unchanged"
        ) from None
    if proc.returncode != 0:
        raise FlashError(
            f"scp to {target} failed ({proc.stderr.strip()[-300:] or proc.returncode}); the active release is unchanged"
        )
    return sent


# ---- device state --------------------------------------------------------------------------------------
_STATE = """set -u
root=$1; sums=$2; version=$3; create=$4
if [ "$create" = 1 ]; then mkdir -p -- "$root/releases"; elif [ ! -d "$root" ]; then exit 0; fi
cd -- "$root"
if [ -L current ]; then echo "current=$(readlink current)"; elif [ -e current ]; then echo "current-not-link"; fi
if [ -f .privsplit-history ]; then while IFS= read -r l; do echo "history=$l"; done < .privsplit-history; fi
if [ -f .privsplit-recent ]; then while IFS= read -r l; do echo "recent=$l"; done < .privsplit-recent; fi
active=$(readlink current 2>/dev/null || true)
for d in releases/* releases/.incoming-* releases/.trash-* releases/.copy-* .current-* .privsplit-lock.gone-*; do
  [ -e "$d" ] || [ -L "$d" ] || continue
  case "$d" in releases/.incoming-*|releases/.trash-*|releases/.copy-*|.current-*|.privsplit-lock.gone-*)
    # an interrupted re-flash may have left current on its staged copy: keep that one
    [ "$d" = "$active" ] || [ "$d" = "$active.sha256" ] || rm -rf -- "$d"; continue;; esac
  [ -d "$d" ] && echo "release=${d#releases/}"
done
if [ -n "$version" ] && [ -d "releases/$version" ]; then
  printf '%s' "$sums" > "releases/.incoming-check.sha256"
  if (cd "releases/$version" && sumcheck ../.incoming-check.sha256) 2>/dev/null; \
then echo "existing=ok"; else echo "existing=bad"; fi
  rm -f "releases/.incoming-check.sha256"
fi
"""


_LOCK = """set -u
root=$1; token=$2; create=$3
if [ ! -d "$root" ]; then
  if [ "$create" = 1 ]; then mkdir -p -- "$root" || exit 1; else echo locked; exit 0; fi
fi
if mkdir -- "$root/.privsplit-lock" 2>/dev/null; then
  printf '%s\\n' "$token" > "$root/.privsplit-lock/owner"; echo locked
else
  echo "held=$(cat "$root/.privsplit-lock/owner" 2>/dev/null)"
fi
"""
_UNLOCK = """set -u
lock="$1/.privsplit-lock"
if [ -d "$lock" ] && [ "$(cat "$lock/owner" 2>/dev/null)" = "$2" ]; then
  gone="$lock.gone-$$"  # one rename releases it: a kill during rm -rf cannot leave an ownerless lock behind
  mv -- "$lock" "$gone" && rm -rf -- "$gone"
fi
"""
STALE_LOCK_S = 3600.0  # a lock older than this is left by a flash that died (flashes time out long before)
OWNERLESS_LOCK_S = 3.0  # a live flash writes the owner right after the mkdir: none for this long means it died between


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale(owner: str) -> bool:
    """A lock whose owner (``epoch pid host token``) died: same host and no such process, or too old."""
    parts = owner.split()
    try:
        epoch, pid, host = float(parts[0]), int(parts[1]), parts[2]
    except (IndexError, ValueError):
        return False
    if host == socket.gethostname() and not _pid_alive(pid):
        return True
    return time.time() - epoch > STALE_LOCK_S


class _DeviceLock:
    """``with _DeviceLock(target, create=...):`` holds TARGET/.privsplit-lock for one flash or rollback.

    A lock left by a flash that was killed (its process is gone on this host, or it is older than
    :data:`STALE_LOCK_S`, or it still has no owner after :data:`OWNERLESS_LOCK_S`: killed between the
    ``mkdir`` and the owner's write, or while unlocking) is taken over; a live one stops this flash
    before it touches anything."""

    def __init__(self, target: Target, *, create: bool) -> None:
        self.target, self.create = target, create
        self.token = f"{time.time():.0f} {os.getpid()} {socket.gethostname()} {secrets.token_hex(4)}"

    def _try(self) -> str:
        return _sh(self.target, _LOCK, str(self.target.path), self.token, "1" if self.create else "0").strip()

    def __enter__(self) -> _DeviceLock:
        out = self._try()
        waited = time.monotonic() + OWNERLESS_LOCK_S
        while out == "held=" and time.monotonic() < waited:  # no owner yet: its flash may be between mkdir and write
            time.sleep(0.1)
            out = self._try()
        if out == "held=" or (out.startswith("held=") and _stale(out[5:])):  # ownerless: killed between the two
            _sh(self.target, _UNLOCK, str(self.target.path), out[5:])  # only if it is still that owner's
            out = self._try()
        if out.startswith("held="):
            raise FlashError(
                f"{self.target}: another flash or rollback is running (lock {LOCK} held by {out[5:] or 'unknown'}); "
                f"if none is, remove {self.target.path}/{LOCK} on the device and retry"
            )
        return self

    def __exit__(self, *exc) -> None:
        try:
            _sh(self.target, _UNLOCK, str(self.target.path), self.token)
        except FlashError:
            if exc[0] is None:
                raise


@dataclass(frozen=True)
class DeviceState:
    current: str | None  # version the current link points at
    history: tuple[str, ...]
    releases: tuple[str, ...]
    existing_ok: bool | None  # the version being flashed: already there and intact (None: not there)
    recent: tuple[str, ...] = ()  # releases by last activation, oldest first

    @classmethod
    def read(cls, target: Target, *, sums: str = "", version: str = "", create: bool = False) -> DeviceState:
        """The device's releases, history and current link; stale leftovers of interrupted flashes are
        removed on the way. ``create``: make TARGET/releases when missing (flash), else read only."""
        root = str(target.path)
        out = _sh(target, _STATE, root, sums, version, "1" if create else "0")
        current, history, releases, existing, recent = None, [], [], None, []
        for line in out.splitlines():
            key, _, value = line.partition("=")
            if key == "current-not-link":
                raise FlashError(
                    f"{target}/current exists but is not a symlink: move it away (flash manages it as a link)"
                )
            if key == "current":
                current = value.removeprefix("releases/").rstrip("/")
            elif key == "history" and value:
                history.append(value)
            elif key == "recent" and value:
                recent.append(value)
            elif key == "release":
                releases.append(value)
            elif key == "existing":
                existing = value == "ok"
        return cls(
            current=current,
            history=tuple(history),
            releases=tuple(releases),
            existing_ok=existing,
            recent=tuple(recent),
        )


class FlashAction(str, Enum):
    INSTALLED = "installed"  # uploaded, verified on the device, switched
    SWITCHED = "switched"  # already on the device and intact: verified and switched, nothing uploaded
    UNCHANGED = "unchanged"  # already the current release
    ROLLED_BACK = "rolled-back"


@dataclass(frozen=True)
class FlashResult:
    target: str
    version: str
    previous: str | None
    action: FlashAction
    uploaded_bytes: int
    kept: tuple[str, ...]
    removed: tuple[str, ...]
    seconds: float
    trust: str = ""  # how the signature was checked (and a trust root installed or rotated)
    acceptance: str = ""  # the on-device acceptance check's verdict (privsplit.edge.acceptance)

    def to_json(self) -> dict:
        return {"schema_version": FLASH_RESULT_SCHEMA_VERSION, **to_dict(self), "seconds": round(self.seconds, 3)}

    @classmethod
    def from_json(cls, data: dict, *, source: str = "flash result") -> FlashResult:
        hint = "re-run `privsplit flash ... --json FILE`"
        return from_dict(cls, check_schema(data, version=FLASH_RESULT_SCHEMA_VERSION, source=source, hint=hint))

    def save(self, path: str | Path) -> Path:
        return save_json(path, self.to_json())

    def summary(self) -> str:
        how = {
            FlashAction.INSTALLED: f"{self.uploaded_bytes / 1024:.1f} KB uploaded and verified on the device",
            FlashAction.SWITCHED: "already on the device, re-verified there",
            FlashAction.UNCHANGED: "already current, nothing to do",
            FlashAction.ROLLED_BACK: "rolled back, re-verified on the device",
        }[self.action]
        prev = f" (was {self.previous})" if self.previous and self.previous != self.version else ""
        gone = f"; removed {', '.join(self.removed)}" if self.removed else ""
        trust = f"; {self.trust}" if self.trust else ""
        check = f"\n{self.acceptance}" if self.acceptance else ""
        return (
            f"{self.target}: current -> releases/{self.version}{prev}: {how} in {self.seconds:.1f} s; "
            f"kept {', '.join(self.kept)}{gone}{trust}{check}"
        )


def _q(name: str) -> str:
    return shlex.quote(name)


def _activation(version: str, token: str, history: list[str], recent: list[str], remove: list[str]) -> str:
    lines = [f"switch {_q(version)} {_q(token)}"]
    for name, items in ((HISTORY, history), (RECENT, recent)):
        lines += [f"printf '%s\\n' {' '.join(_q(h) for h in items)} > {name}.tmp", f"mv -f {name}.tmp {name}"]
    lines += [f"rm -rf -- releases/{_q(r)} releases/{_q(r + '.sha256')}" for r in remove]
    return "\n".join(lines) + "\n"


def _recent(state: DeviceState, version: str) -> list[str]:
    """Releases by last activation, oldest first, ending with ``version`` (releases never recorded count as oldest)."""
    known = [r for r in (state.recent or state.history) if r != version and r in state.releases]
    unknown = [r for r in state.releases if r != version and r not in known]
    return [*unknown, *dict.fromkeys(known), version]


def _plan(state: DeviceState, version: str, keep: int) -> tuple[list[str], list[str], list[str]]:
    """(new rollback history, new recency list, releases to remove): ``version`` becomes the newest entry and
    the ``keep`` most recently activated releases stay."""
    recent = _recent(state, version)[-keep:]
    history = [h for h in state.history if h != version and h in recent] + [version]
    return history, recent, [r for r in state.releases if r not in recent]


_TRUST_READ = """set -u
cd -- "$1" 2>/dev/null || exit 0
if [ -f trust/root.pub ]; then echo "root<<"; cat trust/root.pub; echo ">>root"; fi
if [ -f trust/revoked ]; then while IFS= read -r l; do echo "revoked=$l"; done < trust/revoked; fi
if [ -f trust/newest-release ]; then echo "newest=$(cat trust/newest-release)"; fi
if [ -n "$2" ] && [ -f "releases/$2/manifest.sig" ]; then
  echo "signer=$(sed -n 's/.*"key_id": *"\\([0-9a-f]*\\)".*/\\1/p' "releases/$2/manifest.sig")"
fi
"""


def read_trust(target: Target | str | Path, *, release: str = "") -> tuple[TrustState, str | None]:
    """The device's trust state, and (with ``release``) the key id that release's manifest.sig names."""
    target = parse_target(str(target)) if isinstance(target, (str, Path)) else target
    out = _sh(target, _TRUST_READ, str(target.path), release)
    root: str | None = None
    revoked: list[str] = []
    newest, signer = "", None
    pem: list[str] | None = None
    for line in out.splitlines():
        if pem is not None:
            if line == ">>root":
                root, pem = "".join(pem), None
            else:
                pem.append(line + "\n")
        elif line == "root<<":
            pem = []
        elif line.startswith("revoked="):
            revoked.append(line[8:])
        elif line.startswith("newest="):
            newest = line[7:]
        elif line.startswith("signer="):
            signer = line[7:] or None
    try:
        state = TrustState.parse(root=root, revoked="\n".join(revoked), newest=newest, where=f"{target}/{TRUST_DIR}")
    except BundleError as exc:
        raise FlashError(str(exc)) from None
    return state, signer


def _trust_script(state: TrustState, token: str) -> str:
    lines = [f"mkdir -p {TRUST_DIR}"]
    for name, content in state.files().items():
        tmp = f"{TRUST_DIR}/.{name}-{token}"
        lines += [
            f"cat > {_q(tmp)} <<'PRIVSPLIT_TRUST'\n{content}PRIVSPLIT_TRUST",
            f"mv -f {_q(tmp)} {TRUST_DIR}/{name}",
        ]
    return "\n".join(lines) + "\n"


def authorize(
    bundle: str | Path,
    state: TrustState,
    *,
    device: str,
    trust_key=None,
    allow_unsigned: bool = False,
    allow_downgrade: bool = False,
) -> tuple[Bundle, TrustState, str]:
    """Verify an edge bundle for a device with ``state``: (the verified bundle, the device's trust state once
    it is installed, a note on how it was checked). Signature first (against the device's root, a key the
    root endorsed, or ``trust_key`` which becomes the root of a device without one), then every file's hash,
    then the anti-rollback rule. Raises BundleError / FlashError naming the file and the fix."""
    explicit = None if trust_key is None else as_public_key(trust_key)
    if allow_unsigned:
        if explicit is not None:
            raise ConfigError("--allow-unsigned skips the signature check: do not pass --trust-key with it")
        bundle_ = load_bundle(bundle, kind=BundleKind.EDGE)
        new, note = state, "signature NOT checked (--allow-unsigned, development only)"
    elif state.root_pem is None:
        if explicit is None:
            raise BundleError(
                f"{device} has no trust root ({TRUST_DIR}/{ROOT_KEY}): pass --trust-key PREFIX.pub to install it "
                f"with this flash (the bundle must be signed by it), or pass {FIX_UNSIGNED}"
            )
        bundle_ = load_bundle(bundle, trust_key=explicit, kind=BundleKind.EDGE)
        new = replace(state, root_pem=public_pem(explicit))
        note = f"signature verified; trust root {key_id_of(explicit)} installed"
    else:
        if explicit is not None and key_id_of(explicit) != state.root_id:
            raise BundleError(
                f"--trust-key {trust_key} is key {key_id_of(explicit)}, but {device} trusts {state.root_id}: "
                "rotate keys with an endorsement (`privsplit keys endorse`, `privsplit export --endorsement`)"
            )
        check = check_signer(Path(bundle), state, device=device)
        bundle_ = load_bundle(bundle, trust_key=check.key, kind=BundleKind.EDGE)
        new = check.state
        note = f"signature verified (key {check.signer})"
        if check.rotated:
            note += f"; trust root rotated {state.root_id} -> {check.signer}"
    newest = state.newest_release
    if newest is not None and bundle_.release < newest and not allow_downgrade:
        raise FlashError(
            f"{bundle_.root / MANIFEST}: release {bundle_.release} is older than {device}'s newest {newest} "
            "(downgrade refused): flash a newer export, `--rollback` to a release still on the device, "
            "or pass --allow-downgrade"
        )
    return bundle_, replace(new, newest_release=max(newest or 0, bundle_.release)), note


def flash(
    bundle: str | Path,
    target: Target | str,
    *,
    keep: int = 3,
    trust_key=None,
    allow_unsigned: bool = False,
    allow_downgrade: bool = False,
) -> FlashResult:
    """Install ``bundle`` (an edge bundle folder) on ``target`` and make it current; see the module doc.

    ``trust_key`` (PREFIX.pub or a key object): installed as the device's trust root when it has none, else it
    must be that root. ``allow_unsigned``: skip the signature check (development). ``allow_downgrade``: install
    a release older than the newest the device has had."""
    started = time.perf_counter()
    if keep < 1:
        raise ConfigError(f"--keep must be >= 1, got {keep}")
    target = parse_target(str(target)) if isinstance(target, (str, Path)) else target
    load_bundle(bundle, kind=BundleKind.EDGE)  # a damaged bundle is named before the device is touched
    with _DeviceLock(target, create=True):
        state, _ = read_trust(target)
        verified, trust, note = authorize(
            bundle,
            state,
            device=str(target),
            trust_key=trust_key,
            allow_unsigned=allow_unsigned,
            allow_downgrade=allow_downgrade,
        )
        version = verified.version
        if not _SAFE_NAME.match(version):
            raise FlashError(
                f"bundle version {version!r} cannot name a release folder "
                "(letters, digits, ._+- only): re-export with --version"
            )
        root = verified.root
        files = sorted(verified.manifest["files"]) + [MANIFEST] + ([SIGNATURE] if (root / SIGNATURE).is_file() else [])
        if any("\n" in f or "\\" in f for f in files):
            raise FlashError("a bundle file name holds a newline or backslash: re-export the bundle")
        digests = {f: verified.manifest["files"][f]["sha256"] for f in verified.manifest["files"]}
        digests.update({f: sha256_file(root / f) for f in (MANIFEST, SIGNATURE) if f in files})
        sums = "".join(f"{digests[f]}  {f}\n" for f in files)
        trust_change = trust if trust != state else None
        # the device verifies again before running the vectors: by its root, or the one this flash installs
        new_root = trust.root_pem if state.root_pem is None and not allow_unsigned else None
        result = _install(
            target, root, files, sums, version, keep, started, trust_change, new_root=new_root, unsigned=allow_unsigned
        )
        return replace(result, trust=note)


def _install(
    target: Target,
    root: Path,
    files: list[str],
    sums: str,
    version: str,
    keep: int,
    started: float,
    trust: TrustState | None = None,
    *,
    new_root: str | None = None,
    unsigned: bool = False,
) -> FlashResult:
    """Signature and hashes are verified (:func:`authorize`); here: upload, verify every hash on the device, run the
    reference vectors there (:func:`_accept`, verified by the device's root or ``new_root``, the PEM this flash
    installs; ``unsigned``: flash --allow-unsigned), then write the trust state and switch ``current``."""
    state = DeviceState.read(target, sums=sums, version=version, create=True)
    token = f"{int(time.time())}-{secrets.token_hex(4)}"
    staging = f".incoming-{token}"
    history, kept, remove = _plan(state, version, keep)
    reused = bool(state.existing_ok)
    prelude = f"set -eu\ncd -- {_q(str(target.path))}\n"
    trust_lines = "" if trust is None else _trust_script(trust, token)
    if reused and state.current == version:
        if trust_lines:
            _sh(target, prelude + trust_lines)
        return FlashResult(
            str(target),
            version,
            state.current,
            FlashAction.UNCHANGED,
            0,
            tuple(state.releases),
            (),
            time.perf_counter() - started,
        )
    replace_current = (
        ""
        if state.current != version
        # re-flash of the current version: current must never dangle
        else (
            f"switch {_q(staging)} {_q(token + '-staged')}\n"  # current -> the verified new copy
            f"rm -rf -- releases/{_q('.copy-' + token)}\ncp -R releases/{_q(staging)} releases/{_q('.copy-' + token)}\n"
            f"(cd releases/{_q('.copy-' + token)} && sumcheck ../{_q(staging + '.sha256')}) || "
            "{ echo 'copying the release on the device failed; current points at the new copy' >&2; exit 3; }\n"
        )
    )
    source = staging if not replace_current else ".copy-" + token
    sent = 0
    if not reused:
        sent = _upload(target, root, files, staging)
        _sh(
            target,
            prelude + f"cat > releases/{_q(staging + '.sha256')} <<'PRIVSPLIT_SUMS'\n{sums}PRIVSPLIT_SUMS\n"
            f"if ! (cd releases/{_q(staging)} && sumcheck ../{_q(staging + '.sha256')}); then\n"
            f"  rm -rf -- releases/{_q(staging)} releases/{_q(staging + '.sha256')}\n"
            "  echo 'the copy on the device does not match the bundle hashes "
            "(interrupted or corrupted transfer); current is unchanged' >&2; exit 3\nfi\n",
        )
        # the verified files run their reference vectors on the device before anything moves
        verdict = _accept(target, staging, [staging, staging + ".sha256"], new_root, unsigned)
        script = (
            prelude + replace_current + f"if [ -e releases/{_q(version)} ]; "
            f"then mv -- releases/{_q(version)} releases/{_q('.trash-' + token)}; fi\n"
            f"mv -- releases/{_q(source)} releases/{_q(version)}\n"
            f"cp -- releases/{_q(staging + '.sha256')} releases/{_q(version + '.sha256')}\n"
            f"rm -rf -- releases/{_q('.trash-' + token)}\n"
        )
    else:
        _sh(
            target,
            prelude + f"cat > releases/{_q(version + '.sha256')} <<'PRIVSPLIT_SUMS'\n{sums}PRIVSPLIT_SUMS\n"
            f"(cd releases/{_q(version)} && sumcheck ../{_q(version + '.sha256')}) || "
            f"{{ echo 'release {version} changed on the device since it was checked; flash again' >&2; exit 3; }}\n",
        )
        verdict = _accept(target, version, [], new_root, unsigned)
        script = prelude
    cleanup = f"rm -rf -- releases/{_q(staging)} releases/{_q(staging + '.sha256')}\n" if not reused else ""
    _sh(target, script + trust_lines + _activation(version, token, history, kept, remove) + cleanup)
    action = FlashAction.SWITCHED if reused else FlashAction.INSTALLED
    return FlashResult(
        str(target),
        version,
        state.current,
        action,
        sent,
        tuple(kept),
        tuple(remove),
        time.perf_counter() - started,
        acceptance=verdict,
    )


def _accept(target: Target, release: str, cleanup: list[str], new_root: str | None, unsigned: bool) -> str:
    """Run the acceptance check on ``releases/<release>`` on the device (before ``current`` moves); return its
    verdict line. Different bits: remove ``cleanup`` (the staged copy) and raise FlashError; current is unchanged.

    The signature was checked on the host against the device's trust state (:func:`authorize`) and every hash on
    the device; the device's selftest verifies the signature again (by its root, or ``new_root``), then runs the
    reference vectors."""
    from privsplit.edge.acceptance import device_check

    release_dir = f"{target.path}/releases/{release}"
    verdict, ok = device_check(target, release_dir, new_root_pem=new_root, allow_unsigned=unsigned)
    if not ok:
        if cleanup:
            _sh(target, f"cd -- {_q(str(target.path))}\nrm -rf -- " + " ".join(f"releases/{_q(c)}" for c in cleanup))
        raise FlashError(f"{target}: refused, the active release is unchanged: {verdict}")
    return verdict


def rollback(target: Target | str, *, allow_unsigned: bool = False) -> FlashResult:
    """Switch ``current`` back to the release activated before it (verified on the device first; on a device with
    a trust root, that release must be signed by the root: a release signed by a rotated-out key is refused)."""
    started = time.perf_counter()
    target = parse_target(str(target)) if isinstance(target, (str, Path)) else target
    with _DeviceLock(target, create=False):
        return _roll_back(target, started, allow_unsigned)


def _roll_back(target: Target, started: float, allow_unsigned: bool) -> FlashResult:
    state = DeviceState.read(target)
    if state.current is None:
        raise FlashError(f"{target} has no current release: flash one first")
    history = [h for h in state.history if h in state.releases]
    before = history[: history.index(state.current)] if state.current in history else history
    before = [h for h in before if h != state.current]
    if not before:
        raise FlashError(
            f"{target}: no earlier release to roll back to (history: {', '.join(state.history) or 'empty'})"
        )
    previous = before[-1]
    trust, signer = read_trust(target, release=previous)
    note = "signature NOT checked (--allow-unsigned, development only)"
    if not allow_unsigned:
        where = f"{target}/releases/{previous}/{SIGNATURE}"
        if trust.root_pem is None:
            raise BundleError(
                f"{target} has no trust root, so release {previous} cannot be checked: flash a signed bundle with "
                f"--trust-key PREFIX.pub first, or pass {FIX_UNSIGNED}"
            )
        if signer is None:
            raise BundleError(f"{where} missing: release {previous} is unsigned; flash a signed bundle instead")
        if signer != trust.root_id:
            why = trust.revoked.get(signer, "not the trust root")
            raise BundleError(
                f"{where}: release {previous} is signed by key {signer} ({why}); the device trusts "
                f"{trust.root_id}: flash a bundle signed by it instead"
            )
        note = f"signature key {signer} is the device's trust root"
    token = f"{int(time.time())}-{secrets.token_hex(4)}"
    script = (
        f"set -eu\ncd -- {_q(str(target.path))}\n"
        f"(cd releases/{_q(previous)} && sumcheck ../{_q(previous + '.sha256')}) || "
        f"{{ echo 'release {previous} does not match its checksums on the device: "
        f"not rolling back (flash a bundle instead)' >&2; exit 3; }}\n"
    )
    recent = [r for r in (state.recent or state.history) if r != previous and r in state.releases] + [previous]
    _sh(target, script + _activation(previous, token, before, recent, []))
    return FlashResult(
        str(target),
        previous,
        state.current,
        FlashAction.ROLLED_BACK,
        0,
        tuple(state.releases),
        (),
        time.perf_counter() - started,
        trust=note,
    )


def current_release(target: Target | str | Path) -> Path | None:
    """The folder ``current`` resolves to on a local target (None when there is none)."""
    target = (
        LocalTarget(target) if isinstance(target, Path) else parse_target(target) if isinstance(target, str) else target
    )
    if not isinstance(target, LocalTarget):
        raise ConfigError("current_release reads local targets only")
    link = target.path / "current"
    return link.resolve() if link.is_symlink() else None
