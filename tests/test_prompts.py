"""Golden tests: the prompts are byte-identical to the published protocol."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from conftest import REFERENCE
from spatialreward.prompts import render_pq, render_sc

SC_EXAMPLE_SHA256 = "d854ce9d64d1241dbf00a023e6441c176bfea125deeb63e2854b79f1dc326e57"
PQ_SHA256 = "92b06b3b127fd798e2f758df439a11df2dfe9f9dfece71f6a42858c17f73c38b"


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def test_sc_prompt_golden_hash():
    assert sha256(render_sc("Remove the dog")) == SC_EXAMPLE_SHA256


def test_pq_prompt_golden_hash():
    assert sha256(render_pq()) == PQ_SHA256


def test_pq_prompt_keeps_its_quirks():
    text = render_pq()
    assert "{{\n" in text and "}}\n" in text  # doubled braces are what the model was trained on
    assert sum(line.endswith(" ") for line in text.split("\n")) == 5  # five lines with trailing spaces


def test_sc_prompt_layout():
    text = render_sc("Make the sky purple")
    assert text.endswith("Editing instruction: Make the sky purple\n")
    assert "<|bbox_{id}|>" in text  # the literal placeholder is part of the prompt
    assert text.count("Editing instruction:") == 1


def test_instruction_is_inserted_verbatim():
    weird = 'Replace {instruction} with "{x}" and \\n braces {}'
    text = render_sc(weird)
    assert text.endswith(f"Editing instruction: {weird}\n")
    assert text.replace(weird, "Remove the dog") == render_sc("Remove the dog")


@pytest.mark.skipif(not REFERENCE.is_dir(), reason="../shared/reference is not beside this checkout")
def test_matches_the_reference_files_byte_for_byte():
    assert render_pq().encode("utf-8") == (REFERENCE / "pq_prompt.rendered.txt").read_bytes()
    assert render_sc("Remove the dog").encode("utf-8") == (REFERENCE / "sc_prompt.rendered.example.txt").read_bytes()


def test_prompts_come_from_the_shipped_templates():
    """Installed from a wheel, the templates lie inside the package; from a
    source tree (an editable install, or PYTHONPATH=cli) they are the
    repository's templates/, the folder the wheel force-includes."""
    from pathlib import Path

    import spatialreward
    from spatialreward.resources import templates_dir

    package = Path(spatialreward.__file__).resolve().parent
    inside = package / "templates"
    source_tree = package.parent.parent / "templates"
    expected = inside if (inside / "prompts").is_dir() else source_tree
    assert templates_dir() == expected
    assert (expected / "config.yaml").is_file()
    assert (expected / "prompts" / "pq.txt").read_bytes().decode("utf-8") == render_pq()


def test_wheel_ships_the_templates(tmp_path):
    """The built wheel carries templates/ inside the package."""
    import subprocess
    import sys
    import zipfile

    repo = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(repo)], check=True, capture_output=True)
    wheel, = tmp_path.glob("spatialreward-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"spatialreward/templates/prompts/sc.txt", "spatialreward/templates/prompts/pq.txt",
            "spatialreward/templates/config.yaml"} <= names
