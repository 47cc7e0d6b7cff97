//! The largest SIP message taken over UDP (`[security] max_message_bytes`).
//!
//! rsipstack reads each datagram into an 8,192-byte buffer: a larger one
//! is cut short, fails to parse and vanishes with a debug line. The SIP
//! UDP socket is therefore ours ([`LimitedUdp`], handed to rsipstack
//! through `UdpConnection::from_socket`): it reads each datagram whole,
//! drops one over min(`max_message_bytes`, 8192) before rsipstack sees it,
//! counts it (`agentline_sip_rejected_total{reason="too_large_udp"}`) and
//! logs at most one line per 10 s with the number dropped since.
//!
//! TCP and TLS are framed by rsipstack itself, which closes a connection
//! whose message grows past 65,535 bytes; `max_message_bytes` does not
//! apply there.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use tracing::warn;

use super::sanity::{count, RejectReason};
use super::shared::Shared;

/// rsipstack's UDP receive buffer (`MAX_UDP_BUF_SIZE`): nothing larger can
/// reach its parser whole.
pub const STACK_UDP_BUF: usize = 8192;
/// At most one log line per this interval for dropped datagrams.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// A UDP datagram's largest payload (IPv4: 65,535 - 8 - 20).
const MAX_DATAGRAM: usize = 65_535;

/// The limit in force: min(`max_message_bytes`, [`STACK_UDP_BUF`]).
pub fn udp_limit(max_message_bytes: usize) -> usize {
    max_message_bytes.min(STACK_UDP_BUF)
}

/// Where the limit is read from: the server's profile, reached through a
/// cell filled once the server is up (the socket is bound before it);
/// until then the default 8,192 applies. A reload changes it at once.
#[derive(Clone, Default)]
pub struct LimitSource(pub Arc<OnceLock<Weak<Shared>>>);

impl LimitSource {
    fn limit(&self) -> usize {
        match self.0.get().and_then(Weak::upgrade) {
            Some(s) => udp_limit(s.cfg().limits.max_message_bytes),
            None => STACK_UDP_BUF,
        }
    }
}

/// Datagrams dropped, and when the last line about them was logged.
#[derive(Default)]
struct DropLog {
    dropped: AtomicU64,
    last: Mutex<Option<Instant>>,
}

impl DropLog {
    /// Counts one drop; true when a line is due (first drop, or
    /// [`LOG_EVERY`] since the last line). Returns the drops since.
    fn dropped(&self, now: Instant) -> Option<u64> {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| now.duration_since(t) < LOG_EVERY) {
            return None;
        }
        *last = Some(now);
        Some(self.dropped.swap(0, Ordering::Relaxed))
    }
}

/// The SIP UDP socket: reads whole datagrams and drops oversized ones.
pub struct LimitedUdp {
    sock: tokio::net::UdpSocket,
    limit: LimitSource,
    /// One datagram, whole (only rsipstack's one receive loop reads).
    buf: Mutex<Vec<u8>>,
    log: DropLog,
}

impl LimitedUdp {
    /// Binds `local` (as rsipstack's `create_connection` does: no address
    /// reuse).
    pub fn bind(local: SocketAddr, limit: LimitSource) -> std::io::Result<Self> {
        let domain = match local.ip() {
            IpAddr::V4(_) => socket2::Domain::IPV4,
            IpAddr::V6(_) => socket2::Domain::IPV6,
        };
        let socket =
            socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
        socket.set_nonblocking(true)?;
        socket.bind(&local.into())?;
        let sock = tokio::net::UdpSocket::from_std(socket.into())?;
        Ok(LimitedUdp {
            sock,
            limit,
            buf: Mutex::new(vec![0; MAX_DATAGRAM]),
            log: DropLog::default(),
        })
    }

    /// One datagram from the socket into `out`: `Ok(None)` when it was
    /// dropped for its size, `Err(WouldBlock)` when none is waiting.
    fn try_recv(&self, out: &mut [u8]) -> std::io::Result<Option<(usize, SocketAddr)>> {
        let mut own = self.buf.lock().unwrap_or_else(|p| p.into_inner());
        let (n, src) = self.sock.try_recv_from(&mut own)?;
        let limit = self.limit.limit().min(out.len());
        if n > limit {
            count(RejectReason::TooLargeUdp);
            if let Some(since) = self.log.dropped(Instant::now()) {
                warn!(%src, bytes = n, limit, dropped = since,
                    "SIP datagram over security.max_message_bytes dropped (one line per 10 s)");
            }
            return Ok(None);
        }
        out[..n].copy_from_slice(&own[..n]);
        Ok(Some((n, src)))
    }
}

#[async_trait::async_trait]
impl rsipstack::platform::net::UdpSocket for LimitedUdp {
    async fn recv_from(&self, buf: &mut [u8]) -> rsipstack::Result<(usize, SocketAddr)> {
        loop {
            self.sock.readable().await?;
            match self.try_recv(buf) {
                Ok(Some(got)) => return Ok(got),
                Ok(None) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn send_to(&self, buf: &[u8], addr: SocketAddr) -> rsipstack::Result<usize> {
        Ok(self.sock.send_to(buf, addr).await?)
    }

    fn local_addr(&self) -> rsipstack::Result<SocketAddr> {
        Ok(self.sock.local_addr()?)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rsipstack::platform::net::UdpSocket as _;

    #[test]
    fn the_limit_is_the_profiles_up_to_the_stacks_buffer() {
        assert_eq!(udp_limit(1500), 1500);
        assert_eq!(udp_limit(8192), 8192);
        assert_eq!(udp_limit(65535), 8192);
    }

    #[test]
    fn one_log_line_per_interval_with_the_drops_since() {
        let log = DropLog::default();
        let t0 = Instant::now();
        assert_eq!(log.dropped(t0), Some(1));
        assert_eq!(log.dropped(t0 + Duration::from_secs(1)), None);
        assert_eq!(log.dropped(t0 + Duration::from_secs(9)), None);
        assert_eq!(log.dropped(t0 + Duration::from_secs(10)), Some(3));
    }

    #[tokio::test]
    async fn oversized_datagrams_are_dropped_and_the_next_one_is_read() {
        let sock =
            LimitedUdp::bind("127.0.0.1:0".parse().unwrap(), LimitSource::default()).unwrap();
        let to = sock.local_addr().unwrap();
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        peer.send_to(&vec![b'x'; 10_000], to).unwrap();
        peer.send_to(&vec![b'y'; 8192], to).unwrap();
        let mut buf = vec![0u8; STACK_UDP_BUF];
        let (n, src) = tokio::time::timeout(Duration::from_secs(2), sock.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((n, src), (8192, peer.local_addr().unwrap()));
        assert!(buf.iter().all(|&b| b == b'y'));
        assert_eq!(
            sock.log.dropped.load(Ordering::Relaxed),
            0,
            "logged and reset"
        );
    }
}
