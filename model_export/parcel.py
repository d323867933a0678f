"""Parcels: files packed into one tar, cut into parts that fit what a device command returns.

The GPU machine returns at most 8 files of at most 16 MiB, 64 MiB in all, per command, from
at most two folders down. A parcel is `NAME.tar` cut into `NAME.tar.partNN` files of
`PART_BYTES` and `NAME.manifest.json` (the members, and the size and SHA-256 of each part and
of the whole). `deliver` copies into the command's output folder what fits this time and leaves
the rest for the next command; `assemble` finds the parts in any folders they came back to,
checks every checksum and unpacks the tar.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
from pathlib import Path

PART_BYTES = 15 * 2**20  # under the 16 MiB per file
MAX_FILES = 8  # files back per command
MAX_BYTES = 63 * 2**20  # bytes back per command (64 MiB, less a margin)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def pack(name: str, members: dict[str, Path], outbox: Path, part_bytes: int = PART_BYTES) -> dict:
    """Pack `members` (name in the parcel → file) into OUTBOX/NAME.tar.partNN + manifest.
    Members that do not exist are skipped and listed under "missing"."""
    outbox.mkdir(parents=True, exist_ok=True)
    for old in outbox.glob(f"{name}.tar*"):
        old.unlink()
    tar_path = outbox / f"{name}.tar"
    present, missing = [], []
    with tarfile.open(tar_path, "w") as tar:
        for arcname, path in members.items():
            if Path(path).is_file():
                tar.add(path, arcname=arcname)
                present.append({"path": arcname, "bytes": Path(path).stat().st_size})
            else:
                missing.append(arcname)
    manifest = {"name": name, "bytes": tar_path.stat().st_size, "sha256": sha256_of(tar_path),
                "members": present, "missing": missing, "parts": []}
    with open(tar_path, "rb") as f:
        for number in range(10**4):
            data = f.read(part_bytes)
            if not data and number:
                break
            part = outbox / f"{name}.tar.part{number:02d}"
            part.write_bytes(data)
            manifest["parts"].append({"file": part.name, "bytes": len(data),
                                      "sha256": hashlib.sha256(data).hexdigest()})
    tar_path.unlink()
    (outbox / f"{name}.manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def deliver(outbox: Path, out: Path, max_files: int = MAX_FILES,
            max_bytes: int = MAX_BYTES) -> tuple[list[str], list[str]]:
    """Move into OUT the manifests and parts still in OUTBOX, in order, while they fit one
    command's limits; (sent, left behind). Call again in a later command for the rest."""
    out.mkdir(parents=True, exist_ok=True)
    waiting = sorted(outbox.glob("*.manifest.json")) + sorted(outbox.glob("*.tar.part*"))
    sent, left, files, size = [], [], 0, 0
    for path in waiting:
        length = path.stat().st_size
        if not left and files < max_files and size + length <= max_bytes:
            shutil.move(str(path), out / path.name)
            sent.append(path.name)
            files, size = files + 1, size + length
        else:
            left.append(path.name)
    return sent, left


def assemble(folders: list[Path], out: Path) -> dict[str, Path]:
    """Find every parcel's manifest and parts under FOLDERS (two levels deep), check each
    part's and the whole's SHA-256, unpack each parcel into OUT/NAME; name → folder.
    Raises ValueError naming what is missing or corrupt."""
    found: dict[str, Path] = {}
    for folder in folders:
        for pattern in ("*", "*/*", "*/*/*"):
            for path in Path(folder).glob(pattern):
                if path.is_file():
                    found.setdefault(path.name, path)
    manifests = [json.loads(path.read_text()) for name, path in sorted(found.items())
                 if name.endswith(".manifest.json")]
    if not manifests:
        raise ValueError(f"no *.manifest.json under {', '.join(map(str, folders))}")
    unpacked = {}
    for manifest in manifests:
        name = manifest["name"]
        absent = [p["file"] for p in manifest["parts"] if p["file"] not in found]
        if absent:
            raise ValueError(f"parcel {name}: parts not here: {', '.join(absent)} "
                             f"(fetch them with another command on the device)")
        target = out / name
        target.mkdir(parents=True, exist_ok=True)
        tar_path = out / f".{name}.tar"
        digest = hashlib.sha256()
        with open(tar_path, "wb") as tar_file:
            for part in manifest["parts"]:
                data = found[part["file"]].read_bytes()
                if len(data) != part["bytes"] or hashlib.sha256(data).hexdigest() != part["sha256"]:
                    raise ValueError(f"parcel {name}: {part['file']} is corrupt (checksum)")
                digest.update(data)
                tar_file.write(data)
        if digest.hexdigest() != manifest["sha256"]:
            raise ValueError(f"parcel {name}: the whole does not match its checksum")
        with tarfile.open(tar_path) as tar:
            tar.extractall(target, filter="data")
        tar_path.unlink()
        unpacked[name] = target
    return unpacked
