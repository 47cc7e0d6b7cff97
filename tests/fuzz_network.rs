#![allow(clippy::unwrap_used)]
//! Garbage on the SIP port: the RFC 4475 torture messages and mutated SIP
//! messages (the fuzz corpus through the fuzz engine's mutations) sent to a
//! running agentline over UDP and over TCP; afterwards the server must
//! still answer OPTIONS on both transports and complete a real call (sipp).
//! `FUZZ_NET_ITERS` sets the number of mutated messages per transport
//! (default 100 000), `FUZZ_SEED` the seed.

mod common;

#[path = "fuzz/engine.rs"]
#[allow(dead_code)]
mod engine;

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use common::sipp::run_scenario;
use common::{require_peer, Server};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn sip_target() -> engine::Target {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/corpus/sip");
    engine::Target {
        name: "sip_network",
        corpus: engine::load_corpus(&dir),
        dict: [
            "\r\n",
            ";",
            ":",
            "<",
            ">",
            "SIP/2.0",
            "INVITE",
            "OPTIONS",
            "REGISTER",
            "BYE",
            "ACK",
            "Via: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK",
            "Content-Length: ",
            "l: 99999",
            ";tag=",
            "Call-ID: ",
            "CSeq: 4294967296 INVITE",
            "Contact: *",
            "Expires: 0",
            "Authorization: Digest ",
            "4294967296",
            "\u{0}",
        ]
        .iter()
        .map(|w| w.as_bytes().to_vec())
        .collect(),
        max_len: 8 * 1024,
        run: |_| {},
    }
}

fn torture() -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/corpus/sip");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("rfc4475-"))
        })
        .collect();
    names.sort();
    assert!(
        names.len() >= 40,
        "RFC 4475 corpus missing in {}",
        dir.display()
    );
    names.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

fn options(port: u16, transport: &str, local: &str, n: u64) -> String {
    format!(
        "OPTIONS sip:probe@127.0.0.1:{port} SIP/2.0\r\n\
         Via: SIP/2.0/{transport} {local};branch=z9hG4bK-probe-{n};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:probe@127.0.0.1>;tag=probe{n}\r\n\
         To: <sip:probe@127.0.0.1:{port}>\r\n\
         Call-ID: probe-{n}@127.0.0.1\r\n\
         CSeq: 1 OPTIONS\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

/// OPTIONS over UDP, retried for up to `within`: true once a 200 comes.
fn udp_options_answered(port: u16, within: Duration) -> bool {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let local = sock.local_addr().unwrap().to_string();
    let deadline = Instant::now() + within;
    let mut n = 0;
    while Instant::now() < deadline {
        n += 1;
        sock.send_to(
            options(port, "UDP", &local, n).as_bytes(),
            ("127.0.0.1", port),
        )
        .unwrap();
        let mut buf = [0u8; 4096];
        while let Ok(len) = sock.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..len]);
            if text.starts_with("SIP/2.0 200") && text.contains(&format!("probe-{n}@")) {
                return true;
            }
        }
    }
    false
}

/// OPTIONS on a new TCP connection: true once a 200 comes.
fn tcp_options_answered(port: u16, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut n = 1_000_000;
    while Instant::now() < deadline {
        n += 1;
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        };
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let local = s.local_addr().unwrap().to_string();
        if s.write_all(options(port, "TCP", &local, n).as_bytes())
            .is_err()
        {
            continue;
        }
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(len) = s.read(&mut buf) {
            if len == 0 {
                break;
            }
            got.extend_from_slice(&buf[..len]);
            if String::from_utf8_lossy(&got).contains("SIP/2.0 200") {
                return true;
            }
        }
    }
    false
}

/// A TCP connection whose answers are read (and dropped) by a thread, so
/// the server never blocks writing to us.
fn tcp_connect(port: u16) -> Option<TcpStream> {
    let s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut r = s.try_clone().ok()?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        while matches!(r.read(&mut buf), Ok(n) if n > 0) {}
    });
    Some(s)
}

#[test]
fn torture_and_mutated_sip_over_udp_and_tcp_leave_the_server_answering() {
    if require_peer("sipp").is_none() {
        return;
    }
    let server = Server::start(common::TRUSTED_ECHO_RING_PROFILE);
    let port = server.sip_port;
    let pid = server.pid().unwrap();
    let n = env_u64("FUZZ_NET_ITERS", 100_000);
    let seed = env_u64("FUZZ_SEED", 0x5eed_a9e1);
    let t = sip_target();
    let started = Instant::now();
    let rss_start = common::rss_kb(pid);

    // The torture messages, each over UDP and on its own TCP connection.
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    for m in torture() {
        udp.send_to(&m, ("127.0.0.1", port)).unwrap();
        if let Some(mut s) = tcp_connect(port) {
            let _ = s.write_all(&m);
        }
    }
    assert!(
        udp_options_answered(port, Duration::from_secs(10)),
        "no 200 to OPTIONS after the RFC 4475 messages:\n{}",
        server.log_text()
    );

    // Mutated messages over UDP, paced so that the socket buffer does not
    // drop most of them (about 5 000/s).
    let mut rng = engine::Rng::new(seed);
    let udp_started = Instant::now();
    for i in 0..n {
        let m = engine::mutate(&mut rng, &t);
        let _ = udp.send_to(&m, ("127.0.0.1", port));
        if i % 50 == 49 {
            let due = udp_started + Duration::from_micros(i * 200);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
    }
    let udp_secs = udp_started.elapsed().as_secs_f64();

    // Mutated messages over TCP: a new connection every 500 messages or
    // when the server closes one (a framing error ends a connection).
    let tcp_started = Instant::now();
    let mut conn: Option<TcpStream> = None;
    let mut connections = 0;
    for i in 0..n {
        if conn.is_none() || i % 500 == 0 {
            conn = tcp_connect(port);
            connections += 1;
        }
        let m = engine::mutate(&mut rng, &t);
        if let Some(s) = conn.as_mut() {
            if s.write_all(&m).is_err() {
                conn = None;
            }
        }
    }
    drop(conn);
    let tcp_secs = tcp_started.elapsed().as_secs_f64();

    let rss_end = common::rss_kb(pid);
    eprintln!(
        "fuzz_network: {} torture + {n} mutated over UDP ({udp_secs:.1} s) and TCP \
         ({tcp_secs:.1} s, {connections} connections); server RSS {rss_start} -> {rss_end} kB",
        torture().len()
    );

    assert!(
        udp_options_answered(port, Duration::from_secs(30)),
        "no 200 to a UDP OPTIONS after the mutated messages:\n{}",
        server
            .log_text()
            .chars()
            .rev()
            .take(4000)
            .collect::<String>()
    );
    assert!(
        tcp_options_answered(port, Duration::from_secs(30)),
        "no 200 to a TCP OPTIONS after the mutated messages"
    );
    let out = run_scenario("invite_bye.xml", port, "echo", &["-d", "1000"]);
    assert!(
        out.success,
        "a call after the garbage did not complete:\n{}",
        out.report()
    );
    // The API is alive too (health() asserts its 200).
    let _ = server.health();
    eprintln!(
        "fuzz_network: done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
