#!/usr/bin/env python3
"""Self-test of the fake provider servers: starts each fake with --port 0 and drives it
with a tiny client of its protocol. Exits non-zero on failure.

    python3 tests/fakes/selftest.py            # all
    python3 tests/fakes/selftest.py sts webhook  # only tests whose name contains a word
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import struct
import sys
import tempfile
import time
import traceback
import uuid as uuidlib
import wave

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import aiohttp  # noqa: E402

import common  # noqa: E402

SPEECH_8K = common.tone(0.6, 8000, 300, 6000)
SPEECH_24K = common.tone(0.6, 24000, 300, 6000)
TMP = tempfile.mkdtemp(prefix="fakes-selftest-")


class Fake:
    def __init__(self, name: str, *args: str):
        self.name = name
        self.args = list(args)
        self.dir = tempfile.mkdtemp(prefix=name + "-", dir=TMP)
        self.proc: asyncio.subprocess.Process | None = None
        self.port = 0

    async def __aenter__(self) -> "Fake":
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, os.path.join(HERE, f"{self.name}.py"), "--port", "0", "--record", self.dir, *self.args,
            stdout=asyncio.subprocess.PIPE, stderr=open(os.path.join(self.dir, "stderr.txt"), "wb"))
        line = await asyncio.wait_for(self.proc.stdout.readline(), 10)
        assert line.startswith(b"READY "), f"{self.name}: bad first line {line!r}"
        self.port = int(line.split()[1])
        return self

    async def __aexit__(self, *exc) -> None:
        if self.proc and self.proc.returncode is None:
            t = time.monotonic()
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()
                raise AssertionError(f"{self.name} {self.args} ignored SIGTERM for 5 s")
            if time.monotonic() - t > 2:
                raise AssertionError(f"{self.name} {self.args} took {time.monotonic() - t:.1f}s to stop")
            check(self.proc.returncode == 0, f"{self.name} exit code {self.proc.returncode} after SIGTERM")
        err = open(os.path.join(self.dir, "stderr.txt"), encoding="utf-8", errors="replace").read()
        if err.strip():
            raise AssertionError(f"{self.name} {self.args} wrote to stderr:\n{err[:3000]}")

    def events(self) -> list[dict]:
        p = os.path.join(self.dir, "events.jsonl")
        if not os.path.exists(p):
            return []
        with open(p, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

    def markers(self, name: str) -> list[dict]:
        return [e for e in self.events() if e.get("event") == name]

    async def wait_marker(self, name: str, timeout: float = 5.0, **match) -> dict:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for e in self.markers(name):
                if all(e.get(k) == v for k, v in match.items()):
                    return e
            await asyncio.sleep(0.05)
        raise AssertionError(f"{self.name}: marker {name} {match} not seen; events tail: {self.events()[-8:]}")

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"


def check(cond: bool, what: str) -> None:
    if not cond:
        raise AssertionError(what)


def frames(pcm: bytes, size: int) -> list[bytes]:
    return [pcm[i:i + size] for i in range(0, len(pcm), size)]


def utterance_8k(lead_ms: int = 200, tail_ms: int = 600) -> bytes:
    return bytes(16 * lead_ms) + SPEECH_8K + bytes(16 * tail_ms)


async def paced(chunks: list[bytes], send, period: float = 0.02) -> None:
    t0 = time.monotonic()
    for i, c in enumerate(chunks):
        await send(c)
        d = t0 + (i + 1) * period - time.monotonic()
        if d > 0:
            await asyncio.sleep(d)


def read_wav_info(path: str) -> tuple[int, int]:
    with wave.open(path, "rb") as w:
        return w.getframerate(), w.getnframes()


class WsEvents:
    """Collects JSON events from a client WebSocket; expect() waits for a type."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse):
        self.ws = ws
        self.all: list[dict] = []
        self.raw_text: list[str] = []
        self.closed = asyncio.Event()
        self.cond = asyncio.Condition()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            async for m in self.ws:
                if m.type == aiohttp.WSMsgType.TEXT:
                    self.raw_text.append(m.data)
                    try:
                        ev = json.loads(m.data)
                    except ValueError:
                        ev = {"type": "<invalid json>", "text": m.data}
                    ev["_t"] = time.monotonic()
                    async with self.cond:
                        self.all.append(ev)
                        self.cond.notify_all()
                elif m.type == aiohttp.WSMsgType.BINARY:
                    async with self.cond:
                        self.all.append({"type": "<binary>", "len": len(m.data), "_t": time.monotonic()})
                        self.cond.notify_all()
        finally:
            self.closed.set()
            async with self.cond:
                self.cond.notify_all()

    async def expect(self, typ: str, timeout: float = 5.0, after: int = 0, **match) -> tuple[int, dict]:
        end = time.monotonic() + timeout
        async with self.cond:
            while True:
                for i in range(after, len(self.all)):
                    e = self.all[i]
                    if e.get("type") == typ and all(e.get(k) == v for k, v in match.items()):
                        return i, e
                left = end - time.monotonic()
                if left <= 0 or self.closed.is_set():
                    types = [e.get("type") for e in self.all[after:]][-15:]
                    raise AssertionError(f"event {typ} {match} not received (closed={self.closed.is_set()}); "
                                         f"got {types}")
                try:
                    await asyncio.wait_for(self.cond.wait(), left)
                except asyncio.TimeoutError:
                    pass

    def of(self, typ: str, after: int = 0) -> list[dict]:
        return [e for e in self.all[after:] if e.get("type") == typ]


# ====================================================================== OpenAI Realtime
async def t_openai_ga_pcmu_turn_and_barge_in():
    async with Fake("fake_openai_realtime", "--transcript", "first words") as f, aiohttp.ClientSession() as s:
        url = f"{f.ws}/v1/realtime?model=gpt-realtime"
        # wrong key -> 401 before the upgrade
        try:
            await s.ws_connect(url, headers={"Authorization": "Bearer nope"})
            raise AssertionError("wrong key accepted")
        except aiohttp.WSServerHandshakeError as e:
            check(e.status == 401, f"wrong key gave {e.status}")
        ws = await s.ws_connect(url, headers={"Authorization": "Bearer test-key"})
        ev = WsEvents(ws)
        await ev.expect("session.created")
        # GA shape without session.type -> error event like the real API
        await ws.send_json({"type": "session.update", "session": {"audio": {"input": {"format": {"type": "audio/pcmu"}}}}})
        _, err = await ev.expect("error")
        check(err["error"]["param"] == "session.type", f"error {err}")
        await ws.send_json({"type": "session.update", "session": {
            "type": "realtime", "instructions": "be brief",
            "audio": {"input": {"format": {"type": "audio/pcmu"}, "turn_detection": {"type": "server_vad"}},
                      "output": {"format": {"type": "audio/pcmu"}, "voice": "alloy"}}}})
        _, upd = await ev.expect("session.updated")
        check(upd["session"]["audio"]["output"]["format"]["type"] == "audio/pcmu", "session.updated format")
        ulaw = common.ulaw_encode(utterance_8k())

        async def send_audio(c):
            await ws.send_json({"type": "input_audio_buffer.append", "audio": common.b64(c)})

        await paced(frames(ulaw, 160), send_audio)
        i, st = await ev.expect("input_audio_buffer.speech_started")
        check(150 <= st["audio_start_ms"] <= 260, f"audio_start_ms {st['audio_start_ms']}")
        i, _ = await ev.expect("input_audio_buffer.speech_stopped", after=i)
        i, _ = await ev.expect("input_audio_buffer.committed", after=i)
        i, tr = await ev.expect("conversation.item.input_audio_transcription.completed", after=i)
        check(tr["transcript"] == "first words", "transcript")
        i, _ = await ev.expect("response.created", after=i)
        i, done = await ev.expect("response.done", after=i, timeout=5)
        deltas = ev.of("response.output_audio.delta")
        total = sum(len(common.b64decode_strict(d["delta"])) for d in deltas)
        check(total == 12000, f"reply bytes {total} (1.5 s of 8 kHz mu-law expected)")
        check(len(deltas) == 15, f"{len(deltas)} deltas, expected 100 ms chunks")
        burst = deltas[-1]["_t"] - deltas[0]["_t"]
        check(burst < 1.0, f"deltas took {burst:.2f}s, should be faster than real time")
        check(ev.of("response.output_audio_transcript.done")[0]["transcript"] == "hello caller", "reply transcript")
        check(done["response"]["status"] == "completed", "response status")
        item_id = deltas[0]["item_id"]
        # barge-in: speak again while the 1.5 s reply is still "playing"
        t_reply = deltas[0]["_t"]
        n = len(ev.all)
        await paced(frames(common.ulaw_encode(SPEECH_8K[:3200]), 160), send_audio)
        _, st2 = await ev.expect("input_audio_buffer.speech_started", after=n)
        played = int((time.monotonic() - t_reply) * 1000)
        await ws.send_json({"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0,
                            "audio_end_ms": played})
        _, tru = await ev.expect("conversation.item.truncated", after=n)
        check(tru["audio_end_ms"] == played, "truncated echo")
        await f.wait_marker("barge_in_detected")
        m = await f.wait_marker("truncate")
        check(m["audio_end_ms"] == played and m["item_id"] == item_id, f"truncate marker {m}")
        # truncating beyond the audio length is an error, like the real API
        await ws.send_json({"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0,
                            "audio_end_ms": 99999})
        await ev.expect("error", after=n)
        await ws.close()
        await f.wait_marker("closed")
        rate, nframes = read_wav_info(os.path.join(f.dir, "input.wav"))
        check(rate == 8000 and nframes >= 8000 * 1.3, f"input.wav {rate} Hz {nframes} frames")
        fm = f.markers("session_format")[-1]
        check(fm["shape"] == "ga" and fm["input"] == "pcmu" and fm["output"] == "pcmu", f"session_format {fm}")
        ins = [e for e in f.events() if e.get("dir") == "in" and e.get("type") == "input_audio_buffer.append"]
        check(ins and ins[0]["audio_bytes"] == 160 and "audio" not in ins[0], "append recorded with audio_bytes")
        outs = [e for e in f.events() if e.get("dir") == "out" and e.get("type") == "response.output_audio.delta"]
        check(outs and outs[0]["delta_bytes"] == 800, "delta recorded with delta_bytes")
        for name in ("reply_started", "reply_finished", "speech_started", "speech_stopped"):
            check(f.markers(name), f"marker {name}")


async def t_openai_beta_pcm16_tool_call():
    async with Fake("fake_openai_realtime", "--beta-names", "--tool-call", "transfer_call",
                    "--tool-args", '{"exten":"100"}') as f, aiohttp.ClientSession() as s:
        ws = await s.ws_connect(f"{f.ws}/v1/realtime?model=gpt-4o-realtime-preview",
                                headers={"Authorization": "Bearer test-key", "OpenAI-Beta": "realtime=v1"})
        ev = WsEvents(ws)
        await ev.expect("session.created")
        await ws.send_json({"type": "session.update", "session": {
            "input_audio_format": "pcm16", "output_audio_format": "pcm16", "turn_detection": {"type": "server_vad"}}})
        await ev.expect("session.updated")
        pcm = bytes(2 * 4800) + SPEECH_24K + bytes(2 * 24 * 600)

        async def send_audio(c):
            await ws.send_json({"type": "input_audio_buffer.append", "audio": common.b64(c)})

        await paced(frames(pcm, 960), send_audio)
        _, fc = await ev.expect("response.function_call_arguments.done")
        check(fc["name"] == "transfer_call" and json.loads(fc["arguments"]) == {"exten": "100"}, f"call {fc}")
        i, _ = await ev.expect("response.done")
        check(not ev.of("response.audio.delta"), "no audio in the tool response")
        await ws.send_json({"type": "conversation.item.create", "item": {
            "type": "function_call_output", "call_id": fc["call_id"], "output": "{\"ok\":true}"}})
        await ev.expect("conversation.item.created", after=i)
        await ws.send_json({"type": "response.create"})
        i, _ = await ev.expect("response.done", after=i + 1)
        deltas = ev.of("response.audio.delta")
        total = sum(len(common.b64decode_strict(d["delta"])) for d in deltas)
        check(total == 72000, f"pcm16 reply bytes {total}")
        check(ev.of("response.audio_transcript.done"), "beta transcript name")
        m = await f.wait_marker("function_call_output")
        check(m["call_id"] == "call_1" and m["output"] == "{\"ok\":true}", f"marker {m}")
        await f.wait_marker("response_create")
        fm = f.markers("session_format")[-1]
        check(fm["shape"] == "beta" and fm["input"] == "pcm16" and fm["beta_header"], f"session_format {fm}")
        await ws.close()
        await f.wait_marker("closed")
        rate, _ = read_wav_info(os.path.join(f.dir, "input.wav"))
        check(rate == 24000, "input.wav at 24 kHz for pcm16")


async def ws_handshake_status(url: str, headers: dict | None = None) -> int | None:
    async with aiohttp.ClientSession() as s:
        try:
            ws = await s.ws_connect(url, headers=headers or {})
            await ws.close()
            return 101
        except aiohttp.WSServerHandshakeError as e:
            return e.status


async def t_openai_failure_modes():
    hdr = {"Authorization": "Bearer test-key"}
    async with Fake("fake_openai_realtime", "--mode", "http500") as f:
        check(await ws_handshake_status(f"{f.ws}/v1/realtime?model=m", hdr) == 500, "http500")
    async with Fake("fake_openai_realtime", "--mode", "slow-start:700") as f:
        t = time.monotonic()
        check(await ws_handshake_status(f"{f.ws}/v1/realtime?model=m", hdr) == 101, "slow-start connects")
        check(time.monotonic() - t >= 0.65, "slow-start delay")
    async with Fake("fake_openai_realtime", "--mode", "disconnect-after:300") as f, aiohttp.ClientSession() as s:
        ws = await s.ws_connect(f"{f.ws}/v1/realtime?model=m", headers=hdr)
        t = time.monotonic()
        ev = WsEvents(ws)
        await asyncio.wait_for(ev.closed.wait(), 3)
        dt = time.monotonic() - t
        check(0.2 <= dt <= 1.5, f"disconnect after {dt:.2f}s")
        check(ws.close_code != 1000, f"abrupt close, got code {ws.close_code}")
    async with Fake("fake_openai_realtime", "--mode", "garbage") as f, aiohttp.ClientSession() as s:
        ws = await s.ws_connect(f"{f.ws}/v1/realtime?model=m", headers=hdr)
        ev = WsEvents(ws)
        _, e = await ev.expect("error")
        check(e["error"]["type"] == "server_error" and e["error"]["message"] == "boom", "boom error")
        check(ev.of("<invalid json>") and ev.of("<binary>"), "invalid frames sent")
        await ws.close()
    async with Fake("fake_openai_realtime", "--mode", "silent") as f, aiohttp.ClientSession() as s:
        ws = await s.ws_connect(f"{f.ws}/v1/realtime?model=m", headers=hdr)
        ev = WsEvents(ws)
        for c in frames(bytes(2 * 24 * 200) + SPEECH_24K + bytes(2 * 24 * 600), 960):
            await ws.send_json({"type": "input_audio_buffer.append", "audio": common.b64(c)})
        await f.wait_marker("speech_stopped")
        await asyncio.sleep(0.3)
        check(not ev.all, f"silent mode sent {ev.all[:2]}")
        await ws.close()
    # bad client input: invalid JSON -> error event + close, server survives
    async with Fake("fake_openai_realtime") as f, aiohttp.ClientSession() as s:
        ws = await s.ws_connect(f"{f.ws}/v1/realtime?model=m", headers=hdr)
        ev = WsEvents(ws)
        await ev.expect("session.created")
        await ws.send_str("{nope")
        await ev.expect("error")
        await asyncio.wait_for(ev.closed.wait(), 3)
        await f.wait_marker("client_error")
        check(await ws_handshake_status(f"{f.ws}/v1/realtime?model=m", hdr) == 101, "still serving")


# ====================================================================== AVR STS
async def t_sts_turn_dtmf_barge_in():
    async with Fake("fake_avr_sts", "--transcript", "user said", "--greeting") as f, aiohttp.ClientSession() as s:
        # anything but init first -> error + close
        ws = await s.ws_connect(f"{f.ws}/")
        ev = WsEvents(ws)
        await ws.send_json({"type": "audio", "audio": common.b64(bytes(320))})
        await ev.expect("error")
        await asyncio.wait_for(ev.closed.wait(), 3)

        ws = await s.ws_connect(f"{f.ws}/some/path")
        ev = WsEvents(ws)
        u = str(uuidlib.uuid4())
        await ws.send_json({"type": "init", "uuid": u})
        i, _ = await ev.expect("transcript", role="agent")  # greeting
        greet = ev.of("audio")
        check(sum(len(common.b64decode_strict(a["audio"])) for a in greet) == 24000, "greeting audio length")
        await ws.send_json({"type": "dtmf_digit", "digit": "5"})
        await asyncio.sleep(1.6)  # let the greeting's play time pass
        n = len(ev.all)

        async def send_audio(c):
            await ws.send_json({"type": "audio", "audio": common.b64(c)})

        await paced(frames(utterance_8k(), 320), send_audio)
        i, t = await ev.expect("transcript", role="user", after=n)
        check(t["text"] == "user said", "user transcript")
        i, _ = await ev.expect("transcript", role="agent", after=i)
        sizes = [len(common.b64decode_strict(a["audio"])) for a in ev.of("audio", after=n)]
        check(sum(sizes) == 24000 and 16000 in sizes and 1120 in sizes, f"reply chunk sizes {sizes}")
        n = len(ev.all)
        await paced(frames(SPEECH_8K[:4800], 320), send_audio)
        await ev.expect("interruption", after=n)
        await f.wait_marker("barge_in_detected")
        m = await f.wait_marker("dtmf")
        check(m["digit"] == "5", "dtmf marker")
        check((await f.wait_marker("init"))["uuid"] == u, "uuid marker")
        await ws.close()
        await f.wait_marker("closed", conn=2)
        rate, nframes = read_wav_info(os.path.join(f.dir, "input.wav"))
        check(rate == 8000 and nframes >= 8000, f"input.wav {rate} {nframes}")
    async with Fake("fake_avr_sts", "--mode", "http500") as f:
        check(await ws_handshake_status(f"{f.ws}/") == 500, "sts http500")
    async with Fake("fake_avr_sts", "--mode", "garbage") as f, aiohttp.ClientSession() as s:
        ws = await s.ws_connect(f"{f.ws}/")
        ev = WsEvents(ws)
        await ev.expect("<invalid json>")
        await ws.close()


# ====================================================================== AudioSocket
async def read_frame(r: asyncio.StreamReader) -> tuple[int, bytes]:
    h = await r.readexactly(3)
    kind, ln = struct.unpack(">BH", h)
    return kind, await r.readexactly(ln)


async def t_audiosocket_turn_pacing_barge_in():
    async with Fake("fake_audiosocket") as f:
        r, w = await asyncio.open_connection("127.0.0.1", f.port)
        u = uuidlib.uuid4()
        w.write(struct.pack(">BH", 0x01, 16) + u.bytes)
        w.write(struct.pack(">BH", 0x03, 1) + b"7")
        got: list[tuple[float, int, int]] = []

        async def reader():
            try:
                while True:
                    k, p = await read_frame(r)
                    got.append((time.monotonic(), k, len(p)))
            except (asyncio.IncompleteReadError, ConnectionError):
                pass

        rt = asyncio.create_task(reader())

        async def send(c):
            w.write(struct.pack(">BH", 0x10, len(c)) + c)
            await w.drain()

        await paced(frames(utterance_8k(tail_ms=500), 320), send)
        await paced(frames(bytes(8000), 320), send)  # 0.5 s quiet while the reply plays
        check(got and all(k == 0x10 and n == 320 for _, k, n in got), f"reply frames {got[:3]}")
        await paced(frames(SPEECH_8K[:4800], 320), send)  # barge in
        await f.wait_marker("barge_in_detected")
        fin = await f.wait_marker("reply_finished")
        check(fin["cancelled"] and fin["frames"] < 75, f"reply cut by barge-in: {fin}")
        n_at_cut = len(got)
        await asyncio.sleep(0.2)
        check(len(got) - n_at_cut <= 2, "no frames after barge-in")
        span = got[-1][0] - got[0][0]
        check(span >= (len(got) - 1) * 0.02 - 0.06, f"paced: {len(got)} frames over {span:.2f}s")
        w.write(struct.pack(">BH", 0x00, 0))
        await w.drain()
        await f.wait_marker("hangup")
        check((await f.wait_marker("dtmf"))["digit"] == "7", "dtmf")
        check((await f.wait_marker("uuid"))["uuid"] == str(u), "uuid")
        rt.cancel()
        w.close()
        rate, nframes = read_wav_info(os.path.join(f.dir, "input.wav"))
        check(rate == 8000 and nframes >= 8000 * 1.5, f"input.wav {rate} {nframes}")
    async with Fake("fake_audiosocket", "--hangup-after-reply") as f:
        r, w = await asyncio.open_connection("127.0.0.1", f.port)
        w.write(struct.pack(">BH", 0x01, 16) + uuidlib.uuid4().bytes)

        async def send(c):
            w.write(struct.pack(">BH", 0x10, len(c)) + c)
            await w.drain()

        sender = asyncio.create_task(paced(frames(utterance_8k() + bytes(16 * 2500), 320), send))
        kinds = []
        try:
            while True:
                k, p = await asyncio.wait_for(read_frame(r), 5)
                kinds.append(k)
                if k == 0x00:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        sender.cancel()
        check(kinds.count(0x10) == 75 and kinds[-1] == 0x00, f"75 audio frames then hangup: {len(kinds)}")
        w.close()
    async with Fake("fake_audiosocket", "--mode", "garbage") as f:
        r, w = await asyncio.open_connection("127.0.0.1", f.port)
        w.write(struct.pack(">BH", 0x01, 16) + uuidlib.uuid4().bytes)
        await w.drain()
        k, p = await read_frame(r)
        check(k == 0x42, "unknown kind first")
        try:
            await asyncio.wait_for(read_frame(r), 3)
            raise AssertionError("truncated frame read whole")
        except asyncio.IncompleteReadError:
            pass
        w.close()
    async with Fake("fake_audiosocket", "--mode", "disconnect-after:300") as f:
        r, w = await asyncio.open_connection("127.0.0.1", f.port)
        w.write(struct.pack(">BH", 0x01, 16) + uuidlib.uuid4().bytes)
        t = time.monotonic()
        try:
            await asyncio.wait_for(r.read(), 3)
        except ConnectionError:
            pass
        check(0.2 <= time.monotonic() - t <= 1.5, "disconnect timing")
        w.close()


# ====================================================================== AVR pipeline
def parse_concat_json(text: str) -> list[dict]:
    dec = json.JSONDecoder()
    out, i = [], 0
    while i < len(text):
        obj, i = dec.raw_decode(text, i)
        out.append(obj)
    return out


async def t_pipeline():
    async with Fake("fake_avr_pipeline", "--transcript", "one", "--transcript", "two", "--think") as f, \
            aiohttp.ClientSession() as s:
        # ASR full duplex: the transcript must come back while the request body is still streaming
        state = {"done": False}
        audio = utterance_8k() + SPEECH_8K + bytes(16 * 600) + bytes(16 * 1000)

        async def body():
            t0 = time.monotonic()
            for i, c in enumerate(frames(audio, 320)):
                yield c
                d = t0 + (i + 1) * 0.02 - time.monotonic()
                if d > 0:
                    await asyncio.sleep(d)
            state["done"] = True

        async with s.post(f"{f.http}/asr", data=body(), headers={"X-UUID": "abc", "Content-Type": "audio/l16"}) as r:
            check(r.status == 200, f"asr status {r.status}")
            texts = []
            async for chunk in r.content.iter_any():
                texts.append((chunk.decode(), state["done"]))
        check([t for t, _ in texts] == ["one", "two"], f"asr chunks {texts}")
        check(not texts[0][1], "first transcript arrived while the body was still streaming")
        check((await f.wait_marker("asr_started"))["uuid"] == "abc", "X-UUID")
        rate, nframes = read_wav_info(os.path.join(f.dir, "input.wav"))
        check(rate == 8000 and nframes >= len(audio) // 2 - 320, f"input.wav {nframes}")
        # LLM
        req = {"uuid": "abc", "message": "one", "messages": [{"role": "user", "content": "one"}]}
        async with s.post(f"{f.http}/llm", json=req) as r:
            chunks = [c async for c in r.content.iter_any()]
        objs = parse_concat_json(b"".join(chunks).decode())
        text = "".join(o["content"] for o in objs if o["type"] == "text")
        check(text == "<think>secret</think>Hello caller. How can I help?", f"llm text {text!r}")
        check(len(objs) > 5 and len(chunks) > 3, f"llm pieces {len(objs)} objs / {len(chunks)} chunks")
        m = await f.wait_marker("llm_request")
        check(m["message"] == "one" and m["n_messages"] == 1, "llm marker")
        # TTS
        async with s.post(f"{f.http}/tts", json={"text": "Hello caller."}) as r:
            check(r.headers["Content-Type"].startswith("audio/l16"), "tts content type")
            chunks = [c async for c in r.content.iter_any()]
        total = sum(map(len, chunks))
        check(total == len(common.ReplyAudio(None).for_text("Hello caller.", 8000)), f"tts bytes {total}")
        check(len(chunks) >= 2, "tts in several chunks")
        check((await f.wait_marker("tts_text"))["text"] == "Hello caller.", "tts marker")
        async with s.post(f"{f.http}/tts", json={"text": ""}) as r:
            check(r.status == 400, "empty tts text -> 400")
        # barge-in: caller speech on the ASR stream while TTS audio would still be playing
        async with s.post(f"{f.http}/tts", json={"text": "A longer sentence to speak."}) as r:
            await r.read()

        async def speech_body():
            for c in frames(SPEECH_8K + bytes(16 * 500), 320):
                yield c
                await asyncio.sleep(0.02)

        async with s.post(f"{f.http}/asr", data=speech_body(), headers={"X-UUID": "abc"}) as r:
            await r.read()
        m = await f.wait_marker("barge_in_detected")
        check(m["into_reply_ms"] < 1620, f"barge-in marker {m}")
    async with Fake("fake_avr_pipeline", "--mode", "http500", "--fail-route", "tts") as f, aiohttp.ClientSession() as s:
        async with s.post(f"{f.http}/tts", json={"text": "x"}) as r:
            check(r.status == 500, "tts 500")
        async with s.post(f"{f.http}/prompt-stream", json={"uuid": "u", "message": "m", "messages": []}) as r:
            check(r.status == 200, "llm unaffected")
            await r.read()
    async with Fake("fake_avr_pipeline", "--mode", "disconnect-after:200", "--fail-route", "llm") as f, \
            aiohttp.ClientSession() as s:
        try:
            async with s.post(f"{f.http}/llm", json={"uuid": "u", "message": "m", "messages": []}) as r:
                await r.read()
            raise AssertionError("llm body completed despite disconnect-after")
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
            pass
    async with Fake("fake_avr_pipeline", "--mode", "slow-start:500", "--fail-route", "asr") as f, \
            aiohttp.ClientSession() as s:
        async def short():
            yield bytes(320)

        t = time.monotonic()
        async with s.post(f"{f.http}/asr", data=short()) as r:
            check(r.status == 200 and time.monotonic() - t >= 0.45, "asr slow start")
            await r.read()


# ====================================================================== OpenAI-compatible
async def t_openai_compat():
    async with Fake("fake_openai_compat", "--api-key", "k", "--transcript", "hi there") as f, \
            aiohttp.ClientSession(headers={"Authorization": "Bearer k"}) as s:
        async with aiohttp.ClientSession() as bare:
            async with bare.post(f"{f.http}/v1/chat/completions", json={"messages": []}) as r:
                check(r.status == 401, "api key required")
        wav = common.wav_bytes(bytes(3200) + common.tone(0.5, 16000, 300, 6000), 16000)
        fd = aiohttp.FormData()
        fd.add_field("file", wav, filename="u.wav", content_type="audio/wav")
        fd.add_field("model", "whisper-1")
        async with s.post(f"{f.http}/v1/audio/transcriptions", data=fd) as r:
            j = await r.json()
        check(j == {"text": "hi there"}, f"transcription {j}")
        m = await f.wait_marker("utterance")
        check(m["rate"] == 16000 and 590 <= m["duration_ms"] <= 610, f"utterance marker {m}")
        check(os.path.exists(os.path.join(f.dir, "utterance_1.wav")), "utterance_1.wav")
        # streaming chat
        msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "hi there"}]
        async with s.post(f"{f.http}/v1/chat/completions", json={"model": "m", "stream": True, "messages": msgs}) as r:
            check(r.headers["Content-Type"].startswith("text/event-stream"), "sse content type")
            raw = (await r.read()).decode()
        content, done = "", False
        for line in raw.split("\n"):
            if line.startswith("data: "):
                d = line[6:]
                if d == "[DONE]":
                    done = True
                    continue
                c = json.loads(d)
                check(c["object"] == "chat.completion.chunk", "chunk object")
                content += c["choices"][0]["delta"].get("content") or ""
        check(done and content == "Hello caller. How can I help?", f"sse content {content!r} done={done}")
        m = await f.wait_marker("chat_request")
        check(m["stream"] and m["last_user"] == "hi there", "chat marker")
        async with s.post(f"{f.http}/v1/chat/completions", json={"model": "m", "messages": msgs}) as r:
            j = await r.json()
        check(j["choices"][0]["message"]["content"] == "Hello caller. How can I help?", "non-stream completion")
        # speech pcm + wav
        async with s.post(f"{f.http}/v1/audio/speech",
                          json={"model": "tts-1", "input": "Hello caller.", "voice": "alloy", "response_format": "pcm"}) as r:
            pcm = await r.read()
        check(len(pcm) == len(common.ReplyAudio(None).for_text("Hello caller.", 24000)), f"pcm bytes {len(pcm)}")
        async with s.post(f"{f.http}/v1/audio/speech",
                          json={"model": "tts-1", "input": "Hello caller.", "voice": "alloy", "response_format": "wav"}) as r:
            data = await r.read()
        pcm2, rate, ch = common.parse_wav_bytes(data)
        check(rate == 22050 and ch == 1 and len(pcm2) > 0, f"wav {rate} {ch}")
        check((await f.wait_marker("speech_request", response_format="wav"))["text"] == "Hello caller.", "speech marker")
    async with Fake("fake_openai_compat", "--mode", "garbage", "--fail-route", "chat") as f, aiohttp.ClientSession() as s:
        async with s.post(f"{f.http}/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]}) as r:
            body = await r.read()
        try:
            json.loads(body)
            raise AssertionError("garbage body parsed as JSON")
        except ValueError:
            pass


# ====================================================================== webhook
async def t_webhook():
    resp = json.dumps({"sts_url": "ws://127.0.0.1:1/x"})
    async with Fake("fake_webhook", "--call-initiated-response", resp) as f, aiohttp.ClientSession() as s:
        hdr = {"X-AVR-WEBHOOK-SECRET": "sekrit"}
        ev = {"uuid": "u1", "type": "call_initiated", "timestamp": "2024-01-01T00:00:00Z", "payload": {}}
        async with s.post(f"{f.http}/hooks", json=ev, headers=hdr) as r:
            check(r.status == 200 and await r.json() == {"sts_url": "ws://127.0.0.1:1/x"}, "call_initiated override")
        async with s.post(f"{f.http}/hooks", json={**ev, "type": "call_started"}, headers=hdr) as r:
            check(await r.json() == {}, "call_started {}")
        ins = [e for e in f.events() if e.get("dir") == "in"]
        check(ins[0]["secret"] == "sekrit" and ins[0]["body"]["type"] == "call_initiated"
              and ins[0]["path"] == "/hooks", f"recorded {ins[0]}")
    async with Fake("fake_webhook", "--mode", "http500", "--fail-count", "2") as f, aiohttp.ClientSession() as s:
        codes = []
        for _ in range(3):
            async with s.post(f.http, json={"type": "call_ended"}) as r:
                codes.append(r.status)
        check(codes == [500, 500, 200], f"retry codes {codes}")
    async with Fake("fake_webhook", "--mode", "slow-start:400") as f, aiohttp.ClientSession() as s:
        t = time.monotonic()
        async with s.post(f.http, json={"type": "call_ended"}) as r:
            await r.read()
        check(time.monotonic() - t >= 0.38, "slow webhook")


# ====================================================================== failure-mode matrix
async def http_call(s: aiohttp.ClientSession, url: str, timeout: float = 1.5, **kw) -> tuple[str, object, float]:
    """-> (outcome, detail, seconds); outcome: status code text | 'timeout' | 'cut'."""
    t = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            async with s.post(url, **kw) as r:
                body = await r.read()
                return str(r.status), body, time.monotonic() - t
    except TimeoutError:
        return "timeout", None, time.monotonic() - t
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as e:
        return "cut", repr(e), time.monotonic() - t


def valid_body(route: str, body: bytes) -> bool:
    try:
        if route in ("asr", "tts", "pcm"):
            return len(body) % 2 == 0 if route != "asr" else body.decode("utf-8") is not None
        if route == "llm":
            return bool(parse_concat_json(body.decode()))
        if route == "sse":
            return body.decode().rstrip().endswith("data: [DONE]")
        json.loads(body)
        return True
    except ValueError:
        return False


async def t_http_failure_mode_matrix():
    async def asr_body():
        for _ in range(10):
            yield bytes(320)
            await asyncio.sleep(0.02)

    wav = common.wav_bytes(bytes(3200), 8000)

    def form():
        fd = aiohttp.FormData()
        fd.add_field("file", wav, filename="u.wav", content_type="audio/wav")
        fd.add_field("model", "whisper-1")
        return fd

    calls = {
        "fake_avr_pipeline": [("asr", "/asr", lambda: {"data": asr_body()}),
                              ("llm", "/llm", lambda: {"json": {"uuid": "u", "message": "m", "messages": []}}),
                              ("tts", "/tts", lambda: {"json": {"text": "hello"}})],
        "fake_openai_compat": [("json", "/v1/audio/transcriptions", lambda: {"data": form()}),
                               ("sse", "/v1/chat/completions",
                                lambda: {"json": {"stream": True, "messages": [{"role": "user", "content": "x"}]}}),
                               ("pcm", "/v1/audio/speech",
                                lambda: {"json": {"input": "hi", "model": "m", "voice": "v", "response_format": "pcm"}})],
        "fake_webhook": [("json", "/", lambda: {"json": {"type": "call_started"}})],
    }
    for fake, routes in calls.items():
        for mode in ("normal", "http500", "garbage", "slow-start:400", "disconnect-after:200", "silent"):
            async with Fake(fake, "--mode", mode) as f, aiohttp.ClientSession() as s:
                for kind, path, kw in routes:
                    out, body, dt = await http_call(s, f.http + path, **kw())
                    what = f"{fake} {path} mode {mode}: {out} after {dt:.2f}s"
                    if mode == "normal":
                        check(out == "200" and valid_body(kind, body), what)
                    elif mode == "http500":
                        check(out == "500", what)
                    elif mode == "garbage":
                        check(out == "200" and (kind in ("asr", "tts", "pcm") or not valid_body(kind, body)), what)
                        check(len(body) % 2 == 1, what + " (odd byte count)")
                    elif mode.startswith("slow-start"):
                        check(out == "200" and dt >= 0.38 and valid_body(kind, body), what)
                    elif mode.startswith("disconnect-after"):
                        check(out == "cut" and 0.15 <= dt <= 1.2, what)
                    elif mode == "silent":
                        check(out == "timeout", what)
            # the fake must still be fine: no traceback (checked on exit)


async def t_ws_and_tcp_failure_modes():
    async with Fake("fake_avr_sts", "--mode", "slow-start:500") as f:
        t = time.monotonic()
        check(await ws_handshake_status(f"{f.ws}/") == 101 and time.monotonic() - t >= 0.45, "sts slow-start")
    async with Fake("fake_avr_sts", "--mode", "disconnect-after:300") as f, aiohttp.ClientSession() as s:
        ws = await s.ws_connect(f"{f.ws}/")
        ev = WsEvents(ws)
        await ws.send_json({"type": "init", "uuid": "u"})
        await asyncio.wait_for(ev.closed.wait(), 3)
        check(ws.close_code != 1000, "sts abrupt close")
    async with Fake("fake_avr_sts", "--mode", "silent", "--greeting") as f, aiohttp.ClientSession() as s:
        ws = await s.ws_connect(f"{f.ws}/")
        ev = WsEvents(ws)
        await ws.send_json({"type": "init", "uuid": "u"})
        for c in frames(utterance_8k(), 320):
            await ws.send_json({"type": "audio", "audio": common.b64(c)})
        await f.wait_marker("speech_stopped")
        await asyncio.sleep(0.3)
        check(not ev.all, "sts silent")
        await ws.close()
    async with Fake("fake_avr_sts", "--tool-call", "avr_hangup", "--spurious-interruption",
                    "--chunk-ms", "333,20") as f, aiohttp.ClientSession() as s:
        ws = await s.ws_connect(f"{f.ws}/")
        ev = WsEvents(ws)
        await ws.send_json({"type": "init", "uuid": "u"})
        for c in frames(utterance_8k(), 320):
            await ws.send_json({"type": "audio", "audio": common.b64(c)})
        _, inv = await ev.expect("tool_invocation")
        check(inv["toolName"] == "avr_hangup", "tool_invocation")
        await ws.send_json({"type": "tool_result", "invocationId": inv["invocationId"], "result": "ok"})
        await f.wait_marker("tool_result")
        sizes = {len(common.b64decode_strict(a["audio"])) for a in ev.of("audio")}
        check({5328, 320} <= sizes, f"chunk sizes {sizes}")
        await ev.expect("interruption", timeout=3)  # spurious one at the end of play time
        await ws.close()
    async with Fake("fake_audiosocket", "--mode", "http500") as f:
        r, w = await asyncio.open_connection("127.0.0.1", f.port)
        w.write(struct.pack(">BH", 0x01, 16) + uuidlib.uuid4().bytes)
        k, p = await asyncio.wait_for(read_frame(r), 3)
        check(k == 0xFF and p == b"\x01", "error frame")
        check(await asyncio.wait_for(r.read(), 3) == b"", "closed after error frame")
        w.close()
    async with Fake("fake_audiosocket", "--mode", "silent", "--greeting") as f:
        r, w = await asyncio.open_connection("127.0.0.1", f.port)
        w.write(struct.pack(">BH", 0x01, 16) + uuidlib.uuid4().bytes)
        for c in frames(utterance_8k(), 320):
            w.write(struct.pack(">BH", 0x10, len(c)) + c)
        await f.wait_marker("speech_stopped")
        try:
            await asyncio.wait_for(r.read(1), 0.5)
            raise AssertionError("silent audiosocket sent bytes")
        except asyncio.TimeoutError:
            pass
        w.close()
    async with Fake("fake_audiosocket", "--mode", "slow-start:400", "--greeting") as f:
        r, w = await asyncio.open_connection("127.0.0.1", f.port)
        t = time.monotonic()
        w.write(struct.pack(">BH", 0x01, 16) + uuidlib.uuid4().bytes)
        await asyncio.wait_for(read_frame(r), 3)
        check(time.monotonic() - t >= 0.38, "audiosocket slow start")
        w.close()
    # bad client input on the TCP server: garbage instead of a UUID frame
    async with Fake("fake_audiosocket") as f:
        r, w = await asyncio.open_connection("127.0.0.1", f.port)
        w.write(b"GET / HTTP/1.1\r\n\r\n")
        check(await asyncio.wait_for(r.read(), 3) == b"", "closed on garbage")
        await f.wait_marker("client_error")
        w.close()


TESTS = [
    t_openai_ga_pcmu_turn_and_barge_in,
    t_openai_beta_pcm16_tool_call,
    t_openai_failure_modes,
    t_sts_turn_dtmf_barge_in,
    t_audiosocket_turn_pacing_barge_in,
    t_pipeline,
    t_openai_compat,
    t_webhook,
    t_http_failure_mode_matrix,
    t_ws_and_tcp_failure_modes,
]


async def amain(words: list[str]) -> int:
    passed = failed = 0
    for t in TESTS:
        if words and not any(w in t.__name__ for w in words):
            continue
        t0 = time.monotonic()
        try:
            await asyncio.wait_for(t(), 90)
            passed += 1
            print(f"ok   {t.__name__} ({time.monotonic() - t0:.1f}s)", flush=True)
        except BaseException as e:  # noqa: BLE001
            if isinstance(e, KeyboardInterrupt):
                raise
            failed += 1
            print(f"FAIL {t.__name__}: {e!r}", flush=True)
            traceback.print_exc()
    print(f"{passed} passed, {failed} failed")
    return 1 if failed or not passed else 0


if __name__ == "__main__":
    rc = asyncio.run(amain(sys.argv[1:]))
    if rc == 0:
        shutil.rmtree(TMP, ignore_errors=True)
    else:
        print(f"recordings kept in {TMP}")
    sys.exit(rc)
