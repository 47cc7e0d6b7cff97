#![allow(clippy::unwrap_used)]
//! The end-to-end example with real local engines (tests/e2e/): baresip
//! asks a question, agentline's `openai_compat` route sends it through
//! faster-whisper-server, llama.cpp (Qwen2.5-Coder-0.5B-Instruct) and Piper,
//! and what the phone heard is transcribed back into words: run.sh checks
//! the agent understood the whole question and the phone heard "Paris".
//! The engines are installed by
//! tests/e2e/setup.sh (PyPI only; the llama.cpp build takes ~8-15 min the
//! first time). Under CI=true (or AGENTLINE_E2E=1) this test installs them;
//! elsewhere it runs when they are already installed and skips otherwise.

use std::path::Path;
use std::process::Command;

#[test]
fn caller_question_is_answered_by_real_local_engines() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let e2e_dir = std::env::var("E2E_DIR").unwrap_or_else(|_| "/var/tmp/agentline-e2e".into());
    let installed = ["asr", "llm", "tts"]
        .iter()
        .all(|d| Path::new(&e2e_dir).join(d).join("bin/python").exists());
    let wanted = std::env::var("CI").is_ok_and(|v| v == "true")
        || std::env::var("AGENTLINE_E2E").is_ok_and(|v| v == "1");
    if !installed && !wanted {
        eprintln!("SKIP: local AI engines not installed (tests/e2e/setup.sh, or AGENTLINE_E2E=1)");
        return;
    }
    let setup = Command::new(root.join("tests/e2e/setup.sh"))
        .env("E2E_DIR", &e2e_dir)
        .status()
        .unwrap();
    assert!(setup.success(), "tests/e2e/setup.sh failed");
    let run = Command::new(root.join("tests/e2e/run.sh"))
        .env("E2E_DIR", &e2e_dir)
        .env("AGENTLINE_BIN", env!("CARGO_BIN_EXE_agentline"))
        .status()
        .unwrap();
    assert!(
        run.success(),
        "tests/e2e/run.sh failed (its log above says which check)"
    );
}
