"""Scenario 7: a slow network between the controller and the TTS service (+50 ms ± 20 ms each
way through a TCP fault proxy, then also a bandwidth cap). Replies still complete with no
error event (no spurious timeout under the RPC budget), and the stored context equals what
the client was sent."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.cli.realtime_client import RealtimeClient
from tests.helpers.fault_proxy import FaultProxy
from tests.helpers.redis import RedisServer
from tests.helpers.stack import running_stack
from tests.reliability.conftest import TEXT_SESSION, ask, assert_nothing_lost, stored_turns

pytestmark = [pytest.mark.reliability, pytest.mark.integration, pytest.mark.timeout(240)]

RPC_TIMEOUT_S = 10.0  # the budget a slow link must stay under


async def test_07_slow_link_to_the_tts_still_completes_every_turn(
    tiny_pack: Path, redis_server: RedisServer, tmp_path: Path
) -> None:
    proxies: dict[str, FaultProxy] = {}

    async def via_proxy(name: str, address: str) -> str:
        if name != "tts":
            return address
        proxies[name] = await FaultProxy(address, latency_s=0.05, jitter_s=0.02, seed=7).start()
        return proxies[name].address

    controller = {"turn": {"seed": 7, "max_reply_tokens": 24}, "rpc_timeout_s": RPC_TIMEOUT_S}
    try:
        async with (
            running_stack(
                tiny_pack, redis_server.url, tmp_path, controller=controller, route=via_proxy
            ) as stack,
            RealtimeClient(stack.url) as client,
        ):
            proxy = proxies["tts"]
            await client.configure(**TEXT_SESSION)
            await ask(client, "Tell me about the sea.")
            first = (await client.wait_for("response.done", 120))["response"]  # errors raise
            assert first["status"] == "completed" and client.result.pcm.size > 0
            assert proxy.bytes_forwarded > 0  # the audio really came through the slow link
            proxy.bytes_per_s = 256 * 1024  # and now a narrow one too
            await ask(client, "And the mountains?")
            second = (await client.wait_for("response.done", 120))["response"]
            assert second["status"] == "completed"
            assert client.result.of_type("error") == []
            stored = await stored_turns(redis_server.url, client.result.session_id)
    finally:
        for each in proxies.values():
            await each.stop()
    assert_nothing_lost(client.result, stored)
    assert [t.role for t in stored] == ["user", "assistant", "user", "assistant"]
