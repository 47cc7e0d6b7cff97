#![allow(clippy::unwrap_used)]
//! The SIP TCP listener under a flood of 20,000 connections from one
//! source (127.0.0.2): at most `[security] max_tcp_per_source` connections
//! are ever held by the server (counted from the kernel's socket table, not
//! from the server's own metrics), those that never authenticate are closed
//! after `tcp_auth_timeout_s`, the API and a call (sipp from 127.0.0.1,
//! during and after the flood) keep working, the log stays small, and the
//! server's descriptors return to where they were.
//!
//! The client side stays bounded too: connections the server has closed are
//! dropped every few hundred connects, so the test never holds more than a
//! few hundred descriptors whatever the process limit.

mod common;

use std::collections::HashSet;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{require_peer, Server};

/// `[security] max_tcp_per_source` below.
const CAP: usize = 8;
/// `[security] tcp_auth_timeout_s` below.
const AUTH_TIMEOUT_S: u64 = 3;
/// Connections the attacker opens.
const FLOOD: usize = 20_000;
/// The client drops the connections the server has closed every this many.
const PRUNE_EVERY: usize = 250;
const ATTACKER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

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
    let from = SocketAddr::from((ATTACKER, 0));
    s.bind(&from.into()).ok()?;
    let to: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    s.connect_timeout(&to.into(), Duration::from_secs(2)).ok()?;
    s.set_nonblocking(true).ok()?;
    Some(s.into())
}

/// True while the server holds `s` open (no EOF, no reset).
fn is_open(s: &TcpStream) -> bool {
    let mut b = [0u8; 16];
    matches!((&*s).read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// How many of `streams` the server still holds open.
fn still_open(streams: &[TcpStream]) -> usize {
    streams.iter().filter(|s| is_open(s)).count()
}

/// The number of descriptors `pid` has open, but the store's SQLite files
/// (its pool opens connections lazily, up to a bound: a call's record may
/// open one more).
fn fd_count(pid: u32) -> usize {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    dir.flatten()
        .filter(|e| {
            std::fs::read_link(e.path())
                .is_ok_and(|l| !l.to_string_lossy().contains("/agentline.db"))
        })
        .count()
}

/// The inodes of the sockets `pid` holds a descriptor of.
fn socket_inodes(pid: u32) -> HashSet<u64> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return HashSet::new();
    };
    dir.flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            l.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

/// TCP sockets process `pid` holds on its port `port` whose peer is `from`:
/// the kernel's table (`/proc/net/tcp`) joined with the process's
/// descriptors, so a connection still in the accept queue or already closed
/// by the server does not count, whatever the server believes.
///
/// A connection over the cap lives for an instant between `accept` and its
/// close; a count over `CAP` is taken again 50 ms later and the lower one
/// kept (one held past the cap stays for `tcp_auth_timeout_s`).
fn held_from(pid: u32, port: u16, from: Ipv4Addr) -> usize {
    let n = held_once(pid, port, from);
    if n <= CAP {
        return n;
    }
    std::thread::sleep(Duration::from_millis(50));
    n.min(held_once(pid, port, from))
}

fn held_once(pid: u32, port: u16, from: Ipv4Addr) -> usize {
    let inodes = socket_inodes(pid);
    // Addresses are the __be32 printed as a native u32, the port in hex.
    let local_port = format!(":{port:04X}");
    let remote_ip = format!("{:08X}:", u32::from_ne_bytes(from.octets()));
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 9
                && f[1].ends_with(&local_port)
                && f[2].starts_with(&remote_ip)
                && f[9].parse().is_ok_and(|i: u64| inodes.contains(&i))
        })
        .count()
}

#[test]
fn a_20k_tcp_flood_from_one_source_is_capped_and_the_server_keeps_working() {
    if require_peer("sipp").is_none() {
        return;
    }
    let server = Server::start(PROFILE);
    let pid = server.pid().unwrap();
    assert_eq!(server.health()["status"], "ok");
    let fds_before = fd_count(pid);
    let started = Instant::now();
    let mut streams: Vec<TcpStream> = Vec::new();
    let (mut connected, mut failed, mut max_held, mut max_kept) = (0usize, 0usize, 0usize, 0usize);
    let mut call = None;
    for i in 1..=FLOOD {
        match connect_from_attacker(server.sip_port) {
            Some(s) => {
                connected += 1;
                streams.push(s);
            }
            None => failed += 1,
        }
        if i % PRUNE_EVERY == 0 {
            streams.retain(is_open);
            max_kept = max_kept.max(streams.len());
            max_held = max_held.max(held_from(pid, server.sip_port, ATTACKER));
        }
        if i == FLOOD / 4 {
            // A call from 127.0.0.1 while the flood goes on.
            call = Some(common::sipp::spawn_scenario(
                "invite_bye.xml",
                server.sip_port,
                "echo",
                &["-d", "2000"],
            ));
        }
        if i == FLOOD / 2 {
            assert_eq!(server.health()["status"], "ok", "the API mid-flood");
        }
    }
    let flood_time = started.elapsed();
    streams.retain(is_open);
    let held_after = held_from(pid, server.sip_port, ATTACKER);
    eprintln!(
        "{connected} of {FLOOD} connected ({failed} failed) in {flood_time:?}; \
         server held at most {max_held} from {ATTACKER} (cap {CAP}); \
         client kept at most {max_kept} streams; {held_after} held at the end"
    );
    assert!(connected >= FLOOD * 9 / 10, "only {connected} connected");
    assert!(
        max_held <= CAP && held_after <= CAP,
        "the server held {max_held} (at the end {held_after}) connections from one source, cap {CAP}"
    );
    assert!(
        max_kept <= PRUNE_EVERY + CAP,
        "the client kept {max_kept} descriptors"
    );
    assert!(still_open(&streams) >= 1, "the first connections are taken");
    let refused = server.metric("agentline_tcp_connections_refused_total");
    // CAP taken per tcp_auth_timeout_s window while the flood lasts.
    let windows = started.elapsed().as_secs() / AUTH_TIMEOUT_S + 1;
    let taken = connected as f64 - refused;
    assert!(
        taken <= (CAP as u64 * windows) as f64,
        "{taken} of {connected} taken in {windows} windows"
    );

    // The call placed during the flood completed, the API answers, and a
    // call after the flood works too.
    let during = call.unwrap().wait(Duration::from_secs(30));
    assert!(
        during.success,
        "call during the flood:\n{}",
        during.report()
    );
    assert_eq!(server.health()["status"], "ok");
    let after = common::sipp::run_scenario("invite_bye.xml", server.sip_port, "echo", &[]);
    assert!(after.success, "call after the flood:\n{}", after.report());

    // The connections that never sent an authenticated request are closed.
    let deadline = Instant::now() + Duration::from_secs(10);
    while still_open(&streams) > 0 || held_from(pid, server.sip_port, ATTACKER) > 0 {
        assert!(
            Instant::now() < deadline,
            "unauthenticated connections still open"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(streams);
    assert!(server.metric("agentline_tcp_unauthenticated_closed_total") >= 1.0);
    server.wait_idle(Duration::from_secs(10));
    // The server's descriptors are back where they were.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut fds_after = fd_count(pid);
    while fds_after > fds_before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        fds_after = fd_count(pid);
    }
    assert!(
        fds_after <= fds_before,
        "server descriptors {fds_before} before the flood, {fds_after} after"
    );

    // A new connection from that source is taken again.
    let again = connect_from_attacker(server.sip_port).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(is_open(&again));
    assert_eq!(held_from(pid, server.sip_port, ATTACKER), 1);
    let log = server.log_text();
    assert!(
        log.len() < 16 * 1024 && log.lines().count() < 100,
        "{} bytes, {} log lines:\n{log}",
        log.len(),
        log.lines().count()
    );
    let total = started.elapsed();
    eprintln!(
        "server fds {fds_before} -> {fds_after}; log {} bytes; {total:?} in all",
        log.len()
    );
    assert!(total < Duration::from_secs(60), "took {total:?}");
}
