"""docs/reliability.md's fault matrix on real processes: each test injects one fault and
asserts the named outcome, that the stack recovers, and that nothing was lost."""

from __future__ import annotations

import asyncio
import json
import signal

import httpx
import pytest
import websockets

from services.cli.realtime_client import RealtimeClient
from services.common.audio import decode_audio_file
from services.models.tiny import ASSETS
from tests.reliability.conftest import (
    MAX_SESSIONS,
    RPC_TIMEOUT_S,
    TEXT_SESSION,
    Live,
    ask,
    assert_nothing_lost,
)

QUESTION, QUESTION_RATE = decode_audio_file(ASSETS / "demo_question.wav")
pytestmark = [pytest.mark.reliability, pytest.mark.integration, pytest.mark.timeout(240)]


async def test_18_unauthenticated_access_is_refused_everywhere(live: Live) -> None:
    bearer = {"Authorization": f"Bearer {live.key}"}
    async with httpx.AsyncClient(base_url=live.url, timeout=30) as http:
        paths = ["/v1/audio/speech", "/admin/drain", "/v1/realtime/client_secrets"]
        assert (await http.get("/v1/voices")).status_code == 401
        for path in paths:
            assert (await http.post(path)).status_code == 401
        assert (await http.post("/admin/drain", headers=bearer)).status_code == 403
        assert (await http.get("/v1/voices", headers=bearer)).status_code == 200
    ws_url = live.url.replace("http", "ws") + "/v1/realtime"
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(ws_url):
            pass
    assert refused.value.response.status_code == 401


async def test_03_tts_killed_mid_reply_is_tts_unavailable_at_once(live: Live) -> None:
    async with live.client() as client:
        await client.configure(**TEXT_SESSION)
        await ask(client, "Tell me a long story about the sea.")
        await client.wait_for("response.audio.delta", 60)
        live.signal("tts", signal.SIGKILL)
        # reported as the TTS's failure while the LLM may still be generating, within the
        # reply's deadline (before: llm_unavailable, after the whole LLM reply)
        error = await client.wait_for("error", RPC_TIMEOUT_S)
        assert error["error"]["code"] == "tts_unavailable"
        done = (await client.wait_for("response.done", RPC_TIMEOUT_S))["response"]
        assert done["status"] == "failed"
        await live.wait_ready()  # the supervisor restarted the TTS
        await ask(client, "And now?")  # the same socket goes on
        again = (await client.wait_for("response.done", 120))["response"]
        assert again["status"] == "completed"
        stored = await live.stored_turns(client.result.session_id)
    assert_nothing_lost(client.result, stored)
    spoken = [t for t in stored if t.role == "assistant"][0]
    assert spoken.interrupted and spoken.text == done["text"]
    # whole spoken clauses from the start of the reply; what was generated after them and
    # never spoken is not stored (it was: 661 unspoken characters)
    generated = "".join(client.result.text.split())
    assert generated.startswith("".join(spoken.text.split()))
    assert live.supervisor.restarts.get("tts", 0) >= 1


async def test_06_hung_llm_times_out_and_recovers(live: Live) -> None:
    async with live.client() as client:
        await client.configure(**TEXT_SESSION)
        live.signal("llm", signal.SIGSTOP)
        try:
            await ask(client, "Are you there?")
            error = await client.wait_for("error", RPC_TIMEOUT_S + 20)
            assert error["error"]["code"] == "deadline_exceeded"
            done = (await client.wait_for("response.done", 20))["response"]
            assert done["status"] == "failed"
        finally:
            live.signal("llm", signal.SIGCONT)
        await live.wait_ready()
        await ask(client, "Are you back?")
        assert (await client.wait_for("response.done", 120))["response"]["status"] == "completed"
        stored = await live.stored_turns(client.result.session_id)
    assert_nothing_lost(client.result, stored)


async def test_04_llm_killed_mid_generation_is_llm_unavailable(live: Live) -> None:
    async with live.client() as client:
        await client.configure(**TEXT_SESSION)
        live.signal("llm", signal.SIGSTOP)  # held mid-call, then killed: never finishes
        await ask(client, "Count to one hundred.")
        await client.wait_for("response.created", 30)
        live.signal("llm", signal.SIGKILL)
        error = await client.wait_for("error", RPC_TIMEOUT_S + 10)
        assert error["error"]["code"] in ("llm_unavailable", "deadline_exceeded")
        done = (await client.wait_for("response.done", 20))["response"]
        assert done["status"] == "failed" and done["text"] == ""
        await live.wait_ready()
        await ask(client, "Again?")
        assert (await client.wait_for("response.done", 120))["response"]["status"] == "completed"
        stored = await live.stored_turns(client.result.session_id)
    assert_nothing_lost(client.result, stored)
    assert [t.role for t in stored] == ["user", "user", "assistant"]


async def test_08_redis_restart_with_aof_keeps_the_conversation(live: Live) -> None:
    async with live.client() as client:
        await client.configure(**TEXT_SESSION)
        await ask(client, "Remember the number seven.")
        assert (await client.wait_for("response.done", 120))["response"]["status"] == "completed"
        session_id = client.result.session_id
        before = await live.stored_turns(session_id)
    live.signal("redis", signal.SIGKILL)
    await live.wait_ready()  # restarted by the supervisor, its AOF replayed
    async with live.client(session_id=session_id) as resumed:
        assert resumed.session["id"] == session_id and resumed.session["turns"] == len(before)
        await resumed.configure(**TEXT_SESSION)
        await ask(resumed, "Which number?")
        assert (await resumed.wait_for("response.done", 120))["response"]["status"] == "completed"
        after = await live.stored_turns(session_id)
    assert [t.id for t in after[: len(before)]] == [t.id for t in before]
    assert_nothing_lost(resumed.result, after[len(before) :])


async def test_02_overload_at_twice_capacity_refuses_the_excess_with_1013(live: Live) -> None:
    ws_url = live.url.replace("http", "ws") + "/v1/realtime"
    headers = {"Authorization": f"Bearer {live.key}"}

    async def connect() -> tuple[object, str]:
        ws = await websockets.connect(ws_url, additional_headers=headers)
        try:
            first = json.loads(await asyncio.wait_for(ws.recv(), 30))
            return ws, first["type"]
        except websockets.ConnectionClosed as closed:
            return ws, f"closed {closed.rcvd.code} {closed.rcvd.reason}"

    sockets = [await connect() for _ in range(2 * MAX_SESSIONS)]
    try:
        outcomes = [outcome for _, outcome in sockets]
        assert outcomes.count("session.created") == MAX_SESSIONS, outcomes
        refused = [o for o in outcomes if o != "session.created"]
        assert all(o.startswith("closed 1013 overloaded") for o in refused), refused
    finally:
        for ws, _ in sockets:
            await ws.close()
    deadline = asyncio.get_running_loop().time() + 30
    while await live.metric("stepaudio_controller_active_sessions") != 0:
        assert asyncio.get_running_loop().time() < deadline, "sessions did not close"
        await asyncio.sleep(0.1)
    async with RealtimeClient(live.url, api_key=live.key) as client:  # capacity is back
        assert client.session["id"]


async def test_05_vad_killed_mid_speech_is_reported_and_the_stream_reopens(live: Live) -> None:
    async with live.client() as client:
        await client.configure(speculative=False, transcribe=False)
        speaking = asyncio.create_task(client.stream_audio(QUESTION, QUESTION_RATE))
        try:
            await asyncio.sleep(0.3)
            live.signal("vad", signal.SIGKILL)
            error = await client.wait_for("error", 30)
            assert error["error"]["code"] == "vad_unavailable"
        finally:
            await speaking
        await live.wait_ready()
        # the session reopens its VAD stream by itself: the next spoken turn is answered
        result = await client.speak_and_wait(
            QUESTION,
            QUESTION_RATE,
            timeout_s=120,
            tolerate=("vad_unavailable", "deadline_exceeded"),
        )
        assert result.done["status"] == "completed"
        stored = await live.stored_turns(client.result.session_id)
    assert_nothing_lost(client.result, stored)


async def test_10_redis_hung_keeps_the_live_call_and_refuses_new_sessions(live: Live) -> None:
    async with live.client() as client:
        await client.configure(**TEXT_SESSION)
        live.signal("redis", signal.SIGSTOP)
        try:
            async with httpx.AsyncClient(base_url=live.url, timeout=30) as http:
                assert (await http.get("/readyz")).status_code == 503
            bearer = {"Authorization": f"Bearer {live.key}"}
            ws_url = live.url.replace("http", "ws") + "/v1/realtime"
            with pytest.raises(websockets.InvalidStatus) as refused:  # keys cannot be checked
                async with websockets.connect(ws_url, additional_headers=bearer):
                    pass
            assert refused.value.response.status_code == 503
            await ask_tolerant(client, "Still there?")
            done = await client.wait_for("response.done", 120, tolerate=("unavailable",))
            assert done["response"]["status"] == "completed"
            codes = [e["error"]["code"] for e in client.result.of_type("error")]
            assert "unavailable" in codes  # told that the turn may not be saved
        finally:
            live.signal("redis", signal.SIGCONT)
        await live.wait_ready()


async def ask_tolerant(client: RealtimeClient, text: str) -> None:
    await client.send(
        {"type": "conversation.item.create",
         "item": {"type": "message", "role": "user",
                  "content": [{"type": "input_text", "text": text}]}}
    )  # fmt: skip
    await client.wait_for("conversation.item.created", 60, tolerate=("unavailable",))
    await client.send({"type": "response.create"})


async def test_21_drain_finishes_the_reply_closes_1012_and_the_session_resumes(
    live: Live,
) -> None:
    admin = {"Authorization": f"Bearer {live.admin_key}"}
    async with live.client() as client:
        await client.configure(**TEXT_SESSION)
        await ask(client, "Hello?")
        await client.wait_for("response.created", 60)
        async with httpx.AsyncClient(base_url=live.url, timeout=120) as http:
            drained = await http.post("/admin/drain", headers=admin)
        assert drained.status_code == 200 and drained.json()["closed_sessions"] == 1
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                await client.next_event(60)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
        assert client.result.of_type("response.done")[0]["response"]["status"] == "completed"
        session_id = client.result.session_id
    live.signal("controller", signal.SIGTERM)  # Kubernetes would now stop the pod
    await live.wait_ready()  # the supervisor started a new controller
    async with live.client(session_id=session_id) as resumed:
        assert resumed.session["id"] == session_id and resumed.session["turns"] == 2
    stored = await live.stored_turns(session_id)
    assert_nothing_lost(client.result, stored)
