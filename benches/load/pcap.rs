//! Writes the RTP captures that `benches/load/run.sh` replays with sipp's
//! `play_pcap_audio` for the codecs sipp's `rtp_stream` cannot send
//! (it knows only PCMU, PCMA and G.729): real speech
//! (`tests/data/speech_8k.wav`, looped) encoded by agentline's own G.722 and
//! Opus encoders, one RTP packet per 20 ms, as Ethernet/IPv4/UDP frames in a
//! classic pcap file (sipp rewrites the addresses and ports per call).
//!
//! `cargo run --release --example load_pcap -- OUT_DIR SECONDS` writes
//! `OUT_DIR/g722.pcap` (payload type 9) and `OUT_DIR/opus.pcap` (payload
//! type 96, 48 kHz, 32 kbit/s, the encoder's defaults). `tests/load_quick.rs`
//! includes this file and calls [`write_all`] directly.

use std::path::Path;

use agentline::media::codec::{self, CodecKind, CodecParams};
use agentline::media::resample::resample_once;
use agentline::media::wav::Wav;

/// The dynamic payload type the load scenario offers for Opus.
pub const OPUS_PT: u8 = 96;

/// Errors while making a capture.
#[derive(Debug, thiserror::Error)]
pub enum PcapError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Media(String),
}

fn media<E: std::fmt::Display>(e: E) -> PcapError {
    PcapError::Media(e.to_string())
}

/// Writes `g722.pcap` and `opus.pcap` of `seconds` of looped speech into `dir`.
pub fn write_all(speech_wav: &Path, dir: &Path, seconds: u32) -> Result<(), PcapError> {
    std::fs::create_dir_all(dir)?;
    let wav = Wav::parse(&std::fs::read(speech_wav)?).map_err(media)?;
    let pcm8k = wav.mono();
    for (kind, pt, file) in [
        (CodecKind::G722, 9u8, "g722.pcap"),
        (CodecKind::Opus, OPUS_PT, "opus.pcap"),
    ] {
        let payloads = encode(kind, wav.sample_rate, &pcm8k, seconds)?;
        let ts_step = if kind == CodecKind::Opus { 960 } else { 160 };
        std::fs::write(dir.join(file), pcap(&payloads, pt, ts_step))?;
    }
    Ok(())
}

/// `seconds` of the clip, looped, as one encoded payload per 20 ms.
fn encode(
    kind: CodecKind,
    rate: u32,
    pcm: &[i16],
    seconds: u32,
) -> Result<Vec<Vec<u8>>, PcapError> {
    let p = CodecParams::new(kind);
    let mut enc = codec::encoder(&p).map_err(media)?;
    let clip = if enc.sample_rate() == rate {
        pcm.to_vec()
    } else {
        resample_once(pcm, rate, enc.sample_rate()).map_err(media)?
    };
    let n = enc.frame_samples();
    let frames = (seconds as usize) * 50;
    let mut looped = Vec::with_capacity(frames * n);
    while looped.len() < frames * n {
        looped.extend_from_slice(&clip);
    }
    let mut out = Vec::with_capacity(frames);
    for f in looped.chunks_exact(n).take(frames) {
        let mut payload = Vec::new();
        enc.encode(f, &mut payload).map_err(media)?;
        out.push(payload);
    }
    Ok(out)
}

/// A classic pcap (Ethernet) of RTP packets 20 ms apart from
/// 127.0.0.1:6000 to 127.0.0.1:7000.
fn pcap(payloads: &[Vec<u8>], pt: u8, ts_step: u32) -> Vec<u8> {
    let mut out = Vec::new();
    // Global header: magic, v2.4, zone 0, sigfigs 0, snaplen, DLT_EN10MB.
    out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&0i32.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&65535u32.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes());
    let ssrc = 0x4c4f_4144u32; // "LOAD"
    for (i, payload) in payloads.iter().enumerate() {
        let mut rtp = Vec::with_capacity(12 + payload.len());
        rtp.push(0x80);
        rtp.push(pt | if i == 0 { 0x80 } else { 0 });
        rtp.extend_from_slice(&(i as u16).to_be_bytes());
        rtp.extend_from_slice(&(i as u32).wrapping_mul(ts_step).to_be_bytes());
        rtp.extend_from_slice(&ssrc.to_be_bytes());
        rtp.extend_from_slice(payload);
        let frame = ethernet_ipv4_udp(&rtp);
        let usec = i as u64 * 20_000;
        out.extend_from_slice(&((usec / 1_000_000) as u32).to_le_bytes());
        out.extend_from_slice(&((usec % 1_000_000) as u32).to_le_bytes());
        out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        out.extend_from_slice(&frame);
    }
    out
}

fn ethernet_ipv4_udp(payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(42 + payload.len());
    f.extend_from_slice(&[0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 1, 0x08, 0x00]);
    let ip_len = (20 + 8 + payload.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&ip_len.to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0, 127, 0, 0, 1, 127, 0, 0, 1]);
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&6000u16.to_be_bytes());
    f.extend_from_slice(&7000u16.to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]); // no UDP checksum (sipp computes its own)
    f.extend_from_slice(payload);
    f
}

fn checksum(b: &[u8]) -> u16 {
    let mut s: u32 = b
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

#[allow(dead_code)]
fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(dir), Some(secs)) = (args.next(), args.next()) else {
        eprintln!("usage: load_pcap OUT_DIR SECONDS");
        std::process::exit(2);
    };
    let Ok(secs) = secs.parse::<u32>() else {
        eprintln!("SECONDS must be a whole number, got {secs}");
        std::process::exit(2);
    };
    let wav = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/speech_8k.wav");
    if let Err(e) = write_all(&wav, Path::new(&dir), secs) {
        eprintln!("load_pcap: {e}");
        std::process::exit(1);
    }
}
