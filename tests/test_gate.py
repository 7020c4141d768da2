"""`spatialreward gate` on crafted score files: thresholds at their boundaries,
categories, errors, baseline comparison, GitHub outputs."""

from __future__ import annotations

import json
import random

import pytest
from click.testing import CliRunner

from conftest import read_jsonl, run_cli, write_jsonl
from spatialreward.commands import main
from spatialreward.gate import GateConfig, bootstrap_ci, load_gate_config, run_gate
from spatialreward.errors import ConfigError

HASH = "feedfacecafebeef"


def ok(rid, reward, category=None, scores=(20, 20, 20, 20), config_hash=HASH):
    return {
        "id": rid, "status": "ok", "error": None, "reward": reward, "overall": reward * 10, "sc": 8.0, "pq": 8.0,
        "scores": dict(zip(("success", "overediting", "naturalness", "artifacts"), scores)),
        "meta": {"category": category} if category else {}, "instruction": f"edit {rid}", "edited": f"/x/{rid}.png",
        "config_hash": config_hash, "judge_hash": "0" * 16,
    }


def err(rid, stage="parse", category=None):
    return {"id": rid, "status": "error", "error": {"stage": stage, "message": "bad"}, "reward": None,
            "scores": None, "meta": {"category": category} if category else {}, "config_hash": HASH}


def gate(tmp_path, records, *args, baseline=None, env=None):
    scores = write_jsonl(tmp_path / "scores.jsonl", records)
    extra = ["--baseline", str(write_jsonl(tmp_path / "base.jsonl", baseline))] if baseline is not None else []
    return CliRunner().invoke(main, ["gate", str(scores), *args, *extra], env=env or {}, catch_exceptions=False)


RUN = [ok("a", 0.8, "add", (20, 15, 18, 22)), ok("b", 0.6, "add", (10, 25, 16, 20)),
       ok("c", 0.4, "remove", (12, 17, 14, 18)), ok("d", 0.5, "remove", (18, 19, 20, 24))]  # mean 0.575


@pytest.mark.parametrize("flags,passes", [
    (["--min-mean-reward", "0.575"], True),            # mean exactly at the limit passes
    (["--min-mean-reward", "0.5751"], False),
    (["--min-pass-rate", "0.75"], True),                # rewards >= 0.5: a, b, d -> 3/4 (0.5 counts)
    (["--min-pass-rate", "0.76"], False),
    (["--min-pass-rate", "0.5", "--threshold", "0.6"], True),   # a, b -> 2/4
    (["--min-pass-rate", "0.5", "--threshold", "0.61"], False),
    (["--min-dimension", "success=15"], True),          # mean success (20+10+12+18)/4 = 15
    (["--min-dimension", "success=15.01"], False),
    (["--min-dimension", "artifacts=21"], True),        # (22+20+18+24)/4 = 21
    (["--min-dimension", "naturalness=17.1"], False),   # 17.0
    (["--min-judged", "4"], True),
    (["--min-judged", "5"], False),
])
def test_each_threshold_at_its_boundary(tmp_path, flags, passes):
    result = gate(tmp_path, RUN, *flags)
    assert result.exit_code == (0 if passes else 1), result.output
    assert ("verdict: PASS" in result.output) == passes


def test_errors_fail_the_run_by_default(tmp_path):
    records = RUN + [err("e1")]
    result = gate(tmp_path, records)
    assert result.exit_code == 1
    assert "errors" in result.output and "FAIL" in result.output
    assert gate(tmp_path, records, "--max-errors", "1").exit_code == 0
    assert gate(tmp_path, records + [err("e2", "input")], "--max-errors", "1").exit_code == 1


def test_per_category_thresholds_from_a_gate_file(tmp_path):
    config = tmp_path / "gate.yaml"
    config.write_text("min_mean_reward: 0.5\ncategories:\n  add: {min_mean_reward: 0.7}\n  remove: {min_mean_reward: 0.45}\n")
    result = gate(tmp_path, RUN, "--config", str(config))
    assert result.exit_code == 0, result.output  # add 0.7, remove 0.45: both exactly at their limit
    config.write_text("categories:\n  remove: {min_mean_reward: 0.46, max_errors: 0}\n")
    result = gate(tmp_path, RUN + [err("r9", category="remove")], "--config", str(config), "--max-errors", "5")
    assert result.exit_code == 1
    failed = [line for line in result.output.splitlines() if "FAIL" in line and "category remove" in line]
    assert len(failed) == 2  # the mean and the error count of "remove"


def test_a_category_missing_from_the_run_fails(tmp_path):
    config = tmp_path / "gate.yaml"
    config.write_text("categories:\n  style: {min_mean_reward: 0.1}\n")
    result = gate(tmp_path, RUN, "--config", str(config))
    assert result.exit_code == 1 and "category style" in result.output


def test_unknown_gate_keys_and_bad_values_are_usage_errors(tmp_path):
    config = tmp_path / "gate.yaml"
    config.write_text("min_mean_rewrd: 0.5\n")
    result = gate(tmp_path, RUN, "--config", str(config))
    assert result.exit_code == 2 and "min_mean_rewrd" in result.output
    with pytest.raises(ConfigError, match="unknown dimension"):
        load_gate_config(None, {"min_dimension_mean": {"beauty": 3}})
    assert gate(tmp_path, RUN, "--min-dimension", "success").exit_code == 2


def test_dimension_minimum_within_the_score_range():
    assert load_gate_config(None, {"min_dimension_mean": {"success": 25}}).min_dimension_mean == {"success": 25}
    with pytest.raises(ConfigError, match=r"min_dimension_mean\.success must be a number in 0\.\.25, not 25\.5"):
        load_gate_config(None, {"min_dimension_mean": {"success": 25.5}})


def test_unreadable_scores_file_is_invalid_input(tmp_path):
    result = CliRunner().invoke(main, ["gate", str(tmp_path / "nope.jsonl")])
    assert result.exit_code == 3 and "no such file" in result.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(ok("a", 0.5)) + "\nnot json\n")
    result = CliRunner().invoke(main, ["gate", str(bad)])
    assert result.exit_code == 3 and f"{bad}:2" in result.output and "invalid JSON" in result.output
    bad.write_text(json.dumps(ok("a", 0.5)) + '\n{"id": "b", "status": "ok"}\n')
    result = CliRunner().invoke(main, ["gate", str(bad)])
    assert result.exit_code == 3 and f"{bad}:2" in result.output and "without a reward" in result.output


def _paired(n, shift, noise, seed, drop_ids=()):
    rng = random.Random(seed)
    base, run = [], []
    for i in range(n):
        b = rng.uniform(0.3, 0.8)
        base.append(ok(f"e{i}", round(b, 6)))
        if f"e{i}" not in drop_ids:
            run.append(ok(f"e{i}", round(min(1, max(0, b + shift + rng.gauss(0, noise))), 6)))
    return run, base


def test_baseline_real_drop_is_a_regression(tmp_path):
    run, base = _paired(200, shift=-0.05, noise=0.03, seed=1)
    result = gate(tmp_path, run, "--max-drop", "0.02", baseline=base)
    assert result.exit_code == 1, result.output
    assert "REGRESSION" in result.output and "200 paired edits" in result.output


def test_baseline_noise_is_not_a_regression(tmp_path):
    run, base = _paired(200, shift=0.0, noise=0.05, seed=2)
    result = gate(tmp_path, run, "--max-drop", "0.02", baseline=base)
    assert result.exit_code == 0, result.output
    assert "no regression" in result.output


def test_small_real_drop_within_tolerance_passes(tmp_path):
    run, base = _paired(300, shift=-0.01, noise=0.01, seed=3)
    result = gate(tmp_path, run, "--max-drop", "0.02", baseline=base)
    assert result.exit_code == 0, result.output
    result = gate(tmp_path, run, "--max-drop", "0.005", baseline=base)
    assert result.exit_code == 1


def _shifted(deltas):
    """(run, baseline) whose paired reward changes are exactly ``deltas``."""
    base = [ok(f"e{i}", 0.5) for i in range(len(deltas))]
    return [ok(f"e{i}", round(0.5 + d, 6)) for i, d in enumerate(deltas)], base


def _comparison(tmp_path, deltas, max_drop):
    run, base = _shifted(deltas)
    scores, baseline = write_jsonl(tmp_path / "r.jsonl", run), write_jsonl(tmp_path / "b.jsonl", base)
    return run_gate(scores, GateConfig(max_drop=max_drop).validate(), baseline=baseline).comparison


def test_a_real_drop_within_max_drop_passes(tmp_path):
    deltas = [-0.019, -0.021] * 50  # mean -0.02, interval about [-0.0202, -0.0198]: real, but tolerated
    c = _comparison(tmp_path, deltas, 0.05)
    assert c.mean_delta == pytest.approx(-0.02) and c.ci_high < 0 and not c.regression
    run, base = _shifted(deltas)
    assert gate(tmp_path, run, "--max-drop", "0.05", baseline=base).exit_code == 0
    assert _comparison(tmp_path, deltas, 0.0).regression  # not tolerated at all: fails


def test_a_drop_whose_interval_lies_below_minus_max_drop_fails(tmp_path):
    deltas = [-0.07, -0.09] * 50  # mean -0.08, interval about [-0.082, -0.078]
    c = _comparison(tmp_path, deltas, 0.05)
    assert c.ci_high < -0.05 and c.regression
    run, base = _shifted(deltas)
    result = gate(tmp_path, run, "--max-drop", "0.05", baseline=base)
    assert result.exit_code == 1 and "REGRESSION" in result.output
    assert "fails when the CI's upper bound < -0.05" in result.output


def test_the_interval_not_the_mean_is_tested_against_max_drop(tmp_path):
    """A mean drop beyond max_drop whose interval still reaches above -max_drop
    is not shown to be worse than tolerated: it passes (the former rule, mean <
    -max_drop and upper bound < 0, failed it)."""
    deltas = [-0.16, 0.04] * 20  # mean -0.06, interval about [-0.09, -0.03]
    c = _comparison(tmp_path, deltas, 0.05)
    assert c.mean_delta == pytest.approx(-0.06) and -0.05 < c.ci_high < 0
    assert not c.regression
    assert _comparison(tmp_path, deltas, 0.02).regression  # upper bound -0.03 < -0.02


def test_bootstrap_is_seeded_and_covers_the_mean():
    rng = random.Random(5)
    deltas = [rng.gauss(-0.02, 0.05) for _ in range(100)]
    a = bootstrap_ci(deltas, 0.95, 1000, seed=7)
    assert a == bootstrap_ci(deltas, 0.95, 1000, seed=7)
    assert a != bootstrap_ci(deltas, 0.95, 1000, seed=8)
    assert a[0] < sum(deltas) / len(deltas) < a[1]


def test_wins_ties_losses_and_unpaired_ids(tmp_path):
    base = [ok("a", 0.5), ok("b", 0.5), ok("c", 0.5), ok("d", 0.5), ok("gone", 0.5), err("broken")]
    run = [ok("a", 0.6), ok("b", 0.5), ok("c", 0.4), ok("d", 0.45), ok("new", 0.9), ok("broken", 0.7)]
    cfg = GateConfig(max_errors=None).validate()
    scores, baseline = write_jsonl(tmp_path / "r.jsonl", run), write_jsonl(tmp_path / "b.jsonl", base)
    c = run_gate(scores, cfg, baseline=baseline).comparison
    assert (c.paired, c.wins, c.ties, c.losses) == (4, 1, 1, 2)
    assert c.mean_delta == pytest.approx((0.1 + 0 - 0.1 - 0.05) / 4)
    assert c.only_run == ["new"] and c.only_baseline == ["gone"] and c.not_ok == ["broken"]
    result = gate(tmp_path, run, baseline=base)
    assert "only in this run: 1 (new)" in result.output
    assert "only in the baseline: 1 (gone)" in result.output
    assert "not judged ok in one run: 1 (broken)" in result.output


def test_mismatched_config_hashes_are_invalid_unless_allowed(tmp_path):
    base = [ok("a", 0.5, config_hash="1111111111111111")]
    result = gate(tmp_path, [ok("a", 0.5)], baseline=base)
    assert result.exit_code == 3 and "--allow-config-mismatch" in result.output
    result = gate(tmp_path, [ok("a", 0.5)], "--allow-config-mismatch", baseline=base)
    assert result.exit_code == 0
    mixed = [ok("a", 0.5), ok("b", 0.5, config_hash="2222222222222222")]
    assert gate(tmp_path, mixed).exit_code == 3


def _parse_github_output(text: str) -> dict:
    values, lines, i = {}, text.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        if "<<" in line and "=" not in line.split("<<")[0]:
            name, marker = line.split("<<", 1)
            j = lines.index(marker, i + 1)
            values[name] = "\n".join(lines[i + 1:j])
            i = j + 1
        else:
            name, value = line.split("=", 1)
            values[name] = value
            i += 1
    return values


def test_github_files_are_written_exactly(tmp_path):
    output, summary = tmp_path / "gh_output", tmp_path / "gh_summary.md"
    summary.write_text("earlier step\n")
    base = [ok(r["id"], r["reward"] + 0.1) for r in RUN]
    env = {"GITHUB_OUTPUT": str(output), "GITHUB_STEP_SUMMARY": str(summary), "GITHUB_ACTIONS": "true"}
    result = gate(tmp_path, RUN + [err("e1")], "--min-mean-reward", "0.7", "--allow-config-mismatch",
                  baseline=base, env=env)
    assert result.exit_code == 1
    values = _parse_github_output(output.read_text())
    assert values == {"verdict": "fail", "mean-reward": "0.575000", "pass-rate": "0.750000", "errors": "1",
                      "delta": f"{-0.1:.6f}"}
    text = summary.read_text()
    assert text.startswith("earlier step\n")  # appended, not overwritten
    assert "| mean reward | all | 0.575 | >= 0.7 | ❌ FAIL |" in text
    assert "| errors | all | 1 | <= 0 | ❌ FAIL |" in text
    annotations = [line for line in result.output.splitlines() if line.startswith("::")]
    errors = [a for a in annotations if a.startswith("::error")]
    warnings = [a for a in annotations if a.startswith("::warning")]
    assert len(errors) == 3  # mean reward, errors, and the regression (every pair dropped by 0.1)
    assert errors[0].startswith("::error title=spatialreward gate%3A mean reward::mean reward (all) is 0.575")
    assert errors[2].startswith("::error title=spatialreward gate%3A regression::mean reward change -0.1000")
    assert len(warnings) == 4 and "low reward%3A c" in warnings[0]  # worst first, bounded


def test_outside_github_nothing_is_written_but_summary_md(tmp_path):
    md = tmp_path / "gate.md"
    result = gate(tmp_path, RUN, "--min-mean-reward", "0.5", "--summary-md", str(md))
    assert result.exit_code == 0
    assert "::" not in result.output
    assert "✅ spatialreward gate: PASS" in md.read_text()


@pytest.mark.slow  # the tiny model through the installed command (-m "not slow" leaves it out)
def test_gate_on_a_real_judged_run(tmp_path, tiny_model, photos):
    manifest = write_jsonl(tmp_path / "m.jsonl", [
        {"id": "one", "source": str(photos["coffee"]), "edited": str(photos["coffee_blur"]), "instruction": "Blur it"},
        {"id": "two", "source": str(photos["astronaut"]), "edited": str(photos["astronaut_mirror"]), "instruction": "Mirror"},
    ])
    scores = tmp_path / "s.jsonl"
    judged = run_cli("judge", manifest, "-o", scores, "--model", tiny_model, "--structured", "always",
                     "--max-new-tokens", "160", "--device", "cpu", "-q")
    assert judged.returncode == 0, judged.stderr
    mean = sum(r["reward"] for r in read_jsonl(scores)) / 2
    assert run_cli("gate", scores, "--min-mean-reward", f"{mean - 1e-6:.6f}").returncode == 0
    failed = run_cli("gate", scores, "--min-mean-reward", f"{min(1.0, mean + 1e-3):.6f}")
    assert failed.returncode == 1 and "FAIL" in failed.stdout


def test_summary_md_in_a_new_folder(tmp_path):
    md = tmp_path / "reports" / "ci" / "gate.md"
    result = gate(tmp_path, RUN, "--summary-md", str(md))
    assert result.exit_code == 0, result.output
    assert md.read_text().startswith("## ✅")
