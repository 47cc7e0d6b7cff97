# Helpers shared by the bench harnesses (benches/load/run.sh,
# benches/soak/run.sh); sourced, not run. The harness sets, before its
# first call here: HARNESS (the log tag), DIE_STATUS and DIE_WORD (what
# `die` exits with and says), REPO, BIN and KEEP; `start_agentline` also
# needs SIP_PORT, API_PORT, RTP_PORTS and $W/profile.toml.

log() { echo "[$HARNESS $(date -u +%H:%M:%S)] $*" >&2; }
die() { log "$DIE_WORD: $*"; exit "$DIE_STATUS"; }
calc() { awk "BEGIN{ printf \"$1\", ($2) }"; }
rss_kb() { awk '/^VmRSS/{print $2}' "/proc/$1/status"; }

# Dies unless each tool named is on PATH and $BIN is an executable.
require_tools() {
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null || die "$tool is not installed"
    done
    [ -x "$BIN" ] || die "no agentline binary at $BIN (cargo build --release, or set AGENTLINE_BIN)"
}

# A fresh work dir in W (/tmp/$1.XXXXXX), with the fd limit raised (each
# call holds two UDP sockets in agentline and one or two in sipp). At exit
# sipp (SIPP_PID) and agentline (AGENT_PID) are stopped and the dir is
# removed unless KEEP=1.
harness_workdir() {
    ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    W=$(mktemp -d "/tmp/$1.XXXXXX")
    AGENT_PID=""
    SIPP_PID=""
    trap harness_cleanup EXIT
}
harness_cleanup() {
    [ -n "$SIPP_PID" ] && kill "$SIPP_PID" 2>/dev/null || true
    if [ -n "$AGENT_PID" ]; then
        kill "$AGENT_PID" 2>/dev/null || true
        wait "$AGENT_PID" 2>/dev/null || true
    fi
    if [ "$KEEP" = 1 ]; then log "work dir kept: $W"; else rm -rf "$W"; fi
}

free_port() {
    # A port free for UDP and TCP on 127.0.0.1 (asked of the kernel).
    python3 -c 'import socket
while True:
    u=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); u.bind(("127.0.0.1",0)); p=u.getsockname()[1]
    t=socket.socket()
    try:
        t.bind(("127.0.0.1",p)); print(p); break
    except OSError: pass'
}

api() { curl -sf --max-time 20 "http://127.0.0.1:$API_PORT$1"; }

# Starts $BIN with $W/profile.toml (SIP on udp:127.0.0.1:SIP_PORT, the API
# on API_PORT, RTP on RTP_PORTS, logs in $W/agentline.log) and waits for
# GET /health (10 s at most). Sets AGENT_PID and COMMIT.
start_agentline() {
    NO_COLOR=1 RUST_LOG=${RUST_LOG:-warn} "$BIN" run --profile "$W/profile.toml" \
        --sip-listen "udp:127.0.0.1:$SIP_PORT" --rtp-ports "$RTP_PORTS" \
        --api-listen "127.0.0.1:$API_PORT" --state-dir "$W/state" \
        >"$W/agentline.out" 2>"$W/agentline.log" &
    AGENT_PID=$!
    for _ in $(seq 100); do
        api /health >/dev/null 2>&1 && break
        kill -0 "$AGENT_PID" 2>/dev/null || { tail -20 "$W/agentline.log" >&2; die "agentline exited at start"; }
        sleep 0.1
    done
    api /health >/dev/null || die "agentline not ready in 10 s"
    COMMIT=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
}

# The first tables of a harness's profile: loopback trusted, max_calls $1,
# overload control out of the way (max_cpu 1.0, 1 s of media lag: a
# harness measures capacity or leaks, and 503s from a shared machine's
# CPU would cap or spoil the load it places), plain text logs.
profile_head() {
    cat <<PROFILE
[sip]
trusted = ["127.0.0.1/32"]
max_calls = $1
max_cpu = 1.0
max_media_lag_ms = 1000

[rtp]
timeout_s = 30

[log]
format = "text"
PROFILE
}
