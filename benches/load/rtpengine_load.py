#!/usr/bin/env python3
"""Sessions and RTP load for rtpengine (issue 13's side-by-side baseline).

Used by benches/load/rtpengine.sh; standard library only.

For each of N calls: an `offer` and an `answer` over rtpengine's ng
protocol (bencode over UDP), so the call has two legs through rtpengine:
leg A (a socket standing for the caller) and leg B (a socket standing for
the callee). Then every 20 ms each A socket sends one PCMU packet of looped
speech to rtpengine's port for A (rtpengine relays it to B) and each B
socket sends one to rtpengine's port for B (relayed to A): per call 2 x 50
packets/s into rtpengine and 2 x 50 out (with --one-way only A sends:
50 in and 50 out, agentline's echo's count). Calls are spread over the 20 ms
in 10 slots, as calls that started at different times would be.

Every socket reads what rtpengine relays to it and counts packets whose
SSRC is the other leg's (relayed as sent) and any others.

  rtpengine_load.py --ng 127.0.0.1:PORT --calls N --ulaw FILE --out FILE

The out file gets `ready N` once every call is set up and streaming, and a
line `snap <unix time> <sent> <received> <received, other SSRC>` on each
SIGUSR1; SIGTERM (or SIGINT) deletes the sessions and exits 0.
`--ping` only checks that the ng port answers (exit 0 on pong).
"""

import argparse
import os
import random
import select
import signal
import socket
import struct
import sys
import time

FRAME = 160  # PCMU samples (and bytes) per 20 ms
SLOTS = 10


def benc(x):
    if isinstance(x, int):
        return b"i%de" % x
    if isinstance(x, str):
        x = x.encode()
    if isinstance(x, bytes):
        return b"%d:%s" % (len(x), x)
    if isinstance(x, list):
        return b"l" + b"".join(benc(v) for v in x) + b"e"
    if isinstance(x, dict):
        return b"d" + b"".join(benc(k) + benc(x[k]) for k in sorted(x)) + b"e"
    raise TypeError(type(x))


def bdec(b, i=0):
    c = b[i:i + 1]
    if c == b"i":
        j = b.index(b"e", i)
        return int(b[i + 1:j]), j + 1
    if c == b"l":
        i += 1
        out = []
        while b[i:i + 1] != b"e":
            v, i = bdec(b, i)
            out.append(v)
        return out, i + 1
    if c == b"d":
        i += 1
        out = {}
        while b[i:i + 1] != b"e":
            k, i = bdec(b, i)
            v, i = bdec(b, i)
            out[k.decode()] = v
        return out, i + 1
    j = b.index(b":", i)
    n = int(b[i:j])
    return b[j + 1:j + 1 + n], j + 1 + n


class Ng:
    def __init__(self, addr):
        self.addr = addr
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(2.0)
        self.n = 0

    def call(self, msg):
        self.n += 1
        cookie = b"%d_%d" % (os.getpid(), self.n)
        data = cookie + b" " + benc(msg)
        for _ in range(3):
            self.sock.sendto(data, self.addr)
            try:
                while True:
                    reply, _ = self.sock.recvfrom(65535)
                    c, _, body = reply.partition(b" ")
                    if c == cookie:
                        out, _ = bdec(body)
                        return out
            except socket.timeout:
                continue
        raise SystemExit("rtpengine: no answer to %s" % msg.get("command"))


def sdp(port, sess):
    return (
        "v=0\r\no=load %d 1 IN IP4 127.0.0.1\r\ns=load\r\nc=IN IP4 127.0.0.1\r\n"
        "t=0 0\r\nm=audio %d RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=ptime:20\r\n"
        "a=sendrecv\r\n" % (sess, port)
    )


def media_port(reply, what):
    if reply.get("result") != b"ok":
        raise SystemExit("rtpengine %s: %r" % (what, reply))
    for line in reply["sdp"].decode().splitlines():
        if line.startswith("m=audio "):
            return int(line.split()[1])
    raise SystemExit("rtpengine %s: no m=audio in %r" % (what, reply["sdp"]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ng", required=True)
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--rate", type=int, default=100, help="new calls per second")
    ap.add_argument("--ulaw", help="raw 8 kHz u-law speech, looped")
    ap.add_argument("--out")
    ap.add_argument("--one-way", action="store_true",
                    help="only leg A sends (B only receives): 50 packets/s in and out per call")
    ap.add_argument("--slots", type=int, default=SLOTS,
                    help="send slots per 20 ms (calls spread over them)")
    ap.add_argument("--ping", action="store_true")
    a = ap.parse_args()
    host, port = a.ng.rsplit(":", 1)
    ng = Ng((host, int(port)))
    if a.ping:
        ng.sock.settimeout(0.3)
        r = ng.call({"command": "ping"})
        sys.exit(0 if r.get("result") == b"pong" else 1)

    speech = open(a.ulaw, "rb").read()
    speech = speech[: len(speech) // FRAME * FRAME]
    frames = [speech[i:i + FRAME] for i in range(0, len(speech), FRAME)]
    out = open(a.out, "a", buffering=1)

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    counts = {"tx": 0, "rx": 0, "other": 0}

    def snap(*_):
        out.write("snap %.6f %d %d %d\n" % (time.time(), counts["tx"], counts["rx"], counts["other"]))

    signal.signal(signal.SIGUSR1, snap)

    ep = select.epoll()
    legs = []  # per socket: [sock, dest, ssrc, seq, ts, frame index, expected ssrc]
    by_fd = {}
    calls = []
    tag = "%d-%d" % (os.getpid(), int(time.time()))
    t_start = time.monotonic()
    t_next = t_start
    nslots = a.slots
    slot_legs = [[] for _ in range(nslots)]

    def new_leg(sk, dest, ssrc, peer_ssrc, slot, start_frame):
        leg = [sk, dest, ssrc, random.randrange(65536), random.randrange(1 << 32),
               start_frame, struct.pack("!I", peer_ssrc)]
        legs.append(leg)
        by_fd[sk.fileno()] = leg
        ep.register(sk.fileno(), select.EPOLLIN)
        slot_legs[slot].append(leg)

    def send_slot(slot):
        for leg in slot_legs[slot]:
            sk, dest, ssrc, seq, ts, fi, _ = leg
            hdr = struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc)
            try:
                sk.sendto(hdr + frames[fi], dest)
                counts["tx"] += 1
            except OSError:
                pass
            leg[3] = seq + 1
            leg[4] = ts + FRAME
            leg[5] = (fi + 1) % len(frames)

    def drain(timeout):
        for fd, _ in ep.poll(timeout):
            leg = by_fd[fd]
            try:
                pkt = leg[0].recv(2048)
            except BlockingIOError:
                continue
            if pkt[8:12] == leg[6]:
                counts["rx"] += 1
            else:
                counts["other"] += 1

    # Set up the calls at --rate per second, streaming each as soon as it is up.
    tick = 0.020 / nslots
    slot = 0
    next_tick = time.monotonic()
    for i in range(a.calls):
        if stop:
            break
        t_due = t_start + i / a.rate
        while True:
            now = time.monotonic()
            if now >= next_tick:
                send_slot(slot)
                slot = (slot + 1) % nslots
                next_tick += tick
                continue
            if now >= t_due:
                break
            drain(min(next_tick, t_due) - now)
        sa = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sb = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for sk in (sa, sb):
            sk.bind(("127.0.0.1", 0))
            sk.setblocking(False)
        cid = "load-%s-%d" % (tag, i)
        offer = ng.call({"command": "offer", "call-id": cid, "from-tag": "A%d" % i,
                         "sdp": sdp(sa.getsockname()[1], i), "replace": ["origin"],
                         "ICE": "remove"})
        to_b = media_port(offer, "offer")  # rtpengine's port facing B
        answer = ng.call({"command": "answer", "call-id": cid, "from-tag": "A%d" % i,
                          "to-tag": "B%d" % i, "sdp": sdp(sb.getsockname()[1], i),
                          "replace": ["origin"], "ICE": "remove"})
        to_a = media_port(answer, "answer")  # rtpengine's port facing A
        ssrc_a, ssrc_b = random.randrange(1 << 32), random.randrange(1 << 32)
        start = random.randrange(len(frames))
        new_leg(sa, ("127.0.0.1", to_a), ssrc_a, ssrc_b, i % nslots, start)
        new_leg(sb, ("127.0.0.1", to_b), ssrc_b, ssrc_a, i % nslots, (start + 7) % len(frames))
        if a.one_way:
            slot_legs[i % nslots].pop()  # B receives, never sends
        calls.append((cid, "A%d" % i))
    out.write("ready %d\n" % len(calls))

    while not stop:
        now = time.monotonic()
        if now >= next_tick:
            send_slot(slot)
            slot = (slot + 1) % nslots
            next_tick += tick
            if now - next_tick > 1.0:  # far behind (suspended): do not burst
                next_tick = now
            continue
        drain(next_tick - now)

    snap()
    for cid, ft in calls:
        try:
            ng.call({"command": "delete", "call-id": cid, "from-tag": ft})
        except SystemExit:
            break
    out.write("deleted %d\n" % len(calls))


if __name__ == "__main__":
    main()
