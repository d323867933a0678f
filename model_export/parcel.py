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
import time
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
    manifest = {"name": name, "created": time.time(), "bytes": tar_path.stat().st_size,
                "sha256": sha256_of(tar_path),
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
    """Find the parcels under FOLDERS (two levels deep) — the newest complete one of each name,
    as several commands may return a parcel of the same name — check each part's and the
    whole's SHA-256, unpack each into OUT/NAME; name → folder. Raises ValueError naming what
    is missing or corrupt."""
    found: dict[str, list[Path]] = {}
    for folder in folders:
        for pattern in ("*", "*/*", "*/*/*"):
            for path in Path(folder).glob(pattern):
                if path.is_file():
                    found.setdefault(path.name, []).append(path)
    manifests = [json.loads(path.read_text()) for name, paths in sorted(found.items())
                 if name.endswith(".manifest.json") for path in paths]
    if not manifests:
        raise ValueError(f"no *.manifest.json under {', '.join(map(str, folders))}")
    newest: dict[str, dict] = {}
    for manifest in sorted(manifests, key=lambda m: m.get("created", 0)):
        newest[manifest["name"]] = manifest
    unpacked = {}
    for name, manifest in newest.items():
        tar_path = out / f".{name}.tar"
        out.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with open(tar_path, "wb") as tar_file:
            for part in manifest["parts"]:
                data = _part_data(found.get(part["file"], []), part)
                if data is None:
                    tar_path.unlink()
                    state = "corrupt (checksum)" if part["file"] in found else "not here"
                    raise ValueError(f"parcel {name}: {part['file']} {state}"
                                     + ("" if part["file"] in found else
                                        " (fetch it with another command on the device)"))
                digest.update(data)
                tar_file.write(data)
        if digest.hexdigest() != manifest["sha256"]:
            tar_path.unlink()
            raise ValueError(f"parcel {name}: the whole does not match its checksum")
        target = out / name
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        with tarfile.open(tar_path) as tar:
            tar.extractall(target, filter="data")
        tar_path.unlink()
        unpacked[name] = target
    return unpacked


def _part_data(candidates: list[Path], part: dict) -> bytes | None:
    """The bytes of the candidate file that matches the part's size and checksum."""
    for path in candidates:
        data = path.read_bytes()
        if len(data) == part["bytes"] and hashlib.sha256(data).hexdigest() == part["sha256"]:
            return data
    return None
