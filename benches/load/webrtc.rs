//! WebRTC load client for `benches/load/run.sh`'s `webrtc` case: N str0m
//! peers (full ICE, DTLS-SRTP, Opus 48 kHz) call a route through
//! `POST /webrtc/{route}` at a given rate, each sending the looped speech
//! clip (`tests/data/speech_8k.wav`, encoded once by agentline's own Opus
//! encoder) every 20 ms and counting the audio frames that come back. Over
//! a steady window it samples agentline's CPU (`/proc/PID/stat`) and prints
//! one markdown table row (case, calls, connected, mean offer-to-connected
//! ms, tx and rx % of 50 frames/s, agentline cores, calls per core); then it
//! hangs every call up (`DELETE`).
//!
//! ```text
//! cargo run --release --example load_webrtc -- --api 127.0.0.1:8080 --pid PID \
//!     [--calls 50] [--rate 20] [--steady 10] [--route echo] [--token T]
//! ```
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentline::media::codec::{self, CodecKind, CodecParams};
use agentline::media::resample::resample_once;
use agentline::media::wav::Wav;
use str0m::change::SdpAnswer;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};

#[derive(Default)]
struct Counters {
    connected: AtomicU64,
    failed: AtomicU64,
    tx_frames: AtomicU64,
    rx_frames: AtomicU64,
    /// Offer posted to connected, summed (ms) over the connected calls.
    setup_ms: AtomicU64,
}

struct Args {
    api: String,
    pid: u32,
    calls: usize,
    rate: f64,
    steady: u64,
    route: String,
    token: Option<String>,
}

fn args() -> Args {
    let mut a = Args {
        api: "127.0.0.1:8080".into(),
        pid: 0,
        calls: 50,
        rate: 20.0,
        steady: 10,
        route: "echo".into(),
        token: None,
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    for pair in v.chunks(2) {
        let val = pair.get(1).cloned().unwrap_or_default();
        match pair[0].as_str() {
            "--api" => a.api = val,
            "--pid" => a.pid = val.parse().unwrap(),
            "--calls" => a.calls = val.parse().unwrap(),
            "--rate" => a.rate = val.parse().unwrap(),
            "--steady" => a.steady = val.parse().unwrap(),
            "--route" => a.route = val,
            "--token" => a.token = Some(val),
            other => panic!("unknown option {other}"),
        }
    }
    a
}

/// The clip as Opus payloads, one per 20 ms (48 kHz mono).
fn opus_frames() -> Vec<Arc<[u8]>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/speech_8k.wav");
    let wav = Wav::parse(&std::fs::read(path).unwrap()).unwrap();
    let mut enc = codec::encoder(&CodecParams::new(CodecKind::Opus)).unwrap();
    let pcm = resample_once(&wav.mono(), wav.sample_rate, enc.sample_rate()).unwrap();
    let n = enc.frame_samples();
    pcm.chunks_exact(n)
        .map(|f| {
            let mut p = Vec::new();
            enc.encode(f, &mut p).unwrap();
            Arc::from(p)
        })
        .collect()
}

/// agentline's CPU seconds so far (utime + stime).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// One call: offer, answer, then media until `stop`.
async fn call(
    a: Arc<Args>,
    frames: Arc<Vec<Arc<[u8]>>>,
    c: Arc<Counters>,
    stop: tokio_util::sync::CancellationToken,
) -> Option<String> {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.ok()?;
    let local = sock.local_addr().ok()?;
    let mut rtc = Rtc::builder()
        .set_crypto_provider(Arc::new(str0m::crypto::from_feature_flags()))
        .build(Instant::now());
    rtc.add_local_candidate(Candidate::host(local, "udp").ok()?);
    let mut api = rtc.sdp_api();
    let mid = api.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
    let (offer, pending) = api.apply()?;
    let started = Instant::now();
    let mut req = reqwest::Client::new()
        .post(format!("http://{}/webrtc/{}", a.api, a.route))
        .header("Content-Type", "application/sdp")
        .body(offer.to_sdp_string());
    if let Some(t) = &a.token {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.ok()?;
    let id = res
        .headers()
        .get("location")
        .and_then(|l| l.to_str().ok())
        .map(|l| l.trim_start_matches("/webrtc/").to_string());
    let answer = SdpAnswer::from_sdp_string(&res.text().await.ok()?).ok()?;
    rtc.sdp_api().accept_answer(pending, answer).ok()?;
    let mut buf = vec![0u8; 2048];
    let mut connected = false;
    let mut next_send = Instant::now();
    let mut k = 0usize;
    loop {
        if stop.is_cancelled() {
            return id;
        }
        let wake = loop {
            match rtc.poll_output().ok()? {
                Output::Timeout(t) => break t,
                Output::Transmit(t) => {
                    let _ = sock.send_to(&t.contents, t.destination).await;
                }
                Output::Event(Event::Connected) => {
                    connected = true;
                    c.connected.fetch_add(1, Ordering::Relaxed);
                    c.setup_ms
                        .fetch_add(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                }
                Output::Event(Event::MediaData(_)) => {
                    c.rx_frames.fetch_add(1, Ordering::Relaxed);
                }
                Output::Event(_) => {}
            }
        };
        let now = Instant::now();
        if connected && now >= next_send {
            let w = rtc.writer(mid)?;
            let pt = w
                .payload_params()
                .find(|p| p.spec().codec == str0m::format::Codec::Opus)?;
            let pt = pt.pt();
            let ts = MediaTime::new(k as u64 * 960, Frequency::FORTY_EIGHT_KHZ);
            let frame = frames[k % frames.len()].clone();
            if w.write(pt, now, ts, frame).is_ok() {
                c.tx_frames.fetch_add(1, Ordering::Relaxed);
            }
            k += 1;
            next_send += Duration::from_millis(20);
            continue;
        }
        let until = if connected { wake.min(next_send) } else { wake };
        tokio::select! {
            r = sock.recv_from(&mut buf) => if let Ok((n, from)) = r {
                if let Ok(contents) = (&buf[..n]).try_into() {
                    let input = Input::Receive(Instant::now(), Receive {
                        proto: Protocol::Udp, source: from, destination: local, contents,
                    });
                    let _ = rtc.handle_input(input);
                }
            },
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(until)) => {
                let _ = rtc.handle_input(Input::Timeout(Instant::now()));
            }
            _ = stop.cancelled() => return id,
        }
    }
}

#[tokio::main]
async fn main() {
    let a = Arc::new(args());
    let frames = Arc::new(opus_frames());
    let c = Arc::new(Counters::default());
    let stop = tokio_util::sync::CancellationToken::new();
    let mut tasks = Vec::new();
    let gap = Duration::from_secs_f64(1.0 / a.rate.max(0.1));
    for _ in 0..a.calls {
        let (a2, f, c2, s) = (a.clone(), frames.clone(), c.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let id = call(a2, f, c2.clone(), s).await;
            if id.is_none() {
                c2.failed.fetch_add(1, Ordering::Relaxed);
            }
            id
        }));
        tokio::time::sleep(gap).await;
    }
    // Settle, then the steady window.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (cpu0, t0) = (cpu_seconds(a.pid), Instant::now());
    let (tx0, rx0) = (
        c.tx_frames.load(Ordering::Relaxed),
        c.rx_frames.load(Ordering::Relaxed),
    );
    tokio::time::sleep(Duration::from_secs(a.steady)).await;
    let secs = t0.elapsed().as_secs_f64();
    let cpu = (cpu_seconds(a.pid) - cpu0) / secs;
    let tx = c.tx_frames.load(Ordering::Relaxed) - tx0;
    let rx = c.rx_frames.load(Ordering::Relaxed) - rx0;
    let connected = c.connected.load(Ordering::Relaxed);
    stop.cancel();
    let mut ids = Vec::new();
    for t in tasks {
        if let Ok(Some(id)) = t.await {
            ids.push(id);
        }
    }
    let client = reqwest::Client::new();
    for id in ids {
        let mut req = client.delete(format!("http://{}/webrtc/{id}", a.api));
        if let Some(t) = &a.token {
            req = req.bearer_auth(t);
        }
        let _ = req.send().await;
    }
    let setup = c.setup_ms.load(Ordering::Relaxed) as f64 / connected.max(1) as f64;
    let expected = connected as f64 * secs * 50.0;
    // | case | calls | connected | offer->connected ms | tx % | rx % | agentline cores | calls per core |
    println!(
        "| webrtc | {} | {connected} | {:.0} | {:.1} | {:.1} | {:.2} | {:.0} |",
        a.calls,
        setup,
        100.0 * tx as f64 / expected.max(1.0),
        100.0 * rx as f64 / expected.max(1.0),
        cpu,
        connected as f64 / cpu.max(0.001)
    );
}
