//! A call's RTP socket, read in one of two ways.
//!
//! - **Woken** (before a media session exists): the socket is registered
//!   with tokio and the call's driver waits on it like on any other source,
//!   so RTP that arrives before our answer is seen at once (stale streams
//!   are refused from their first packet).
//! - **Clocked** (while a media session runs): the session's playout clock
//!   wakes the driver every ptime anyway, and the audio that arrived since
//!   the last tick is only needed at the next one. The socket is taken out
//!   of tokio's epoll set and drained without waiting at each wake. That
//!   halves the task wake-ups of a call (one per ptime instead of one per
//!   received packet plus one per tick) and the epoll events behind them.
//!
//! Arrival times stay exact in both ways: the kernel stamps each datagram
//! (`SO_TIMESTAMPNS`), and the stamp becomes the `Instant` the jitter
//! buffer and the RTCP interarrival jitter see, not the time of the read.
//!
//! Sending never waits: a full socket buffer drops the packet (late audio
//! is worth nothing) and the caller counts it.

use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket as StdUdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::socket::{
    recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, SockaddrStorage,
};
use tokio::io::Interest;

/// Kernel stamps older than this (a clock step, a stalled process) are
/// taken as "now": an arrival time is never moved further back.
const MAX_STAMP_AGE: Duration = Duration::from_secs(1);

/// One datagram taken from the socket.
#[derive(Debug, Clone, Copy)]
pub struct Datagram {
    pub len: usize,
    pub from: SocketAddr,
    /// When the kernel received it (the read time if it had no stamp).
    pub at: Instant,
}

/// Receive buffers kept by the driver: the payload and the control space
/// for the kernel's timestamp (allocated once, never per packet).
pub struct RecvBuf {
    pub data: Vec<u8>,
    cmsg: Vec<u8>,
}

impl RecvBuf {
    pub fn new(size: usize) -> Self {
        RecvBuf {
            data: vec![0u8; size],
            cmsg: nix::cmsg_space!(nix::sys::time::TimeSpec),
        }
    }

    /// The payload of `d`.
    pub fn payload(&self, d: &Datagram) -> &[u8] {
        &self.data[..d.len.min(self.data.len())]
    }
}

enum Inner {
    Woken(tokio::net::UdpSocket),
    Clocked(StdUdpSocket),
    /// Only between a failed switch and the end of the call.
    Gone,
}

pub struct RtpSocket {
    inner: Inner,
}

impl RtpSocket {
    /// Wraps a bound, non-blocking socket; starts woken. Must run inside a
    /// tokio runtime.
    pub fn new(sock: StdUdpSocket) -> io::Result<Self> {
        // Best effort: without stamps arrival is the read time.
        let _ = setsockopt(&sock, sockopt::ReceiveTimestampns, &true);
        Ok(RtpSocket {
            inner: Inner::Woken(tokio::net::UdpSocket::from_std(sock)?),
        })
    }

    pub fn is_clocked(&self) -> bool {
        matches!(self.inner, Inner::Clocked(_))
    }

    /// Switches between woken and clocked reading (a no-op when already
    /// there). Registering with or leaving epoll is one syscall.
    pub fn set_clocked(&mut self, clocked: bool) -> io::Result<()> {
        if clocked == self.is_clocked() {
            return Ok(());
        }
        self.inner = match std::mem::replace(&mut self.inner, Inner::Gone) {
            Inner::Woken(s) if clocked => Inner::Clocked(s.into_std()?),
            Inner::Clocked(s) if !clocked => Inner::Woken(tokio::net::UdpSocket::from_std(s)?),
            other => other,
        };
        Ok(())
    }

    /// Waits for the next datagram while woken; never completes while
    /// clocked (read those with [`RtpSocket::try_recv`] at each wake).
    pub async fn recv(&self, buf: &mut RecvBuf) -> io::Result<Datagram> {
        match &self.inner {
            Inner::Woken(s) => {
                let fd = s.as_raw_fd();
                s.async_io(Interest::READABLE, || recv_stamped(fd, buf))
                    .await
            }
            Inner::Clocked(_) | Inner::Gone => std::future::pending().await,
        }
    }

    /// The next datagram already received, without waiting; `Ok(None)`
    /// when there is none.
    pub fn try_recv(&self, buf: &mut RecvBuf) -> io::Result<Option<Datagram>> {
        let r = match &self.inner {
            Inner::Woken(s) => {
                let fd = s.as_raw_fd();
                s.try_io(Interest::READABLE, || recv_stamped(fd, buf))
            }
            Inner::Clocked(s) => recv_stamped(s.as_raw_fd(), buf),
            Inner::Gone => return Ok(None),
        };
        match r {
            Ok(d) => Ok(Some(d)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A plain receive while woken (no stamp), for a driver that hands
    /// every datagram to a protocol stack at once (WebRTC: STUN, DTLS and
    /// SRTP on one port); never completes while clocked.
    pub async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        match &self.inner {
            Inner::Woken(s) => s.recv_from(buf).await,
            Inner::Clocked(_) | Inner::Gone => std::future::pending().await,
        }
    }

    /// Sends, waiting for room while woken (handshakes that must not be
    /// lost); while clocked, as [`RtpSocket::try_send_to`].
    pub async fn send_to(&self, bytes: &[u8], to: SocketAddr) -> io::Result<usize> {
        match &self.inner {
            Inner::Woken(s) => s.send_to(bytes, to).await,
            _ => self.try_send_to(bytes, to),
        }
    }

    /// Sends without waiting; a full socket buffer is `WouldBlock`.
    pub fn try_send_to(&self, bytes: &[u8], to: SocketAddr) -> io::Result<usize> {
        match &self.inner {
            Inner::Woken(s) => s.try_send_to(bytes, to),
            Inner::Clocked(s) => s.send_to(bytes, to),
            Inner::Gone => Err(io::Error::from(io::ErrorKind::NotConnected)),
        }
    }
}

/// One non-blocking `recvmsg` with the kernel's receive stamp.
fn recv_stamped(fd: RawFd, buf: &mut RecvBuf) -> io::Result<Datagram> {
    let mut iov = [IoSliceMut::new(&mut buf.data)];
    let msg = recvmsg::<SockaddrStorage>(fd, &mut iov, Some(&mut buf.cmsg), MsgFlags::MSG_DONTWAIT)
        .map_err(io::Error::from)?;
    let mut stamp = None;
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            if let ControlMessageOwned::ScmTimestampns(ts) = c {
                let (sec, nsec) = (ts.tv_sec(), ts.tv_nsec());
                if sec >= 0 && (0..1_000_000_000).contains(&nsec) {
                    stamp = Some(UNIX_EPOCH + Duration::new(sec as u64, nsec as u32));
                }
            }
        }
    }
    let from =
        msg.address.as_ref().and_then(socket_addr).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, "datagram without address")
        })?;
    Ok(Datagram {
        len: msg.bytes,
        from,
        at: arrival(stamp, Instant::now(), SystemTime::now()),
    })
}

fn socket_addr(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::from(*v4)));
    }
    a.as_sockaddr_in6()
        .map(|v6| SocketAddr::V6(SocketAddrV6::from(*v6)))
}

/// The kernel's wall-clock stamp as a monotonic `Instant`, given both
/// clocks read now; a stamp in the future or too old counts as now.
fn arrival(stamp: Option<SystemTime>, now: Instant, wall_now: SystemTime) -> Instant {
    let age = stamp
        .and_then(|s| wall_now.duration_since(s).ok())
        .filter(|age| *age <= MAX_STAMP_AGE)
        .unwrap_or_default();
    now.checked_sub(age).unwrap_or(now)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn pair() -> (RtpSocket, StdUdpSocket) {
        let a = StdUdpSocket::bind("127.0.0.1:0").unwrap();
        a.set_nonblocking(true).unwrap();
        let b = StdUdpSocket::bind("127.0.0.1:0").unwrap();
        b.connect(a.local_addr().unwrap()).unwrap();
        (RtpSocket::new(a).unwrap(), b)
    }

    #[test]
    fn stamps_become_instants_and_bad_stamps_count_as_now() {
        let now = Instant::now();
        let wall = SystemTime::now();
        let ms30 = Duration::from_millis(30);
        assert_eq!(arrival(Some(wall - ms30), now, wall), now - ms30);
        assert_eq!(arrival(None, now, wall), now);
        // The wall clock stepped back (stamp in the future) or far forward.
        assert_eq!(arrival(Some(wall + ms30), now, wall), now);
        assert_eq!(arrival(Some(wall - Duration::from_secs(5)), now, wall), now);
    }

    #[tokio::test]
    async fn clocked_reads_keep_the_kernel_arrival_time() {
        let (mut sock, peer) = pair();
        sock.set_clocked(true).unwrap();
        let mut buf = RecvBuf::new(2048);
        // The kernel turns stamping on a moment after the first socket asks
        // (a deferred static key); until then a datagram is stamped when
        // read. Wait for stamping to be on.
        peer.send(b"warm-up").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert!(sock.try_recv(&mut buf).unwrap().is_some());
        let sent_at = Instant::now();
        peer.send(b"first").unwrap();
        std::thread::sleep(Duration::from_millis(40));
        peer.send(b"second").unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let a = sock.try_recv(&mut buf).unwrap().unwrap();
        assert_eq!(buf.payload(&a), b"first");
        assert_eq!(a.from, peer.local_addr().unwrap());
        let b = sock.try_recv(&mut buf).unwrap().unwrap();
        assert_eq!(buf.payload(&b), b"second");
        // Read together, 45 ms after the first was sent; stamped 40 ms apart.
        let gap = b.at.duration_since(a.at);
        assert!(gap >= Duration::from_millis(35), "gap {gap:?}");
        assert!(a.at.duration_since(sent_at) < Duration::from_millis(10));
        assert!(sock.try_recv(&mut buf).unwrap().is_none());
    }

    #[tokio::test]
    async fn switches_between_woken_and_clocked_without_losing_datagrams() {
        let (mut sock, peer) = pair();
        let mut buf = RecvBuf::new(2048);
        peer.send(b"woken").unwrap();
        let d = tokio::time::timeout(Duration::from_secs(2), sock.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(buf.payload(&d), b"woken");
        sock.set_clocked(true).unwrap();
        peer.send(b"queued").unwrap();
        // Clocked: waiting never completes, the datagram waits for a drain.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), sock.recv(&mut buf))
                .await
                .is_err()
        );
        sock.set_clocked(false).unwrap();
        let d = tokio::time::timeout(Duration::from_secs(2), sock.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(buf.payload(&d), b"queued");
        sock.try_send_to(b"back", peer.local_addr().unwrap())
            .unwrap();
        let mut got = [0u8; 16];
        std::thread::sleep(Duration::from_millis(5));
        peer.set_nonblocking(true).unwrap();
        assert_eq!(peer.recv(&mut got).unwrap(), 4);
    }
}
