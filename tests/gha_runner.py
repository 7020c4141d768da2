"""A small stand-in for GitHub's runner, enough to run a composite action's
steps in order the way a job would: for tests/test_action.py.

What it does as the runner does:
- ``${{ }}`` expressions in ``env:``, ``with:``, ``if:`` and the action's
  ``outputs:``, with the contexts ``inputs``, ``steps``, ``github``
  (``action_path``, ``workspace``, ``event_name``), ``runner`` (``temp``,
  ``os``), ``env``, literals, ``!``/``==``/``!=``/``<``.../``&&``/``||`` with
  GitHub's loose typing (case-insensitive string equality, ``||`` and ``&&``
  returning an operand), and the functions ``always()``, ``success()``,
  ``failure()``, ``cancelled()``, ``format()``, ``contains()``,
  ``startsWith()``, ``endsWith()``, ``hashFiles()``;
- an ``if:`` without a status function means ``success() && (...)``; after a
  failed step only steps whose ``if:`` asks for ``always()`` or ``failure()``
  run, and the job fails (``continue-on-error`` excepted);
- ``run:`` steps: the script in a file, run as ``bash --noprofile --norc -eo
  pipefail FILE`` (``shell: bash``) in the workspace (or
  ``working-directory``), with ``GITHUB_ACTIONS=true``, ``GITHUB_WORKSPACE``,
  ``GITHUB_ACTION_PATH``, ``RUNNER_TEMP``, a fresh ``GITHUB_OUTPUT`` file per
  step (``name=value`` and ``name<<DELIM`` heredocs, parsed into
  ``steps.<id>.outputs``), ``GITHUB_ENV`` and ``GITHUB_PATH`` (applied to the
  steps after), and one ``GITHUB_STEP_SUMMARY`` file for the job.

What stands in for the actions a step ``uses:``:
- ``actions/setup-python``: a fresh virtual environment (``python -m venv
  --without-pip``) put first on PATH, as setup-python puts a Python on PATH.
  It sees the test interpreter's installed packages through a ``.pth`` file
  (torch and the rest are not installed again), but anything ``pip install``
  puts in it (the action's own package, its ``spatialreward`` command) shadows
  them. The ``python-version`` it was asked for is recorded.
- ``actions/upload-artifact``: records the artifact's name and each listed
  path, with whether it exists (``if-no-files-found`` is honoured).
Any other ``uses:`` is an error: the tests should know every action used.
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import re
import subprocess
import sysconfig
import venv
from dataclasses import dataclass, field
from pathlib import Path

import yaml

# ---------------------------------------------------------------- expressions

_TOKEN = re.compile(
    r"\s*(?:(?P<num>0x[0-9a-fA-F]+|-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"
    r"|(?P<str>'(?:[^']|'')*')"
    r"|(?P<op>==|!=|<=|>=|&&|\|\||[!<>().,\[\]*])"
    r"|(?P<ident>[A-Za-z_][A-Za-z0-9_-]*))"
)

STATUS_FUNCTIONS = ("always", "success", "failure", "cancelled")


class ExpressionError(ValueError):
    pass


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    text = text.strip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match or match.end() == pos:
            raise ExpressionError(f"cannot parse expression at {text[pos:]!r}")
        kind = match.lastgroup
        out.append((kind, match.group(kind)))
        pos = match.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return out


def to_string(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def _number(value) -> float:
    if value is None:
        return 0.0
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return 0.0
        try:
            return float(int(text, 16)) if text.lower().startswith("0x") else float(text)
        except ValueError:
            return math.nan
    return math.nan


def truthy(value) -> bool:
    if value is None or value is False or value == "":
        return False
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return not (value == 0 or math.isnan(value))
    return True


def _equal(a, b) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        return a.lower() == b.lower()
    if type(a) is type(b) and not isinstance(a, (int, float)):
        return a == b
    if isinstance(a, (dict, list)) or isinstance(b, (dict, list)):
        return a is b
    x, y = _number(a), _number(b)
    return x == y


def _compare(a, b, op: str) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        x, y = a.lower(), b.lower()
    else:
        x, y = _number(a), _number(b)
        if math.isnan(x) or math.isnan(y):
            return False
    return {"<": x < y, "<=": x <= y, ">": x > y, ">=": x >= y}[op]


class _Parser:
    def __init__(self, tokens, context, functions):
        self.tokens, self.pos, self.context, self.functions = tokens, 0, context, functions

    def peek(self, value=None):
        if self.pos >= len(self.tokens):
            return None
        token = self.tokens[self.pos]
        return token if value is None or token[1] == value else None

    def take(self, value=None):
        token = self.peek(value)
        if token is None:
            raise ExpressionError(f"expected {value!r} at token {self.pos}")
        self.pos += 1
        return token

    def parse(self):
        value = self.or_()
        if self.pos != len(self.tokens):
            raise ExpressionError(f"unexpected {self.tokens[self.pos][1]!r}")
        return value

    def or_(self):
        value = self.and_()
        while self.peek("||"):
            self.take()
            right = self.and_()
            value = value if truthy(value) else right
        return value

    def and_(self):
        value = self.equality()
        while self.peek("&&"):
            self.take()
            right = self.equality()
            value = right if truthy(value) else value
        return value

    def equality(self):
        value = self.comparison()
        while self.peek("==") or self.peek("!="):
            op = self.take()[1]
            right = self.comparison()
            value = _equal(value, right) == (op == "==")
        return value

    def comparison(self):
        value = self.unary()
        while any(self.peek(op) for op in ("<", "<=", ">", ">=")):
            op = self.take()[1]
            value = _compare(value, self.unary(), op)
        return value

    def unary(self):
        if self.peek("!"):
            self.take()
            return not truthy(self.unary())
        return self.postfix()

    def postfix(self):
        value = self.primary()
        while True:
            if self.peek("."):
                self.take()
                kind, name = self.take()
                if kind != "ident" and name != "*":
                    raise ExpressionError(f"bad property name {name!r}")
                value = value.get(name) if isinstance(value, dict) else None
            elif self.peek("["):
                self.take()
                index = self.or_()
                self.take("]")
                if isinstance(value, dict):
                    value = value.get(to_string(index))
                elif isinstance(value, list) and not isinstance(index, str):
                    i = int(_number(index))
                    value = value[i] if 0 <= i < len(value) else None
                else:
                    value = None
            else:
                return value

    def primary(self):
        kind, text = self.take()
        if kind == "num":
            return _number(text)
        if kind == "str":
            return text[1:-1].replace("''", "'")
        if text == "(":
            value = self.or_()
            self.take(")")
            return value
        if kind != "ident":
            raise ExpressionError(f"unexpected {text!r}")
        if text in ("true", "false"):
            return text == "true"
        if text == "null":
            return None
        if self.peek("("):
            self.take()
            args = []
            while not self.peek(")"):
                args.append(self.or_())
                if not self.peek(")"):
                    self.take(",")
            self.take(")")
            function = self.functions.get(text.lower())
            if function is None:
                raise ExpressionError(f"unknown function {text}()")
            return function(*args)
        if text not in self.context:
            raise ExpressionError(f"unknown context {text!r}")
        return self.context[text]


_TEMPLATE = re.compile(r"\$\{\{(.*?)\}\}", re.S)


# ---------------------------------------------------------------- the runner

@dataclass
class StepResult:
    id: str | None
    name: str
    outcome: str  # success, failure, skipped
    outputs: dict = field(default_factory=dict)
    returncode: int | None = None
    stdout: str = ""
    stderr: str = ""


@dataclass
class JobResult:
    steps: list[StepResult]
    outputs: dict[str, str]
    summary: str
    artifacts: list[dict]
    python_version: str | None
    python_prefix: Path | None
    failed: bool

    def step(self, key: str) -> StepResult:
        return next(s for s in self.steps if key in (s.id, s.name))

    def log(self) -> str:
        parts = []
        for s in self.steps:
            parts.append(f"--- {s.name} [{s.outcome}] rc={s.returncode}\n{s.stdout}{s.stderr}")
        return "\n".join(parts)


def parse_output_file(text: str) -> dict[str, str]:
    """GITHUB_OUTPUT / GITHUB_ENV contents: ``name=value`` lines and
    ``name<<DELIMITER`` heredocs, as the runner reads them."""
    out: dict[str, str] = {}
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip():
            continue
        eq, heredoc = line.find("="), line.find("<<")
        if eq >= 0 and (heredoc < 0 or eq < heredoc):
            name, value = line[:eq], line[eq + 1:]
        elif heredoc >= 0:
            name, delimiter = line[:heredoc], line[heredoc + 2:]
            body = []
            while True:
                if i >= len(lines):
                    raise ValueError(f"heredoc {name!r}: no closing {delimiter!r}")
                current = lines[i]
                i += 1
                if current == delimiter:
                    break
                body.append(current)
            value = "\n".join(body)
        else:
            raise ValueError(f"invalid line {line!r}")
        if not name:
            raise ValueError(f"invalid line {line!r}: empty name")
        out[name] = value
    return out


class CompositeRunner:
    """Runs one composite action (``action_dir/action.yml``) as one job would."""

    def __init__(self, action_dir: Path, workspace: Path, inputs: dict[str, str], *,
                 temp: Path, base_env: dict[str, str] | None = None, timeout: int = 900):
        self.action_dir = Path(action_dir).resolve()
        self.meta = yaml.safe_load((self.action_dir / "action.yml").read_text(encoding="utf-8"))
        assert self.meta["runs"]["using"] == "composite"
        self.workspace = Path(workspace)
        self.temp = Path(temp)
        self.temp.mkdir(parents=True, exist_ok=True)
        self.timeout = timeout
        declared = self.meta.get("inputs") or {}
        unknown = set(inputs) - set(declared)
        if unknown:
            raise ValueError(f"undeclared inputs given: {sorted(unknown)}")
        self.inputs: dict[str, str] = {}
        for name, spec in declared.items():
            if name in inputs:
                self.inputs[name] = str(inputs[name])
            elif spec.get("required") and "default" not in spec:
                raise ValueError(f"required input {name!r} not given")
            else:
                self.inputs[name] = to_string(spec.get("default", ""))
        self.env = dict(os.environ if base_env is None else base_env)
        self.job_env: dict[str, str] = {}
        self.path_prefix: list[str] = []
        self.summary_file = self.temp / "step_summary.md"
        self.summary_file.write_text("")
        self.steps_ctx: dict[str, dict] = {}
        self.failed = False
        self.artifacts: list[dict] = []
        self.python_version: str | None = None
        self.python_prefix: Path | None = None

    # -- expressions
    def _context(self) -> dict:
        return {
            "inputs": dict(self.inputs),
            "steps": self.steps_ctx,
            "github": {"action_path": str(self.action_dir), "workspace": str(self.workspace),
                       "event_name": "pull_request", "action": "__run"},
            "runner": {"temp": str(self.temp), "os": "Linux"},
            "env": dict(self.job_env),
        }

    def _functions(self) -> dict:
        def fmt(template, *args):
            text = to_string(template)
            for n, arg in enumerate(args):
                text = text.replace("{" + str(n) + "}", to_string(arg))
            return text.replace("{{", "{").replace("}}", "}")

        def hash_files(*patterns):
            digest = hashlib.sha256()
            found = False
            for pattern in patterns:
                for name in sorted(glob.glob(str(self.workspace / to_string(pattern)), recursive=True)):
                    if Path(name).is_file():
                        found = True
                        digest.update(hashlib.sha256(Path(name).read_bytes()).digest())
            return digest.hexdigest() if found else ""

        def contains(haystack, needle):
            if isinstance(haystack, list):
                return any(_equal(item, needle) for item in haystack)
            return to_string(needle).lower() in to_string(haystack).lower()

        return {
            "always": lambda: True,
            "success": lambda: not self.failed,
            "failure": lambda: self.failed,
            "cancelled": lambda: False,
            "format": fmt,
            "contains": contains,
            "startswith": lambda a, b: to_string(a).lower().startswith(to_string(b).lower()),
            "endswith": lambda a, b: to_string(a).lower().endswith(to_string(b).lower()),
            "hashfiles": hash_files,
            "tojson": lambda value: json.dumps(value, indent=2),
            "fromjson": lambda text: json.loads(to_string(text)),
        }

    def evaluate(self, expression: str):
        return _Parser(_tokens(expression), self._context(), self._functions()).parse()

    def interpolate(self, value) -> str:
        """A string with its ``${{ }}`` expressions replaced by their values."""
        if not isinstance(value, str):
            return to_string(value)
        return _TEMPLATE.sub(lambda m: to_string(self.evaluate(m.group(1))), value)

    def condition(self, condition) -> bool:
        if condition is None:
            return not self.failed
        if isinstance(condition, bool):
            return condition and not self.failed
        text = str(condition).strip()
        whole = re.fullmatch(r"\$\{\{(.*)\}\}", text, re.S)
        if whole and "${{" not in whole.group(1):
            text = whole.group(1).strip()
        if not re.search(r"\b(" + "|".join(STATUS_FUNCTIONS) + r")\s*\(", text):
            text = f"success() && ({text})"
        return truthy(self.evaluate(text))

    # -- steps
    def run(self) -> JobResult:
        results = []
        for index, step in enumerate(self.meta["runs"]["steps"]):
            result = self._step(index, step)
            results.append(result)
            if result.id:
                self.steps_ctx[result.id] = {"outputs": result.outputs, "outcome": result.outcome,
                                             "conclusion": result.outcome}
        outputs = {name: self.interpolate(spec.get("value", ""))
                   for name, spec in (self.meta.get("outputs") or {}).items()}
        return JobResult(
            steps=results, outputs=outputs, summary=self.summary_file.read_text(encoding="utf-8"),
            artifacts=self.artifacts, python_version=self.python_version, python_prefix=self.python_prefix,
            failed=self.failed,
        )

    def _step(self, index: int, step: dict) -> StepResult:
        name = step.get("name") or step.get("uses") or f"step {index}"
        sid = step.get("id")
        if not self.condition(step.get("if")):
            return StepResult(sid, name, "skipped")
        if "uses" in step:
            result = self._uses(sid, name, step)
        else:
            result = self._run(sid, name, step)
        continue_on_error = step.get("continue-on-error", False)
        if not isinstance(continue_on_error, bool):
            continue_on_error = self.interpolate(continue_on_error).strip().lower() == "true"
        if result.outcome == "failure" and not continue_on_error:
            self.failed = True
        return result

    def _step_env(self, step: dict) -> dict[str, str]:
        env = {**self.env, **self.job_env}
        if self.path_prefix:
            env["PATH"] = os.pathsep.join(self.path_prefix + [env.get("PATH", "")])
        env.update({
            "GITHUB_ACTIONS": "true",
            "CI": "true",
            "GITHUB_WORKSPACE": str(self.workspace),
            "GITHUB_ACTION_PATH": str(self.action_dir),
            "RUNNER_TEMP": str(self.temp),
            "RUNNER_OS": "Linux",
            "GITHUB_STEP_SUMMARY": str(self.summary_file),
        })
        for key, value in (step.get("env") or {}).items():
            env[key] = self.interpolate(value)
        return env

    def _run(self, sid, name, step) -> StepResult:
        shell = step.get("shell")
        assert shell == "bash", f"step {name!r}: composite run steps need shell: bash here, not {shell!r}"
        script = self.temp / f"step-{len(self.steps_ctx)}-{os.getpid()}-{id(step)}.sh"
        script.write_text(step["run"], encoding="utf-8")
        env = self._step_env(step)
        files = {}
        for var in ("GITHUB_OUTPUT", "GITHUB_ENV", "GITHUB_PATH"):
            files[var] = self.temp / f"{var.lower()}-{id(step)}"
            files[var].write_text("")
            env[var] = str(files[var])
        cwd = self.workspace
        if step.get("working-directory"):
            cwd = self.workspace / self.interpolate(step["working-directory"])
        proc = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],
            cwd=cwd, env=env, capture_output=True, text=True, timeout=self.timeout,
        )
        outputs = parse_output_file(files["GITHUB_OUTPUT"].read_text(encoding="utf-8"))
        self.job_env.update(parse_output_file(files["GITHUB_ENV"].read_text(encoding="utf-8")))
        self.path_prefix[:0] = [line for line in files["GITHUB_PATH"].read_text().splitlines() if line.strip()][::-1]
        return StepResult(sid, name, "success" if proc.returncode == 0 else "failure", outputs,
                          proc.returncode, proc.stdout, proc.stderr)

    def _uses(self, sid, name, step) -> StepResult:
        action, _, version = step["uses"].partition("@")
        assert version, f"step {name!r}: pin the action's version ({step['uses']})"
        with_ = {key: self.interpolate(value) for key, value in (step.get("with") or {}).items()}
        if action == "actions/setup-python":
            return self._setup_python(sid, name, with_)
        if action == "actions/upload-artifact":
            return self._upload_artifact(sid, name, with_)
        raise AssertionError(f"step {name!r}: no stand-in for {step['uses']}")

    def _setup_python(self, sid, name, with_) -> StepResult:
        self.python_version = with_.get("python-version")
        prefix = self.temp / "setup-python"
        venv.EnvBuilder(with_pip=False, symlinks=os.name != "nt", clear=True).create(prefix)
        site = subprocess.run(
            [str(prefix / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        # The test interpreter's packages (torch, transformers, pip, ...), after the venv's own.
        outer = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
        Path(site, "_outer_site_packages.pth").write_text("\n".join(outer) + "\n", encoding="utf-8")
        self.path_prefix.insert(0, str(prefix / "bin"))
        self.job_env["pythonLocation"] = str(prefix)
        self.python_prefix = prefix
        return StepResult(sid, name, "success", {"python-version": self.python_version or "",
                                                 "python-path": str(prefix / "bin" / "python")})

    def _upload_artifact(self, sid, name, with_) -> StepResult:
        paths = [line.strip() for line in with_.get("path", "").splitlines() if line.strip()]
        listed = []
        for path in paths:
            full = Path(path) if os.path.isabs(path) else self.workspace / path
            exists = any(Path(p).exists() for p in glob.glob(str(full))) if glob.has_magic(str(full)) else full.exists()
            listed.append({"path": path, "file": full, "exists": exists})
        artifact = {"name": with_.get("name") or "artifact", "paths": listed,
                    "if-no-files-found": with_.get("if-no-files-found", "warn")}
        self.artifacts.append(artifact)
        if not any(item["exists"] for item in listed) and artifact["if-no-files-found"] == "error":
            return StepResult(sid, name, "failure", {}, 1, "", "no files found\n")
        return StepResult(sid, name, "success", {"artifact-id": "1", "artifact-url": ""})


def path_without_command(command: str, path: str) -> str:
    """PATH minus the folders that hold ``command`` (so that only an install
    step can make it appear)."""
    keep = [p for p in path.split(os.pathsep) if p and not Path(p, command).exists()]
    return os.pathsep.join(keep)


__all__ = ["CompositeRunner", "JobResult", "StepResult", "parse_output_file", "path_without_command",
           "to_string", "truthy"]
