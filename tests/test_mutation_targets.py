"""scripts/mutation_check.py (run by .ci/run after the suite) can only prove
anything if each mutation's code is there to mutate: each must be found
exactly once in its file. Checked here, in the fast suite, so a refactor that
moves or repeats the code fails at once instead of at the end of CI."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _mutations():
    spec = importlib.util.spec_from_file_location("mutation_check", ROOT / "scripts" / "mutation_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module.MUTATIONS


@pytest.mark.parametrize("mutation", _mutations(), ids=lambda m: m.name)
def test_each_mutation_finds_its_code_exactly_once(mutation):
    text = (ROOT / mutation.path).read_text(encoding="utf-8")
    assert text.count(mutation.old) == 1, f"{mutation.name}: {mutation.old!r} found {text.count(mutation.old)} times"
    assert mutation.new != mutation.old
