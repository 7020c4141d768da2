"""README.md and the pages under docs/ hold together: every relative link
points at a file that exists (and at a heading that exists, when it names one),
and every flag a `spatialreward COMMAND` line in them uses is a flag of that
command; every other long flag they name belongs to some command, or to the
outside tools the docs quote (listed here, each with where it comes from)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")

# Long flags of other tools that the docs quote in their commands.
EXTERNAL_FLAGS = {
    # vLLM's OpenAI server (vllm serve / python -m vllm.entrypoints.openai.api_server)
    "--max-model-len", "--limit-mm-per-prompt", "--mm-processor-kwargs", "--data-parallel-size",
    "--tensor-parallel-size", "--gpu-memory-utilization", "--enforce-eager", "--dtype", "--host", "--port",
    "--served-model-name", "--api-key", "--structured-outputs-config", "--max-num-seqs", "--seed",
    "--enable-prefix-caching", "--trust-remote-code",
    # pip, pytest, hf, ray, git
    "--index-url", "--extra-index-url", "--no-build-isolation", "--no-deps", "--durations", "--head",
    "--address", "--num-cpus", "--num-gpus", "--quiet", "--upgrade",
    # pytest, with tests/conftest.py's switch
    "--full", "--pdb", "--dist",
    # hf download
    "--repo-type", "--local-dir",
    # python -m spatialreward.testing.random_model
    "--preset", "--arch",
    # the benchmark and setup scripts (scripts/, benchmarks/: each has its own --help)
    "--ceiling-concurrency", "--base-url", "--model", "--sizes", "--scenario", "--quick", "--smoke", "--clients", "--requests",
    "--workers", "--edits", "--list",
}


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    heading = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return heading.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.*)$", path.read_text(encoding="utf-8"), flags=re.M)}


def all_flags() -> dict[str, set[str]]:
    from spatialreward.commands import main

    out = {}
    for name, command in main.commands.items():
        flags = set()
        for param in command.params:
            if isinstance(param, click.Option):
                flags.update(o for o in param.opts + param.secondary_opts if o.startswith("-"))
        out[name] = flags | {"--help"}
    return out


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_exists(page):
    broken = []
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, fragment = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(target)
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            broken.append(target)
    assert not broken, f"{page.relative_to(REPO)}: broken links {broken}"


def spatialreward_lines(text: str) -> list[str]:
    """Commands in code blocks and inline code that run `spatialreward COMMAND ...`,
    joined across backslash continuations."""
    lines = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
        block = block.replace("\\\n", " ")
        lines += [line.strip() for line in block.splitlines() if line.strip().startswith("spatialreward ")]
    lines += [m for m in re.findall(r"`(spatialreward [a-z-]+[^`]*)`", text)]
    return lines


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_spatialreward_command_line_uses_real_flags(page):
    flags = all_flags()
    wrong = []
    for line in spatialreward_lines(page.read_text(encoding="utf-8")):
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            words = line.split()
        if len(words) < 2 or words[1] not in flags:
            continue
        command = words[1]
        for word in words[2:]:
            if word in ("|", "&&", ";", ">", "2>&1", "&"):
                break
            flag = word.split("=", 1)[0]
            if flag.startswith("-") and len(flag) > 1 and not re.match(r"^-\d", flag) and flag not in flags[command]:
                wrong.append(f"{command} {flag}")
    assert not wrong, f"{page.relative_to(REPO)}: flags that do not exist: {sorted(set(wrong))}"


def test_every_long_flag_named_exists_somewhere():
    known = set().union(*all_flags().values()) | EXTERNAL_FLAGS
    unknown = {}
    for page in PAGES:
        for flag in re.findall(r"(?<![\w/-])(--[a-z][a-z0-9-]+)", page.read_text(encoding="utf-8")):
            if flag not in known:
                unknown.setdefault(flag, page.relative_to(REPO).as_posix())
    assert not unknown, f"flags no command has (and not listed as another tool's): {unknown}"


def test_the_readme_is_short_and_links_every_page():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) < 300
    for page in (REPO / "docs").glob("*.md"):
        assert f"docs/{page.name}" in readme, f"README does not link docs/{page.name}"
    for heading in ("Install", "Try it without the 8B model", "The main command", "Commands", "Tests"):
        assert re.search(rf"^## {re.escape(heading)}$", readme, flags=re.M), heading


def test_ci_runs_the_full_command_the_readme_shows():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    for command in ("python scripts/setup_vllm_cpu.py", "python -m pytest tests --full", "python scripts/mutation_check.py"):
        assert command in readme and re.search(rf"^{re.escape(command)}$", ci, flags=re.M), command
    assert re.search(r"^python -m pytest tests +#", readme, flags=re.M), "the fast default is shown too"
