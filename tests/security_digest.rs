#![allow(clippy::unwrap_used)]
//! Digest hardening over the wire (raw UDP; 127.0.0.1 is the phone,
//! 127.0.0.4 another host): a captured REGISTER Authorization replayed from
//! another host neither binds nor removes contacts; a captured INVITE
//! Proxy-Authorization does not work from another host, for another
//! Request-URI, or again with the same `nc`; an unknown user and a wrong
//! password get the same answer.

mod common;

use std::time::Duration;

use common::rawsip::{DigestFields, RawSip, Reply};
use common::Server;

const USER: &str = "1000";
const PASSWORD: &str = "horse-battery-1000";
const REALM: &str = "agentline.test";
const WAIT: Duration = Duration::from_secs(3);

fn profile() -> String {
    format!(
        "[sip]\ndomain = \"{REALM}\"\n\n[[users]]\nname = \"{USER}\"\npassword = \"{PASSWORD}\"\n\n\
         [[routes]]\ndial = \"echo\"\nagent = {{ kind = \"echo\" }}\n"
    )
}

fn registrations(server: &Server) -> u64 {
    server.health()["registrations"].as_u64().unwrap()
}

fn auth_line(header: &str, f: &DigestFields) -> String {
    format!("{header}: {}\r\n", f.value())
}

#[test]
fn a_replayed_register_authorization_neither_binds_nor_removes_contacts() {
    let server = Server::start(&profile());
    let ruri = format!("sip:127.0.0.1:{}", server.sip_port);
    let mut phone = RawSip::bind("127.0.0.1", server.sip_port);
    let mut attacker = RawSip::bind("127.0.0.4", server.sip_port);

    let first = phone.request("REGISTER", &ruri, USER, "Expires: 60\r\n");
    let r = phone.exchange(&first, WAIT).expect("401");
    assert_eq!(r.status, 401, "{}", r.raw);
    let nonce = r.challenge_param("nonce").unwrap();
    let creds = DigestFields {
        user: USER,
        password: PASSWORD,
        realm: REALM,
        nonce: &nonce,
        method: "REGISTER",
        uri: &ruri,
        nc: 1,
    };
    let captured = auth_line("Authorization", &creds);
    let good = phone.request(
        "REGISTER",
        &ruri,
        USER,
        &format!("Expires: 60\r\n{captured}"),
    );
    let r = phone.exchange(&good, WAIT).expect("200");
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(registrations(&server), 1);

    // From another host: a new contact, then the wildcard removal.
    let bind = attacker.request(
        "REGISTER",
        &ruri,
        USER,
        &format!("Expires: 60\r\n{captured}"),
    );
    let r = attacker.exchange(&bind, WAIT).expect("an answer");
    assert_eq!(r.status, 401, "replay from another host:\n{}", r.raw);
    let wipe = attacker
        .request(
            "REGISTER",
            &ruri,
            USER,
            &format!("Expires: 0\r\n{captured}"),
        )
        .replace(
            &format!("Contact: <sip:{USER}@{}>", attacker.local()),
            "Contact: *",
        );
    assert!(wipe.contains("Contact: *"));
    let r = attacker.exchange(&wipe, WAIT).expect("an answer");
    assert_eq!(
        r.status, 401,
        "Contact: * replayed from another host:\n{}",
        r.raw
    );
    assert_eq!(
        registrations(&server),
        1,
        "the phone's binding is untouched"
    );

    // From the phone's own address, the same nc again: refused too.
    let again = phone.request(
        "REGISTER",
        &ruri,
        USER,
        &format!("Expires: 0\r\n{captured}"),
    );
    let r = phone.exchange(&again, WAIT).expect("an answer");
    assert_eq!(r.status, 401, "same nonce and nc again:\n{}", r.raw);
    assert_eq!(
        r.challenge_param("stale").as_deref(),
        Some("true"),
        "{}",
        r.raw
    );
    assert_eq!(registrations(&server), 1);

    // The next nc is the phone's own refresh: accepted.
    let next = auth_line("Authorization", &DigestFields { nc: 2, ..creds });
    let refresh = phone.request("REGISTER", &ruri, USER, &format!("Expires: 0\r\n{next}"));
    let r = phone.exchange(&refresh, WAIT).expect("an answer");
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(
        registrations(&server),
        0,
        "the phone removed its own binding"
    );
}

#[test]
fn a_captured_invite_proxy_authorization_works_nowhere_else() {
    let server = Server::start(&profile());
    let sp = server.sip_port;
    // A Request-URI without a route: once authenticated the INVITE gets 404,
    // so no call has to be torn down.
    let ruri = format!("sip:nosuch@127.0.0.1:{sp}");
    let mut phone = RawSip::bind("127.0.0.1", sp);
    let mut attacker = RawSip::bind("127.0.0.4", sp);
    let invite = phone.request("INVITE", &ruri, USER, "");
    let r = phone.exchange(&invite, WAIT).expect("407");
    assert_eq!(r.status, 407, "{}", r.raw);
    let nonce = r.challenge_param("nonce").unwrap();
    let creds = DigestFields {
        user: USER,
        password: PASSWORD,
        realm: REALM,
        nonce: &nonce,
        method: "INVITE",
        uri: &ruri,
        nc: 1,
    };
    let captured = auth_line("Proxy-Authorization", &creds);
    let ok = phone.request("INVITE", &ruri, USER, &captured);
    let r = phone.exchange(&ok, WAIT).expect("404");
    assert_eq!(r.status, 404, "authenticated, no route:\n{}", r.raw);

    // Another host, same Request-URI.
    let replay = attacker.request("INVITE", &ruri, USER, &captured);
    let r = attacker.exchange(&replay, WAIT).expect("an answer");
    assert_eq!(r.status, 407, "from another host:\n{}", r.raw);
    // Another host, a Request-URI with a route.
    let echo = format!("sip:echo@127.0.0.1:{sp}");
    let replay = attacker.request("INVITE", &echo, USER, &captured);
    let r = attacker.exchange(&replay, WAIT).expect("an answer");
    assert_eq!(r.status, 407, "from another host to echo:\n{}", r.raw);
    // The phone's own address, another Request-URI, a fresh nc.
    let other = auth_line("Proxy-Authorization", &DigestFields { nc: 2, ..creds });
    let replay = phone.request("INVITE", &echo, USER, &other);
    let r = phone.exchange(&replay, WAIT).expect("an answer");
    assert_eq!(
        r.status, 407,
        "digest uri is not the Request-URI:\n{}",
        r.raw
    );
    // The phone's own address, same everything, same nc.
    let replay = phone.request("INVITE", &ruri, USER, &captured);
    let r = phone.exchange(&replay, WAIT).expect("an answer");
    assert_eq!(r.status, 407, "same nc again:\n{}", r.raw);
    assert_eq!(server.health()["active_calls"].as_u64(), Some(0));
}

/// A response with what differs from one request to the next (nonce,
/// tags, branch, Call-ID, CSeq, Contact ports) masked.
fn masked(r: &Reply) -> String {
    let nonce = r.challenge_param("nonce").unwrap_or_default();
    let mut lines: Vec<String> = r
        .raw
        .split("\r\n")
        .map(|l| {
            let l = l.replace(&nonce, "NONCE");
            let lower = l.to_ascii_lowercase();
            if lower.starts_with("via:")
                || lower.starts_with("call-id:")
                || lower.starts_with("cseq:")
                || lower.starts_with("from:")
            {
                l.split(':').next().unwrap_or("").to_string()
            } else if lower.starts_with("to:") {
                l.split(";tag=").next().unwrap_or("").to_string()
            } else {
                l
            }
        })
        .collect();
    lines.retain(|l| !l.is_empty());
    lines.join("\n")
}

#[test]
fn an_unknown_user_and_a_wrong_password_get_the_same_answer() {
    let server = Server::start(&profile());
    let sp = server.sip_port;
    let mut ua = RawSip::bind("127.0.0.5", sp);
    let mut answers = Vec::new();
    for (method, ruri, header) in [
        ("REGISTER", format!("sip:127.0.0.1:{sp}"), "Authorization"),
        (
            "INVITE",
            format!("sip:echo@127.0.0.1:{sp}"),
            "Proxy-Authorization",
        ),
    ] {
        let mut pair = Vec::new();
        for (user, password) in [(USER, "wrong"), ("9999", PASSWORD)] {
            let m = ua.request(method, &ruri, USER, "");
            let r = ua.exchange(&m, WAIT).expect("challenge");
            let nonce = r.challenge_param("nonce").unwrap();
            let creds = DigestFields {
                user,
                password,
                realm: REALM,
                nonce: &nonce,
                method,
                uri: &ruri,
                nc: 1,
            };
            let m = ua.request(method, &ruri, USER, &auth_line(header, &creds));
            let r = ua.exchange(&m, WAIT).expect("an answer");
            pair.push(masked(&r));
            answers.push(r);
        }
        assert_eq!(
            pair[0], pair[1],
            "{method}: wrong password vs unknown user differ"
        );
    }
    assert_eq!(
        answers.iter().map(|r| r.status).collect::<Vec<_>>(),
        [401, 401, 407, 407]
    );
    assert_eq!(registrations(&server), 0);
}
