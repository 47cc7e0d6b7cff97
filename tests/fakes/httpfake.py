"""aiohttp helpers shared by the HTTP and WebSocket fakes: start/READY, failure modes, chunked bodies."""
from __future__ import annotations

import asyncio
import time
import warnings
from typing import Any

from aiohttp import web

import common
from common import Mode, Recorder

# the fakes keep app["args"]-style string keys; no need for aiohttp's AppKey warning
warnings.filterwarnings("ignore", category=web.NotAppKeyWarning)


async def serve_app(app: web.Application, args: Any, rec: Recorder) -> None:
    """Bind 127.0.0.1:args.port, print READY <port>, run until cancelled."""
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    sock = common.bind_socket(args.port)
    await web.SockSite(runner, sock, shutdown_timeout=0.5).start()
    flusher = asyncio.create_task(rec.flush_loop())
    rec.marker(0, "listening", port=common.announce_ready(sock), mode=args.mode.spec)
    try:
        await asyncio.Event().wait()
    finally:
        flusher.cancel()
        await runner.cleanup()


def client_gone(request: web.Request) -> bool:
    tr = request.transport
    return tr is None or tr.is_closing()


async def wait_client_gone(request: web.Request, limit_s: float = 3600.0) -> None:
    end = time.monotonic() + limit_s
    while not client_gone(request) and time.monotonic() < end:
        await asyncio.sleep(0.1)


async def apply_mode(request: web.Request, mode: Mode, rec: Recorder, conn: int, *,
                     error_body: Any, garbage_type: str = "application/octet-stream",
                     drain_body: bool = True) -> web.StreamResponse | None:
    """Handle slow-start / http500 / garbage / silent before a route does its normal work.

    Returns a response to return at once, or None to carry on (slow-start has
    then already slept; disconnect-after is up to the route's body writer).
    """
    if mode == "slow-start":
        rec.marker(conn, "slow_start", ms=mode.ms)
        await asyncio.sleep(mode.ms / 1000)
        return None
    if mode == "http500":
        rec.marker(conn, "http500")
        return web.json_response(error_body, status=500)
    if mode == "garbage":
        junk = common.garbage_bytes(257, conn)
        rec.log_out(conn, {"garbage_bytes": len(junk)})
        resp = web.Response(status=200, body=junk, content_type=garbage_type)
        resp.force_close()
        return resp
    if mode == "silent":
        rec.marker(conn, "silent")
        if drain_body:
            try:
                await request.read()
            except Exception:  # noqa: BLE001
                pass
        await wait_client_gone(request)
        rec.marker(conn, "client_gone")
        return web.Response(status=204)
    return None


async def send_chunks(request: web.Request, resp: web.StreamResponse, chunks: list[bytes], mode: Mode,
                      rec: Recorder, conn: int, t0: float, gap_s: float = 0.01) -> bool:
    """Write chunks (already prepared response). disconnect-after:MS cuts the
    connection MS after t0 (monotonic), before the last chunk and the chunked
    terminator. Returns True when the body was completed."""
    if mode == "disconnect-after":
        if len(chunks) == 1 and len(chunks[0]) > 1:
            half = len(chunks[0]) // 2
            chunks = [chunks[0][:half], chunks[0][half:]]
        deadline = t0 + mode.ms / 1000
        sent = 0
        for c in chunks[:-1]:
            if time.monotonic() >= deadline:
                break
            await resp.write(c)
            sent += len(c)
            await asyncio.sleep(gap_s)
        delay = deadline - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        rec.marker(conn, "disconnect", after_ms=mode.ms, sent_bytes=sent)
        common.abort_transport(request.transport)
        return False
    for c in chunks:
        await resp.write(c)
        if gap_s:
            await asyncio.sleep(gap_s)
    await resp.write_eof()
    return True


async def respond(request: web.Request, mode: Mode, rec: Recorder, conn: int, t0: float, body: bytes,
                  content_type: str, status: int = 200, chunks: list[bytes] | None = None,
                  gap_s: float = 0.0) -> web.StreamResponse:
    """Send a whole body (Content-Length when `chunks` is None, else chunked), honouring disconnect-after."""
    resp = web.StreamResponse(status=status, headers={"Content-Type": content_type})
    if chunks is None:
        resp.content_length = len(body)
        chunks = [body]
    else:
        resp.enable_chunked_encoding()
    await resp.prepare(request)
    await send_chunks(request, resp, chunks, mode, rec, conn, t0, gap_s)
    return resp


def route_mode(args: Any, route: str) -> Mode:
    """--mode applies to every route unless --fail-route names some routes."""
    fr = getattr(args, "fail_route", None)
    if fr and route not in fr:
        return common.NORMAL
    return args.mode
