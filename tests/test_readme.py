"""README.md and docs/ tell the truth: every flag of every command is documented in
that command's section (docs/commands.md), the install section shows the CPU and the pinned
installs, and the "Try it without the 8B model" commands run as written."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest

from conftest import REPO, read_jsonl, spatialreward_exe

README = (REPO / "README.md").read_text(encoding="utf-8")
COMMANDS_PAGE = (REPO / "docs" / "commands.md").read_text(encoding="utf-8")


def _section(title_pattern: str, text: str = README) -> str:
    """The text under the heading matching ``title_pattern``, up to the
    next heading of the same or a higher level."""
    match = re.search(rf"^(#+) {title_pattern}.*$", text, flags=re.M)
    assert match, f"no section {title_pattern!r}"
    level = len(match.group(1))
    rest = text[match.end():]
    end = re.search(rf"^#{{1,{level}}} ", rest, flags=re.M)
    return rest[: end.start()] if end else rest


def _long_flags(command: click.Command) -> list[str]:
    flags = []
    for param in command.params:
        if isinstance(param, click.Option):
            flags += [o for o in param.opts + param.secondary_opts if o.startswith("--") and o != "--help"]
    return flags


def _commands():
    from spatialreward.commands import main

    return sorted(main.commands.items())


@pytest.mark.parametrize("name", [name for name, _ in _commands()])
def test_every_flag_is_documented_in_its_command_section(name):
    command = dict(_commands())[name]
    section = _section(rf"`spatialreward {name}\b", COMMANDS_PAGE)
    missing = [flag for flag in _long_flags(command)
               if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", section)]
    assert not missing, f"docs/commands.md section of `spatialreward {name}` does not mention {missing}"


def test_install_section_shows_gpu_cpu_pinned_and_test_installs():
    install = _section("Install")
    assert "pip install ." in install
    assert "download.pytorch.org/whl/cpu" in install, "CPU-only machines: torch's CPU build first"
    pinned = re.search(r"pip install --quiet (torch==\S+ torchvision==\S+)", (REPO / ".ci/run").read_text())
    assert pinned and pinned.group(1) in install, "the pinned builds CI installs"
    assert '".[test]"' in install


# -- "Try it without the 8B model" ---------------------------------------------

TRY_BEGIN, TRY_END = "<!-- try-it:begin -->", "<!-- try-it:end -->"


def try_it_commands() -> list[str]:
    """The shell commands of the README's try-it block, comments stripped."""
    assert TRY_BEGIN in README and TRY_END in README
    block = README.split(TRY_BEGIN, 1)[1].split(TRY_END, 1)[0]
    [code] = re.findall(r"```bash\n(.*?)```", block, flags=re.S)
    commands = [shlex.split(line, comments=True) for line in code.splitlines()]
    return [c for c in commands if c]


def test_try_it_section_follows_the_install_section():
    headings = re.findall(r"^## (.+)$", README, flags=re.M)
    assert headings[headings.index("Install") + 1].startswith("Try it without the 8B model")
    assert README.index(TRY_BEGIN) > README.index("## Try it without the 8B model")


@pytest.mark.slow  # the README's commands on a fresh copy (-m "not slow" leaves it out)
def test_try_it_commands_run_as_written(tmp_path):
    """The README's commands, run from a clean copy of the repository's
    examples/, with the tiny model: every edit judged ok, in bounded time."""
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    commands = try_it_commands()
    assert [c[0] for c in commands] == ["python", "spatialreward", "spatialreward"]
    started = time.monotonic()
    for argv in commands:
        exe = sys.executable if argv[0] == "python" else spatialreward_exe()
        result = subprocess.run([exe, *argv[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, (argv, result.stderr)
    elapsed = time.monotonic() - started
    judge = commands[1]
    records = read_jsonl(tmp_path / judge[judge.index("-o") + 1])
    manifest = [json.loads(line) for line in (REPO / "examples/edits.jsonl").read_text().splitlines()]
    expected = sum(len(e["edited"]) if isinstance(e["edited"], list) else 1 for e in manifest)
    assert len(records) == expected and all(r["status"] == "ok" for r in records)
    report = commands[2]
    assert (tmp_path / report[report.index("-o") + 1]).stat().st_size > 0
    assert elapsed < 400


def test_examples_are_small_real_photos_with_manifest_relative_paths():
    from PIL import Image

    images = sorted((REPO / "examples/images").iterdir())
    assert images and sum(p.stat().st_size for p in images) < 1_000_000
    for path in images:
        with Image.open(path) as image:
            assert 256 <= image.width <= 320
    for line in (REPO / "examples/edits.jsonl").read_text().splitlines():
        entry = json.loads(line)
        for path in [entry["source"], *(entry["edited"] if isinstance(entry["edited"], list) else [entry["edited"]])]:
            assert not Path(path).is_absolute() and (REPO / "examples" / path).is_file()
