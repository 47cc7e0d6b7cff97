//! One call: admission (capacity, RTP ports, dialog), then a task that owns
//! the call's dialog events, its RTP sockets and its sans-IO media session,
//! and drives the agent.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rsipstack::dialog::dialog::{DialogState, DialogStateReceiver, TerminatedReason};
use rsipstack::dialog::invite_dialog::InviteDialog;
use rsipstack::sip::prelude::*;
use rsipstack::sip::{Header, StatusCode};
use rsipstack::transaction::transaction::Transaction;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use super::registrar::contact_hostport;
use super::server::{reply_and_finish, sip_addr, Shared};
use crate::agent::{self, AgentOutput};
use crate::calls::{unix_ms, CallInfo, CallState};
use crate::config::{RouteConfig, SipTransport};
use crate::media::session::{natural_rate, MediaEvent, MediaParams, Session, Socket, Transmit};
use crate::sdp::{self, Codec, LocalCaps, LocalMedia, Negotiated};
use crate::sip::ports::RtpPorts;

/// What admission learned about a new INVITE.
pub struct CallSetup {
    pub route: RouteConfig,
    /// The negotiated offer, or `None` for an INVITE without SDP.
    pub offer: Option<Negotiated>,
    pub source: SocketAddr,
    pub transport: SipTransport,
    pub caller_user: Option<String>,
    /// RFC 4028 session timer granted to this call.
    pub timer: Option<super::timer::SessionTimer>,
    /// The trunk the call came in on (or goes out through).
    pub trunk: Option<String>,
}

/// What we take and offer on a call signalled over `transport`: SRTP (SDES)
/// only where the keys are protected by TLS.
pub fn local_caps(transport: SipTransport) -> LocalCaps {
    LocalCaps {
        // G.711 first in our own offers: every phone takes it. Answers
        // follow the caller's order, so a phone preferring Opus gets Opus.
        codecs: vec![Codec::Pcmu, Codec::Pcma, Codec::G722, Codec::Opus],
        telephone_event: true,
        ptime_ms: 20,
        srtp: if transport == SipTransport::Tls {
            sdp::SrtpPolicy::Allow
        } else {
            sdp::SrtpPolicy::Off
        },
    }
}

/// The user part of a `sip:`/`sips:`/`tel:` URI inside a header value.
fn uri_user(value: &str) -> Option<String> {
    let start = ["sip:", "sips:", "tel:"]
        .iter()
        .filter_map(|p| value.find(p).map(|i| i + p.len()))
        .min()?;
    let rest = &value[start..];
    let end = rest.find(['>', ' ', ',']).unwrap_or(rest.len());
    let uri = &rest[..end];
    if value[..start].ends_with("tel:") {
        let num = uri.split(';').next().unwrap_or("");
        return (!num.is_empty()).then(|| num.to_string());
    }
    // sip:user@host: no `@`, no user.
    let (user, _) = uri.split_once('@')?;
    let user = user.split(';').next().unwrap_or("");
    (!user.is_empty()).then(|| user.to_string())
}

/// Caller ID: P-Asserted-Identity (set by trunks), else the From user.
fn caller_id(req: &rsipstack::sip::Request) -> Option<String> {
    let pai = req.headers.iter().find_map(|h| match h {
        Header::PAssertedIdentity(v) => Some(v.value().to_string()),
        Header::Other(n, v) if n.eq_ignore_ascii_case("P-Asserted-Identity") => Some(v.clone()),
        _ => None,
    });
    pai.as_deref()
        .and_then(uri_user)
        .or_else(|| uri_user(&header_text(req, "from")))
}

fn header_text(req: &rsipstack::sip::Request, which: &str) -> String {
    let v = match which {
        "from" => req.from_header().map(|h| h.value().to_string()),
        _ => req.to_header().map(|h| h.value().to_string()),
    };
    v.unwrap_or_default()
}

/// Takes the call or rejects it (503 when full or out of ports).
pub fn admit(shared: Arc<Shared>, mut tx: Transaction, setup: CallSetup) {
    let req = tx.original.clone();
    let call_id = req
        .call_id_header()
        .map(|c| c.value().to_string())
        .unwrap_or_default();
    let ports = match shared.ports.allocate() {
        Ok(p) => p,
        Err(e) => {
            warn!(error = %e, "no RTP ports: 503");
            reply_and_finish(tx, StatusCode::ServiceUnavailable, vec![]);
            return;
        }
    };
    let (state_tx, state_rx) = shared.dialogs.new_dialog_state_channel();
    let contact = shared
        .contact_for(setup.transport)
        .and_then(|c| rsipstack::sip::Uri::try_from(c).ok());
    let dialog = match shared
        .dialogs
        .get_or_create_server_invite(&tx, state_tx, None, contact)
    {
        Ok(d) => d,
        Err(e) => {
            info!(error = %e, "cannot create dialog: 400");
            reply_and_finish(tx, StatusCode::BadRequest, vec![]);
            return;
        }
    };
    let id = dialog.id().to_string();
    let hangup = CancellationToken::new();
    let (cmd_tx, cmd_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut info = CallInfo::new(
        id.clone(),
        call_id.clone(),
        header_text(&req, "from"),
        header_text(&req, "to"),
        setup.route.dial.clone(),
        setup.route.agent.kind().to_string(),
        ports.port,
    );
    info.trunk = setup.trunk.clone();
    info.caller_id = caller_id(&req);
    if !shared
        .calls
        .try_insert(info, hangup.clone(), cmd_tx, shared.cfg.max_calls)
    {
        info!(call_id, "max_calls reached: 503");
        dialog
            .reject(Some(StatusCode::ServiceUnavailable), None)
            .ok();
        shared.dialogs.remove_dialog(&dialog.id());
        tokio::spawn(async move {
            let mut d = dialog;
            d.handle(&mut tx).await.ok();
        });
        return;
    }
    // The 487 after a CANCEL is sent by the transaction with its own To-tag;
    // give it the dialog's tag so it matches our 180 (rsipstack 0.7.14).
    if let Ok(to) = tx.original.to_header() {
        let tagged = to.with_tag(dialog.id().local_tag.clone().into());
        tx.original.headers.unique_push(tagged.into());
    }
    // NAT: in-dialog requests (our BYE) go where the INVITE came from.
    let remote_contact = req
        .contact_header()
        .ok()
        .and_then(|c| contact_hostport(c.value()));
    if let Some(hp) = &remote_contact {
        shared
            .nat
            .remember(hp.clone(), sip_addr(setup.source, setup.transport));
    }
    let mut d = dialog.clone();
    tokio::spawn(async move {
        if let Err(e) = d.handle(&mut tx).await {
            debug!(error = %e, "INVITE transaction ended with error");
        }
    });
    let span = tracing::info_span!("call", call_id = %call_id,
        from = %header_text(&req, "from"), to = %setup.route.dial);
    tokio::spawn(
        async move {
            let dialog_id = dialog.id();
            let mut task = CallTask {
                agent_override: None,
                uuid: String::new(),
                srtp_key: crate::media::srtp::random_master_key(),
                srtp: None,
                last_sdp: String::new(),
                sdp_origin: (rand::random::<u32>() as u64, 0),
                shared: shared.clone(),
                dialog,
                state_rx,
                ports,
                hangup,
                commands: cmd_rx,
                id: id.clone(),
                setup,
            };
            let end = task.run().await;
            info!(reason = %end, "call ended");
            shared.dialogs.remove_dialog(&dialog_id);
            if let Some(hp) = remote_contact {
                shared.nat.forget(&hp);
            }
            shared.calls.end(&id, Some(&end));
        }
        .instrument(span),
    );
}

struct CallTask {
    shared: Arc<Shared>,
    /// An agent handed in by whoever placed the call (a bridge leg), used
    /// instead of the route's.
    agent_override: Option<Box<dyn agent::Agent>>,
    /// The call's UUID for providers and webhooks (set once answered).
    uuid: String,
    /// Our SRTP master key for this call (used when the SDP agrees on SRTP).
    srtp_key: [u8; crate::media::srtp::MASTER_KEY_LEN],
    srtp: Option<crate::media::srtp::SrtpSession>,
    /// The SDP we last sent, re-sent in session refreshes.
    last_sdp: String,
    /// SDP `o=` session id and version: fixed id, version +1 per new SDP (RFC 3264 section 8).
    sdp_origin: (u64, u64),
    dialog: InviteDialog,
    state_rx: DialogStateReceiver,
    ports: RtpPorts,
    hangup: CancellationToken,
    commands: tokio::sync::mpsc::UnboundedReceiver<crate::calls::CallCommand>,
    id: String,
    setup: CallSetup,
}

enum Wait {
    Elapsed,
    Ended(String),
}

/// Headers of a 200 (or refresh) carrying SDP and our session timer.
fn answer_headers(timer: Option<&super::timer::SessionTimer>) -> Option<Vec<Header>> {
    let mut h = vec![Header::ContentType("application/sdp".into())];
    if let Some(t) = timer {
        h.push(Header::SessionExpires(t.header_value().into()));
        h.push(Header::Supported("timer".into()));
        if t.uac_supports {
            h.push(Header::Require("timer".into()));
        }
    }
    Some(h)
}

impl CallTask {
    /// Our media description for the next SDP we send.
    fn local_media(&mut self) -> LocalMedia {
        self.sdp_origin.1 += 1;
        LocalMedia {
            ip: self.shared.advertised_ip,
            rtp_port: self.ports.port,
            session_id: self.sdp_origin.0,
            session_version: self.sdp_origin.1,
            srtp_key: (self.setup.transport == SipTransport::Tls).then_some(self.srtp_key),
        }
    }

    /// Applies the SRTP outcome of an offer/answer: keys kept, changed,
    /// started or stopped.
    fn apply_srtp(&mut self, neg: &Negotiated) {
        match &neg.srtp {
            None => {
                if self.srtp.take().is_some() {
                    info!("SRTP off");
                }
            }
            Some(c) => {
                if self
                    .srtp
                    .as_ref()
                    .is_some_and(|s| s.same_keys(c.suite, &c.key))
                {
                    return;
                }
                match crate::media::srtp::SrtpSession::new(c.suite, &self.srtp_key, &c.key) {
                    Ok(s) => {
                        info!(suite = c.suite.name(), "SRTP on");
                        self.srtp = Some(s);
                    }
                    Err(e) => warn!(error = %e, "SRTP setup failed"),
                }
            }
        }
        let suite = self.srtp.as_ref().map(|s| s.suite().name().to_string());
        self.shared.calls.update(&self.id, |c| c.srtp = suite);
    }

    /// Waits for `dur` while answering dialog events; returns early if the
    /// call ends (CANCEL, BYE, hangup request).
    async fn wait_ringing(&mut self, dur: Duration) -> Wait {
        let deadline = tokio::time::Instant::now() + dur;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return Wait::Elapsed,
                _ = self.hangup.cancelled() => {
                    self.dialog.reject(Some(StatusCode::ServiceUnavailable), None).ok();
                    return Wait::Ended("hangup before answer".into());
                }
                st = self.state_rx.recv() => match st {
                    None => return Wait::Ended("dialog gone".into()),
                    Some(DialogState::Terminated(_, why)) => return Wait::Ended(reason(&why)),
                    Some(other) => answer_other(other).await,
                }
            }
        }
    }

    async fn run(&mut self) -> String {
        info!(source = %self.setup.source, user = ?self.setup.caller_user, "incoming call");
        // The INVITE transaction sends 100 Trying only while the dialog is
        // still `Calling`; let it, before our 180 moves the dialog on.
        let first = tokio::time::timeout(Duration::from_millis(500), self.state_rx.recv()).await;
        match first {
            Ok(None) => return "dialog gone".into(),
            Ok(Some(DialogState::Terminated(_, why))) => return reason(&why),
            Ok(Some(other)) => answer_other(other).await,
            Err(_) => debug!("no Calling state within 500 ms"),
        }
        if let Err(e) = self.dialog.ringing(None, None) {
            return format!("cannot send 180: {e}");
        }
        let delay = Duration::from_millis(self.setup.route.answer_delay_ms);
        if let Wait::Ended(r) = self.wait_ringing(delay).await {
            return r;
        }
        let local = self.local_media();
        let caps = local_caps(self.setup.transport);
        let body = match &self.setup.offer {
            Some(neg) => sdp::build_answer(neg, &local),
            None => sdp::build_offer(&caps, &local),
        };
        self.shared
            .calls
            .update(&self.id, |c| c.state = CallState::Answering);
        self.last_sdp = body.clone();
        let headers = answer_headers(self.setup.timer.as_ref());
        if let Err(e) = self.dialog.accept(headers, Some(body.into_bytes())) {
            return format!("cannot send 200: {e}");
        }
        // Wait for the ACK.
        loop {
            tokio::select! {
                _ = self.hangup.cancelled() => {
                    // Answered but not yet confirmed: BYE once the ACK comes.
                }
                st = self.state_rx.recv() => match st {
                    None => return "dialog gone".into(),
                    Some(DialogState::Confirmed(..)) => break,
                    Some(DialogState::Terminated(_, why)) => return reason(&why),
                    Some(other) => answer_other(other).await,
                }
            }
        }
        let negotiated = match self.setup.offer.clone() {
            Some(n) => n,
            None => {
                let ack_body = self
                    .dialog
                    .last_remote_ack()
                    .map(|a| String::from_utf8_lossy(&a.body).to_string())
                    .unwrap_or_default();
                let answer = sdp::SessionDescription::parse(&ack_body)
                    .map_err(|e| e.to_string())
                    .and_then(|s| sdp::accept_answer(&s, &caps).map_err(|e| e.to_string()));
                match answer {
                    Ok(n) => n,
                    Err(e) => {
                        warn!(error = %e, "no usable SDP answer in the ACK");
                        self.dialog.bye().await.ok();
                        return format!("bad answer in ACK: {e}");
                    }
                }
            }
        };
        self.media_loop(negotiated).await
    }

    /// Records and reports what the agent said or did.
    fn on_agent_event(&self, ev: agent::AgentEvent) {
        use agent::AgentEvent as E;
        let uuid = self.uuid.clone();
        match &ev {
            E::Transcript { role, text } => {
                info!(%role, %text, "transcript");
                let line = crate::calls::TranscriptLine {
                    role: role.clone(),
                    text: text.clone(),
                    at_unix_ms: unix_ms(),
                };
                self.shared.calls.update(&self.id, |c| {
                    if c.transcript.len() >= 100 {
                        c.transcript.remove(0);
                    }
                    c.transcript.push(line);
                });
                self.webhook(
                    &uuid,
                    "transcription",
                    serde_json::json!({"role": role, "text": text}),
                );
            }
            E::Interruption => {
                debug!("caller barged in");
                self.shared.calls.update(&self.id, |c| c.interruptions += 1);
                self.webhook(&uuid, "interruption", serde_json::json!({}));
            }
            E::Latency(l) => {
                info!(total_ms = l.total_ms, asr_ms = ?l.asr_ms, llm_first_token_ms = ?l.llm_first_token_ms,
                      tts_first_byte_ms = ?l.tts_first_byte_ms, "turn latency");
                let l = l.clone();
                self.shared.calls.update(&self.id, |c| {
                    if c.turns.len() >= 50 {
                        c.turns.remove(0);
                    }
                    c.turns.push(l);
                });
            }
            E::Error { message } | E::Failed { reason: message } => {
                warn!(error = %message, "agent error");
                let m = message.clone();
                self.shared
                    .calls
                    .update(&self.id, |c| c.last_agent_error = Some(m));
                self.webhook(&uuid, "error", serde_json::json!({"message": message}));
            }
            E::Provider { kind } => {
                info!(agent = %kind, "fallback agent took over");
                let k = kind.clone();
                self.shared.calls.update(&self.id, |c| c.agent = k);
            }
            E::ToolCall { name, arguments } => {
                info!(%name, "agent tool call");
                self.webhook(
                    &uuid,
                    "tool_invocation",
                    serde_json::json!({"name": name, "arguments": arguments}),
                );
            }
            E::Transfer { to } => info!(%to, "agent asked for a transfer"),
        }
    }

    /// A transfer the agent asked for (see [`transfer_target`]).
    fn transfer_request(
        &self,
        to: &str,
    ) -> Result<crate::calls::TransferRequest, TransferTargetError> {
        transfer_target(&self.shared, self.setup.trunk.as_deref(), to)
    }

    fn set_transfer(&self, f: impl FnOnce(&mut crate::calls::TransferInfo)) {
        self.shared.calls.update(&self.id, |c| {
            if let Some(t) = c.transfer.as_mut() {
                f(t);
            }
        });
    }

    /// Starts a transfer: REFER (in its own task; the answer comes back on
    /// `refer_done`) or, for `bridge`, a second leg through the trunk.
    fn begin_transfer(
        &mut self,
        req: &crate::calls::TransferRequest,
        refer_done: &tokio::sync::mpsc::Sender<Result<u16, String>>,
        rate: u32,
        pending_bridge: &mut Option<agent::Bridge>,
    ) {
        use crate::calls::{TransferInfo, TransferMode};
        info!(target = %req.refer_to, mode = ?req.mode, "transfer requested");
        let method = if req.mode == TransferMode::Bridge {
            "bridge"
        } else {
            "refer"
        };
        self.shared.calls.update(&self.id, |c| {
            c.transfer = Some(TransferInfo {
                target: req.refer_to.clone(),
                method: method.into(),
                state: "requested".into(),
                detail: None,
                bridged_call: None,
            })
        });
        if req.mode == TransferMode::Bridge {
            self.start_bridge(req, rate, pending_bridge);
            return;
        }
        let uri = match rsipstack::sip::Uri::try_from(req.refer_to.as_str()) {
            Ok(u) => u,
            Err(e) => {
                self.set_transfer(|t| {
                    t.state = "failed".into();
                    t.detail = Some(format!("bad target: {e}"));
                });
                return;
            }
        };
        let d = self.dialog.clone();
        let referred_by = self
            .shared
            .contact_for(self.setup.transport)
            .map(|c| format!("<{c}>"));
        let done = refer_done.clone();
        tokio::spawn(async move {
            let headers = referred_by.map(|r| {
                vec![Header::ReferredBy(
                    rsipstack::sip::headers::ReferredBy::new(r),
                )]
            });
            let r = match d.refer(uri, headers, None).await {
                Ok(Some(resp)) => Ok(u16::from(resp.status_code)),
                Ok(None) => Err("dialog not confirmed".to_string()),
                Err(e) => Err(e.to_string()),
            };
            let _ = done.send(r).await;
        });
    }

    /// B2BUA transfer: calls the target through the trunk with one end of a
    /// bridge; this call switches to the other end once that leg answers.
    fn start_bridge(
        &mut self,
        req: &crate::calls::TransferRequest,
        rate: u32,
        pending_bridge: &mut Option<agent::Bridge>,
    ) {
        let Some((trunk, to)) = req.bridge.clone() else {
            self.set_transfer(|t| {
                t.method = "bridge".into();
                t.state = "failed".into();
                t.detail = Some("no trunk to bridge through".into());
            });
            return;
        };
        let (here, there) = agent::bridge_pair(rate);
        let leg = Originate {
            trunk,
            to,
            from: None,
            agent: crate::config::AgentConfig::Echo,
            ring_timeout_s: Some(60),
        };
        match originate_leg(
            self.shared.clone(),
            leg,
            Some(Box::new(there)),
            Some(self.id.clone()),
        ) {
            Ok(b) => {
                info!(leg = %b, "transfer: bridging through the trunk");
                *pending_bridge = Some(here);
                self.set_transfer(|t| {
                    t.method = "bridge".into();
                    t.state = "trying".into();
                    t.bridged_call = Some(b);
                });
            }
            Err(e) => self.set_transfer(|t| {
                t.method = "bridge".into();
                t.state = "failed".into();
                t.detail = Some(e.to_string());
            }),
        }
    }

    fn webhook(&self, uuid: &str, kind: &str, payload: serde_json::Value) {
        if let Some(w) = &self.shared.webhooks {
            w.send(uuid, kind, payload);
        }
    }

    /// The route's agent for this call: echo/demo directly, providers in a
    /// failover chain (with the route's fallbacks and circuit breakers).
    async fn build_agent(
        &mut self,
        neg: &Negotiated,
        uuid: &str,
    ) -> Result<Box<dyn agent::Agent>, agent::AgentError> {
        if let Some(a) = self.agent_override.take() {
            return Ok(a);
        }
        let info = self.shared.calls.get(&self.id);
        let mut ctx = agent::AgentContext {
            uuid: uuid.to_string(),
            caller: info.as_ref().map(|c| c.from.clone()).unwrap_or_default(),
            called: self.setup.route.dial.clone(),
            codec: Some(neg.codec),
            overrides: Default::default(),
        };
        let mut chain = vec![self.setup.route.agent.clone()];
        chain.extend(self.setup.route.fallback.iter().cloned());
        if let Some(w) = &self.shared.webhooks {
            let payload = serde_json::json!({
                "from": ctx.caller, "to": ctx.called, "agent": chain[0].kind(),
            });
            if let Some(answer) = w.call_initiated(uuid, payload).await {
                if let Some(obj) = answer.as_object() {
                    for (k, v) in obj {
                        if let Some(v) = v.as_str() {
                            ctx.overrides.insert(k.clone(), v.to_string());
                        }
                    }
                }
                // `sts_url` points this call's first agent at another STS.
                if let Some(u) = ctx.overrides.get("sts_url") {
                    chain[0] = crate::config::AgentConfig::AvrSts { url: u.clone() };
                }
            }
        }
        if chain.len() == 1
            && matches!(
                chain[0],
                crate::config::AgentConfig::Echo | crate::config::AgentConfig::Demo
            )
        {
            return agent::build_for(&chain[0], &ctx);
        }
        let timeout = Duration::from_millis(self.setup.route.response_timeout_ms);
        Ok(Box::new(agent::fallback::Fallback::new(
            chain, ctx, timeout,
        )?))
    }

    async fn media_loop(&mut self, neg: Negotiated) -> String {
        let uuid = uuid::Uuid::new_v4().to_string();
        self.uuid = uuid.clone();
        self.shared
            .calls
            .update(&self.id, |c| c.uuid = Some(uuid.clone()));
        let built = self.build_agent(&neg, &uuid).await;
        let mut agent = match built {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "agent failed to start");
                self.dialog.bye().await.ok();
                return format!("agent error: {e}");
            }
        };
        let params = media_params(&neg, &self.shared.cfg, agent.sample_rate());
        let now = Instant::now();
        let session = Session::new(
            now,
            std::time::SystemTime::now(),
            params,
            rand::random(),
            rand::random(),
            rand::random(),
        );
        let mut session = match session {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "codec setup failed");
                self.dialog.bye().await.ok();
                return format!("codec error: {e}");
            }
        };
        self.apply_srtp(&neg);
        if let Some((file, level)) = self.setup.route.ambient.clone() {
            match tokio::fs::read(&file)
                .await
                .map_err(|e| e.to_string())
                .and_then(|b| crate::media::wav::Wav::parse(&b).map_err(|e| e.to_string()))
            {
                Ok(w) => {
                    let rate = session.params().agent_rate;
                    match crate::media::resample::resample_once(&w.mono(), w.sample_rate, rate) {
                        Ok(pcm) => session.set_ambient(pcm, level),
                        Err(e) => {
                            warn!(file = %file.display(), error = %e, "ambient sound not loaded")
                        }
                    }
                }
                Err(e) => warn!(file = %file.display(), error = %e, "ambient sound not loaded"),
            }
        }
        if let Err(e) = session.set_dsp(self.setup.route.dsp.clone()) {
            warn!(error = %e, "caller DSP unavailable for this call");
        }
        self.shared.calls.update(&self.id, |c| {
            c.state = CallState::Active;
            c.codec = Some(neg.codec.encoding_name().to_string());
            c.remote_rtp = neg.remote_rtp.map(|a| a.to_string());
            c.answered_at_unix_ms = Some(unix_ms());
        });
        info!(codec = neg.codec.encoding_name(), pt = neg.pt, remote = ?neg.remote_rtp,
              agent = agent.kind(), "call answered");
        self.webhook(
            &uuid,
            "call_started",
            serde_json::json!({
                "codec": neg.codec.encoding_name(), "agent": agent.kind(),
            }),
        );
        let mut out = AgentOutput::default();
        agent.start(&mut out);
        apply_output(&mut session, agent.as_mut(), &mut out);

        let mut buf = vec![0u8; 2048];
        let mut rtcp_buf = vec![0u8; 1500];
        let mut last_stats = Instant::now();
        let rtp_timeout = Duration::from_secs(self.shared.cfg.rtp_timeout_s);
        let mut last_rx = (Instant::now(), 0u64);
        // RFC 4028: refreshes we send run in their own task (a re-INVITE can
        // take 32 s to time out); their outcome comes back here.
        let timer = self.setup.timer;
        let mut last_refresh = Instant::now();
        let (refresh_tx, mut refresh_rx) = tokio::sync::mpsc::channel::<Result<u16, String>>(2);
        let mut refresh_in_flight = false;
        // Transfers: the REFER's final answer, the request (for the bridge
        // fallback), the bridge end waiting for the other leg to answer.
        let (refer_tx, mut refer_rx) = tokio::sync::mpsc::channel::<Result<u16, String>>(2);
        let mut transfer: Option<crate::calls::TransferRequest> = None;
        let mut pending_bridge: Option<agent::Bridge> = None;
        let end = loop {
            let mut wake = session.next_timeout();
            if let Some(t) = timer {
                if !refresh_in_flight {
                    if let Some(due) = t.refresh_due(last_refresh) {
                        wake = wake.min(due);
                    }
                }
                if let Some(exp) = t.expiry(last_refresh) {
                    wake = wake.min(exp);
                }
            }
            let wake = tokio::time::Instant::from_std(wake);
            tokio::select! {
                r = self.ports.rtp.recv_from(&mut buf) => match r {
                    Ok((n, from)) => match &mut self.srtp {
                        None => session.handle_rtp(Instant::now(), from, &buf[..n]),
                        Some(s) => if let Some(p) = s.unprotect(&buf[..n]) {
                            session.handle_rtp(Instant::now(), from, &p);
                        },
                    },
                    Err(e) => debug!(error = %e, "RTP receive error"),
                },
                r = self.ports.rtcp.recv_from(&mut rtcp_buf) => match r {
                    Ok((n, from)) => match &mut self.srtp {
                        None => session.handle_rtcp(Instant::now(), from, &rtcp_buf[..n]),
                        Some(s) => if let Some(p) = s.unprotect(&rtcp_buf[..n]) {
                            session.handle_rtcp(Instant::now(), from, &p);
                        },
                    },
                    Err(e) => debug!(error = %e, "RTCP receive error"),
                },
                _ = tokio::time::sleep_until(wake) => {
                    let now = Instant::now();
                    session.handle_timeout(now);
                    agent.poll(&mut out);
                    apply_output(&mut session, agent.as_mut(), &mut out);
                    if let Some(t) = timer {
                        if t.expiry(last_refresh).is_some_and(|e| now >= e) {
                            warn!(interval_s = t.interval_s, "session not refreshed: hanging up");
                            self.dialog.bye().await.ok();
                            break "session timer expired".to_string();
                        }
                        if !refresh_in_flight && t.refresh_due(last_refresh).is_some_and(|d| now >= d) {
                            refresh_in_flight = true;
                            let d = self.dialog.clone();
                            let body = self.last_sdp.clone().into_bytes();
                            let headers = answer_headers(Some(&t));
                            let done = refresh_tx.clone();
                            tokio::spawn(async move {
                                let r = match d.reinvite(headers, Some(body)).await {
                                    Ok(Some(resp)) => Ok(u16::from(resp.status_code)),
                                    Ok(None) => Err("dialog not confirmed".to_string()),
                                    Err(e) => Err(e.to_string()),
                                };
                                let _ = done.send(r).await;
                            });
                        }
                    }
                }
                Some(r) = refresh_rx.recv() => {
                    refresh_in_flight = false;
                    match r {
                        Ok(code) if (200..300).contains(&code) => {
                            debug!(code, "session refreshed");
                            last_refresh = Instant::now();
                        }
                        other => {
                            warn!(outcome = ?other, "session refresh failed: hanging up");
                            self.dialog.bye().await.ok();
                            break "session refresh failed".to_string();
                        }
                    }
                }
                _ = self.hangup.cancelled() => {
                    if let Err(e) = self.dialog.bye().await {
                        debug!(error = %e, "BYE failed");
                    }
                    break "hangup by server".to_string();
                }
                Some(cmd) = self.commands.recv() => match cmd {
                    crate::calls::CallCommand::SendDtmf(digits) => {
                        if session.send_dtmf(&digits) {
                            info!(%digits, "sending DTMF");
                        } else {
                            warn!(%digits, "cannot send DTMF: no telephone-event negotiated");
                        }
                    }
                    crate::calls::CallCommand::Transfer(req) => {
                        let rate = session.params().agent_rate;
                        self.begin_transfer(&req, &refer_tx, rate, &mut pending_bridge);
                        transfer = Some(req);
                    }
                    crate::calls::CallCommand::BridgeAnswered(leg) => {
                        if let Some(end) = pending_bridge.take() {
                            info!(%leg, "transfer: bridged");
                            session.clear_playout();
                            agent = Box::new(end);
                            self.shared.calls.update(&self.id, |c| c.agent = "bridge".into());
                            self.set_transfer(|t| {
                                t.state = "succeeded".into();
                                t.detail = Some("bridged".into());
                            });
                        }
                    }
                    crate::calls::CallCommand::BridgeFailed(why) => {
                        if pending_bridge.take().is_some() {
                            info!(%why, "transfer: bridge leg failed; the agent stays");
                            self.set_transfer(|t| {
                                t.state = "failed".into();
                                t.detail = Some(why);
                            });
                        }
                    }
                },
                Some(r) = refer_rx.recv() => match r {
                    Ok(code) if (200..300).contains(&code) => {
                        info!(code, "REFER accepted");
                        self.set_transfer(|t| t.state = "accepted".into());
                    }
                    other => {
                        let why = match &other {
                            Ok(code) => format!("REFER refused: {code}"),
                            Err(e) => format!("REFER failed: {e}"),
                        };
                        info!(%why, "transfer");
                        match transfer.clone() {
                            Some(req) if req.mode == crate::calls::TransferMode::Auto && req.bridge.is_some() => {
                                self.set_transfer(|t| t.detail = Some(why));
                                let rate = session.params().agent_rate;
                                self.start_bridge(&req, rate, &mut pending_bridge);
                            }
                            _ => self.set_transfer(|t| {
                                t.state = "failed".into();
                                t.detail = Some(why);
                            }),
                        }
                    }
                },
                st = self.state_rx.recv() => match st {
                    None => break "dialog gone".to_string(),
                    Some(DialogState::Terminated(_, why)) => break reason(&why),
                    Some(DialogState::Updated(_, req, handle)) => {
                        // Any re-INVITE/UPDATE from the caller refreshes the session.
                        last_refresh = Instant::now();
                        self.on_reinvite(&mut session, agent.as_mut(), &req, handle).await;
                    }
                    Some(DialogState::Info(_, req, handle)) => {
                        if let Some(d) = dtmf_from_info(&req) {
                            self.on_dtmf(d, agent.as_mut(), &mut session);
                        }
                        handle.reply(StatusCode::OK).await.ok();
                    }
                    Some(DialogState::Notify(_, req, handle)) => {
                        handle.reply(StatusCode::OK).await.ok();
                        let refer_pending = transfer.as_ref().is_some_and(|t| t.mode != crate::calls::TransferMode::Bridge)
                            && pending_bridge.is_none();
                        if let (true, Some(code)) = (refer_pending, refer_notify_status(&req)) {
                            info!(code, "transfer progress (NOTIFY sipfrag)");
                            if (200..300).contains(&code) {
                                self.set_transfer(|t| {
                                    t.state = "succeeded".into();
                                    t.detail = Some(format!("NOTIFY {code}"));
                                });
                                // Our 200 to the NOTIFY goes out through its
                                // transaction; let it leave before the BYE so
                                // the transferee sees them in order.
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                self.dialog.bye().await.ok();
                                let target = transfer.as_ref().map(|t| t.refer_to.clone()).unwrap_or_default();
                                break format!("transferred to {target}");
                            } else if code >= 300 {
                                self.set_transfer(|t| {
                                    t.state = "failed".into();
                                    t.detail = Some(format!("NOTIFY {code}"));
                                });
                                transfer = None;
                            } else {
                                self.set_transfer(|t| t.state = "trying".into());
                            }
                        }
                    }
                    Some(other) => answer_other(other).await,
                }
            }
            while let Some(ev) = session.poll_event() {
                match ev {
                    MediaEvent::Audio(pcm) => {
                        // INTERRUPT_LISTENING: the agent does not hear the
                        // caller while it talks (the stream keeps its pace).
                        if self.setup.route.interrupt_listening && session.queued_ms() > 0 {
                            agent.on_audio(&vec![0; pcm.len()], &mut out);
                        } else {
                            agent.on_audio(&pcm, &mut out);
                        }
                        apply_output(&mut session, agent.as_mut(), &mut out);
                    }
                    MediaEvent::Dtmf(d) => self.on_dtmf(d, agent.as_mut(), &mut session),
                    MediaEvent::Turn(ev) => {
                        let speaking = matches!(ev, crate::media::dsp::TurnEvent::SpeechStarted);
                        info!(event = ?ev, "caller turn");
                        self.shared.calls.update(&self.id, |c| {
                            c.caller_speaking = speaking;
                            if !speaking {
                                c.caller_turns += 1;
                            }
                        });
                        // Barge-in from our VAD: drop what the agent queued.
                        if speaking
                            && self.setup.route.barge_in
                            && !self.setup.route.interrupt_listening
                            && session.queued_ms() > 0
                        {
                            out.clear = true;
                            out.events.push(agent::AgentEvent::Interruption);
                        }
                        agent.on_turn(ev, &mut out);
                        apply_output(&mut session, agent.as_mut(), &mut out);
                    }
                    MediaEvent::Latched(addr) => {
                        info!(%addr, "RTP latched");
                        self.shared
                            .calls
                            .update(&self.id, |c| c.remote_rtp = Some(addr.to_string()));
                    }
                }
            }
            for ev in std::mem::take(&mut out.events) {
                if let agent::AgentEvent::Transfer { to } = &ev {
                    match self.transfer_request(to) {
                        Ok(req) => {
                            let rate = session.params().agent_rate;
                            self.begin_transfer(&req, &refer_tx, rate, &mut pending_bridge);
                            transfer = Some(req);
                        }
                        Err(e) => warn!(%to, error = %e, "agent asked for a transfer we cannot do"),
                    }
                }
                self.on_agent_event(ev);
            }
            if out.hangup {
                self.dialog.bye().await.ok();
                break "agent hung up".to_string();
            }
            if out.hangup_after_playout && session.queued_ms() == 0 {
                self.dialog.bye().await.ok();
                break "agent finished".to_string();
            }
            while let Some(t) = session.poll_transmit() {
                self.send(t).await;
            }
            if last_stats.elapsed() >= Duration::from_secs(1) {
                last_stats = Instant::now();
                // A caller that vanished without BYE (network gone, phone
                // crashed) must not hold a call slot and ports forever.
                let rx = session.stats().rx_packets;
                if rx != last_rx.1 {
                    last_rx = (last_stats, rx);
                } else if !rtp_timeout.is_zero()
                    && session.params().direction.receives()
                    && last_stats.duration_since(last_rx.0) >= rtp_timeout
                {
                    warn!(secs = rtp_timeout.as_secs(), "no RTP: hanging up");
                    self.dialog.bye().await.ok();
                    break "RTP timeout".to_string();
                }
                let stats = session.stats().clone();
                let quality = session.quality();
                let jitter = session.jitter_stats();
                let srtp_rejected = self.srtp.as_ref().map_or(0, |s| s.rejected);
                self.shared.calls.update(&self.id, |c| {
                    c.srtp_rejected = srtp_rejected;
                    c.media = stats;
                    c.jitter = Some(jitter);
                    c.quality = Some(quality);
                });
            }
        };
        if let Some(t) = session.rtcp_bye() {
            self.send(t).await;
        }
        // A bridged (or still ringing) transfer leg ends with this one.
        if let Some(leg) = self
            .shared
            .calls
            .get(&self.id)
            .and_then(|c| c.transfer)
            .and_then(|t| t.bridged_call)
        {
            self.shared.calls.hangup(&leg);
        }
        let s = session.stats();
        let q = session.quality();
        info!(
            rx = s.rx_packets,
            tx = s.tx_packets,
            malformed = s.rx_malformed,
            underruns = s.tx_underruns,
            trimmed_ms = s.tx_trimmed_ms,
            dtmf = s.rx_dtmf_digits,
            lost = q.packets_lost,
            jitter_ms = format!("{:.1}", q.jitter_ms),
            rtt_ms = ?q.rtt_ms.map(|r| format!("{r:.1}")),
            mos = format!("{:.2}", q.mos),
            "media summary"
        );
        if let Some(c) = self.shared.calls.get(&self.id) {
            if !c.turns.is_empty() {
                let mut totals: Vec<u64> = c.turns.iter().map(|t| t.total_ms).collect();
                totals.sort_unstable();
                info!(
                    turns = totals.len(),
                    latency_median_ms = totals[totals.len() / 2],
                    latency_max_ms = totals[totals.len() - 1],
                    interruptions = c.interruptions,
                    agent = %c.agent,
                    "agent summary"
                );
            }
        }
        self.webhook(&self.uuid, "call_ended", serde_json::json!({"reason": end}));
        end
    }

    async fn send(&mut self, t: Transmit) {
        let sock = match t.socket {
            Socket::Rtp => &self.ports.rtp,
            Socket::Rtcp => &self.ports.rtcp,
        };
        let protected;
        let bytes = match &mut self.srtp {
            None => &t.bytes,
            Some(s) => match s.protect(&t.bytes) {
                Some(p) => {
                    protected = p;
                    &protected
                }
                None => return,
            },
        };
        if let Err(e) = sock.send_to(bytes, t.to).await {
            debug!(error = %e, to = %t.to, "media send failed");
        }
    }

    fn on_dtmf(&self, digit: char, agent: &mut dyn agent::Agent, session: &mut Session) {
        info!(%digit, "DTMF");
        self.webhook(
            &self.uuid,
            "dtmf_digit",
            serde_json::json!({"digit": digit.to_string()}),
        );
        self.shared.calls.update(&self.id, |c| c.dtmf.push(digit));
        let mut out = AgentOutput::default();
        agent.on_dtmf(digit, &mut out);
        apply_output(session, agent, &mut out);
    }

    /// re-INVITE/UPDATE: answer the new offer and apply it (hold with
    /// sendonly/inactive or c=0.0.0.0, resume, new address, codec change);
    /// the call goes on. An offer we cannot take gets 488 and the call keeps
    /// its old media (RFC 3261 section 14.2).
    async fn on_reinvite(
        &mut self,
        session: &mut Session,
        agent: &mut dyn agent::Agent,
        req: &rsipstack::sip::Request,
        handle: rsipstack::dialog::dialog::TransactionHandle,
    ) {
        let local = self.local_media();
        if req.body.is_empty() {
            // No offer (e.g. a session refresh): we offer, the answer comes in the ACK.
            let offer = sdp::build_offer(&local_caps(self.setup.transport), &local);
            self.last_sdp = offer.clone();
            handle
                .respond(
                    StatusCode::OK,
                    answer_headers(self.setup.timer.as_ref()),
                    Some(offer.into_bytes()),
                )
                .await
                .ok();
            return;
        }
        let text = String::from_utf8_lossy(&req.body);
        let neg = sdp::SessionDescription::parse(&text)
            .map_err(|e| e.to_string())
            .and_then(|s| {
                sdp::negotiate_offer(&s, &local_caps(self.setup.transport))
                    .map_err(|e| e.to_string())
            });
        match neg {
            Ok(n) => {
                let answer = sdp::build_answer(&n, &local);
                let was_held = !session.params().direction.sends();
                let held = !n.direction.sends();
                info!(direction = %n.direction, codec = n.codec.encoding_name(),
                      remote = ?n.remote_rtp, "re-INVITE answered");
                if let Err(e) =
                    session.update(media_params(&n, &self.shared.cfg, agent.sample_rate()))
                {
                    info!(error = %e, "re-INVITE codec unusable: 488");
                    handle.reply(StatusCode::NotAcceptableHere).await.ok();
                    return;
                }
                self.apply_srtp(&n);
                if was_held != held {
                    let mut out = AgentOutput::default();
                    agent.on_hold(held, &mut out);
                    apply_output(session, agent, &mut out);
                }
                self.shared.calls.update(&self.id, |c| {
                    c.codec = Some(n.codec.encoding_name().to_string());
                    c.on_hold = held;
                });
                self.last_sdp = answer.clone();
                handle
                    .respond(
                        StatusCode::OK,
                        answer_headers(self.setup.timer.as_ref()),
                        Some(answer.into_bytes()),
                    )
                    .await
                    .ok();
            }
            Err(e) => {
                info!(error = %e, "re-INVITE offer refused: 488");
                handle.reply(StatusCode::NotAcceptableHere).await.ok();
            }
        }
    }
}

/// `agent_rate`: the agent's fixed rate, or `None` for the codec's own.
fn media_params(
    neg: &Negotiated,
    cfg: &crate::config::Config,
    agent_rate: Option<u32>,
) -> MediaParams {
    MediaParams {
        send_silence: cfg.rtp_send_silence,
        codec: neg.codec,
        pt: neg.pt,
        te_pt: neg.telephone_event_pt,
        ptime_ms: neg.ptime_ms,
        remote: neg.remote_rtp,
        remote_rtcp: neg.remote_rtcp,
        rtcp_mux: neg.rtcp_mux,
        direction: neg.direction,
        jitter_min_ms: cfg.jitter_min_ms,
        jitter_max_ms: cfg.jitter_max_ms,
        agent_rate: agent_rate.unwrap_or_else(|| natural_rate(neg.codec)),
        codec_fmtp: neg.codec_fmtp.clone(),
    }
}

fn apply_output(session: &mut Session, agent: &mut dyn agent::Agent, out: &mut AgentOutput) {
    if out.clear {
        let dropped = session.queued_ms();
        session.clear_playout();
        agent.on_cleared(dropped);
    }
    if !out.audio.is_empty() {
        session.handle_agent_audio(&out.audio);
        out.audio.clear();
    }
    out.clear = false;
    if let Some(max) = agent.max_queue_ms() {
        session.trim_playout(max);
    }
}

/// Every in-dialog event carries a transaction handle: answer it, or the
/// stack sends 501 when the handle is dropped.
async fn answer_other(state: DialogState) {
    match state {
        DialogState::Options(_, _, h)
        | DialogState::Info(_, _, h)
        | DialogState::Notify(_, _, h)
        | DialogState::Message(_, _, h) => {
            h.reply(StatusCode::OK).await.ok();
        }
        DialogState::Updated(_, _, h)
        | DialogState::Refer(_, _, h)
        | DialogState::Publish(_, _, h) => {
            h.reply(StatusCode::NotImplemented).await.ok();
        }
        _ => {}
    }
}

fn reason(why: &TerminatedReason) -> String {
    match why {
        TerminatedReason::UacBye => "caller hung up".into(),
        TerminatedReason::UacCancel => "caller cancelled".into(),
        TerminatedReason::UasBye => "we hung up".into(),
        TerminatedReason::Timeout => "no ACK (timeout)".into(),
        other => format!("{other:?}"),
    }
}

/// Where a transfer goes: a `sip:` URI (REFER only), or a number or user
/// through `trunk` (REFER to it at the trunk's host, bridged through the
/// trunk if REFER is refused), or at our domain without a trunk.
#[derive(Debug, thiserror::Error)]
pub enum TransferTargetError {
    #[error("no trunk named `{0}`")]
    UnknownTrunk(String),
    #[error("{0}")]
    BadTarget(String),
}

pub fn transfer_target(
    shared: &Shared,
    trunk: Option<&str>,
    to: &str,
) -> Result<crate::calls::TransferRequest, TransferTargetError> {
    use crate::calls::{TransferMode, TransferRequest};
    use TransferTargetError::{BadTarget, UnknownTrunk};
    let trunk = match trunk {
        Some(n) => Some(
            shared
                .trunks
                .account(n)
                .map(|(t, _)| t.clone())
                .ok_or_else(|| UnknownTrunk(n.to_string()))?,
        ),
        None => None,
    };
    let user_ok = |u: &str| {
        !u.is_empty()
            && u.chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-_.*#".contains(c))
    };
    if to.starts_with("sip:") || to.starts_with("sips:") {
        if to.contains(['<', '>', ' ', '"']) {
            return Err(BadTarget(format!("not a plain SIP URI: `{to}`")));
        }
        rsipstack::sip::Uri::try_from(to).map_err(|e| BadTarget(format!("not a SIP URI: {e}")))?;
        let user = to
            .split_once(':')
            .and_then(|(_, r)| r.split_once('@'))
            .map(|(u, _)| u.to_string());
        let bridge = match (&trunk, user) {
            (Some(t), Some(u)) if user_ok(&u) => Some((t.name.clone(), u)),
            _ => None,
        };
        Ok(TransferRequest {
            refer_to: to.to_string(),
            bridge,
            mode: TransferMode::Auto,
        })
    } else if user_ok(to) {
        let host = trunk
            .as_ref()
            .map(|t| format!("{}{}", t.host, t.transport.uri_param()))
            .unwrap_or_else(|| shared.cfg.domain.clone());
        Ok(TransferRequest {
            refer_to: format!("sip:{to}@{host}"),
            bridge: trunk.map(|t| (t.name.clone(), to.to_string())),
            mode: TransferMode::Auto,
        })
    } else {
        Err(BadTarget(format!(
            "expected a sip: URI or a number, got `{to}`"
        )))
    }
}

#[cfg(test)]
mod caller_id_tests {
    #[test]
    fn uri_users() {
        assert_eq!(
            super::uri_user("\"Bob\" <sip:+41445551234@carrier.example;user=phone>").as_deref(),
            Some("+41445551234")
        );
        assert_eq!(
            super::uri_user("<tel:+15551234>").as_deref(),
            Some("+15551234")
        );
        assert_eq!(super::uri_user("<sip:carrier.example>"), None);
        assert_eq!(super::uri_user("garbage"), None);
    }
}

/// How many 3xx redirects an outbound call follows.
const MAX_REDIRECTS: u32 = 3;

/// The first Contact of a 3xx response, as the new request-URI.
fn redirect_target(resp: &rsipstack::sip::Response) -> Option<rsipstack::sip::Uri> {
    if resp.status_code.kind() != rsipstack::sip::StatusCodeKind::Redirection {
        return None;
    }
    let contact = resp.contact_header().ok()?.value().to_string();
    // `<sip:x@y>;q=0.5, <sip:...>` or a bare URI: take the first one.
    let first = contact.split(',').next()?.trim();
    let uri = match (first.find('<'), first.find('>')) {
        (Some(a), Some(b)) if a < b => &first[a + 1..b],
        _ => first.split(';').next()?.trim(),
    };
    rsipstack::sip::Uri::try_from(uri).ok()
}

/// The status code in a REFER NOTIFY's `message/sipfrag` body
/// (`SIP/2.0 200 OK`), if the NOTIFY is for `Event: refer`.
pub fn refer_notify_status(req: &rsipstack::sip::Request) -> Option<u16> {
    let event = req.headers.iter().find_map(|h| match h {
        Header::Event(e) => Some(e.value().to_ascii_lowercase()),
        Header::Other(n, v) if n.eq_ignore_ascii_case("event") || n.eq_ignore_ascii_case("o") => {
            Some(v.to_ascii_lowercase())
        }
        _ => None,
    })?;
    if !event.trim().starts_with("refer") {
        return None;
    }
    let body = String::from_utf8_lossy(&req.body);
    let line = body.lines().next()?.trim();
    let rest = line.strip_prefix("SIP/2.0 ")?;
    rest.split_whitespace().next()?.parse().ok()
}

/// SIP INFO DTMF: `application/dtmf-relay` (`Signal=5`) or `application/dtmf` (`5`).
pub fn dtmf_from_info(req: &rsipstack::sip::Request) -> Option<char> {
    let ct = req
        .headers
        .iter()
        .find_map(|h| match h {
            Header::ContentType(c) => Some(c.value().to_ascii_lowercase()),
            _ => None,
        })
        .unwrap_or_default();
    let body = String::from_utf8_lossy(&req.body);
    let raw = if ct.contains("dtmf-relay") {
        body.lines().find_map(|l| {
            let (k, v) = l.split_once('=')?;
            k.trim()
                .eq_ignore_ascii_case("signal")
                .then(|| v.trim().to_string())
        })?
    } else if ct.contains("application/dtmf") {
        body.trim().to_string()
    } else {
        return None;
    };
    let c = raw.chars().next()?.to_ascii_uppercase();
    "0123456789*#ABCD".contains(c).then_some(c)
}

/// An outbound call to place through a trunk (`POST /calls`).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Originate {
    pub trunk: String,
    /// The number or user to call at the trunk.
    pub to: String,
    /// Our user part in From (default: the trunk's username).
    pub from: Option<String>,
    pub agent: crate::config::AgentConfig,
    /// Give up (CANCEL) if not answered within this (default 60 s).
    pub ring_timeout_s: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum OriginateError {
    #[error("no trunk named `{0}`")]
    UnknownTrunk(String),
    #[error("expected a user or number to call, got `{0}`")]
    BadTarget(String),
    #[error("shutting down: no new calls")]
    Draining,
    #[error("max_calls reached")]
    Full,
    #[error("no RTP ports: {0}")]
    Ports(String),
    #[error("cannot send the INVITE: {0}")]
    Invite(String),
}

/// Places a call through a trunk: digest-answered INVITE (401/407), CANCEL
/// on ring timeout or hangup, the agent on the media once answered. Returns
/// the call id at once; progress shows in `GET /calls/{id}` and the log.
pub fn originate(shared: Arc<Shared>, req: Originate) -> Result<String, OriginateError> {
    originate_leg(shared, req, None, None)
}

/// [`originate`] with an agent handed in (a bridge end) and a parent call
/// told when this leg answers or fails (`BridgeAnswered` / `BridgeFailed`).
pub fn originate_leg(
    shared: Arc<Shared>,
    req: Originate,
    agent_override: Option<Box<dyn agent::Agent>>,
    parent: Option<String>,
) -> Result<String, OriginateError> {
    use rsipstack::dialog::invitation::InviteOption;
    if shared.draining.is_cancelled() {
        return Err(OriginateError::Draining);
    }
    let (trunk, password) = shared
        .trunks
        .account(&req.trunk)
        .cloned()
        .ok_or_else(|| OriginateError::UnknownTrunk(req.trunk.clone()))?;
    let valid = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-_.*#".contains(c))
    };
    if !valid(&req.to) {
        return Err(OriginateError::BadTarget(req.to.clone()));
    }
    // IP-authenticated trunks have no username: call as `agentline`.
    let from = req.from.clone().unwrap_or_else(|| {
        if trunk.username.is_empty() {
            "agentline".to_string()
        } else {
            trunk.username.clone()
        }
    });
    if !valid(&from) {
        return Err(OriginateError::BadTarget(from));
    }
    let ports = shared
        .ports
        .allocate()
        .map_err(|e| OriginateError::Ports(e.to_string()))?;
    let transport_param = trunk.transport.uri_param();
    let uri = |user: &str| {
        rsipstack::sip::Uri::try_from(
            format!("sip:{user}@{}{transport_param}", trunk.host).as_str(),
        )
        .map_err(|e| OriginateError::Invite(e.to_string()))
    };
    let contact = shared
        .contact_for(trunk.transport)
        .and_then(|c| {
            rsipstack::sip::Uri::try_from(
                c.replace("sip:agentline@", &format!("sip:{from}@"))
                    .as_str(),
            )
            .ok()
        })
        .ok_or_else(|| OriginateError::Invite("no local contact".into()))?;
    // Through the outbound proxy when there is one; the request-URI keeps the host.
    let destination = match &trunk.outbound_proxy {
        Some(_) => super::trunk::next_hop(&trunk)
            .map(|a| rsipstack::transport::SipAddr::new(trunk.transport.rsip(), a.into()))
            .ok_or_else(|| OriginateError::Invite("outbound_proxy does not resolve".into()))?,
        None => rsipstack::sip::HostWithPort::try_from(trunk.host.as_str())
            .map(|hp| rsipstack::transport::SipAddr::new(trunk.transport.rsip(), hp))
            .map_err(|e| OriginateError::Invite(e.to_string()))?,
    };
    let sdp_origin = (rand::random::<u32>() as u64, 1);
    let srtp_key = crate::media::srtp::random_master_key();
    let mut caps = local_caps(trunk.transport);
    if trunk.srtp {
        caps.srtp = sdp::SrtpPolicy::Require;
    }
    let offer = sdp::build_offer(
        &caps,
        &LocalMedia {
            ip: shared.advertised_ip,
            rtp_port: ports.port,
            session_id: sdp_origin.0,
            session_version: sdp_origin.1,
            srtp_key: trunk.srtp.then_some(srtp_key),
        },
    );
    let opt = InviteOption {
        caller: uri(&from)?,
        callee: uri(&req.to)?,
        contact,
        offer: Some(offer.clone().into_bytes()),
        content_type: Some("application/sdp".into()),
        credential: Some(rsipstack::dialog::authenticate::Credential {
            username: trunk.username.clone(),
            password,
            realm: None,
            ..Default::default()
        }),
        destination: Some(destination),
        ..Default::default()
    };
    let base_opt = opt.clone();
    let (state_tx, state_rx) = shared.dialogs.new_dialog_state_channel();
    let (dialog, invite) = shared
        .dialogs
        .do_invite_async(opt, state_tx)
        .map_err(|e| OriginateError::Invite(e.to_string()))?;
    let id = dialog.id().to_string();
    let hangup = CancellationToken::new();
    let (cmd_tx, cmd_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut info = CallInfo::new(
        id.clone(),
        dialog.id().call_id.clone(),
        from.clone(),
        req.to.clone(),
        format!("outbound:{}", trunk.name),
        if agent_override.is_some() {
            "bridge".to_string()
        } else {
            req.agent.kind().to_string()
        },
        ports.port,
    );
    info.trunk = Some(trunk.name.clone());
    if !shared
        .calls
        .try_insert(info, hangup.clone(), cmd_tx, shared.cfg.max_calls)
    {
        let d = dialog.clone();
        tokio::spawn(async move { d.cancel().await.ok() });
        return Err(OriginateError::Full);
    }
    let ring_timeout = Duration::from_secs(req.ring_timeout_s.unwrap_or(60).clamp(1, 600));
    let span = tracing::info_span!("call", call_id = %dialog.id().call_id, to = %req.to, trunk = %trunk.name);
    let route = RouteConfig::simple(req.to.clone(), req.agent.clone());
    let call_key = id.clone();
    tokio::spawn(
        async move {
            let id = call_key;
            info!("placing outbound call");
            let mut invite = invite;
            let mut dialog = dialog;
            let mut state_rx = state_rx;
            let deadline = tokio::time::Instant::now() + ring_timeout;
            let mut redirects = 0;
            let outcome = loop {
                let outcome = tokio::select! {
                    r = &mut invite => Some(r),
                    _ = tokio::time::sleep_until(deadline) => None,
                    _ = hangup.cancelled() => None,
                };
                let outcome = match outcome {
                    Some(r) => r,
                    None => {
                        info!("not answered in time (or hung up): CANCEL");
                        dialog.cancel().await.ok();
                        invite.await
                    }
                };
                // 3xx: try the first Contact (at most MAX_REDIRECTS hops),
                // with the same offer and credentials.
                let target = match &outcome {
                    Ok(Ok((_, Some(resp)))) if redirects < MAX_REDIRECTS => redirect_target(resp),
                    _ => None,
                };
                let Some(target) = target else {
                    break outcome;
                };
                redirects += 1;
                info!(%target, "following redirect");
                let mut o = base_opt.clone();
                o.destination = rsipstack::transport::SipAddr::try_from(&target).ok();
                o.callee = target;
                let (tx, rx) = shared.dialogs.new_dialog_state_channel();
                match shared.dialogs.do_invite_async(o, tx) {
                    Ok((d, inv)) => {
                        shared.dialogs.remove_dialog(&dialog.id());
                        dialog = d;
                        invite = inv;
                        state_rx = rx;
                    }
                    Err(e) => {
                        warn!(error = %e, "cannot follow the redirect");
                        break outcome;
                    }
                }
            };
            let end = match outcome {
                Ok(Ok((_, Some(resp))))
                    if resp.status_code.kind() == rsipstack::sip::StatusCodeKind::Successful =>
                {
                    let body = String::from_utf8_lossy(resp.body()).to_string();
                    let neg = sdp::SessionDescription::parse(&body)
                        .map_err(|e| e.to_string())
                        .and_then(|s| sdp::accept_answer(&s, &caps).map_err(|e| e.to_string()));
                    match neg {
                        Ok(neg) => {
                            if let Some(p) = &parent {
                                shared.calls.command(
                                    p,
                                    crate::calls::CallCommand::BridgeAnswered(id.clone()),
                                );
                            }
                            let mut task = CallTask {
                                agent_override,
                                uuid: String::new(),
                                srtp_key,
                                srtp: None,
                                last_sdp: offer,
                                sdp_origin,
                                shared: shared.clone(),
                                dialog: dialog.clone(),
                                state_rx,
                                ports,
                                hangup,
                                commands: cmd_rx,
                                id: id.clone(),
                                setup: CallSetup {
                                    route,
                                    offer: None,
                                    source: neg
                                        .remote_rtp
                                        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
                                    transport: trunk.transport,
                                    caller_user: None,
                                    timer: None,
                                    trunk: Some(trunk.name.clone()),
                                },
                            };
                            task.media_loop(neg).await
                        }
                        Err(e) => {
                            warn!(error = %e, "answer without usable SDP: BYE");
                            dialog.bye().await.ok();
                            format!("bad SDP answer: {e}")
                        }
                    }
                }
                Ok(Ok((_, Some(resp)))) => {
                    let code = u16::from(resp.status_code.clone());
                    format!("call failed: {code} {}", resp.status_code)
                }
                Ok(Ok((_, None))) => "call failed: no final response".to_string(),
                Ok(Err(e)) => format!("call failed: {e}"),
                Err(e) => format!("call task failed: {e}"),
            };
            info!(reason = %end, "call ended");
            if let Some(p) = &parent {
                // No effect once the bridge is up (the parent already switched).
                shared
                    .calls
                    .command(p, crate::calls::CallCommand::BridgeFailed(end.clone()));
            }
            shared.dialogs.remove_dialog(&dialog.id());
            shared.calls.end(&id, Some(&end));
        }
        .instrument(span),
    );
    Ok(id)
}
