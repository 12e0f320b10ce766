"""The fault matrix runs on the subprocess stack (`stepaudio serve`'s LocalStack): real
processes that can be SIGKILLed and SIGSTOPped, restarted by the Supervisor, auth on."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.cli.realtime_client import RealtimeClient, TurnResult
from services.cli.stack import LocalStack, free_port
from services.cli.supervisor import Supervisor
from services.controller.auth import key_entry, new_api_key
from services.controller.store import SessionStore, Turn, create_redis

RPC_TIMEOUT_S = 8.0
MAX_SESSIONS = 3


@dataclass
class Live:
    stack: LocalStack
    supervisor: Supervisor
    key: str
    admin_key: str

    @property
    def url(self) -> str:
        return self.stack.url

    def client(self, **kwargs: Any) -> RealtimeClient:
        return RealtimeClient(self.url, api_key=self.key, **kwargs)

    def signal(self, name: str, sig: signal.Signals) -> int:
        pid = self.stack.processes[name].pid
        os.kill(pid, sig)
        return pid

    async def wait_ready(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(base_url=self.url) as http:
            while True:
                try:
                    if (await http.get("/readyz", timeout=5)).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "the stack did not become ready again"
                await asyncio.sleep(0.25)

    async def stored_turns(self, session_id: str) -> list[Turn]:
        return await stored_turns(str(self.stack.redis_url), session_id)

    async def metric(self, name: str) -> float:
        async with httpx.AsyncClient(base_url=self.url) as http:
            text = (await http.get("/metrics", timeout=10)).text
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return 0.0


async def stored_turns(redis_url: str, session_id: str) -> list[Turn]:
    client = create_redis(redis_url)
    try:
        return (await SessionStore(client, ttl_s=60, max_turns=64).load(session_id)).turns
    finally:
        await client.aclose()


@pytest.fixture(scope="package")
def live(tiny_pack: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    key, admin = new_api_key(), new_api_key()
    keys = json.dumps([key_entry("reliability", key), key_entry("ops", admin, "admin")])
    stack = LocalStack(
        model_dir=tiny_pack,
        workdir=tmp_path_factory.mktemp("live-stack"),
        controller_port=free_port(),
        log_level="WARNING",
        extra_env={
            "CONTROLLER_AUTH__ENABLED": "true",
            "CONTROLLER_AUTH__KEYS": keys,
            "CONTROLLER_RPC_TIMEOUT_S": str(RPC_TIMEOUT_S),
            "CONTROLLER_LIMITS__MAX_SESSIONS": str(MAX_SESSIONS),
            "CONTROLLER_TURN__SEED": "7",
            "CONTROLLER_TURN__MAX_REPLY_TOKENS": "48",
            "CONTROLLER_LIMITS__OUTPUT_LEAD_MS": "10000",  # audio as fast as it is made
            # every clause speaks for seconds: a reply is still in flight when a test strikes
            "TTS_IGNORE_EOS": "true",
            "TTS_MAX_AUDIO_TOKENS": "100",
        },
    ).start()
    supervisor = Supervisor(stack, first_backoff_s=0.2, stable_s=5.0).start()
    try:
        yield Live(stack, supervisor, key, admin)
    finally:
        supervisor.stop()
        stack.stop()


TEXT_SESSION = {"turn_detection": {"type": "none"}, "speculative": False, "transcribe": False}


async def ask(client: RealtimeClient, text: str) -> None:
    """A typed user turn, then response.create."""
    await client.send(
        {"type": "conversation.item.create",
         "item": {"type": "message", "role": "user",
                  "content": [{"type": "input_text", "text": text}]}}
    )  # fmt: skip
    await client.wait_for("conversation.item.created")
    await client.send({"type": "response.create"})


def assert_nothing_lost(result: TurnResult, stored: list[Turn]) -> None:
    """The stored context equals what the client was sent: every user item it saw created is
    stored once; every finished reply is stored with exactly the text response.done reported
    (interrupted when it did not complete), and a reply that sent nothing is not stored."""
    ids = [t.id for t in stored]
    assert len(ids) == len(set(ids)), "a turn was stored twice"
    created = [e["item"]["id"] for e in result.of_type("conversation.item.created")]
    assert all(item in ids for item in created), "a user turn the client saw is not stored"
    assistant = [t for t in stored if t.role == "assistant" and t.text]
    replies = [e["response"] for e in result.of_type("response.done")]
    expected = [r for r in replies if r["text"]]
    assert [t.text for t in assistant] == [r["text"] for r in expected]
    for turn, reply in zip(assistant, expected, strict=True):
        assert turn.interrupted == (reply["status"] != "completed")
