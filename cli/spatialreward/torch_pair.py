"""A torch/torchvision pair that does not match, said in one line.

torchvision is compiled against one torch build: a CUDA-linked torchvision
beside a CPU torch (say torch 2.13.0+cpu from PyTorch's CPU index with
torchvision 0.28.0 from PyPI) fails on import with ``operator torchvision::nms
does not exist``, which transformers turns into a 40-line traceback ending in
``Could not import module 'Qwen2VLImageProcessor'``. ``check_torch_pair``
imports torchvision first and raises ``TorchPairError`` (exit 3) naming both
installed versions and the ``pip install`` that puts a matching pair from one
index in their place. (``scripts/setup_vllm_cpu.py`` meets the same failure in
the test-only vLLM venv, and patches it there.)
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from importlib import metadata
from pathlib import Path

from .errors import TorchPairError

PYTORCH_INDEX = "https://download.pytorch.org/whl"
# torchvision 0.(N + 15) is built for torch 2.N (0.15 <-> 2.0, ..., 0.29 <-> 2.14).
TORCHVISION_MINOR_OFFSET = 15


def is_mismatch(exc: BaseException | None) -> bool:
    """Whether ``exc``, or an exception it was raised from, is torchvision's
    "operator torchvision::... does not exist" (its compiled operators did
    not load into this torch)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = str(exc)
        if "torchvision::" in text and "does not exist" in text:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _installed(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def matching_torchvision(torch_version: str) -> str | None:
    """The torchvision release built for ``torch_version`` (its local label,
    e.g. ``+cpu``, kept), or None when the rule does not apply (torch 1.x)."""
    match = re.match(r"^2\.(\d+)\.(\d+)", torch_version)
    if not match:
        return None
    minor, patch = int(match.group(1)), match.group(2)
    local = torch_version.partition("+")[2]
    return f"0.{minor + TORCHVISION_MINOR_OFFSET}.{patch}" + (f"+{local}" if local else "")


def fix_command(torch_version: str, torchvision_version: str | None) -> str:
    """The pip command that installs a matching pair from one index: torch's
    (its build, e.g. +cpu or +cu130, names PyTorch's index; no label: PyPI)."""
    want = matching_torchvision(torch_version)
    if want and torchvision_version and torchvision_version.partition("+")[0].split(".")[:2] == \
            want.partition("+")[0].split(".")[:2]:
        # The right release, the wrong build: keep its number, take torch's build.
        local = torch_version.partition("+")[2]
        want = torchvision_version.partition("+")[0] + (f"+{local}" if local else "")
    torchvision = f"torchvision=={want}" if want else "torchvision"
    local = torch_version.partition("+")[2]
    if local:  # pinned with their build labels: pip replaces the torchvision of another build
        return f"pip install torch=={torch_version} {torchvision} --index-url {PYTORCH_INDEX}/{local}"
    return f"pip install --force-reinstall torch=={torch_version} {torchvision}"


def _torch_version() -> str | None:
    """torch's own version string (with its build label, e.g. 2.13.0+cpu,
    which the package metadata may lack), else the metadata's."""
    try:
        import torch

        return str(torch.__version__)
    except Exception:  # noqa: BLE001 - a torch that does not import: say what pip says
        return _installed("torch")


def _torchvision_version() -> str | None:
    """torchvision's version with its build label, read from its version.py
    (it cannot be imported), else the metadata's."""
    try:
        spec = importlib.util.find_spec("torchvision")
        if spec and spec.submodule_search_locations:
            for folder in spec.submodule_search_locations:
                text = (Path(folder) / "version.py").read_text(encoding="utf-8")
                match = re.search(r"^__version__\s*=\s*['\"]([^'\"]+)['\"]", text, re.M)
                if match:
                    return match.group(1)
    except (ImportError, ValueError, OSError):
        pass
    return _installed("torchvision")


def mismatch_message(detail: str | None = None) -> str:
    torch_version = _torch_version() or "?"
    torchvision_version = _torchvision_version()
    cause = f" (importing torchvision fails: {detail})" if detail else ""
    return (f"torch {torch_version} and torchvision {torchvision_version or '?'} are not a matching pair{cause}; "
            f"install both from one index, e.g. `{fix_command(torch_version, torchvision_version)}`")


def _first_line(exc: BaseException) -> str:
    while exc is not None:
        text = str(exc).strip()
        if "torchvision::" in text:
            return text.splitlines()[0][:200]
        exc = exc.__cause__ or exc.__context__
    return ""


def raise_if_mismatch(exc: BaseException) -> None:
    """``TorchPairError`` in place of ``exc`` when it comes from a torch/torchvision mismatch."""
    if is_mismatch(exc):
        raise TorchPairError(mismatch_message(_first_line(exc))) from exc


def check_torch_pair() -> None:
    """Import torchvision (when installed) before transformers does: a
    mismatched pair raises ``TorchPairError``, one line, instead of the
    traceback transformers would show."""
    try:
        if importlib.util.find_spec("torchvision") is None:
            return
    except (ImportError, ValueError):
        return
    try:
        importlib.import_module("torchvision")
    except Exception as exc:  # noqa: BLE001 - only the mismatch is ours to explain
        raise_if_mismatch(exc)
        raise
