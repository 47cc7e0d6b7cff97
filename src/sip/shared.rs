//! State every part of the SIP side shares: the profile, registrar, call
//! registry, RTP ports, dialogs, trunks, NAT routing; and the small helpers
//! both the dispatcher and the call driver use.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use rsipstack::dialog::dialog_layer::DialogLayer;
use rsipstack::sip::{Header, StatusCode};
use rsipstack::transaction::endpoint::TargetLocator;
use rsipstack::transaction::transaction::Transaction;
use rsipstack::transport::SipAddr;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::auth::Authenticator;
use super::ports::PortPool;
use super::registrar::{contact_hostport, Registrar};
use crate::calls::CallRegistry;
use crate::config::{Config, SipTransport};

/// State shared by the dispatcher and every call task.
pub struct Shared {
    /// The profile in force; swapped whole by a reload ([`Shared::cfg`]).
    pub config: arc_swap::ArcSwap<Config>,
    pub auth: Authenticator,
    pub registrar: Registrar,
    pub calls: CallRegistry,
    pub ports: PortPool,
    pub dialogs: Arc<DialogLayer>,
    /// The address written into Contact and SDP.
    pub advertised_ip: IpAddr,
    /// Our Contact per transport (`sip:agentline@IP:PORT;transport=tcp`).
    pub contacts: Vec<(SipTransport, String)>,
    /// Set when draining for shutdown: new calls get 503.
    pub draining: CancellationToken,
    pub nat: Arc<NatLocator>,
    pub trunks: Arc<super::trunk::Trunks>,
    /// Swapped by a reload ([`Shared::webhooks`]).
    pub webhooks: arc_swap::ArcSwapOption<crate::agent::webhooks::Webhooks>,
    /// Provider circuit breakers, shared by this server's calls.
    pub breakers: crate::agent::fallback::CircuitBreakers,
    /// Overload control: the calls' tick lateness in, the verdict out.
    pub overload: Arc<super::overload::Overload>,
    /// SIP edge protection (`[security]`): rate limits, bans, call limits.
    pub guard: Arc<super::guard::Guard>,
    /// Open SIP TCP flows per source, and which authenticated.
    pub tcp_flows: super::tcp_listener::TcpFlows,
    /// Browser calls' hangups (`DELETE /webrtc/{id}`).
    pub webrtc: super::webrtc::WebrtcCalls,
}

impl Shared {
    /// The profile in force now. A call takes what it needs at its start
    /// (its route is cloned), so a reload does not change calls in progress.
    pub fn cfg(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// The webhooks in force now, if any.
    pub fn webhooks(&self) -> Option<Arc<crate::agent::webhooks::Webhooks>> {
        self.webhooks.load_full()
    }

    pub fn contact_for(&self, t: SipTransport) -> Option<&str> {
        self.contacts
            .iter()
            .find(|(tt, _)| *tt == t)
            .or_else(|| self.contacts.first())
            .map(|(_, c)| c.as_str())
    }
}

/// Sends requests for phones behind NAT to where their packets come from
/// (RFC 3581 symmetric response routing, applied to new requests), instead of
/// the private address in their Contact.
#[derive(Default)]
pub struct NatLocator {
    pub(super) registrar: std::sync::OnceLock<Arc<Shared>>,
    calls: std::sync::Mutex<std::collections::HashMap<String, SipAddr>>,
}

impl NatLocator {
    pub fn remember(&self, contact_hostport: String, addr: SipAddr) {
        self.lock().insert(contact_hostport, addr);
    }
    pub fn forget(&self, contact_hostport: &str) {
        self.lock().remove(contact_hostport);
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, SipAddr>> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Adapter so the endpoint (built before `Shared`) can reach the locator.
pub(super) struct LocatorRef(pub(super) Arc<NatLocator>);

#[async_trait::async_trait]
impl TargetLocator for LocatorRef {
    async fn locate(&self, uri: &rsipstack::sip::Uri) -> rsipstack::Result<SipAddr> {
        let text = uri.to_string();
        if let Some(hp) = contact_hostport(&text) {
            if let Some(addr) = self.0.lock().get(&hp) {
                return Ok(addr.clone());
            }
            if let Some(shared) = self.0.registrar.get() {
                if let Some((src, t)) = shared
                    .registrar
                    .source_for_contact_hostport(Instant::now(), &hp)
                {
                    return Ok(sip_addr(src, t));
                }
            }
        }
        SipAddr::try_from(uri)
    }
}

pub fn sip_addr(addr: SocketAddr, t: SipTransport) -> SipAddr {
    SipAddr::new(t.rsip(), addr.into())
}

/// Sends a final response and keeps the transaction alive until it ends, so
/// retransmissions are answered and the ACK to a non-2xx is absorbed.
pub fn reply_and_finish(mut tx: Transaction, code: StatusCode, headers: Vec<Header>) {
    tokio::spawn(async move {
        if let Err(e) = tx.reply_with(code, headers, None).await {
            debug!(error = %e, "reply failed");
            return;
        }
        while tx.receive().await.is_some() {}
    });
}
