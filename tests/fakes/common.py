"""Shared parts of the fake provider servers used by agentline's integration tests.

Pure stdlib (Python 3.11): G.711 codecs, linear resampling, WAV I/O, tone
generation, an energy VAD, the events.jsonl / input.wav recorder, failure-mode
parsing, the common command line and the READY handshake.
"""
from __future__ import annotations

import argparse
import array
import asyncio
import base64
import binascii
import io
import json
import math
import os
import signal
import socket
import struct
import sys
import threading
import time
import wave
from typing import Any, Callable, Iterable

# --------------------------------------------------------------------------
# G.711 (ITU-T), implemented here because audioop is gone in Python 3.13.
# --------------------------------------------------------------------------

_BIAS = 0x84


def _ulaw_encode_sample(s: int) -> int:
    # Sun/CCITT reference algorithm on the 14-bit value (same as audioop.lin2ulaw)
    s >>= 2
    if s < 0:
        s = -s
        mask = 0x7F
    else:
        mask = 0xFF
    if s > 8159:
        s = 8159
    s += 0x21
    seg = 0
    for end in (0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF):
        if s <= end:
            break
        seg += 1
    if seg >= 8:
        return 0x7F ^ mask
    return ((seg << 4) | ((s >> (seg + 1)) & 0x0F)) ^ mask


def _ulaw_decode_byte(u: int) -> int:
    u = ~u & 0xFF
    sign = u & 0x80
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    s = ((mantissa << 3) + _BIAS) << exponent
    s -= _BIAS
    return -s if sign else s


def _alaw_encode_sample(s: int) -> int:
    if s >= 0:
        mask = 0xD5
    else:
        mask = 0x55
        s = -s - 1
    if s > 32767:
        s = 32767
    # segment ends for 13-bit magnitude (s >> 3)
    v = s >> 3
    seg = 0
    for end in (0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF):
        if v <= end:
            break
        seg += 1
    if seg >= 8:
        aval = 0x7F
    else:
        aval = seg << 4
        if seg < 2:
            aval |= (v >> 1) & 0x0F
        else:
            aval |= (v >> seg) & 0x0F
    return (aval ^ mask) & 0xFF


def _alaw_decode_byte(a: int) -> int:
    a ^= 0x55
    t = (a & 0x0F) << 4
    seg = (a & 0x70) >> 4
    if seg == 0:
        t += 8
    elif seg == 1:
        t += 0x108
    else:
        t += 0x108
        t <<= seg - 1
    return t if (a & 0x80) else -t


# Lookup tables: decode 256 entries, encode 65536 entries (index = s & 0xffff).
ULAW_DECODE = [_ulaw_decode_byte(i) for i in range(256)]
ALAW_DECODE = [_alaw_decode_byte(i) for i in range(256)]
_ULAW_ENC = bytes(_ulaw_encode_sample(i - 65536 if i >= 32768 else i) for i in range(65536))
_ALAW_ENC = bytes(_alaw_encode_sample(i - 65536 if i >= 32768 else i) for i in range(65536))


def samples_from_bytes(pcm: bytes) -> array.array:
    """s16le bytes -> array('h'); a trailing odd byte is dropped."""
    a = array.array("h")
    a.frombytes(pcm[: len(pcm) & ~1])
    if sys.byteorder == "big":
        a.byteswap()
    return a


def bytes_from_samples(samples: Iterable[int]) -> bytes:
    a = samples if isinstance(samples, array.array) else array.array("h", samples)
    if sys.byteorder == "big":
        a = array.array("h", a)
        a.byteswap()
    return a.tobytes()


def ulaw_decode(data: bytes) -> bytes:
    return bytes_from_samples(array.array("h", (ULAW_DECODE[b] for b in data)))


def alaw_decode(data: bytes) -> bytes:
    return bytes_from_samples(array.array("h", (ALAW_DECODE[b] for b in data)))


def ulaw_encode(pcm: bytes) -> bytes:
    t = _ULAW_ENC
    return bytes(t[s & 0xFFFF] for s in samples_from_bytes(pcm))


def alaw_encode(pcm: bytes) -> bytes:
    t = _ALAW_ENC
    return bytes(t[s & 0xFFFF] for s in samples_from_bytes(pcm))


# --------------------------------------------------------------------------
# Resampling, tones, WAV
# --------------------------------------------------------------------------


def resample(pcm: bytes, src_rate: int, dst_rate: int) -> bytes:
    """Linear-interpolation resampler for s16le mono."""
    if src_rate == dst_rate or not pcm:
        return pcm[: len(pcm) & ~1]
    x = samples_from_bytes(pcm)
    n_in = len(x)
    n_out = int(n_in * dst_rate / src_rate)
    step = src_rate / dst_rate
    out = array.array("h", bytes(2 * n_out))
    last = n_in - 1
    for i in range(n_out):
        pos = i * step
        j = int(pos)
        if j >= last:
            out[i] = x[last]
            continue
        f = pos - j
        a = x[j]
        out[i] = int(a + (x[j + 1] - a) * f)
    return bytes_from_samples(out)


def tone(duration_s: float, rate: int, freq: float = 440.0, amplitude: int = 8000) -> bytes:
    n = int(duration_s * rate)
    w = 2 * math.pi * freq / rate
    # 10 ms fade in/out to avoid clicks
    fade = max(1, int(0.01 * rate))
    out = array.array("h", bytes(2 * n))
    for i in range(n):
        g = 1.0
        if i < fade:
            g = i / fade
        elif i >= n - fade:
            g = (n - 1 - i) / fade
        out[i] = int(amplitude * g * math.sin(w * i))
    return bytes_from_samples(out)


def _pcm_from_wave(w: "wave.Wave_read") -> tuple[bytes, int, int]:
    ch, width, rate, n = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
    raw = w.readframes(n)
    if width == 1:
        samples = array.array("h", ((b - 128) << 8 for b in raw))
    elif width == 2:
        samples = samples_from_bytes(raw)
    elif width in (3, 4):
        samples = array.array("h", (int.from_bytes(raw[i + width - 2 : i + width], "little", signed=True)
                                    for i in range(0, len(raw) - width + 1, width)))
    else:
        raise ValueError(f"unsupported sample width {width}")
    if ch > 1:
        samples = array.array("h", (sum(samples[i : i + ch]) // ch for i in range(0, len(samples) - ch + 1, ch)))
    return bytes_from_samples(samples), rate, ch


def read_wav(path: str) -> tuple[bytes, int]:
    """Any PCM WAV file -> (s16le mono bytes, rate)."""
    with wave.open(path, "rb") as w:
        pcm, rate, _ = _pcm_from_wave(w)
    return pcm, rate


def wav_bytes(pcm: bytes, rate: int) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm[: len(pcm) & ~1])
    return buf.getvalue()


def parse_wav_bytes(data: bytes) -> tuple[bytes, int, int]:
    """WAV file bytes -> (s16le mono pcm, rate, channels). Raises on bad input."""
    with wave.open(io.BytesIO(data), "rb") as w:
        return _pcm_from_wave(w)


def write_wav_atomic(path: str, pcm: bytes, rate: int) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(wav_bytes(pcm, rate))
    os.replace(tmp, path)


def rms(samples: array.array) -> float:
    if not samples:
        return 0.0
    return math.sqrt(sum(s * s for s in samples) / len(samples))


class ReplyAudio:
    """The fake's answer: s16le mono at its native rate, converted on demand (cached)."""

    def __init__(self, path: str | None, tone_s: float = 1.5):
        self.path = path
        if path:
            self.pcm, self.rate = read_wav(path)
        else:
            self.rate = 24000
            self.pcm = tone(tone_s, self.rate)
        self._cache: dict[tuple[str, int], bytes] = {}

    @property
    def duration_s(self) -> float:
        return len(self.pcm) / 2 / self.rate

    def pcm_at(self, rate: int) -> bytes:
        key = ("pcm", rate)
        if key not in self._cache:
            self._cache[key] = resample(self.pcm, self.rate, rate)
        return self._cache[key]

    def encoded(self, fmt: str) -> bytes:
        """fmt: 'pcm16' (24 kHz), 'pcmu', 'pcma' (8 kHz)."""
        if fmt == "pcm16":
            return self.pcm_at(24000)
        key = (fmt, 8000)
        if key not in self._cache:
            p = self.pcm_at(8000)
            self._cache[key] = ulaw_encode(p) if fmt == "pcmu" else alaw_encode(p)
        return self._cache[key]

    def for_text(self, text: str, rate: int) -> bytes:
        """TTS-style: the reply wav if one was given, else a tone whose length grows with the text."""
        if self.path:
            return self.pcm_at(rate)
        dur = max(0.3, min(20.0, 0.06 * len(text or "")))
        key = ("tts", rate, round(dur, 3))
        if key not in self._cache:
            self._cache[key] = tone(dur, rate)
        return self._cache[key]


# --------------------------------------------------------------------------
# VAD
# --------------------------------------------------------------------------


class Vad:
    """Energy VAD on s16 audio in 20 ms frames.

    speech start = `start_frames` consecutive frames with RMS >= threshold;
    end of utterance = `silence_ms` of quiet frames after speech.
    Times are in audio time (ms of audio fed so far), so audio sent faster
    than real time still segments correctly.
    """

    def __init__(self, rate: int, threshold: float = 500.0, silence_ms: int = 400, start_frames: int = 3):
        self.rate = rate
        self.threshold = threshold
        self.silence_ms = silence_ms
        self.start_frames = start_frames
        self.frame_samples = rate // 50
        self._buf = array.array("h")
        self.frames = 0
        self.in_speech = False
        self._loud_run = 0
        self._quiet_ms = 0
        self.speech_start_ms = 0

    def feed(self, pcm: bytes) -> list[tuple[str, int]]:
        """Returns [("start", audio_ms) | ("end", audio_ms), ...]."""
        self._buf.extend(samples_from_bytes(pcm))
        out: list[tuple[str, int]] = []
        fs = self.frame_samples
        while len(self._buf) >= fs:
            frame = self._buf[:fs]
            del self._buf[:fs]
            self.frames += 1
            loud = rms(frame) >= self.threshold
            now_ms = self.frames * 20
            if not self.in_speech:
                self._loud_run = self._loud_run + 1 if loud else 0
                if self._loud_run >= self.start_frames:
                    self.in_speech = True
                    self._quiet_ms = 0
                    self.speech_start_ms = now_ms - 20 * self.start_frames
                    out.append(("start", self.speech_start_ms))
            else:
                if loud:
                    self._quiet_ms = 0
                else:
                    self._quiet_ms += 20
                    if self._quiet_ms >= self.silence_ms:
                        self.in_speech = False
                        self._loud_run = 0
                        out.append(("end", now_ms - self._quiet_ms))
        return out

    @property
    def audio_ms(self) -> int:
        return self.frames * 20


# --------------------------------------------------------------------------
# Failure modes
# --------------------------------------------------------------------------


class Mode:
    NAMES = ("normal", "slow-start", "disconnect-after", "http500", "garbage", "silent")

    def __init__(self, spec: str = "normal"):
        spec = (spec or "normal").strip()
        name, _, arg = spec.partition(":")
        if name not in self.NAMES:
            raise argparse.ArgumentTypeError(f"unknown mode {spec!r}; one of {', '.join(self.NAMES)}")
        self.name = name
        self.ms = 0
        if name in ("slow-start", "disconnect-after"):
            if not arg:
                raise argparse.ArgumentTypeError(f"mode {name} needs :MS")
            self.ms = int(arg)
        self.spec = spec

    def __eq__(self, other: object) -> bool:
        return self.name == other if isinstance(other, str) else NotImplemented

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        return self.spec


NORMAL = Mode("normal")


# --------------------------------------------------------------------------
# Recording
# --------------------------------------------------------------------------

def redact_audio(msg: Any) -> Any:
    """Copy of a JSON message with base64 audio fields replaced by '<key>_bytes'.

    "audio" is always audio; "delta" only in events whose type ends in "audio.delta".
    """
    if not isinstance(msg, dict):
        return msg
    out = {}
    is_audio_delta = str(msg.get("type", "")).endswith("audio.delta")
    for k, v in msg.items():
        if isinstance(v, str) and (k == "audio" or (k == "delta" and is_audio_delta)):
            try:
                out[f"{k}_bytes"] = len(base64.b64decode(v, validate=True))
            except (binascii.Error, ValueError):
                out[f"{k}_invalid_base64"] = v[:64]
        else:
            out[k] = v
    return out


class AudioTrack:
    """Caller audio of one connection (s16le mono at `rate`)."""

    def __init__(self, rec: "Recorder", conn: int, rate: int):
        self.rec = rec
        self.conn = conn
        self.rate = rate
        self.pcm = bytearray()
        self.dirty = False

    def add(self, pcm: bytes) -> None:
        if pcm:
            self.pcm += pcm[: len(pcm) & ~1]
            self.dirty = True
            self.rec._latest = self

    def set_rate(self, rate: int) -> None:
        if rate != self.rate:
            if self.pcm:
                self.pcm = bytearray(resample(bytes(self.pcm), self.rate, rate))
            self.rate = rate
            self.dirty = True


class Recorder:
    """events.jsonl + input.wav writer.

    Each line has "ts" (unix time), "conn" (connection number, 0 = process)
    and either "dir": "in"/"out" (a message received/sent) or "event" (a marker).
    input.wav = caller audio of the connection that most recently received audio;
    input_<conn>.wav = caller audio of each connection.
    """

    def __init__(self, directory: str | None):
        self.dir = directory
        self._lock = threading.Lock()
        self._f = None
        self._conn = 0
        self.tracks: dict[int, AudioTrack] = {}
        self._latest: AudioTrack | None = None
        self._latest_written: tuple[int, int] | None = None
        if directory:
            os.makedirs(directory, exist_ok=True)
            self._f = open(os.path.join(directory, "events.jsonl"), "a", encoding="utf-8")

    def new_conn(self) -> int:
        self._conn += 1
        return self._conn

    def _write(self, obj: dict) -> None:
        if self._f is None:
            return
        line = json.dumps(obj, ensure_ascii=False, default=str)
        with self._lock:
            self._f.write(line + "\n")
            self._f.flush()

    def log_in(self, conn: int, msg: Any, **extra: Any) -> None:
        body = redact_audio(msg) if isinstance(msg, dict) else {"data": msg}
        self._write({"ts": round(time.time(), 4), "conn": conn, "dir": "in", **extra, **body})

    def log_out(self, conn: int, msg: Any, **extra: Any) -> None:
        body = redact_audio(msg) if isinstance(msg, dict) else {"data": msg}
        self._write({"ts": round(time.time(), 4), "conn": conn, "dir": "out", **extra, **body})

    def marker(self, conn: int, event: str, **fields: Any) -> None:
        self._write({"ts": round(time.time(), 4), "conn": conn, "event": event, **fields})

    def track(self, conn: int, rate: int) -> AudioTrack:
        t = self.tracks.get(conn)
        if t is None:
            t = AudioTrack(self, conn, rate)
            self.tracks[conn] = t
        return t

    def flush_audio(self, force: bool = False) -> None:
        if not self.dir:
            return
        for t in list(self.tracks.values()):
            if t.dirty or force:
                t.dirty = False
                try:
                    write_wav_atomic(os.path.join(self.dir, f"input_{t.conn}.wav"), bytes(t.pcm), t.rate)
                except OSError:
                    pass
        lt = self._latest
        if lt is not None:
            state = (lt.conn, len(lt.pcm), lt.rate)
            if force or state != self._latest_written:
                self._latest_written = state
                try:
                    write_wav_atomic(os.path.join(self.dir, "input.wav"), bytes(lt.pcm), lt.rate)
                except OSError:
                    pass

    async def flush_loop(self, period: float = 0.1) -> None:
        while True:
            await asyncio.sleep(period)
            self.flush_audio()

    def close(self) -> None:
        self.flush_audio(force=True)
        if self._f:
            self._f.flush()


class TurnTaker:
    """VAD + reply play window of one connection; writes the common markers.

    feed() returns [("speech_started", audio_ms, barge_in), ("speech_stopped", audio_ms, False)].
    A speech start while now < reply start + reply duration (real time) is a
    barge-in: marker barge_in_detected, and the play window is closed.
    """

    def __init__(self, rec: Recorder, conn: int, rate: int, threshold: float, silence_ms: int):
        self.rec = rec
        self.conn = conn
        self.threshold = threshold
        self.silence_ms = silence_ms
        self.vad = Vad(rate, threshold, silence_ms)
        self.track = rec.track(conn, rate)
        self.reply_n = 0
        self.reply_start = 0.0
        self.reply_until = 0.0

    def set_rate(self, rate: int) -> None:
        if rate != self.vad.rate:
            frames = self.vad.frames
            self.vad = Vad(rate, self.threshold, self.silence_ms)
            self.vad.frames = frames
            self.track.set_rate(rate)

    @property
    def playing(self) -> bool:
        return time.monotonic() < self.reply_until

    def feed(self, pcm: bytes) -> list[tuple[str, int, bool]]:
        self.track.add(pcm)
        out = []
        for kind, ms in self.vad.feed(pcm):
            if kind == "start":
                barge = self.playing
                self.rec.marker(self.conn, "speech_started", audio_ms=ms)
                if barge:
                    self.rec.marker(self.conn, "barge_in_detected", audio_ms=ms, reply=self.reply_n,
                                    into_reply_ms=int((time.monotonic() - self.reply_start) * 1000))
                    self.reply_until = 0.0
                out.append(("speech_started", ms, barge))
            else:
                self.rec.marker(self.conn, "speech_stopped", audio_ms=ms)
                out.append(("speech_stopped", ms, False))
        return out

    def reply_begin(self, duration_s: float, **extra: Any) -> int:
        self.reply_n += 1
        self.reply_start = time.monotonic()
        self.reply_until = self.reply_start + duration_s
        self.rec.marker(self.conn, "reply_started", reply=self.reply_n, duration_ms=int(duration_s * 1000), **extra)
        return self.reply_n

    def reply_end(self, cancelled: bool = False, sent_ms: int | None = None, **extra: Any) -> None:
        if cancelled:
            self.reply_until = 0.0
        self.rec.marker(self.conn, "reply_finished", reply=self.reply_n, cancelled=cancelled,
                        **({} if sent_ms is None else {"sent_ms": sent_ms}), **extra)


# --------------------------------------------------------------------------
# CLI, READY handshake, abrupt close helpers
# --------------------------------------------------------------------------


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0 = pick a free one)")
    p.add_argument("--record", metavar="DIR", default=None, help="write events.jsonl and input.wav here")
    p.add_argument("--reply-wav", metavar="FILE", default=None, help="audio the fake speaks (default: 1.5 s 440 Hz tone)")
    p.add_argument("--mode", type=Mode, default=NORMAL,
                   help="normal | slow-start:MS | disconnect-after:MS | http500 | garbage | silent")
    p.add_argument("--vad-threshold", type=float, default=500.0, help="RMS threshold on s16 (default 500)")
    p.add_argument("--silence-ms", type=int, default=400, help="quiet time that ends an utterance (default 400)")
    p.add_argument("--exit-on-stdin-eof", action="store_true",
                   help="exit when stdin reaches EOF (spawn with a piped stdin: the fake dies with its test)")
    return p


def bind_socket(port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(128)
    s.setblocking(False)
    return s


def announce_ready(sock: socket.socket) -> int:
    port = sock.getsockname()[1]
    sys.stdout.write(f"READY {port}\n")
    sys.stdout.flush()
    return port


def abort_transport(transport: Any) -> None:
    """Close a connection abruptly (RST, no WebSocket close frame, no HTTP terminator)."""
    if transport is None:
        return
    try:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except (OSError, AttributeError):
        pass
    try:
        transport.abort()
    except Exception:  # noqa: BLE001 - already closed is fine
        pass


def garbage_bytes(n: int, seed: int = 0) -> bytes:
    """Deterministic non-UTF-8, non-JSON noise of odd length."""
    x = (seed * 2654435761 + 12345) & 0xFFFFFFFF
    out = bytearray()
    for _ in range(n | 1):
        x = (1103515245 * x + 12345) & 0x7FFFFFFF
        b = (x >> 16) & 0xFF
        if len(out) % 3 == 0:
            b |= 0x80  # never valid UTF-8 start of JSON
        out.append(b)
    return bytes(out)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64decode_strict(s: Any) -> bytes:
    if not isinstance(s, str):
        raise ValueError("audio is not a string")
    return base64.b64decode(s, validate=True)


def split_sizes(data: bytes, sizes: list[int]) -> list[bytes]:
    """Split data into pieces whose sizes cycle through `sizes`."""
    out = []
    i = k = 0
    while i < len(data):
        n = max(1, sizes[k % len(sizes)])
        out.append(data[i : i + n])
        i += n
        k += 1
    return out


class Pick:
    """Repeated CLI values: the Nth use gets the Nth value, the last one repeats."""

    def __init__(self, values: list[str] | None, default: str):
        self.values = values or [default]
        self.n = 0

    def next(self) -> str:
        v = self.values[min(self.n, len(self.values) - 1)]
        self.n += 1
        return v


def run_main(main: Callable[[], Any], rec_getter: Callable[[], Recorder | None] = lambda: None,
             args: Any = None) -> None:
    """Run an async main with SIGTERM/SIGINT (and stdin EOF with --exit-on-stdin-eof)
    turning into a clean exit (WAVs flushed)."""

    async def runner() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, stop.set)
            except NotImplementedError:
                pass
        if getattr(args, "exit_on_stdin_eof", False):
            def watch_stdin() -> None:
                try:
                    # os.read, not sys.stdin: a daemon thread blocked in a
                    # buffered read aborts the interpreter at shutdown.
                    while os.read(0, 4096):
                        pass
                except (OSError, ValueError):
                    pass
                loop.call_soon_threadsafe(stop.set)
            threading.Thread(target=watch_stdin, daemon=True).start()
        task = asyncio.create_task(main())
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()
        task.cancel()
        try:
            await task
        except (asyncio.CancelledError, Exception):  # noqa: BLE001
            pass

    try:
        asyncio.run(runner())
    finally:
        rec = rec_getter()
        if rec is not None:
            rec.close()
