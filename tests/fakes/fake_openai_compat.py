#!/usr/bin/env python3
"""Fake OpenAI-compatible local services: /v1/audio/transcriptions, /v1/chat/completions, /v1/audio/speech.

See README.md in this folder for the options and the events.jsonl markers.
"""
from __future__ import annotations

import json
import os
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from aiohttp import web  # noqa: E402

import common  # noqa: E402
import httpfake  # noqa: E402
from common import Pick, Recorder, ReplyAudio  # noqa: E402

rec: Recorder | None = None
ARGS = None
REPLY: ReplyAudio | None = None
TRANSCRIPTS: Pick | None = None
STATE = {"utterances": 0, "completions": 0, "speech": 0}


def parse_args(argv=None):
    p = common.base_parser(__doc__)
    p.add_argument("--api-key", default=None, help="if set, require Authorization: Bearer <key>")
    p.add_argument("--fail-route", action="append", choices=("transcriptions", "chat", "speech"), default=None,
                   help="apply --mode only to this route (repeatable)")
    p.add_argument("--transcript", action="append", default=None,
                   help="transcription text per upload (repeatable; default 'hello agent')")
    p.add_argument("--llm-text", default="Hello caller. How can I help?", help="chat completion text")
    p.add_argument("--think", action="store_true", help="prefix the completion with <think>secret</think>")
    p.add_argument("--wav-unknown-size", action="store_true",
                   help="speech wav: RIFF/data sizes 0xFFFFFFFF, like streaming TTS servers")
    p.add_argument("--speech-float-wav", action="store_true",
                   help="answer every speech request with a 32-bit float WAV, whatever format was asked "
                        "(a TTS server configured for another format)")
    return p.parse_args(argv)


def oai_error(message: str, etype: str = "invalid_request_error", param: str | None = None,
              code: str | None = None) -> dict:
    return {"error": {"message": message, "type": etype, "param": param, "code": code}}


def check_auth(request: web.Request, conn: int) -> web.Response | None:
    if not ARGS.api_key:
        return None
    auth = request.headers.get("Authorization", "")
    if auth != f"Bearer {ARGS.api_key}":
        rec.marker(conn, "auth_failed", got=auth or None)
        return web.json_response(oai_error("Incorrect API key provided.", code="invalid_api_key"), status=401)
    return None


SERVER_ERROR = oai_error("The server had an error while processing your request.", "server_error")


# ------------------------------------------------------------ transcriptions
async def transcriptions(request: web.Request) -> web.StreamResponse:
    t0 = time.monotonic()
    conn = rec.new_conn()
    mode = httpfake.route_mode(ARGS, "transcriptions")
    rec.log_in(conn, {"http": "POST", "route": "transcriptions", "path": request.path,
                      "content_type": request.headers.get("Content-Type")})
    denied = check_auth(request, conn)
    if denied:
        return denied
    try:
        form = await request.post()
    except Exception as e:  # noqa: BLE001
        rec.marker(conn, "client_error", detail=f"bad multipart body: {e!r}")
        return web.json_response(oai_error("Could not parse multipart form"), status=400)
    fields = {k: (v if isinstance(v, str) else f"<file {getattr(v, 'filename', '')}>") for k, v in form.items()}
    rec.log_in(conn, {"route": "transcriptions", "form": fields})
    f = form.get("file")
    if f is None or isinstance(f, str):
        rec.marker(conn, "client_error", detail="file missing")
        return web.json_response(oai_error("Missing required parameter: 'file'.", param="file"), status=400)
    if not form.get("model"):
        rec.marker(conn, "client_error", detail="model missing")
        return web.json_response(oai_error("Missing required parameter: 'model'.", param="model"), status=400)
    data = f.file.read()
    STATE["utterances"] += 1
    n = STATE["utterances"]
    if ARGS.record:
        with open(os.path.join(ARGS.record, f"utterance_{n}.wav"), "wb") as out:
            out.write(data)
    try:
        pcm, rate, ch = common.parse_wav_bytes(data)
    except Exception as e:  # noqa: BLE001
        rec.marker(conn, "client_error", detail=f"upload is not a WAV: {e!r}", n=n, bytes=len(data))
        return web.json_response(oai_error("Invalid file format. Supported formats: ['flac', 'm4a', 'mp3', "
                                           "'mp4', 'mpeg', 'mpga', 'oga', 'ogg', 'wav', 'webm']", param="file"),
                                 status=400)
    rec.marker(conn, "utterance", n=n, rate=rate, channels=ch, duration_ms=int(len(pcm) / 2 / rate * 1000),
               bytes=len(data), filename=getattr(f, "filename", None), model=form.get("model"),
               file=f"utterance_{n}.wav")
    track = rec.tracks.get(0) or rec.track(0, rate)
    track.add(common.resample(pcm, rate, track.rate))
    early = await httpfake.apply_mode(request, mode, rec, conn, error_body=SERVER_ERROR, drain_body=False)
    if early is not None:
        return early
    text = TRANSCRIPTS.next()
    fmt = form.get("response_format", "json")
    rec.log_out(conn, {"route": "transcriptions", "text": text, "response_format": fmt})
    if fmt in ("text", "srt", "vtt"):
        return await httpfake.respond(request, mode, rec, conn, t0, (text + "\n").encode(), "text/plain")
    obj: dict = {"text": text}
    if fmt == "verbose_json":
        dur = len(pcm) / 2 / rate
        obj = {"task": "transcribe", "language": "english", "duration": round(dur, 3), "text": text,
               "segments": [{"id": 0, "seek": 0, "start": 0.0, "end": round(dur, 3), "text": text}]}
    return await httpfake.respond(request, mode, rec, conn, t0, json.dumps(obj).encode(), "application/json")


# ------------------------------------------------------------ chat completions
async def chat(request: web.Request) -> web.StreamResponse:
    t0 = time.monotonic()
    conn = rec.new_conn()
    mode = httpfake.route_mode(ARGS, "chat")
    denied = check_auth(request, conn)
    raw = await request.read()
    if denied:
        rec.log_in(conn, {"http": "POST", "route": "chat", "path": request.path, "body_bytes": len(raw)})
        return denied
    try:
        body = json.loads(raw)
    except ValueError:
        rec.log_in(conn, {"http": "POST", "route": "chat", "invalid_json": raw[:200].decode("utf-8", "replace")})
        rec.marker(conn, "client_error", detail="invalid JSON body")
        return web.json_response(oai_error("We could not parse the JSON body of your request."), status=400)
    rec.log_in(conn, {"http": "POST", "route": "chat", "path": request.path, "body": body})
    msgs = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(msgs, list) or not msgs:
        rec.marker(conn, "client_error", detail="messages missing")
        return web.json_response(oai_error("Missing required parameter: 'messages'.", param="messages"), status=400)
    stream = bool(body.get("stream"))
    last_user = next((m.get("content") for m in reversed(msgs) if isinstance(m, dict) and m.get("role") == "user"), None)
    rec.marker(conn, "chat_request", stream=stream, n_messages=len(msgs), last_user=last_user, model=body.get("model"))
    early = await httpfake.apply_mode(request, mode, rec, conn, error_body=SERVER_ERROR,
                                      garbage_type="text/event-stream" if stream else "application/json",
                                      drain_body=False)
    if early is not None:
        return early
    STATE["completions"] += 1
    cid = f"chatcmpl-fake{STATE['completions']}"
    created = int(time.time())
    model = body.get("model") or "fake-model"
    text = ("<think>secret</think>" if ARGS.think else "") + ARGS.llm_text
    if not stream:
        obj = {"id": cid, "object": "chat.completion", "created": created, "model": model,
               "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
               "usage": {"prompt_tokens": 10, "completion_tokens": 8, "total_tokens": 18}}
        rec.log_out(conn, {"route": "chat", "content": text, "stream": False})
        return await httpfake.respond(request, mode, rec, conn, t0, json.dumps(obj).encode(), "application/json")

    def chunk(delta: dict, finish: str | None = None) -> bytes:
        c = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
             "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return b"data: " + json.dumps(c).encode() + b"\n\n"

    events = [b": keep-alive\n\n", chunk({"role": "assistant", "content": ""})]
    for piece in common.split_sizes(text.encode(), [3, 6, 2, 9, 4]):
        events.append(chunk({"content": piece.decode("utf-8", "replace")}))
    events.append(chunk({}, "stop"))
    events.append(b"data: [DONE]\n\n")
    sse = b"".join(events)
    rec.log_out(conn, {"route": "chat", "content": text, "stream": True, "sse_events": len(events)})
    resp = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream; charset=utf-8",
                                                   "Cache-Control": "no-cache"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    # irregular write boundaries: SSE events split across and merged within chunks
    await httpfake.send_chunks(request, resp, common.split_sizes(sse, [37, 5, 180, 13, 90]), mode, rec, conn, t0,
                               gap_s=0.01)
    return resp


# ------------------------------------------------------------ speech
def wav_header(n_bytes: int, rate: int, unknown: bool) -> bytes:
    data_len = 0xFFFFFFFF if unknown else n_bytes
    riff_len = 0xFFFFFFFF if unknown else 36 + n_bytes
    return (b"RIFF" + struct.pack("<I", riff_len) + b"WAVE" + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate,
            rate * 2, 2, 16) + b"data" + struct.pack("<I", data_len))


async def speech(request: web.Request) -> web.StreamResponse:
    t0 = time.monotonic()
    conn = rec.new_conn()
    mode = httpfake.route_mode(ARGS, "speech")
    denied = check_auth(request, conn)
    raw = await request.read()
    if denied:
        rec.log_in(conn, {"http": "POST", "route": "speech", "path": request.path, "body_bytes": len(raw)})
        return denied
    try:
        body = json.loads(raw)
    except ValueError:
        rec.log_in(conn, {"http": "POST", "route": "speech", "invalid_json": raw[:200].decode("utf-8", "replace")})
        rec.marker(conn, "client_error", detail="invalid JSON body")
        return web.json_response(oai_error("We could not parse the JSON body of your request."), status=400)
    rec.log_in(conn, {"http": "POST", "route": "speech", "path": request.path, "body": body})
    text = body.get("input") if isinstance(body, dict) else None
    if not isinstance(text, str) or not text:
        rec.marker(conn, "client_error", detail="input missing")
        return web.json_response(oai_error("Missing required parameter: 'input'.", param="input"), status=400)
    fmt = body.get("response_format", "mp3")
    if fmt not in ("pcm", "wav"):
        rec.marker(conn, "client_error", detail=f"unsupported response_format {fmt!r}")
        return web.json_response(oai_error(f"Unsupported response_format '{fmt}' (this fake serves pcm and wav; "
                                           "the OpenAI default is mp3)", param="response_format"), status=400)
    rec.marker(conn, "speech_request", text=text, voice=body.get("voice"), model=body.get("model"),
               response_format=fmt)
    early = await httpfake.apply_mode(request, mode, rec, conn, error_body=SERVER_ERROR,
                                      garbage_type="audio/pcm" if fmt == "pcm" else "audio/wav", drain_body=False)
    if early is not None:
        return early
    if fmt == "pcm":
        rate = 24000
        ctype = "audio/pcm"
    else:
        rate = REPLY.rate if REPLY.path else 22050
        ctype = "audio/wav"
    audio = REPLY.for_text(text, rate)
    payload = audio if fmt == "pcm" else wav_header(len(audio), rate, ARGS.wav_unknown_size) + audio
    if ARGS.speech_float_wav:
        samples = struct.unpack(f"<{len(audio) // 2}h", audio[:len(audio) // 2 * 2])
        floats = struct.pack(f"<{len(samples)}f", *(x / 32768.0 for x in samples))
        fmt_chunk = struct.pack("<IHHIIHH", 16, 3, 1, rate, rate * 4, 4, 32)
        payload = (b"RIFF" + struct.pack("<I", 36 + len(floats)) + b"WAVE" + b"fmt " + fmt_chunk + b"data"
                   + struct.pack("<I", len(floats)) + floats)
        ctype = "audio/wav"
        rec.marker(conn, "float_wav_sent", bytes=len(payload))
    STATE["speech"] += 1
    dur = len(audio) / 2 / rate
    rec.marker(conn, "reply_started", reply=STATE["speech"], duration_ms=int(dur * 1000), text=text, rate=rate,
               format=fmt)
    rec.log_out(conn, {"route": "speech", "audio_bytes": len(audio), "rate": rate, "format": fmt})
    resp = web.StreamResponse(status=200, headers={"Content-Type": ctype})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    done = await httpfake.send_chunks(request, resp, common.split_sizes(payload, [4801, 9600, 1200]), mode, rec,
                                      conn, t0, gap_s=0.005)
    rec.marker(conn, "reply_finished", reply=STATE["speech"], cancelled=not done)
    return resp


async def main(args) -> None:
    global rec, ARGS, REPLY, TRANSCRIPTS
    ARGS = args
    rec = Recorder(args.record)
    REPLY = ReplyAudio(args.reply_wav)
    TRANSCRIPTS = Pick(args.transcript, "hello agent")
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/audio/transcriptions", transcriptions)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/audio/speech", speech)
    await httpfake.serve_app(app, args, rec)


if __name__ == "__main__":
    _args = parse_args()
    common.run_main(lambda: main(_args), lambda: rec, _args)
