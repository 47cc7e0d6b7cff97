//! Our own accept loop for SIP over TCP, in place of rsipstack's (which
//! retries a failing `accept` without pause - at the descriptor limit that
//! is one warning per iteration, millions a minute - and has no
//! per-source limit). Each accepted stream is handed to rsipstack as its
//! listener would (`TcpConnection::from_stream` + `add_connection`).
//!
//! - At most `[security] max_tcp_per_source` open connections per source IP
//!   (trusted networks and trunks are not limited); over it, the new
//!   connection is closed at once and counted.
//! - A connection that has not carried an authenticated request (a REGISTER
//!   answered 200, an INVITE that passed the digest) within
//!   `tcp_auth_timeout_s` is shut down; authenticated flows keep the
//!   listener's long idle timeout.
//! - `accept` failing (EMFILE, ENFILE, ...) backs off 100 ms per failure and
//!   logs at most one line per 10 s, with the number of failures since.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, Weak};
use std::time::{Duration, Instant};

use rsipstack::transport::connection::SipConnection;
use rsipstack::transport::tcp::TcpConnection;
use rsipstack::transport::SipAddr;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::shared::Shared;

/// Back-off after a failed `accept`.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// At most one log line per this interval for failing `accept`s.
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(10);

pub const REFUSED_METRIC: &str = "agentline_tcp_connections_refused_total";
pub const TIMED_OUT_METRIC: &str = "agentline_tcp_unauthenticated_closed_total";
pub const ACCEPT_ERRORS_METRIC: &str = "agentline_tcp_accept_errors_total";

/// Open TCP flows: how many per source IP, and which authenticated.
#[derive(Default)]
pub struct TcpFlows {
    per_source: Mutex<HashMap<IpAddr, u32>>,
    authenticated: Mutex<HashSet<SocketAddr>>,
}

impl TcpFlows {
    /// Counts a new connection from `ip` unless it already holds `max`.
    fn admit(&self, ip: IpAddr, max: u32) -> bool {
        let mut m = self.per_source.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= max {
            return false;
        }
        *n += 1;
        true
    }

    fn closed(&self, peer: SocketAddr) {
        let mut m = self.per_source.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&peer.ip()) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&peer.ip());
            }
        }
        drop(m);
        self.authenticated
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&peer);
    }

    /// A request on the flow from `peer` authenticated: it may stay.
    pub fn authenticated(&self, peer: SocketAddr) {
        self.authenticated
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(peer);
    }

    fn is_authenticated(&self, peer: SocketAddr) -> bool {
        self.authenticated
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&peer)
    }

    /// Open connections from `ip`.
    pub fn open_from(&self, ip: IpAddr) -> u32 {
        self.per_source
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&ip)
            .copied()
            .unwrap_or(0)
    }
}

/// Runs the accept loop of `listener` until `stop`; streams go to `shared`'s
/// endpoint with `local` as their local address.
pub fn spawn(
    listener: std::net::TcpListener,
    local: SipAddr,
    endpoint: rsipstack::transaction::endpoint::EndpointInnerRef,
    shared: Weak<Shared>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    tokio::spawn(async move {
        let mut failures: u64 = 0;
        let mut last_log: Option<Instant> = None;
        loop {
            let accepted = tokio::select! {
                _ = stop.cancelled() => break,
                a = listener.accept() => a,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    failures += 1;
                    metrics::counter!(ACCEPT_ERRORS_METRIC).increment(1);
                    if last_log.is_none_or(|t| t.elapsed() >= ACCEPT_LOG_EVERY) {
                        warn!(error = %e, failures, "SIP TCP accept failing: backing off");
                        last_log = Some(Instant::now());
                        failures = 0;
                    }
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let Some(shared) = shared.upgrade() else {
                break;
            };
            if !super::edge::admits(&shared, peer.ip()) {
                debug!(%peer, "SIP TCP connection refused by the edge guard");
                drop(stream);
                continue;
            }
            let cfg = shared.cfg();
            let exempt = cfg.is_trusted(peer.ip()) || shared.trunks.trunk_for(peer.ip()).is_some();
            let limits = cfg.limits;
            if !exempt && !shared.tcp_flows.admit(peer.ip(), limits.max_tcp_per_source) {
                metrics::counter!(REFUSED_METRIC).increment(1);
                debug!(%peer, "SIP TCP connection over the per-source limit: closed");
                drop(stream);
                continue;
            }
            if exempt {
                // Counted too, so that the close below balances.
                shared.tcp_flows.admit(peer.ip(), u32::MAX);
                shared.tcp_flows.authenticated(peer);
            }
            // A handle to shut the socket down later (a dup, held only
            // until the flow authenticates or its time is up).
            let ctl = (!exempt)
                .then(|| {
                    use std::os::fd::AsFd;
                    stream.as_fd().try_clone_to_owned().ok()
                })
                .flatten()
                .map(socket2::Socket::from);
            let token = CancellationToken::new();
            let conn = match TcpConnection::from_stream(stream, local.clone(), Some(token.clone()))
            {
                Ok(c) => c,
                Err(e) => {
                    debug!(error = %e, %peer, "SIP TCP connection dropped");
                    shared.tcp_flows.closed(peer);
                    continue;
                }
            };
            endpoint
                .transport_layer
                .add_connection(SipConnection::Tcp(conn));
            let timeout = Duration::from_secs(limits.tcp_auth_timeout_s);
            let flows = shared.clone();
            tokio::spawn(async move {
                if let Some(ctl) = ctl {
                    tokio::select! {
                        _ = token.cancelled() => {}
                        _ = tokio::time::sleep(timeout) => {
                            if !flows.tcp_flows.is_authenticated(peer) {
                                metrics::counter!(TIMED_OUT_METRIC).increment(1);
                                debug!(%peer, "SIP TCP connection not authenticated in time: closed");
                                let _ = ctl.shutdown(std::net::Shutdown::Both);
                            }
                        }
                    }
                }
                // rsipstack cancels the connection's token when its read
                // loop ends (peer closed, idle timeout, shut down above).
                token.cancelled().await;
                flows.tcp_flows.closed(peer);
            });
        }
        debug!("SIP TCP listener stopped");
    });
    Ok(())
}
