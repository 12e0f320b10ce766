"""Scenario 11: a client that stops reading during a reply. The controller's outbound queue
fills; after ``slow_consumer_timeout_s`` the socket is closed 1008 ``slow_consumer``, the reply
is cancelled downstream, what was sent is stored (interrupted), and another session on the
same controller finishes its turn as if nothing happened.

On loopback the kernel would buffer megabytes for a stalled reader (the server's send buffer
autotunes to 4 MiB): the controller runs with a small ``send_buffer_bytes`` and the client
with a small SO_RCVBUF, so a reply of a few hundred KB is enough to stall the socket.

The close frame sits behind the data the client has not read: it reaches a client that reads
again within ``slow_consumer_timeout_s``; one that never does has its connection aborted."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import websockets

from services.cli.realtime_client import RealtimeClient
from tests.helpers.redis import RedisServer
from tests.helpers.stack import Stack, engines_idle, running_stack
from tests.helpers.waits import eventually
from tests.reliability.conftest import TEXT_SESSION, ask, stored_turns

pytestmark = [pytest.mark.reliability, pytest.mark.integration, pytest.mark.timeout(240)]

BUFFER_BYTES = 4096  # the server's send buffer and the stalled client's receive buffer
# every clause speaks for seconds (the TTS LM runs to 250 audio ids): far more than the
# buffers between the controller and the stalled client hold
LONG_CLAUSES = {"ignore_eos": True, "max_audio_tokens": 250}
SLOW_CONSUMER_TIMEOUT_S = 5.0  # also the time a closed client gets to take the close frame
ERRORS = "stepaudio_controller_errors_total"
ACTIVE = "stepaudio_controller_active_sessions"
TCP_CLOSE = 7  # tcp_info.tcpi_state of a connection that is gone (here: reset by the server)


@pytest.fixture
async def stack(tiny_pack: Path, redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[Stack]:
    controller = {
        "http": {"send_buffer_bytes": BUFFER_BYTES},
        "limits": {
            "outbound_queue_events": 8,
            "slow_consumer_timeout_s": SLOW_CONSUMER_TIMEOUT_S,
            "output_lead_ms": 10_000,  # audio goes out as fast as it is made
        },
        "turn": {"seed": 7},
    }
    async with running_stack(
        tiny_pack, redis_server.url, tmp_path, controller=controller, tts=LONG_CLAUSES
    ) as running:
        yield running


async def stalling_client(url: str) -> tuple[RealtimeClient, socket.socket]:
    """A client whose socket has a small receive buffer (set before connecting: it bounds the
    TCP window it offers) and that takes frames off it only while the test reads."""
    address = urlsplit(url)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUFFER_BYTES)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (address.hostname, address.port))
    options: dict[str, Any] = {
        "sock": sock,
        "max_queue": 1,  # websockets stops reading the socket once a frame waits
        "ping_interval": None,  # a client that does not read would miss its pongs
    }
    return RealtimeClient(url, connect_options=options), sock


async def start_long_reply(client: RealtimeClient) -> None:
    """Greedy decoding never picks <|EOT|> on the tiny Chat model: the LLM keeps generating,
    and each clause's TTS runs long: both are still in flight when the socket stalls."""
    await client.configure(**TEXT_SESSION, temperature=0.0, max_response_output_tokens=2048)
    await ask(client, "Tell me a long story.")
    await client.wait_for("response.audio.delta")  # the reply is under way: stop reading


async def read_to_the_end(client: RealtimeClient) -> websockets.ConnectionClosed:
    with pytest.raises(websockets.ConnectionClosed) as closed:
        while True:
            await client.next_event(30)
    return closed.value


async def test_11_a_client_that_never_reads_again_is_cut_off_and_others_go_on(
    stack: Stack, redis_server: RedisServer
) -> None:
    slow, sock = await stalling_client(stack.url)
    async with slow, RealtimeClient(stack.url) as other:
        await start_long_reply(slow)
        slow_id = slow.result.session_id
        await other.configure(**TEXT_SESSION, max_response_output_tokens=16)
        await ask(other, "Hello?")  # a normal turn, at the same time, read as it comes
        other_done = asyncio.create_task(other.wait_for("response.done", 120))

        # all of this while the stalled client still reads nothing
        await eventually(
            lambda: stack.metric("controller", ERRORS, code="slow_consumer") == 1,
            timeout_s=60,
            what="the stalled session closed as a slow consumer",
        )
        await eventually(
            lambda: stack.metric("controller", ACTIVE) == 1, what="the stalled session ended"
        )
        for service in ("llm", "tts"):  # its reply was cancelled downstream, not run out
            name = f"stepaudio_{service}_requests_total"
            await eventually(
                lambda s=service, n=name: stack.metric(s, n, reason="cancelled") >= 1,
                what=f"a cancelled request counted by {service}",
            )
        await eventually(
            lambda: sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0] == TCP_CLOSE,
            timeout_s=SLOW_CONSUMER_TIMEOUT_S + 15,
            what="the stalled connection aborted by the server",
        )
        # the close frame was still behind unread data when the connection was aborted
        closed = await read_to_the_end(slow)
        assert closed.rcvd is None
        assert slow.result.of_type("response.done") == []

        # the other session: its turn completed, with no error, while this went on
        done = (await other_done)["response"]
        assert done["status"] == "completed" and other.result.pcm.size > 0
        assert other.result.of_type("error") == []
        await engines_idle(stack, "the slow consumer's turn")
    assert stack.metric("controller", ERRORS, code="slow_consumer") == 1  # the stalled one only

    turns = await stored_turns(redis_server.url, slow_id)
    assert [t.role for t in turns] == ["user", "assistant"]
    assert turns[1].interrupted  # what was sent of the reply, marked interrupted
    async with RealtimeClient(stack.url, session_id=slow_id) as resumed:
        assert resumed.session["turns"] == 2  # the session resumes with its context


async def test_11_a_client_that_reads_again_gets_the_close_frame(stack: Stack) -> None:
    slow, _ = await stalling_client(stack.url)
    async with slow:
        await start_long_reply(slow)
        await eventually(
            lambda: stack.metric("controller", ERRORS, code="slow_consumer") == 1,
            timeout_s=60,
            what="the stalled session closed as a slow consumer",
        )
        # reading again at once (well within slow_consumer_timeout_s): what was buffered, then
        # the server's close frame
        closed = await read_to_the_end(slow)
    assert closed.rcvd is not None
    assert (closed.rcvd.code, closed.rcvd.reason) == (1008, "slow_consumer")
    assert slow.result.of_type("response.done") == []  # the reply ended with the socket
