"""Prove the tests guard the protocol: each mutation, made alone to a temporary
copy of the code, must make at least one test fail.

    python scripts/mutation_check.py            # all mutations
    python scripts/mutation_check.py --list     # what each one changes
    python scripts/mutation_check.py -k budget  # those whose name contains "budget"

For each mutation the copy's code is put first on PYTHONPATH (so the installed
``spatialreward`` command runs it too) and the tests that guard it are run. The
unmutated copy must pass the same tests first. Exit 0 when every mutation was
caught, 1 when one survived or the baseline failed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GUARDS = ["tests/test_fidelity.py", "tests/test_prompts.py"]
T2I_GUARDS = ("tests/test_t2i_unit.py::test_template_pinned", "tests/test_t2i_judge.py")
PROTOCOL_GUARDS = ("tests/test_protocols.py::test_reward_server_sc_prompt_golden_hash",
                   "tests/test_protocols.py::test_multi_image_sc_prompt_golden_hash",
                   "tests/test_protocols.py::test_three_sources_in_order_then_the_edited_image")


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str
    old: str
    new: str
    tests: tuple = ()  # the tests that guard it (default: GUARDS)


MUTATIONS = [
    Mutation("sc-images-swapped", "cli/spatialreward/requests.py",
             "Request(SC, (source, edited), ", "Request(SC, (edited, source), "),
    Mutation("pq-judges-the-source", "cli/spatialreward/judge.py",
             "return pq_request(edited, seed=seed, protocol=protocol)",
             "return pq_request(source, seed=seed, protocol=protocol)"),
    Mutation("no-generation-prompt", "cli/spatialreward/backends/transformers_backend.py",
             "add_generation_prompt=True", "add_generation_prompt=False"),
    Mutation("pixel-budget-dropped", "cli/spatialreward/backends/transformers_backend.py",
             'return_tensors="pt", images_kwargs={"size": size}', 'return_tensors="pt"'),
    Mutation("text-before-images", "cli/spatialreward/requests.py",
             "content = [{\"type\": \"image\"} for _ in self.images]\n        content.append({\"type\": \"text\", \"text\": self.prompt})",
             "content = [{\"type\": \"text\", \"text\": self.prompt}]\n        content += [{\"type\": \"image\"} for _ in self.images]"),
    Mutation("instruction-not-stripped", "cli/spatialreward/judge.py",
             "sc_request(source, edited, sample.instruction.strip(), seed=seed",
             "sc_request(source, edited, sample.instruction, seed=seed"),
    Mutation("pq-prompt-one-space", "templates/prompts/pq.txt", "{{\n", "{{ \n"),
    Mutation("sc-prompt-one-space", "templates/prompts/sc.txt",
             "Editing instruction: {instruction}", "Editing instruction:  {instruction}"),
    # The other published protocols (tests/test_protocols.py).
    Mutation("reward-server-prompt-one-space", "templates/prompts/sc_reward_server.txt",
             "Editing instruction: \n{instruction}", "Editing instruction:\n{instruction}", PROTOCOL_GUARDS),
    Mutation("multi-image-prompt-one-space", "templates/prompts/sc_multi_image.txt",
             "The first {num_input_images} images", "The first  {num_input_images} images", PROTOCOL_GUARDS),
    Mutation("multi-sources-after-the-edited-image", "cli/spatialreward/requests.py",
             "Request(SC, (*sources, edited), ", "Request(SC, (edited, *sources), ", PROTOCOL_GUARDS),
    Mutation("multi-image-prompt-not-used", "cli/spatialreward/requests.py",
             "render_sc(instruction, protocol, len(sources))", "render_sc(instruction, protocol)", PROTOCOL_GUARDS),
    Mutation("reward-server-images-not-resized-first", "cli/spatialreward/judge.py",
             "pre_resize=pre_resize)", "pre_resize=None)", PROTOCOL_GUARDS),
    # Text-to-image spatial judging (t2i-spatial; tests/test_t2i_*.py).
    Mutation("t2i-image-dropped", "cli/spatialreward/requests.py",
             "Request(T2I, (image,), render_t2i(prompt), seed)", "Request(T2I, (), render_t2i(prompt), seed)",
             T2I_GUARDS),
    Mutation("t2i-prompt-not-given", "cli/spatialreward/judge.py",
             "t2i_request(edited, sample.instruction.strip(), seed=seed)", "t2i_request(edited, '', seed=seed)",
             T2I_GUARDS),
    Mutation("t2i-prompt-one-space", "templates/prompts/t2i_spatial.txt",
             "Text-to-image prompt: {prompt}", "Text-to-image prompt:  {prompt}", T2I_GUARDS),
    Mutation("t2i-geometry-ignored", "cli/spatialreward/judge.py",
             "result.verdicts = verify(first, relations, image_size=result.edited_size)",
             "result.verdicts = verify(first, relations, image_size=None)", T2I_GUARDS),
]


def copy_tree(dest: Path) -> None:
    for name in ("cli", "templates", "tests", "docs", "pyproject.toml", "README.md"):
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, dest / name)


def run_tests(root: Path, tests: list[str]) -> tuple[int, float, str]:
    env = {**os.environ, "PYTHONPATH": str(root / "cli") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    started = time.monotonic()
    proc = subprocess.run(
        # one process (-n 0): -x stops at the first failure, and a caught mutation exits 1
        [sys.executable, "-m", "pytest", "-x", "-q", "-n", "0", "-p", "no:cacheprovider", *tests],
        cwd=root, env=env, capture_output=True, text=True,
    )
    last = (proc.stdout.strip().splitlines() or [""])[-1]
    return proc.returncode, time.monotonic() - started, last


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", default="", help="only mutations whose name contains this")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if args.k in m.name]
    if args.list:
        for m in chosen:
            print(f"{m.name}: {m.path}: {m.old!r} -> {m.new!r}")
        return 0
    with tempfile.TemporaryDirectory(prefix="spatialreward-mutation-") as tmp:
        base = Path(tmp) / "base"
        copy_tree(base)
        extra = sorted({t for m in chosen for t in m.tests})
        code, seconds, last = run_tests(base, GUARDS + extra)
        print(f"{'baseline (no mutation)':32} {'passes' if code == 0 else 'FAILS'}  {seconds:5.1f}s  {last}")
        if code != 0:
            print("the unmutated code fails its tests: fix that first", file=sys.stderr)
            return 1
        survived = []
        for m in chosen:
            root = Path(tmp) / m.name
            copy_tree(root)
            target = root / m.path
            text = target.read_bytes().decode("utf-8")
            if text.count(m.old) != 1:
                print(f"{m.name}: the code to mutate is not found exactly once in {m.path}", file=sys.stderr)
                return 1
            target.write_bytes(text.replace(m.old, m.new).encode("utf-8"))
            code, seconds, last = run_tests(root, list(m.tests) or GUARDS)
            caught = code == 1  # 1: tests ran and failed (2+ would be a broken run, not a catch)
            print(f"{m.name:32} {'caught' if caught else 'SURVIVED (exit %d)' % code}  {seconds:5.1f}s  {last}")
            if not caught:
                survived.append(m.name)
            shutil.rmtree(root)
    print(f"{len(chosen) - len(survived)} of {len(chosen)} mutations caught")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
