//! RTP/RTCP port pairs from the configured range: even port for RTP, the next
//! for RTCP. A pair is returned to the pool when its [`RtpPorts`] is dropped.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::config::PortRange;
use crate::sip::rtp_socket::RtpSocket;

#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("no free RTP port pair in {range} ({in_use} ports in use)")]
    Exhausted { range: PortRange, in_use: usize },
    #[error("RTP socket: {0}")]
    Socket(#[from] std::io::Error),
}

struct PoolInner {
    range: PortRange,
    bind: IpAddr,
    /// Round-robin cursor, so a just-freed pair is not reused at once and
    /// late packets of an old call do not land in a new one.
    next: u16,
    in_use: HashSet<u16>,
}

#[derive(Clone)]
pub struct PortPool {
    inner: Arc<Mutex<PoolInner>>,
}

/// The sockets of one call; dropping returns the pair to the pool.
pub struct RtpPorts {
    /// Read woken or clocked: see [`RtpSocket`].
    pub rtp: RtpSocket,
    pub rtcp: tokio::net::UdpSocket,
    pub port: u16,
    pool: PortPool,
}

impl Drop for RtpPorts {
    fn drop(&mut self) {
        self.pool.lock().in_use.remove(&self.port);
    }
}

impl PortPool {
    pub fn new(range: PortRange, bind: IpAddr) -> Self {
        let first = range.first + (range.first & 1);
        PortPool {
            inner: Arc::new(Mutex::new(PoolInner {
                range,
                bind,
                next: first,
                in_use: HashSet::new(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, PoolInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ports (RTP and RTCP) currently held by calls.
    pub fn in_use(&self) -> usize {
        self.lock().in_use.len() * 2
    }

    /// Binds the next free even/odd pair. Must run inside a tokio runtime.
    pub fn allocate(&self) -> Result<RtpPorts, PortError> {
        let mut inner = self.lock();
        let first = inner.range.first + (inner.range.first & 1);
        let last = inner.range.last;
        if last <= first {
            return Err(PortError::Exhausted {
                range: inner.range,
                in_use: 0,
            });
        }
        let pairs = (last - first).div_ceil(2);
        for _ in 0..pairs {
            let port = inner.next;
            inner.next = if port + 3 > last { first } else { port + 2 };
            if inner.in_use.contains(&port) {
                continue;
            }
            let bind = inner.bind;
            let Ok(rtp) = bind_udp(SocketAddr::new(bind, port)) else {
                continue;
            };
            let Ok(rtcp) = bind_udp(SocketAddr::new(bind, port + 1)) else {
                continue;
            };
            inner.in_use.insert(port);
            drop(inner);
            return Ok(RtpPorts {
                rtp: RtpSocket::new(rtp)?,
                rtcp: tokio::net::UdpSocket::from_std(rtcp)?,
                port,
                pool: self.clone(),
            });
        }
        Err(PortError::Exhausted {
            range: inner.range,
            in_use: inner.in_use.len() * 2,
        })
    }
}

fn bind_udp(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let s = std::net::UdpSocket::bind(addr)?;
    s.set_nonblocking(true)?;
    Ok(s)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pairs_are_even_odd_and_returned_on_drop() {
        let base = 41000 + (std::process::id() % 500) as u16 * 2;
        let pool = PortPool::new(
            PortRange {
                first: base,
                last: base + 5,
            },
            "127.0.0.1".parse().unwrap(),
        );
        let a = pool.allocate().unwrap();
        let b = pool.allocate().unwrap();
        assert_eq!(a.port % 2, 0);
        assert_eq!(a.rtcp.local_addr().unwrap().port(), a.port + 1);
        assert_ne!(a.port, b.port);
        assert_eq!(pool.in_use(), 4);
        let c = pool.allocate().unwrap();
        assert!(pool.allocate().is_err(), "range holds three pairs");
        drop((a, b, c));
        assert_eq!(pool.in_use(), 0);
        assert!(pool.allocate().is_ok());
    }
}
