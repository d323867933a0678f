"""The GPU recipe's steps on this machine: `wheels` before the lease, `unpack` after it.

    scripts/gpu_train.sh wheels            cp312 wheels the GPU machine lacks → .whl/ (checked)
    scripts/gpu_train.sh unpack DIR...     parcels that came back → runs/gpu_back, then doctor
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from . import parcel
from .gpu_plan import REPO, paths

# The wheels the GPU machine lacks, at the versions this project is tested with (cp312,
# manylinux x86-64). `gpu_guard.check_recipe_imports` proves they are all the recipe needs.
WHEELS = ("tree-sitter==0.26.1", "tree-sitter-python==0.25.0", "tree-sitter-javascript==0.25.0",
          "tree-sitter-typescript==0.23.2", "tree-sitter-go==0.25.0", "tree-sitter-rust==0.24.2",
          "zstandard==0.25.0")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64", "manylinux_2_5_x86_64")
TREE_LIMIT = 64 * 2**20  # working tree + carried paths, per call


# -- wheels -------------------------------------------------------------------------------------


def tree_bytes() -> int:
    """Bytes of what a device call sends: tracked files and untracked files git does not ignore."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, capture_output=True, check=True).stdout
    total = 0
    for name in set(listed.decode().split("\0")) - {""}:
        path = REPO / name
        if path.is_file():
            total += path.stat().st_size
    return total


def cmd_wheels(args) -> int:
    """Download the cp312 manylinux wheels the GPU machine lacks into .whl/, check that the
    working tree plus the wheels fit one call, and that the recipe imports with only those."""
    folder = REPO / ".whl"
    folder.mkdir(exist_ok=True)
    platforms = [f"--platform={p}" for p in PLATFORMS]
    code = subprocess.call([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                            "--only-binary=:all:", "--python-version", "3.12",
                            "--implementation", "cp", *platforms, "-d", str(folder), *WHEELS])
    if code:
        return code
    wheels = sorted(folder.glob("*.whl"))
    wanted = {w.split("==")[0].replace("-", "_") for w in WHEELS}
    stray = [w.name for w in wheels if w.name.split("-")[0].lower() not in wanted]
    if stray:
        print(f"other wheels in .whl/ (remove them: two versions stop the install): {stray}")
        return 1
    wheel_bytes = sum(w.stat().st_size for w in wheels)
    tree = tree_bytes()
    for w in wheels:
        print(f"  {w.stat().st_size / 2**20:6.2f} MiB  {w.name}")
    print(f"wheels {wheel_bytes / 2**20:.1f} MiB + working tree {tree / 2**20:.1f} MiB = "
          f"{(wheel_bytes + tree) / 2**20:.1f} MiB of {TREE_LIMIT / 2**20:.0f} MiB per call")
    if wheel_bytes + tree > TREE_LIMIT - 2**20:
        print("TOO BIG for one call: ignore or remove files, or carry the wheels in a call of "
              "their own")
        return 1
    from .gpu_guard import check_recipe_imports

    names = [w.split("==")[0] for w in WHEELS]
    ok, output = check_recipe_imports(names, paths(Path(args.work))["logs"] / "guard",
                                      cwd=REPO)
    print(output.splitlines()[-1] if ok else output)
    return 0 if ok and smoke_cp312(wheels, Path(args.work)) else 1


WHEEL_SMOKE = """
import importlib, tree_sitter, zstandard
for name, source in (("python", b"x = 1"), ("javascript", b"let x = 1"), ("go", b"package a"),
                     ("rust", b"fn a() {}")):
    module = importlib.import_module("tree_sitter_" + name)
    tree_sitter.Parser(tree_sitter.Language(module.language())).parse(source)
import tree_sitter_typescript
tree_sitter.Parser(tree_sitter.Language(tree_sitter_typescript.language_typescript()))
assert zstandard.ZstdDecompressor().decompress(zstandard.ZstdCompressor().compress(b"ok")) == b"ok"
print("cp312 wheels: installed and parsed with", __import__("sys").version.split()[0])
"""


def smoke_cp312(wheels: list[Path], work: Path) -> bool:
    """Install the wheels as the GPU machine will (pip --no-index --target) into a CPython 3.12
    found here, and parse with every grammar; True when no 3.12 is found (said so)."""
    import glob

    candidates = sorted(glob.glob(str(Path.home() / ".pyenv/versions/3.12*/bin/python3.12")))
    candidates += [c for c in [shutil.which("python3.12")] if c]
    found = next((c for c in candidates if subprocess.call(
        [c, "-c", "pass"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) == 0), None)
    if not found:
        print("cp312 wheels: no python3.12 here to try them with (skipped)")
        return True
    site = paths(work)["logs"] / "cp312-site"
    shutil.rmtree(site, ignore_errors=True)
    code = subprocess.call([found, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                            "--no-compile", "--target", str(site), *map(str, wheels)],
                           stderr=subprocess.DEVNULL)
    result = subprocess.run([found, "-c", WHEEL_SMOKE], capture_output=True, text=True,
                            env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}, timeout=120)
    print((result.stdout + result.stderr).strip()[-600:])
    return code == 0 and result.returncode == 0


# -- unpack -------------------------------------------------------------------------------------


def cmd_unpack(args) -> int:
    """Check and reassemble the parcels that came back; run doctor on the model directory (or,
    with only a rescue parcel and --export-rescue, export one here from it)."""
    out = Path(args.out)
    try:
        unpacked = parcel.assemble([Path(f) for f in args.folders], out)
    except ValueError as exc:
        print(f"unpack: {exc}")
        return 1
    for name, folder in unpacked.items():
        print(f"{name}: {folder}")
    model = out / "result" / "model"
    rescued = out / "rescue"
    if not (model / "model.json").is_file() and (rescued / "last.pt").is_file():
        plan = json.loads((rescued / "train_plan.json").read_text())["plan"] \
            if (rescued / "train_plan.json").is_file() else {}
        export = [sys.executable, "-m", "model_export", "export", "--checkpoint",
                  str(rescued / "last.pt"), "--tokenizer", str(rescued / "tokenizer.json"),
                  "--corpus", str(rescued / "corpus"), "--out", str(model),
                  "--max-context", str(plan.get("max_context", 512)),
                  "--note", "exported here from the rescued float16 weights "
                  "(scripts/gpu_train.sh unpack --export-rescue)"]
        print("no result parcel; a model directory from the rescued checkpoint:\n  "
              + " ".join(export[1:]))
        if not args.export_rescue:
            return 1
        if subprocess.call(export, cwd=REPO):
            return 1
    if (rescued / "last.pt").is_file():
        print(f"checkpoint for parity here: python -m model_export verify {model} "
              f"--checkpoint {rescued / 'last.pt'}")
    if args.no_doctor:
        return 0
    return subprocess.call([sys.executable, "-m", "dlm_lsp", "doctor", "--model", str(model)],
                           cwd=REPO)
