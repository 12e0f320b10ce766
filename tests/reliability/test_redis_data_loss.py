"""Scenario 9: Redis restarts without its data (no persistence, or a lost volume). A client
resuming its session is told ``session_expired`` and gets a fresh, empty context; nothing
answers 500 and the controller does not restart."""

from __future__ import annotations

import shutil
import signal

import httpx
import pytest

from tests.reliability.conftest import TEXT_SESSION, Live, ask, assert_nothing_lost

pytestmark = [pytest.mark.reliability, pytest.mark.integration, pytest.mark.timeout(240)]


def wipe_and_kill_redis(live: Live) -> None:
    """Stop Redis, delete its AOF, then kill it: the supervisor restarts it empty."""
    live.signal("redis", signal.SIGSTOP)  # stopped, it cannot write what is deleted next
    for entry in (live.stack.workdir / "redis").iterdir():
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    live.signal("redis", signal.SIGKILL)


async def test_09_redis_restart_without_data_resumes_as_session_expired(live: Live) -> None:
    controller_pid = live.stack.processes["controller"].pid
    async with live.client() as client:
        await client.configure(**TEXT_SESSION)
        await ask(client, "Remember the colour blue.")
        assert (await client.wait_for("response.done", 120))["response"]["status"] == "completed"
        old_id = client.result.session_id
        assert len(await live.stored_turns(old_id)) == 2
    wipe_and_kill_redis(live)
    await live.wait_ready()  # restarted by the supervisor, with nothing in it
    async with live.client(session_id=old_id) as resumed:
        first, created = resumed.result.events[:2]
        assert first["type"] == "error" and first["error"]["code"] == "session_expired"
        assert created["type"] == "session.created" and created["resumed"] is False
        assert resumed.session["id"] != old_id and resumed.session["turns"] == 0
        await resumed.configure(**TEXT_SESSION)
        await ask(resumed, "Which colour?")
        assert (await resumed.wait_for("response.done", 120))["response"]["status"] == "completed"
        stored = await live.stored_turns(resumed.result.session_id)
    assert_nothing_lost(resumed.result, stored)
    assert [t.role for t in stored] == ["user", "assistant"]  # fresh: nothing of the old one
    async with httpx.AsyncClient(base_url=live.url, timeout=30) as http:
        bearer = {"Authorization": f"Bearer {live.key}"}
        assert (await http.get("/v1/voices", headers=bearer)).status_code == 200
    assert live.stack.processes["controller"].pid == controller_pid  # no crash, no restart
