//! A raw SIP-over-UDP client bound to a chosen loopback address (127.0.0.2
//! and up play other hosts), for tests that need byte-exact requests:
//! digest replays, unknown users, floods.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use md5::{Digest, Md5};

pub fn md5_hex(s: &str) -> String {
    hex::encode(Md5::digest(s.as_bytes()))
}

/// A response as received.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub raw: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        let head = self.raw.split("\r\n\r\n").next()?;
        head.split("\r\n").skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then_some(v.trim())
        })
    }

    /// A parameter of the (Proxy-|WWW-)Authenticate challenge.
    pub fn challenge_param(&self, param: &str) -> Option<String> {
        let c = self
            .header("WWW-Authenticate")
            .or_else(|| self.header("Proxy-Authenticate"))?;
        let key = format!("{param}=");
        let at = c.find(&key)? + key.len();
        let rest = &c[at..];
        Some(match rest.strip_prefix('"') {
            Some(q) => q[..q.find('"')?].to_string(),
            None => rest.split([',', ' ']).next()?.to_string(),
        })
    }
}

/// The digest fields a client sends.
pub struct DigestFields<'a> {
    pub user: &'a str,
    pub password: &'a str,
    pub realm: &'a str,
    pub nonce: &'a str,
    pub method: &'a str,
    pub uri: &'a str,
    pub nc: u32,
}

impl DigestFields<'_> {
    /// The `Digest ...` value (qop=auth, MD5).
    pub fn value(&self) -> String {
        let ha1 = md5_hex(&format!("{}:{}:{}", self.user, self.realm, self.password));
        let ha2 = md5_hex(&format!("{}:{}", self.method, self.uri));
        let nc = format!("{:08x}", self.nc);
        let cnonce = "c0ffee";
        let response = md5_hex(&format!("{ha1}:{}:{nc}:{cnonce}:auth:{ha2}", self.nonce));
        format!(
            "Digest username=\"{}\", realm=\"{}\", nonce=\"{}\", uri=\"{}\", response=\"{response}\", \
             algorithm=MD5, qop=auth, nc={nc}, cnonce=\"{cnonce}\"",
            self.user, self.realm, self.nonce, self.uri
        )
    }
}

pub struct RawSip {
    pub sock: UdpSocket,
    pub server_port: u16,
    seq: u32,
}

impl RawSip {
    /// A client on `ip` (e.g. "127.0.0.2"), any port.
    pub fn bind(ip: &str, server_port: u16) -> RawSip {
        let sock = UdpSocket::bind((ip, 0)).expect("bind raw SIP client");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        RawSip {
            sock,
            server_port,
            seq: 0,
        }
    }

    pub fn local(&self) -> std::net::SocketAddr {
        self.sock.local_addr().expect("local addr")
    }

    /// A request with fresh branch, Call-ID and tag; `extra` are whole header
    /// lines ending in CRLF.
    pub fn request(&mut self, method: &str, ruri: &str, to_user: &str, extra: &str) -> String {
        self.seq += 1;
        let local = self.local();
        let n = self.seq;
        let sp = self.server_port;
        format!(
            "{method} {ruri} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {local};branch=z9hG4bK-raw-{}-{n};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:{to_user}@127.0.0.1:{sp}>;tag=raw{n}\r\n\
             To: <sip:{to_user}@127.0.0.1:{sp}>\r\n\
             Call-ID: raw-{}-{n}@{}\r\n\
             CSeq: {n} {method}\r\n\
             Contact: <sip:{to_user}@{local}>\r\n\
             {extra}\
             Content-Length: 0\r\n\r\n",
            local.port(),
            local.port(),
            local.ip()
        )
    }

    pub fn send(&self, msg: &str) {
        let _ = self
            .sock
            .send_to(msg.as_bytes(), ("127.0.0.1", self.server_port));
    }

    /// Sends `msg` and waits up to `within` for its final response (the
    /// first with status >= 200 and the request's CSeq); `None` if silence.
    pub fn exchange(&self, msg: &str, within: Duration) -> Option<Reply> {
        let cseq = msg
            .lines()
            .find_map(|l| l.strip_prefix("CSeq: "))
            .unwrap_or("")
            .trim()
            .to_string();
        self.send(msg);
        let deadline = Instant::now() + within;
        let mut buf = vec![0u8; 65535];
        while Instant::now() < deadline {
            let Ok((n, _)) = self.sock.recv_from(&mut buf) else {
                continue;
            };
            let raw = String::from_utf8_lossy(&buf[..n]).to_string();
            let Some(status) = raw
                .strip_prefix("SIP/2.0 ")
                .and_then(|r| r.get(..3))
                .and_then(|c| c.parse::<u16>().ok())
            else {
                continue;
            };
            let reply = Reply { status, raw };
            if status >= 200 && reply.header("CSeq").map(str::trim) == Some(cseq.as_str()) {
                return Some(reply);
            }
        }
        None
    }
}
