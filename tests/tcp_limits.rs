#![allow(clippy::unwrap_used)]
//! The SIP TCP listener under a connection flood from one source
//! (127.0.0.2): at most `[security] max_tcp_per_source` connections stay
//! open, those that never authenticate are closed after
//! `tcp_auth_timeout_s`, the API and a call (sipp from 127.0.0.1) keep
//! working, and the log stays small.

mod common;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{require_peer, Server};

const PROFILE: &str = r#"
[sip]
trusted = ["127.0.0.1/32"]
[security]
# The edge guard's rate limit would ban a source opening connections this
# fast (tests/security_flood.rs covers that); here only the TCP caps act.
enabled = false
max_tcp_per_source = 8
tcp_auth_timeout_s = 3
[[routes]]
dial = "echo"
agent = { kind = "echo" }
"#;

/// A TCP connection to `port` from 127.0.0.2.
fn connect_from_attacker(port: u16) -> Option<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).ok()?;
    let from: SocketAddr = "127.0.0.2:0".parse().unwrap();
    s.bind(&from.into()).ok()?;
    let to: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    s.connect_timeout(&to.into(), Duration::from_secs(2)).ok()?;
    Some(s.into())
}

/// How many of `streams` the server still holds open (no EOF, no reset).
fn still_open(streams: &[TcpStream]) -> usize {
    streams
        .iter()
        .filter(|s| {
            s.set_nonblocking(true).unwrap();
            let mut b = [0u8; 16];
            matches!((&**s).read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        })
        .count()
}

#[test]
fn a_tcp_flood_from_one_source_is_capped_and_the_server_keeps_working() {
    if require_peer("sipp").is_none() {
        return;
    }
    let server = Server::start(PROFILE);
    let started = Instant::now();
    let mut streams = Vec::new();
    for _ in 0..5000 {
        if let Some(s) = connect_from_attacker(server.sip_port) {
            streams.push(s);
        }
    }
    eprintln!("{} connections in {:?}", streams.len(), started.elapsed());
    assert!(streams.len() >= 4000, "only {} connected", streams.len());
    std::thread::sleep(Duration::from_millis(500));
    let open = still_open(&streams);
    assert!(open <= 8, "{open} connections from one source left open");
    assert!(open >= 1, "the first connections are taken");
    let refused = server.metric("agentline_tcp_connections_refused_total");
    // 8 taken per tcp_auth_timeout_s window while the flood lasts.
    let windows = started.elapsed().as_secs() / 3 + 1;
    let taken = streams.len() as f64 - refused;
    assert!(
        taken <= (8 * windows) as f64,
        "{taken} of {} taken in {windows} windows",
        streams.len()
    );
    // The API and calls still work.
    assert_eq!(server.health()["status"], "ok");
    let call = common::sipp::run_scenario("invite_bye.xml", server.sip_port, "echo", &[]);
    assert!(call.success, "{}", call.report());
    // The connections that never sent an authenticated request are closed.
    let deadline = Instant::now() + Duration::from_secs(10);
    while still_open(&streams) > 0 {
        assert!(
            Instant::now() < deadline,
            "unauthenticated connections still open"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(server.metric("agentline_tcp_unauthenticated_closed_total") >= 1.0);
    // A new connection from that source is taken again.
    let again = connect_from_attacker(server.sip_port).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(still_open(std::slice::from_ref(&again)), 1);
    let lines = server.log_text().lines().count();
    assert!(lines < 100, "{lines} log lines:\n{}", server.log_text());
}
