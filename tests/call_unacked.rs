#![allow(clippy::unwrap_used)]
//! A 200 OK the caller never ACKs: a hangup (API or SIGTERM) while the 200
//! waits for its ACK must not spin the call task. Found tried as a new
//! user would: the task busy-looped at 100 % CPU and the process never
//! exited after SIGTERM.

mod common;

use common::{cpu_seconds, http_get, http_post, Server};
use std::net::UdpSocket;
use std::time::{Duration, Instant};

const PROFILE: &str = r#"
[sip]
trusted = ["127.0.0.1/32"]
shutdown_grace_s = 3
[[routes]]
dial = "echo"
agent = { kind = "echo" }
"#;

struct Caller {
    sock: UdpSocket,
    server: u16,
    call_id: String,
    to_tag: String,
}

impl Caller {
    fn new(server: u16) -> Caller {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        Caller {
            sock,
            server,
            call_id: format!("unacked-{}@127.0.0.1", std::process::id()),
            to_tag: String::new(),
        }
    }

    fn port(&self) -> u16 {
        self.sock.local_addr().unwrap().port()
    }

    fn send(&self, msg: &str) {
        self.sock
            .send_to(msg.as_bytes(), ("127.0.0.1", self.server))
            .unwrap();
    }

    fn recv(&self) -> Option<String> {
        let mut buf = [0u8; 4096];
        let (n, _) = self.sock.recv_from(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).to_string())
    }

    /// Sends an INVITE with SDP and reads until the 200 OK (not ACKed).
    fn invite_until_200(&mut self) {
        let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
                   m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";
        let port = self.port();
        let invite = format!(
            "INVITE sip:echo@127.0.0.1:{srv} SIP/2.0\r\n\
             Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-unacked-1;rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:tester@127.0.0.1>;tag=caller1\r\n\
             To: <sip:echo@127.0.0.1>\r\n\
             Call-ID: {cid}\r\n\
             CSeq: 1 INVITE\r\n\
             Contact: <sip:tester@127.0.0.1:{port}>\r\n\
             Content-Type: application/sdp\r\n\
             Content-Length: {len}\r\n\r\n{sdp}",
            srv = self.server,
            cid = self.call_id,
            len = sdp.len()
        );
        self.send(&invite);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let Some(msg) = self.recv() else { continue };
            if msg.starts_with("SIP/2.0 200") {
                let to = msg
                    .lines()
                    .find(|l| l.to_ascii_lowercase().starts_with("to:"))
                    .unwrap();
                self.to_tag = to.split("tag=").nth(1).unwrap().trim().to_string();
                return;
            }
        }
        panic!("no 200 OK to the INVITE");
    }

    fn ack(&self) {
        let port = self.port();
        self.send(&format!(
            "ACK sip:echo@127.0.0.1:{srv} SIP/2.0\r\n\
             Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-unacked-ack;rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:tester@127.0.0.1>;tag=caller1\r\n\
             To: <sip:echo@127.0.0.1>;tag={tag}\r\n\
             Call-ID: {cid}\r\n\
             CSeq: 1 ACK\r\n\
             Content-Length: 0\r\n\r\n",
            srv = self.server,
            tag = self.to_tag,
            cid = self.call_id
        ));
    }
}

impl Caller {
    /// 200 OK to a request: its Via, From, To, Call-ID and CSeq copied.
    fn answer_ok(&self, req: &str) {
        let mut resp = String::from("SIP/2.0 200 OK\r\n");
        for line in req.lines() {
            let l = line.to_ascii_lowercase();
            if ["via:", "from:", "to:", "call-id:", "cseq:"]
                .iter()
                .any(|h| l.starts_with(h))
            {
                resp.push_str(line);
                resp.push_str("\r\n");
            }
        }
        resp.push_str("Content-Length: 0\r\n\r\n");
        self.send(&resp);
    }
}

fn only_call_id(server: &Server) -> String {
    let calls = server.calls();
    let arr = calls.as_array().unwrap();
    assert_eq!(arr.len(), 1, "{calls}");
    arr[0]["id"].as_str().unwrap().to_string()
}

#[test]
fn hangup_before_ack_waits_idle_then_byes_on_the_ack() {
    let server = Server::start(PROFILE);
    let pid = server.pid().unwrap();
    let mut caller = Caller::new(server.sip_port);
    caller.invite_until_200();
    let id = only_call_id(&server);
    let (code, body) = http_post(server.api_port, &format!("/calls/{id}/hangup"), "{}").unwrap();
    assert_eq!(code, 200, "{body}");

    // While the 200 waits for its ACK, the call costs (next to) nothing.
    let cpu0 = cpu_seconds(pid);
    std::thread::sleep(Duration::from_secs(2));
    let spent = cpu_seconds(pid) - cpu0;
    assert!(
        spent < 0.3,
        "{spent:.2} s of CPU in 2 s waiting for an ACK after a hangup"
    );

    // The ACK arrives: the hangup is carried out with a BYE.
    caller.ack();
    let deadline = Instant::now() + Duration::from_secs(5);
    let bye = loop {
        assert!(Instant::now() < deadline, "no BYE after the late ACK");
        match caller.recv() {
            Some(m) if m.starts_with("BYE ") => break m,
            _ => {}
        }
    };
    assert!(bye.contains(&caller.call_id), "{bye}");
    caller.answer_ok(&bye);
    // The call ends with the reason the API asked for (BYE answered or not).
    let deadline = Instant::now() + Duration::from_secs(5);
    let info = loop {
        let (code, body) = http_get(server.api_port, &format!("/calls/{id}")).unwrap();
        assert_eq!(code, 200, "{body}");
        let info: serde_json::Value = serde_json::from_str(&body).unwrap();
        if !info["end_reason"].is_null() || Instant::now() > deadline {
            break info;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(info["end_reason"], "hangup by server", "{info}");
}

#[test]
fn sigterm_with_an_unacked_200_exits_within_the_grace() {
    let mut server = Server::start(PROFILE);
    let pid = server.pid().unwrap();
    let mut caller = Caller::new(server.sip_port);
    caller.invite_until_200();
    only_call_id(&server);
    let cpu0 = cpu_seconds(pid);
    let started = Instant::now();
    // Grace is 3 s; allow the trunk/endpoint shutdown steps on top.
    let status = server.terminate(Duration::from_secs(10));
    assert!(
        status.is_some(),
        "still running 10 s after SIGTERM (grace 3 s); CPU used meanwhile: {:.1} s",
        cpu_seconds(pid) - cpu0
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}
