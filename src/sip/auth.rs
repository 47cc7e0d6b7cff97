//! Digest authentication of local users (REGISTER and calls): challenges with
//! stateless, expiring nonces, and constant-time verification.

use std::collections::HashMap;

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

    /// Header values for a 401/407, one per configured algorithm (RFC 8760).
    /// MD5 alone is the default: some phones (baresip 1.0's libre) fail the
    /// whole challenge when they meet a SHA-256 header they cannot answer.
    pub fn challenges(&self, now_unix: u64, stale: bool) -> Vec<String> {
        let nonce = self.nonces.issue(now_unix, &self.realm);
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

    pub fn check(&self, header: Option<&str>, method: &str, now_unix: u64) -> AuthOutcome {
        let Some(value) = header else {
            return AuthOutcome::Challenge {
                stale: false,
                reason: "no credentials",
            };
        };
        let resp = match DigestResponse::parse(value) {
            Ok(r) => r,
            Err(_) => {
                return AuthOutcome::Challenge {
                    stale: false,
                    reason: "unparsable credentials",
                }
            }
        };
        if resp.realm != self.realm {
            return AuthOutcome::Challenge {
                stale: false,
                reason: "wrong realm",
            };
        }
        let users = self.users.load();
        let Some(password) = users.get(&resp.username) else {
            return AuthOutcome::Challenge {
                stale: false,
                reason: "unknown user",
            };
        };
        let nonce_status = self.nonces.check(&resp.nonce, now_unix, &self.realm);
        if nonce_status == NonceStatus::Invalid {
            return AuthOutcome::Challenge {
                stale: false,
                reason: "nonce not issued by us",
            };
        }
        if !digest::verify(&resp, password, method) {
            return AuthOutcome::Challenge {
                stale: false,
                reason: "wrong password",
            };
        }
        if nonce_status == NonceStatus::Stale {
            // Right password on an expired nonce: RFC 2617 says retry with
            // stale=true so the phone answers without asking its user.
            return AuthOutcome::Challenge {
                stale: true,
                reason: "nonce expired",
            };
        }
        AuthOutcome::Authenticated(resp.username)
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

    /// What a phone sends back for the `alg_idx`-th challenge `a` issues
    /// at `now` (the nonce is deterministic for a key and a second).
    fn answer(a: &Authenticator, now: u64, user: &str, pw: &str, alg_idx: usize) -> String {
        let nonce = a.nonces.issue(now, &a.realm);
        let alg = a.algorithms[alg_idx];
        let challenge = &a.challenges(now, false)[alg_idx];
        assert!(
            challenge.contains(&format!("nonce=\"{nonce}\"")) && challenge.contains(alg.as_str()),
            "{challenge}"
        );
        authorization(alg, &a.realm, &nonce, user, pw)
    }

    /// An `Authorization` value with `qop=auth`, as a client computes it.
    fn authorization(alg: Algorithm, realm: &str, nonce: &str, user: &str, pw: &str) -> String {
        let (uri, nc, cnonce) = ("sip:agentline.test", "00000001", "abc");
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
                a.check(Some(&h), "REGISTER", 1001),
                AuthOutcome::Authenticated("1000".into())
            );
        }
    }

    #[test]
    fn wrong_password_unknown_user_and_forged_nonce_are_challenged() {
        let a = auth();
        let h = answer(&a, 1000, "1000", "nope", 0);
        assert!(matches!(
            a.check(Some(&h), "REGISTER", 1001),
            AuthOutcome::Challenge { stale: false, .. }
        ));
        let h = answer(&a, 1000, "2000", "pw", 0);
        assert!(matches!(
            a.check(Some(&h), "REGISTER", 1001),
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
            a.check(Some(&h), "REGISTER", 1001),
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
            a.check(Some(&h), "REGISTER", 1000 + 301),
            AuthOutcome::Challenge { stale: true, .. }
        ));
    }
}
