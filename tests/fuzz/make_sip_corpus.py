#!/usr/bin/env python3
"""Writes tests/fuzz/corpus/sip/sipp-*: every message a sipp scenario
sends (tests/sipp/*.xml and sipp's built-in uac, uas, regexp, branchc,
branchs via `sipp -sd`), with sipp's [keywords] filled in, CRLF line ends
and a true Content-Length. Re-run after changing a scenario:
    python3 tests/fuzz/make_sip_corpus.py"""
import glob, os, re, subprocess, sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests/fuzz/corpus/sip")

VALUES = {
    "service": "1000", "remote_ip": "127.0.0.1", "remote_port": "5060",
    "local_ip": "127.0.0.1", "local_port": "5070", "transport": "UDP",
    "pid": "4242", "call_number": "1", "call_id": "1-4242@127.0.0.1",
    "local_ip_type": "4", "media_ip_type": "4", "media_ip": "127.0.0.1",
    "media_port": "6000", "branch": "z9hG4bK-4242-1-2", "next_url": "sip:1000@127.0.0.1:5060",
    "routes": "", "peer_tag_param": ";tag=as1234", "cseq": "2", "server_ip": "127.0.0.1",
    "last_Via:": "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-4242-1-0;received=127.0.0.1",
    "last_From:": "From: <sip:sipp@127.0.0.1:5070>;tag=4242SIPpTag001",
    "last_To:": "To: <sip:1000@127.0.0.1:5060>;tag=as1234",
    "last_Call-ID:": "Call-ID: 1-4242@127.0.0.1",
    "last_CSeq:": "CSeq: 1 INVITE",
    "last_Record-route:": "", "last_Contact:": "Contact: <sip:1000@127.0.0.1:5060>",
    "authentication": 'Authorization: Digest username="1000", realm="agentline", '
        'nonce="abc", uri="sip:1000@127.0.0.1:5060", response="0123456789abcdef0123456789abcdef", '
        'algorithm=MD5',
}

def fill(text):
    def sub(m):
        key = m.group(1)
        if key in VALUES:
            return VALUES[key]
        if key.startswith("last_"):
            return ""
        if key.startswith("$") or key.startswith("field"):
            return "x"
        if key.startswith("len"):
            return "[len]"
        return "x"
    return re.sub(r"\[([^\]\[]+)\]", sub, text)

def messages(xml):
    for m in re.finditer(r"<send[^>]*>\s*<!\[CDATA\[(.*?)\]\]>", xml, re.S):
        lines = [l.strip() for l in m.group(1).strip("\n").splitlines()]
        while lines and not lines[0]:
            lines.pop(0)
        while lines and not lines[-1]:
            lines.pop()
        if not lines:
            continue
        text = fill("\n".join(lines))
        head, _, body = text.partition("\n\n")
        head = "\r\n".join(l for l in head.split("\n") if l)
        body = "\r\n".join(body.split("\n")) + ("\r\n" if body else "")
        head = head.replace("[len]", str(len(body.encode())))
        yield (head + "\r\n\r\n" + body).encode()

def main():
    os.makedirs(OUT, exist_ok=True)
    sources = [(os.path.basename(p)[:-4], open(p).read()) for p in sorted(glob.glob(os.path.join(ROOT, "tests/sipp/*.xml")))]
    for name in ["uac", "uas", "regexp", "branchc", "branchs"]:
        try:
            xml = subprocess.run(["sipp", "-sd", name], capture_output=True, text=True).stdout
            sources.append(("builtin-" + name, xml))
        except FileNotFoundError:
            sys.exit("sipp not installed")
    n = 0
    for name, xml in sources:
        for i, msg in enumerate(messages(xml)):
            with open(os.path.join(OUT, f"sipp-{name}-{i}"), "wb") as f:
                f.write(msg)
            n += 1
    print(f"{n} messages")

main()
