//! The SIP side of the server: rsipstack endpoint and transports, the
//! dispatch of new transactions (REGISTER, OPTIONS, INVITE, in-dialog
//! requests), and call admission. Each admitted call runs in its own task
//! ([`super::call`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rsipstack::dialog::dialog_layer::DialogLayer;
use rsipstack::sip::prelude::*;
use rsipstack::sip::{Header, Method, Request, StatusCode};
use rsipstack::transaction::transaction::Transaction;
use rsipstack::transport::connection::SipConnection;
use rsipstack::transport::tls::{TlsConfig, TlsListenerConnection};
use rsipstack::transport::{udp::UdpConnection, TransportLayer};
use rsipstack::EndpointBuilder;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::auth::{AuthOutcome, Authenticator};
use super::call::{self, CallSetup};
use super::registrar::{ContactUpdate, Registrar};
use super::shared::LocatorRef;
pub use super::shared::{reply_and_finish, sip_addr, NatLocator, Shared};
use crate::calls::CallRegistry;
use crate::config::{Config, Credential, PemKind, SipTransport};
use crate::sdp;
use crate::sip::ports::PortPool;

#[derive(Debug, thiserror::Error)]
pub enum SipError {
    #[error("SIP listener {addr}: {message}")]
    Listen { addr: String, message: String },
    #[error("SIP stack: {0}")]
    Stack(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error(transparent)]
    Webhooks(#[from] crate::agent::webhooks::WebhookError),
}

/// What the control API and the shutdown path need from the SIP side.
#[derive(Clone)]
pub struct SipHandle {
    pub shared: Arc<Shared>,
    pub stop: CancellationToken,
    /// Stops trunk registrations (they un-REGISTER) before the endpoint goes.
    pub trunks_stop: CancellationToken,
    pub trunk_tasks: Arc<std::sync::Mutex<Vec<super::trunk::TrunkTask>>>,
    /// What a trunk registration started later (a reload) needs.
    pub(super) endpoint: rsipstack::transaction::endpoint::EndpointInnerRef,
    pub(super) first_udp: Option<UdpConnection>,
}

impl SipHandle {
    pub fn dialog_count(&self) -> usize {
        self.shared.dialogs.len()
    }
    pub fn registration_count(&self) -> usize {
        self.shared.registrar.count(Instant::now())
    }
    /// What rsipstack holds: running and finished (cached for
    /// retransmissions) transactions, and INVITEs waiting for their ACK.
    pub fn transaction_stats(&self) -> serde_json::Value {
        let st = self.endpoint.get_stats();
        serde_json::json!({
            "running": st.running_transactions,
            "finished": st.finished_transactions,
            "waiting_ack": st.waiting_ack,
        })
    }
}

/// Reads a PEM file named by the profile (checked by the profile's
/// validation too; read again here for its bytes), with the key in the error.
fn read_pem(path: &std::path::Path, key: &str, kind: PemKind) -> Result<Vec<u8>, SipError> {
    crate::config::read_pem(path, kind).map_err(|e| SipError::Tls(format!("{key} = {e}")))
}

/// The IP to advertise for a listener bound to `bind`.
fn advertised_ip(cfg: &Config, bind: IpAddr) -> IpAddr {
    if let Some(ip) = cfg.external_ip {
        return ip;
    }
    if !bind.is_unspecified() {
        return bind;
    }
    // The address the kernel would use to reach the outside; no packet is
    // sent by connecting a UDP socket.
    std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| {
            s.connect("192.0.2.1:9")?;
            s.local_addr()
        })
        .map(|a| a.ip())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]))
}

/// Binds the listeners, starts the endpoint and the dispatcher.
pub async fn start(
    cfg: Arc<Config>,
    creds: &[Credential],
    trunk_passwords: Vec<String>,
    calls: CallRegistry,
) -> Result<SipHandle, SipError> {
    let stop = CancellationToken::new();
    let tl = TransportLayer::new(stop.child_token());
    // Phones that register over TCP without keep-alives would otherwise be
    // dropped after rsipstack's 300 s idle timeout.
    tl.set_stream_idle_timeout(Duration::from_secs(3600));
    // [security]: every datagram and connection passes the guard before
    // rsipstack parses it (banned and flooding sources are dropped here).
    let edge = super::edge::EdgeFilter::default();
    tl.set_whitelist(edge.clone());
    let size_limit = super::message_size::LimitSource::default();
    // TLS connections we open (trunks) verify the peer against these anchors.
    if cfg.trunks.iter().any(|t| t.transport == SipTransport::Tls) {
        let ca = read_pem(&cfg.tls_ca, "sip.tls_ca", PemKind::Certificate)?;
        tl.set_tls_config(TlsConfig {
            ca_certs: Some(ca),
            ..Default::default()
        });
    }
    let first_bind = cfg.sip_listen[0].addr.ip();
    let adv_ip = advertised_ip(&cfg, first_bind);
    let mut contacts = Vec::new();
    let mut first_udp: Option<UdpConnection> = None;
    let mut tcp_listeners = Vec::new();
    for l in &cfg.sip_listen {
        let adv = SocketAddr::new(advertised_ip(&cfg, l.addr.ip()), l.addr.port());
        let external = (cfg.external_ip.is_some() || l.addr.ip().is_unspecified()).then_some(adv);
        match l.transport {
            SipTransport::Udp => {
                // Our socket: it drops datagrams over max_message_bytes.
                let sock = super::message_size::LimitedUdp::bind(l.addr, size_limit.clone())
                    .map_err(|e| SipError::Listen {
                        addr: l.to_string(),
                        message: e.to_string(),
                    })?;
                let conn =
                    UdpConnection::from_socket(Arc::new(sock), external, Some(stop.child_token()))
                        .await
                        .map_err(|e| SipError::Listen {
                            addr: l.to_string(),
                            message: e.to_string(),
                        })?;
                if first_udp.is_none() {
                    first_udp = Some(conn.clone());
                }
                tl.add_transport(conn.into());
                contacts.push((SipTransport::Udp, format!("sip:agentline@{adv}")));
            }
            SipTransport::Tls => {
                let cert = read_pem(&cfg.tls_cert, "sip.tls_cert", PemKind::Certificate)?;
                let key = read_pem(&cfg.tls_key, "sip.tls_key", PemKind::PrivateKey)?;
                std::net::TcpListener::bind(l.addr).map_err(|e| SipError::Listen {
                    addr: l.to_string(),
                    message: e.to_string(),
                })?;
                let conn = TlsListenerConnection::new(
                    l.addr,
                    external,
                    TlsConfig {
                        cert: Some(cert),
                        key: Some(key),
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| SipError::Listen {
                    addr: l.to_string(),
                    message: e.to_string(),
                })?;
                tl.add_transport(conn.into());
                contacts.push((
                    SipTransport::Tls,
                    format!("sip:agentline@{adv};transport=tls"),
                ));
            }
            SipTransport::Tcp => {
                // Our own accept loop (per-source limit, back-off on EMFILE):
                // see `tcp_listener`; started once the endpoint runs.
                let listener =
                    std::net::TcpListener::bind(l.addr).map_err(|e| SipError::Listen {
                        addr: l.to_string(),
                        message: e.to_string(),
                    })?;
                let local = rsipstack::transport::SipAddr {
                    r#type: Some(rsipstack::sip::Transport::Tcp),
                    addr: external.unwrap_or(l.addr).into(),
                };
                tcp_listeners.push((listener, local));
                contacts.push((
                    SipTransport::Tcp,
                    format!("sip:agentline@{adv};transport=tcp"),
                ));
            }
        }
        info!(listen = %l, advertised = %adv, "SIP listener");
    }

    let nat = Arc::new(NatLocator::default());
    let mut builder = EndpointBuilder::new();
    builder
        .with_option(rsipstack::transaction::endpoint::EndpointOption {
            // Call-IDs we make say who made them (rsipstack's default is its vendor's domain).
            callid_suffix: Some(cfg.domain.clone()),
            ..Default::default()
        })
        .with_user_agent(&cfg.user_agent)
        .with_cancel_token(stop.clone())
        .with_transport_layer(tl)
        .with_target_locator(Box::new(LocatorRef(nat.clone())));
    let ep = builder.build();
    let mut incoming = ep
        .incoming_transactions()
        .map_err(|e| SipError::Stack(e.to_string()))?;
    let dialogs = Arc::new(DialogLayer::new(ep.inner.clone()));
    let inner = ep.inner.clone();
    tokio::spawn(async move {
        if let Err(e) = inner.serve().await {
            warn!(error = %e, "SIP endpoint stopped");
        }
    });

    let webhooks = match &cfg.webhooks {
        Some(w) => Some(crate::agent::webhooks::Webhooks::new(w)?),
        None => None,
    };
    let shared = Arc::new(Shared {
        webhooks: arc_swap::ArcSwapOption::new(webhooks.map(Arc::new)),
        breakers: crate::agent::fallback::CircuitBreakers::new(),
        overload: Arc::default(),
        guard: Arc::default(),
        tcp_flows: Default::default(),
        webrtc: Default::default(),
        auth: Authenticator::new(
            &cfg.domain,
            creds,
            cfg.nonce_lifetime_s,
            &cfg.auth_algorithms,
        ),
        registrar: Registrar::default(),
        calls,
        ports: PortPool::new(cfg.rtp_ports, cfg.rtp_bind),
        dialogs,
        advertised_ip: adv_ip,
        contacts,
        draining: CancellationToken::new(),
        nat: nat.clone(),
        trunks: Arc::new(super::trunk::Trunks::new(&cfg.trunks, &trunk_passwords)),
        config: arc_swap::ArcSwap::new(cfg),
    });
    let _ = nat.registrar.set(shared.clone());
    let _ = edge.0.set(Arc::downgrade(&shared));
    let _ = size_limit.0.set(Arc::downgrade(&shared));
    for (listener, local) in tcp_listeners {
        super::tcp_listener::spawn(
            listener,
            local,
            ep.inner.clone(),
            Arc::downgrade(&shared),
            stop.clone(),
        )
        .map_err(|e| SipError::Stack(e.to_string()))?;
    }

    let judge = shared.clone();
    tokio::spawn(super::overload::run(
        shared.overload.clone(),
        move || {
            let c = judge.cfg();
            super::overload::Limits {
                max_cpu: c.max_cpu,
                max_media_lag_ms: f64::from(c.max_media_lag_ms),
            }
        },
        stop.clone(),
    ));
    let disp = shared.clone();
    tokio::spawn(async move {
        while let Some(tx) = incoming.recv().await {
            dispatch(&disp, tx);
        }
        debug!("SIP dispatcher stopped");
    });
    let handle = SipHandle {
        shared,
        stop,
        trunks_stop: CancellationToken::new(),
        trunk_tasks: Arc::default(),
        endpoint: ep.inner.clone(),
        first_udp,
    };
    for (t, pw) in handle
        .shared
        .cfg()
        .trunks
        .iter()
        .zip(trunk_passwords.iter())
    {
        handle.start_trunk(t, pw);
    }
    Ok(handle)
}

pub(crate) fn to_tag(req: &Request) -> Option<String> {
    req.to_header()
        .ok()
        .and_then(|t| t.tag().ok().flatten())
        .map(|t| t.to_string())
}

fn dispatch(shared: &Arc<Shared>, tx: Transaction) {
    let Some(tx) = super::sanity::check_version(tx) else {
        return;
    };
    if to_tag(&tx.original).is_some() {
        // In-dialog: BYE, re-INVITE, INFO, UPDATE, OPTIONS ...
        match shared.dialogs.match_dialog(&tx) {
            Some(mut d) => {
                let Some(mut tx) = super::sanity::check_in_dialog(shared, tx) else {
                    return;
                };
                tokio::spawn(async move {
                    if let Err(e) = d.handle(&mut tx).await {
                        debug!(error = %e, "in-dialog request failed");
                    }
                });
            }
            None => reply_and_finish(tx, StatusCode::CallTransactionDoesNotExist, vec![]),
        }
        return;
    }
    let source = source_of(&tx.original).map(|(a, _)| a.ip());
    let Some(tx) = super::edge::screen(shared, tx, source) else {
        return;
    };
    let Some(tx) = super::sanity::check_initial(shared, tx) else {
        return;
    };
    match tx.original.method {
        Method::Register => {
            let shared = shared.clone();
            tokio::spawn(async move { handle_register(&shared, tx).await });
        }
        Method::Options => {
            // A dispatcher's health probe: a draining or overloaded node
            // says 503 so that new calls go elsewhere.
            let busy = shared.draining.is_cancelled() || shared.overload.overloaded();
            let code = if busy {
                StatusCode::ServiceUnavailable
            } else {
                StatusCode::OK
            };
            reply_and_finish(tx, code, capability_headers())
        }
        Method::Invite => on_invite(shared, tx),
        Method::Ack => {}
        Method::Bye | Method::Cancel => {
            reply_and_finish(tx, StatusCode::CallTransactionDoesNotExist, vec![])
        }
        _ => reply_and_finish(tx, StatusCode::MethodNotAllowed, capability_headers()),
    }
}

pub fn capability_headers() -> Vec<Header> {
    vec![
        Header::Allow("INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, REGISTER".into()),
        Header::Accept("application/sdp".into()),
    ]
}

/// Where the request really came from: Via `received`/`rport` as stamped by
/// the transport layer, else the sent-by address.
pub fn source_of(req: &Request) -> Option<(SocketAddr, SipTransport)> {
    let via = req.via_header().ok()?;
    let (transport, hp) = SipConnection::parse_target_from_via(via).ok()?;
    let addr: SocketAddr = hp.try_into().ok()?;
    let t = match transport {
        rsipstack::sip::Transport::Tcp => SipTransport::Tcp,
        rsipstack::sip::Transport::Tls => SipTransport::Tls,
        _ => SipTransport::Udp,
    };
    Some((addr, t))
}

fn now_unix() -> u64 {
    crate::calls::unix_ms() / 1000
}

pub(crate) fn header_value(req: &Request, name: &str) -> Option<String> {
    req.headers.iter().find_map(|h| match (name, h) {
        ("Authorization", Header::Authorization(v)) => Some(v.value().to_string()),
        ("Proxy-Authorization", Header::ProxyAuthorization(v)) => Some(v.value().to_string()),
        _ => None,
    })
}

/// 401 with WWW-Authenticate (registrar) or 407 with Proxy-Authenticate
/// (calls), one header per configured digest algorithm.
/// Sent statelessly ([`super::edge::reply_stateless`]): a flood of
/// unauthenticated requests leaves no transaction state behind.
fn challenge(shared: &Shared, tx: Transaction, stale: bool, proxy: bool, source: IpAddr) {
    let values = shared
        .auth
        .challenges(now_unix(), stale, source)
        .into_iter();
    let (code, headers) = if proxy {
        (
            StatusCode::ProxyAuthenticationRequired,
            values
                .map(|v| Header::ProxyAuthenticate(v.into()))
                .collect(),
        )
    } else {
        (
            StatusCode::Unauthorized,
            values.map(|v| Header::WwwAuthenticate(v.into())).collect(),
        )
    };
    super::edge::reply_stateless(tx, code, headers);
}

async fn handle_register(shared: &Arc<Shared>, mut tx: Transaction) {
    let req = tx.original.clone();
    let Some((source, transport)) = source_of(&req) else {
        reply_and_finish(tx, StatusCode::BadRequest, vec![]);
        return;
    };
    let auth = header_value(&req, "Authorization");
    let outcome = shared.auth.check(
        auth.as_deref(),
        "REGISTER",
        &req.uri.to_string(),
        source.ip(),
        now_unix(),
    );
    let user = match outcome {
        AuthOutcome::Authenticated(u) => u,
        AuthOutcome::Challenge { stale, reason } => {
            if auth.is_some() {
                info!(reason, %source, "REGISTER rejected");
            }
            if outcome.is_failure() && super::edge::auth_failed(shared, source.ip()) {
                super::edge::refuse(shared, tx, super::guard::DropReason::Banned);
                return;
            }
            challenge(shared, tx, stale, false, source.ip());
            return;
        }
    };
    let aor_user = req
        .to_header()
        .ok()
        .and_then(|t| t.uri().ok())
        .and_then(|u| u.user().map(str::to_string));
    if aor_user.as_deref() != Some(user.as_str()) {
        // Authenticated as one user but registering another's address.
        reply_and_finish(tx, StatusCode::Forbidden, vec![]);
        return;
    }
    let default_expires = req
        .expires_header()
        .and_then(|e| e.value().trim().parse::<u32>().ok());
    let raw_contacts: Vec<String> = req
        .contact_headers()
        .iter()
        .map(|c| c.value().to_string())
        .collect();
    let remove_all = raw_contacts.iter().any(|c| c.trim() == "*");
    if remove_all && (raw_contacts.len() != 1 || default_expires != Some(0)) {
        reply_and_finish(tx, StatusCode::BadRequest, vec![]);
        return;
    }
    let typed = if remove_all {
        Vec::new()
    } else {
        match req.typed_contact_headers() {
            Ok(v) => v,
            Err(_) => {
                reply_and_finish(tx, StatusCode::BadRequest, vec![]);
                return;
            }
        }
    };
    let cfg = shared.cfg();
    let mut updates = Vec::new();
    for c in &typed {
        let asked = c.expires().or(default_expires).unwrap_or(3600);
        if asked != 0 && asked < cfg.min_expires {
            reply_and_finish(
                tx,
                StatusCode::IntervalTooBrief,
                vec![Header::MinExpires(cfg.min_expires.to_string().into())],
            );
            return;
        }
        updates.push(ContactUpdate {
            contact: c.uri.to_string(),
            expires: asked.min(cfg.max_expires),
        });
    }
    let call_id = req
        .call_id_header()
        .map(|c| c.value().to_string())
        .unwrap_or_default();
    let cseq = req
        .cseq_header()
        .ok()
        .and_then(|c| c.seq().ok())
        .unwrap_or(0);
    let now = Instant::now();
    match shared.registrar.apply(
        now, &user, &updates, remove_all, source, transport, &call_id, cseq,
    ) {
        Ok(bindings) => {
            let mut headers: Vec<Header> = bindings
                .iter()
                .map(|b| {
                    let left = b.expires_at.saturating_duration_since(now).as_secs();
                    Header::Contact(format!("<{}>;expires={left}", b.contact).into())
                })
                .collect();
            headers.push(Header::Date(httpdate_now().into()));
            info!(user, %source, contacts = bindings.len(), "registered");
            if transport == SipTransport::Tcp {
                shared.tcp_flows.authenticated(source);
            }
            if let Err(e) = tx.reply_with(StatusCode::OK, headers, None).await {
                debug!(error = %e, "REGISTER reply failed");
            }
        }
        Err(e) => {
            debug!(error = %e, "REGISTER refused");
            reply_and_finish(tx, StatusCode::ServerInternalError, vec![]);
        }
    }
}

/// RFC 7231 IMF-fixdate, without pulling in a date crate.
fn httpdate_now() -> String {
    let c = crate::clock::civil(now_unix() as i64 * 1000);
    let weekday = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"][c.weekday as usize % 7];
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][(c.month as usize).clamp(1, 12) - 1];
    format!(
        "{weekday}, {:02} {month} {} {:02}:{:02}:{:02} GMT",
        c.day, c.year, c.hour, c.minute, c.second
    )
}

fn on_invite(shared: &Arc<Shared>, tx: Transaction) {
    let req = &tx.original;
    if shared.draining.is_cancelled() {
        reply_and_finish(tx, StatusCode::ServiceUnavailable, vec![]);
        return;
    }
    let Some((source, transport)) = source_of(req) else {
        reply_and_finish(tx, StatusCode::BadRequest, vec![]);
        return;
    };
    // Who may call: trusted networks, or anyone answering a digest
    // challenge for a local user. A registered phone is challenged too (as
    // Asterisk does): a source address alone proves nothing over UDP.
    // A trunk's INVITEs (from its host or allow-list) are not challenged:
    // providers authenticate by address towards us.
    let trunk = shared.trunks.trunk_for(source.ip());
    let cfg = shared.cfg();
    let caller_user = if trunk.is_some() || cfg.is_trusted(source.ip()) {
        None
    } else {
        let cred = header_value(req, "Proxy-Authorization");
        let outcome = shared.auth.check(
            cred.as_deref(),
            "INVITE",
            &req.uri.to_string(),
            source.ip(),
            now_unix(),
        );
        match outcome {
            AuthOutcome::Authenticated(u) => Some(u),
            AuthOutcome::Challenge { stale, reason } => {
                if cred.is_some() {
                    info!(reason, %source, "INVITE authentication failed");
                }
                if outcome.is_failure() && super::edge::auth_failed(shared, source.ip()) {
                    super::edge::refuse(shared, tx, super::guard::DropReason::Banned);
                    return;
                }
                challenge(shared, tx, stale, true, source.ip());
                return;
            }
        }
    };
    if transport == SipTransport::Tcp {
        // Trusted, a trunk, or the digest passed: the flow may stay.
        shared.tcp_flows.authenticated(source);
    }
    let dialled = req.uri.user().unwrap_or_default().to_string();
    // From a trunk: the DID is the request-URI user, or the To user when the
    // provider sends to our registered contact.
    let to_user = req
        .to_header()
        .ok()
        .and_then(|t| t.uri().ok())
        .and_then(|u| u.user().map(str::to_string));
    let route = match &trunk {
        Some(_) => cfg
            .did_route(&dialled)
            .or_else(|| to_user.as_deref().and_then(|u| cfg.did_route(u)))
            .or_else(|| cfg.route(&dialled)),
        None => cfg.route(&dialled),
    };
    let Some(route) = route.cloned() else {
        info!(dialled, to = to_user.as_deref(), trunk = trunk.as_deref(), %source, "no route: 404");
        call::record_rejected(shared, req, &dialled, trunk, 404, "no route");
        reply_and_finish(tx, StatusCode::NotFound, vec![]);
        return;
    };
    // SDP: an offer in the INVITE, or none (we offer in the 200).
    let local_caps = call::local_caps(transport);
    let offer = if req.body.is_empty() {
        None
    } else {
        let text = String::from_utf8_lossy(&req.body);
        let parsed = sdp::SessionDescription::parse(&text).map_err(|e| e.to_string());
        match parsed.and_then(|s| sdp::negotiate_offer(&s, &local_caps).map_err(|e| e.to_string()))
        {
            Ok(n) => Some(n),
            Err(reason) => {
                info!(dialled, %source, reason, "offer not acceptable: 488");
                call::record_rejected(shared, req, &route.dial, trunk.clone(), 488, &reason);
                reply_and_finish(tx, StatusCode::NotAcceptableHere, vec![]);
                return;
            }
        }
    };
    // RFC 4028 session timer, if the caller asked for one.
    let supported = supported_options(req);
    let timer = match super::timer::decide(
        req.session_expires_header().map(|h| h.value()),
        &supported,
        cfg.min_se_s,
        cfg.session_expires_s,
    ) {
        super::timer::TimerDecision::None => None,
        super::timer::TimerDecision::Granted(t) => Some(t),
        super::timer::TimerDecision::TooSmall { min_se } => {
            info!(dialled, %source, min_se, "Session-Expires too small: 422");
            call::record_rejected(
                shared,
                req,
                &route.dial,
                trunk.clone(),
                422,
                "Session-Expires too small",
            );
            reply_and_finish(
                tx,
                StatusCode::SessionIntervalTooSmall,
                vec![Header::MinSE(min_se.to_string().into())],
            );
            return;
        }
    };
    let slot = match shared.guard.call_slot(
        source.ip(),
        caller_user.clone(),
        &cfg.security,
        super::edge::exempt(shared, source.ip()),
    ) {
        Ok(slot) => slot,
        Err(e) => {
            info!(dialled, %source, user = ?caller_user, limit = %e, "call limit: 486");
            call::record_rejected(shared, req, &route.dial, trunk, 486, "call limit");
            reply_and_finish(tx, StatusCode::BusyHere, vec![]);
            return;
        }
    };
    let setup = CallSetup {
        route,
        offer,
        source,
        transport,
        caller_user,
        timer,
        trunk,
        slot: Some(slot),
    };
    call::admit(shared.clone(), tx, setup);
}

/// The option tags of every `Supported` header of `req` (RFC 3261 20.37).
pub(crate) fn supported_options(req: &Request) -> Vec<String> {
    req.headers
        .iter()
        .filter_map(|h| match h {
            Header::Supported(v) => Some(v.value().to_string()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn http_date_is_well_formed() {
        let d = super::httpdate_now();
        assert!(d.ends_with(" GMT") && d.len() == 29, "{d}");
    }
}
