#!/usr/bin/env python3
"""Fake AVR pipeline providers: ASR (full-duplex streaming), LLM (concatenated JSON), TTS (chunked audio/l16).

Routes: POST /asr, /llm, /tts, and the AVR containers' own paths
/speech-to-text-stream, /prompt-stream, /text-to-speech-stream.
See README.md in this folder for the options and the events.jsonl markers.
"""
from __future__ import annotations

import asyncio
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from aiohttp import web  # noqa: E402

import common  # noqa: E402
import httpfake  # noqa: E402
from common import Pick, Recorder, ReplyAudio, TurnTaker  # noqa: E402

RATE = 8000
rec: Recorder | None = None
ARGS = None
REPLY: ReplyAudio | None = None


class Playout:
    """Real-time play window of all TTS audio handed out (the core plays it back to back)."""

    def __init__(self):
        self.start = 0.0
        self.until = 0.0
        self.n = 0

    def add(self, duration_s: float) -> None:
        now = time.monotonic()
        if self.until < now:
            self.start = now
            self.until = now
        self.until += duration_s
        self.n += 1


PLAY = Playout()
TRANSCRIPTS: Pick | None = None


def parse_args(argv=None):
    p = common.base_parser(__doc__)
    p.add_argument("--fail-route", action="append", choices=("asr", "llm", "tts"), default=None,
                   help="apply --mode only to this route (repeatable)")
    p.add_argument("--transcript", action="append", default=None,
                   help="ASR text per utterance (repeatable; default 'hello agent')")
    p.add_argument("--llm-text", default="Hello caller. How can I help?", help="LLM answer text")
    p.add_argument("--think", action="store_true", help="prefix the LLM answer with <think>secret</think>")
    p.add_argument("--llm-style", choices=("pieces", "whole"), default="pieces",
                   help="pieces: many small {type:text} objects split across chunks (default); "
                        "whole: one object with the full text, like avr-llm-openai")
    p.add_argument("--asr-lazy-headers", action="store_true",
                   help="send the ASR response headers only with the first transcript (what Express-based "
                        "AVR ASR containers do); default: headers at once")
    return p.parse_args(argv)


def err(msg: str) -> dict:
    return {"message": msg}


# ---------------------------------------------------------------- ASR
async def asr(request: web.Request) -> web.StreamResponse:
    t0 = time.monotonic()
    conn = rec.new_conn()
    mode = httpfake.route_mode(ARGS, "asr")
    rec.log_in(conn, {"http": "POST", "route": "asr", "path": request.path, "x_uuid": request.headers.get("X-UUID"),
                      "content_type": request.headers.get("Content-Type"),
                      "transfer_encoding": request.headers.get("Transfer-Encoding")})
    rec.marker(conn, "asr_started", uuid=request.headers.get("X-UUID"))
    if mode != "silent":  # silent: keep recording the audio below, never answer
        early = await httpfake.apply_mode(request, mode, rec, conn, error_body=err("Error receiving audio stream"),
                                          garbage_type="text/event-stream", drain_body=False)
        if early is not None:
            return early
    turn = TurnTaker(rec, conn, RATE, ARGS.vad_threshold, ARGS.silence_ms)
    resp = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    resp.enable_chunked_encoding()
    prepared = False
    if not ARGS.asr_lazy_headers and mode != "silent":
        await resp.prepare(request)
        prepared = True
    transport = request.transport
    killer = None
    state = {"killed": False}
    if mode == "disconnect-after":
        async def kill():
            await asyncio.sleep(max(0.0, t0 + mode.ms / 1000 - time.monotonic()))
            state["killed"] = True
            rec.marker(conn, "disconnect", after_ms=mode.ms)
            common.abort_transport(transport)
        killer = asyncio.create_task(kill())
    carry = b""
    chunks = 0
    reason = "eof"
    try:
        async for data in request.content.iter_any():
            chunks += 1
            rec.log_in(conn, {"route": "asr", "body_chunk_bytes": len(data)})
            data = carry + data
            cut = len(data) & ~1
            pcm, carry = data[:cut], data[cut:]
            turn.reply_until, turn.reply_start, turn.reply_n = PLAY.until, PLAY.start, PLAY.n
            for kind, _ms, barge in turn.feed(pcm):
                if barge:
                    PLAY.until = 0.0
                if kind == "speech_stopped" and mode != "silent":
                    text = TRANSCRIPTS.next()
                    if not prepared:
                        await resp.prepare(request)
                        prepared = True
                    rec.log_out(conn, {"route": "asr", "text": text})
                    rec.marker(conn, "transcript_sent", text=text)
                    await resp.write(text.encode())
    except (ConnectionError, asyncio.CancelledError) as e:
        reason = f"connection lost: {e!r}"
    except Exception as e:  # noqa: BLE001
        reason = f"exception: {e!r}"
        rec.marker(conn, "client_error", detail=repr(e))
    finally:
        if killer:
            killer.cancel()
        rec.flush_audio()
        rec.marker(conn, "closed", route="asr", reason="disconnect" if state["killed"] else reason,
                   body_chunks=chunks, audio_ms=turn.vad.audio_ms)
    if state["killed"]:
        return resp
    if mode == "silent":
        await httpfake.wait_client_gone(request)
        return web.Response(status=204)
    try:
        if not prepared:
            await resp.prepare(request)
        await resp.write_eof()
    except (ConnectionError, RuntimeError):
        pass
    return resp


# ---------------------------------------------------------------- LLM
def llm_stream_bytes() -> bytes:
    text = ("<think>secret</think>" if ARGS.think else "") + ARGS.llm_text
    if ARGS.llm_style == "whole":
        return json.dumps({"type": "text", "content": text}).encode()
    pieces = common.split_sizes(text.encode(), [3, 7, 2, 5, 11])
    return b"".join(json.dumps({"type": "text", "content": p.decode("utf-8", "replace")}).encode() for p in pieces)


async def llm(request: web.Request) -> web.StreamResponse:
    t0 = time.monotonic()
    conn = rec.new_conn()
    mode = httpfake.route_mode(ARGS, "llm")
    raw = await request.read()
    try:
        body = json.loads(raw)
    except ValueError:
        rec.log_in(conn, {"http": "POST", "route": "llm", "path": request.path, "invalid_json": raw[:200].decode("utf-8", "replace")})
        rec.marker(conn, "client_error", detail="invalid JSON body")
        return web.json_response(err("Invalid JSON body"), status=400)
    rec.log_in(conn, {"http": "POST", "route": "llm", "path": request.path, "body": body})
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        rec.marker(conn, "client_error", detail="messages missing")
        return web.json_response(err("Messages is required"), status=400)
    if not body.get("uuid"):
        rec.marker(conn, "client_error", detail="uuid missing")
        return web.json_response(err("UUID is required"), status=400)
    rec.marker(conn, "llm_request", uuid=body.get("uuid"), message=body.get("message"),
               n_messages=len(body["messages"]))
    early = await httpfake.apply_mode(request, mode, rec, conn, error_body=err("Error communicating with OpenAI"),
                                      garbage_type="text/event-stream", drain_body=False)
    if early is not None:
        return early
    stream = llm_stream_bytes()
    rec.log_out(conn, {"route": "llm", "body": stream.decode()})
    resp = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    chunks = common.split_sizes(stream, [17, 5, 29, 11, 41])
    await httpfake.send_chunks(request, resp, chunks, mode, rec, conn, t0, gap_s=0.01)
    return resp


# ---------------------------------------------------------------- TTS
async def tts(request: web.Request) -> web.StreamResponse:
    t0 = time.monotonic()
    conn = rec.new_conn()
    mode = httpfake.route_mode(ARGS, "tts")
    raw = await request.read()
    try:
        body = json.loads(raw)
    except ValueError:
        rec.log_in(conn, {"http": "POST", "route": "tts", "path": request.path, "invalid_json": raw[:200].decode("utf-8", "replace")})
        rec.marker(conn, "client_error", detail="invalid JSON body")
        return web.json_response(err("Invalid JSON body"), status=400)
    rec.log_in(conn, {"http": "POST", "route": "tts", "path": request.path, "body": body})
    text = body.get("text") if isinstance(body, dict) else None
    if not isinstance(text, str) or not text.strip():
        rec.marker(conn, "client_error", detail="text missing")
        return web.json_response(err("Text is required and must be a non-empty string"), status=400)
    rec.marker(conn, "tts_text", text=text)
    early = await httpfake.apply_mode(request, mode, rec, conn, error_body=err("Error communicating with TTS"),
                                      garbage_type="audio/l16", drain_body=False)
    if early is not None:
        return early
    audio = REPLY.for_text(text, RATE)
    dur = len(audio) / 2 / RATE
    resp = web.StreamResponse(status=200, headers={"Content-Type": "audio/l16", "Cache-Control": "no-cache"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    PLAY.add(dur)
    rec.marker(conn, "reply_started", reply=PLAY.n, duration_ms=int(dur * 1000), text=text,
               play_until_in_ms=int((PLAY.until - time.monotonic()) * 1000))
    chunks = common.split_sizes(audio, [4000, 1234, 320, 6400])
    rec.log_out(conn, {"route": "tts", "audio_bytes": len(audio), "chunks": len(chunks)})
    done = await httpfake.send_chunks(request, resp, chunks, mode, rec, conn, t0, gap_s=0.005)
    rec.marker(conn, "reply_finished", reply=PLAY.n, cancelled=not done)
    return resp


async def main(args) -> None:
    global rec, ARGS, REPLY, TRANSCRIPTS
    ARGS = args
    rec = Recorder(args.record)
    REPLY = ReplyAudio(args.reply_wav)
    TRANSCRIPTS = Pick(args.transcript, "hello agent")
    app = web.Application(client_max_size=64 * 1024 * 1024)
    for path in ("/asr", "/speech-to-text-stream"):
        app.router.add_post(path, asr)
    for path in ("/llm", "/prompt-stream"):
        app.router.add_post(path, llm)
    for path in ("/tts", "/text-to-speech-stream"):
        app.router.add_post(path, tts)
    await httpfake.serve_app(app, args, rec)


if __name__ == "__main__":
    _args = parse_args()
    common.run_main(lambda: main(_args), lambda: rec, _args)
