//! The thin hooks between the network and [`super::guard`]: the transport
//! whitelist (every UDP datagram and new TCP/TLS connection, before
//! rsipstack parses it or makes a transaction), the dispatcher's screening
//! of new requests (scanner User-Agents, banned sources in `403` mode),
//! and stateless final responses.
//!
//! Stateless answers matter under a flood: a challenge or refusal sent
//! through the transaction leaves rsipstack 0.7.14 a finished transaction
//! (and, for INVITE, a `waiting_ack` entry) for 32 s, and each of those
//! cleanups scans every `waiting_ack` entry - quadratic in the flood
//! (docs/upstream/rsipstack-waiting-ack.md). A stateless answer leaves
//! nothing behind: the transaction is dropped before it had a response.

use std::net::IpAddr;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Instant;

use rsipstack::sip::prelude::*;
use rsipstack::sip::{Header, SipMessage, StatusCode};
use rsipstack::transaction::make_tag;
use rsipstack::transaction::transaction::Transaction;
use rsipstack::transport::TransportWhitelist;
use tracing::{debug, info};

use super::guard::{BanReason, DropReason, Verdict};
use super::shared::Shared;
use crate::config::BanAction;

/// Sources never limited: `[sip] trusted`, `[security] trusted` and the
/// trunks' hosts.
pub fn exempt(shared: &Shared, ip: IpAddr) -> bool {
    let cfg = shared.cfg();
    cfg.security.is_trusted(ip) || cfg.is_trusted(ip) || shared.trunks.trunk_for(ip).is_some()
}

/// The transport layer's whitelist: asks the guard about each datagram or
/// connection. Built before [`Shared`] exists (the endpoint needs it), so it
/// reaches it through a cell filled once the server is up; until then all
/// traffic passes.
#[derive(Clone, Default)]
pub struct EdgeFilter(pub Arc<OnceLock<Weak<Shared>>>);

#[async_trait::async_trait]
impl TransportWhitelist for EdgeFilter {
    async fn allow(&self, ip: IpAddr) -> bool {
        match self.0.get().and_then(Weak::upgrade) {
            Some(shared) => admits(&shared, ip),
            None => true,
        }
    }
}

/// The guard's verdict on one datagram or new connection from `ip`: used by
/// the transport whitelist and by our own TCP accept loop.
pub fn admits(shared: &Shared, ip: IpAddr) -> bool {
    let cfg = shared.cfg();
    if !cfg.security.enabled {
        return true;
    }
    let exempt = exempt(shared, ip);
    let verdict = shared
        .guard
        .lock()
        .packet(ip, Instant::now(), &cfg.security, exempt);
    match verdict {
        Verdict::Pass => true,
        // In `403` mode a banned source's requests go on to the
        // dispatcher, which refuses them statelessly.
        Verdict::Drop(DropReason::Banned) => cfg.security.ban_action == BanAction::Forbidden,
        Verdict::Drop(_) => false,
    }
}

/// Screens a new out-of-dialog request before it is dispatched; false when
/// it was refused (answered or dropped) here.
pub fn screen(shared: &Shared, tx: Transaction, source: Option<IpAddr>) -> Option<Transaction> {
    let Some(ip) = source else {
        return Some(tx);
    };
    let cfg = shared.cfg();
    if !cfg.security.enabled {
        return Some(tx);
    }
    let now = Instant::now();
    if shared.guard.lock().is_banned(ip, now) {
        // Only reaches here in `403` mode (the whitelist drops otherwise).
        refuse(shared, tx, DropReason::Banned);
        return None;
    }
    let ua = tx
        .original
        .user_agent_header()
        .map(|h| h.value().to_string());
    if let Some(fragment) = ua.as_deref().and_then(|ua| cfg.security.scanner(ua)) {
        if !exempt(shared, ip) {
            info!(%ip, user_agent = ua.as_deref().unwrap_or_default(), fragment,
                "scanner User-Agent: source banned");
            {
                let mut g = shared.guard.lock();
                g.count(DropReason::Scanner);
                g.ban(ip, now, &cfg.security, BanReason::Scanner);
            }
            refuse(shared, tx, DropReason::Scanner);
            return None;
        }
    }
    Some(tx)
}

/// A failed authentication from `ip`; true (and the request refused) when
/// it banned the source, false when the caller should challenge as usual.
pub fn auth_failed(shared: &Shared, ip: IpAddr) -> bool {
    let cfg = shared.cfg();
    let exempt = exempt(shared, ip);
    shared
        .guard
        .lock()
        .auth_failed(ip, Instant::now(), &cfg.security, exempt)
}

/// Refuses `tx` as `ban_action` says: silence, or a stateless 403.
pub fn refuse(shared: &Shared, tx: Transaction, why: DropReason) {
    debug!(reason = why.as_str(), "request refused at the edge");
    match shared.cfg().security.ban_action {
        BanAction::Drop => drop(tx),
        BanAction::Forbidden => reply_stateless(tx, StatusCode::Forbidden, vec![]),
    }
}

/// Sends a final response without keeping transaction state: no
/// retransmission cache, no ACK wait. A retransmitted request is simply
/// answered again (as a stateless proxy would); the ACK to a non-2xx finds
/// no transaction and is absorbed by the endpoint.
pub fn reply_stateless(tx: Transaction, code: StatusCode, headers: Vec<Header>) {
    tokio::spawn(async move {
        let mut resp = tx.endpoint_inner.make_response(&tx.original, code, None);
        // make_response copies the request's version: a `SIP/7.0` request
        // must still be answered in SIP/2.0 (its 505).
        resp.version = rsipstack::sip::Version::V2;
        let tagged = resp
            .to_header()
            .ok()
            .filter(|to| to.tag().ok().flatten().is_none())
            .map(|to| to.with_tag(make_tag()));
        if let Some(to) = tagged {
            resp.headers.unique_push(to.into());
        }
        for h in headers {
            resp.headers.push(h);
        }
        let Some(conn) = tx.connection.clone() else {
            return;
        };
        let dest = if conn.is_reliable() {
            None
        } else {
            tx.endpoint_inner
                .get_destination_from_request(&tx.original)
                .await
        };
        if let Err(e) = conn.send(SipMessage::Response(resp), dest.as_ref()).await {
            debug!(error = %e, "stateless reply failed");
        }
        // `tx` is dropped here, never having responded: rsipstack keeps
        // nothing of it.
    });
}
