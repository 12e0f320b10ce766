"""`stepaudio say` (REST synthesis) and `stepaudio chat` (one spoken turn over WebSocket)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from pathlib import Path

import httpx

from services.cli import CliError
from services.cli.realtime_client import RealtimeClient, RealtimeError, prepare_clip
from services.common.audio import AudioError, decode_audio_file, write_wav

DEFAULT_URL = "http://127.0.0.1:8000"
KEY_HELP = "API key (default $STEPAUDIO_API_KEY; none for a local `stepaudio serve`)"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    say = subparsers.add_parser("say", help="synthesize text through the REST endpoint")
    say.add_argument("text")
    say.add_argument("-o", "--out", type=Path, required=True, help="output file (.wav/.mp3/...)")
    say.add_argument("--voice", default=None)
    say.add_argument("--speed", type=float, default=1.0)
    say.add_argument("--url", default=DEFAULT_URL)
    say.add_argument("--api-key", default=os.environ.get("STEPAUDIO_API_KEY"), help=KEY_HELP)
    say.set_defaults(func=_say)

    chat = subparsers.add_parser("chat", help="speak a WAV to the realtime socket, save the reply")
    chat.add_argument("audio", type=Path, help="the user's turn (any common rate/channels)")
    chat.add_argument("-o", "--out", type=Path, required=True, help="reply WAV (22.05 kHz)")
    chat.add_argument("--url", default=DEFAULT_URL)
    chat.add_argument("--api-key", default=os.environ.get("STEPAUDIO_API_KEY"), help=KEY_HELP)
    chat.add_argument("--session-id", default=None, help="continue an earlier session")
    chat.add_argument("--voice", default=None)
    chat.set_defaults(func=_chat)


def _say(args: argparse.Namespace) -> int:
    fmt = args.out.suffix.lstrip(".").lower() or "wav"
    if fmt not in ("wav", "mp3", "flac", "pcm"):
        raise CliError(f"unsupported output format {fmt!r} (wav, mp3, flac, pcm)")
    body = {"input": args.text, "response_format": fmt, "speed": args.speed}
    if args.voice:
        body["voice"] = args.voice
    try:
        headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
        with httpx.stream(
            "POST", f"{args.url}/v1/audio/speech", json=body, headers=headers, timeout=300
        ) as reply:
            if reply.status_code != 200:
                reply.read()
                raise CliError(f"HTTP {reply.status_code}: {reply.text}")
            with args.out.open("wb") as out:
                for chunk in reply.iter_bytes():
                    out.write(chunk)
    except httpx.HTTPError as exc:
        raise CliError(f"cannot reach {args.url}: {exc}") from exc
    print(json.dumps({"out": str(args.out), "bytes": args.out.stat().st_size}))
    return 0


async def run_chat(
    url: str,
    audio_path: Path,
    out: Path,
    session_id: str | None = None,
    voice: str | None = None,
    api_key: str | None = None,
) -> dict[str, object]:
    try:
        samples, rate = decode_audio_file(audio_path)
    except AudioError as exc:
        raise CliError(f"{audio_path}: {exc}") from exc
    samples, rate = prepare_clip(samples, rate)
    async with RealtimeClient(url, session_id=session_id, api_key=api_key) as client:
        update: dict[str, object] = {
            "input_audio_format": {"type": "pcm16", "sample_rate_hz": rate},
            "output_audio_format": {"type": "pcm16", "sample_rate_hz": 22_050},
        }
        if voice:
            update["voice"] = voice
        await client.configure(**update)
        result = await client.speak_and_wait(samples, rate)
    write_wav(out, result.pcm, result.sample_rate_hz)
    return {
        "session_id": result.session_id,
        "text": result.done.get("text", result.text),
        "status": result.done.get("status"),
        "audio_seconds": round(result.pcm.size / result.sample_rate_hz, 3),
        "timings_ms": result.done.get("timings_ms", {}),
        "out": str(out),
    }


def _chat(args: argparse.Namespace) -> int:
    try:
        summary = asyncio.run(
            run_chat(args.url, args.audio, args.out, args.session_id, args.voice, args.api_key)
        )
    except (OSError, RealtimeError, TimeoutError) as exc:
        raise CliError(f"chat failed: {exc}") from exc
    print(json.dumps(summary, ensure_ascii=False))
    return 0
