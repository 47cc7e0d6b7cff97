//! Per-call media, sans-IO: RTP parsing, G.711, DTMF, playout and the call's
//! media state machine ([`session::Session`]). Only the call task owns sockets.
//! The bottom layer: nothing here imports from above (`sdp`, `config`,
//! `agent`, `sip`, ...), and nothing here opens a socket.
pub mod amd;
pub mod codec;
pub mod dsp;
pub mod dtmf;
pub mod g711;
pub mod jitter;
pub mod latch;
pub mod pcm;
pub mod plc;
pub mod recording;
pub mod resample;
pub mod rtcp;
pub mod rtp;
pub mod session;
pub mod srtp;
pub mod tones;
pub mod wav;

#[cfg(test)]
mod layering {
    use std::path::Path;

    fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// `media` is the bottom layer: no import from a layer above it (sdp,
    /// config, agent, sip, calls, control, server) and no socket.
    #[test]
    fn media_imports_nothing_from_above_and_opens_no_socket() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/media");
        let mut files = Vec::new();
        sources(&dir, &mut files);
        assert!(
            files.len() > 10,
            "found {} files under {dir:?}",
            files.len()
        );
        let above = [
            "sdp", "config", "agent", "sip", "calls", "control", "server",
        ];
        let mut forbidden: Vec<String> = above.iter().map(|m| format!("crate::{m}")).collect();
        forbidden.push(["tokio", "::net"].concat());
        forbidden.push(["std::net::", "UdpSocket"].concat());
        for file in &files {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            for f in &forbidden {
                assert!(
                    !text.contains(f.as_str()),
                    "{} mentions {f}",
                    file.display()
                );
            }
        }
    }
}
