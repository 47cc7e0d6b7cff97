#!/usr/bin/env bash
# End-to-end: a real softphone calls agentline, whose `openai_compat` agent
# runs on three real local AI engines (installed by setup.sh), all on 127.0.0.1:
#
#   baresip --(SIP/RTP, PCMU)--> agentline --(HTTP)--> faster-whisper-server (ASR)
#   "What is the capital       (VAD turn)            llama.cpp Qwen2.5-Coder-0.5B-Instruct (LLM, SSE)
#    of France?"  <---- spoken answer ----------     piper en_US-joe-medium  (TTS)
#
# Then what the phone heard is transcribed with the same ASR server, and the
# script checks it is English words (>= 3) holding the answer ("paris"), that
# the agent understood the whole question (a `user` entry of GET /calls/{id}
# `transcript` holds "what is the capital of/on france", normalised), and that
# agentline reported a turn latency (GET /calls/{id} `turns`, else the log's
# "turn latency" line).
# Prints the latency (total and per stage), the latency the caller measured
# (end of its speech -> first answer audio), and the words heard. It also
# checks the answer plays at the right speed: the agent's sentences (from
# GET /calls/{id} `transcript`) are synthesized again by the same TTS and the
# median voice pitch must match the recording's within 4 % (a TTS sample rate
# taken for another one shows as 24000/22050 = 1.088).
#
# Usage: tests/e2e/run.sh            (after tests/e2e/setup.sh)
# Environment:
#   AGENTLINE_BIN   the binary (default: target/release/agentline of this checkout)
#   E2E_DIR         where setup.sh installed the engines (default /var/tmp/agentline-e2e)
#   E2E_CALL_SECS   length of the call = the caller's in.wav (default 20)
#   E2E_QUESTION    what the caller says (default "What is the capital of France?")
#   E2E_EXPECT_UNDERSTOOD  regex over the normalised words of a user transcript entry
#                   (default for the default question: \bwhat is the capital (of|on) france\b)
#   E2E_EXPECT_ANSWER      word the phone must hear (default for the default question: paris)
#                   With another E2E_QUESTION both default to empty = not checked.
#   E2E_LEAD_SECS   silence before the question (default 0.5)
#   E2E_KEEP=1      keep the work folder (logs, WAVs, profile) even on success
#   E2E_SPEED_TOLERANCE  playback-speed (pitch ratio) tolerance (default 0.04)
#   E2E_EOT_MIN_MS  the agent's end_of_turn_min_ms (adaptive end of turn; default 300,
#                   0 = off: every turn waits for the VAD's 700 ms)
#   E2E_OWN_MAX_MS  agentline's own share of a turn (own_in_ms + own_out_ms, p95 of
#                   the run's turns) must stay under this (default 30)
#   E2E_PORT_ASR / E2E_PORT_LLM / E2E_PORT_TTS / E2E_PORT_SIP / E2E_PORT_API
#                   fixed ports (default: free ones)
# Exit status: 0 when every check passed.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
. "$HERE/lib.sh"

AGENTLINE_BIN=${AGENTLINE_BIN:-$REPO/target/release/agentline}
CALL_SECS=${E2E_CALL_SECS:-20}
LEAD=${E2E_LEAD_SECS:-0.5}
DEFAULT_QUESTION="What is the capital of France?"
QUESTION=${E2E_QUESTION:-$DEFAULT_QUESTION}
# What must come back (normalised words: lowercase, no punctuation). Whisper
# tiny.en hears espeak's "of" as "on" at times: either is accepted, nothing else.
if [ "$QUESTION" = "$DEFAULT_QUESTION" ]; then
    EXPECT_UNDERSTOOD=${E2E_EXPECT_UNDERSTOOD-'\bwhat is the capital (of|on) france\b'}
    EXPECT_ANSWER=${E2E_EXPECT_ANSWER-paris}
else
    EXPECT_UNDERSTOOD=${E2E_EXPECT_UNDERSTOOD:-}
    EXPECT_ANSWER=${E2E_EXPECT_ANSWER:-}
fi
SYSTEM="You are a helpful phone assistant. Answer in one short, complete sentence."
EOT_MIN_MS=${E2E_EOT_MIN_MS:-300}
OWN_MAX_MS=${E2E_OWN_MAX_MS:-30}
EOT_OPT=
if [ "$EOT_MIN_MS" != 0 ]; then EOT_OPT=", end_of_turn_min_ms = $EOT_MIN_MS"; fi
T_RUN=$(now)

# ---- preconditions ------------------------------------------------------------
for c in baresip espeak-ng sox soxi curl; do
    command -v "$c" >/dev/null || die "$c not found: apt-get install -y baresip-core espeak-ng sox curl"
done
[ -x "$AGENTLINE_BIN" ] || die "no agentline binary at $AGENTLINE_BIN (cargo build --release, or set AGENTLINE_BIN)"
for e in asr llm model tts; do
    [ -f "$E2E_DIR/$e/.e2e-installed" ] || die "engine $e not installed in $E2E_DIR: run tests/e2e/setup.sh first"
done

W=$(mktemp -d "${TMPDIR:-/tmp}/agentline-e2e.XXXXXX")
mkdir -p "$W/state" "$W/phone/rec"
PID_ASR= PID_LLM= PID_TTS= PID_AL= PID_PHONE=
OK=0
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    # baresip first (SIGINT: hang up and exit), then the server, then the engines
    if [ -n "$PID_PHONE" ] && kill -0 "$PID_PHONE" 2>/dev/null; then
        kill -INT "$PID_PHONE" 2>/dev/null || true
        for _ in $(seq 30); do kill -0 "$PID_PHONE" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$PID_PHONE" 2>/dev/null || true
    fi
    stop_group "$PID_AL"
    # the engines in parallel (each gets TERM, then KILL after 5 s)
    for p in "$PID_ASR" "$PID_LLM" "$PID_TTS"; do stop_group "$p" & done
    wait 2>/dev/null || true
    if [ "$OK" = 1 ] && [ "${E2E_KEEP:-0}" != 1 ]; then
        rm -rf "$W"
    else
        if [ "$OK" != 1 ]; then
            for f in agentline.log phone.log asr.log llm.log tts.log; do
                [ -s "$W/$f" ] || continue
                echo "----- last lines of $f -----" >&2
                grep -v $'\e\\[36;1m#' "$W/$f" | tail -n 25 >&2 || true
            done
        fi
        log "files kept in $W"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port() { local v=$1; if [ -n "${!v:-}" ]; then echo "${!v}"; else free_port; fi; }
P_ASR=$(port E2E_PORT_ASR)
P_LLM=$(port E2E_PORT_LLM)
P_TTS=$(port E2E_PORT_TTS)
P_SIP=$(port E2E_PORT_SIP)
P_API=$(port E2E_PORT_API)
P_CTRL=$(free_port)
P_PHONE=$(free_port)
# Two blocks of 20 UDP ports (RTP/RTCP pairs) for agentline and the phone.
read -r RTP_A PHONE_RTP_A < <("$E2E_PYTHON" - <<'EOF'
import random, socket
def free(base, n=20):
    socks = []
    try:
        for p in range(base, base + n):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); socks.append(s)
            s.bind(("127.0.0.1", p))
        return True
    except OSError:
        return False
    finally:
        for s in socks: s.close()
found = []
while len(found) < 2:
    b = random.randrange(40000, 59000, 20)
    if b not in found and free(b): found.append(b)
print(*found)
EOF
)
RTP_B=$((RTP_A + 19)) PHONE_RTP_B=$((PHONE_RTP_A + 19))

# ---- engines (in parallel; the caller's WAV is made meanwhile) -----------------
log "starting engines: asr :$P_ASR, llm :$P_LLM, tts :$P_TTS"
T_ENG=$(now)
PID_ASR=$(start_engine asr "$W" "$P_ASR")
PID_LLM=$(start_engine llm "$W" "$P_LLM")
PID_TTS=$(start_engine tts "$W" "$P_TTS")

# The caller: LEAD s silence, the question, silence up to CALL_SECS (8 kHz mono s16;
# baresip's aufile source hangs up when the file ends).
espeak-ng -v en-us -s 150 -w "$W/question22k.wav" "$QUESTION"
sox -q "$W/question22k.wav" -r 8000 -c 1 -b 16 "$W/question.wav"
Q_SECS=$(soxi -D "$W/question.wav")
TAIL=$(awk -v c="$CALL_SECS" -v q="$Q_SECS" -v l="$LEAD" 'BEGIN { t = c - l - q; if (t < 5) t = 5; printf "%.3f", t }')
sox -q "$W/question.wav" "$W/phone/in.wav" pad "$LEAD" "$TAIL"
SPEECH_END=$(awk -v q="$Q_SECS" -v l="$LEAD" 'BEGIN { printf "%.3f", l + q }')   # seconds on in.wav's clock

wait_http asr "$PID_ASR" "$P_ASR" 120 "$W/asr.log"
wait_http llm "$PID_LLM" "$P_LLM" 120 "$W/llm.log"
wait_http tts "$PID_TTS" "$P_TTS" 120 "$W/tts.log"
ENG_SECS=$(since "$T_ENG")

# Warm-up: one request each, so the call measures warm engines (first requests
# load models lazily). The ASR one also checks the caller's speech is intelligible.
# The LLM one carries the route's system prompt, which llama.cpp keeps as a
# cached prefix, as on a server that has answered calls before (a cold prefix
# adds about 0.6 s of prompt processing to the first token here).
t=$(now)
CALLER_TEXT=$(transcribe "$P_ASR" "$W/question.wav") || die "asr warm-up failed"
log "asr warm-up ($(since "$t") s): the caller says \"$CALLER_TEXT\""
t=$(now)
curl -sf --max-time 60 "http://127.0.0.1:$P_LLM/v1/chat/completions" -H 'Content-Type: application/json' \
    -d "{\"model\":\"$LLM_ALIAS\",\"max_tokens\":4,\"messages\":[{\"role\":\"system\",\"content\":\"$SYSTEM\"},{\"role\":\"user\",\"content\":\"Hi\"}]}" \
    -o /dev/null || die "llm warm-up failed"
log "llm warm-up ($(since "$t") s)"
t=$(now)
curl -sf --max-time 60 "http://127.0.0.1:$P_TTS/v1/audio/speech" -H 'Content-Type: application/json' \
    -d "{\"model\":\"tts-1\",\"voice\":\"$VOICE\",\"input\":\"Hello.\",\"response_format\":\"pcm\"}" \
    -o /dev/null || die "tts warm-up failed"
log "tts warm-up ($(since "$t") s)"

# ---- agentline ------------------------------------------------------------------
PROFILE=$W/e2e.toml
cat >"$PROFILE" <<EOF
# written by tests/e2e/run.sh
[sip]
listen = ["udp:127.0.0.1:$P_SIP"]
domain = "agentline.e2e"
trusted = ["127.0.0.1/32"]

[rtp]
ports = "$RTP_A-$RTP_B"
bind = "127.0.0.1"

[api]
listen = "127.0.0.1:$P_API"

[[routes]]
dial = "assistant"
agent = { kind = "openai_compat", asr_url = "http://127.0.0.1:$P_ASR/v1/audio/transcriptions", llm_url = "http://127.0.0.1:$P_LLM/v1/chat/completions", tts_url = "http://127.0.0.1:$P_TTS/v1/audio/speech", asr_model = "whisper-1", llm_model = "$LLM_ALIAS", tts_model = "tts-1", voice = "$VOICE", system = "$SYSTEM"$EOT_OPT }
dsp = { vad = true }
EOF
"$AGENTLINE_BIN" check-config --profile "$PROFILE" >"$W/check-config.log" 2>&1 ||
    { cat "$W/check-config.log" >&2; die "agentline check-config rejects the profile ($PROFILE)"; }

log "starting agentline: sip udp:127.0.0.1:$P_SIP, api 127.0.0.1:$P_API, rtp $RTP_A-$RTP_B"
NO_COLOR=1 RUST_LOG=${RUST_LOG:-info,rsipstack=warn} setsid "$AGENTLINE_BIN" run --profile "$PROFILE" \
    --sip-listen "udp:127.0.0.1:$P_SIP" --api-listen "127.0.0.1:$P_API" \
    --rtp-ports "$RTP_A-$RTP_B" --state-dir "$W/state" --log-format text \
    >"$W/agentline.log" 2>&1 &
PID_AL=$!
t=$(now)
until curl -sf --max-time 2 "http://127.0.0.1:$P_API/health" >/dev/null; do
    kill -0 "$PID_AL" 2>/dev/null || die "agentline exited at start"
    [ "$(awk -v a="$t" -v b="$(now)" 'BEGIN { print (b - a > 20) }')" = 0 ] || die "agentline /health did not answer within 20 s"
    sleep 0.1
done
log "agentline up after $(since "$t") s"

# ---- the caller: baresip, headless (as tests/common/baresip.rs drives it) ------
cat >"$W/phone/config" <<EOF
poll_method		poll
sip_listen		127.0.0.1:$P_PHONE
net_interface		127.0.0.1
audio_player		aufile,$W/phone/out.wav
audio_source		aufile,$W/phone/in.wav
audio_alert		aufile,/dev/null
audio_srate		8000
audio_channels		1
jitter_buffer_delay	0-0
rtp_ports		$PHONE_RTP_A-$PHONE_RTP_B
module_path		/usr/lib/baresip/modules
module			g711.so
module			aufile.so
module			sndfile.so
snd_path		$W/phone/rec
module_app		account.so
module_app		menu.so
module_app		ctrl_tcp.so
ctrl_tcp_listen		127.0.0.1:$P_CTRL
EOF
echo "<sip:caller@127.0.0.1:$P_SIP;transport=udp>;regint=0;answermode=auto;audio_codecs=PCMU,PCMA" >"$W/phone/accounts"

DIAL="sip:assistant@127.0.0.1:$P_SIP"
log "calling $DIAL for ${CALL_SECS} s: \"$QUESTION\""
T_CALL=$(now)
baresip -f "$W/phone" -e "/dial $DIAL" -t $((CALL_SECS + 30)) </dev/null >"$W/phone.log" 2>&1 &
PID_PHONE=$!

# While the call runs: learn its id from GET /calls; stop when the phone reports the end.
CALL_ID=
DEADLINE=$((CALL_SECS + 25))
while :; do
    if [ -z "$CALL_ID" ]; then
        CALL_ID=$(curl -sf --max-time 2 "http://127.0.0.1:$P_API/calls" | "$E2E_PYTHON" -c '
import json, sys
try:
    calls = json.load(sys.stdin)
except Exception:
    calls = []
for c in calls:
    if "assistant" in (c.get("to") or "") or c.get("route") == "assistant":
        print(c["id"]); break' 2>/dev/null || true)
    fi
    if grep -aqE 'Call with .* terminated|session closed' "$W/phone.log"; then break; fi
    kill -0 "$PID_PHONE" 2>/dev/null || break
    [ "$(awk -v a="$T_CALL" -v b="$(now)" -v d="$DEADLINE" 'BEGIN { print (b - a > d) }')" = 0 ] ||
        die "the call did not end within $DEADLINE s"
    sleep 0.25
done
CALL_SECS_REAL=$(since "$T_CALL")
kill -INT "$PID_PHONE" 2>/dev/null || true
for _ in $(seq 100); do kill -0 "$PID_PHONE" 2>/dev/null || break; sleep 0.1; done
kill -KILL "$PID_PHONE" 2>/dev/null || true
wait "$PID_PHONE" 2>/dev/null || true
PID_PHONE=
sleep 0.5   # let agentline finish the call's bookkeeping

PHONE_TXT=$(sed -e 's/\x1b\[[0-9;]*[A-Za-z]//g' "$W/phone.log" | tr '\r' '\n')
END_LINE=$(grep -aE 'Call with .* terminated|session closed' <<<"$PHONE_TXT" | tail -n1 || true)
grep -aq 'Call established' <<<"$PHONE_TXT" || die "the call was not answered: ${END_LINE:-no answer}"
log "call over after $CALL_SECS_REAL s: ${END_LINE:-?}"

# ---- what agentline says about the call ------------------------------------------------
if [ -z "$CALL_ID" ]; then
    # fall back on the log's call span
    CALL_ID=$(grep -aoE 'call\{[^}]*\}' "$W/agentline.log" | head -n1 | grep -oE 'call_id=[^ }]+' | cut -d= -f2 || true)
    log "the call's id was not seen in GET /calls while it ran"
fi
CALL_JSON=$W/call.json
: >"$CALL_JSON"
[ -n "$CALL_ID" ] && curl -sf --max-time 5 "http://127.0.0.1:$P_API/calls/$CALL_ID" -o "$CALL_JSON" || true

# ---- what the phone heard -------------------------------------------------------------
HEARD=$(ls "$W"/phone/rec/dump-*-dec.wav 2>/dev/null | sort | tail -n1 || true)
SENT=$(ls "$W"/phone/rec/dump-*-enc.wav 2>/dev/null | sort | tail -n1 || true)
[ -n "$HEARD" ] || die "baresip recorded nothing (no dump-*-dec.wav): no audio reached the phone"
t=$(now)
HEARD_TEXT=$(transcribe "$P_ASR" "$HEARD") || die "could not transcribe what the phone heard"
ASR_BACK_SECS=$(since "$t")

# Report and judge in one place (Python stdlib only).
set +e
# (the ASR venv's Python: it has numpy, for the pitch)
"$E2E_DIR/asr/bin/python" - "$CALL_JSON" "$W/agentline.log" "$HEARD" "${SENT:-}" "$SPEECH_END" "$HEARD_TEXT" \
    "$P_TTS" "$VOICE" "${E2E_SPEED_TOLERANCE:-0.04}" "$EXPECT_UNDERSTOOD" "$EXPECT_ANSWER" "$OWN_MAX_MS" <<'EOF'
import array, json, re, sys, wave

call_json, log_path, heard_wav, sent_wav, speech_end, heard_text, tts_port, voice, speed_tol = sys.argv[1:10]
expect_understood, expect_answer, own_max = sys.argv[10:13]
own_max = float(own_max)
speech_end, speed_tol = float(speech_end), float(speed_tol)
fails = []

def read(path):
    with wave.open(path, "rb") as w:
        assert w.getsampwidth() == 2, "expected 16-bit WAV"
        a = array.array("h", w.readframes(w.getnframes()))
        ch = w.getnchannels()
        return w.getframerate(), a[::ch]

# --- latency reported by agentline
turns, transcript, info = [], [], {}
try:
    info = json.load(open(call_json))
    turns = info.get("turns") or []
    transcript = info.get("transcript") or []
except Exception:
    pass
source = "GET /calls/{id}"
if not turns:
    source = 'log "turn latency"'
    for line in open(log_path, errors="replace"):
        if "turn latency" in line:
            line = re.sub(r"\x1b\[[0-9;]*m", "", line)
            t = {}
            for k in ("total_ms", "asr_ms", "llm_first_token_ms", "tts_first_byte_ms"):
                m = re.search(k + r"=(?:Some\()?(\d+)", line)
                t[k] = int(m.group(1)) if m else None
            if t["total_ms"] is not None:
                turns.append(t)
if info:
    print(f"call {info.get('id')}: state {info.get('state')}, codec {info.get('codec')}, "
          f"caller_turns {info.get('caller_turns')}, end_reason {info.get('end_reason')!r}"
          + (f", last_agent_error {info['last_agent_error']!r}" if info.get("last_agent_error") else ""))
for line in transcript:
    print(f"  transcript {line.get('role')}: {line.get('text')!r}")
if turns:
    for i, t in enumerate(turns, 1):
        stages = ", ".join(f"{k} {t.get(k)}" for k in ("asr_ms", "llm_first_token_ms", "tts_first_byte_ms")
                           if t.get(k) is not None)
        parts = [t.get(k) for k in ("asr_ms", "llm_first_token_ms", "tts_first_byte_ms")]
        rest = (f"; rest {t['total_ms'] - sum(parts)} ms = LLM tokens up to the end of the first "
                "sentence + agentline's own share" if None not in parts else "")
        print(f"TURN LATENCY (agentline, {source}) turn {i}: total {t['total_ms']} ms"
              + (f" ({stages}{rest})" if stages else "")
              + (f"; end-of-turn wait {t['end_of_turn_wait_ms']} ms before it"
                 if t.get("end_of_turn_wait_ms") is not None else ""))
    # agentline's own share: end of turn -> ASR request + transcript -> LLM
    # request (own_in_ms), first TTS audio -> its first RTP packet (own_out_ms).
    own = [t["own_in_ms"] + t["own_out_ms"] for t in turns
           if t.get("own_in_ms") is not None and t.get("own_out_ms") is not None]
    if own:
        own.sort()
        p95 = own[min(len(own) - 1, int(round(0.95 * (len(own) - 1))))]
        print(f"OWN SHARE (agentline): p95 {p95} ms over {len(own)} turn(s) "
              + ", ".join(f"in {t.get('own_in_ms')} + out {t.get('own_out_ms')}" for t in turns)
              + f" (limit {own_max:.0f} ms)")
        if p95 >= own_max:
            fails.append(f"agentline's own share of a turn is {p95} ms at p95 (limit {own_max:.0f} ms)")
    else:
        fails.append("agentline reported no own share (own_in_ms/own_out_ms) for any turn")
else:
    fails.append("agentline reported no turn latency (no `turns` in GET /calls/{id}, no \"turn latency\" log line)")

# --- the question was understood: one user entry of the call's transcript
# (what agentline's ASR made of the caller's utterance) holds the whole
# question. Normalised: lowercase, no punctuation, "what's" -> "what is".
def words(text):
    text = re.sub(r"\bwhat's\b", "what is", text.lower().replace("\u2019", "'"))
    return " ".join(re.findall(r"[a-z0-9]+", text))
user_lines = [l.get("text") or "" for l in transcript if l.get("role") == "user"]
if expect_understood:
    if any(re.search(expect_understood, words(u)) for u in user_lines):
        print(f"UNDERSTOOD: the caller's question reached the agent whole (/{expect_understood}/)")
    else:
        fails.append(f"no user entry of the call's transcript matches /{expect_understood}/ once normalised: "
                     f"{user_lines!r} (words of the question lost?)")
else:
    print("UNDERSTOOD: not checked (E2E_QUESTION changed and E2E_EXPECT_UNDERSTOOD not set)")

# --- latency the caller measured: end of its speech -> first answer audio.
# Both baresip dumps end at the hang-up, so aligning their ends puts what was
# heard on the clock of in.wav (tests/common/baresip.rs heard_aligned). That
# holds only if RTP came in all call long (rtp.send_silence): the dec dump
# grows only when packets arrive.
FRAME_RMS = 300                                    # about -40 dBFS: "not silence"
def voiced(rate, samples):
    """Start times (s) of the 20 ms frames louder than FRAME_RMS."""
    n = rate // 50
    out = []
    for i in range(0, len(samples) - n + 1, n):
        f = samples[i:i + n]
        if (sum(x * x for x in f) / n) ** 0.5 > FRAME_RMS:
            out.append(i / rate)
    return out

rate, heard = read(heard_wav)
heard_voiced = voiced(rate, heard)
offset = 0.0
if sent_wav:
    srate, sent = read(sent_wav)
    sent_s, heard_s = len(sent) / srate, len(heard) / rate
    offset = sent_s - heard_s                      # heard t=0 is at this time on the sent clock
    if offset > 1.0:
        print(f"CALLER-MEASURED LATENCY: not measurable: the phone received RTP for {heard_s:.1f} s "
              f"of a {sent_s:.1f} s call (agentline sent no packets while the agent was silent)")
    else:
        after = [offset + t for t in heard_voiced if offset + t >= speech_end]
        if after:
            print(f"CALLER-MEASURED LATENCY: {1000 * (after[0] - speech_end):.0f} ms from the end of the "
                  f"caller's speech ({speech_end:.2f} s) to the first answer audio ({after[0]:.2f} s), "
                  "VAD end-of-turn wait included")
        else:
            print("CALLER-MEASURED LATENCY: no answer audio after the caller's speech")
peak = max((abs(x) for x in heard), default=0)
rms = (sum(x * x for x in heard) / max(1, len(heard))) ** 0.5
print(f"heard: {len(heard) / rate:.1f} s at {rate} Hz, peak {peak}, rms {rms:.0f}, "
      f"{0.02 * len(heard_voiced):.2f} s of it not silent")

# --- playback speed: the answer must sound as the TTS made it. The agent's
# sentences are synthesized again (same engine, same text, at the phone's
# 8 kHz) and the median voice pitch is compared with the recording's: pitch
# scales exactly with a wrong playback rate (22050 Hz audio taken for 24000 Hz:
# x1.088), while piper's own variation between two renderings is about 1 %.
# (The non-silent duration is printed too, but piper varies it by a few %.)
def median_f0(rate, a, fmin=70.0, fmax=300.0):
    import numpy as np
    x = np.asarray(a, dtype=np.float64)
    n, hop = int(0.04 * rate), int(0.01 * rate)
    lo, hi = int(rate / fmax), int(rate / fmin)
    f0s = []
    for i in range(0, len(x) - n - hi, hop):
        seg = x[i:i + n + hi] - x[i:i + n + hi].mean()
        w = seg[:n]
        e0 = float(np.dot(w, w))
        if (e0 / n) ** 0.5 < FRAME_RMS:
            continue
        ac = np.array([np.dot(w, seg[l:l + n]) for l in range(lo, hi + 1)])
        k = int(np.argmax(ac))
        if ac[k] / e0 < 0.5:                       # not voiced
            continue
        d = 0.0
        if 0 < k < len(ac) - 1:                    # parabolic peak: sub-sample lag
            den = ac[k - 1] - 2 * ac[k] + ac[k + 1]
            if den < 0:
                d = 0.5 * (ac[k - 1] - ac[k + 1]) / den
        f0s.append(rate / (lo + k + d))
    return (float(np.median(f0s)), len(f0s)) if len(f0s) >= 20 else (None, len(f0s))

agent_lines = [l.get("text", "") for l in transcript if l.get("role") == "agent" and l.get("text")]
if agent_lines and heard_voiced and tts_port:
    import subprocess, urllib.request
    ref = array.array("h")
    try:
        for text in agent_lines:
            req = urllib.request.Request(
                f"http://127.0.0.1:{tts_port}/v1/audio/speech",
                data=json.dumps({"model": "tts-1", "voice": voice, "input": text,
                                 "response_format": "wav"}).encode(),
                headers={"Content-Type": "application/json"})
            body = urllib.request.urlopen(req, timeout=60).read()
            raw8 = subprocess.run(["sox", "-t", "wav", "-", "-t", "raw", "-r", "8000", "-e", "signed",
                                   "-b", "16", "-c", "1", "-"],
                                  input=body, capture_output=True, check=True).stdout
            ref.extend(array.array("h", raw8[:len(raw8) // 2 * 2]))
    except Exception as e:
        print(f"playback speed: could not synthesize the reference ({e})")
        ref = array.array("h")
    if ref:
        got, want = 0.02 * len(heard_voiced), 0.02 * len(voiced(8000, ref))
        try:
            (f_heard, n_heard), (f_ref, n_ref) = median_f0(rate, heard), median_f0(8000, ref)
        except ImportError:
            f_heard = f_ref = None
            print("playback speed: numpy missing, pitch not measured")
        line = f"PLAYBACK SPEED: answer not silent {got:.2f} s heard vs {want:.2f} s rendered by the TTS"
        if f_heard and f_ref:
            ratio = f_heard / f_ref
            print(f"{line}; voice pitch {f_heard:.1f} Hz heard vs {f_ref:.1f} Hz rendered: ratio {ratio:.3f}")
            if abs(ratio - 1) > speed_tol:
                fails.append(f"the answer's pitch is {ratio:.3f}x the TTS's own (tolerance {speed_tol}): "
                             "TTS audio played at the wrong sample rate?")
        else:
            print(f"{line}; pitch not measurable")

# --- the words heard
print(f"WORDS HEARD: {heard_text!r}")
tokens = [re.sub(r"^[^\w']+|[^\w']+$", "", w) for w in heard_text.split()]
tokens = [w for w in tokens if w]
english = [w for w in tokens if re.fullmatch(r"[A-Za-z][A-Za-z'-]*", w)]
if len(english) < 3:
    fails.append(f"fewer than 3 English words heard: {heard_text!r}")
elif len(english) < 0.8 * len(tokens):
    fails.append(f"what was heard is not mostly English words: {heard_text!r}")
agent_said = " ".join(l.get("text", "") for l in transcript if l.get("role") == "agent")
if agent_said:
    norm = lambda s: set(re.findall(r"[a-z']+", s.lower()))
    a, h = norm(agent_said), norm(heard_text)
    if a:
        print(f"words of the agent's transcript found in what was heard: {len(a & h)}/{len(a)}")
# --- the question was answered: what the phone heard, transcribed, has the answer
if expect_answer:
    if re.search(rf"\b{expect_answer}\b", words(heard_text)):
        print(f"ANSWERED: the phone heard {expect_answer!r}")
    else:
        said = "said it" if re.search(rf"\b{expect_answer}\b", words(agent_said)) else "did not say it either"
        fails.append(f"the phone did not hear {expect_answer!r}: heard {heard_text!r} (the agent's transcript "
                     f"{said}: {agent_said!r})")
else:
    print("ANSWERED: not checked (E2E_QUESTION changed and E2E_EXPECT_ANSWER not set)")
for f in fails:
    print("FAIL:", f)
sys.exit(1 if fails else 0)
EOF
RC=$?
set -e
log "asr of the recording took $ASR_BACK_SECS s; engines came up in $ENG_SECS s"
[ "$RC" = 0 ] || die "checks failed (see above)"
OK=1
log "PASS in $(since "$T_RUN") s"
