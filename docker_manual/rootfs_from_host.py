#!/usr/bin/env python3
"""Write a Debian root file system made of this host's installed packages to stdout (a tar stream).

Why: debootstrap downloads and configures about 100 packages one at a time (40 s on a quiet machine,
4.5 min on a busy 2-core one); a Debian bookworm host already holds the same packages, installed and
configured, so the base image is their files plus a dpkg database naming them (a few seconds).
The image is a real Debian system: apt-get and dpkg work in it (the proxy image installs haproxy).

Usage: rootfs_from_host.py --check PKG...   exit 0 when the host can give PKG... (else one line why, exit 1)
       rootfs_from_host.py --mirror URL PKG... | docker import - IMAGE
The packages taken: PKG..., every Essential or Priority: required package, apt, and what they depend on.
Stdlib only: it runs with the host's python3 before any virtualenv exists.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import sys
import tarfile
from pathlib import Path

# Trimmed like build_base_image.sh trims the debootstrap tree: docs, manuals, translations.
SKIP = re.compile(r"^/usr/share/(doc|man|info|lintian|linda)/|^/usr/share/locale/(?!en)")
# A merged-/usr host: /bin is a link to /usr/bin, and dpkg's file lists still name /bin/...
MERGED = {"/bin": "/usr/bin", "/sbin": "/usr/sbin", "/lib": "/usr/lib", "/lib64": "/usr/lib64"}
# Made by maintainer scripts, so in no file list; the image needs them.
SYSTEM_USERS = "_apt:x:42:65534::/nonexistent:/usr/sbin/nologin\n"
NSSWITCH = "passwd: files\ngroup: files\nshadow: files\ngshadow: files\nhosts: files dns\nnetworks: files\n"


def status_stanzas() -> dict[str, str]:
    """Installed packages -> their stanza in /var/lib/dpkg/status (the dpkg database the image gets)."""
    out: dict[str, str] = {}
    for stanza in Path("/var/lib/dpkg/status").read_text().split("\n\n"):
        name = re.search(r"^Package: (\S+)$", stanza, re.M)
        if name and re.search(r"^Status: install ok installed$", stanza, re.M):
            out[name.group(1)] = stanza.strip() + "\n"
    return out


def field(stanza: str, key: str) -> str:
    m = re.search(rf"^{key}: (.*(?:\n .*)*)", stanza, re.M)
    return m.group(1).replace("\n", " ") if m else ""


def closure(seeds: list[str], stanzas: dict[str, str]) -> set[str]:
    """The seeds plus every package they depend on (Depends, Pre-Depends), alternatives resolved to installed ones."""
    provides: dict[str, str] = {}
    for name, stanza in stanzas.items():
        for p in filter(None, (x.split("(")[0].strip() for x in field(stanza, "Provides").split(","))):
            provides.setdefault(p, name)
    todo, done = list(seeds), set()
    while todo:
        name = todo.pop()
        if name in done:
            continue
        done.add(name)
        deps = field(stanzas[name], "Pre-Depends") + "," + field(stanzas[name], "Depends")
        for group in filter(None, (g.strip() for g in deps.split(","))):
            names = [re.split(r"[\s(:]", alt.strip())[0] for alt in group.split("|")]
            pick = next((n for n in names if n in stanzas), None) or next(
                (provides[n] for n in names if n in provides), None
            )
            if pick is None:
                raise LookupError(f"{name} depends on {group}, which this host does not have installed")
            todo.append(pick)
    return done


def canonical(path: str) -> str:
    for link, target in MERGED.items():
        if path == link or path.startswith(link + "/"):
            return target + path[len(link) :]
    return path


def info_name(stanza: str, name: str) -> str:
    """dpkg names the info files of a Multi-Arch: same package NAME:ARCH."""
    return f"{name}:{field(stanza, 'Architecture')}" if field(stanza, "Multi-Arch") == "same" else name


def diversions(chosen: set[str]) -> str:
    """The host's diversions made by the chosen packages (dash's /bin/sh), in dpkg's three-line records."""
    lines = Path("/var/lib/dpkg/diversions").read_text().splitlines()
    records = [lines[i : i + 3] for i in range(0, len(lines) - 2, 3)]
    return "".join("\n".join(r) + "\n" for r in records if r[2] in chosen)


class DedupTar(tarfile.TarFile):
    """Each path once (docker import refuses duplicates): the first entry for a name wins."""

    names: set[str]

    def addfile(self, tarinfo: tarfile.TarInfo, fileobj: object = None) -> None:  # type: ignore[override]
        name = tarinfo.name.rstrip("/")
        if name in self.names:
            return
        self.names.add(name)
        super().addfile(tarinfo, fileobj)  # type: ignore[arg-type]


def add_text(tar: tarfile.TarFile, name: str, text: str, mode: int = 0o644) -> None:
    data = text.encode()
    ti = tarfile.TarInfo(name.lstrip("/"))
    ti.size, ti.mode = len(data), mode
    tar.addfile(ti, io.BytesIO(data))


def add_dir(tar: tarfile.TarFile, name: str, mode: int = 0o755) -> None:
    ti = tarfile.TarInfo(name.lstrip("/"))
    ti.type, ti.mode = tarfile.DIRTYPE, mode
    tar.addfile(ti)


def write_rootfs(packages: list[str], mirror: str, out: io.BufferedWriter) -> None:
    stanzas = status_stanzas()
    extra = [n for n, s in stanzas.items() if field(s, "Essential") == "yes" or field(s, "Priority") == "required"]
    chosen = closure(sorted(set(packages) | set(extra) | {"apt"}), stanzas)
    info = Path("/var/lib/dpkg/info")
    paths: set[str] = set()
    info_files: list[Path] = []
    for name in sorted(chosen):
        iname = info_name(stanzas[name], name)
        listed = info / f"{iname}.list"
        paths.update(ln for ln in listed.read_text().splitlines() if ln and ln != "/.")
        # NAME.list, NAME.postinst, ...: not python3.11-minimal.list for python3
        info_files += sorted(f for f in info.glob(f"{iname}.*") if "." not in f.name[len(iname) + 1 :])
    # Alternatives (awk -> mawk, ...) are links made by postinst: keep those whose target the image holds.
    alternatives: list[str] = []
    for alt in sorted(Path("/etc/alternatives").iterdir()):
        if not alt.is_symlink():
            continue
        target = canonical(os.readlink(alt))
        if canonical(target) in paths or target in paths:
            alternatives.append(alt.name)
    with DedupTar.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        tar.names = set()
        for link, target in MERGED.items():
            if os.path.islink(link):
                ti = tarfile.TarInfo(link.lstrip("/"))
                ti.type, ti.linkname = tarfile.SYMTYPE, target.lstrip("/")
                tar.addfile(ti)
        for d, mode in (("/tmp", 0o1777), ("/var/tmp", 0o1777), ("/root", 0o700), ("/home", 0o755), ("/run", 0o755)):
            add_dir(tar, d, mode)
        for path in sorted({canonical(p) for p in paths}):
            if SKIP.match(path) or not os.path.lexists(path):
                continue
            tar.add(path, arcname=path.lstrip("/"), recursive=False)
        for name in alternatives:
            tar.add(f"/etc/alternatives/{name}", arcname=f"etc/alternatives/{name}", recursive=False)
            if os.path.exists(f"/var/lib/dpkg/alternatives/{name}"):
                tar.add(f"/var/lib/dpkg/alternatives/{name}", arcname=f"var/lib/dpkg/alternatives/{name}")
        for link_dir in ("/usr/bin", "/usr/sbin"):  # the /usr/bin/awk side of each alternative
            for entry in sorted(os.scandir(link_dir), key=lambda e: e.name):
                target = os.readlink(entry.path) if entry.is_symlink() else ""
                if (
                    target.startswith("/etc/alternatives/")
                    and target.removeprefix("/etc/alternatives/") in alternatives
                ):
                    tar.add(entry.path, arcname=entry.path.lstrip("/"), recursive=False)
        # The dpkg database: exactly the packages above, so apt-get in a Dockerfile sees a consistent system.
        for d in (
            "/var/lib/dpkg/updates",
            "/var/lib/dpkg/triggers",
            "/var/lib/apt/lists/partial",
            "/var/cache/apt/archives/partial",
        ):
            add_dir(tar, d)
        add_text(tar, "/var/lib/dpkg/status", "\n".join(stanzas[n] for n in sorted(chosen)))
        add_text(tar, "/var/lib/dpkg/available", "")
        add_text(tar, "/var/lib/dpkg/diversions", diversions(chosen))
        for f in info_files:
            tar.add(str(f), arcname=str(f).lstrip("/"), recursive=False)
        # Users and groups come from base-passwd's masters (its postinst writes them on a fresh system).
        passwd = Path("/usr/share/base-passwd/passwd.master").read_text() + SYSTEM_USERS
        group = Path("/usr/share/base-passwd/group.master").read_text()
        add_text(tar, "/etc/passwd", passwd)
        add_text(tar, "/etc/group", group)
        shadow = "".join(f"{ln.split(':')[0]}:*:19000:0:99999:7:::\n" for ln in passwd.splitlines() if ln)
        add_text(tar, "/etc/shadow", shadow, 0o640)
        add_text(tar, "/etc/gshadow", "".join(f"{ln.split(':')[0]}:*::\n" for ln in group.splitlines() if ln), 0o640)
        add_text(tar, "/etc/nsswitch.conf", NSSWITCH)
        add_text(tar, "/etc/shells", "/bin/sh\n/usr/bin/sh\n/bin/bash\n/usr/bin/bash\n/bin/dash\n/usr/bin/dash\n")
        add_text(tar, "/etc/apt/sources.list", f"deb {mirror} bookworm main\n")
        # The host's trust store (update-ca-certificates output, the egress proxy's CA included) and its sources.
        for root in ("/etc/ssl/certs", "/usr/local/share/ca-certificates"):
            if os.path.isdir(root):
                tar.add(root, arcname=root.lstrip("/"))


def check(packages: list[str]) -> str | None:
    osr = Path("/etc/os-release")
    if not osr.is_file() or "VERSION_CODENAME=bookworm" not in osr.read_text():
        return "the host is not Debian bookworm"
    if not Path("/var/lib/dpkg/status").is_file() or not os.path.islink("/bin"):
        return "the host has no dpkg database or no merged /usr"
    stanzas = status_stanzas()
    missing = [p for p in packages if p not in stanzas]
    if missing:
        return f"the host lacks {', '.join(missing)}"
    try:
        closure(packages, stanzas)
    except LookupError as exc:
        return str(exc)
    return None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="only say whether this host can give the packages")
    p.add_argument("--mirror", default="http://deb.debian.org/debian", help="apt source written into the image")
    p.add_argument("packages", nargs="+")
    args = p.parse_args()
    why = check(args.packages)
    if args.check or why:
        if why:
            print(why)
        return 1 if why else 0
    write_rootfs(args.packages, args.mirror, sys.stdout.buffer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
