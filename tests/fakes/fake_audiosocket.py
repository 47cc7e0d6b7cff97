#!/usr/bin/env python3
"""Fake AudioSocket server (the avr-core side of Asterisk's AudioSocket TCP protocol).

Frames: kind u8, len u16 big-endian, payload. See README.md for options and markers.
"""
from __future__ import annotations

import asyncio
import os
import struct
import sys
import time
import uuid as uuidlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
from common import Recorder, ReplyAudio, TurnTaker  # noqa: E402

RATE = 8000
FRAME = 320
K_HANGUP, K_UUID, K_DTMF, K_AUDIO, K_ERROR = 0x00, 0x01, 0x03, 0x10, 0xFF
KIND_NAME = {K_HANGUP: "hangup", K_UUID: "uuid", K_DTMF: "dtmf", K_AUDIO: "audio", K_ERROR: "error"}

rec: Recorder | None = None


def parse_args(argv=None):
    p = common.base_parser(__doc__)
    p.add_argument("--hangup-after-reply", action="store_true", help="send a hangup frame after the first full reply")
    p.add_argument("--greeting", action="store_true", help="speak the reply once right after the UUID frame")
    return p.parse_args(argv)


def frame(kind: int, payload: bytes = b"") -> bytes:
    return struct.pack(">BH", kind, len(payload)) + payload


class Conn:
    def __init__(self, args, reply: ReplyAudio, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: int):
        self.args = args
        self.reply = reply
        self.reader = reader
        self.writer = writer
        self.conn = conn
        self.silent = args.mode == "silent"
        self.turn = TurnTaker(rec, conn, RATE, args.vad_threshold, args.silence_ms)
        self.closed = False
        self.reply_task: asyncio.Task | None = None
        self.tasks: set[asyncio.Task] = set()
        self.audio_frames = 0
        self.out_frames = 0
        self.hung_up = False

    def spawn(self, coro) -> asyncio.Task:
        t = asyncio.create_task(coro)
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)
        return t

    async def send(self, kind: int, payload: bytes = b"", log: bool = True) -> None:
        if self.closed or self.writer.is_closing():
            return
        if log:
            rec.log_out(self.conn, {"kind": KIND_NAME.get(kind, hex(kind)), "len": len(payload)})
        try:
            self.writer.write(frame(kind, payload))
            await self.writer.drain()
        except (ConnectionError, RuntimeError) as e:
            self.closed = True
            rec.marker(self.conn, "send_failed", detail=str(e))

    def start_reply(self, greeting: bool = False) -> None:
        if self.reply_task and not self.reply_task.done():
            self.reply_task.cancel()
        self.reply_task = self.spawn(self.speak(greeting))

    async def speak(self, greeting: bool) -> None:
        audio = self.reply.pcm_at(RATE)
        if len(audio) % FRAME:
            audio += bytes(FRAME - len(audio) % FRAME)
        n = len(audio) // FRAME
        self.turn.reply_begin(n * 0.02, greeting=greeting)
        t0 = time.monotonic()
        sent = 0
        try:
            for i in range(n):
                if self.closed:
                    break
                await self.send(K_AUDIO, audio[i * FRAME:(i + 1) * FRAME])
                sent += 1
                self.out_frames += 1
                delay = t0 + (i + 1) * 0.02 - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
        except asyncio.CancelledError:
            self.turn.reply_end(cancelled=True, sent_ms=sent * 20, frames=sent)
            raise
        self.turn.reply_end(cancelled=sent < n, sent_ms=sent * 20, frames=sent)
        if self.args.hangup_after_reply and not greeting and sent == n and not self.closed:
            rec.marker(self.conn, "hangup_sent")
            await self.send(K_HANGUP)
            self.hung_up = True
            await asyncio.sleep(0.2)
            self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                self.writer.close()
            except Exception:  # noqa: BLE001
                pass

    async def run(self) -> str:
        mode = self.args.mode
        if mode == "slow-start":
            await asyncio.sleep(mode.ms / 1000)
        first = True
        while True:
            try:
                hdr = await self.reader.readexactly(3)
            except asyncio.IncompleteReadError as e:
                return "eof" if not e.partial else "eof inside a frame header"
            kind, ln = struct.unpack(">BH", hdr)
            if first and (kind != K_UUID or ln != 16):
                rec.log_in(self.conn, {"kind": KIND_NAME.get(kind, hex(kind)), "len": ln, "header": hdr.hex()})
                rec.marker(self.conn, "client_error", detail=f"first frame kind {kind:#x} len {ln}, expected UUID")
                return "client error"
            if kind not in KIND_NAME:
                rec.log_in(self.conn, {"kind": hex(kind), "len": ln})
                rec.marker(self.conn, "client_error", detail=f"unknown frame kind {kind:#x}")
                return "client error"
            try:
                payload = await self.reader.readexactly(ln)
            except asyncio.IncompleteReadError:
                rec.marker(self.conn, "client_error", detail=f"eof inside a {ln}-byte payload of kind {kind:#x}")
                return "truncated frame"
            rec.log_in(self.conn, {"kind": KIND_NAME.get(kind, hex(kind)), "len": ln})
            if first:
                first = False
                u = str(uuidlib.UUID(bytes=payload))
                rec.marker(self.conn, "uuid", uuid=u)
                if mode == "http500":
                    rec.marker(self.conn, "error_frame_sent")
                    await self.send(K_ERROR, b"\x01")
                    return "error mode"
                if mode == "garbage":
                    await self.send_garbage()
                    return "garbage sent"
                if self.args.greeting and not self.silent:
                    self.start_reply(greeting=True)
                continue
            if kind == K_AUDIO:
                self.audio_frames += 1
                if ln % 2:
                    rec.marker(self.conn, "client_warning", detail=f"odd audio payload length {ln}")
                for ev, _ms, barge in self.turn.feed(payload):
                    if ev == "speech_started" and barge:
                        if self.reply_task and not self.reply_task.done():
                            self.reply_task.cancel()
                    elif ev == "speech_stopped" and not self.silent:
                        self.start_reply()
            elif kind == K_DTMF:
                rec.marker(self.conn, "dtmf", digit=payload.decode("ascii", "replace"))
            elif kind == K_HANGUP:
                rec.marker(self.conn, "hangup")
                return "hangup"
            elif kind == K_ERROR:
                rec.marker(self.conn, "error_frame", code=payload.hex())
            elif kind == K_UUID:
                rec.marker(self.conn, "client_warning", detail="second UUID frame")

    async def send_garbage(self) -> None:
        junk = common.garbage_bytes(41, self.conn)
        rec.log_out(self.conn, {"garbage": "unknown kind 0x42 + truncated audio frame + noise"})
        try:
            self.writer.write(frame(0x42, b"\xde\xad\xbe\xef"))
            self.writer.write(struct.pack(">BH", K_AUDIO, 4000) + junk)  # claims 4000, sends 41
            await self.writer.drain()
            await asyncio.sleep(0.2)
        except (ConnectionError, RuntimeError):
            pass


async def serve(args, reply: ReplyAudio, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    conn = rec.new_conn()
    c = Conn(args, reply, reader, writer, conn)
    rec.marker(conn, "connected", peer=str(writer.get_extra_info("peername")))
    transport = writer.transport
    killer = None
    if args.mode == "disconnect-after":
        async def kill():
            await asyncio.sleep(args.mode.ms / 1000)
            rec.marker(conn, "disconnect", after_ms=args.mode.ms)
            c.closed = True
            common.abort_transport(transport)
        killer = asyncio.create_task(kill())
    reason = "?"
    try:
        reason = await c.run()
    except asyncio.CancelledError:
        reason = "server shutdown"
    except (ConnectionError, OSError) as e:
        reason = f"connection error: {e}"
    except Exception as e:  # noqa: BLE001 - never crash on bad input
        reason = f"exception: {e!r}"
        rec.marker(conn, "client_error", detail=repr(e))
    finally:
        for t in list(c.tasks):
            t.cancel()
        if killer:
            killer.cancel()
        c.close()
        rec.flush_audio()
        rec.marker(conn, "closed", reason=reason, in_frames=c.audio_frames, out_frames=c.out_frames)


async def main(args) -> None:
    global rec
    rec = Recorder(args.record)
    reply = ReplyAudio(args.reply_wav)
    sock = common.bind_socket(args.port)
    server = await asyncio.start_server(lambda r, w: serve(args, reply, r, w), sock=sock)
    flusher = asyncio.create_task(rec.flush_loop())
    rec.marker(0, "listening", port=common.announce_ready(sock), mode=args.mode.spec)
    try:
        async with server:
            await server.serve_forever()
    finally:
        flusher.cancel()


if __name__ == "__main__":
    _args = parse_args()
    common.run_main(lambda: main(_args), lambda: rec, _args)
