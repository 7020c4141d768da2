"""The GitHub Action: action.yml (judge + report + gate), actions/judge,
actions/gate and the example workflows in actions/examples/.

- metadata: each action.yml against GitHub's action schema and each example
  against GitHub's workflow schema (check-jsonschema's vendored schemas), the
  examples through actionlint;
- hygiene: every ``${{ inputs.X }}`` names a declared input, no ``${{`` in any
  ``run:`` script, and each run step only runs ``spatialreward`` (the install
  step only ``python -m pip install``) with the inputs taken verbatim from
  ``env:`` (shell metacharacters in every input, run against stub commands);
- behaviour: the composite actions run step by step as GitHub's runner would
  (tests/gha_runner.py), with the tiny random-weight model on real photos.

The install step runs for real: ``python -m pip install <the action's own
checkout>``, into the fresh virtual environment that stands in for
actions/setup-python (it sees the test interpreter's packages through a .pth
file, so torch and the rest are not downloaded again). The ``spatialreward``
command is taken off PATH beforehand, so every later step runs the command that
this install step put there, built from this working tree, never the test
environment's copy. The tests pass ``install-args: --no-build-isolation
--no-index`` (which also exercises the splitting of that input): no network,
and about a second per install (hatchling, the build backend, is in the test
extra; without it they pass nothing and pip fetches it, as a runner would).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, read_jsonl, write_jsonl
from gha_runner import CompositeRunner, parse_output_file, path_without_command

pytestmark = pytest.mark.slow  # installs the package and runs the Actions (-m "not slow" leaves it out)


ACTION_FILES = {
    "root": REPO / "action.yml",
    "judge": REPO / "actions" / "judge" / "action.yml",
    "gate": REPO / "actions" / "gate" / "action.yml",
}
EXAMPLES_DIR = REPO / "actions" / "examples"
EXAMPLES = sorted(EXAMPLES_DIR.glob("*.yml"))
ACTIONLINT_CONFIG = EXAMPLES_DIR / "actionlint.yaml"
GATE_OUTPUTS = {"verdict", "mean-reward", "pass-rate", "errors", "delta"}
# `uses:` of this repository's actions in the examples -> their metadata.
OWN_ACTION = re.compile(r"^[\w.-]+/spatialreward(?P<sub>/actions/(?:judge|gate))?@[\w./-]+$")
EXPRESSION = re.compile(r"\$\{\{(.*?)\}\}", re.S)
INPUT_REF = re.compile(r"\binputs\s*(?:\.\s*([A-Za-z_][\w-]*)|\[\s*'([^']*)'\s*\])")
STEP_OUTPUT_REF = re.compile(r"\bsteps\.([A-Za-z_][\w-]*)\.outputs\.([A-Za-z_][\w-]*)")


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _tool(name: str) -> str | None:
    """A console script of the test environment (next to its python), else on PATH."""
    return shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)


def _missing(what: str):
    """Skip a linter test without the linter, but fail in CI (as the browser test does)."""
    message = f"{what} is missing: it is in the test extra (pip install '.[test]')"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _require_check_jsonschema() -> None:
    try:
        import check_jsonschema  # noqa: F401, PLC0415
    except ImportError:
        _missing("check-jsonschema")


def _run_steps(meta: dict) -> list[dict]:
    return [step for step in meta["runs"]["steps"] if "run" in step]


def _workflow_steps(workflow: dict):
    for job_id, job in (workflow.get("jobs") or {}).items():
        for step in job.get("steps") or []:
            yield job_id, step


def test_there_are_three_actions_and_two_examples():
    assert all(path.is_file() for path in ACTION_FILES.values())
    assert {p.name for p in EXAMPLES} == {"pr-gate-gpu.yml", "baseline-main.yml"}


# ----------------------------------------------------------------- metadata


@pytest.mark.parametrize("name", sorted(ACTION_FILES))
def test_action_metadata_matches_the_github_schema(name):
    _require_check_jsonschema()
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-actions",
         str(ACTION_FILES[name])],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_example_workflows_match_the_github_schema():
    _require_check_jsonschema()
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows", *map(str, EXAMPLES)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_example_workflows_pass_actionlint():
    exe = _tool("actionlint")
    if exe is None:
        _missing("the actionlint command")
    result = subprocess.run(
        [exe, "-no-color", "-config-file", str(ACTIONLINT_CONFIG), *map(str, EXAMPLES)],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


# ----------------------------------------------------------------- hygiene


@pytest.mark.parametrize("name", sorted(ACTION_FILES))
def test_every_inputs_reference_names_a_declared_input(name):
    path = ACTION_FILES[name]
    meta = _load(path)
    declared = set(meta.get("inputs") or {})
    used = set()
    for expression in EXPRESSION.findall(path.read_text(encoding="utf-8")):
        for dotted, indexed in INPUT_REF.findall(expression):
            used.add(dotted or indexed)
    assert used, "no input is used at all?"
    assert used <= declared, f"undeclared inputs referenced: {sorted(used - declared)}"
    # Conditions are expressions even without ${{ }}.
    for step in meta["runs"]["steps"]:
        for dotted, indexed in INPUT_REF.findall(str(step.get("if", ""))):
            assert (dotted or indexed) in declared
    # Every declared input is used (a forgotten one is a silent no-op for the user).
    text_refs = used | {d or i for s in meta["runs"]["steps"] for d, i in INPUT_REF.findall(str(s.get("if", "")))}
    assert declared <= text_refs, f"declared but never used: {sorted(declared - text_refs)}"


@pytest.mark.parametrize("name", sorted(ACTION_FILES))
def test_step_output_references_point_at_real_steps(name):
    meta = _load(ACTION_FILES[name])
    ids = {step.get("id") for step in meta["runs"]["steps"] if step.get("id")}
    text = ACTION_FILES[name].read_text(encoding="utf-8")
    refs = STEP_OUTPUT_REF.findall(text)
    for step_id, output in refs:
        assert step_id in ids, f"steps.{step_id} is no step id"
        if step_id == "gate":
            assert output in GATE_OUTPUTS, f"spatialreward gate writes no output {output!r}"
    if name != "judge":
        assert {output for sid, output in refs if sid == "gate"} == GATE_OUTPUTS
    for output, spec in (meta.get("outputs") or {}).items():
        assert spec.get("value") and spec.get("description"), output


def _all_run_scripts():
    for name, path in ACTION_FILES.items():
        for step in _run_steps(_load(path)):
            yield f"{name}: {step.get('name')}", step["run"]
    for path in EXAMPLES:
        for job_id, step in _workflow_steps(_load(path)):
            if "run" in step:
                yield f"{path.name}: {job_id}: {step.get('name')}", step["run"]


def test_no_expression_inside_any_run_script():
    scripts = list(_all_run_scripts())
    assert len(scripts) >= 10
    for where, script in scripts:
        assert "${{" not in script, f"{where}: pass inputs through env:, never ${{{{ }}}} in the script"


@pytest.mark.parametrize("name", sorted(ACTION_FILES))
def test_run_steps_are_bash_and_take_every_input_from_env(name):
    meta = _load(ACTION_FILES[name])
    steps = _run_steps(meta)
    installs = [s for s in steps if "pip install" in s["run"]]
    assert len(installs) == 1, "exactly one install step"
    for step in steps:
        assert step.get("shell") == "bash"
        for key, value in (step.get("env") or {}).items():
            assert key.startswith("SR_"), f"{key}: keep the action's variables apart from the runner's"
            assert isinstance(value, str)
        if step is not installs[0]:
            assert step["run"].rstrip().endswith('spatialreward "${args[@]}"')
    assert re.search(r'^python -m pip install .*"\$SR_PACKAGE" "\$\{extra\[@\]\}"$', installs[0]["run"], re.M)


def test_the_actions_install_from_their_own_checkout():
    for name, path in ACTION_FILES.items():
        install = next(s for s in _run_steps(_load(path)) if "pip install" in s["run"])
        expected = "${{ github.action_path }}" + ("" if name == "root" else "/../..")
        assert install["env"]["SR_PACKAGE"] == expected
        package_root = (path.parent / ("." if name == "root" else "../..")).resolve()
        assert (package_root / "pyproject.toml").is_file()
    sdist = _load_pyproject()["tool"]["hatch"]["build"]["targets"]["sdist"]["include"]
    assert "action.yml" in sdist and "actions/" in sdist


def _load_pyproject() -> dict:
    import tomllib  # noqa: PLC0415  (3.11+; only this test needs it)

    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def test_test_extra_lists_the_linters():
    pytest.importorskip("tomllib")
    extra = " ".join(_load_pyproject()["project"]["optional-dependencies"]["test"])
    assert "check-jsonschema" in extra and "actionlint" in extra


HOSTILE = "{name} $(touch {canary}) `touch {canary}` \"'; touch {canary}; #"
BOOLEAN_INPUTS = {"resume", "allow-config-mismatch", "setup-python", "upload-artifacts"}
SPLIT_VARS = {"SR_INSTALL_ARGS", "SR_MIN_DIMENSION"}


def _stub_commands(folder: Path, log: Path) -> Path:
    folder.mkdir()
    for command in ("spatialreward", "python"):
        stub = folder / command
        stub.write_text(f'#!/bin/bash\nprintf "%s\\0" "{command}" "$@" >> "{log}"\n', encoding="utf-8")
        stub.chmod(0o755)
    return folder


@pytest.mark.parametrize("name", sorted(ACTION_FILES))
@pytest.mark.parametrize("fill", ["hostile", "defaults"])
def test_run_steps_only_call_spatialreward_with_inputs_verbatim(name, fill, tmp_path):
    """Each run step, with every input full of shell syntax (or all defaults),
    on a PATH holding only stub ``spatialreward`` and ``python`` commands:
    one stub call, the inputs arriving as whole arguments, nothing executed."""
    meta = _load(ACTION_FILES[name])
    canary = tmp_path / "pwned"
    if fill == "hostile":
        inputs = {key: ("true" if key in BOOLEAN_INPUTS else HOSTILE.format(name=f"x-{key}", canary=canary))
                  for key in meta["inputs"]}
    else:
        inputs = {key: "value" for key, spec in meta["inputs"].items() if spec.get("required")}
    workspace = tmp_path / "ws"
    workspace.mkdir()
    log = tmp_path / "calls"
    stubs = _stub_commands(tmp_path / "stubs", log)
    runner = CompositeRunner(ACTION_FILES[name].parent, workspace, inputs, temp=tmp_path / "tmp")
    for step in _run_steps(meta):
        env = runner._step_env(step)
        env["PATH"] = str(stubs)
        script = tmp_path / "step.sh"
        script.write_text(step["run"], encoding="utf-8")
        log.write_bytes(b"")
        proc = subprocess.run(["/bin/bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],
                              cwd=workspace, env=env, capture_output=True, text=True, timeout=60)
        where = f"{name}: {step['name']}"
        assert proc.returncode == 0, f"{where}: {proc.stderr}"
        assert "not found" not in proc.stderr, f"{where} runs a command other than spatialreward/pip: {proc.stderr}"
        argv = log.read_bytes().decode().split("\0")[:-1]
        assert argv, f"{where}: no command ran"
        command = argv[0]
        assert argv.count(command) == 1 or command == "python", f"{where}: one command per step: {argv}"
        if "pip install" in step["run"]:
            assert argv[:5] == ["python", "-m", "pip", "install", "--disable-pip-version-check"]
            assert Path(argv[5]).resolve() == REPO
            assert argv[6:] == env["SR_INSTALL_ARGS"].split()
        else:
            assert command == "spatialreward" and argv[1] in ("judge", "report", "gate")
        assert "" not in argv[1:], f"{where}: an empty input became an empty argument: {argv}"
        for var in step.get("env", {}):
            resolved = env[var]
            if not resolved or resolved in ("true", "false") or var == "SR_PACKAGE":
                continue
            if var in SPLIT_VARS:
                pieces = resolved.split()
                if var == "SR_MIN_DIMENSION":
                    assert argv[1:].count("--min-dimension") == len(pieces)
                    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--min-dimension"] == pieces
                else:
                    assert argv[-len(pieces):] == pieces
            else:
                assert resolved in argv, f"{where}: {var}={resolved!r} not passed as one argument: {argv}"
        assert not canary.exists(), f"{where}: an input was executed as shell code"
    if fill == "hostile" and name != "judge":
        gate_step = next(s for s in _run_steps(meta) if s.get("id") == "gate")
        assert "--allow-config-mismatch" in _argv_of(gate_step, runner, stubs, log, tmp_path, workspace)


def _argv_of(step, runner, stubs, log, tmp_path, workspace) -> list[str]:
    env = runner._step_env(step)
    env["PATH"] = str(stubs)
    (tmp_path / "step.sh").write_text(step["run"], encoding="utf-8")
    log.write_bytes(b"")
    subprocess.run(["/bin/bash", "--noprofile", "--norc", "-eo", "pipefail", str(tmp_path / "step.sh")],
                   cwd=workspace, env=env, check=True, timeout=60)
    return log.read_bytes().decode().split("\0")[:-1]


def test_examples_use_declared_inputs_and_outputs():
    seen = set()
    for path in EXAMPLES:
        workflow = _load(path)
        assert workflow.get("permissions"), f"{path.name}: set permissions"
        own_steps = {}
        for _, step in _workflow_steps(workflow):
            match = OWN_ACTION.match(step.get("uses", ""))
            if not match:
                continue
            sub = (match.group("sub") or "").rsplit("/", 1)[-1] or "root"
            seen.add(sub)
            meta = _load(ACTION_FILES[sub])
            given = set(step.get("with") or {})
            assert given <= set(meta["inputs"]), f"{path.name}: unknown inputs {sorted(given - set(meta['inputs']))}"
            required = {k for k, spec in meta["inputs"].items() if spec.get("required")}
            assert required <= given, f"{path.name}: required inputs missing: {sorted(required - given)}"
            if step.get("id"):
                own_steps[step["id"]] = set(meta.get("outputs") or {})
        for step_id, output in STEP_OUTPUT_REF.findall(path.read_text(encoding="utf-8")):
            if step_id in own_steps:
                assert output in own_steps[step_id], f"{path.name}: steps.{step_id} has no output {output!r}"
    assert seen == {"root", "judge", "gate"}


def test_the_runner_reads_output_files_as_github_does():
    text = "a=1\nb=x=y\nlong<<EOF_1\nline 1\nline=2\nEOF_1\nempty=\n"
    assert parse_output_file(text) == {"a": "1", "b": "x=y", "long": "line 1\nline=2", "empty": ""}


# ----------------------------------------------------------------- behaviour

INSTALL_ARGS = "--no-build-isolation --no-index"


def _install_args() -> str:
    try:
        import hatchling  # noqa: F401, PLC0415
    except ImportError:
        return ""
    return INSTALL_ARGS


def _base_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = path_without_command("spatialreward", env.get("PATH", ""))
    for name in list(env):
        if name.startswith(("GITHUB_", "RUNNER_", "INPUT_")) or name in ("VIRTUAL_ENV", "PYTHONHOME"):
            del env[name]
    return env


def run_action(name: str, workspace: Path, inputs: dict, temp: Path):
    runner = CompositeRunner(ACTION_FILES[name].parent, workspace, inputs, temp=temp, base_env=_base_env())
    return runner.run()


def _assert_installed_here(result):
    """Every spatialreward step ran the command that the install step put in
    the stand-in for setup-python's Python, built from this working tree."""
    assert result.python_version == "3.11"
    exe = result.python_prefix / "bin" / "spatialreward"
    assert exe.is_file()
    site = subprocess.run([str(result.python_prefix / "bin" / "python"), "-c",
                           "import spatialreward, sys; print(spatialreward.__file__)"],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert Path(site).is_relative_to(result.python_prefix), site


def _float(text: str) -> float:
    assert text not in ("", None)
    return float(text)


@pytest.fixture(scope="module")
def workspace(photos, tmp_path_factory) -> Path:
    """A checkout with a folder eval set, a PR's edits beside it, and a judge
    config that keeps the tiny model fast."""
    root = tmp_path_factory.mktemp("workspace")
    source = root / "evalset" / "source"
    source.mkdir(parents=True)
    (root / "evalset" / "edited").mkdir()
    edits = root / "runs" / "pr"
    edits.mkdir(parents=True)
    rows = [
        ("red", "coffee", "coffee_red_square", "Add a red square on the right", "add"),
        ("mirror", "astronaut", "astronaut_mirror", "Mirror the photo", "global"),
        ("gray", "coffee", "coffee_gray", "Make the photo black and white", "global"),
    ]
    for name, src, edited, _, _ in rows:
        shutil.copy(photos[src], source / f"{name}{photos[src].suffix}")
        shutil.copy(photos[edited], edits / f"{name}{photos[edited].suffix}")
    write_jsonl(root / "evalset" / "instructions.jsonl",
                [{"name": n, "instruction": i, "category": c} for n, _, _, i, c in rows])
    (root / "judge.yaml").write_text("generation:\n  max_new_tokens: 160\n  structured: always\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def passing(workspace, tiny_model, tmp_path_factory):
    inputs = {
        "manifest": "evalset", "edited-dir": "runs/pr", "model": str(tiny_model), "config": "judge.yaml",
        "device": "cpu", "batch-size": "3", "threshold": "0.5",
        "min-mean-reward": "0", "min-pass-rate": "0", "min-dimension": "success=0 artifacts=0", "min-judged": "3",
        "install-args": _install_args(),
    }
    return run_action("root", workspace, inputs, tmp_path_factory.mktemp("runner-pass"))


def _stats(scores: Path, threshold: float = 0.5):
    records = read_jsonl(scores)
    rewards = [r["reward"] for r in records if r["status"] == "ok"]
    return records, sum(rewards) / len(rewards), sum(r >= threshold for r in rewards) / len(rewards)


def test_root_action_judges_reports_and_passes(passing, workspace):
    result = passing
    assert not result.failed, result.log()
    assert [s.outcome for s in result.steps] == ["success"] * 6, result.log()
    _assert_installed_here(result)

    out = workspace / "spatialreward-results"
    assert result.outputs["scores"] == "spatialreward-results/scores.jsonl"
    assert result.outputs["report"] == "spatialreward-results/report.html"
    assert result.outputs["summary"] == "spatialreward-results/summary.md"
    records, mean, pass_rate = _stats(out / "scores.jsonl")
    assert sorted(r["id"] for r in records) == ["gray", "mirror", "red"]
    assert all(r["status"] == "ok" for r in records)
    assert all((workspace / r["edited"]).resolve().parent == (workspace / "runs" / "pr").resolve()
               for r in records)  # edited-dir
    assert result.outputs["verdict"] == "pass"
    assert _float(result.outputs["mean-reward"]) == pytest.approx(mean, abs=1e-6)
    assert _float(result.outputs["pass-rate"]) == pytest.approx(pass_rate, abs=1e-6)
    assert result.outputs["errors"] == "0"
    assert result.outputs["delta"] == ""

    assert "pass rate at reward >= 0.5" in result.step("judge").stderr
    summary = result.summary
    assert "| check | scope | observed | limit | result |" in summary
    assert "PASS" in summary and "FAIL" not in summary
    for check in ("mean reward", "pass rate", "mean success", "mean artifacts", "errors", "judged edits"):
        assert f"| {check} | all |" in summary, check
    assert f"| mean reward | all | {mean:.3f} | >= 0 | ✅ pass |" in summary
    summary_md = (out / "summary.md").read_text(encoding="utf-8")
    assert summary_md.strip() and summary_md.strip() in summary

    html = (out / "report.html").read_text(encoding="utf-8")
    assert html.lstrip().lower().startswith("<!doctype html") and all(i in html for i in ("red", "mirror", "gray"))
    assert (out / "report.md").read_text(encoding="utf-8").strip()
    [artifact] = result.artifacts
    assert artifact["name"] == "spatialreward-results"
    assert {Path(p["path"]).name for p in artifact["paths"]} == {
        "scores.jsonl", "scores.summary.json", "report.html", "report.md", "summary.md"}
    assert all(p["exists"] for p in artifact["paths"]), artifact


def test_root_action_fails_the_job_and_still_uploads(passing, workspace, tiny_model, tmp_path):
    assert not passing.failed, passing.log()
    scores = workspace / "spatialreward-results" / "scores.jsonl"
    records, mean, _ = _stats(scores)
    # A baseline that was better on every edit: a real regression.
    baseline = [{**r, "reward": (r["reward"] + 1) / 2} for r in records]
    write_jsonl(workspace / "baseline.jsonl", baseline)
    expected_delta = sum(r["reward"] - b["reward"] for r, b in zip(records, baseline, strict=True)) / len(records)
    inputs = {
        "manifest": "evalset", "edited-dir": "runs/pr", "model": str(tiny_model), "config": "judge.yaml",
        "device": "cpu", "resume": "true",  # a self-hosted runner's workspace: judge nothing again
        "min-mean-reward": "1.0", "min-judged": "10", "baseline": "baseline.jsonl", "max-drop": "0.01",
        "title": "edit quality", "install-args": _install_args(), "artifact-name": "sr-failing",
    }
    result = run_action("root", workspace, inputs, tmp_path / "runner")
    outcomes = {s.name: s.outcome for s in result.steps}
    assert result.failed, result.log()
    assert outcomes == {
        "Set up Python": "success", "Install spatialreward": "success", "Judge the edits": "success",
        "Write the report": "success", "Gate": "failure", "Upload scores and report": "success",
    }, result.log()
    gate = result.step("gate")
    assert gate.returncode == 1, gate.stdout + gate.stderr
    assert "resumed: 3 edits" in result.step("judge").stderr
    assert read_jsonl(scores) == records  # resumed: nothing judged again
    assert result.outputs["verdict"] == "fail"
    assert result.outputs["errors"] == "0"
    assert _float(result.outputs["mean-reward"]) == pytest.approx(mean, abs=1e-6)
    assert _float(result.outputs["delta"]) == pytest.approx(expected_delta, abs=1e-6)
    assert "::error title=spatialreward gate%3A judged edits::" in gate.stdout
    assert "::error title=spatialreward gate%3A regression::" in gate.stdout
    summary = result.summary
    assert summary.startswith("## ❌ edit quality: FAIL")
    assert "| judged edits | all | 3 | >= 10 | ❌ FAIL |" in summary
    assert "### Baseline comparison" in summary and "REGRESSION" in summary
    [artifact] = result.artifacts
    assert artifact["name"] == "sr-failing" and all(p["exists"] for p in artifact["paths"])


def test_root_action_when_judging_fails_skips_the_gate_and_still_uploads(tmp_path):
    workspace = tmp_path / "ws"
    workspace.mkdir()
    inputs = {"manifest": "no-such-manifest.jsonl", "device": "cpu", "install-args": _install_args()}
    result = run_action("root", workspace, inputs, tmp_path / "runner")
    assert result.failed
    assert [s.outcome for s in result.steps] == ["success", "success", "failure", "skipped", "skipped", "success"]
    assert result.step("judge").returncode == 3, result.log()
    assert result.outputs["verdict"] == "" and result.summary == ""
    assert not any(p["exists"] for p in result.artifacts[0]["paths"])


def test_split_actions_judge_on_one_runner_and_gate_on_another(photos, tiny_model, tmp_path):
    """actions/judge on the 'GPU' runner, the artifact carried over, actions/gate on another."""
    gpu = tmp_path / "gpu-ws"
    gpu.mkdir()
    for key in ("coffee", "coffee_red_square", "astronaut", "astronaut_mirror"):
        shutil.copy(photos[key], gpu / photos[key].name)
    write_jsonl(gpu / "edits.jsonl", [
        {"id": "red", "source": "coffee.png", "edited": "coffee_red_square.png", "instruction": "Add a red square"},
        {"id": "mirror", "source": "astronaut.png", "edited": "astronaut_mirror.png", "instruction": "Mirror it"},
    ])
    (gpu / "judge.yaml").write_text("generation:\n  max_new_tokens: 160\n  structured: always\n", encoding="utf-8")
    judged = run_action("judge", gpu, {
        "manifest": "edits.jsonl", "model": str(tiny_model), "config": "judge.yaml", "device": "cpu",
        "output-dir": "out/sr", "artifact-name": "spatialreward-pr", "install-args": _install_args(),
    }, tmp_path / "gpu-runner")
    assert not judged.failed, judged.log()
    assert [s.outcome for s in judged.steps] == ["success"] * 5
    _assert_installed_here(judged)
    assert judged.outputs == {
        "scores": "out/sr/scores.jsonl", "summary-json": "out/sr/scores.summary.json",
        "report": "out/sr/report.html", "summary": "out/sr/report.md", "artifact-name": "spatialreward-pr",
    }
    for key in ("scores", "summary-json", "report", "summary"):
        assert (gpu / judged.outputs[key]).is_file(), key
    assert judged.summary == ""  # the judge half writes no job summary
    [artifact] = judged.artifacts
    assert artifact["name"] == "spatialreward-pr" and all(p["exists"] for p in artifact["paths"])

    cheap = tmp_path / "cheap-ws"
    (cheap / "current").mkdir(parents=True)
    for item in artifact["paths"]:  # what actions/download-artifact would bring
        shutil.copy(item["file"], cheap / "current" / Path(item["path"]).name)
    gated = run_action("gate", cheap, {"scores": "current/scores.jsonl", "min-judged": "2",
                                       "install-args": _install_args()}, tmp_path / "cheap-runner")
    assert not gated.failed, gated.log()
    _, mean, pass_rate = _stats(cheap / "current" / "scores.jsonl")
    assert gated.outputs["verdict"] == "pass"
    assert _float(gated.outputs["mean-reward"]) == pytest.approx(mean, abs=1e-6)
    assert _float(gated.outputs["pass-rate"]) == pytest.approx(pass_rate, abs=1e-6)
    assert gated.outputs["summary"] == "spatialreward-gate.md"
    assert (cheap / "spatialreward-gate.md").read_text(encoding="utf-8").strip() in gated.summary


# -- actions/gate on crafted scores


def _crafted(ids_scores: dict, *, judge_hash: str = "0123456789abcdef") -> list[dict]:
    from spatialreward.config import Aggregation
    from spatialreward.rescore import rescore_record

    records = []
    for rid, raw in ids_scores.items():
        if raw is None:
            records.append({"id": rid, "status": "error", "reward": None,
                            "error": {"stage": "input", "message": "corrupt image", "origin": "edits.jsonl:9"},
                            "instruction": "x", "meta": {}})
            continue
        record = {"id": rid, "status": "ok", "judge_hash": judge_hash, "instruction": f"edit {rid}",
                  "edited": f"/data/{rid}.png", "meta": {"category": "add" if rid < "c" else "remove"},
                  "scores": dict(zip(("success", "overediting", "naturalness", "artifacts"), raw, strict=True))}
        records.append(rescore_record(record, Aggregation()))
    return records


@pytest.fixture()
def gate_workspace(tmp_path) -> Path:
    root = tmp_path / "ws"
    root.mkdir()
    write_jsonl(root / "scores.jsonl", _crafted({
        "a": (20, 22, 21, 23), "b": (18, 20, 19, 21), "c": (24, 23, 22, 24), "d": (15, 20, 18, 17), "e": None}))
    write_jsonl(root / "base.jsonl", _crafted({
        "a": (15, 18, 17, 16), "b": (14, 16, 15, 17), "c": (20, 19, 18, 20), "d": (12, 15, 14, 13),
        "e": (20, 20, 20, 20)}))
    (root / "gate.yaml").write_text("min_pass_rate: 0.5\nmax_errors: 1\ncategories:\n  add:\n    min_judged: 2\n",
                                    encoding="utf-8")
    return root


def test_gate_action_passes_with_a_gate_file_and_a_baseline(gate_workspace, tmp_path):
    result = run_action("gate", gate_workspace, {
        "scores": "scores.jsonl", "gate-config": "gate.yaml", "baseline": "base.jsonl", "max-drop": "0.02",
        "min-dimension": "success=15", "summary-path": "gate-summary.md", "install-args": _install_args(),
    }, tmp_path / "runner")
    assert not result.failed, result.log()
    assert [s.outcome for s in result.steps] == ["success"] * 3
    _assert_installed_here(result)
    records, mean, pass_rate = _stats(gate_workspace / "scores.jsonl")
    base = {r["id"]: r["reward"] for r in read_jsonl(gate_workspace / "base.jsonl")}
    deltas = [r["reward"] - base[r["id"]] for r in records if r["status"] == "ok"]
    assert result.outputs["verdict"] == "pass"
    assert result.outputs["errors"] == "1"  # max_errors 1 from the gate file: the default '' does not override it
    assert _float(result.outputs["mean-reward"]) == pytest.approx(mean, abs=1e-6)
    assert _float(result.outputs["pass-rate"]) == pytest.approx(pass_rate, abs=1e-6)
    assert _float(result.outputs["delta"]) == pytest.approx(sum(deltas) / len(deltas), abs=1e-6)
    assert result.outputs["summary"] == "gate-summary.md"
    summary = result.summary
    assert "| judged edits | category add | 2 | >= 2 | ✅ pass |" in summary
    assert "| mean success | all |" in summary and "### Baseline comparison" in summary
    assert (gate_workspace / "gate-summary.md").read_text(encoding="utf-8").strip() in summary
    assert "::warning title=low reward%3A d::" in result.step("gate").stdout
    assert result.artifacts == []


def test_gate_action_fails_on_errors_and_a_dimension(gate_workspace, tmp_path):
    result = run_action("gate", gate_workspace, {
        "scores": "scores.jsonl", "min-dimension": "success=25 artifacts=1", "install-args": _install_args(),
    }, tmp_path / "runner")
    assert result.failed
    gate = result.step("gate")
    assert gate.outcome == "failure" and gate.returncode == 1, result.log()
    assert result.outputs["verdict"] == "fail" and result.outputs["errors"] == "1"
    assert result.outputs["delta"] == ""
    assert "::error title=spatialreward gate%3A errors::" in gate.stdout
    assert "::error title=spatialreward gate%3A mean success::" in gate.stdout
    assert "| mean artifacts | all |" in result.summary and "❌ FAIL" in result.summary


def test_gate_action_on_a_missing_scores_file_exits_3(tmp_path):
    workspace = tmp_path / "ws"
    workspace.mkdir()
    result = run_action("gate", workspace, {"scores": "nothing.jsonl", "install-args": _install_args()},
                        tmp_path / "runner")
    assert result.failed and result.step("gate").returncode == 3
    assert result.outputs["verdict"] == ""
    assert "no such file" in result.step("gate").stderr
