#![allow(clippy::unwrap_used)]
//! `say`: a route that speaks a sentence and hangs up once it was heard.
//! baresip records the call; the recording must contain the same speech as
//! espeak-ng makes of the text, and the server ends the call after it.

mod common;

use std::process::Command;

use common::audio;
use common::baresip::{Account, Baresip, Options};
use common::{require_peer, Server};

const TEXT: &str = "Thank you for calling. Goodbye.";

#[test]
fn say_speaks_the_text_then_hangs_up() {
    if require_peer("baresip").is_none() || require_peer("espeak-ng").is_none() {
        return;
    }
    let server = Server::start(&format!(
        "[sip]\ntrusted = [\"127.0.0.1/32\"]\n[[routes]]\ndial = \"bye\"\n\
         agent = {{ kind = \"say\", text = \"{TEXT}\" }}\n"
    ));
    let account = Account::new("1000", None, server.sip_port).regint(0);
    let mut opts = Options::new(account).dial("bye");
    // Silence from the phone for longer than the sentence: the server must
    // be the one to end the call.
    opts.tail_silence_ms = 12_000;
    opts.max_secs = 25;
    let out = Baresip::run(opts);
    let heard = out.heard().unwrap();
    let ctx = format!(
        "{}\n{}\n{}",
        out.sip_flow(),
        out.summary(),
        server.log_text()
    );
    assert!(out.facts.call_established, "{ctx}");
    assert!(
        server.log_text().contains("agent finished"),
        "the server hung up after speaking: {ctx}"
    );
    let bye_from_server = out
        .facts
        .messages
        .iter()
        .any(|m| !m.outgoing && m.status.is_none() && m.method == "BYE");
    assert!(bye_from_server, "BYE came from the server\n{ctx}");
    // What espeak-ng makes of the text is what the caller heard.
    let dir = tempfile::tempdir().unwrap();
    let reference = dir.path().join("ref.wav");
    let st = Command::new("espeak-ng")
        .arg("-w")
        .arg(&reference)
        .arg(TEXT)
        .status()
        .unwrap();
    assert!(st.success());
    let reference = audio::read_wav(&reference).unwrap();
    let (at_ms, corr) = audio::find_segment(&heard, &reference).unwrap_or_else(|| {
        panic!(
            "the sentence is not in the recording: {}\n{ctx}",
            audio::describe(&heard)
        )
    });
    assert!(corr > 0.7, "correlation with the sentence {corr:.2}\n{ctx}");
    assert!(
        at_ms < 1500.0,
        "spoken right after answering, at {at_ms:.0} ms"
    );
    let speech = audio::speech_region(&heard.to_8k()).unwrap();
    let spoken_ms = (speech.1 - speech.0) as f64 / 8.0;
    assert!(
        spoken_ms > reference.duration_ms() * 0.8,
        "the whole sentence was played ({spoken_ms:.0} ms of {:.0} ms)",
        reference.duration_ms()
    );
    eprintln!("say: heard at {at_ms:.0} ms, corr {corr:.2}, {spoken_ms:.0} ms of speech");
}
