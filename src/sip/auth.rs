//! Digest authentication of local users (REGISTER and calls): challenges with
//! expiring nonces bound to the client's address, constant-time
//! verification, the digest `uri` checked against the Request-URI, and
//! per-nonce `nc` tracking so a captured Authorization cannot be replayed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use super::digest::{self, Algorithm, Challenge, DigestResponse, NonceIssuer, NonceStatus};
use crate::config::Credential;

/// The result of checking an `Authorization` / `Proxy-Authorization` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthOutcome {
    /// Right password for this user.
    Authenticated(String),
    /// Nothing usable was sent, or it was wrong: challenge again.
    Challenge { stale: bool, reason: &'static str },
}

fn users_of(creds: &[Credential]) -> HashMap<String, String> {
    creds
        .iter()
        .map(|c| (c.name.clone(), c.password.clone()))
        .collect()
}

pub struct Authenticator {
    realm: String,
    /// Swapped by a reload ([`Authenticator::set_users`]).
    users: arc_swap::ArcSwap<HashMap<String, String>>,
    nonces: NonceIssuer,
    algorithms: Vec<Algorithm>,
    /// Highest `nc` accepted per nonce (and when it was first used), so a
    /// replayed Authorization is refused. Only nonces that authenticated
    /// someone are kept, so an attacker cannot fill it.
    counts: Mutex<HashMap<String, (u32, u64)>>,
}

/// Nonce counts kept at most; past this the expired ones are forgotten.
const MAX_TRACKED_NONCES: usize = 50_000;

/// What an unknown user's response is checked against, so that it costs
/// the same as a known user's wrong password.
const NO_PASSWORD: &str = "\u{0}no such user\u{0}";

impl AuthOutcome {
    /// A failed attempt (counted towards a ban): wrong credentials of any
    /// kind, not a first request without them nor a right password on an
    /// expired nonce.
    pub fn is_failure(&self) -> bool {
        matches!(self, AuthOutcome::Challenge { reason, .. }
            if *reason != "no credentials" && *reason != "nonce expired")
    }
}

/// The digest `uri` names the request's Request-URI (RFC 3261 22.4): the
/// same text, or the same URI once both are parsed (phones differ in case
/// and parameter spelling).
fn uri_matches(digest_uri: &str, request_uri: &str) -> bool {
    if digest_uri == request_uri {
        return true;
    }
    match (
        rsipstack::sip::Uri::try_from(digest_uri),
        rsipstack::sip::Uri::try_from(request_uri),
    ) {
        (Ok(a), Ok(b)) => a.to_string() == b.to_string(),
        _ => false,
    }
}

impl Authenticator {
    /// `algorithms`: what challenges offer, in order of preference. Responses
    /// with either MD5 or SHA-256 are verified whatever is offered.
    pub fn new(
        realm: &str,
        creds: &[Credential],
        nonce_lifetime_s: u64,
        algorithms: &[Algorithm],
    ) -> Self {
        Authenticator {
            realm: realm.to_string(),
            users: arc_swap::ArcSwap::from_pointee(users_of(creds)),
            nonces: NonceIssuer::random(nonce_lifetime_s),
            algorithms: algorithms.to_vec(),
            counts: Mutex::default(),
        }
    }

    /// Replaces the users (a reload); nonces already issued stay valid.
    pub fn set_users(&self, creds: &[Credential]) {
        self.users.store(std::sync::Arc::new(users_of(creds)));
    }

    pub fn realm(&self) -> &str {
        &self.realm
    }

    pub fn has_user(&self, name: &str) -> bool {
        self.users.load().contains_key(name)
    }

    /// Header values for a 401/407 to a client at `source`, one per
    /// configured algorithm (RFC 8760), all with one nonce bound to that
    /// address. MD5 alone is the default: some phones (baresip 1.0's libre)
    /// fail the whole challenge when they meet a SHA-256 header they cannot
    /// answer.
    pub fn challenges(&self, now_unix: u64, stale: bool, source: IpAddr) -> Vec<String> {
        let nonce = self.nonces.issue_for(now_unix, &self.realm, source);
        self.algorithms
            .iter()
            .copied()
            .map(|algorithm| {
                Challenge {
                    realm: self.realm.clone(),
                    nonce: nonce.clone(),
                    opaque: None,
                    algorithm,
                    qop_auth: true,
                    stale,
                }
                .to_header_value()
            })
            .collect()
    }

    /// Checks an `Authorization` / `Proxy-Authorization` value sent with a
    /// `method` request for `request_uri` from `source`. An unknown user
    /// and a wrong password take the same path and get the same answer.
    pub fn check(
        &self,
        header: Option<&str>,
        method: &str,
        request_uri: &str,
        source: IpAddr,
        now_unix: u64,
    ) -> AuthOutcome {
        let challenge = |stale, reason| AuthOutcome::Challenge { stale, reason };
        let Some(value) = header else {
            return challenge(false, "no credentials");
        };
        let Ok(resp) = DigestResponse::parse(value) else {
            return challenge(false, "unparsable credentials");
        };
        if resp.realm != self.realm {
            return challenge(false, "wrong realm");
        }
        let nonce_status = self
            .nonces
            .check_for(&resp.nonce, now_unix, &self.realm, source);
        if nonce_status == NonceStatus::Invalid {
            return challenge(false, "nonce not issued by us");
        }
        if !uri_matches(&resp.uri, request_uri) {
            return challenge(false, "digest uri is not the Request-URI");
        }
        let users = self.users.load();
        let (password, known) = match users.get(&resp.username) {
            Some(p) => (p.as_str(), true),
            None => (NO_PASSWORD, false),
        };
        let right = digest::verify(&resp, password, method);
        if !known {
            return challenge(false, "unknown user");
        }
        if !right {
            return challenge(false, "wrong password");
        }
        if nonce_status == NonceStatus::Stale {
            // Right password on an expired nonce: RFC 2617 says retry with
            // stale=true so the phone answers without asking its user.
            return challenge(true, "nonce expired");
        }
        if !self.count_nonce_use(&resp.nonce, resp.nc.unwrap_or(0), now_unix) {
            // A replay (or a phone that lost count): a fresh nonce lets a
            // real phone retry at once; a replayer cannot answer it.
            return challenge(true, "nonce count replayed");
        }
        AuthOutcome::Authenticated(resp.username)
    }

    /// Records `nc` for `nonce`; false when it is not above the last one
    /// accepted (without qop there is no count: a nonce is good once).
    fn count_nonce_use(&self, nonce: &str, nc: u32, now_unix: u64) -> bool {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((last, _)) = counts.get(nonce) {
            if nc <= *last {
                return false;
            }
        }
        if counts.len() >= MAX_TRACKED_NONCES {
            // Counts outlive their nonce's lifetime by a margin: a nonce
            // used after it is stale is refused anyway.
            let keep = self.nonces.lifetime_secs().saturating_mul(2).max(60);
            counts.retain(|_, (_, first)| now_unix.saturating_sub(*first) <= keep);
        }
        let first = counts.get(nonce).map_or(now_unix, |(_, f)| *f);
        counts.insert(nonce.to_string(), (nc, first));
        true
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn auth() -> Authenticator {
        Authenticator::new(
            "agentline.test",
            &[Credential {
                name: "1000".into(),
                password: "pw".into(),
            }],
            300,
            &[Algorithm::Md5, Algorithm::Sha256],
        )
    }

    const URI: &str = "sip:agentline.test";

    fn phone() -> IpAddr {
        "192.0.2.10".parse().unwrap()
    }

    /// The nonce in a challenge header value.
    fn nonce_of(challenge: &str) -> String {
        let start = challenge.find("nonce=\"").unwrap() + 7;
        let len = challenge[start..].find('"').unwrap();
        challenge[start..start + len].to_string()
    }

    /// What a phone at [`phone`] sends back for the `alg_idx`-th challenge
    /// `a` issues at `now`.
    fn answer(a: &Authenticator, now: u64, user: &str, pw: &str, alg_idx: usize) -> String {
        let alg = a.algorithms[alg_idx];
        let challenge = &a.challenges(now, false, phone())[alg_idx];
        assert!(challenge.contains(alg.as_str()), "{challenge}");
        authorization(alg, &a.realm, &nonce_of(challenge), user, pw)
    }

    /// An `Authorization` value with `qop=auth`, as a client computes it.
    fn authorization(alg: Algorithm, realm: &str, nonce: &str, user: &str, pw: &str) -> String {
        authorization_nc(alg, realm, nonce, user, pw, URI, "00000001")
    }

    /// The same for `uri` and nonce count `nc`.
    fn authorization_nc(
        alg: Algorithm,
        realm: &str,
        nonce: &str,
        user: &str,
        pw: &str,
        uri: &str,
        nc: &str,
    ) -> String {
        let cnonce = "abc";
        let response = digest::compute_response(
            alg,
            user,
            realm,
            pw,
            "REGISTER",
            uri,
            nonce,
            Some((nc, cnonce, "auth")),
        );
        format!(
            "Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", \
             response=\"{response}\", algorithm={alg}, qop=auth, nc={nc}, cnonce=\"{cnonce}\""
        )
    }

    #[test]
    fn right_password_authenticates_with_md5_and_sha256() {
        let a = auth();
        for idx in 0..2 {
            let h = answer(&a, 1000, "1000", "pw", idx);
            assert_eq!(
                a.check(Some(&h), "REGISTER", URI, phone(), 1001),
                AuthOutcome::Authenticated("1000".into())
            );
        }
    }

    #[test]
    fn wrong_password_unknown_user_and_forged_nonce_are_challenged() {
        let a = auth();
        let h = answer(&a, 1000, "1000", "nope", 0);
        assert!(matches!(
            a.check(Some(&h), "REGISTER", URI, phone(), 1001),
            AuthOutcome::Challenge { stale: false, .. }
        ));
        let h = answer(&a, 1000, "2000", "pw", 0);
        assert!(matches!(
            a.check(Some(&h), "REGISTER", URI, phone(), 1001),
            AuthOutcome::Challenge { stale: false, .. }
        ));
        let h = authorization(
            Algorithm::Md5,
            "agentline.test",
            "0123456789abcdef",
            "1000",
            "pw",
        );
        assert_eq!(
            a.check(Some(&h), "REGISTER", URI, phone(), 1001),
            AuthOutcome::Challenge {
                stale: false,
                reason: "nonce not issued by us"
            }
        );
    }

    #[test]
    fn expired_nonce_with_right_password_is_stale() {
        let a = auth();
        let h = answer(&a, 1000, "1000", "pw", 0);
        assert!(matches!(
            a.check(Some(&h), "REGISTER", URI, phone(), 1000 + 301),
            AuthOutcome::Challenge { stale: true, .. }
        ));
    }

    #[test]
    fn unknown_user_and_wrong_password_get_the_same_answer() {
        let a = auth();
        let wrong_pw = answer(&a, 1000, "1000", "nope", 0);
        let unknown = answer(&a, 1000, "2000", "pw", 0);
        let (x, y) = (
            a.check(Some(&wrong_pw), "REGISTER", URI, phone(), 1001),
            a.check(Some(&unknown), "REGISTER", URI, phone(), 1001),
        );
        // Only the log reason differs; what the phone sees (a challenge,
        // not stale) and what counts towards a ban are the same.
        assert!(
            matches!(x, AuthOutcome::Challenge { stale: false, .. }),
            "{x:?}"
        );
        assert!(
            matches!(y, AuthOutcome::Challenge { stale: false, .. }),
            "{y:?}"
        );
        assert!(x.is_failure() && y.is_failure());
        // Also on an expired nonce.
        let x = a.check(Some(&wrong_pw), "REGISTER", URI, phone(), 1000 + 301);
        let y = a.check(Some(&unknown), "REGISTER", URI, phone(), 1000 + 301);
        assert!(
            matches!(x, AuthOutcome::Challenge { stale: false, .. }),
            "{x:?}"
        );
        assert!(
            matches!(y, AuthOutcome::Challenge { stale: false, .. }),
            "{y:?}"
        );
    }

    #[test]
    fn replayed_or_lower_nonce_count_is_refused_and_a_higher_one_accepted() {
        let a = auth();
        let nonce = nonce_of(&a.challenges(1000, false, phone())[0]);
        let with_nc =
            |nc: &str| authorization_nc(Algorithm::Md5, &a.realm, &nonce, "1000", "pw", URI, nc);
        let ok = AuthOutcome::Authenticated("1000".into());
        assert_eq!(
            a.check(Some(&with_nc("00000001")), "REGISTER", URI, phone(), 1001),
            ok
        );
        let replay = a.check(Some(&with_nc("00000001")), "REGISTER", URI, phone(), 1002);
        assert_eq!(
            replay,
            AuthOutcome::Challenge {
                stale: true,
                reason: "nonce count replayed"
            }
        );
        assert!(replay.is_failure());
        assert_eq!(
            a.check(Some(&with_nc("0000000a")), "REGISTER", URI, phone(), 1003),
            ok
        );
        assert!(matches!(
            a.check(Some(&with_nc("00000009")), "REGISTER", URI, phone(), 1004),
            AuthOutcome::Challenge { stale: true, .. }
        ));
        assert_eq!(
            a.check(Some(&with_nc("0000000b")), "REGISTER", URI, phone(), 1005),
            ok
        );
    }

    #[test]
    fn credentials_from_another_address_or_for_another_uri_are_refused() {
        let a = auth();
        let h = answer(&a, 1000, "1000", "pw", 0);
        let attacker: IpAddr = "198.51.100.7".parse().unwrap();
        let out = a.check(Some(&h), "REGISTER", URI, attacker, 1001);
        assert_eq!(
            out,
            AuthOutcome::Challenge {
                stale: false,
                reason: "nonce not issued by us"
            }
        );
        assert!(out.is_failure());
        let out = a.check(
            Some(&h),
            "REGISTER",
            "sip:2000@agentline.test",
            phone(),
            1001,
        );
        assert_eq!(
            out,
            AuthOutcome::Challenge {
                stale: false,
                reason: "digest uri is not the Request-URI"
            }
        );
        // The genuine request still works (the refusals did not use its count).
        assert_eq!(
            a.check(Some(&h), "REGISTER", URI, phone(), 1001),
            AuthOutcome::Authenticated("1000".into())
        );
        // No credentials and a stale nonce are not failures.
        assert!(!a.check(None, "REGISTER", URI, phone(), 1001).is_failure());
        let h = answer(&a, 1000, "1000", "pw", 0);
        assert!(!a
            .check(Some(&h), "REGISTER", URI, phone(), 1400)
            .is_failure());
    }

    #[test]
    fn digest_uri_may_differ_in_spelling_only() {
        assert!(uri_matches(
            "sip:echo@127.0.0.1:5060",
            "sip:echo@127.0.0.1:5060"
        ));
        assert!(uri_matches(
            "sip:echo@127.0.0.1:5060;transport=tcp",
            "sip:echo@127.0.0.1:5060;transport=TCP"
        ));
        assert!(!uri_matches(
            "sip:echo@127.0.0.1:5060",
            "sip:demo@127.0.0.1:5060"
        ));
        assert!(!uri_matches("sip:echo@127.0.0.1", "sip:echo@127.0.0.2"));
    }
}
