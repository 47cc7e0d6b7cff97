//! The built-in registrar's location store (RFC 3261 section 10.3): bindings
//! of a local user's address-of-record to contacts, with expiry, and the NAT
//! source each binding was learned from.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::SipTransport;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// The Contact URI exactly as the phone sent it.
    pub contact: String,
    /// Where its packets really came from (Via received/rport).
    pub source: SocketAddr,
    pub transport: SipTransport,
    pub call_id: String,
    pub cseq: u32,
    pub expires_at: Instant,
}

/// One contact of a REGISTER request, after the request was authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactUpdate {
    pub contact: String,
    /// Seconds granted (already clamped); 0 removes the binding.
    pub expires: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    /// RFC 3261 10.3 step 7: an older CSeq for the same Call-ID.
    #[error("REGISTER CSeq {got} is not newer than {have} for this Call-ID")]
    OutOfOrder { have: u32, got: u32 },
}

#[derive(Default)]
pub struct Registrar {
    bindings: Mutex<HashMap<String, Vec<Binding>>>,
}

impl Registrar {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Binding>>> {
        self.bindings.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies an authenticated REGISTER for `user` and returns its bindings
    /// afterwards. `remove_all` is the `Contact: *` with `Expires: 0` form.
    #[allow(clippy::too_many_arguments)]
    pub fn apply(
        &self,
        now: Instant,
        user: &str,
        updates: &[ContactUpdate],
        remove_all: bool,
        source: SocketAddr,
        transport: SipTransport,
        call_id: &str,
        cseq: u32,
    ) -> Result<Vec<Binding>, RegisterError> {
        let mut map = self.lock();
        let list = map.entry(user.to_string()).or_default();
        list.retain(|b| b.expires_at > now);
        if remove_all {
            list.clear();
        }
        for u in updates {
            if let Some(existing) = list.iter().find(|b| b.contact == u.contact) {
                if existing.call_id == call_id && cseq <= existing.cseq {
                    return Err(RegisterError::OutOfOrder {
                        have: existing.cseq,
                        got: cseq,
                    });
                }
            }
        }
        for u in updates {
            list.retain(|b| b.contact != u.contact);
            if u.expires > 0 {
                list.push(Binding {
                    contact: u.contact.clone(),
                    source,
                    transport,
                    call_id: call_id.to_string(),
                    cseq,
                    expires_at: now + Duration::from_secs(u.expires as u64),
                });
            }
        }
        let out = list.clone();
        if list.is_empty() {
            map.remove(user);
        }
        Ok(out)
    }

    /// Drops the bindings of users `keep` rejects (a reload removed them);
    /// returns how many went.
    pub fn retain_users(&self, keep: impl Fn(&str) -> bool) -> usize {
        let mut map = self.lock();
        let before: usize = map.values().map(Vec::len).sum();
        map.retain(|user, _| keep(user));
        before - map.values().map(Vec::len).sum::<usize>()
    }

    /// Bindings still valid at `now`, per user.
    pub fn count(&self, now: Instant) -> usize {
        let mut map = self.lock();
        map.retain(|_, l| {
            l.retain(|b| b.expires_at > now);
            !l.is_empty()
        });
        map.values().map(Vec::len).sum()
    }

    /// The learned source of a binding whose Contact has this host:port,
    /// for sending requests to phones behind NAT.
    pub fn source_for_contact_hostport(
        &self,
        now: Instant,
        hostport: &str,
    ) -> Option<(SocketAddr, SipTransport)> {
        self.lock().values().flatten().find_map(|b| {
            (b.expires_at > now && contact_hostport(&b.contact).as_deref() == Some(hostport))
                .then_some((b.source, b.transport))
        })
    }
}

/// `host:port` of a SIP URI in a Contact value, lower-cased, port 5060 when absent.
pub fn contact_hostport(contact: &str) -> Option<String> {
    let s = contact.trim();
    let s = s
        .find('<')
        .and_then(|i| s[i + 1..].find('>').map(|j| &s[i + 1..i + 1 + j]))
        .unwrap_or(s);
    let rest = s.strip_prefix("sip:").or_else(|| s.strip_prefix("sips:"))?;
    let rest = rest.rsplit_once('@').map(|(_, h)| h).unwrap_or(rest);
    let hp = rest.split([';', '?', '>']).next()?.to_ascii_lowercase();
    if hp.is_empty() {
        return None;
    }
    let has_port = if hp.starts_with('[') {
        hp.contains("]:")
    } else {
        hp.contains(':')
    };
    Some(if has_port { hp } else { format!("{hp}:5060") })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn up(c: &str, e: u32) -> ContactUpdate {
        ContactUpdate {
            contact: c.into(),
            expires: e,
        }
    }

    #[test]
    fn removed_users_lose_their_bindings() {
        let r = Registrar::default();
        let t0 = Instant::now();
        let src: SocketAddr = "198.51.100.1:5062".parse().unwrap();
        for (user, c) in [
            ("1000", "<sip:1000@10.0.0.5>"),
            ("1001", "<sip:1001@10.0.0.6>"),
        ] {
            r.apply(
                t0,
                user,
                &[up(c, 60)],
                false,
                src,
                SipTransport::Udp,
                user,
                1,
            )
            .unwrap();
        }
        assert_eq!(r.retain_users(|u| u == "1000"), 1);
        assert_eq!(r.count(t0), 1);
        assert_eq!(r.source_for_contact_hostport(t0, "10.0.0.6:5060"), None);
        assert!(r.source_for_contact_hostport(t0, "10.0.0.5:5060").is_some());
    }

    #[test]
    fn binding_expires_and_can_be_removed() {
        let r = Registrar::default();
        let t0 = Instant::now();
        let src: SocketAddr = "198.51.100.1:5062".parse().unwrap();
        let c = "<sip:1000@10.0.0.5:5062>";
        r.apply(
            t0,
            "1000",
            &[up(c, 60)],
            false,
            src,
            SipTransport::Udp,
            "a",
            1,
        )
        .unwrap();
        assert_eq!(r.count(t0), 1);
        assert_eq!(
            r.source_for_contact_hostport(t0, "10.0.0.5:5062"),
            Some((src, SipTransport::Udp))
        );
        assert_eq!(r.count(t0 + Duration::from_secs(61)), 0, "expired");
        r.apply(
            t0,
            "1000",
            &[up(c, 60)],
            false,
            src,
            SipTransport::Udp,
            "a",
            2,
        )
        .unwrap();
        let left = r
            .apply(
                t0,
                "1000",
                &[up(c, 0)],
                false,
                src,
                SipTransport::Udp,
                "a",
                3,
            )
            .unwrap();
        assert!(left.is_empty());
        assert_eq!(r.count(t0), 0);
    }

    #[test]
    fn refresh_replaces_and_wildcard_removes_all() {
        let r = Registrar::default();
        let t0 = Instant::now();
        let src: SocketAddr = "127.0.0.1:5062".parse().unwrap();
        for (i, c) in ["<sip:a@h1>", "<sip:a@h2>", "<sip:a@h1>"]
            .iter()
            .enumerate()
        {
            r.apply(
                t0,
                "a",
                &[up(c, 60)],
                false,
                src,
                SipTransport::Udp,
                "x",
                i as u32 + 1,
            )
            .unwrap();
        }
        assert_eq!(r.count(t0), 2);
        r.apply(t0, "a", &[], true, src, SipTransport::Udp, "x", 9)
            .unwrap();
        assert_eq!(r.count(t0), 0);
    }

    #[test]
    fn old_cseq_for_same_call_id_is_refused() {
        let r = Registrar::default();
        let t0 = Instant::now();
        let src: SocketAddr = "127.0.0.1:5062".parse().unwrap();
        r.apply(
            t0,
            "a",
            &[up("<sip:a@h>", 60)],
            false,
            src,
            SipTransport::Udp,
            "x",
            5,
        )
        .unwrap();
        assert_eq!(
            r.apply(
                t0,
                "a",
                &[up("<sip:a@h>", 60)],
                false,
                src,
                SipTransport::Udp,
                "x",
                4
            ),
            Err(RegisterError::OutOfOrder { have: 5, got: 4 })
        );
    }

    #[test]
    fn contact_hostport_handles_the_usual_shapes() {
        assert_eq!(
            contact_hostport("<sip:1000@10.0.0.5:5062;transport=udp>;expires=60").as_deref(),
            Some("10.0.0.5:5062")
        );
        assert_eq!(
            contact_hostport("sip:1000@Host.Example").as_deref(),
            Some("host.example:5060")
        );
        assert_eq!(
            contact_hostport("\"x\" <sip:[::1]:5070>").as_deref(),
            Some("[::1]:5070")
        );
        assert_eq!(contact_hostport("*"), None);
        assert_eq!(contact_hostport("<tel:+4144>"), None);
    }
}
