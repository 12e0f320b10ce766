"""deploy/prometheus: the committed rules file is the generator's output, and the real promtool
(Debian's prometheus package) accepts it and passes its unit tests."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from deploy.prometheus import rules
from tests.deploy._support import ROOT

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
TESTS = sorted((ROOT / "deploy" / "prometheus" / "tests").glob("*.yaml"))


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PROMTOOL, *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_rules_file_and_the_charts_copy_are_generated() -> None:
    for path in (rules.RULES_FILE, rules.CHART_RULES_FILE):
        assert path.read_text() == rules.render(), "regenerate: python -m deploy.prometheus.rules"


def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", str(rules.RULES_FILE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize("test_file", TESTS, ids=lambda p: p.name)
def test_promtool_test_rules(test_file: object) -> None:
    result = promtool("test", "rules", str(test_file))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_tested_and_has_a_runbook() -> None:
    groups = yaml.safe_load(rules.RULES_FILE.read_text())["groups"]
    alerts = [r for g in groups for r in g["rules"] if "alert" in r]
    assert len(alerts) >= 10
    for rule in alerts:
        assert {"summary", "description", "runbook"} <= rule["annotations"].keys(), rule["alert"]
    tested = {
        case["alertname"]
        for path in TESTS
        for test in yaml.safe_load(path.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert {r["alert"] for r in alerts} <= tested
