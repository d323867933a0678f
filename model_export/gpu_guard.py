"""Run Python here as if on the GPU machine: importing a package that machine lacks fails.

The lent H200 machine has its own Python (3.12, torch, onnx, onnxruntime, tokenizers, ...) and
nothing else can be installed there but the wheels a command carries. A recipe that imports one
more package fails there, after minutes of scarce device time. The guard finds that here:
`write_sitecustomize(folder, carried)` writes a `sitecustomize.py` that refuses every top-level
module whose distribution is installed here but is neither on the GPU machine nor carried, and a
process started with that folder first on `PYTHONPATH` (its children too) imports as it would
there. Versions are not simulated (numpy 2 and torch 2.11 there; whatever is installed here).
"""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

# The H200 image's packages (/work/.library/device/KINDS.md, read 2026-11-17). Python 3.12.
GPU_MACHINE_PACKAGES = frozenset("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch
build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage
cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn
einops equinox etils execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec
gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna imageio
iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib
kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown
markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict
multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro
nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13
nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir
onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix
orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker
prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing
pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout
pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers
setuptools shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard
tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch
torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt
xarray xxhash yarl zipp
""".split())

# This project (run from the repository root there, not installed), and the packages that stand
# here for one that is there: ONNX Runtime's GPU build is imported as `onnxruntime` too.
PROJECT = frozenset({"dlm-lsp", "onnxruntime-gpu"})

SITECUSTOMIZE = '''"""Written by model_export.gpu_guard: imports fail as on the GPU machine."""
import sys

_BLOCKED = frozenset({blocked!r})


class _GpuMachineGuard:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in _BLOCKED:
            raise ModuleNotFoundError(
                f"No module named {{name!r}} (not on the GPU machine: carry its wheel)",
                name=name)
        return None


sys.meta_path.insert(0, _GpuMachineGuard())
'''


def normalize(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def blocked_modules(carried: tuple[str, ...] | list[str]) -> set[str]:
    """Top-level modules installed here whose every distribution is missing there."""
    allowed = GPU_MACHINE_PACKAGES | PROJECT | {normalize(c) for c in carried}
    blocked = set()
    for module, dists in metadata.packages_distributions().items():
        if module.startswith("_") and module != "_pytest":
            continue  # private C helpers of allowed packages (e.g. _cffi_backend is cffi's)
        if not any(normalize(d) in allowed for d in dists):
            blocked.add(module)
    return blocked


def write_sitecustomize(folder: Path, carried: tuple[str, ...] | list[str]) -> Path:
    """Write FOLDER/sitecustomize.py; put FOLDER first on PYTHONPATH to use it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "sitecustomize.py"
    path.write_text(SITECUSTOMIZE.format(blocked=sorted(blocked_modules(carried))))
    return path


# What the recipe imports on the GPU machine: every step's modules and every grammar.
RECIPE_IMPORTS = """
import model_export.__main__, model_export.corpus, model_export.tokenizer, model_export.train
import model_export.export, model_export.heldout, model_export.gpu, model_export.parcel
import model_export.gpu_here, model_export.gpu_checks, model_export.gpu_plan
import dlm_lsp.cli, dlm_lsp.measure.evaluate, dlm_lsp.engine
from dlm_lsp.languages import syntax_for
import zstandard, onnx, onnxscript, onnxruntime, onnxruntime.quantization, matplotlib.pyplot
for language in ("python", "javascript", "typescript", "go", "rust"):
    assert syntax_for(language) is not None, language
print("recipe imports: ok")
"""


def check_recipe_imports(carried: tuple[str, ...] | list[str], folder: Path,
                         python: str = sys.executable, cwd: Path | None = None) -> tuple[bool, str]:
    """(ok, output) of importing everything the recipe needs under the guard."""
    write_sitecustomize(folder, carried)
    env = {"PYTHONPATH": str(folder), "PYTHONNOUSERSITE": "1", "PATH": "/usr/bin:/bin"}
    result = subprocess.run([python, "-c", RECIPE_IMPORTS], capture_output=True, text=True,
                            env=env, cwd=cwd, timeout=300)
    return result.returncode == 0, (result.stdout + result.stderr).strip()
