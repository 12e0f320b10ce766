"""A real Prometheus (the distribution's binary) scrapes the running in-process stack, loads
the rules, and every dashboard panel's expression and every rule returns data after a few
spoken turns: no panel or rule queries a metric the stack does not export.

Expressions over other exporters' metrics (``dashboards.EXTERNAL_METRICS``: NVIDIA DCGM,
redis_exporter) cannot have data here; they are listed, and checked for syntax by promtool.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from deploy.grafana import dashboards
from deploy.prometheus import rules
from deploy.prometheus.local import LocalPrometheus, free_port
from services.cli.realtime_client import RealtimeClient
from services.common.audio import decode_audio_file
from services.common.metrics import MetricsServer, start_metrics_server
from services.models.tiny import ASSETS
from tests.helpers.redis import RedisServer
from tests.helpers.stack import Stack, running_stack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]
QUESTION, QUESTION_RATE = decode_audio_file(ASSETS / "demo_question.wav")
TURNS = 2
DATA_DEADLINE_S = 120.0
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|\{[^}]*\}|\[[^\]]*\]|[a-zA-Z_:][\w:]*|\S')
_KEYWORDS = {"and", "or", "unless", "bool", "offset"}


def selectors(expr: str) -> list[str]:
    """The vector selectors of an expression (``metric{matchers}`` or ``{__name__=~...}``)."""
    tokens = _TOKEN.findall(_GROUPING.sub(" ", expr))
    found = []
    for i, token in enumerate(tokens):
        following = tokens[i + 1] if i + 1 < len(tokens) else ""
        previous = tokens[i - 1] if i else ""
        if re.fullmatch(r"[a-zA-Z_:][\w:]*", token):
            if following == "(" or token in _KEYWORDS:
                continue  # a function, an aggregation or an operator
            found.append(token + (following if following.startswith("{") else ""))
        elif token.startswith("{") and (
            previous in _KEYWORDS or not re.fullmatch(r"[a-zA-Z_:][\w:]*", previous)
        ):
            found.append(token)
    return found


def test_selectors_of_an_alert_expression() -> None:
    expr = (
        'sum by (service) (x:y:rate5m{code="a"}) > 0.5 * sum(rate(z_total[5m])) '
        'and on (job) {__name__=~"a_(b|c)"} == 0'
    )
    assert selectors(expr) == ['x:y:rate5m{code="a"}', "z_total", '{__name__=~"a_(b|c)"}']


def panel_expressions() -> Iterator[tuple[str, str, str]]:
    """(dashboard uid, panel title, expression) of every committed dashboard."""
    for path in sorted(dashboards.OUT_DIR.glob("*.json")):
        board = json.loads(path.read_text())
        for title, expr, _ in dashboards.panel_queries(board):
            yield board["uid"], title, expr


def rule_list() -> list[dict[str, object]]:
    groups = yaml.safe_load(rules.RULES_FILE.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def expressions_to_check() -> tuple[dict[str, str], list[str]]:
    """What must return data (description → expression) and the external expressions."""
    local: dict[str, str] = {}
    external: list[str] = []
    for uid, title, expr in panel_expressions():
        if dashboards.is_external(expr):
            external.append(expr)
        else:
            local[f"{uid} / {title}: {expr}"] = expr
    for rule in rule_list():
        expr = str(rule["expr"])
        if "record" in rule:
            labels = ",".join(f'{k}="{v}"' for k, v in dict(rule.get("labels") or {}).items())
            local[f"rule {rule['record']}: {expr}"] = expr
            local[f"recorded {rule['record']}{{{labels}}}"] = f"{rule['record']}{{{labels}}}"
        elif dashboards.is_external(expr):
            external.append(expr)
        else:  # an alert's expression has data only while it fires: each of its selectors must
            for selector in selectors(expr):
                local[f"alert {rule['alert']} selector: {selector}"] = selector
    return local, external


def test_external_expressions_are_listed_and_valid(tmp_path: Path) -> None:
    local, external = expressions_to_check()
    assert len(local) > 100 and len(external) >= 12
    names = set(dashboards.EXTERNAL_METRICS)
    for expr in local.values():  # nothing external hides among the local expressions
        assert not {n for n in re.findall(r"[A-Za-z_][\w]*", expr) if n in names}, expr
    rules_file = tmp_path / "external.yml"
    group = [{"record": f"external:check:{i}", "expr": e} for i, e in enumerate(external)]
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "external", "rules": group}]}))
    result = subprocess.run(
        [PROMTOOL, "check", "rules", str(rules_file)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
async def stack(tiny_pack: Path, redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[Stack]:
    async with running_stack(
        tiny_pack, redis_server.url, tmp_path, controller={"turn": {"seed": 7}}
    ) as running:
        yield running


@pytest.fixture
def metrics_endpoints(stack: Stack) -> Iterator[dict[str, str]]:
    """Each in-process service's registry served over HTTP, as METRICS_PORT does."""
    servers: list[MetricsServer] = []
    targets = {"controller": stack.url.removeprefix("http://")}
    try:
        for name, service in stack.services.items():
            server = start_metrics_server(free_port(), "127.0.0.1", service.registry)
            assert server is not None
            servers.append(server)
            targets[name] = f"127.0.0.1:{server.port}"
        yield targets
    finally:
        for server in servers:
            server.close()


async def missing_data(prometheus: LocalPrometheus, checks: dict[str, str]) -> list[str]:
    missing = []
    for what, expr in checks.items():
        if not await asyncio.to_thread(prometheus.query, expr):
            missing.append(what)
    return missing


async def first_audio_measured(prometheus: LocalPrometheus) -> bool:
    """The recorded p50 of the turns' first audio is a real number (not NaN: a rate of 0)."""
    samples = await asyncio.to_thread(
        prometheus.query, "pipeline:stepaudio_controller_time_to_first_audio_seconds:p50_5m"
    )
    values = {s["metric"]["pipeline"]: float(s["value"][1]) for s in samples}
    return list(values) == ["cascade"] and values["cascade"] > 0


async def test_every_panel_and_rule_returns_data_from_a_real_prometheus(
    stack: Stack, metrics_endpoints: dict[str, str], tmp_path: Path
) -> None:
    checks, _ = expressions_to_check()
    prometheus = LocalPrometheus(tmp_path / "prometheus", metrics_endpoints, interval_s=1.0)
    await asyncio.to_thread(prometheus.start)
    try:
        for _ in range(TURNS):
            async with RealtimeClient(stack.url) as client:
                await client.configure(speculative=False)
                result = await client.speak_and_wait(QUESTION, QUESTION_RATE)
            assert result.done["status"] == "completed"
        async with httpx.AsyncClient(base_url=stack.url) as http:
            assert (await http.get("/readyz")).status_code == 200  # health Check RPCs
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DATA_DEADLINE_S
        missing, measured = list(checks), False
        while (missing or not measured) and loop.time() < deadline:
            missing = await missing_data(prometheus, {k: checks[k] for k in missing})
            measured = measured or await first_audio_measured(prometheus)
            if missing or not measured:
                await asyncio.sleep(1.0)
        assert not missing, "no data:\n" + "\n".join(missing)
        assert measured, "the first-audio p50 never became a positive number"
        up = await asyncio.to_thread(prometheus.targets_up)
        assert up == {f"stepaudio-{name}": True for name in metrics_endpoints}
        evaluated = await asyncio.to_thread(prometheus.rules)
        assert len(evaluated) == len(rule_list())
        assert all(rule["health"] == "ok" for rule in evaluated), evaluated
    finally:
        await asyncio.to_thread(prometheus.stop)
