"""Prometheus recording and alerting rules for the stack, written to ``stepaudio-rules.yml``.

Generated (``python -m deploy.prometheus.rules``) rather than hand-written because the four
gRPC services repeat the same rules under their own metric names; the dashboards
(deploy/grafana) query the recorded series, so both read the same expressions. A test checks
that the committed file equals a fresh generation, and runs ``promtool check/test rules``.

Naming follows Prometheus' ``level:metric:operations`` convention; every alert has a
``summary``, a ``description`` and a ``runbook`` (what to do), documented in docs/deploy.md.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

RULES_FILE = Path(__file__).with_name("stepaudio-rules.yml")
# the chart's copy (helm reads files only inside the chart), shipped as a PrometheusRule
CHART_RULES_FILE = Path(__file__).parents[2] / "charts/stepaudio/files/stepaudio-rules.yml"
GRPC_SERVICES = ("vad", "tokenizer", "llm", "tts")
CONTROLLER = "stepaudio_controller"
# first-audio SLO: this share of turns hears the reply within FIRST_AUDIO_SLO_S of end of speech
FIRST_AUDIO_SLO_S = "1.0"  # a histogram bucket bound, as prometheus_client writes `le`
FIRST_AUDIO_OBJECTIVE = 0.95
SLO_WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")
# (severity, long window, short window, burn rate): the Google SRE workbook's multiwindow,
# multi-burn-rate alerts (2% of a 30-day budget in 1 h, 5% in 6 h, 10% in 3 d)
BURN_ALERTS = (
    ("page", "1h", "5m", 14.4),
    ("page", "6h", "30m", 6.0),
    ("ticket", "3d", "6h", 1.0),
)
TARGET_JOBS = ".*stepaudio.*"  # compose job names and the chart's service names contain it
GPU_MEMORY_FULL = 0.97  # vLLM reserves ~90% (gpu_memory_utilization) by design


def record(name: str, expr: str, **labels: str) -> dict[str, Any]:
    rule: dict[str, Any] = {"record": name, "expr": expr}
    if labels:
        rule["labels"] = labels
    return rule


def quantile(q: float, metric: str, by: str = "", window: str = "5m") -> str:
    group = f"{by}, le" if by else "le"
    return f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket[{window}])))"


def latency_rules() -> list[dict[str, Any]]:
    """End of speech → first audio by pipeline, and each stage of the turn."""
    first_audio = f"{CONTROLLER}_time_to_first_audio_seconds"
    rules = [
        record(f"pipeline:{first_audio}:p{q}_5m", quantile(q / 100, first_audio, "pipeline"))
        for q in (50, 95, 99)
    ]
    stages = ("tokenizer_tail", "llm_first_token", "tts_first_chunk")
    for q in (50, 95):
        for stage in stages:
            metric = f"{CONTROLLER}_{stage}_seconds"
            rules.append(
                record(
                    f"stage:{CONTROLLER}_stage_seconds:p{q}_5m",
                    quantile(q / 100, metric),
                    stage=stage,
                )  # fmt: skip
            )
    speculative = f"{CONTROLLER}_speculative_time_to_first_audio_seconds"
    rules.append(record(f":{speculative}:p50_5m", quantile(0.5, speculative)))
    return rules


def controller_rate_rules() -> list[dict[str, Any]]:
    c = CONTROLLER
    return [
        record(f"status:{c}_responses:rate5m", f"sum by (status) (rate({c}_responses_total[5m]))"),
        record(f"code:{c}_errors:rate5m", f"sum by (code) (rate({c}_errors_total[5m]))"),
        record(
            f"outcome:{c}_speculations:rate5m",
            f"sum by (outcome) (rate({c}_speculations_total[5m]))",
        ),
        record(
            f"outcome:{c}_transcriptions:rate5m",
            f"sum by (outcome) (rate({c}_transcriptions_total[5m]))",
        ),
        # transcript tokens per audio token they replaced: < 1 means the context shrank
        record(
            f":{c}_context_compression:ratio_rate5m",
            f"sum(rate({c}_context_transcript_tokens_total[5m])) "
            f"/ sum(rate({c}_context_audio_tokens_replaced_total[5m]))",
        ),
        record(
            f":{c}_failed_responses:ratio_rate5m",
            f'(sum(rate({c}_responses_total{{status="failed"}}[5m])) or vector(0)) '
            f"/ sum(rate({c}_responses_total[5m]))",
        ),
    ]


def service_rules(service: str) -> list[dict[str, Any]]:
    """Per gRPC service (label ``service``): RPC rate and latency, errors, refusals."""
    m = f"stepaudio_{service}"
    rpc = f"{m}_rpc_seconds"
    return [
        record(
            "service_method_code:stepaudio_rpc:rate5m",
            f"sum by (method, code) (rate({rpc}_count[5m]))",
            service=service,
        ),
        record(
            "service_method:stepaudio_rpc_seconds:p95_5m",
            quantile(0.95, rpc, "method"),
            service=service,
        ),
        record(
            "service_method:stepaudio_rpc_seconds:p50_5m",
            quantile(0.5, rpc, "method"),
            service=service,
        ),
        record(
            "service_code:stepaudio_errors:rate5m",
            f"sum by (code) (rate({m}_errors_total[5m]))",
            service=service,
        ),
        # server-side failures only: client mistakes, cancels and refusals are not errors here;
        # `or vector(0)`: no failed call yet is a ratio of 0, not an empty result
        record(
            "service:stepaudio_rpc_errors:ratio_rate5m",
            f'(sum(rate({rpc}_count{{code=~"INTERNAL|UNKNOWN|UNAVAILABLE|DEADLINE_EXCEEDED"}}[5m]))'
            f" or vector(0)) / sum(rate({rpc}_count[5m]))",
            service=service,
        ),
    ]


def slo_rules() -> list[dict[str, Any]]:
    """Share of turns whose first audio came later than the SLO bound, per window."""
    m = f"{CONTROLLER}_time_to_first_audio_seconds"
    return [
        record(
            f":{CONTROLLER}_first_audio_slow:ratio_rate{w}",
            f'1 - sum(rate({m}_bucket{{le="{FIRST_AUDIO_SLO_S}"}}[{w}])) '
            f"/ sum(rate({m}_count[{w}]))",
        )
        for w in SLO_WINDOWS
    ]


def alert(
    name: str, expr: str, for_: str, severity: str, summary: str, description: str, runbook: str
) -> dict[str, Any]:
    rule: dict[str, Any] = {"alert": name, "expr": expr}
    if for_:
        rule["for"] = for_
    rule["labels"] = {"severity": severity}
    rule["annotations"] = {"summary": summary, "description": description, "runbook": runbook}
    return rule


def burn_alerts() -> list[dict[str, Any]]:
    budget = round(1 - FIRST_AUDIO_OBJECTIVE, 4)
    slow = f":{CONTROLLER}_first_audio_slow:ratio_rate"
    alerts = []
    for severity, long, short, burn in BURN_ALERTS:
        threshold = round(burn * budget, 4)
        alerts.append(
            alert(
                f"StepAudioFirstAudioBudgetBurn{long}",
                f"{slow}{long} > {threshold} and {slow}{short} > {threshold}",
                "2m" if severity == "page" else "15m",
                severity,
                f"First-audio SLO burning {burn}x over {long}",
                f"{{{{ $value | humanizePercentage }}}} of turns waited more than "
                f"{FIRST_AUDIO_SLO_S} s from end of speech to first audio over the last {short} "
                f"(objective: {FIRST_AUDIO_OBJECTIVE:.0%} within {FIRST_AUDIO_SLO_S} s).",
                "Open the overview dashboard's stage breakdown: the stage whose p95 grew is the "
                "cause (tokenizer tail, LLM first token, TTS first chunk). Check that stage's "
                "service dashboard for queueing (RPCs in flight), refusals and GPU saturation; "
                "add replicas or lower CONTROLLER_LIMITS__MAX_SESSIONS; follow one slow turn "
                "by its trace id.",
            )
        )
    return alerts


def availability_alerts() -> list[dict[str, Any]]:
    serving = "|".join(GRPC_SERVICES)
    return [
        alert(
            "StepAudioServiceNotServing",
            f'max by (job, instance) ({{__name__=~"stepaudio_({serving})_serving"}}) == 0',
            "10m",
            "page",
            "{{ $labels.job }} reports NOT_SERVING",
            "{{ $labels.instance }} has answered health checks with NOT_SERVING for 10 "
            "minutes (still loading weights, failed warm-up, or stuck draining).",
            "Read the pod's log (the model loader names a missing file or tensor); check the "
            "GPU is visible and memory is free; if it is draining, the rollout is stuck: "
            "delete the pod. The controller's /readyz stays 503 until every service SERVES.",
        ),
        alert(
            "StepAudioTargetDown",
            f'up{{job=~"{TARGET_JOBS}"}} == 0',
            "2m",
            "page",
            "{{ $labels.job }} metrics endpoint is down",
            "Prometheus cannot scrape {{ $labels.instance }}: the process is gone or hung.",
            "Check restarts and OOM kills (kubectl describe pod / docker compose ps); the "
            "controller retries and names the missing service in error events meanwhile.",
        ),
        alert(
            "StepAudioRedisDown",
            "redis_up == 0",
            "1m",
            "page",
            "Redis is down ({{ $labels.instance }})",
            "redis_exporter cannot reach Redis: session context is not saved, so resumes and "
            "controller restarts lose conversations.",
            "Start Redis (its data survives in the appendonly file); live sessions go on "
            "from memory and are re-saved on their next turn. Check memory (maxmemory) and "
            "disk on the Redis dashboard.",
        ),
    ]


def load_alerts() -> list[dict[str, Any]]:
    c = CONTROLLER
    return [
        alert(
            "StepAudioSustainedShedding",
            f'sum(rate({c}_speculations_total{{outcome="shed"}}[15m])) '
            f'> 0.5 * sum(rate({c}_speculations_total{{outcome="started"}}[15m]))',
            "15m",
            "ticket",
            "Most speculative replies are shed",
            "For 15 minutes more than half of the speculations were shed: the LLM has no room "
            "for them, so the latency speculation saves is lost.",
            "Add LLM capacity (replicas, LLM_MAX_RUNNING) or lower "
            "CONTROLLER_LIMITS__MAX_SPECULATIONS; the overview's shedding panel shows the trend.",
        ),
        alert(
            "StepAudioAdmissionRefusals",
            'sum by (service) (service_code:stepaudio_errors:rate5m{code="overloaded"}) > 0',
            "10m",
            "ticket",
            "{{ $labels.service }} refuses calls (overloaded)",
            "{{ $labels.service }} has refused calls with RESOURCE_EXHAUSTED for 10 minutes: "
            "its stream or queue limit is reached.",
            "Scale that service out or raise its MAX_STREAMS/MAX_WAITING if the GPU has "
            "headroom (service dashboard: RPCs in flight, GPU utilisation).",
        ),
        alert(
            "StepAudioGpuMemoryNearFull",
            "DCGM_FI_DEV_FB_USED / (DCGM_FI_DEV_FB_USED + DCGM_FI_DEV_FB_FREE) "
            f"> {GPU_MEMORY_FULL}",
            "10m",
            "ticket",
            "GPU {{ $labels.gpu }} on {{ $labels.Hostname }} memory nearly full",
            f"Framebuffer use has been above {GPU_MEMORY_FULL:.0%} for 10 minutes "
            "(vLLM reserves ~90% by design; above that, allocations outside the KV cache "
            "fail).",
            "Find the process (nvidia-smi); lower LLM_VLLM__GPU_MEMORY_UTILIZATION or the "
            "TTS batch, or move a service to another GPU.",
        ),
    ]


def error_alerts() -> list[dict[str, Any]]:
    return [
        alert(
            "StepAudioFailedResponses",
            f":{CONTROLLER}_failed_responses:ratio_rate5m > 0.05",
            "5m",
            "page",
            "{{ $value | humanizePercentage }} of responses fail",
            "More than 5% of assistant responses ended as failed over 5 minutes.",
            "The overview's errors-by-code panel names the failing dependency "
            "(<service>_unavailable, deadline_exceeded, ...); open that service's dashboard "
            "and log; traces of failed turns show the failing call.",
        ),
        alert(
            "StepAudioServiceErrors",
            "service:stepaudio_rpc_errors:ratio_rate5m > 0.05",
            "5m",
            "page",
            "{{ $labels.service }}: {{ $value | humanizePercentage }} of RPCs fail",
            "More than 5% of {{ $labels.service }} calls ended INTERNAL, UNKNOWN, UNAVAILABLE "
            "or DEADLINE_EXCEEDED over 5 minutes.",
            "The service dashboard's RPC panel shows the method and code; its log has the "
            "stack trace of internal errors. DEADLINE_EXCEEDED alone means it is too slow: "
            "see its latency and queue.",
        ),
    ]


def rule_groups() -> dict[str, Any]:
    recording = latency_rules() + controller_rate_rules() + slo_rules()
    for service in GRPC_SERVICES:
        recording += service_rules(service)
    return {
        "groups": [
            {"name": "stepaudio-recording", "rules": recording},
            {
                "name": "stepaudio-alerts",
                "rules": burn_alerts() + availability_alerts() + load_alerts() + error_alerts(),
            },
        ]
    }


def render() -> str:
    header = "# Generated by `python -m deploy.prometheus.rules`; do not edit by hand.\n"
    return header + yaml.safe_dump(rule_groups(), sort_keys=False, width=100)


def main() -> None:
    for path in (RULES_FILE, CHART_RULES_FILE):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render())
        sys.stdout.write(f"wrote {path}\n")


if __name__ == "__main__":
    main()
