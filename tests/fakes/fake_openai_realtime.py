#!/usr/bin/env python3
"""Fake OpenAI Realtime API (WebSocket, GET /v1/realtime?model=...).

See README.md in this folder for the options and the events.jsonl markers.
"""
from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from aiohttp import WSMsgType, web  # noqa: E402

import common  # noqa: E402
import httpfake  # noqa: E402
from common import Pick, Recorder, ReplyAudio, TurnTaker  # noqa: E402

GA_FORMATS = {"audio/pcm": "pcm16", "audio/pcmu": "pcmu", "audio/pcma": "pcma"}
BETA_FORMATS = {"pcm16": "pcm16", "g711_ulaw": "pcmu", "g711_alaw": "pcma"}
GA_NAME = {v: k for k, v in GA_FORMATS.items()}
BETA_NAME = {v: k for k, v in BETA_FORMATS.items()}
FMT_RATE = {"pcm16": 24000, "pcmu": 8000, "pcma": 8000}

CLIENT_EVENTS = (
    "session.update", "input_audio_buffer.append", "input_audio_buffer.commit", "input_audio_buffer.clear",
    "conversation.item.create", "conversation.item.truncate", "conversation.item.delete",
    "conversation.item.retrieve", "response.create", "response.cancel", "output_audio_buffer.clear",
)

rec: Recorder | None = None


def parse_args(argv=None):
    p = common.base_parser(__doc__)
    p.add_argument("--api-key", default="test-key", help="expected bearer key (default test-key)")
    p.add_argument("--transcript", action="append", default=None,
                   help="caller transcript per utterance (repeat for several turns; default 'hello agent')")
    p.add_argument("--reply-text", default="hello caller", help="agent transcript of the reply")
    p.add_argument("--beta-names", action="store_true",
                   help="beta event names (response.audio.delta, ...) and beta session shape")
    p.add_argument("--tool-call", metavar="NAME", default=None, help="first response is a function call NAME")
    p.add_argument("--tool-args", metavar="JSON", default="{}", help="arguments of --tool-call (JSON text)")
    p.add_argument("--burst-chunk-ms", type=int, default=100, help="audio per delta event (default 100)")
    p.add_argument("--burst-interval-ms", type=int, default=20, help="time between delta events (default 20)")
    return p.parse_args(argv)


class Session:
    def __init__(self, args, reply: ReplyAudio, ws: web.WebSocketResponse, conn: int, model: str, beta_header: bool):
        self.args = args
        self.reply = reply
        self.ws = ws
        self.conn = conn
        self.model = model
        self.beta_header = beta_header
        self.beta = args.beta_names
        self.silent = args.mode == "silent"
        self.in_fmt = "pcm16"
        self.out_fmt = "pcm16"
        self.turn_detection: dict | None = {
            "type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
            "silence_duration_ms": args.silence_ms, "create_response": True, "interrupt_response": True,
        }
        self.instructions = ""
        self.voice = "alloy"
        self.tools: list = []
        self.turn = TurnTaker(rec, conn, FMT_RATE[self.in_fmt], args.vad_threshold, args.silence_ms)
        self.carry = b""
        self.n_event = 0
        self.n_item = 0
        self.n_resp = 0
        self.items: dict[str, dict] = {}
        self.last_item: str | None = None
        self.user_item: str | None = None
        self.uncommitted_ms = 0.0
        self.active: dict | None = None  # the response being generated
        self.cancel_reason: str | None = None
        self.tool_pending = bool(args.tool_call)
        self.calls: dict[str, str] = {}
        self.transcripts = Pick(args.transcript, "hello agent")
        self.closed = False
        self.tasks: set[asyncio.Task] = set()

    # ---- helpers -------------------------------------------------------
    def eid(self) -> str:
        self.n_event += 1
        return f"event_{self.conn}_{self.n_event}"

    def new_item(self) -> str:
        self.n_item += 1
        return f"item_{self.conn}_{self.n_item}"

    def name(self, ga: str, beta: str) -> str:
        return beta if self.beta else ga

    async def send(self, obj: dict) -> None:
        if self.silent or self.closed or self.ws.closed:
            return
        obj = {"type": obj.pop("type"), "event_id": self.eid(), **obj}
        rec.log_out(self.conn, obj)
        try:
            await self.ws.send_str(json.dumps(obj))
        except (ConnectionError, RuntimeError) as e:  # peer gone
            self.closed = True
            rec.marker(self.conn, "send_failed", detail=str(e))

    async def error(self, code: str | None, message: str, etype: str = "invalid_request_error",
                    param: str | None = None, client_event_id: Any = None) -> None:
        rec.marker(self.conn, "error_sent", code=code, message=message)
        await self.send({"type": "error", "error": {"type": etype, "code": code, "message": message,
                                                     "param": param, "event_id": client_event_id}})

    def spawn(self, coro) -> asyncio.Task:
        t = asyncio.create_task(coro)
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)
        return t

    def fmt_obj(self, fmt: str) -> Any:
        if self.beta:
            return BETA_NAME[fmt]
        return {"type": "audio/pcm", "rate": 24000} if fmt == "pcm16" else {"type": GA_NAME[fmt]}

    def session_obj(self) -> dict:
        if self.beta:
            return {
                "id": f"sess_{self.conn}", "object": "realtime.session", "model": self.model,
                "modalities": ["audio", "text"], "instructions": self.instructions, "voice": self.voice,
                "input_audio_format": BETA_NAME[self.in_fmt], "output_audio_format": BETA_NAME[self.out_fmt],
                "input_audio_transcription": None, "turn_detection": self.turn_detection,
                "tools": self.tools, "tool_choice": "auto", "temperature": 0.8,
                "max_response_output_tokens": "inf",
            }
        return {
            "type": "realtime", "object": "realtime.session", "id": f"sess_{self.conn}", "model": self.model,
            "output_modalities": ["audio"], "instructions": self.instructions,
            "audio": {
                "input": {"format": self.fmt_obj(self.in_fmt), "transcription": None, "noise_reduction": None,
                          "turn_detection": self.turn_detection},
                "output": {"format": self.fmt_obj(self.out_fmt), "voice": self.voice, "speed": 1.0},
            },
            "tools": self.tools, "tool_choice": "auto", "max_output_tokens": "inf",
        }

    # ---- client events ---------------------------------------------------
    async def on_text(self, text: str) -> bool:
        """Handle one text frame; False = close the connection."""
        try:
            msg = json.loads(text)
        except ValueError as e:
            rec.log_in(self.conn, {"invalid_json": text[:200]})
            rec.marker(self.conn, "client_error", detail=f"invalid JSON: {e}")
            await self.error("invalid_json", f"The server could not parse the JSON: {e}")
            return False
        if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
            rec.log_in(self.conn, {"not_an_event": str(msg)[:200]})
            await self.error("invalid_request_error", "Missing required parameter: 'type'.", param="type")
            return True
        rec.log_in(self.conn, msg)
        typ = msg["type"]
        ceid = msg.get("event_id")
        if typ not in CLIENT_EVENTS:
            await self.error("invalid_value", f"Invalid value: '{typ}'. Supported values are: "
                             + ", ".join(f"'{c}'" for c in CLIENT_EVENTS) + ".", param="type", client_event_id=ceid)
            return True
        handler = getattr(self, "ev_" + typ.replace(".", "_"))
        try:
            return await handler(msg, ceid) is not False
        except (AttributeError, TypeError, KeyError, ValueError) as e:  # malformed fields
            rec.marker(self.conn, "client_error", detail=f"{typ}: {e!r}")
            await self.error("invalid_request_error", f"Invalid '{typ}' event: {e}", client_event_id=ceid)
            return True

    async def ev_session_update(self, msg: dict, ceid: Any):
        s = msg.get("session")
        if not isinstance(s, dict):
            await self.error("missing_required_parameter", "Missing required parameter: 'session'.",
                             param="session", client_event_id=ceid)
            return
        beta_keys = {"input_audio_format", "output_audio_format", "modalities", "turn_detection"}
        shape = "beta" if beta_keys & s.keys() else "ga"
        if shape == "ga" and not self.beta and s.get("type") != "realtime":
            await self.error("missing_required_parameter" if "type" not in s else "invalid_value",
                             "Missing required parameter: 'session.type'." if "type" not in s
                             else f"Invalid value: '{s.get('type')}'. Supported values are: 'realtime' and 'transcription'.",
                             param="session.type", client_event_id=ceid)
            return
        in_fmt, out_fmt, td_set, td = self.in_fmt, self.out_fmt, False, None
        try:
            if shape == "beta":
                if "input_audio_format" in s:
                    in_fmt = BETA_FORMATS[s["input_audio_format"]]
                if "output_audio_format" in s:
                    out_fmt = BETA_FORMATS[s["output_audio_format"]]
                if "turn_detection" in s:
                    td_set, td = True, s["turn_detection"]
            else:
                audio = s.get("audio") or {}
                inp, outp = audio.get("input") or {}, audio.get("output") or {}
                for which, part in (("input", inp), ("output", outp)):
                    f = part.get("format")
                    if f is None:
                        continue
                    if not isinstance(f, dict) or f.get("type") not in GA_FORMATS:
                        raise KeyError(f"session.audio.{which}.format.type")
                    if f["type"] == "audio/pcm" and f.get("rate", 24000) != 24000:
                        raise KeyError(f"session.audio.{which}.format.rate")
                    if which == "input":
                        in_fmt = GA_FORMATS[f["type"]]
                    else:
                        out_fmt = GA_FORMATS[f["type"]]
                if "turn_detection" in inp:
                    td_set, td = True, inp["turn_detection"]
        except (KeyError, TypeError) as e:
            param = e.args[0] if e.args and str(e.args[0]).startswith("session") else "session"
            await self.error("invalid_value", f"Invalid value for '{param}'.", param=param, client_event_id=ceid)
            return
        self.in_fmt, self.out_fmt = in_fmt, out_fmt
        self.turn.set_rate(FMT_RATE[in_fmt])
        if td_set:
            self.turn_detection = td if isinstance(td, dict) else None
        self.instructions = s.get("instructions", self.instructions)
        self.voice = s.get("voice", ((s.get("audio") or {}).get("output") or {}).get("voice", self.voice))
        if isinstance(s.get("tools"), list):
            self.tools = s["tools"]
        rec.marker(self.conn, "session_format", shape=shape, input=in_fmt, output=out_fmt,
                   beta_header=self.beta_header, turn_detection=self.turn_detection is not None)
        await self.send({"type": "session.updated", "session": self.session_obj()})

    async def ev_input_audio_buffer_append(self, msg: dict, ceid: Any):
        try:
            data = common.b64decode_strict(msg.get("audio"))
        except ValueError as e:
            rec.marker(self.conn, "client_error", detail=f"bad base64 audio: {e}")
            await self.error("invalid_value", "Invalid 'audio'. Expected base64-encoded audio bytes.",
                             param="audio", client_event_id=ceid)
            return
        if self.in_fmt == "pcmu":
            pcm = common.ulaw_decode(data)
        elif self.in_fmt == "pcma":
            pcm = common.alaw_decode(data)
        else:
            data = self.carry + data
            cut = len(data) & ~1
            pcm, self.carry = data[:cut], data[cut:]
        self.uncommitted_ms += len(pcm) / 2 / FMT_RATE[self.in_fmt] * 1000
        for kind, ms, barge in self.turn.feed(pcm):
            if self.turn_detection is None:
                continue
            if kind == "speech_started":
                await self.on_speech_started(ms, barge)
            else:
                await self.on_speech_stopped(ms)

    async def on_speech_started(self, ms: int, barge: bool) -> None:
        self.user_item = self.new_item()
        if self.active is not None and self.turn_detection.get("interrupt_response", True):
            self.cancel_reason = "turn_detected"
        await self.send({"type": "input_audio_buffer.speech_started", "audio_start_ms": ms, "item_id": self.user_item})

    async def on_speech_stopped(self, ms: int) -> None:
        item = self.user_item or self.new_item()
        self.user_item = None
        await self.send({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": ms, "item_id": item})
        await self.commit(item)
        await self.send({"type": "conversation.item.input_audio_transcription.completed", "item_id": item,
                         "content_index": 0, "transcript": self.transcripts.next()})
        if self.turn_detection.get("create_response", True) and not self.silent:
            if self.active is not None:
                self.cancel_reason = "turn_detected"
                await self.active["done"].wait()
            self.start_response()

    async def commit(self, item: str) -> None:
        self.uncommitted_ms = 0
        self.items[item] = {"type": "message", "role": "user"}
        await self.send({"type": "input_audio_buffer.committed", "previous_item_id": self.last_item, "item_id": item})
        added = {"id": item, "object": "realtime.item", "type": "message", "status": "completed", "role": "user",
                 "content": [{"type": "input_audio", "transcript": None}]}
        if self.beta:
            await self.send({"type": "conversation.item.created", "previous_item_id": self.last_item, "item": added})
        else:
            await self.send({"type": "conversation.item.added", "previous_item_id": self.last_item, "item": added})
        self.last_item = item

    async def ev_input_audio_buffer_commit(self, msg: dict, ceid: Any):
        if self.uncommitted_ms < 100:
            await self.error("input_audio_buffer_commit_empty",
                             f"Error committing input audio buffer: buffer too small. Expected at least 100ms of "
                             f"audio, but buffer only has {self.uncommitted_ms:.2f}ms of audio.", client_event_id=ceid)
            return
        await self.commit(self.user_item or self.new_item())
        self.user_item = None

    async def ev_input_audio_buffer_clear(self, msg: dict, ceid: Any):
        self.uncommitted_ms = 0
        await self.send({"type": "input_audio_buffer.cleared"})

    async def ev_output_audio_buffer_clear(self, msg: dict, ceid: Any):
        await self.send({"type": "output_audio_buffer.cleared", "response_id": None})

    async def ev_conversation_item_create(self, msg: dict, ceid: Any):
        item = msg.get("item")
        if not isinstance(item, dict) or "type" not in item:
            await self.error("missing_required_parameter", "Missing required parameter: 'item.type'.",
                             param="item.type", client_event_id=ceid)
            return
        if item["type"] == "function_call_output":
            cid = item.get("call_id")
            rec.marker(self.conn, "function_call_output", call_id=cid, output=item.get("output"))
            if cid not in self.calls:
                await self.error("invalid_value", f"Tool call ID '{cid}' not found in conversation.",
                                 param="item.call_id", client_event_id=ceid)
                return
        iid = item.get("id") or self.new_item()
        self.items[iid] = {"type": item["type"]}
        full = {"id": iid, "object": "realtime.item", "status": "completed", **item}
        await self.send({"type": self.name("conversation.item.added", "conversation.item.created"),
                         "previous_item_id": self.last_item, "item": full})
        if not self.beta:
            await self.send({"type": "conversation.item.done", "previous_item_id": self.last_item, "item": full})
        self.last_item = iid

    async def ev_conversation_item_truncate(self, msg: dict, ceid: Any):
        iid = msg.get("item_id")
        end = msg.get("audio_end_ms")
        item = self.items.get(iid)
        rec.marker(self.conn, "truncate", item_id=iid, content_index=msg.get("content_index"), audio_end_ms=end,
                   since_reply_start_ms=int((time.monotonic() - self.turn.reply_start) * 1000)
                   if self.turn.reply_start else None,
                   item_audio_ms=(item or {}).get("audio_ms"))
        if item is None:
            await self.error("item_truncate_invalid_item_id", f"Item with item_id '{iid}' not found.",
                             param="item_id", client_event_id=ceid)
            return
        if item.get("type") != "message" or item.get("role") != "assistant":
            await self.error("invalid_value", "Only assistant messages can be truncated.", param="item_id",
                             client_event_id=ceid)
            return
        if not isinstance(end, int) or end < 0:
            await self.error("invalid_value", "Invalid 'audio_end_ms'.", param="audio_end_ms", client_event_id=ceid)
            return
        if end > item.get("audio_ms", 0):
            await self.error("invalid_value", f"Audio content of {item.get('audio_ms', 0)}ms is already shorter "
                             f"than {end}ms", param="audio_end_ms", client_event_id=ceid)
            return
        item["audio_ms"] = end
        await self.send({"type": "conversation.item.truncated", "item_id": iid,
                         "content_index": msg.get("content_index", 0), "audio_end_ms": end})

    async def ev_conversation_item_delete(self, msg: dict, ceid: Any):
        iid = msg.get("item_id")
        if self.items.pop(iid, None) is None:
            await self.error("item_delete_invalid_item_id", f"Item with item_id '{iid}' not found.",
                             param="item_id", client_event_id=ceid)
            return
        await self.send({"type": "conversation.item.deleted", "item_id": iid})

    async def ev_conversation_item_retrieve(self, msg: dict, ceid: Any):
        iid = msg.get("item_id")
        if iid not in self.items:
            await self.error("item_retrieve_invalid_item_id", f"Item with item_id '{iid}' not found.",
                             param="item_id", client_event_id=ceid)
            return
        await self.send({"type": "conversation.item.retrieved", "item": {"id": iid, **self.items[iid]}})

    async def ev_response_create(self, msg: dict, ceid: Any):
        rec.marker(self.conn, "response_create")
        if self.active is not None:
            await self.error("conversation_already_has_active_response",
                             f"Conversation already has an active response in progress: {self.active['id']}. "
                             "Wait until the response is finished before creating a new one.", client_event_id=ceid)
            return
        if not self.silent:
            self.start_response()

    async def ev_response_cancel(self, msg: dict, ceid: Any):
        if self.active is None:
            await self.error("response_cancel_not_active", "Cancellation failed: no active response found",
                             client_event_id=ceid)
            return
        self.cancel_reason = "client_cancelled"

    # ---- responses -----------------------------------------------------
    def start_response(self) -> None:
        self.n_resp += 1
        rid = f"resp_{self.conn}_{self.n_resp}"
        self.active = {"id": rid, "done": asyncio.Event()}
        self.cancel_reason = None
        if self.tool_pending:
            self.tool_pending = False
            self.spawn(self.tool_response(rid))
        else:
            self.spawn(self.audio_response(rid))

    async def finish_response(self, rid: str, output: list, status: str = "completed") -> None:
        resp = {"object": "realtime.response", "id": rid, "status": status, "output": output,
                "usage": {"total_tokens": 10, "input_tokens": 5, "output_tokens": 5}}
        if status == "cancelled":
            resp["status_details"] = {"type": "cancelled", "reason": self.cancel_reason}
        await self.send({"type": "response.done", "response": resp})
        await self.send({"type": "rate_limits.updated", "rate_limits": [
            {"name": "requests", "limit": 1000, "remaining": 999, "reset_seconds": 0.06}]})
        active, self.active = self.active, None
        if active:
            active["done"].set()

    async def tool_response(self, rid: str) -> None:
        args = self.args.tool_args
        iid = self.new_item()
        call_id = "call_1"
        self.calls[call_id] = self.args.tool_call
        self.items[iid] = {"type": "function_call"}
        item = {"id": iid, "object": "realtime.item", "type": "function_call", "status": "in_progress",
                "name": self.args.tool_call, "call_id": call_id, "arguments": ""}
        await self.send({"type": "response.created", "response": {"object": "realtime.response", "id": rid,
                                                                  "status": "in_progress", "output": []}})
        await self.send({"type": "response.output_item.added", "response_id": rid, "output_index": 0, "item": item})
        await self.send({"type": "response.function_call_arguments.delta", "response_id": rid, "item_id": iid,
                         "output_index": 0, "call_id": call_id, "delta": args})
        await self.send({"type": "response.function_call_arguments.done", "response_id": rid, "item_id": iid,
                         "output_index": 0, "call_id": call_id, "name": self.args.tool_call, "arguments": args})
        item = {**item, "status": "completed", "arguments": args}
        await self.send({"type": "response.output_item.done", "response_id": rid, "output_index": 0, "item": item})
        rec.marker(self.conn, "tool_call_sent", name=self.args.tool_call, call_id=call_id, arguments=args)
        self.last_item = iid
        await self.finish_response(rid, [item])

    async def audio_response(self, rid: str) -> None:
        a = self.args
        iid = self.new_item()
        fmt = self.out_fmt
        audio = self.reply.encoded(fmt)
        bps = FMT_RATE[fmt] * (2 if fmt == "pcm16" else 1)  # bytes per second
        duration = len(audio) / bps
        self.items[iid] = {"type": "message", "role": "assistant", "audio_ms": 0}
        part_type = "audio" if self.beta else "output_audio"
        base = {"response_id": rid, "item_id": iid, "output_index": 0, "content_index": 0}
        item = {"id": iid, "object": "realtime.item", "type": "message", "status": "in_progress",
                "role": "assistant", "content": []}
        await self.send({"type": "response.created", "response": {"object": "realtime.response", "id": rid,
                                                                  "status": "in_progress", "output": []}})
        await self.send({"type": "response.output_item.added", "response_id": rid, "output_index": 0, "item": item})
        await self.send({"type": self.name("conversation.item.added", "conversation.item.created"),
                         "previous_item_id": self.last_item, "item": item})
        self.last_item = iid
        await self.send({"type": "response.content_part.added", **base,
                         "part": {"type": part_type, "transcript": ""}})
        chunk = max(1, int(bps * a.burst_chunk_ms / 1000))
        if fmt == "pcm16":
            chunk &= ~1
        self.turn.reply_begin(duration, response_id=rid, item_id=iid, format=fmt)
        sent = 0
        cancelled = False
        delta_name = self.name("response.output_audio.delta", "response.audio.delta")
        for i in range(0, len(audio), chunk):
            if self.cancel_reason or self.closed:
                cancelled = True
                break
            piece = audio[i:i + chunk]
            await self.send({"type": delta_name, **base, "delta": common.b64(piece)})
            sent += len(piece)
            self.items[iid]["audio_ms"] = int(sent / bps * 1000)
            await asyncio.sleep(a.burst_interval_ms / 1000)
        if self.cancel_reason and not cancelled:
            cancelled = True
        self.turn.reply_end(cancelled=cancelled, sent_ms=int(sent / bps * 1000), response_id=rid,
                            reason=self.cancel_reason)
        text = a.reply_text if not cancelled else a.reply_text[: max(0, len(a.reply_text) * sent // len(audio))]
        if not cancelled:
            await self.send({"type": self.name("response.output_audio.done", "response.audio.done"), **base})
            await self.send({"type": self.name("response.output_audio_transcript.delta",
                                               "response.audio_transcript.delta"), **base, "delta": text})
        await self.send({"type": self.name("response.output_audio_transcript.done", "response.audio_transcript.done"),
                         **base, "transcript": text})
        part = {"type": part_type, "transcript": text}
        await self.send({"type": "response.content_part.done", **base, "part": part})
        item = {**item, "status": "incomplete" if cancelled else "completed", "content": [part]}
        await self.send({"type": "response.output_item.done", "response_id": rid, "output_index": 0, "item": item})
        await self.finish_response(rid, [item], "cancelled" if cancelled else "completed")


async def handle(request: web.Request) -> web.StreamResponse:
    args = request.app["args"]
    mode = args.mode
    conn = rec.new_conn()
    hdr = request.headers
    protos = [p.strip() for p in hdr.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
    rec.log_in(conn, {"http": "GET", "path": request.path, "query": dict(request.query),
                      "authorization": hdr.get("Authorization"), "openai_beta": hdr.get("OpenAI-Beta"),
                      "subprotocols": protos})
    if mode == "slow-start":
        await asyncio.sleep(mode.ms / 1000)
    key = None
    auth = hdr.get("Authorization", "")
    if auth.startswith("Bearer "):
        key = auth[7:].strip()
    for p in protos:
        if p.startswith("openai-insecure-api-key."):
            key = p[len("openai-insecure-api-key."):]
    if key != args.api_key:
        rec.marker(conn, "auth_failed", got=key)
        msg = ("You didn't provide an API key. You need to provide your API key in an Authorization header "
               "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)." if key is None
               else "Incorrect API key provided.")
        return web.json_response({"error": {"message": msg, "type": "invalid_request_error", "param": None,
                                            "code": None if key is None else "invalid_api_key"}}, status=401)
    if mode == "http500":
        rec.marker(conn, "http500")
        return web.json_response({"error": {"message": "The server had an error while processing your request.",
                                            "type": "server_error", "param": None, "code": None}}, status=500)
    model = request.query.get("model")
    if not model:
        rec.marker(conn, "client_error", detail="missing model")
        return web.json_response({"error": {"message": "Missing required parameter: 'model'.",
                                            "type": "invalid_request_error", "param": "model",
                                            "code": "missing_required_parameter"}}, status=400)
    if not (hdr.get("Upgrade", "").lower() == "websocket"):
        return web.json_response({"error": {"message": "WebSocket upgrade required", "type": "invalid_request_error",
                                            "param": None, "code": None}}, status=426)
    ws = web.WebSocketResponse(max_msg_size=16 * 1024 * 1024, autoping=True,
                               protocols=("realtime",) if protos else ())
    await ws.prepare(request)
    transport = request.transport
    rec.marker(conn, "connected", model=model, peer=str(request.remote))
    sess = Session(args, request.app["reply"], ws, conn, model, beta_header=bool(hdr.get("OpenAI-Beta")))
    killer = None
    if mode == "disconnect-after":
        async def kill():
            await asyncio.sleep(mode.ms / 1000)
            rec.marker(conn, "disconnect", after_ms=mode.ms)
            sess.closed = True
            common.abort_transport(transport)
        killer = asyncio.create_task(kill())
    await sess.send({"type": "session.created", "session": sess.session_obj()})
    if mode == "garbage":
        for junk in ('{"type": "session.updated", "session": {"id": ', "\x00\x01not json at all", "}{"):
            rec.log_out(conn, {"garbage_text": junk})
            await ws.send_str(junk)
        junkb = common.garbage_bytes(33, conn)
        rec.log_out(conn, {"garbage_binary_bytes": len(junkb)})
        await ws.send_bytes(junkb)
        await sess.error(None, "boom", etype="server_error")
    reason = "client closed"
    try:
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                if not await sess.on_text(msg.data):
                    reason = "client error"
                    await ws.close(code=1008, message=b"invalid event")
                    break
            elif msg.type == WSMsgType.BINARY:
                rec.log_in(conn, {"binary_bytes": len(msg.data)})
                rec.marker(conn, "client_error", detail="binary frame")
                await sess.error("invalid_request_error", "Binary frames are not supported.")
                reason = "client error"
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
    app.router.add_get("/v1/realtime", handle)
    await httpfake.serve_app(app, args, rec)


if __name__ == "__main__":
    _args = parse_args()
    common.run_main(lambda: main(_args), lambda: rec, _args)
