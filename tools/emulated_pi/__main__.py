"""``python tools/emulated_pi build|status|boot``: the emulated Raspberry Pi (see docs/guides/emulated-pi.md).

build    build the arm64 Debian image once (cached in ~/.cache/privsplit/emulated-pi/: the base <recipe>/, then
         <recipe>-edge-<layer>/ with privsplit[edge]'s dependencies preinstalled, which the VM boots; override
         with PRIVSPLIT_PI_CACHE); prints the folder
status   print the image folder and what it holds, or exit 1 when there is none
boot     boot it (--cpu cortex-a72 = Pi 4, cortex-a76 = Pi 5), print the ssh command and wait for Ctrl-C

Failures print one line naming the step and the cause (exit 1), never a traceback or a hang.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from image import PiError, build, build_user_root, find_image, image_folder  # noqa: E402
from vm import EmulatedPi  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python tools/emulated_pi", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build the image unless it is cached")
    b.add_argument("--force", action="store_true", help="rebuild even when cached")
    b.add_argument("--user-only", action="store_true", help="only the qemu-user root (about a minute)")
    sub.add_parser("status", help="the cached image, if any")
    s = sub.add_parser("boot", help="boot the image and wait (Ctrl-C powers it off)")
    s.add_argument("--cpu", default="cortex-a72", help="qemu CPU model: cortex-a72 (Pi 4), cortex-a76 (Pi 5)")
    args = p.parse_args(argv)
    try:
        if args.command == "build":
            started = time.monotonic()
            root = build_user_root(progress=lambda m: print(m, file=sys.stderr, flush=True))
            print(f"{root} (qemu-user root, {time.monotonic() - started:.0f} s)", flush=True)
            if args.user_only:
                return 0
            image = build(force=args.force, progress=lambda m: print(m, file=sys.stderr, flush=True))
            print(f"{image.folder} ({time.monotonic() - started:.0f} s)")
        elif args.command == "status":
            image = find_image()
            if image is None:
                print(f"no image at {image_folder()}: run `python tools/emulated_pi build`", file=sys.stderr)
                return 1
            image.check()
            print(json.dumps({"folder": str(image.folder), **image.info}, indent=1))
        else:
            image = find_image()
            if image is None:
                raise PiError("boot", f"no image at {image_folder()}: run `python tools/emulated_pi build` first")
            with (
                tempfile.TemporaryDirectory(prefix="emulated-pi-") as tmp,
                EmulatedPi(image, cpu=args.cpu, workdir=Path(tmp)) as pi,
            ):
                print(f"up in {pi.boot_seconds:.0f} s: ssh {' '.join(pi.ssh_base()[1:])}", flush=True)
                print(
                    f"flash target: {pi.url('/srv/privsplit')} --identity {pi.identity} --known-hosts {pi.known_hosts}",
                    flush=True,
                )
                try:
                    while pi.proc is not None and pi.proc.poll() is None:
                        time.sleep(1)
                except KeyboardInterrupt:
                    pass
    except PiError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
