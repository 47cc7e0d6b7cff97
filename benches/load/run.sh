#!/usr/bin/env bash
# Socket-level load harness (issue 13): the release agentline binary under
# N concurrent sipp calls sending real looped speech over RTP, one route per
# case, on 127.0.0.1 only. Samples agentline's CPU (utime+stime) and RSS from
# /proc over a steady window, reads the jitter/playout counters from
# GET /calls (delta over the window), and measures call set-up rate and
# INVITE->200 latency. Prints markdown tables on stdout; progress on stderr.
#
#   benches/load/run.sh --quick                 # 50 calls per case, ~40 s (CI)
#   benches/load/run.sh --calls "300 500"       # full run
#
# Cases (--cases, default all):
#   plain  PCMU echo, adaptive jitter buffer    (sipp rtp_stream)
#   vad    PCMU echo, route dsp = { vad = true }
#   full   PCMU echo, dsp = { denoise = true, vad = true, agc = true }
#   g722   G.722 echo (16 kHz)                  (sipp play_pcap_audio)
#   opus   Opus echo (48 kHz, the echo agent takes the codec's rate)
#   opus8k Opus caller, agent at 8 kHz (echo with rate = 8000): libopus
#          decodes and encodes at 8 kHz, as for a G.711-rate AI agent
#   setup  INVITE -> 200 -> ACK -> BYE, no media: rate, p50/p99 INVITE->200
#   webrtc (only when asked: --cases webrtc or webrtc:N) browser-like calls:
#          str0m peers (target/release/examples/load_webrtc, built if
#          missing) POST /webrtc/opus and send Opus over DTLS-SRTP (ICE);
#          its own table
#
# Options:
#   --quick              50 calls, 2 s steady window, 200 set-up calls at 100/s
#                        (~40 s in all on 2 cores)
#   --calls "N ..."      concurrent calls per media case (default "300")
#   --steady S           steady window in seconds (default 10; each call
#                        publishes its counters once a second, so the
#                        rx/tx % columns are only approximate below ~10 s)
#   --rate R             new calls per second while ramping up (default 100)
#   --cases "a b ..."    which cases, in order (default: all above); `case:N`
#                        runs that case once with N calls instead of --calls
#   --setup-rate R       set-up case: calls per second offered (default 500)
#   --setup-calls M      set-up case: total calls (default 5000)
#   --keep               keep the work dir (profile, logs, sipp stats)
# Environment:
#   AGENTLINE_BIN   the binary (default target/release/agentline)
#   LOAD_PCAP_DIR   a dir holding g722.pcap and opus.pcap (made by
#                   `cargo run --release --example load_pcap -- DIR SECONDS`);
#                   default: made here with target/release/examples/load_pcap,
#                   built with cargo if missing
#   LOAD_RTP_PORTS  agentline's RTP range (default 34000-41999)
#   LOAD_SIPP_MP    sipp's RTP base port (default 44000)
#
# Exit status: 0 when every case ran (whatever the figures), 1 on a harness
# failure (agentline did not start or died, sipp could not run).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=${AGENTLINE_BIN:-$REPO/target/release/agentline}
CALLS="300"
STEADY=10
RATE=100
CASES="plain vad full g722 opus opus8k setup"
SETUP_RATE=500
SETUP_CALLS=5000
KEEP=0
RTP_PORTS=${LOAD_RTP_PORTS:-34000-41999}
SIPP_MP=${LOAD_SIPP_MP:-44000}
SETTLE=2
MARGIN=4

while [ $# -gt 0 ]; do
    case "$1" in
        --quick) CALLS=50; STEADY=2; SETTLE=0.5; MARGIN=2; SETUP_RATE=100; SETUP_CALLS=200 ;;
        --calls) CALLS=$2; shift ;;
        --steady) STEADY=$2; shift ;;
        --rate) RATE=$2; shift ;;
        --cases) CASES=$2; shift ;;
        --setup-rate) SETUP_RATE=$2; shift ;;
        --setup-calls) SETUP_CALLS=$2; shift ;;
        --keep) KEEP=1 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
        *) echo "run.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

HARNESS=load DIE_STATUS=1 DIE_WORD=FAIL
# shellcheck source=benches/lib.sh
. "$REPO/benches/lib.sh"
require_tools sipp curl jq sox awk python3
harness_workdir agentline-load

HZ=$(getconf CLK_TCK)
cpu_ticks() { # utime + stime of pid $1, in clock ticks
    local s
    s=$(cat "/proc/$1/stat") || return 1
    s=${s##*) }
    # after "pid (comm) ": field 3 is index 0; utime (14) and stime (15) are 11 and 12
    awk '{print $12 + $13}' <<<"$s"
}
now() { date +%s.%N; }

# ---------------------------------------------------------------- inputs
SPEECH=$REPO/tests/data/speech_8k.wav
sox "$SPEECH" -t ul -r 8000 -c 1 "$W/speech.ulaw"
PCAP_DIR=${LOAD_PCAP_DIR:-}
if [ -z "$PCAP_DIR" ] && [[ " $CASES " =~ \ (g722|opus|opus8k)[:\ ] ]]; then
    PCAP_DIR=$W/pcap
    GEN=$REPO/target/release/examples/load_pcap
    if [ ! -x "$GEN" ] && command -v cargo >/dev/null; then
        log "building the capture writer (cargo build --release --example load_pcap)"
        (cd "$REPO" && cargo build --release --example load_pcap >&2) || true
    fi
    if [ -x "$GEN" ]; then
        "$GEN" "$PCAP_DIR" 120 || PCAP_DIR=""
    else
        PCAP_DIR=""
    fi
fi
SKIP_WHY="no capture (see LOAD_PCAP_DIR)"
if [ "$(id -u)" != 0 ]; then
    PCAP_DIR=""
    SKIP_WHY="sipp's play_pcap_audio needs root (raw socket)"
fi
[ -n "$PCAP_DIR" ] || log "the g722 and opus cases are skipped: $SKIP_WHY"

# ---------------------------------------------------------------- scenarios
# One answered call: INVITE with one codec, 200 (rtd: INVITE->200), ACK,
# media for -d ms, BYE. $1 = file, $2 = m= line formats + rtpmap lines,
# $3 = the media action, $4 = SDP port keyword.
scenario() {
    local file=$1 fmts=$2 rtpmap=$3 action=$4 port=$5
    cat >"$file" <<EOF
<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="agentline load">
  <send retrans="500">
    <![CDATA[

      INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      From: "load" <sip:load@[local_ip]:[local_port]>;tag=[pid]L[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:load@[local_ip]:[local_port]>
      Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=load 1 1 IN IP[local_ip_type] [local_ip]
      s=load
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [$port] RTP/AVP $fmts
$rtpmap
      a=ptime:20
      a=sendrecv

    ]]>
  </send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="183" optional="true"/>
  <recv response="200" rtd="true" rrs="true"/>
  <send>
    <![CDATA[

      ACK [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      [routes]
      From: "load" <sip:load@[local_ip]:[local_port]>;tag=[pid]L[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Contact: <sip:load@[local_ip]:[local_port]>
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
$action
  <send retrans="500">
    <![CDATA[

      BYE [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      [routes]
      From: "load" <sip:load@[local_ip]:[local_port]>;tag=[pid]L[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 2 BYE
      Contact: <sip:load@[local_ip]:[local_port]>
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <recv response="200" crlf="true"/>
</scenario>
EOF
}
PCMU_MAP="      a=rtpmap:0 PCMU/8000"
scenario "$W/pcmu.xml" 0 "$PCMU_MAP" \
    '  <nop><action><exec rtp_stream="[audio_stream]"/></action></nop>
  <pause/>' rtpstream_audio_port
scenario "$W/setup.xml" 0 "$PCMU_MAP" "" media_port
if [ -n "$PCAP_DIR" ]; then
    scenario "$W/g722.xml" 9 "      a=rtpmap:9 G722/8000" \
        "  <nop><action><exec play_pcap_audio=\"$PCAP_DIR/g722.pcap\"/></action></nop>
  <pause/>" media_port
    scenario "$W/opus.xml" 96 "      a=rtpmap:96 opus/48000/2" \
        "  <nop><action><exec play_pcap_audio=\"$PCAP_DIR/opus.pcap\"/></action></nop>
  <pause/>" media_port
fi

# ---------------------------------------------------------------- agentline
MAXN=0
for n in $CALLS $(tr ' ' '\n' <<<"$CASES" | sed -n 's/.*://p'); do
    [ "$n" -gt "$MAXN" ] && MAXN=$n
done
SIP_PORT=$(free_port)
API_PORT=$(free_port)
# Measure capacity itself: overload control (503 past 85 % CPU or 40 ms
# of media lag) would cap the load the harness places.
profile_head $((MAXN + 200)) >"$W/profile.toml"
cat >>"$W/profile.toml" <<EOF

[[routes]]
dial = "plain"
agent = { kind = "echo" }

[[routes]]
dial = "vad"
agent = { kind = "echo" }
dsp = { vad = true }

[[routes]]
dial = "full"
agent = { kind = "echo" }
dsp = { denoise = true, vad = true, agc = true }

[[routes]]
dial = "g722"
agent = { kind = "echo" }

[[routes]]
dial = "opus"
agent = { kind = "echo" }

[[routes]]
dial = "opus8k"
agent = { kind = "echo", rate = 8000 }

[[routes]]
dial = "setup"
agent = { kind = "echo" }
EOF
start_agentline
sleep 0.5
IDLE_RSS=$(rss_kb "$AGENT_PID")
log "agentline pid $AGENT_PID ($BIN, commit $COMMIT), idle RSS ${IDLE_RSS} kB, $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"

wait_idle() { # until agentline has no call left (at most 30 s)
    for _ in $(seq 300); do
        [ "$(api /health | jq '.active_calls')" = 0 ] && return 0
        sleep 0.1
    done
    log "calls still up 30 s after the case ended"
}

# ---------------------------------------------------------------- media case
# run_case NAME SCENARIO N: prints one table row.
declare -A PLAIN_CPC
MEDIA_ROWS=()
run_case() {
    local name=$1 scn=$2 n=$3
    local ramp hold sipp_timeout
    ramp=$(( (n + RATE - 1) / RATE ))
    hold=$(calc "%.0f" "($ramp + $SETTLE + $STEADY + $MARGIN) * 1000")
    sipp_timeout=$(( hold / 1000 + ramp + 60 ))
    local d=$W/$name-$n
    mkdir -p "$d"
    log "case $name: $n calls at $RATE/s, hold $((hold / 1000)) s"
    (cd "$d" && exec sipp -sf "$scn" -s "$name" -i 127.0.0.1 -p "$(free_port)" \
        -mi 127.0.0.1 -mp "$SIPP_MP" -key audio_stream "$W/speech.ulaw,-1,0" \
        -m "$n" -l "$n" -r "$RATE" -d "$hold" -recv_timeout 20000 \
        -timeout "${sipp_timeout}s" -timeout_error -nostdin \
        -trace_stat -stf "$d/stat.csv" -fd 1 -trace_err -error_file "$d/errors.log" \
        "127.0.0.1:$SIP_PORT" >"$d/sipp.out" 2>"$d/sipp.err") &
    SIPP_PID=$!
    # Ramp: wait until all n calls are up (or stop growing).
    local up=0 t_end
    t_end=$(( $(date +%s) + ramp + 15 ))
    while [ "$(date +%s)" -lt "$t_end" ]; do
        up=$(api /calls | jq --arg r "$name" '[.[] | select(.route == $r and .state == "active")] | length')
        [ "$up" -ge "$n" ] && break
        kill -0 "$SIPP_PID" 2>/dev/null || break
        sleep 0.2
    done
    sleep "$SETTLE"
    local sipp_main
    sipp_main=$(pgrep -P "$SIPP_PID" sipp || echo "$SIPP_PID")
    kill -0 "$AGENT_PID" 2>/dev/null || die "agentline died during case $name"
    # Steady window.
    # CPU over [t0, t1]; the counters over the two GET /calls, timed by
    # their mid-points (a GET of hundreds of calls takes a while under load).
    local c0 s0 t0 c1 s1 t1 rss ta tb tc td
    ta=$(now); api /calls >"$d/calls0.json"; tb=$(now)
    c0=$(cpu_ticks "$AGENT_PID"); s0=$(cpu_ticks "$sipp_main" || echo 0); t0=$(now)
    sleep "$STEADY"
    c1=$(cpu_ticks "$AGENT_PID"); s1=$(cpu_ticks "$sipp_main" || echo 0); t1=$(now)
    rss=$(rss_kb "$AGENT_PID")
    tc=$(now); api /calls >"$d/calls1.json"; td=$(now)
    up=$(jq --arg r "$name" '[.[] | select(.route == $r and .state == "active")] | length' "$d/calls1.json")
    # Counter deltas over the window, summed over the calls up at both ends.
    local counts
    counts=$(jq -rn --arg r "$name" --slurpfile a "$d/calls0.json" --slurpfile b "$d/calls1.json" '
        def m($x): [$x[] | select(.route == $r) | {key: .id, value: .}] | from_entries;
        (m($a[0])) as $A | (m($b[0])) as $B
        | [$B | keys[] | select($A[.] != null) | . as $k
           | {rx: (($B[$k].jitter.received // 0) - ($A[$k].jitter.received // 0)),
              late: (($B[$k].jitter.late // 0) - ($A[$k].jitter.late // 0)),
              played: (($B[$k].jitter.played // 0) - ($A[$k].jitter.played // 0)),
              conc: (($B[$k].jitter.concealed // 0) - ($A[$k].jitter.concealed // 0)),
              tx: ($B[$k].media.tx_packets - $A[$k].media.tx_packets),
              under: ($B[$k].media.tx_underruns - $A[$k].media.tx_underruns),
              err: ($B[$k].media.codec_errors - $A[$k].media.codec_errors)}]
        | [length, (map(.rx) | add // 0), (map(.late) | add // 0), (map(.played) | add // 0),
           (map(.conc) | add // 0), (map(.tx) | add // 0), (map(.under) | add // 0),
           (map(.err) | add // 0)] | @tsv')
    local both rx late played conc tx under errs
    read -r both rx late played conc tx under errs <<<"$counts"
    wait "$SIPP_PID" 2>/dev/null || true
    SIPP_PID=""
    local ok fail
    ok=$(awk -F';' 'NR==1{for(i=1;i<=NF;i++) if($i=="SuccessfulCall(C)") c=i} END{print $c+0}' "$d/stat.csv" 2>/dev/null || echo 0)
    fail=$(awk -F';' 'NR==1{for(i=1;i<=NF;i++) if($i=="FailedCall(C)") c=i} END{print $c+0}' "$d/stat.csv" 2>/dev/null || echo 0)
    wait_idle
    local dt cores cpc rsspc sippc
    dt=$(calc "%.3f" "$t1 - $t0")
    cores=$(calc "%.3f" "($c1 - $c0) / $HZ / $dt")
    sippc=$(calc "%.2f" "($s1 - $s0) / $HZ / $dt")
    cpc=$(calc "%.0f" "$cores > 0 ? $up / $cores : 0")
    rsspc=$(calc "%.0f" "($rss - $IDLE_RSS) / ($up > 0 ? $up : 1)")
    local pct_late pct_conc pct_under exp_tx pct_tx pct_rx
    pct_late=$(calc "%.3f" "$rx > 0 ? 100 * $late / $rx : 0")
    pct_conc=$(calc "%.3f" "$played > 0 ? 100 * $conc / $played : 0")
    pct_under=$(calc "%.3f" "$tx > 0 ? 100 * $under / $tx : 0")
    exp_tx=$(calc "%.0f" "$both * (($tc + $td) / 2 - ($ta + $tb) / 2) * 50")
    pct_tx=$(calc "%.1f" "$exp_tx > 0 ? 100 * $tx / $exp_tx : 0")
    pct_rx=$(calc "%.1f" "$exp_tx > 0 ? 100 * $rx / $exp_tx : 0")
    local vs_plain="-"
    if [ "$name" = plain ]; then
        PLAIN_CPC[$n]=$cpc
        vs_plain="1.00"
    elif [ -n "${PLAIN_CPC[$n]:-}" ] && [ "${PLAIN_CPC[$n]}" != 0 ]; then
        vs_plain=$(calc "%.2f" "$cpc / ${PLAIN_CPC[$n]}")
    fi
    # AVR Core sizing: 0.5-1.5 cores per concurrent call (AVR docs, see
    # benches/RESULTS.md); ours per call = cores / up.
    local avr
    avr="$(calc "%.0f" "0.5 * $cpc")x-$(calc "%.0f" "1.5 * $cpc")x"
    MEDIA_ROWS+=("| $name | $n | $up | $ok/$fail | $cores | $cpc | $vs_plain | $avr | $rsspc | $pct_late | $pct_conc | $pct_under | $pct_rx | $pct_tx | $errs | $sippc |")
    log "case $name: up $up/$n, sipp ok/failed $ok/$fail, agentline $cores cores, $cpc calls/core, late $pct_late %, tx $pct_tx % of 50/s"
}

# ---------------------------------------------------------------- set-up case
SETUP_ROWS=()
run_setup() {
    local d=$W/setup
    mkdir -p "$d"
    local limit=$(( SETUP_RATE / 2 > 50 ? SETUP_RATE / 2 : 50 ))
    log "case setup: $SETUP_CALLS calls offered at $SETUP_RATE/s (at most $limit at once)"
    local c0 t0 c1 t1 cap_pid=""
    if command -v dumpcap >/dev/null; then
        # INVITE->200 timed on the wire (sipp's own timer ticks in ~4 ms steps).
        dumpcap -q -i lo -f "udp port $SIP_PORT" -B 64 -w "$d/sip.pcapng" 2>"$d/dumpcap.err" &
        cap_pid=$!
        for _ in $(seq 50); do [ -s "$d/sip.pcapng" ] && break; sleep 0.1; done
    fi
    c0=$(cpu_ticks "$AGENT_PID"); t0=$(now)
    (cd "$d" && exec sipp -sf "$W/setup.xml" -s setup -i 127.0.0.1 -p "$(free_port)" \
        -mi 127.0.0.1 -mp "$SIPP_MP" -m "$SETUP_CALLS" -l "$limit" -r "$SETUP_RATE" \
        -recv_timeout 10000 -timeout 120s -timeout_error -nostdin \
        -trace_stat -stf "$d/stat.csv" -fd 1 -trace_rtt -rtt_freq 1 \
        -trace_err -error_file "$d/errors.log" \
        "127.0.0.1:$SIP_PORT" >"$d/sipp.out" 2>"$d/sipp.err") || true
    c1=$(cpu_ticks "$AGENT_PID"); t1=$(now)
    local ok fail rtt dt cores rate p50 p99
    ok=$(awk -F';' 'NR==1{for(i=1;i<=NF;i++) if($i=="SuccessfulCall(C)") c=i} END{print $c+0}' "$d/stat.csv" 2>/dev/null || echo 0)
    fail=$(awk -F';' 'NR==1{for(i=1;i<=NF;i++) if($i=="FailedCall(C)") c=i} END{print $c+0}' "$d/stat.csv" 2>/dev/null || echo 0)
    rtt=$(ls "$d"/*_rtt.csv 2>/dev/null | head -1)
    dt=$(calc "%.3f" "$t1 - $t0")
    cores=$(calc "%.3f" "($c1 - $c0) / $HZ / $dt")
    rate=$(calc "%.0f" "$ok / $dt")
    local src="sipp"
    if [ -n "$cap_pid" ]; then
        sleep 0.5
        kill -INT "$cap_pid" 2>/dev/null || true
        wait "$cap_pid" 2>/dev/null || true
        # First INVITE sent and first 200 to it, per Call-ID, in ms.
        tshark -r "$d/sip.pcapng" -Y sip -T fields -E separator=';' \
            -e frame.time_epoch -e sip.Call-ID -e sip.Method -e sip.Status-Code -e sip.CSeq.method \
            2>/dev/null | awk -F';' '
            $3 == "INVITE" && !($2 in inv) { inv[$2] = $1 }
            $4 == "200" && $5 == "INVITE" && !($2 in ok) { ok[$2] = $1 }
            END { for (c in ok) if (c in inv) printf "%.3f\n", (ok[c] - inv[c]) * 1000 }' \
            >"$d/invite_200_ms.txt" || true
        if [ -s "$d/invite_200_ms.txt" ]; then
            rtt="$d/invite_200_ms.txt"
            src="wire"
        fi
    fi
    if [ "$src" = wire ]; then
        read -r p50 p99 < <(sort -g "$rtt" | awk '{v[NR]=$1} END{
                 i50 = int(NR * 0.50 + 0.5); if (i50 < 1) i50 = 1
                 i99 = int(NR * 0.99 + 0.5); if (i99 < 1) i99 = 1; if (i99 > NR) i99 = NR
                 printf "%.2f %.2f\n", v[i50], v[i99] }')
    elif [ -n "$rtt" ]; then
        # Date_ms;response_time_ms;rtd_no: one line per call.
        read -r p50 p99 < <(awk -F';' 'NR>1 && $2 != "" {print $2}' "$rtt" | sort -g |
            awk '{v[NR]=$1} END{ if (NR == 0) {print "- -"; exit}
                 i50 = int(NR * 0.50 + 0.5); if (i50 < 1) i50 = 1
                 i99 = int(NR * 0.99 + 0.5); if (i99 < 1) i99 = 1; if (i99 > NR) i99 = NR
                 printf "%.2f %.2f\n", v[i50], v[i99] }')
    else
        p50=-; p99=-
    fi
    wait_idle
    SETUP_ROWS+=("| setup | $SETUP_CALLS | $ok/$fail | $SETUP_RATE | $rate | $p50 | $p99 | $src | $cores |")
    log "case setup: $ok ok, $fail failed in $dt s: $rate calls/s, INVITE->200 p50 $p50 ms p99 $p99 ms, agentline $cores cores"
}

# ---------------------------------------------------------------- webrtc case
WEBRTC_ROWS=()
run_webrtc() {
    local n=$1 row
    local client=${LOAD_WEBRTC_BIN:-$REPO/target/release/examples/load_webrtc}
    if [ ! -x "$client" ]; then
        (cd "$REPO" && cargo build --release --example load_webrtc >&2) || die "cannot build load_webrtc"
    fi
    log "case webrtc: $n calls at $RATE/s"
    row=$("$client" --api "127.0.0.1:$API_PORT" --pid "$AGENT_PID" --calls "$n" \
        --rate "$RATE" --steady "$STEADY" --route opus) || die "load_webrtc failed"
    WEBRTC_ROWS+=("$row")
    log "case webrtc: $row"
    wait_idle
}

# ---------------------------------------------------------------- run
first=1
for n0 in $CALLS; do
    for c in $CASES; do
        n=$n0
        if [[ "$c" == *:* ]]; then
            # case:N runs once, with N calls, whatever --calls says.
            [ "$first" = 1 ] || continue
            n=${c#*:}
            c=${c%%:*}
        fi
        case "$c" in
            plain|vad|full) run_case "$c" "$W/pcmu.xml" "$n" ;;
            g722|opus|opus8k)
                if [ -n "$PCAP_DIR" ]; then run_case "$c" "$W/${c%8k}.xml" "$n"
                else MEDIA_ROWS+=("| $c | $n | skipped: $SKIP_WHY |"); fi ;;
            setup) ;;
            webrtc) run_webrtc "$n" ;;
            *) die "unknown case $c" ;;
        esac
    done
    first=0
done
if [[ " $CASES " == *" setup "* ]]; then run_setup; fi
kill -0 "$AGENT_PID" 2>/dev/null || die "agentline died"
PEAK_RSS=$(awk '/^VmHWM/{print $2}' "/proc/$AGENT_PID/status")

echo
echo "agentline $COMMIT, $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(date -u '+%Y-%m-%d %H:%M UTC'), idle RSS $IDLE_RSS kB, peak RSS $PEAK_RSS kB, steady window ${STEADY} s, load average at the end $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| case | calls | up | sipp ok/failed | agentline cores | calls per core | x plain | x AVR Core (0.5-1.5 cores/call) | RSS per call (kB) | late % | concealed % | tx underrun % | rx % of 50/s | tx % of 50/s | codec errors | sipp cores |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for r in "${MEDIA_ROWS[@]}"; do echo "$r"; done
if [ ${#WEBRTC_ROWS[@]} -gt 0 ]; then
    echo
    echo "| case | calls | connected | offer->connected ms | tx % of 50/s | rx % of 50/s | agentline cores | calls per core |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|"
    for r in "${WEBRTC_ROWS[@]}"; do echo "$r"; done
fi
if [ ${#SETUP_ROWS[@]} -gt 0 ]; then
    echo
    echo "| case | calls | sipp ok/failed | offered per s | completed per s | INVITE->200 p50 ms | p99 ms | timed by | agentline cores |"
    echo "|---|---:|---:|---:|---:|---:|---:|---|---:|"
    for r in "${SETUP_ROWS[@]}"; do echo "$r"; done
fi
