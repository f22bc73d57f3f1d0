"""Build (once, cached outside the repository) an arm64 Debian bookworm image for an emulated Raspberry Pi.

The image holds Python 3.11, Debian's arm64 kernel with a lean initrd, an sshd that takes a key generated
here, and the aarch64 wheels ``pip install privsplit[edge]`` needs (downloaded on this host from the package
index; only the project's own wheel is added at run time). Recipe (measured in ../shared/docs/toolchain.md):
``debootstrap --foreign --variant=minbase`` (downloads shared by every build in the cache: ``debs/``) -> lean
initrd config -> second stage by the host's dpkg (native unpacking; only maintainer scripts under qemu-user,
:func:`_second_stage`) -> configure. The cache folder is named by a hash of this recipe (this file, the edge
requirements, the Debian suite), so editing either builds a new image; a build happens in a ``.partial``
folder renamed into place at the end, so a killed build never leaves a half image behind.

The image the VM boots is that base plus an **edge layer** (:func:`build_layer`, its own cache folder
``<base>-edge-<layer>``): a venv at /opt/privsplit with privsplit[edge]'s dependencies installed by the guest's
own pip (run under qemu-user in a chroot of the base tree) from the same aarch64 wheels, byte-compiled
(``.pyc`` next to every module, so no guest process compiles numpy or the runtimes' Python code). The project's
own wheel is not in it: ``pip install privsplit[edge]`` in the guest installs it and finds every dependency
satisfied. The layer takes a minute or two; changing it never re-runs debootstrap.

Every step has a timeout; a failure raises :class:`PiError`, whose text is one line naming the step and cause.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    from pip._vendor import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
SUITE = "bookworm"
MIRROR = os.environ.get("PRIVSPLIT_PI_MIRROR", "http://deb.debian.org/debian")
PYTHON = "3.11"  # bookworm's python3
# pip does not widen an explicit --platform: list every manylinux tag bookworm (glibc 2.36) runs
PLATFORMS = ("manylinux2014_aarch64", *(f"manylinux_2_{m}_aarch64" for m in range(17, 37)))
PACKAGES = ("python3", "python3-venv", "python3-pip", "linux-image-arm64", "kmod", "zstd", "iproute2", "openssh-server")
INITRD_MODULES = ("virtio_pci", "virtio_mmio", "virtio_blk", "ext4", "crc32c_generic")
IMAGE_SIZE = "3G"
GUEST_WHEELS = "/opt/privsplit-wheels"

INIT = r"""#!/bin/sh
# privsplit emulated Pi: mount, network (qemu user networking: the host is 10.0.2.2), sshd, then wait.
PATH=/usr/sbin:/usr/bin:/sbin:/bin; export PATH
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev 2>/dev/null
mkdir -p /dev/pts /run /tmp; mount -t devpts devpts /dev/pts; mount -t tmpfs tmpfs /run; mount -t tmpfs tmpfs /tmp
mount -o remount,rw /
hostname privsplit-pi
cpu=$(tr ' ' '\n' < /proc/cmdline | sed -n 's/^privsplit.cpu=//p')
modprobe virtio_net
ip link set lo up; ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0; ip route add default via 10.0.2.2
mkdir -p /run/sshd /etc/ssh/sshd_config.d
# every ssh session sees what machine this is: edge bench labels its timings as emulated
printf 'SetEnv PRIVSPLIT_EMULATED=qemu-system-aarch64:%s\n' "${cpu:-unknown}" > /etc/ssh/sshd_config.d/privsplit.conf
/usr/sbin/sshd -e
echo "privsplit-pi: sshd up (cpu ${cpu:-unknown})"
while :; do sleep 3600; done
"""

SSHD_CONF = """PermitRootLogin prohibit-password
PasswordAuthentication no
UseDNS no
AcceptEnv PRIVSPLIT_*
"""


class PiError(RuntimeError):
    """One step of building or running the emulated Pi failed; ``str()`` is one line: step and cause."""

    def __init__(self, step: str, cause: str) -> None:
        cause = " ".join(cause.split())[-400:]
        super().__init__(f"emulated-pi: {step}: {cause}")
        self.step = step


def run(
    step: str,
    cmd: list[str],
    *,
    timeout: float,
    cwd: Path | None = None,
    log: Path | None = None,
    env: dict[str, str] | None = None,
) -> str:
    """Run ``cmd`` (niced); PiError naming ``step`` on failure, missing tool or timeout."""
    try:
        proc = subprocess.run(
            ["nice", "-n", "10", *cmd],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            errors="replace",
            env=None if env is None else {**os.environ, **env},
        )
    except FileNotFoundError as exc:
        raise PiError(step, f"{exc.filename} not found (apt-get install the packages named in .ci/run)") from None
    except subprocess.TimeoutExpired:
        raise PiError(step, f"{cmd[0]} did not finish within {timeout:g} s") from None
    if log is not None:
        with log.open("a") as fh:
            fh.write(f"$ {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}\n")
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        raise PiError(step, f"{cmd[0]} exited {proc.returncode}: {' | '.join(lines[-3:])}")
    return proc.stdout


def edge_requirements() -> list[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [*project["dependencies"], *project["optional-dependencies"]["edge"]]


RECIPE_VERSION = 2  # bump when the build steps change in a way the constants below do not show
# Files the host's dpkg does not unpack into the tree (dpkg --path-exclude): documentation, and the kernel modules
# of hardware a virt machine does not have (~180 of the kernel's ~300 MB: less to write, depmod, and put in the
# image). What the VM loads (virtio, ext4 and their dependencies) is elsewhere in the tree. udev's hwdb sources
# go too: its postinst would compile them into a 10 MB database, under emulation, for a udev that never runs; and
# udev's initramfs hooks: the initrd loads the listed modules itself and the kernel's devtmpfs makes /dev/vda,
# while starting udevd, triggering every device and waiting for it to settle took most of the boot under TCG.
PATH_EXCLUDE = (
    *(f"/usr/share/{d}/*" for d in ("doc", "man", "locale", "info")),
    "/usr/lib/udev/hwdb.d/*",
    "/lib/udev/hwdb.d/*",
    *(f"/usr/share/initramfs-tools/{d}/udev" for d in ("hooks", "scripts/init-top", "scripts/init-bottom")),
    *(
        f"/lib/modules/*/kernel/{d}/*"
        for d in ("sound", *(f"drivers/{x}" for x in ("gpu", "media", "net/wireless", "net/ethernet", "infiniband",
                                                          "scsi", "usb", "iio", "staging")))
    ),
)  # fmt: skip


def recipe_hash() -> str:
    """Names the cache folder: what goes into the image (not this file's other code)."""
    parts = [str(RECIPE_VERSION), SUITE, MIRROR, PYTHON, IMAGE_SIZE, GUEST_WHEELS, INIT, SSHD_CONF]
    parts += [*PACKAGES, *INITRD_MODULES, *PLATFORMS, *PATH_EXCLUDE, *edge_requirements()]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def cache_root() -> Path:
    base = os.environ.get("PRIVSPLIT_PI_CACHE")
    return Path(base) if base else Path.home() / ".cache" / "privsplit" / "emulated-pi"


@dataclass(frozen=True)
class Image:
    """A built image folder: root.img, vmlinuz, initrd.img, the ssh key pair, the guest's host key, ready.json."""

    folder: Path

    @property
    def disk(self) -> Path:
        return self.folder / "root.img"

    @property
    def kernel(self) -> Path:
        return self.folder / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.folder / "initrd.img"

    @property
    def key(self) -> Path:
        return self.folder / "id_ed25519"

    @property
    def host_key(self) -> str:
        return " ".join((self.folder / "ssh_host_ed25519_key.pub").read_text().split()[:2])

    def check(self) -> None:
        """PiError when a file is missing (a broken or partial image)."""
        for path in (self.disk, self.kernel, self.initrd, self.key, self.folder / "ready.json"):
            if not path.is_file() or path.stat().st_size == 0:
                raise PiError("image check", f"{path} is missing or empty: delete {self.folder} and build again")

    @property
    def info(self) -> dict:
        return json.loads((self.folder / "ready.json").read_text())


def base_folder() -> Path:
    """The debootstrapped base (kernel, initrd, keys, the tree the layer's disk is made of): rarely changed."""
    return cache_root() / recipe_hash()


LAYER_VERSION = 1  # bump when build_layer's steps change
EDGE_VENV = "/opt/privsplit"  # the venv privsplit[edge] goes into (its dependencies preinstalled by the layer)


def layer_hash() -> str:
    """Names the edge layer's folder: its base, its steps, the venv, the dependencies it preinstalls."""
    parts = [recipe_hash(), str(LAYER_VERSION), EDGE_VENV, *edge_requirements()]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:8]


def image_folder() -> Path:
    """The image the VM boots: the base plus the edge layer."""
    return cache_root() / f"{recipe_hash()}-edge-{layer_hash()}"


def find_image() -> Image | None:
    folder = image_folder()
    return Image(folder) if (folder / "ready.json").is_file() else None


def deb_cache() -> Path:
    """Downloaded .debs, shared by every build in this cache (debootstrap --cache-dir): a rebuild downloads none."""
    folder = cache_root() / "debs"
    folder.mkdir(parents=True, exist_ok=True)
    return folder.resolve()


def _check_tools() -> None:
    need = ["debootstrap", "dpkg", "qemu-system-aarch64", "mkfs.ext4", "ssh-keygen", "chroot"]
    missing = [t for t in need if shutil.which(t) is None and not Path("/usr/sbin", t).exists()]
    if not Path("/usr/bin/qemu-aarch64-static").is_file():
        missing.append("qemu-aarch64-static")
    if missing:
        raise PiError(
            "tools",
            f"missing {', '.join(missing)}: apt-get install -y qemu-user-static qemu-system-arm debootstrap "
            "binfmt-support e2fsprogs openssh-client",
        )


def _binfmt(log: Path) -> None:
    """Make the kernel run aarch64 binaries through qemu-aarch64-static (for the chroot)."""
    misc = Path("/proc/sys/fs/binfmt_misc")
    if not (misc / "register").exists():
        run("binfmt", ["mount", "-t", "binfmt_misc", "binfmt_misc", str(misc)], timeout=30, log=log)
    if not (misc / "qemu-aarch64").exists():
        run("binfmt", ["update-binfmts", "--enable", "qemu-aarch64"], timeout=30, log=log)
    if not (misc / "qemu-aarch64").exists():
        raise PiError("binfmt", "qemu-aarch64 is not registered in binfmt_misc (install qemu-user-static)")


def download_wheels(dest: Path, log: Path) -> list[str]:
    """The aarch64 cp311 wheels of privsplit[edge]'s dependencies, from the package index."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--dest", str(dest)]
    cmd += ["--only-binary=:all:", "--python-version", PYTHON, "--implementation", "cp", "--abi", "cp311"]
    cmd += ["--abi", "abi3", "--abi", "none"]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    cmd += ["--platform", "any"]
    run("wheel download", [*cmd, *edge_requirements()], timeout=900, log=log)
    return sorted(p.name for p in dest.glob("*.whl"))


def build(*, force: bool = False, progress=print) -> Image:
    """Build the base image unless one with this recipe exists, then its edge layer likewise; return the latter."""
    return build_layer(build_base(force=force, progress=progress), force=force, progress=progress)


def build_base(*, force: bool = False, progress=print) -> Image:
    """Build the debootstrapped base unless one with this recipe exists; return it."""
    final = base_folder()
    if (final / "ready.json").is_file() and not force:
        return Image(final)
    _check_tools()
    if os.geteuid() != 0:
        raise PiError("permissions", "debootstrap and chroot need root: run as root (CI does)")
    times: dict[str, float] = {}
    t0 = time.monotonic()

    def step(name: str) -> None:
        times[name] = round(time.monotonic() - t0, 1)
        progress(f"emulated-pi: {name} ({times[name]:.0f} s)")

    with _published(final, "build") as work:
        log = work / "build.log"
        root = work / "rootfs"
        step("debootstrap first stage")
        run(
            "debootstrap first stage",
            ["debootstrap", "--arch=arm64", "--foreign", "--variant=minbase", f"--cache-dir={deb_cache()}"]
            + [f"--include={','.join(PACKAGES)}"]
            + [SUITE, str(root), MIRROR],
            timeout=900,
            log=log,
        )
        # a 5 MB initrd with only the modules the virt machine needs (Debian's default 35 MB one, built twice
        # under emulation, took 17 min)
        conf = root / "etc/initramfs-tools"
        conf.mkdir(parents=True, exist_ok=True)
        (conf / "initramfs.conf").write_text("MODULES=list\nBUSYBOX=auto\nCOMPRESS=zstd\n")
        (conf / "modules").write_text("\n".join(INITRD_MODULES) + "\n")
        # the kernel's postinst makes the initrd (update-initramfs -c); "no" stops the initramfs-tools trigger from
        # making it a second time (-u) when later packages bring hooks: once under emulation is enough
        (conf / "update-initramfs.conf").write_text("update_initramfs=no\nbackup_initramfs=no\n")
        shutil.copy2("/usr/bin/qemu-aarch64-static", root / "usr/bin/qemu-aarch64-static")
        _binfmt(log)
        step("second stage (host dpkg)")
        _second_stage(root, log)
        unmount_under(root)  # nothing of the host's /proc or /sys may go into the image
        step("wheels")
        wheels = download_wheels(work / "wheels", log)
        if not any(w.startswith("ai_edge_litert") for w in wheels) or not any(
            w.startswith("onnxruntime") for w in wheels
        ):
            raise PiError("wheel download", f"no aarch64 LiteRT or onnxruntime wheel among {wheels}")
        step("configure")
        _configure(root, work, wheels)
        kernels = sorted((root / "boot").glob("vmlinuz-*"))
        initrds = sorted((root / "boot").glob("initrd.img-*"))
        if not kernels or not initrds:
            raise PiError("kernel", f"no vmlinuz/initrd.img in {root / 'boot'} (second stage incomplete?)")
        shutil.copy2(kernels[-1], work / "vmlinuz")
        shutil.copy2(initrds[-1], work / "initrd.img")
        # the tree stays: the edge layer links it and makes the disk (mkfs.ext4 -d)
        root.rename(work / "qemu-user-root")
        (work / "qemu-user-root" / ".privsplit-extracted").write_text("ok\n")
        step("done")
        info = {
            "recipe": recipe_hash(),
            "suite": SUITE,
            "python": PYTHON,
            "kernel": kernels[-1].name,
            "wheels": wheels,
            "build_seconds": times,
            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (work / "ready.json").write_text(json.dumps(info, indent=1) + "\n")
    return Image(final)


def build_layer(base: Image, *, force: bool = False, progress=print) -> Image:
    """The edge layer on ``base`` (see the module doc) unless one with this recipe exists; return the image.

    The base tree is hard-linked (``cp -al``: nothing of it is copied or changed; what pip and compileall add is
    new files), the guest's pip installs privsplit[edge]'s dependencies into a fresh venv under qemu-user, every
    module of the venv is byte-compiled, and ``mkfs.ext4 -d`` makes the disk; the kernel, initrd and keys are the
    base's (hard links)."""
    final = image_folder()
    if (final / "ready.json").is_file() and not force:
        return Image(final)
    tree = base.folder / "qemu-user-root"
    for path in (base.kernel, base.initrd, base.key, base.folder / "ready.json", tree / "usr/bin/python3"):
        if not path.exists():
            raise PiError("edge layer", f"the base image lacks {path}: delete {base.folder} and build again")
    _check_tools()
    if os.geteuid() != 0:
        raise PiError("permissions", "chroot needs root: run as root (CI does)")
    started = time.monotonic()
    progress("emulated-pi: edge layer (venv with privsplit[edge]'s dependencies)")
    with _published(final, "edge layer") as work:
        log = work / "build.log"
        root = work / "tree"
        run("edge layer: link the base tree", ["cp", "-al", str(tree), str(root)], timeout=600, log=log)
        (root / "usr/bin/qemu-aarch64-static").unlink(missing_ok=True)
        shutil.copy2("/usr/bin/qemu-aarch64-static", root / "usr/bin/qemu-aarch64-static")
        _binfmt(log)
        in_guest = ["env", "-i", "PATH=/usr/bin:/bin", "HOME=/root", "LANG=C.UTF-8", "QEMU_CPU=cortex-a72"]
        in_guest = ["chroot", str(root), *in_guest]
        run("edge layer: venv", [*in_guest, "/usr/bin/python3", "-m", "venv", "--without-pip", EDGE_VENV], timeout=600,
            log=log)  # fmt: skip
        # the guest's own pip (Debian's, run with the venv's Python: what `pip --python VENV` does), offline
        pip = [*in_guest, f"{EDGE_VENV}/bin/python", PIP_RUNNER, "install", "--quiet", "--disable-pip-version-check"]
        pip += ["--no-compile", "--no-index", "--find-links", GUEST_WHEELS, *edge_requirements()]
        run("edge layer: pip install the dependencies", pip, timeout=1800, log=log)
        site = root / EDGE_VENV.lstrip("/") / f"lib/python{PYTHON}/site-packages"
        _compile(root, site, in_guest, log)
        (root / "usr/bin/qemu-aarch64-static").unlink()
        preinstalled = sorted(d.name.removesuffix(".dist-info") for d in site.glob("*.dist-info"))
        for name in ("vmlinuz", "initrd.img", "id_ed25519", "id_ed25519.pub", "ssh_host_ed25519_key.pub"):
            _link(base.folder / name, work / name)
        progress("emulated-pi: edge layer: mkfs")
        run(
            "edge layer: mkfs",
            # inode tables and journal initialised here, not by the guest kernel's ext4lazyinit thread at every boot
            ["mkfs.ext4", "-q", "-F", "-L", "pi-root", "-E", "lazy_itable_init=0,lazy_journal_init=0", "-d"]
            + [str(root), str(work / "root.img"), IMAGE_SIZE],
            timeout=600,
            log=log,
        )
        shutil.rmtree(root)
        info = {
            **base.info,
            "base": base.folder.name,
            "layer": layer_hash(),
            "venv": EDGE_VENV,
            "preinstalled": preinstalled,
            "layer_seconds": round(time.monotonic() - started, 1),
            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (work / "ready.json").write_text(json.dumps(info, indent=1) + "\n")
    return Image(final)


PIP_RUNNER = "/usr/lib/python3/dist-packages/pip/__pip-runner__.py"  # what `pip --python V` runs V with


def _compile(root: Path, site: Path, in_guest: list[str], log: Path) -> None:
    """``.pyc`` for every module in ``site``: with this host's Python when its bytecode is the guest's (the same
    magic number: seconds), else with the guest's Python under qemu-user. ``unchecked-hash``: the image is
    never changed in place (every boot is a snapshot), so the files are trusted without a stat of their source."""
    import importlib.util

    guest_pyc = next((root / f"usr/lib/python{PYTHON}/__pycache__").glob("os.cpython-*.pyc"), None)
    same = guest_pyc is not None and guest_pyc.read_bytes()[:4] == importlib.util.MAGIC_NUMBER
    options = ["-q", "-j", "0", "--invalidation-mode", "unchecked-hash"]
    if same:
        cmd = [sys.executable, "-m", "compileall", *options, "-s", str(root), "-p", "/", str(site)]
    else:
        cmd = [*in_guest, f"{EDGE_VENV}/bin/python", "-m", "compileall", *options, "/" + str(site.relative_to(root))]
    run("edge layer: compileall", cmd, timeout=1800, log=log)


def _link(source: Path, dest: Path) -> None:
    try:
        os.link(source, dest)
    except OSError:
        shutil.copy2(source, dest)


def _second_stage(root: Path, log: Path) -> None:
    """What ``debootstrap --second-stage`` does, with the work done natively: the host's dpkg (``--root``) unpacks
    every downloaded .deb into the tree and keeps its database; only the maintainer scripts run under qemu-user
    (dpkg runs them chrooted into the tree). debootstrap's own second stage runs dpkg itself in the chroot, so
    every unpack (xz, 300 MB of kernel modules) was emulated: 10 min of CPU instead of about 3."""
    debs = sorted((root / "var/cache/apt/archives").glob("*.deb"))
    if not debs:
        raise PiError("second stage (host dpkg)", f"no .deb in {root / 'var/cache/apt/archives'} (first stage?)")
    policy = root / "usr/sbin/policy-rc.d"  # no service starts in the tree (openssh-server's postinst tries)
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    # openssh-server's postinst makes the host keys that are missing: an RSA key under emulation takes a minute;
    # these are made here in a second (and replaced by _configure's, pinned on the host)
    (root / "etc/ssh").mkdir(parents=True, exist_ok=True)
    run("ssh host keys", ["ssh-keygen", "-A", "-f", str(root)], timeout=120, log=log)
    proc = root / "proc"
    if proc.is_symlink():  # the first stage leaves proc -> /proc (a mount there would land on the host's /proc)
        proc.unlink()
    proc.mkdir(exist_ok=True)
    run("second stage (host dpkg)", ["mount", "-t", "proc", "proc", str(proc)], timeout=30, log=log)
    try:
        cmd = ["dpkg", f"--root={root}", "--force-architecture", "--force-depends", "--force-confold"]
        cmd += ["--force-confdef", "--force-unsafe-io", *(f"--path-exclude={p}" for p in PATH_EXCLUDE)]
        run(
            "second stage (host dpkg)",
            [*cmd, "--install", *map(str, debs)],
            timeout=2700,  # about 3 min of CPU
            log=log,
            env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"},
        )
    finally:
        unmount_under(root)
    policy.unlink()
    (root / "var/lib/dpkg/arch").write_text("arm64\n")  # the tree's own dpkg: arm64 is native, nothing foreign
    for deb in debs:
        deb.unlink()
    for leftover in ("debootstrap",):  # the first stage's scripts and lists
        shutil.rmtree(root / leftover, ignore_errors=True)
    status = (root / "var/lib/dpkg/status").read_text()
    broken = [b.split("\n", 1)[0] for b in status.split("\n\n") if b.strip() and "install ok installed" not in b]
    if broken:
        raise PiError("second stage (host dpkg)", f"not configured: {', '.join(broken[:5])}")


def unmount_under(root: Path) -> None:
    """Unmount whatever is mounted under ``root`` (a killed second stage leaves its /proc and /sys mounted)."""
    try:
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return
    prefix = str(root.resolve()) + "/"
    for point in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, timeout=60)


@contextmanager
def _published(final: Path, step: str) -> Iterator[Path]:
    """A fresh ``FINAL.partial-PID`` folder to build in; renamed over ``final`` when the block ends, or, when it
    fails, removed with only its build log kept beside (``FINAL.failed-build.log``) and a one-line PiError."""
    final.parent.mkdir(parents=True, exist_ok=True)
    work = final.parent / f"{final.name}.partial-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        yield work
        if final.exists():
            shutil.rmtree(final)
        work.rename(final)
    except PiError:
        _keep_log(work, final)
        raise
    except (OSError, KeyboardInterrupt) as exc:
        _keep_log(work, final)
        raise PiError(step, f"{type(exc).__name__}: {exc}") from None


def _keep_log(work: Path, final: Path) -> None:
    unmount_under(work)
    try:
        if (work / "build.log").is_file():
            shutil.copy2(work / "build.log", final.parent / f"{final.name}.failed-build.log")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _configure(root: Path, work: Path, wheels: list[str]) -> None:
    init = root / "sbin/privsplit-init"
    init.write_text(INIT)
    init.chmod(0o755)
    conf_d = root / "etc/ssh/sshd_config.d"
    conf_d.mkdir(parents=True, exist_ok=True)
    (conf_d / "00-privsplit.conf").write_text(SSHD_CONF)
    # a client key for root; the guest's host key is pinned on the host (known_hosts written at boot)
    run(
        "ssh key",
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "privsplit-emulated-pi", "-f", str(work / "id_ed25519")],
        timeout=60,
    )
    ssh_dir = root / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    shutil.copy2(work / "id_ed25519.pub", ssh_dir / "authorized_keys")
    (ssh_dir / "authorized_keys").chmod(0o600)
    for old in (root / "etc/ssh").glob("ssh_host_*"):
        old.unlink()
    run(
        "ssh host key",
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / "etc/ssh/ssh_host_ed25519_key")],
        timeout=60,
    )
    shutil.copy2(root / "etc/ssh/ssh_host_ed25519_key.pub", work / "ssh_host_ed25519_key.pub")
    (root / "etc/hostname").write_text("privsplit-pi\n")
    (root / "etc/hosts").write_text("127.0.0.1 localhost\n127.0.1.1 privsplit-pi\n")
    dest = root / GUEST_WHEELS.lstrip("/")
    dest.mkdir(parents=True, exist_ok=True)
    for name in wheels:
        shutil.copy2(work / "wheels" / name, dest / name)
    for junk in ("usr/share/doc", "usr/share/man", "usr/share/locale", "var/cache/apt/archives"):
        path = root / junk
        if path.is_dir():
            for child in path.iterdir():
                if child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
                elif child.suffix == ".deb":
                    child.unlink()
    (root / "usr/bin/qemu-aarch64-static").unlink(missing_ok=True)


# ---- the qemu-user root: no second stage, no emulated maintainer scripts -------------------------------------
USER_PACKAGES = ("python3", "python3-venv", "python3-pip")


def user_root_folder() -> Path:
    return cache_root() / f"{recipe_hash()}-user"


def find_user_root() -> Path | None:
    folder = user_root_folder()
    return folder / "root" if (folder / "ready").is_file() else None


def build_user_root(*, progress=print) -> Path:
    """An arm64 tree with Python 3.11 and the aarch64 wheels, for qemu-user runs (tests/test_emulated_pi_qemu_user.py).

    ``debootstrap --foreign`` downloads and unpacks the base; the Python packages are unpacked with the host's
    ``dpkg-deb -x`` (no maintainer script runs under emulation): about a minute where the full image takes many."""
    found = find_user_root()
    if found is not None:
        return found
    _check_tools()
    if os.geteuid() != 0:
        raise PiError("permissions", "debootstrap and chroot need root: run as root (CI does)")
    final = user_root_folder()
    with _published(final, "qemu-user root") as work:
        log = work / "build.log"
        root = work / "root"
        progress("emulated-pi: qemu-user root: debootstrap --foreign")
        run(
            "qemu-user root: debootstrap",
            ["debootstrap", "--arch=arm64", "--foreign", "--variant=minbase", f"--cache-dir={deb_cache()}"]
            + [f"--include={','.join(USER_PACKAGES)}"]
            + [SUITE, str(root), MIRROR],
            timeout=900,
            log=log,
        )
        debs = sorted((root / "var/cache/apt/archives").glob("*.deb"))
        for deb in debs:
            run("qemu-user root: dpkg-deb -x", ["dpkg-deb", "-x", str(deb), str(root)], timeout=120)
            deb.unlink()
        shutil.copy2("/usr/bin/qemu-aarch64-static", root / "usr/bin/qemu-aarch64-static")
        _binfmt(log)
        progress("emulated-pi: qemu-user root: wheels")
        wheels = download_wheels(work / "wheels", log)
        dest = root / GUEST_WHEELS.lstrip("/")
        dest.mkdir(parents=True, exist_ok=True)
        for name in wheels:
            shutil.copy2(work / "wheels" / name, dest / name)
        shutil.rmtree(work / "wheels")
        (work / "ready").write_text(json.dumps({"recipe": recipe_hash(), "debs": len(debs), "wheels": wheels}) + "\n")
    return final / "root"
