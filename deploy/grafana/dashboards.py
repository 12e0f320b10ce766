"""Grafana dashboards for the stack, generated with grafana-foundation-sdk (Grafana's own
maintained builder library) into ``deploy/grafana/dashboards/*.json``.

``python -m deploy.grafana.dashboards`` rewrites the JSON; a test checks that the committed
files equal a fresh generation. Panels read the recorded series of deploy/prometheus where one
exists (the rules and the dashboards share expressions), raw metrics otherwise. Every
expression of a panel is checked against a real Prometheus scraping the running stack
(tests/integration/test_observability.py), except those over ``EXTERNAL_METRICS`` (DCGM and
redis_exporter), which only a real GPU node or Redis exporter serves.

Dashboards: an overview (sessions, turns, first audio by pipeline, stages, errors, shedding,
speculation, context compression), one per gRPC service (queue depth, batch sizes, RPC rate
and latency by method and code, GPU utilisation and memory), and Redis.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import common, dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as common_model
from grafana_foundation_sdk.models import dashboard as model

OUT_DIR = Path(__file__).with_name("dashboards")
# the chart's copies (helm reads files only inside the chart), shipped as ConfigMaps
CHART_DIR = Path(__file__).parents[2] / "charts/stepaudio/files/dashboards"
DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
# metrics of other exporters (NVIDIA dcgm-exporter, oliver006/redis_exporter): a local stack
# does not serve them, so the integration test only checks their expressions' syntax
EXTERNAL_METRICS = (
    "DCGM_FI_DEV_GPU_UTIL",
    "DCGM_FI_DEV_FB_USED",
    "DCGM_FI_DEV_FB_FREE",
    "redis_up",
    "redis_connected_clients",
    "redis_memory_used_bytes",
    "redis_memory_max_bytes",
    "redis_commands_total",
    "redis_commands_duration_seconds_total",
    "redis_db_keys",
    "redis_expired_keys_total",
    "redis_evicted_keys_total",
)
C = "stepaudio_controller"
TAGS = ["stepaudio"]


@dataclass
class Query:
    expr: str
    legend: str = ""


@dataclass
class Panel:
    title: str
    queries: list[Query]
    unit: str = "short"
    description: str = ""
    kind: str = "timeseries"  # or "stat"


@dataclass
class Row:
    title: str
    panels: list[Panel] = field(default_factory=list)


@dataclass
class Board:
    uid: str
    title: str
    description: str
    rows: list[Row]
    variables: dict[str, str] = field(default_factory=dict)  # custom variable → default


def p(q: float, metric: str, by: str = "") -> str:
    group = f"{by}, le" if by else "le"
    return f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket[5m])))"


def quantiles(metric: str, levels: tuple[float, ...] = (0.5, 0.95)) -> list[Query]:
    """One query per quantile of a histogram, labelled p50, p95, ..."""
    return [Query(p(q, metric), f"p{int(q * 100)}") for q in levels]


def mean(metric: str, selector: str = "") -> str:
    return f"sum(rate({metric}_sum{selector}[5m])) / sum(rate({metric}_count{selector}[5m]))"


# ---------------------------------------------------------------------------- overview


def overview() -> Board:
    first_audio = f"pipeline:{C}_time_to_first_audio_seconds"
    traffic = Row(
        "Traffic",
        [
            Panel("Active sessions", [Query(f"sum({C}_active_sessions)")], kind="stat"),
            Panel(
                "Turns/s",
                [Query(f"sum(status:{C}_responses:rate5m)")],
                unit="reqps",
                kind="stat",
                description="Finished assistant responses per second (one per answered turn).",
            ),
            Panel(
                "Failed responses",
                [Query(f":{C}_failed_responses:ratio_rate5m")],
                unit="percentunit",
                kind="stat",
            ),
            Panel(
                "Services SERVING",
                [Query('count({__name__=~"stepaudio_(vad|tokenizer|llm|tts)_serving"} == 1)')],
                kind="stat",
            ),
            Panel(
                "Responses by status",
                [Query(f"status:{C}_responses:rate5m", "{{status}}")],
                unit="reqps",
            ),
            Panel(
                "Active sessions over time",
                [Query(f"sum({C}_active_sessions)", "sessions")],
            ),
        ],
    )
    latency = Row(
        "Latency: end of speech to first audio",
        [
            Panel(
                "First audio p50 / p95 / p99 by pipeline",
                [Query(f"{first_audio}:p{q}_5m", f"p{q} {{{{pipeline}}}}") for q in (50, 95, 99)],
                unit="s",
                description="End of user speech to the first reply audio byte sent.",
            ),
            Panel(
                "Stage breakdown (p50 / p95)",
                [
                    Query(f"stage:{C}_stage_seconds:p95_5m", "p95 {{stage}}"),
                    Query(f"stage:{C}_stage_seconds:p50_5m", "p50 {{stage}}"),
                ],
                unit="s",
                description="Each stage measured from end of speech: tokenizer tail, LLM "
                "first token, TTS first chunk (first audio adds playback pacing).",
            ),
            Panel(
                "First-audio SLO: slow turns",
                [
                    Query(f":{C}_first_audio_slow:ratio_rate5m", "5m"),
                    Query(f":{C}_first_audio_slow:ratio_rate1h", "1h"),
                ],
                unit="percentunit",
                description="Share of turns over the first-audio bound (alert: burn rate).",
            ),
        ],
    )
    load = Row(
        "Errors, shedding and speculation",
        [
            Panel(
                "Errors by code",
                [
                    Query(f"code:{C}_errors:rate5m", "controller {{code}}"),
                    Query(
                        "sum by (service, code) (service_code:stepaudio_errors:rate5m)",
                        "{{service}} {{code}}",
                    ),
                ],
                unit="reqps",
            ),
            Panel(
                "Shedding and admission refusals",
                [
                    Query(
                        f'outcome:{C}_speculations:rate5m{{outcome="shed"}}', "speculations shed"
                    ),
                    Query(
                        "sum by (service) "
                        '(service_code:stepaudio_errors:rate5m{code="overloaded"})',
                        "{{service}} refused (overloaded)",
                    ),
                    Query(f'code:{C}_errors:rate5m{{code="overloaded"}}', "sessions refused"),
                ],
                unit="reqps",
            ),
            Panel(
                "Speculation outcomes and commit rate",
                [
                    Query(f"outcome:{C}_speculations:rate5m", "{{outcome}}"),
                    Query(
                        f'sum(outcome:{C}_speculations:rate5m{{outcome="committed"}}) '
                        f'/ sum(outcome:{C}_speculations:rate5m{{outcome="started"}})',
                        "commit rate",
                    ),
                ],
                unit="short",
            ),
            Panel(
                "Latency saved by speculation",
                [
                    Query(mean(f"{C}_time_to_first_audio_seconds"), "mean first audio, all"),
                    Query(
                        mean(f"{C}_speculative_time_to_first_audio_seconds"),
                        "mean first audio, committed speculations",
                    ),
                ],
                unit="s",
                description="The gap between the two lines is what speculation saves.",
            ),
            Panel(
                "Context compression",
                [
                    Query(f":{C}_context_compression:ratio_rate5m", "transcript / audio tokens"),
                    Query(
                        f"sum(rate({C}_context_audio_tokens_replaced_total[5m]))",
                        "audio tokens replaced/s",
                    ),
                ],
                description="Old user audio turns replaced by their transcripts in prompts.",
            ),
            Panel(
                "Transcriptions",
                [Query(f"outcome:{C}_transcriptions:rate5m", "{{outcome}}")],
                unit="reqps",
            ),
        ],
    )
    return Board(
        "stepaudio-overview",
        "Step-Audio: overview",
        "Sessions, turns, end of speech to first audio, stages, errors, shedding, speculation.",
        [traffic, latency, load],
    )


# ---------------------------------------------------------------------------- services


def rpc_row(service: str) -> Row:
    rpc = f'{{service="{service}"}}'
    return Row(
        "RPCs",
        [
            Panel(
                "SERVING",
                [Query(f"min(stepaudio_{service}_serving)")],
                kind="stat",
                description="1 = every instance reports SERVING.",
            ),
            Panel(
                "Queue depth: RPCs in flight",
                [Query(f"sum by (method) (stepaudio_{service}_rpcs_in_flight)")],
                kind="stat",
            ),
            Panel(
                "RPC rate by method and code",
                [Query(f"service_method_code:stepaudio_rpc:rate5m{rpc}", "{{method}} {{code}}")],
                unit="reqps",
            ),
            Panel(
                "RPC latency by method (p50 / p95)",
                [
                    Query(f"service_method:stepaudio_rpc_seconds:p95_5m{rpc}", "p95 {{method}}"),
                    Query(f"service_method:stepaudio_rpc_seconds:p50_5m{rpc}", "p50 {{method}}"),
                ],
                unit="s",
                description="Headers in to status out: a streaming call lasts as long as its "
                "stream (DetectSpeech: the session; capped at the 30 s bucket).",
            ),
            Panel(
                "RPC latency by code (p95)",
                [
                    Query(
                        p(0.95, f"stepaudio_{service}_rpc_seconds", "method, code"),
                        "{{method}} {{code}}",
                    )
                ],
                unit="s",
            ),
            Panel(
                "Errors by code",
                [Query(f"service_code:stepaudio_errors:rate5m{rpc}", "{{code}}")],
                unit="reqps",
            ),
            Panel(
                "Queue depth over time",
                [Query(f"sum by (method) (stepaudio_{service}_rpcs_in_flight)", "{{method}}")],
            ),
        ],
    )


def engine_panels(service: str) -> list[Panel]:
    m = f"stepaudio_{service}"
    if service == "vad":
        return [
            Panel(
                "Batch size (frames per model step)",
                [Query(mean(f"{m}_batch_size"), "mean"), Query(p(0.95, f"{m}_batch_size"), "p95")],
                description="Streams served by one batched silero call (the mean: quantiles "
                "interpolate inside power-of-two buckets).",
            ),
            Panel(
                "Model step latency",
                quantiles(f"{m}_decision_seconds"),
                unit="s",
            ),
        ]
    if service == "tokenizer":
        return [
            Panel(
                "Tail after end of speech",
                quantiles(f"{m}_tail_seconds"),
                unit="s",
            ),
            Panel(
                "Model call compute and realtime factor",
                [
                    Query(p(0.95, f"{m}_feed_seconds"), "feed p95 (s)"),
                    Query(p(0.5, f"{m}_realtime_factor"), "realtime factor p50"),
                ],
            ),
            Panel(
                "Audio tokenised (s of audio per s)",
                [Query(f"sum(rate({m}_audio_seconds_total[5m]))")],
            ),
        ]
    if service == "llm":
        return [
            Panel(
                "Time to first token",
                quantiles(f"{m}_time_to_first_token_seconds"),
                unit="s",
            ),
            Panel(
                "Generated tokens/s and finished requests by reason",
                [
                    Query(f"sum(rate({m}_generated_tokens_total[5m]))", "tokens/s"),
                    Query(f"sum by (reason) (rate({m}_requests_total[5m]))", "{{reason}}"),
                ],
            ),
            Panel(
                "Request duration",
                quantiles(f"{m}_request_seconds"),
                unit="s",
            ),
        ]
    return [
        Panel(
            "First chunk",
            quantiles(f"{m}_first_chunk_seconds"),
            unit="s",
        ),
        Panel(
            "Realtime factor and vocoder call",
            [
                Query(p(0.5, f"{m}_realtime_factor"), "realtime factor p50"),
                Query(p(0.95, f"{m}_vocoder_seconds"), "vocoder p95 (s)"),
            ],
        ),
        Panel(
            "Audio produced and requests by reason",
            [
                Query(f"sum(rate({m}_audio_seconds_total[5m]))", "audio s/s"),
                Query(f"sum by (reason) (rate({m}_requests_total[5m]))", "{{reason}}"),
            ],
        ),
    ]


def gpu_row() -> Row:
    pod = 'pod=~"$gpu_pod"'
    return Row(
        "GPU (NVIDIA DCGM exporter)",
        [
            Panel(
                "GPU utilisation",
                [Query(f"DCGM_FI_DEV_GPU_UTIL{{{pod}}}", "{{Hostname}} gpu {{gpu}}")],
                unit="percent",
            ),
            Panel(
                "GPU memory used",
                [
                    Query(
                        f"DCGM_FI_DEV_FB_USED{{{pod}}} "
                        f"/ (DCGM_FI_DEV_FB_USED{{{pod}}} + DCGM_FI_DEV_FB_FREE{{{pod}}})",
                        "{{Hostname}} gpu {{gpu}}",
                    )
                ],
                unit="percentunit",
            ),
        ],
    )


def process_row(service: str) -> Row:
    job = f'job=~".*{service}.*"'
    return Row(
        "Process",
        [
            Panel("CPU", [Query(f"rate(process_cpu_seconds_total{{{job}}}[5m])", "{{instance}}")]),
            Panel(
                "Resident memory",
                [Query(f"process_resident_memory_bytes{{{job}}}", "{{instance}}")],
                unit="bytes",
            ),
        ],
    )


def service_board(service: str) -> Board:
    return Board(
        f"stepaudio-{service}",
        f"Step-Audio: {service} service",
        f"The {service} gRPC service: queue depth, batches, RPC rate and latency by method and "
        "code, errors, GPU.",
        [rpc_row(service), Row("Engine", engine_panels(service)), gpu_row(), process_row(service)],
        variables={"gpu_pod": f".*{service}.*"},
    )


# ---------------------------------------------------------------------------- redis


def redis_board() -> Board:
    rows = [
        Row(
            "Redis (redis_exporter)",
            [
                Panel("Up", [Query("redis_up")], kind="stat"),
                Panel("Connected clients", [Query("redis_connected_clients")], kind="stat"),
                Panel(
                    "Memory used / max",
                    [
                        Query("redis_memory_used_bytes", "used"),
                        Query("redis_memory_max_bytes", "max"),
                    ],
                    unit="bytes",
                ),
                Panel(
                    "Commands/s by command",
                    [Query("sum by (cmd) (rate(redis_commands_total[5m]))", "{{cmd}}")],
                    unit="ops",
                ),
                Panel(
                    "Command latency (mean) by command",
                    [
                        Query(
                            "sum by (cmd) (rate(redis_commands_duration_seconds_total[5m])) "
                            "/ sum by (cmd) (rate(redis_commands_total[5m]))",
                            "{{cmd}}",
                        )
                    ],
                    unit="s",
                ),
                Panel(
                    "Keys (sessions) and expiries",
                    [
                        Query("sum(redis_db_keys)", "keys"),
                        Query("sum(rate(redis_expired_keys_total[5m]))", "expired/s"),
                        Query("sum(rate(redis_evicted_keys_total[5m]))", "evicted/s"),
                    ],
                ),
            ],
        ),
        Row(
            "Controller's use of the session store",
            [
                Panel(
                    "Store unavailable (controller errors)",
                    [Query(f'code:{C}_errors:rate5m{{code="unavailable"}}', "unavailable")],
                    unit="reqps",
                    description="Turns the controller could not save (Redis down or slow).",
                )
            ],
        ),
    ]
    return Board(
        "stepaudio-redis",
        "Step-Audio: Redis",
        "The session store: availability, memory, command rate and latency, keys.",
        rows,
    )


# ---------------------------------------------------------------------------- building


def build_panel(spec: Panel, x: int, y: int, panel_id: int) -> object:
    builder = stat.Panel() if spec.kind == "stat" else timeseries.Panel()
    width, height = (6, 4) if spec.kind == "stat" else (12, 8)
    builder = builder.id(panel_id).title(spec.title).datasource(DATASOURCE).unit(spec.unit)
    builder = builder.grid_pos(model.GridPos(h=height, w=width, x=x, y=y))
    if spec.description:
        builder = builder.description(spec.description)
    if spec.kind != "stat":
        legend = (
            common.VizLegendOptions()
            .show_legend(True)
            .display_mode(common_model.LegendDisplayMode.LIST)
        )
        builder = builder.legend(legend.placement(common_model.LegendPlacement.BOTTOM))
    for index, query in enumerate(spec.queries):
        target = prometheus.Dataquery().ref_id(chr(ord("A") + index)).expr(query.expr)
        target = target.datasource(DATASOURCE)
        if query.legend:
            target = target.legend_format(query.legend)
        builder = builder.with_target(target)
    return builder


def build(board: Board) -> object:
    builder = (
        dashboard.Dashboard(board.title)
        .uid(board.uid)
        .description(board.description)
        .tags(TAGS)
        .refresh("30s")
        .time("now-1h", "now")
        .timezone("browser")
        .with_variable(dashboard.DatasourceVariable("datasource").label("Data source").type(
            "prometheus"
        ))
    )  # fmt: skip
    for name, default in board.variables.items():
        current = model.VariableOption(text=default, value=default)
        variable = dashboard.CustomVariable(name).label(name).values(default).current(current)
        builder = builder.with_variable(variable)
    y, panel_id = 0, 1
    for row in board.rows:
        builder = builder.with_row(dashboard.Row(row.title).id(panel_id).grid_pos(
            model.GridPos(h=1, w=24, x=0, y=y)
        ))  # fmt: skip
        panel_id, y, x, row_height = panel_id + 1, y + 1, 0, 0
        for spec in row.panels:
            panel = build_panel(spec, x, y, panel_id)
            width, height = (6, 4) if spec.kind == "stat" else (12, 8)
            if x + width > 24:
                x, y, row_height = 0, y + row_height, 0
                panel = build_panel(spec, x, y, panel_id)
            builder = builder.with_panel(panel)
            panel_id, x, row_height = panel_id + 1, x + width, max(row_height, height)
        y += row_height
    return builder.build()


def boards() -> list[Board]:
    return [
        overview(),
        *(service_board(s) for s in ("vad", "tokenizer", "llm", "tts")),
        redis_board(),
    ]


def render(board: Board) -> str:
    return JSONEncoder(sort_keys=True, indent=2).encode(build(board)) + "\n"


def rendered() -> dict[str, str]:
    """File name → JSON text of every dashboard."""
    return {f"{board.uid}.json": render(board) for board in boards()}


def panel_queries(board: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(panel title, expression, legend) of every target of a dashboard's JSON, with its
    custom variables replaced by their defaults (what a fresh Grafana would query)."""
    defaults = {v["name"]: v["query"] for v in board["templating"]["list"] if v["type"] == "custom"}
    queries = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            expr = re.sub(
                r"\$(\w+)", lambda m: defaults.get(m.group(1), m.group(0)), target["expr"]
            )
            queries.append((panel["title"], expr, target.get("legendFormat", "")))
    return queries


def is_external(expr: str) -> bool:
    """Over DCGM or redis_exporter metrics: served by exporters, not by this stack."""
    return any(re.search(rf"\b{name}\b", expr) for name in EXTERNAL_METRICS)


def main() -> None:
    for folder in (OUT_DIR, CHART_DIR):
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in rendered().items():
            (folder / name).write_text(text)
            sys.stdout.write(f"wrote {folder / name}\n")


if __name__ == "__main__":
    main()
