#!/usr/bin/env python3
"""Fake AVR webhook receiver: records every POST (any path) and answers 200 {}.

See README.md in this folder for the options and the events.jsonl markers.
"""
from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from aiohttp import web  # noqa: E402

import common  # noqa: E402
import httpfake  # noqa: E402
from common import Recorder  # noqa: E402

rec: Recorder | None = None
ARGS = None
STATE = {"requests": 0, "failed": 0}


def parse_args(argv=None):
    p = common.base_parser(__doc__)
    p.add_argument("--call-initiated-response", metavar="JSON", default=None,
                   help="response body for events of type call_initiated (default {})")
    p.add_argument("--fail-count", type=int, default=None,
                   help="with --mode http500 (or garbage/disconnect-after/silent): misbehave only for the first N "
                        "requests, then answer normally (default: always)")
    p.add_argument("--secret", default=None,
                   help="if set, answer 401 when X-AVR-WEBHOOK-SECRET differs (recorded either way)")
    args = p.parse_args(argv)
    if args.call_initiated_response is not None:
        json.loads(args.call_initiated_response)  # fail fast on bad JSON
    return args


async def hook(request: web.Request) -> web.StreamResponse:
    t0 = time.monotonic()
    conn = rec.new_conn()
    STATE["requests"] += 1
    raw = await request.read()
    headers = {k.lower(): v for k, v in request.headers.items()}
    entry = {"http": request.method, "path": request.path, "n": STATE["requests"], "headers": headers,
             "secret": request.headers.get("X-AVR-WEBHOOK-SECRET")}
    body = None
    try:
        body = json.loads(raw) if raw else None
        entry["body"] = body
    except ValueError:
        entry["body_text"] = raw[:2000].decode("utf-8", "replace")
    if isinstance(body, dict):
        entry["webhook_type"] = body.get("type")
        entry["uuid"] = body.get("uuid")
    rec.log_in(conn, entry)
    if request.method != "POST":
        return web.json_response({"message": "Method Not Allowed"}, status=405)
    if ARGS.secret is not None and request.headers.get("X-AVR-WEBHOOK-SECRET") != ARGS.secret:
        rec.marker(conn, "bad_secret", got=request.headers.get("X-AVR-WEBHOOK-SECRET"))
        return web.json_response({"message": "Invalid webhook secret"}, status=401)
    mode = ARGS.mode
    if mode not in ("normal", "slow-start") and ARGS.fail_count is not None and STATE["failed"] >= ARGS.fail_count:
        mode = common.NORMAL
    if mode not in ("normal", "slow-start"):
        STATE["failed"] += 1
    early = await httpfake.apply_mode(request, mode, rec, conn, error_body={"message": "Internal Server Error"},
                                      garbage_type="application/json", drain_body=False)
    if early is not None:
        return early
    out = "{}"
    if isinstance(body, dict) and body.get("type") == "call_initiated" and ARGS.call_initiated_response is not None:
        out = ARGS.call_initiated_response
    rec.log_out(conn, {"status": 200, "body": json.loads(out)})
    return await httpfake.respond(request, mode, rec, conn, t0, out.encode(), "application/json")


async def main(args) -> None:
    global rec, ARGS
    ARGS = args
    rec = Recorder(args.record)
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", hook)
    await httpfake.serve_app(app, args, rec)


if __name__ == "__main__":
    _args = parse_args()
    common.run_main(lambda: main(_args), lambda: rec, _args)
