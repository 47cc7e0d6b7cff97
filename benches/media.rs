//! Per-frame cost of each media stage and of a whole 20 ms call tick.
//!
//! Every benchmark processes one 20 ms frame per iteration (RTCP: one
//! report), fed from real speech (`tests/data/speech_8k.wav`, looped and
//! resampled once at set-up for the 16 and 48 kHz stages). Stateful stages
//! (codecs, resamplers, jitter buffer, DSP, session) keep their state across
//! iterations, so what is measured is the steady state of a running call.
//!
//! The `tick/*` benchmarks drive `media::session::Session` the way the call
//! task does for an echo agent, on virtual time: one RTP packet in, the
//! playout clock, the agent's audio back in, the RTP packet out. Media only:
//! no sockets, no syscalls, no SIP, no tokio.
//!
//! After the run this prints a Markdown summary (median per frame, share of
//! the 20 ms real-time budget, calls per core, and the ratio to the per-call
//! CPU the AVR sizing guide quotes), read back from criterion's
//! `estimates.json` files written by this same run. `benches/RESULTS.md`
//! holds it and how to reproduce it.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use agentline::agent::{Agent, AgentOutput, Echo};
use agentline::media::codec::{self, CodecKind, CodecParams};
use agentline::media::dsp::{CallerDsp, DspConfig};
use agentline::media::jitter::{JitterBuffer, JitterConfig, Playout};
use agentline::media::plc::Concealer;
use agentline::media::resample::Resampler;
use agentline::media::rtcp::{self, ReportBlock, RtcpPacket, Sdes, SdesChunk, SdesItem};
use agentline::media::rtp::{PayloadType, RtpPacket, SeqNo, Ssrc};
use agentline::media::session::{MediaEvent, MediaParams, Session};
use agentline::media::wav::Wav;
use agentline::sdp::{Codec, Direction};
use criterion::Criterion;

const SPEECH_8K: &[u8] = include_bytes!("../tests/data/speech_8k.wav");
/// One frame of real time: the budget every per-frame cost is measured against.
const FRAME: Duration = Duration::from_millis(20);
/// What the echo agent lets the playout queue grow to (`agent::Echo`).
const ECHO_MAX_QUEUE_MS: u32 = 60;

/// The speech clip at `rate`, cut into 20 ms frames.
fn speech_frames(rate: u32) -> Vec<Vec<i16>> {
    let wav = Wav::parse(SPEECH_8K).unwrap();
    assert_eq!(wav.sample_rate, 8000);
    let mut pcm = wav.mono();
    pcm.truncate(pcm.len() / 160 * 160);
    if rate != 8000 {
        let mut r = Resampler::new(8000, rate, 20).unwrap();
        let mut out = Vec::new();
        r.process(&pcm, &mut out).unwrap();
        pcm = out;
    }
    let n = rate as usize / 50;
    pcm.chunks_exact(n).map(<[i16]>::to_vec).collect()
}

/// The clip encoded by `kind` (at its native rate), one payload per frame.
fn payloads(kind: CodecKind) -> Vec<Vec<u8>> {
    let p = CodecParams::new(kind);
    let mut enc = codec::encoder(&p).unwrap();
    speech_frames(enc.sample_rate())
        .iter()
        .map(|f| {
            let mut out = Vec::new();
            enc.encode(f, &mut out).unwrap();
            out
        })
        .collect()
}

fn bench_codecs(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    for (name, kind) in [
        ("pcmu", CodecKind::Pcmu),
        ("g722", CodecKind::G722),
        ("opus48k", CodecKind::Opus),
    ] {
        let p = CodecParams::new(kind);
        let mut enc = codec::encoder(&p).unwrap();
        let frames = speech_frames(enc.sample_rate());
        let mut out = Vec::with_capacity(4000);
        let mut i = 0;
        g.bench_function(format!("{name}_encode"), |b| {
            b.iter(|| {
                i = (i + 1) % frames.len();
                out.clear();
                enc.encode(black_box(&frames[i]), &mut out).unwrap();
                black_box(&out);
            })
        });
        let mut dec = codec::decoder(&p).unwrap();
        let packets = payloads(kind);
        let mut pcm = Vec::with_capacity(5760);
        let mut i = 0;
        g.bench_function(format!("{name}_decode"), |b| {
            b.iter(|| {
                i = (i + 1) % packets.len();
                pcm.clear();
                dec.decode(black_box(&packets[i]), &mut pcm).unwrap();
                black_box(&pcm);
            })
        });
    }
    g.finish();
}

fn bench_resample(c: &mut Criterion) {
    let mut g = c.benchmark_group("resample");
    for (from, to) in [(8000, 48000), (48000, 8000), (8000, 16000)] {
        // 10 ms blocks, 20 ms per call: what `Session` builds and feeds.
        let mut r = Resampler::new(from, to, 10).unwrap();
        let frames = speech_frames(from);
        let mut out = Vec::with_capacity(960);
        let mut i = 0;
        g.bench_function(format!("{}k_to_{}k", from / 1000, to / 1000), |b| {
            b.iter(|| {
                i = (i + 1) % frames.len();
                out.clear();
                r.process(black_box(&frames[i]), &mut out).unwrap();
                black_box(&out);
            })
        });
    }
    g.finish();
}

fn bench_dsp(c: &mut Criterion) {
    let mut g = c.benchmark_group("dsp");
    let only = |denoise, vad, agc| DspConfig {
        denoise,
        vad,
        agc,
        ..DspConfig::default()
    };
    for (name, rate, cfg) in [
        ("denoise_8k", 8000, only(true, false, false)),
        // The spectral VAD alone: no RNNoise, no resampling.
        ("vad_8k", 8000, only(false, true, false)),
        ("denoise_vad_agc_8k", 8000, DspConfig::default()),
        ("denoise_vad_agc_48k", 48000, DspConfig::default()),
    ] {
        let mut dsp = CallerDsp::new(rate, cfg).unwrap();
        let frames = speech_frames(rate);
        let mut work = vec![0i16; dsp.frame_len()];
        let mut i = 0;
        g.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 1) % frames.len();
                work.copy_from_slice(&frames[i]);
                black_box(dsp.process(black_box(&mut work)));
            })
        });
    }
    g.finish();
}

fn bench_jitter(c: &mut Criterion) {
    let mut g = c.benchmark_group("jitter");
    let packets = payloads(CodecKind::Pcmu);
    let mut jb = JitterBuffer::new(JitterConfig::default());
    let t0 = Instant::now();
    let mut n: u32 = 0;
    // One packet in and one frame out per 20 ms, as on a clean network.
    let mut step = |jb: &mut JitterBuffer| {
        n = n.wrapping_add(1);
        let now = t0 + FRAME * n;
        jb.push(
            now,
            Ssrc(7),
            SeqNo(n as u16),
            n.wrapping_mul(160),
            false,
            &packets[n as usize % packets.len()],
        );
        jb.pop(now)
    };
    for _ in 0..100 {
        step(&mut jb);
    }
    assert!(
        matches!(step(&mut jb), Playout::Frame { .. }),
        "steady state plays a frame every tick"
    );
    g.bench_function("push_pop", |b| b.iter(|| black_box(step(&mut jb))));
    g.finish();
}

fn bench_plc(c: &mut Criterion) {
    let mut g = c.benchmark_group("plc");
    let frames = speech_frames(8000);
    let mut plc = Concealer::new(8000, 160);
    let mut work = vec![0i16; 160];
    let mut i = 0;
    g.bench_function("good_frame_8k", |b| {
        b.iter(|| {
            i = (i + 1) % frames.len();
            work.copy_from_slice(&frames[i]);
            plc.good_frame(black_box(&mut work));
        })
    });
    // Every other frame lost: each conceal starts a new erasure (pitch
    // search), the most a single loss can cost.
    g.bench_function("good_frame_then_conceal_8k", |b| {
        b.iter(|| {
            i = (i + 1) % frames.len();
            work.copy_from_slice(&frames[i]);
            plc.good_frame(&mut work);
            black_box(plc.conceal());
        })
    });
    g.finish();
}

fn bench_rtp_rtcp(c: &mut Criterion) {
    let mut g = c.benchmark_group("rtp");
    let payload = payloads(CodecKind::Pcmu).swap_remove(10);
    let mut wire = Vec::with_capacity(200);
    RtpPacket {
        marker: false,
        payload_type: PayloadType(0),
        seq: SeqNo(1),
        timestamp: 160,
        ssrc: Ssrc(7),
        payload: &payload,
    }
    .write(&mut wire);
    let mut out = Vec::with_capacity(200);
    g.bench_function("parse_build", |b| {
        b.iter(|| {
            let p = RtpPacket::parse(black_box(&wire)).unwrap();
            RtpPacket {
                seq: p.seq.next(),
                ..p
            }
            .write(&mut out);
            black_box(&out);
        })
    });
    g.finish();

    let mut g = c.benchmark_group("rtcp");
    // What `RtcpSession` sends every ~5 s: SR with one report block + CNAME.
    let report = [
        RtcpPacket::SenderReport(rtcp::SenderReport {
            ssrc: Ssrc(1),
            ntp_timestamp: rtcp::ntp_from_system_time(SystemTime::now()),
            rtp_timestamp: 123_456,
            packet_count: 250,
            octet_count: 40_000,
            reports: vec![ReportBlock {
                ssrc: Ssrc(7),
                fraction_lost: 3,
                cumulative_lost: 2,
                highest_seq: 70_000,
                jitter: 40,
                last_sr: 0x1234_5678,
                delay_since_last_sr: 65_536,
            }],
        }),
        RtcpPacket::Sdes(Sdes {
            chunks: vec![SdesChunk {
                ssrc: Ssrc(1),
                items: vec![SdesItem {
                    kind: rtcp::SDES_CNAME,
                    value: b"agentline-00000001".to_vec(),
                }],
            }],
        }),
    ];
    g.bench_function("build_sr_sdes", |b| {
        b.iter(|| black_box(rtcp::write_compound(black_box(&report))))
    });
    let wire = rtcp::write_compound(&report);
    assert_eq!(rtcp::parse_compound(&wire).unwrap(), report);
    g.bench_function("parse_sr_sdes", |b| {
        b.iter(|| black_box(rtcp::parse_compound(black_box(&wire)).unwrap()))
    });
    g.finish();
}

/// An echo call on virtual time, driven like `sip::call` drives it.
struct EchoCall {
    session: Session,
    agent: Echo,
    out: AgentOutput,
    /// What the peer sends, one payload per 20 ms, looped.
    packets: Vec<Vec<u8>>,
    pt: u8,
    ts_step: u32,
    from: SocketAddr,
    t0: Instant,
    n: u32,
    wire: Vec<u8>,
}

impl EchoCall {
    fn new(codec: Codec, agent_rate: u32, dsp: Option<DspConfig>) -> Self {
        let (kind, pt) = match codec {
            Codec::Pcmu => (CodecKind::Pcmu, 0),
            Codec::Pcma => (CodecKind::Pcma, 8),
            Codec::G722 => (CodecKind::G722, 9),
            Codec::Opus => (CodecKind::Opus, 111),
        };
        let from: SocketAddr = "192.0.2.10:40000".parse().unwrap();
        let params = MediaParams {
            send_silence: false,
            codec,
            pt,
            te_pt: Some(101),
            ptime_ms: 20,
            remote: Some(from),
            remote_rtcp: None,
            rtcp_mux: false,
            direction: Direction::SendRecv,
            jitter_min_ms: 20,
            jitter_max_ms: 200,
            agent_rate,
            codec_fmtp: None,
        };
        let t0 = Instant::now();
        let mut session = Session::new(t0, SystemTime::now(), params, 1, 0, 0).unwrap();
        if let Some(cfg) = dsp {
            session.set_dsp(cfg).unwrap();
        }
        let mut call = EchoCall {
            session,
            agent: Echo::default(),
            out: AgentOutput::default(),
            packets: payloads(kind),
            pt,
            ts_step: codec.clock_rate() / 50,
            from,
            t0,
            n: 0,
            wire: Vec::with_capacity(1500),
        };
        // Reach the steady state (jitter buffer primed, echo flowing), then
        // check the tick really does the whole round trip.
        for _ in 0..250 {
            call.tick();
        }
        let before = call.session.stats().clone();
        for _ in 0..250 {
            call.tick();
        }
        let after = call.session.stats();
        assert_eq!(after.rx_packets - before.rx_packets, 250);
        assert_eq!(after.tx_packets - before.tx_packets, 250, "{after:?}");
        assert_eq!(after.codec_errors, 0);
        assert_eq!(call.session.jitter_stats().concealed, 0);
        call
    }

    /// One 20 ms tick: the caller's packet arrives, the playout clock runs,
    /// the agent hears the frame and answers it, the answer is sent.
    fn tick(&mut self) {
        self.n = self.n.wrapping_add(1);
        let now = self.t0 + FRAME * self.n;
        RtpPacket {
            marker: false,
            payload_type: PayloadType(self.pt),
            seq: SeqNo(self.n as u16),
            timestamp: self.n.wrapping_mul(self.ts_step),
            ssrc: Ssrc(7),
            payload: &self.packets[self.n as usize % self.packets.len()],
        }
        .write(&mut self.wire);
        self.session.handle_rtp(now, self.from, &self.wire);
        self.session.handle_timeout(now);
        while let Some(ev) = self.session.poll_event() {
            if let MediaEvent::Audio(pcm) = ev {
                self.agent.on_audio(&pcm, &mut self.out);
                self.session.handle_agent_audio(&self.out.audio);
                self.out.audio.clear();
                self.session.trim_playout(ECHO_MAX_QUEUE_MS);
            }
        }
        while let Some(t) = self.session.poll_transmit() {
            black_box(t);
        }
    }
}

fn bench_ticks(c: &mut Criterion) {
    let mut g = c.benchmark_group("tick");
    for (name, codec, agent_rate, dsp) in [
        ("pcmu_echo", Codec::Pcmu, 8000, None),
        (
            "pcmu_echo_denoise_vad_agc",
            Codec::Pcmu,
            8000,
            Some(DspConfig::default()),
        ),
        ("g722_echo", Codec::G722, 16000, None),
        // The echo agent takes the codec's rate: Opus runs at 48 kHz and
        // nothing is resampled.
        ("opus_echo_48k", Codec::Opus, 48000, None),
        // An agent at 8 kHz: libopus decodes and encodes at 8 kHz itself.
        ("opus_agent_8k", Codec::Opus, 8000, None),
    ] {
        let mut call = EchoCall::new(codec, agent_rate, dsp);
        g.bench_function(name, |b| b.iter(|| call.tick()));
    }
    // The call recording's tap on: one stereo frame per tick drained (what
    // the driver hands to the writer task).
    let mut call = EchoCall::new(Codec::Pcmu, 8000, None);
    call.session.set_recording(true);
    g.bench_function("pcmu_echo_recorded", |b| {
        b.iter(|| {
            call.tick();
            while let Some(f) = call.session.poll_recording() {
                black_box(f);
            }
        })
    });
    g.finish();
}

/// Median of one benchmark of this run, from criterion's `estimates.json`;
/// `None` if it did not run this time (filtered out) or was not saved.
fn median_ns(dir: &std::path::Path, id: &str, since: SystemTime) -> Option<f64> {
    let file = dir.join(id).join("new").join("estimates.json");
    let fresh = std::fs::metadata(&file).ok()?.modified().ok()? >= since;
    if !fresh {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(file).ok()?).ok()?;
    v["median"]["point_estimate"].as_f64()
}

fn fmt_time(ns: f64) -> String {
    if ns >= 1000.0 {
        format!("{:.2} µs", ns / 1000.0)
    } else {
        format!("{ns:.0} ns")
    }
}

/// The Markdown summary for `benches/RESULTS.md`, from this run's medians.
fn summary(since: SystemTime) {
    // Where criterion writes (its own lookup, minus `cargo metadata`).
    let dir = std::env::var_os("CRITERION_HOME")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("CARGO_TARGET_DIR").map(|d| PathBuf::from(d).join("criterion"))
        })
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/criterion"));
    let rows: &[(&str, &str)] = &[
        (
            "codec/pcmu_decode",
            "G.711 µ-law decode, 160 bytes -> 160 samples",
        ),
        ("codec/pcmu_encode", "G.711 µ-law encode, 160 samples"),
        (
            "codec/g722_decode",
            "G.722 decode, 160 bytes -> 320 samples",
        ),
        ("codec/g722_encode", "G.722 encode, 320 samples at 16 kHz"),
        (
            "codec/opus48k_decode",
            "Opus decode at 48 kHz (32 kbit/s speech)",
        ),
        (
            "codec/opus48k_encode",
            "Opus encode at 48 kHz, 960 samples, 32 kbit/s VOIP",
        ),
        ("resample/8k_to_48k", "resample 160 -> 960 samples"),
        ("resample/48k_to_8k", "resample 960 -> 160 samples"),
        ("resample/8k_to_16k", "resample 160 -> 320 samples"),
        (
            "dsp/denoise_8k",
            "RNNoise denoise at 8 kHz (incl. 8k<->48k)",
        ),
        ("dsp/vad_8k", "VAD at 8 kHz (statistical model, one FFT)"),
        (
            "dsp/denoise_vad_agc_8k",
            "route DSP default: denoise + VAD + AGC, 8 kHz",
        ),
        (
            "dsp/denoise_vad_agc_48k",
            "route DSP default: denoise + VAD + AGC, 48 kHz",
        ),
        (
            "jitter/push_pop",
            "jitter buffer: push one packet + pop one frame",
        ),
        ("plc/good_frame_8k", "PLC history update for a good frame"),
        (
            "plc/good_frame_then_conceal_8k",
            "PLC good frame + one concealed frame",
        ),
        ("rtp/parse_build", "RTP parse + build, 172 bytes"),
        (
            "rtcp/build_sr_sdes",
            "RTCP SR + SDES build (one per ~5 s, not per frame)",
        ),
        (
            "rtcp/parse_sr_sdes",
            "RTCP SR + SDES parse (one per ~5 s, not per frame)",
        ),
        ("tick/pcmu_echo", "whole tick, PCMU echo call"),
        (
            "tick/pcmu_echo_denoise_vad_agc",
            "whole tick, PCMU echo + denoise/VAD/AGC",
        ),
        ("tick/g722_echo", "whole tick, G.722 echo call (16 kHz)"),
        (
            "tick/opus_echo_48k",
            "whole tick, Opus echo call (48 kHz, no resampling)",
        ),
        (
            "tick/opus_agent_8k",
            "whole tick, Opus call, agent at 8 kHz",
        ),
    ];
    let budget = FRAME.as_nanos() as f64;
    let got: Vec<(&str, &str, f64)> = rows
        .iter()
        .filter_map(|&(id, what)| median_ns(&dir, id, since).map(|ns| (id, what, ns)))
        .collect();
    if got.is_empty() {
        println!("(no fresh criterion estimates under {})", dir.display());
        return;
    }
    let get = |id: &str| got.iter().find(|r| r.0 == id).map(|r| r.2);
    println!("\n## Summary (median per 20 ms frame, this run)\n");
    println!("| benchmark | what | median | % of 20 ms |");
    println!("|---|---|---:|---:|");
    for (id, what, ns) in &got {
        println!(
            "| `{id}` | {what} | {} | {:.4} % |",
            fmt_time(*ns),
            ns / budget * 100.0
        );
    }
    let mut calls: Vec<(String, f64)> = got
        .iter()
        .filter(|r| r.0.starts_with("tick/"))
        .map(|r| (format!("`{}`", r.0), r.2))
        .collect();
    if let (Some(d), Some(down), Some(up), Some(e)) = (
        get("codec/opus48k_decode"),
        get("resample/48k_to_8k"),
        get("resample/8k_to_48k"),
        get("codec/opus48k_encode"),
    ) {
        calls.push((
            "Opus 48 kHz + 8 kHz agent, sum of stages (decode + 48k->8k + 8k->48k + encode)"
                .to_owned(),
            d + down + up + e,
        ));
    }
    if calls.is_empty() {
        return;
    }
    // AVR sizing guide (benches/RESULTS.md cites it): AVR Core 0.5-1.5
    // cores per concurrent call, Asterisk 0.2-0.5; agentline replaces both.
    println!("\n## Calls per core (media only)\n");
    println!(
        "| call | per-call CPU (tick / 20 ms) | calls per core (20 ms / tick) | AVR Core (0.5-1.5 cores/call) / ours | AVR Core + Asterisk (0.7-2.0 cores/call) / ours |"
    );
    println!("|---|---:|---:|---:|---:|");
    for (name, ns) in calls {
        let cores = ns / budget;
        println!(
            "| {name} | {:.4} % of a core | {:.0} | {:.0}x-{:.0}x | {:.0}x-{:.0}x |",
            cores * 100.0,
            1.0 / cores,
            0.5 / cores,
            1.5 / cores,
            0.7 / cores,
            2.0 / cores
        );
    }
}

fn main() {
    let since = SystemTime::now();
    let mut c = Criterion::default().configure_from_args();
    bench_codecs(&mut c);
    bench_resample(&mut c);
    bench_dsp(&mut c);
    bench_jitter(&mut c);
    bench_plc(&mut c);
    bench_rtp_rtcp(&mut c);
    bench_ticks(&mut c);
    c.final_summary();
    summary(since);
}
