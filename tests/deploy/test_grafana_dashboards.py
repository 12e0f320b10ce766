"""deploy/grafana: the committed dashboards are the generator's output, well formed, and every
panel expression is valid PromQL to the real promtool (data is checked against a real
Prometheus in tests/integration/test_observability.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import yaml

from deploy.grafana import dashboards

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def committed(folder: Path = dashboards.OUT_DIR) -> dict[str, str]:
    return {path.name: path.read_text() for path in sorted(folder.glob("*.json"))}


def test_regenerating_gives_identical_files() -> None:
    fresh = dashboards.rendered()
    assert committed() == fresh, "regenerate: python -m deploy.grafana.dashboards"
    assert committed(dashboards.CHART_DIR) == fresh, "the chart's copies are stale"


def test_dashboards_have_unique_uids_ids_and_a_datasource_variable() -> None:
    uids = set()
    for name, text in committed().items():
        board = json.loads(text)
        uids.add(board["uid"])
        assert board["uid"] == name.removesuffix(".json")
        assert any(v["type"] == "datasource" for v in board["templating"]["list"])
        ids = [panel["id"] for panel in board["panels"]]
        assert len(ids) == len(set(ids)), name
        for panel in board["panels"]:
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"], panel["title"]
    assert uids == {
        "stepaudio-overview", "stepaudio-vad", "stepaudio-tokenizer", "stepaudio-llm",
        "stepaudio-tts", "stepaudio-redis",
    }  # fmt: skip


def test_every_expression_is_valid_promql(tmp_path: Path) -> None:
    exprs = [
        expr
        for text in committed().values()
        for _, expr, _ in dashboards.panel_queries(json.loads(text))
    ]
    assert len(exprs) > 80
    assert not [e for e in exprs if "$" in e], "unsubstituted variable"
    rules = [{"record": f"panel:check:{i}", "expr": expr} for i, expr in enumerate(exprs)]
    path = tmp_path / "panels.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    result = subprocess.run(
        [PROMTOOL, "check", "rules", str(path)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
