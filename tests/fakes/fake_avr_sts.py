#!/usr/bin/env python3
"""Fake AVR speech-to-speech provider (WebSocket on any path, JSON messages).

See README.md in this folder for the options and the events.jsonl markers.
"""
from __future__ import annotations

import asyncio
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from aiohttp import WSMsgType, web  # noqa: E402

import common  # noqa: E402
import httpfake  # noqa: E402
from common import Pick, Recorder, ReplyAudio, TurnTaker  # noqa: E402

RATE = 8000
rec: Recorder | None = None


def parse_args(argv=None):
    p = common.base_parser(__doc__)
    p.add_argument("--transcript", action="append", default=None,
                   help="user transcript per utterance (repeatable; default 'hello agent')")
    p.add_argument("--reply-text", default="hello caller", help="agent transcript text")
    p.add_argument("--greeting", action="store_true", help="speak the reply once right after init")
    p.add_argument("--chunk-ms", default="1000,70",
                   help="sizes of the outgoing audio messages in ms, cycled (default 1000,70)")
    p.add_argument("--tool-call", metavar="NAME", default=None,
                   help="on the first utterance send a tool_invocation NAME before the reply")
    p.add_argument("--tool-args", metavar="JSON", default="{}", help="parameters of --tool-call")
    p.add_argument("--spurious-interruption", action="store_true",
                   help="also send {type:interruption} when each reply's play time ends "
                        "(avr-sts-ultravox does this on every 'listening' state)")
    p.add_argument("--endless", metavar="SPEED", type=float, default=None,
                   help="after init, stream the reply audio in a loop for ever at SPEED times real "
                        "time (1 s messages); caller speech (barge-in) stops it")
    return p.parse_args(argv)


class Session:
    def __init__(self, args, reply: ReplyAudio, ws: web.WebSocketResponse, conn: int):
        self.args = args
        self.reply = reply
        self.ws = ws
        self.conn = conn
        self.silent = args.mode == "silent"
        self.uuid = None
        self.turn = TurnTaker(rec, conn, RATE, args.vad_threshold, args.silence_ms)
        self.carry = b""
        self.closed = False
        self.reply_task: asyncio.Task | None = None
        self.tool_pending = bool(args.tool_call)
        self.transcripts = Pick(args.transcript, "hello agent")
        self.chunk_bytes = [max(2, int(RATE * 2 * int(x) / 1000) & ~1) for x in args.chunk_ms.split(",")]
        self.tasks: set[asyncio.Task] = set()

    def spawn(self, coro) -> asyncio.Task:
        t = asyncio.create_task(coro)
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)
        return t

    async def send(self, obj: dict) -> None:
        if self.silent or self.closed or self.ws.closed:
            return
        rec.log_out(self.conn, obj)
        try:
            await self.ws.send_str(json.dumps(obj))
        except (ConnectionError, RuntimeError) as e:
            self.closed = True
            rec.marker(self.conn, "send_failed", detail=str(e))

    async def fail(self, detail: str) -> bool:
        rec.marker(self.conn, "client_error", detail=detail)
        await self.send({"type": "error", "message": detail})
        return False

    async def on_text(self, text: str) -> bool:
        try:
            msg = json.loads(text)
        except ValueError as e:
            rec.log_in(self.conn, {"invalid_json": text[:200]})
            return await self.fail(f"invalid JSON: {e}")
        if not isinstance(msg, dict):
            rec.log_in(self.conn, {"not_an_object": str(msg)[:200]})
            return await self.fail("message is not a JSON object")
        rec.log_in(self.conn, msg)
        typ = msg.get("type")
        if self.uuid is None:
            if typ != "init" or not isinstance(msg.get("uuid"), str) or not msg["uuid"]:
                return await self.fail(f"expected init with uuid first, got {typ!r}")
            self.uuid = msg["uuid"]
            rec.marker(self.conn, "init", uuid=self.uuid)
            if self.args.endless and not self.silent:
                if self.reply_task and not self.reply_task.done():
                    self.reply_task.cancel()
                self.reply_task = self.spawn(self.endless(self.args.endless))
            elif self.args.greeting and not self.silent:
                self.start_reply(greeting=True)
            return True
        if typ == "audio":
            try:
                data = common.b64decode_strict(msg.get("audio"))
            except ValueError as e:
                return await self.fail(f"bad base64 audio: {e}")
            data = self.carry + data
            cut = len(data) & ~1
            pcm, self.carry = data[:cut], data[cut:]
            for kind, _ms, barge in self.turn.feed(pcm):
                if kind == "speech_started" and barge:
                    await self.interrupt()
                elif kind == "speech_stopped" and not self.silent:
                    await self.send({"type": "transcript", "role": "user", "text": self.transcripts.next()})
                    self.start_reply()
        elif typ == "dtmf_digit":
            rec.marker(self.conn, "dtmf", digit=msg.get("digit"))
        elif typ == "tool_result":
            rec.marker(self.conn, "tool_result", invocationId=msg.get("invocationId"), result=msg.get("result"))
        elif typ == "init":
            rec.marker(self.conn, "duplicate_init", uuid=msg.get("uuid"))
        # anything else: recorded above and ignored, like the AVR providers do
        return True

    async def interrupt(self) -> None:
        if self.reply_task and not self.reply_task.done():
            self.reply_task.cancel()
        await self.send({"type": "interruption"})

    def start_reply(self, greeting: bool = False) -> None:
        if self.reply_task and not self.reply_task.done():
            self.reply_task.cancel()
        self.reply_task = self.spawn(self.speak(greeting))

    async def endless(self, speed: float) -> None:
        """--endless: 1 s messages of the reply (looped) every 1/speed s, for ever. Messages are
        not logged one by one; `endless_started` and `endless_stopped {sent_ms, cancelled}` are."""
        audio = self.reply.pcm_at(RATE)
        chunk = RATE * 2
        # Any caller speech from now on is a barge-in.
        self.turn.reply_begin(3600.0, greeting=True)
        rec.marker(self.conn, "endless_started", speed=speed)
        sent = 0
        pos = 0
        cancelled = False
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        try:
            while not (self.closed or self.ws.closed):
                piece = b""
                while len(piece) < chunk:
                    take = audio[pos:pos + chunk - len(piece)]
                    piece += take
                    pos = (pos + len(take)) % max(1, len(audio))
                await self.ws.send_str(json.dumps({"type": "audio", "audio": common.b64(piece)}))
                sent += len(piece)
                due = t0 + (sent / chunk) / speed
                await asyncio.sleep(max(0.0, due - loop.time()))
        except asyncio.CancelledError:
            cancelled = True
            raise
        except (ConnectionError, RuntimeError):
            pass
        finally:
            self.turn.reply_end(cancelled=cancelled, sent_ms=sent * 1000 // (2 * RATE))
            rec.marker(self.conn, "endless_stopped", sent_ms=sent * 1000 // (2 * RATE), cancelled=cancelled)

    async def speak(self, greeting: bool) -> None:
        if self.tool_pending and not greeting:
            self.tool_pending = False
            try:
                params = json.loads(self.args.tool_args)
            except ValueError:
                params = self.args.tool_args
            await self.send({"type": "tool_invocation", "toolName": self.args.tool_call,
                             "invocationId": f"inv_{self.conn}_1", "parameters": params})
        audio = self.reply.pcm_at(RATE)
        self.turn.reply_begin(len(audio) / 2 / RATE, greeting=greeting)
        sent = 0
        try:
            for piece in common.split_sizes(audio, self.chunk_bytes):
                await self.send({"type": "audio", "audio": common.b64(piece)})
                sent += len(piece)
                await asyncio.sleep(0)
        except asyncio.CancelledError:
            self.turn.reply_end(cancelled=True, sent_ms=sent * 1000 // (2 * RATE))
            raise
        self.turn.reply_end(sent_ms=sent * 1000 // (2 * RATE))
        await self.send({"type": "transcript", "role": "agent", "text": self.args.reply_text})
        if self.args.spurious_interruption:
            n = self.turn.reply_n
            while self.turn.playing and self.turn.reply_n == n:
                await asyncio.sleep(0.02)
            if self.turn.reply_n == n:
                await self.send({"type": "interruption"})


async def handle(request: web.Request) -> web.StreamResponse:
    args = request.app["args"]
    mode = args.mode
    conn = rec.new_conn()
    rec.log_in(conn, {"http": "GET", "path": request.path, "query": dict(request.query)})
    if mode == "slow-start":
        await asyncio.sleep(mode.ms / 1000)
    if mode == "http500":
        rec.marker(conn, "http500")
        return web.Response(status=500, text="Internal Server Error")
    if request.headers.get("Upgrade", "").lower() != "websocket":
        return web.Response(status=426, text="Upgrade Required")
    ws = web.WebSocketResponse(max_msg_size=16 * 1024 * 1024)
    await ws.prepare(request)
    transport = request.transport
    rec.marker(conn, "connected", path=request.path, peer=str(request.remote))
    sess = Session(args, request.app["reply"], ws, conn)
    killer = None
    if mode == "disconnect-after":
        async def kill():
            await asyncio.sleep(mode.ms / 1000)
            rec.marker(conn, "disconnect", after_ms=mode.ms)
            sess.closed = True
            common.abort_transport(transport)
        killer = asyncio.create_task(kill())
    if mode == "garbage":
        for junk in ('{"type": "audio", "audio": ', "\x00\x01not json at all", "[1,2"):
            rec.log_out(conn, {"garbage_text": junk})
            await ws.send_str(junk)
        junkb = common.garbage_bytes(33, conn)
        rec.log_out(conn, {"garbage_binary_bytes": len(junkb)})
        await ws.send_bytes(junkb)
        await sess.send({"type": "audio", "audio": "!!not base64!!"})
    reason = "client closed"
    try:
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                if not await sess.on_text(msg.data):
                    reason = "client error"
                    await ws.close(code=1008, message=b"protocol error")
                    break
            elif msg.type == WSMsgType.BINARY:
                rec.log_in(conn, {"binary_bytes": len(msg.data)})
                reason = "client error"
                await sess.fail("binary frames are not part of the protocol")
                await ws.close(code=1003, message=b"binary not supported")
                break
            elif msg.type == WSMsgType.ERROR:
                reason = f"ws error: {ws.exception()}"
                break
    except Exception as e:  # noqa: BLE001 - never crash on bad input
        reason = f"exception: {e!r}"
        rec.marker(conn, "client_error", detail=repr(e))
    finally:
        sess.closed = True
        for t in list(sess.tasks):
            t.cancel()
        if killer:
            killer.cancel()
        rec.flush_audio()
        rec.marker(conn, "closed", reason=reason, close_code=ws.close_code)
    return ws


async def main(args) -> None:
    global rec
    rec = Recorder(args.record)
    app = web.Application()
    app["args"] = args
    app["reply"] = ReplyAudio(args.reply_wav)
    app.router.add_get("/{tail:.*}", handle)
    await httpfake.serve_app(app, args, rec)


if __name__ == "__main__":
    _args = parse_args()
    common.run_main(lambda: main(_args), lambda: rec, _args)
