#!/usr/bin/env bash
# Side-by-side baseline (issue 13): rtpengine (Debian's rtpengine-daemon,
# userspace only, no kernel module) relaying the same PCMU load as
# agentline's `plain` case, in the same run, on 127.0.0.1 only.
#
# rtpengine: N calls, each set up over the ng protocol (offer + answer,
# benches/load/rtpengine_load.py), so each call has two legs, A and B. Every
# 20 ms the generator sends one PCMU packet of looped speech
# (tests/data/speech_8k.wav) into leg A and one into leg B; rtpengine relays
# A->B and B->A: per call 100 packets/s in and 100 out. A second row
# (one-way) has only A send: rtpengine relays A->B, 50 in and 50 out per
# call, agentline's per-call packet count. agentline's plain
# case (benches/load/run.sh --cases plain): per call 50 packets/s in from
# sipp's rtp_stream and 50 out (the echo), each one decoded, through the
# adaptive jitter buffer, encoded, plus RTCP. Both CPU figures are
# utime+stime from /proc/PID/stat over the same steady window length.
#
#   benches/load/rtpengine.sh                  # 300 calls, 10 s window
#   benches/load/rtpengine.sh --calls 500 --steady 10
#
# Options:
#   --calls N          concurrent calls (default 300)
#   --steady S         steady window in seconds (default 10)
#   --rate R           new calls per second while ramping up (default 100)
#   --quick            50 calls, 2 s window
#   --two-way-only     skip the one-way rtpengine row
#   --no-agentline     rtpengine only (no run.sh plain case)
#   --no-install       do not try `apt-get install rtpengine-daemon`
#   --keep             keep the work dir
# Environment:
#   RTPE_PORTS         rtpengine's RTP range (default 20000-29999; below the
#                      kernel's ephemeral range, where the generator binds)
#   RTPE_SLOTS         send slots per 20 ms in the generator (default 10:
#                      every 2 ms a tenth of the calls send)
#   AGENTLINE_BIN, LOAD_RTP_PORTS, LOAD_SIPP_MP: passed to run.sh
#
# Exit status: 0 when it ran, or when rtpengine cannot be installed here
# (the row says skipped); 1 on a harness failure. Not part of CI.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=${AGENTLINE_BIN:-$REPO/target/release/agentline}
CALLS=300
STEADY=10
RATE=100
SETTLE=2
AGENTLINE=1
INSTALL=1
KEEP=0
RTPE_PORTS=${RTPE_PORTS:-20000-29999}
RTPE_MODES="two-way one-way"
RTPE_SLOTS=${RTPE_SLOTS:-10}

while [ $# -gt 0 ]; do
    case "$1" in
        --calls) CALLS=$2; shift ;;
        --steady) STEADY=$2; shift ;;
        --rate) RATE=$2; shift ;;
        --quick) CALLS=50; STEADY=2; SETTLE=0.5 ;;
        --two-way-only) RTPE_MODES="two-way" ;;
        --no-agentline) AGENTLINE=0 ;;
        --no-install) INSTALL=0 ;;
        --keep) KEEP=1 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
        *) echo "rtpengine.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

HARNESS=rtpengine DIE_STATUS=1 DIE_WORD=FAIL
# shellcheck source=benches/lib.sh
. "$REPO/benches/lib.sh"
for tool in python3 sox awk; do
    command -v "$tool" >/dev/null || die "$tool is not installed"
done

HEADER="| relay | calls | up | cores | calls per core | packets per s (in + out) | packets per core | received % of sent | load generator | generator cores |"
RULE="|---|---:|---:|---:|---:|---:|---:|---:|---|---:|"

# ---------------------------------------------------------------- rtpengine
if ! command -v rtpengine >/dev/null && [ "$INSTALL" = 1 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        log "installing rtpengine-daemon (apt-get)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y rtpengine-daemon >&2 ||
            log "apt-get install rtpengine-daemon failed"
    else
        log "rtpengine is not installed and apt-get cannot run here (not root)"
    fi
fi
if ! command -v rtpengine >/dev/null; then
    log "skipped: rtpengine-daemon is not installed and cannot be installed here"
    echo
    echo "$HEADER"
    echo "$RULE"
    echo "| rtpengine | $CALLS | skipped: rtpengine-daemon cannot be installed here |"
    exit 0
fi
RTPE_VERSION=$(rtpengine --version 2>&1 | sed -n 's/^Version: //p')
others=$(pgrep -x rtpengine || true)
[ -z "$others" ] || log "WARNING: other rtpengine processes are running ($others; e.g. the packaged service) and share the CPU"

harness_workdir rtpengine-load
RTPE_PID=""
GEN_PID=""
cleanup() {
    if [ -n "$GEN_PID" ]; then kill "$GEN_PID" 2>/dev/null || true; fi
    if [ -n "$RTPE_PID" ]; then
        kill "$RTPE_PID" 2>/dev/null || true
        wait "$RTPE_PID" 2>/dev/null || true
    fi
    harness_cleanup
}
trap cleanup EXIT

HZ=$(getconf CLK_TCK)
cpu_ticks() { # utime + stime of pid $1 (all its threads), in clock ticks
    local s
    s=$(cat "/proc/$1/stat") || return 1
    s=${s##*) }
    awk '{print $12 + $13}' <<<"$s"
}
now() { date +%s.%N; }

sox "$REPO/tests/data/speech_8k.wav" -t ul -r 8000 -c 1 "$W/speech.ulaw"
NG_PORT=$(free_port)
# Unprivileged when run as root (the Debian service runs as its own user).
AS_USER=()
if [ "$(id -u)" = 0 ] && command -v setpriv >/dev/null && id nobody >/dev/null 2>&1; then
    AS_USER=(setpriv --reuid=nobody --regid="$(id -gn nobody)" --clear-groups)
    chmod 755 "$W"
fi
# --table=-1: no kernel forwarding table, userspace only (and no
# --no-fallback); --config-file=none: not /etc/rtpengine/rtpengine.conf.
# Worker threads: rtpengine's default (as many as cores, at least 4).
"${AS_USER[@]}" rtpengine --config-file=none --foreground --log-stderr \
    --log-level=4 --table=-1 --interface=127.0.0.1 \
    --listen-ng="127.0.0.1:$NG_PORT" --port-min="${RTPE_PORTS%-*}" \
    --port-max="${RTPE_PORTS#*-}" --timeout=60 --delete-delay=0 \
    >"$W/rtpengine.out" 2>"$W/rtpengine.log" &
RTPE_PID=$!
for _ in $(seq 50); do
    python3 "$REPO/benches/load/rtpengine_load.py" --ng "127.0.0.1:$NG_PORT" --ping 2>/dev/null && break
    kill -0 "$RTPE_PID" 2>/dev/null || { tail -20 "$W/rtpengine.log" >&2; die "rtpengine exited at start"; }
    sleep 0.2
done
python3 "$REPO/benches/load/rtpengine_load.py" --ng "127.0.0.1:$NG_PORT" --ping ||
    die "rtpengine's ng port does not answer"
log "rtpengine $RTPE_VERSION pid $RTPE_PID (userspace, ng 127.0.0.1:$NG_PORT, RTP $RTPE_PORTS), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"

# run_rtpe MODE (two-way | one-way): one rtpengine row in R_ROWS.
R_ROWS=()
R_CPC=""
R_PPC=""
R1_CPC=""
R1_PPC=""
run_rtpe() {
    local mode=$1 per_call=100 what="2 legs per call, A->B and B->A" gen_args=()
    if [ "$mode" = one-way ]; then
        per_call=50; what="2 legs per call, A->B only"; gen_args=(--one-way)
    fi
    local out=$W/gen-$mode.out
    : >"$out"
    python3 "$REPO/benches/load/rtpengine_load.py" --ng "127.0.0.1:$NG_PORT" \
        --calls "$CALLS" --rate "$RATE" --ulaw "$W/speech.ulaw" --out "$out" \
        --slots "$RTPE_SLOTS" "${gen_args[@]}" 2>"$W/gen-$mode.err" &
    GEN_PID=$!
    log "rtpengine $mode: $CALLS calls at $RATE/s"
    local t_end
    t_end=$(( $(date +%s) + CALLS / RATE + 30 ))
    until grep -q '^ready' "$out"; do
        kill -0 "$GEN_PID" 2>/dev/null || { cat "$W/gen-$mode.err" >&2; die "the generator exited"; }
        [ "$(date +%s)" -lt "$t_end" ] || die "calls not set up in time"
        sleep 0.2
    done
    local up c0 g0 t0 c1 g1 t1
    up=$(awk '/^ready/{print $2}' "$out")
    sleep "$SETTLE"
    kill -0 "$RTPE_PID" 2>/dev/null || die "rtpengine died"
    c0=$(cpu_ticks "$RTPE_PID"); g0=$(cpu_ticks "$GEN_PID"); t0=$(now)
    kill -USR1 "$GEN_PID"
    sleep "$STEADY"
    kill -USR1 "$GEN_PID"
    c1=$(cpu_ticks "$RTPE_PID"); g1=$(cpu_ticks "$GEN_PID"); t1=$(now)
    sleep 0.2
    kill -0 "$RTPE_PID" 2>/dev/null || die "rtpengine died"
    kill "$GEN_PID"
    wait "$GEN_PID" || true
    GEN_PID=""
    # snap <time> <sent> <received> <received with another SSRC>: the two
    # taken in the window (the third is the generator's at exit).
    local ta tx0 rx0 ox0 tb tx1 rx1 ox1
    read -r ta tx0 rx0 ox0 tb tx1 rx1 ox1 < <(awk '/^snap/{n++; if (n <= 2) printf "%s %s %s %s ", $2, $3, $4, $5} END{print ""}' "$out")
    local dt dts cores gcores pps ppc cpc recv sent_pct
    dt=$(calc "%.3f" "$t1 - $t0")
    dts=$(calc "%.3f" "$tb - $ta")
    cores=$(calc "%.3f" "($c1 - $c0) / $HZ / $dt")
    gcores=$(calc "%.2f" "($g1 - $g0) / $HZ / $dt")
    pps=$(calc "%.0f" "($tx1 - $tx0 + $rx1 - $rx0) / $dts")
    ppc=$(calc "%.0f" "$cores > 0 ? $pps / $cores : 0")
    cpc=$(calc "%.0f" "$cores > 0 ? $up / $cores : 0")
    recv=$(calc "%.1f" "$tx1 > $tx0 ? 100 * ($rx1 - $rx0) / ($tx1 - $tx0) : 0")
    sent_pct=$(calc "%.1f" "100 * ($tx1 - $tx0) / ($up * $per_call * $dts)")
    if [ "$mode" = two-way ]; then R_CPC=$cpc; R_PPC=$ppc; else R1_CPC=$cpc; R1_PPC=$ppc; fi
    R_ROWS+=("| rtpengine $RTPE_VERSION, userspace relay ($what) | $CALLS | $up | $cores | $cpc | $pps | $ppc | $recv | rtpengine_load.py ($sent_pct % of $per_call/s per call sent) | $gcores |")
    log "rtpengine $mode: $up calls, $cores cores, $cpc calls/core, $pps packets/s in+out, $ppc per core; received $recv % of sent ($((ox1 - ox0)) with an unexpected SSRC); generator $gcores cores"
}
for mode in $RTPE_MODES; do run_rtpe "$mode"; done
grep -v '^\[' "$W/rtpengine.log" | head -5 >&2 || true
kill "$RTPE_PID" 2>/dev/null || true
wait "$RTPE_PID" 2>/dev/null || true
RTPE_PID=""
LOAD_AFTER_RTPE=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------- agentline
A_ROW=""
A_CPC=""
A_PPC=""
if [ "$AGENTLINE" = 1 ]; then
    log "agentline: benches/load/run.sh --cases plain --calls $CALLS --steady $STEADY --rate $RATE"
    run_args=(--cases plain --calls "$CALLS" --steady "$STEADY" --rate "$RATE")
    [ "$KEEP" = 1 ] && run_args+=(--keep)
    if "$REPO/benches/load/run.sh" "${run_args[@]}" >"$W/run.out"; then
        # | plain | calls | up | ok/failed | cores | calls per core | ... | rx % | tx % | codec errors | sipp cores |
        line=$(grep -m1 '^| plain |' "$W/run.out" || true)
        [ -n "$line" ] || die "no plain row in run.sh's output"
        IFS='|' read -r _ _ a_calls a_up _ a_cores a_cpc _ _ _ _ _ _ a_rx a_tx _ a_sipp _ <<<"$line"
        a_up=${a_up// /}; a_cores=${a_cores// /}; a_cpc=${a_cpc// /}
        a_rx=${a_rx// /}; a_tx=${a_tx// /}; a_sipp=${a_sipp// /}; a_calls=${a_calls// /}
        A_PPS=$(calc "%.0f" "$a_up * 50 * ($a_rx + $a_tx) / 100")
        A_PPC=$(calc "%.0f" "$a_cores > 0 ? $A_PPS / $a_cores : 0")
        A_CPC=$a_cpc
        a_label="agentline $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
        [ -z "${AGENTLINE_BIN:-}" ] || a_label="agentline ($AGENTLINE_BIN)"
        A_ROW="| $a_label, plain PCMU echo (terminates 1 leg) | $a_calls | $a_up | $a_cores | $a_cpc | $A_PPS | $A_PPC | $(calc "%.1f" "$a_rx > 0 ? 100 * $a_tx / $a_rx : 0") | sipp rtp_stream (rx $a_rx %, tx $a_tx % of 50/s) | $a_sipp |"
        log "agentline: $a_up calls, $a_cores cores, $a_cpc calls/core, $A_PPS packets/s, $A_PPC per core"
    else
        log "run.sh failed (see above); no agentline row"
    fi
fi

echo
echo "rtpengine baseline, $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(date -u '+%Y-%m-%d %H:%M UTC'), steady window ${STEADY} s, load average after rtpengine $LOAD_AFTER_RTPE, at the end $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "$HEADER"
echo "$RULE"
[ -z "$A_ROW" ] || echo "$A_ROW"
for r in "${R_ROWS[@]}"; do echo "$r"; done
if [ -n "$A_ROW" ]; then
    echo
    echo "run.sh's own row for the agentline case (same run):"
    echo
    grep -m1 '^| case |' "$W/run.out"
    grep -m1 '^|---' "$W/run.out"
    grep -m1 '^| plain |' "$W/run.out"
fi
if [ -n "$A_CPC" ] && [ "$A_CPC" != 0 ] && [ -n "$R_CPC" ] && [ "$R_CPC" != 0 ]; then
    echo
    echo "rtpengine two-way / agentline: $(calc "%.2f" "$R_PPC / $A_PPC")x the packets per core, $(calc "%.2f" "$R_CPC / $A_CPC")x the calls per core (rtpengine's call: 2 relayed legs, 200 packets/s; agentline's: 1 terminated leg, 100 packets/s)."
fi
if [ -n "$A_CPC" ] && [ "$A_CPC" != 0 ] && [ -n "$R1_CPC" ] && [ "$R1_CPC" != 0 ]; then
    echo
    echo "rtpengine one-way / agentline: $(calc "%.2f" "$R1_PPC / $A_PPC")x the packets per core, $(calc "%.2f" "$R1_CPC / $A_CPC")x the calls per core (both 100 packets/s per call)."
fi
