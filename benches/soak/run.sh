#!/usr/bin/env bash
# Churn soak (issue 14): the release agentline binary takes a steady churn
# of echo calls with real RTP at ~80 % of its configured capacity for a
# fixed time, with call durations drawn from a fixed seed, on 127.0.0.1
# only. It samples agentline's RSS and open file descriptors (/proc; not
# counting the store's SQLite files, a lazily filled pool), its
# tokio tasks, calls, RTP ports, dialogs and SIP transactions (GET /health)
# throughout; after the load stops and the calls drain it checks that
# nothing grew or stayed behind. Prints a markdown table and the verdict
# on stdout (progress on stderr).
#
#   benches/soak/run.sh              # 30 min
#   benches/soak/run.sh --short      # 5 min (CI's variant, tests/soak.rs)
#   benches/soak/run.sh --seconds 60 # any length (tests/soak.rs locally)
#
# The load: sipp runs benches/soak/churn.xml (INVITE PCMU -> 200 -> ACK,
# looped speech over RTP with rtp_stream, BYE after the call's duration).
# Capacity is the profile's [sip] max_calls (500); sipp keeps at most 80 %
# of it up at once (-l 400) and offers RATE new calls a second; durations
# are log-normal (sigma 0.5, mean MEAN s, clamped to 2 s..3*MEAN), drawn
# by Python's random.Random(SEED), so call N lasts the same in every run.
# By Little's law about RATE * MEAN calls are up (18/s * 20 s = 360). A
# run shorter than 200 s takes shorter calls (MEAN = seconds / 10, at
# least 6 s) at a rate that keeps ~360 up, so it still reaches a steady
# state.
#
# Checks (exit 1 if any fails):
#   - RSS growth over the steady phase < 10 %: the median RSS of the last
#     quarter of the steady phase against that of its first quarter (the
#     steady phase is the load window after a warm-up of a third of it,
#     at least 30 s and at most 300 s);
#   - after the drain: open fds and tokio tasks at most idle + 2;
#   - after the drain: calls (GET /health and GET /calls), RTP ports,
#     dialogs and SIP transactions (running, finished, waiting for ACK) 0;
#   - failed calls (sipp) < 1 % of the calls placed, and at least one
#     call completed.
#
# Options:
#   --short           5 min load
#   --seconds S       S seconds of load (default 1800)
#   --rate R          new calls per second (default 18, see above)
#   --mean S          mean call duration in seconds (default 20, see above)
#   --seed N          durations' seed (default 14)
#   --interval S      sampling interval (default: seconds / 60, 2..10 s)
#   --drain S         how long the calls, transactions, fds and tasks may
#                     take to return to idle after the load (default 120)
#   --keep            keep the work dir (profile, samples.csv, logs, sipp stats)
# Environment:
#   AGENTLINE_BIN    the binary (default target/release/agentline)
#   SOAK_RTP_PORTS   agentline's RTP range (default 30000-33999)
#   SOAK_SIPP_MP     sipp's RTP base port (default 50000)
#
# Exit status: 0 all checks passed, 1 a check failed, 3 the harness could
# not run (a tool missing, agentline did not start or died).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$REPO/benches/soak
BIN=${AGENTLINE_BIN:-$REPO/target/release/agentline}
SECONDS_LOAD=1800
RATE=""
MEAN=""
SEED=14
INTERVAL=""
DRAIN=120
KEEP=0
MAX_CALLS=500
LIMIT=$((MAX_CALLS * 80 / 100))
RTP_PORTS=${SOAK_RTP_PORTS:-30000-33999}
SIPP_MP=${SOAK_SIPP_MP:-50000}

while [ $# -gt 0 ]; do
    case "$1" in
        --short) SECONDS_LOAD=300 ;;
        --seconds) SECONDS_LOAD=$2; shift ;;
        --rate) RATE=$2; shift ;;
        --mean) MEAN=$2; shift ;;
        --seed) SEED=$2; shift ;;
        --interval) INTERVAL=$2; shift ;;
        --drain) DRAIN=$2; shift ;;
        --keep) KEEP=1 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
        *) echo "run.sh: unknown option $1" >&2; exit 3 ;;
    esac
    shift
done

HARNESS=soak DIE_STATUS=3 DIE_WORD="HARNESS FAILURE"
# shellcheck source=benches/lib.sh
. "$REPO/benches/lib.sh"
require_tools sipp curl jq sox awk python3

# Durations and rate: see the header.
if [ -z "$MEAN" ]; then
    if [ "$SECONDS_LOAD" -ge 200 ]; then MEAN=20; else MEAN=$(( SECONDS_LOAD / 10 > 6 ? SECONDS_LOAD / 10 : 6 )); fi
fi
[ -n "$RATE" ] || RATE=$(calc "%.0f" "360 / $MEAN")
if [ -z "$INTERVAL" ]; then
    INTERVAL=$(( SECONDS_LOAD / 60 )); [ "$INTERVAL" -lt 2 ] && INTERVAL=2; [ "$INTERVAL" -gt 10 ] && INTERVAL=10
fi
WARMUP=$(( SECONDS_LOAD / 3 )); [ "$WARMUP" -lt 30 ] && WARMUP=30; [ "$WARMUP" -gt 300 ] && WARMUP=300
[ "$WARMUP" -lt "$SECONDS_LOAD" ] || die "--seconds must be more than 30"
TOTAL=$(( SECONDS_LOAD * RATE ))

harness_workdir agentline-soak
# Open fds of pid $1 but the store's SQLite files: its pool (at most 4
# connections, each the db and its -wal, and one -shm) opens connections
# lazily under load and keeps them, which is growth to a bound, not a leak
# (an idle sample may hold 1 connection, the drained one 3).
fds() {
    local n
    n=$(find "/proc/$1/fd" -mindepth 1 -maxdepth 1 -printf '%l\n' 2>/dev/null \
        | { grep -vc '/agentline\.db' || true; }) && [ -d "/proc/$1/fd" ] && echo "$n"
}

# ---------------------------------------------------------------- inputs
sox "$REPO/tests/data/speech_8k.wav" -t ul -r 8000 -c 1 "$W/speech.ulaw"
# Call N's duration in ms is line N of the injection file.
python3 - "$W/durations.csv" "$TOTAL" "$SEED" "$MEAN" <<'PY'
import math, random, sys
path, total, seed, mean = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
sigma = 0.5
mu = math.log(mean * 1000.0) - sigma * sigma / 2  # E[X] = mean
rng = random.Random(seed)
with open(path, "w") as f:
    f.write("SEQUENTIAL\n")
    for _ in range(total):
        ms = min(max(rng.lognormvariate(mu, sigma), 2000.0), 3000.0 * mean)
        f.write("%d\n" % ms)
PY
DUR_MEAN=$(awk 'NR>1{s+=$1; n++} END{printf "%.1f", s/n/1000}' "$W/durations.csv")

# ---------------------------------------------------------------- agentline
SIP_PORT=$(free_port)
API_PORT=$(free_port)
# The soak measures leaks, not overload control: a shared 2-core machine
# must not turn the churn into 503s.
profile_head "$MAX_CALLS" >"$W/profile.toml"
cat >>"$W/profile.toml" <<EOF

[[routes]]
dial = "echo"
agent = { kind = "echo" }
EOF
start_agentline
sleep 2

# One sample: t, calls, ports, dialogs, tx running/finished/waiting_ack,
# tokio tasks, rss kB, fds (CSV line on stdout).
T0=$(date +%s)
sample() {
    local h rss n
    h=$(api /health) || return 1
    rss=$(rss_kb "$AGENT_PID") || return 1
    n=$(fds "$AGENT_PID") || return 1
    jq -r --arg t "$(( $(date +%s) - T0 ))" --arg rss "$rss" --arg fds "$n" \
        '[$t, .active_calls, .rtp_ports_in_use, .dialogs, .sip_transactions.running,
          .sip_transactions.finished, .sip_transactions.waiting_ack,
          (.tokio_tasks // "-"), $rss, $fds] | join(",")' <<<"$h"
}
echo "t_s,calls,rtp_ports,dialogs,tx_running,tx_finished,tx_waiting_ack,tokio_tasks,rss_kb,fds,phase" >"$W/samples.csv"
IDLE=$(sample) || die "no first sample"
echo "$IDLE,idle" >>"$W/samples.csv"
IFS=, read -r _ _ _ _ _ _ _ IDLE_TASKS IDLE_RSS IDLE_FDS <<<"$IDLE"
log "agentline pid $AGENT_PID ($BIN, commit $COMMIT), idle: RSS $IDLE_RSS kB, $IDLE_FDS fds, $IDLE_TASKS tasks; $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
log "load: $SECONDS_LOAD s, $RATE calls/s, at most $LIMIT up (capacity $MAX_CALLS), durations log-normal seed $SEED, mean $DUR_MEAN s; $TOTAL calls; sampling every $INTERVAL s, warm-up $WARMUP s"

# ---------------------------------------------------------------- load
# -m stops new calls after TOTAL; the calls up then end on their own.
SIPP_TIMEOUT=$(( SECONDS_LOAD * 2 + 3 * MEAN + 120 ))
(cd "$W" && exec sipp -sf "$HERE/churn.xml" -inf "$W/durations.csv" -s echo \
    -i 127.0.0.1 -p "$(free_port)" -mi 127.0.0.1 -mp "$SIPP_MP" \
    -key audio_stream "$W/speech.ulaw,-1,0" \
    -m "$TOTAL" -l "$LIMIT" -r "$RATE" -recv_timeout 20000 \
    -timeout "${SIPP_TIMEOUT}s" -timeout_error -nostdin \
    -trace_stat -stf "$W/stat.csv" -fd 10 -trace_err -error_file "$W/errors.log" \
    "127.0.0.1:$SIP_PORT" >"$W/sipp.out" 2>"$W/sipp.err") &
SIPP_PID=$!
LOAD_T0=$(date +%s)
T0=$LOAD_T0
while kill -0 "$SIPP_PID" 2>/dev/null; do
    sleep "$INTERVAL"
    kill -0 "$AGENT_PID" 2>/dev/null || die "agentline died during the load (log: $(tail -5 "$W/agentline.log"))"
    s=$(sample) || continue
    t=${s%%,*}
    phase=load
    [ "$t" -ge "$WARMUP" ] && phase=steady
    [ "$t" -gt "$SECONDS_LOAD" ] && phase=tail
    echo "$s,$phase" >>"$W/samples.csv"
    IFS=, read -r _ c _ _ _ _ _ k r f <<<"$s"
    log "t=${t}s calls $c, RSS $r kB, fds $f, tasks $k ($phase)"
done
wait "$SIPP_PID" 2>/dev/null || true
SIPP_PID=""
LOAD_END=$(( $(date +%s) - T0 ))
log "sipp done after $LOAD_END s"

# ---------------------------------------------------------------- drain
# Everything back to idle, or the drain time is up.
DRAIN_T=0
END=""
while :; do
    kill -0 "$AGENT_PID" 2>/dev/null || die "agentline died after the load"
    END=$(sample) || die "no sample after the load"
    IFS=, read -r _ c p d tr tf tw k r f <<<"$END"
    if [ "$c$p$d$tr$tf$tw" = 000000 ] && [ "$f" -le $((IDLE_FDS + 2)) ] \
        && { [ "$k" = - ] || [ "$k" -le $((IDLE_TASKS + 2)) ]; }; then
        break
    fi
    [ "$DRAIN_T" -ge "$DRAIN" ] && break
    sleep 2
    DRAIN_T=$((DRAIN_T + 2))
done
echo "$END,drained" >>"$W/samples.csv"
CALLS_LIST=$(api /calls | jq 'length') || CALLS_LIST="?"
PEAK_RSS=$(awk '/^VmHWM/{print $2}' "/proc/$AGENT_PID/status")

# ---------------------------------------------------------------- verdict
stat_col() { # the last value of sipp's stat column $1
    awk -F';' -v col="$1" 'NR==1{for(i=1;i<=NF;i++) if($i==col) c=i} END{print (c ? $c : 0)+0}' "$W/stat.csv" 2>/dev/null || echo 0
}
OK=$(stat_col "SuccessfulCall(C)")
FAILED=$(stat_col "FailedCall(C)")
PLACED=$(stat_col "OutgoingCall(C)")
[ "$PLACED" -gt 0 ] || PLACED=$((OK + FAILED))
MAXUP=$(awk -F, 'NR>1 && $11!="idle" && $2+0>m {m=$2+0} END{print m+0}' "$W/samples.csv")

# Median RSS of the first and of the last quarter of the steady phase.
read -r RSS_A RSS_B CALLS_A CALLS_B < <(awk -F, -v w="$WARMUP" -v e="$SECONDS_LOAD" '
    function med(a, n,   i, j, t) {
        for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j+1] = a[j]; a[j+1] = t }
        return n ? (n % 2 ? a[(n+1)/2] : (a[n/2] + a[n/2+1]) / 2) : 0
    }
    NR > 1 && $11 == "steady" {
        q = (e - w) / 4
        if ($1 <= w + q) { na++; a[na] = $9; ca += $2 }
        if ($1 >= e - q) { nb++; b[nb] = $9; cb += $2 }
    }
    END { printf "%d %d %d %d\n", med(a, na), med(b, nb), na ? ca / na : 0, nb ? cb / nb : 0 }' "$W/samples.csv")
GROWTH=$(calc "%.1f" "$RSS_A > 0 ? 100 * ($RSS_B - $RSS_A) / $RSS_A : 999")
IFS=, read -r _ E_CALLS E_PORTS E_DIALOGS E_TR E_TF E_TW E_TASKS E_RSS E_FDS <<<"$END"
FAIL_PCT=$(calc "%.3f" "$PLACED > 0 ? 100 * $FAILED / $PLACED : 100")

VERDICT=PASS
CHECKS=()
check() { # name, ok (0/1), detail
    local mark=ok
    if [ "$2" != 1 ]; then mark=FAIL; VERDICT=FAIL; fi
    CHECKS+=("| $1 | $3 | $mark |")
}
check "RSS growth over the steady phase < 10 %" "$(calc "%d" "$GROWTH < 10")" \
    "$RSS_A -> $RSS_B kB ($GROWTH %), calls $CALLS_A -> $CALLS_B"
check "fds back to idle (+2)" "$(calc "%d" "$E_FDS <= $IDLE_FDS + 2")" "idle $IDLE_FDS, after $E_FDS"
if [ "$E_TASKS" = - ]; then
    check "tokio tasks back to idle (+2)" 0 "GET /health has no tokio_tasks"
else
    check "tokio tasks back to idle (+2)" "$(calc "%d" "$E_TASKS <= $IDLE_TASKS + 2")" "idle $IDLE_TASKS, after $E_TASKS"
fi
check "calls 0" "$(calc "%d" "$E_CALLS == 0 && \"$CALLS_LIST\" == \"0\"")" "/health $E_CALLS, GET /calls $CALLS_LIST"
check "RTP ports 0" "$(calc "%d" "$E_PORTS == 0")" "$E_PORTS"
check "dialogs 0" "$(calc "%d" "$E_DIALOGS == 0")" "$E_DIALOGS"
check "SIP transactions 0" "$(calc "%d" "$E_TR + $E_TF + $E_TW == 0")" \
    "running $E_TR, finished $E_TF, waiting ACK $E_TW"
check "failed calls < 1 %" "$(calc "%d" "$OK > 0 && $FAIL_PCT < 1")" "$FAILED of $PLACED ($FAIL_PCT %), $OK completed"

echo
echo "agentline $COMMIT soak: $(nproc) cores, $(date -u '+%Y-%m-%d %H:%M UTC'), load $SECONDS_LOAD s at $RATE calls/s, at most $LIMIT of $MAX_CALLS up (80 %), durations log-normal seed $SEED mean $DUR_MEAN s; $PLACED calls placed, $OK completed, $FAILED failed, at most $MAXUP up at a sample; RSS idle $IDLE_RSS kB, peak $PEAK_RSS kB, after the drain $E_RSS kB; drained in ${DRAIN_T} s; load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| t (s) | phase | calls | RTP ports | dialogs | transactions (run/fin/ack) | tokio tasks | RSS (kB) | fds |"
echo "|---:|---|---:|---:|---:|---|---:|---:|---:|"
# At most ~16 rows: idle, every k-th sample of the load, the drained one.
N=$(awk 'END{print NR - 1}' "$W/samples.csv")
awk -F, -v n="$N" 'NR > 1 {
        k = int(n / 14); if (k < 1) k = 1
        if ($11 == "idle" || $11 == "drained" || (NR - 2) % k == 0)
            printf "| %s | %s | %s | %s | %s | %s/%s/%s | %s | %s | %s |\n", $1, $11, $2, $3, $4, $5, $6, $7, $8, $9, $10
    }' "$W/samples.csv"
echo
echo "| check | figures | verdict |"
echo "|---|---|---|"
for c in "${CHECKS[@]}"; do echo "$c"; done
echo
echo "soak: $VERDICT"
if [ "$VERDICT" != PASS ]; then
    KEEP=1
    log "failed: the work dir is kept: $W (samples.csv, agentline.log, stat.csv, errors.log)"
    exit 1
fi
