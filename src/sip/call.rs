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

use rsipstack::dialog::dialog::TransactionHandle;

use super::call_metrics;
use super::core::{
    Action, Ambient, CallCore, CallEvent, CoreConfig, DialogInput, EarlyMedia, EndReason,
    MediaStart, RequestError, SipAction, TxId,
};
use super::registrar::contact_hostport;
use super::shared::{reply_and_finish, sip_addr, Shared};
use crate::agent;
use crate::calls::{unix_ms, CallInfo, CallState};
use crate::config::{RouteConfig, SipTransport};
use crate::media::session::{Socket, Transmit};
use crate::sdp::{self, LocalMedia, Negotiated};
use crate::sip::ports::RtpPorts;
use crate::sip::rtp_socket::RecvBuf;

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
    /// The call's place under `[security]` max_calls_per_source/user,
    /// given back when the call (its driver) ends.
    pub slot: Option<super::guard::CallSlot>,
}

pub use super::core::local_caps;

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
pub(crate) fn caller_id(req: &rsipstack::sip::Request) -> Option<String> {
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
/// Records an INVITE refused before it became a call (no route, no
/// acceptable codec, no capacity): a whole record with its final status.
pub fn record_rejected(
    shared: &Shared,
    req: &rsipstack::sip::Request,
    route: &str,
    trunk: Option<String>,
    code: u16,
    why: &str,
) {
    let call_id = req
        .call_id_header()
        .map(|c| c.value().to_string())
        .unwrap_or_default();
    let mut info = CallInfo::new(
        format!("{call_id}-rejected"),
        call_id,
        header_text(req, "from"),
        header_text(req, "to"),
        route.to_string(),
        String::new(),
        0,
    );
    info.trunk = trunk;
    info.caller_id = caller_id(req);
    let end = crate::calls::CallEnd {
        reason: format!("rejected {code}: {why}"),
        hung_up_by: "error",
        sip_code: Some(code),
    };
    shared.calls.record_rejected(info, &end);
}

pub fn admit(shared: Arc<Shared>, mut tx: Transaction, setup: CallSetup) {
    let req = tx.original.clone();
    let call_id = req
        .call_id_header()
        .map(|c| c.value().to_string())
        .unwrap_or_default();
    if shared.overload.overloaded() {
        info!(call_id, "overloaded: 503");
        shared.overload.refused();
        record_rejected(
            &shared,
            &req,
            &setup.route.dial,
            setup.trunk.clone(),
            503,
            "overloaded",
        );
        let retry = Header::RetryAfter(rsipstack::sip::headers::RetryAfter::new(
            RETRY_AFTER_S.to_string(),
        ));
        reply_and_finish(tx, StatusCode::ServiceUnavailable, vec![retry]);
        return;
    }
    let ports = match shared.ports.allocate() {
        Ok(p) => p,
        Err(e) => {
            warn!(error = %e, "no RTP ports: 503");
            record_rejected(
                &shared,
                &req,
                &setup.route.dial,
                setup.trunk.clone(),
                503,
                "no RTP ports",
            );
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
        .try_insert(info, hangup.clone(), cmd_tx, shared.cfg().max_calls)
    {
        info!(call_id, "max_calls reached: 503");
        record_rejected(
            &shared,
            &req,
            &setup.route.dial,
            setup.trunk.clone(),
            503,
            "max_calls reached",
        );
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
    let recording = recording_for(&shared, &setup.route, &call_id);
    tokio::spawn(
        async move {
            let dialog_id = dialog.id();
            let cfg = Driver::core_config(&shared, &setup, ports.port);
            let core = CallCore::inbound(Instant::now(), cfg, setup.offer.clone());
            let driver = Driver {
                agent_override: None,
                uuid: String::new(),
                shared: shared.clone(),
                dialog,
                state_rx,
                ports,
                hangup,
                commands: cmd_rx,
                id: id.clone(),
                setup,
                core,
                pending: Default::default(),
                next_tx: 0,
                webhook_tally: Default::default(),
                recording,
                invite: None,
            };
            let end = driver.run_and_summarize().await;
            shared.dialogs.remove_dialog(&dialog_id);
            if let Some(hp) = remote_contact {
                shared.nat.forget(&hp);
            }
            call_metrics::call_ended(&shared.calls, &id, "inbound", &end);
            let answered = shared.calls.is_answered(&id);
            shared.calls.end(&id, &end.call_end(answered));
        }
        .instrument(span),
    );
}

/// The recording of a call on `route`, if it records.
pub(super) fn recording_for(
    shared: &Shared,
    route: &RouteConfig,
    call_id: &str,
) -> Option<super::recorder::CallRecording> {
    route
        .record
        .then(|| super::recorder::CallRecording::new(shared.cfg().record_dir.clone(), call_id))
}

/// What the driver's helper tasks report back to the call's loop.
enum Done {
    Refresh(Result<u16, RequestError>),
    Refer(Result<u16, RequestError>),
    Agent(
        Result<Box<dyn agent::Agent>, agent::AgentError>,
        Option<Ambient>,
    ),
}

/// The thin async half of a call: moves datagrams, dialog events, timers
/// and API commands into the [`CallCore`] and carries out its actions.
pub(super) struct Driver {
    shared: Arc<Shared>,
    id: String,
    /// The call's UUID for providers and webhooks (set once answered).
    uuid: String,
    dialog: InviteDialog,
    state_rx: DialogStateReceiver,
    ports: RtpPorts,
    hangup: CancellationToken,
    commands: tokio::sync::mpsc::UnboundedReceiver<crate::calls::CallCommand>,
    setup: CallSetup,
    /// An agent handed in by whoever placed the call (a bridge leg).
    agent_override: Option<Box<dyn agent::Agent>>,
    core: CallCore,
    /// The call's recording, when its route records.
    recording: Option<super::recorder::CallRecording>,
    /// Requests waiting for the core's answer, by the id it knows them by.
    pending: std::collections::HashMap<TxId, TransactionHandle>,
    next_tx: TxId,
    /// This call's webhook deliveries, for its record.
    webhook_tally: Arc<agent::webhooks::DeliveryTally>,
    /// Outbound early media: the INVITE still waiting for its final answer.
    invite: Option<PendingInvite>,
}

/// Datagrams taken from the RTP socket per wake at most (a second of
/// 20 ms audio; more is a flood, left to the next wake).
const MAX_DRAIN: usize = 64;

impl Driver {
    pub(super) fn core_config(shared: &Shared, setup: &CallSetup, rtp_port: u16) -> CoreConfig {
        let cfg = shared.cfg();
        CoreConfig {
            transport: setup.transport,
            advertised_ip: shared.advertised_ip,
            rtp_port,
            timer: setup.timer,
            answer_delay: Duration::from_millis(setup.route.answer_delay_ms),
            barge_in: setup.route.barge_in,
            barge_in_min_ms: setup.route.barge_in_min_ms,
            interrupt_listening: setup.route.interrupt_listening,
            dsp: setup.route.dsp.clone(),
            rtp_timeout: Duration::from_secs(cfg.rtp_timeout_s),
            send_silence: cfg.rtp_send_silence,
            jitter_min_ms: cfg.jitter_min_ms,
            jitter_max_ms: cfg.jitter_max_ms,
            srtp_key: crate::media::srtp::random_master_key(),
            sdp_session_id: rand::random::<u32>() as u64,
            record: setup.route.record,
            amd: None,
            greeting: setup.route.greeting_audio.clone(),
            filler: setup.route.filler.clone(),
            early: setup.route.early_media.clone().map(|clip| EarlyMedia {
                clip,
                start: MediaStart::random(),
            }),
            latch: crate::media::latch::LatchPolicy {
                relatch_after: cfg.rtp_relatch_after,
                signal_ip: Some(setup.source.ip()).filter(|ip| !ip.is_unspecified()),
            },
        }
    }

    /// Runs the call to its end, then logs its summary.
    async fn run_and_summarize(mut self) -> EndReason {
        let end = self.run().await;
        if let Some(mut rec) = self.recording.take() {
            rec.feed(
                std::iter::from_fn(|| self.core.poll_recording()),
                &self.shared.calls,
                &self.id,
            );
            rec.finish(&self.shared.calls, &self.id).await;
        }
        info!(reason = %end, "call ended");
        self.summarize(&end);
        end
    }

    async fn run(&mut self) -> EndReason {
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut buf = RecvBuf::new(2048);
        // Larger than any datagram taken, so a bigger one shows as such.
        let mut rtcp_buf = vec![0u8; 2048];
        let mut hangup_seen = false;
        let mut ring_expired = false;
        // One timer and one cancellation future for the whole call, re-armed
        // only when the core's deadline moves (not rebuilt per packet).
        let sleep = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(sleep);
        let mut armed: Option<Instant> = None;
        // The core's latest clock reading: a datagram stamped before it
        // (read at this tick, arrived before the last) is given this time,
        // so the core never sees time go backwards.
        let mut floor = Instant::now();
        let hangup = self.hangup.clone();
        let cancelled = hangup.cancelled();
        tokio::pin!(cancelled);
        loop {
            while let Some(action) = self.core.poll_action() {
                if let Some(end) = self.act(action, &done_tx).await {
                    while let Some(t) = self.core.poll_transmit() {
                        self.send(t).await;
                    }
                    return end;
                }
            }
            while let Some(t) = self.core.poll_transmit() {
                self.send(t).await;
            }
            if let Some(rec) = &mut self.recording {
                let core = &mut self.core;
                rec.feed(
                    std::iter::from_fn(|| core.poll_recording()),
                    &self.shared.calls,
                    &self.id,
                );
            }
            // While the playout clock runs, RTP is read at its ticks.
            if let Err(e) = self.ports.rtp.set_clocked(self.core.media_clocked()) {
                warn!(error = %e, "RTP socket mode switch failed");
            }
            let wake = self.core.poll_timeout();
            if wake != armed {
                if let Some(w) = wake {
                    sleep.as_mut().reset(tokio::time::Instant::from_std(w));
                }
                armed = wake;
            }
            // Biased: the playout clock first, then the call's control
            // sources, the sockets (a flood) last.
            tokio::select! {
                biased;
                _ = &mut sleep, if armed.is_some() => {
                    armed = None;
                    self.drain_rtp(&mut buf, floor);
                    let now = Instant::now();
                    floor = now;
                    if let Some(w) = wake {
                        self.shared.overload.tick_lag(now.saturating_duration_since(w));
                    }
                    self.core.handle_timeout(now);
                }
                // Disabled once seen: `cancelled()` stays ready for ever.
                _ = &mut cancelled, if !hangup_seen => {
                    hangup_seen = true;
                    self.core.handle_hangup(Instant::now());
                }
                Some(cmd) = self.commands.recv() => self.core.handle_command(Instant::now(), cmd),
                p = pending_invite(&mut self.invite, ring_expired) => match p {
                    Pending::Final(r) => self.on_final(r),
                    Pending::Timeout => {
                        ring_expired = true;
                        info!("not answered in time: CANCEL");
                        self.dialog.cancel().await.ok();
                    }
                },
                Some(done) = done_rx.recv() => self.on_done(done),
                st = self.state_rx.recv() => {
                    if let Some(input) = self.dialog_input(st) {
                        self.core.handle_dialog(Instant::now(), input);
                    }
                }
                r = self.ports.rtp.recv(&mut buf) => match r {
                    Ok(d) => self.core.handle_rtp(d.at.max(floor), d.from, buf.payload(&d)),
                    Err(e) => debug!(error = %e, "RTP receive error"),
                },
                r = self.ports.rtcp.recv_from(&mut rtcp_buf) => match r {
                    Ok((n, from)) => self.core.handle_rtcp(Instant::now(), from, &rtcp_buf[..n]),
                    Err(e) => debug!(error = %e, "RTCP receive error"),
                },
            }
        }
    }

    /// Feeds the core what the RTP socket holds (clocked reading: the
    /// datagrams that arrived since the last tick, with their arrival
    /// times). Bounded, so a flood cannot hold the task.
    fn drain_rtp(&mut self, buf: &mut RecvBuf, floor: Instant) {
        for _ in 0..MAX_DRAIN {
            match self.ports.rtp.try_recv(buf) {
                Ok(Some(d)) => self
                    .core
                    .handle_rtp(d.at.max(floor), d.from, buf.payload(&d)),
                Ok(None) => return,
                Err(e) => {
                    debug!(error = %e, "RTP receive error");
                    return;
                }
            }
        }
    }

    /// The final response to an INVITE answered early (183).
    fn on_final(&mut self, r: InviteOutcome) {
        let Some(p) = self.invite.take() else { return };
        let now = Instant::now();
        match final_answer(r, &p.caps) {
            Ok(neg) => {
                call_metrics::setup_done(&self.shared.calls, &self.id, "outbound");
                if let Some(parent) = &p.parent {
                    self.shared.calls.command(
                        parent,
                        crate::calls::CallCommand::BridgeAnswered(self.id.clone()),
                    );
                }
                self.core.handle_answered(now, Ok(neg));
            }
            Err(FinalError::BadSdp(e)) => self.core.handle_answered(now, Err(e)),
            Err(FinalError::End(r)) => self.core.handle_failed(r),
        }
    }

    fn on_done(&mut self, done: Done) {
        let now = Instant::now();
        match done {
            Done::Refresh(r) => self.core.handle_refresh_result(now, r),
            Done::Refer(r) => self.core.handle_refer_result(now, r),
            Done::Agent(Ok(agent), ambient) => {
                self.core
                    .start_media(now, agent, MediaStart::random(), ambient);
            }
            Done::Agent(Err(e), _) => self.core.agent_failed(&e),
        }
    }

    /// The dialog layer's news as the core's input; `None` for states the
    /// core has no use for.
    fn dialog_input(&mut self, st: Option<DialogState>) -> Option<DialogInput> {
        let mut stash = |h: TransactionHandle| {
            self.next_tx += 1;
            self.pending.insert(self.next_tx, h);
            self.next_tx
        };
        Some(match st? {
            DialogState::Calling(_) => DialogInput::Calling,
            DialogState::Confirmed(..) => DialogInput::Confirmed {
                ack_body: self
                    .dialog
                    .last_remote_ack()
                    .map(|a| a.body.clone())
                    .unwrap_or_default(),
            },
            // Before the answer the INVITE's final response says how it ended.
            DialogState::Terminated(..) if self.invite.is_some() => return None,
            DialogState::Terminated(_, why) => DialogInput::Terminated(reason(&why)),
            DialogState::Updated(_, req, h) => DialogInput::Offer {
                tx: stash(h),
                body: req.body,
            },
            DialogState::Info(_, req, h) => DialogInput::Info {
                tx: stash(h),
                dtmf: dtmf_from_info(&req),
            },
            DialogState::Notify(_, req, h) => DialogInput::Notify {
                tx: stash(h),
                refer_status: refer_notify_status(&req),
            },
            DialogState::Options(_, _, h) | DialogState::Message(_, _, h) => {
                DialogInput::Ping { tx: stash(h) }
            }
            DialogState::Refer(_, _, h) | DialogState::Publish(_, _, h) => {
                DialogInput::Unsupported { tx: stash(h) }
            }
            DialogState::Trying(_) | DialogState::Early(..) | DialogState::WaitAck(..) => {
                return None
            }
        })
    }

    /// Carries out one action; `Some` when the call is over.
    async fn act(
        &mut self,
        action: Action,
        done: &tokio::sync::mpsc::UnboundedSender<Done>,
    ) -> Option<EndReason> {
        let timer = self.setup.timer;
        match action {
            Action::Sip(SipAction::Ringing) => {
                if let Err(e) = self.dialog.ringing(None, None) {
                    return Some(EndReason::CannotSend {
                        what: "180",
                        detail: e.to_string(),
                    });
                }
            }
            Action::Sip(SipAction::Progress { sdp }) => {
                let headers = Some(vec![Header::ContentType("application/sdp".into())]);
                if let Err(e) = self.dialog.ringing(headers, Some(sdp.into_bytes())) {
                    return Some(EndReason::CannotSend {
                        what: "183",
                        detail: e.to_string(),
                    });
                }
            }
            Action::Sip(SipAction::Accept { sdp }) => {
                let headers = answer_headers(timer.as_ref());
                if let Err(e) = self.dialog.accept(headers, Some(sdp.into_bytes())) {
                    return Some(EndReason::CannotSend {
                        what: "200",
                        detail: e.to_string(),
                    });
                }
            }
            Action::Sip(SipAction::Reject { code }) => {
                self.dialog.reject(Some(StatusCode::from(code)), None).ok();
            }
            Action::Sip(SipAction::Respond { tx, code, sdp }) => {
                if let Some(h) = self.pending.remove(&tx) {
                    let code = StatusCode::from(code);
                    match sdp {
                        Some(sdp) => h
                            .respond(code, answer_headers(timer.as_ref()), Some(sdp.into_bytes()))
                            .await
                            .ok(),
                        None => h.reply(code).await.ok(),
                    };
                }
            }
            Action::Sip(SipAction::Cancel) => {
                if let Err(e) = self.dialog.cancel().await {
                    debug!(error = %e, "CANCEL failed");
                }
            }
            Action::Sip(SipAction::Bye) => {
                if let Err(e) = self.dialog.bye().await {
                    debug!(error = %e, "BYE failed");
                }
            }
            Action::Sip(SipAction::ByeWithReason { reason }) => {
                let reason = vec![Header::Reason(reason.into())];
                if let Err(e) = self.dialog.bye_with_headers(Some(reason)).await {
                    debug!(error = %e, "BYE failed");
                }
            }
            Action::Sip(SipAction::Refresh { sdp }) => {
                let d = self.dialog.clone();
                let headers = answer_headers(timer.as_ref());
                let done = done.clone();
                tokio::spawn(async move {
                    let r = d.reinvite(headers, Some(sdp.into_bytes())).await;
                    let _ = done.send(Done::Refresh(request_outcome(r)));
                });
            }
            Action::Sip(SipAction::Refer { target }) => {
                let uri = match rsipstack::sip::Uri::try_from(target.as_str()) {
                    Ok(u) => u,
                    Err(e) => {
                        let r = Err(RequestError::BadTarget(e.to_string()));
                        self.core.handle_refer_result(Instant::now(), r);
                        return None;
                    }
                };
                let d = self.dialog.clone();
                let referred_by = self
                    .shared
                    .contact_for(self.setup.transport)
                    .map(|c| format!("<{c}>"));
                let done = done.clone();
                tokio::spawn(async move {
                    let headers = referred_by.map(|r| {
                        vec![Header::ReferredBy(
                            rsipstack::sip::headers::ReferredBy::new(r),
                        )]
                    });
                    let r = d.refer(uri, headers, None).await;
                    let _ = done.send(Done::Refer(request_outcome(r)));
                });
            }
            Action::StartAgent(neg) => self.start_agent(*neg, done),
            Action::ResolveTransfer { to } => {
                match transfer_target(&self.shared, self.setup.trunk.as_deref(), &to) {
                    Ok(req) => self
                        .core
                        .handle_command(Instant::now(), crate::calls::CallCommand::Transfer(req)),
                    Err(e) => warn!(%to, error = %e, "agent asked for a transfer we cannot do"),
                }
            }
            Action::PlaceBridgeLeg { trunk, to, agent } => {
                let leg = Originate {
                    trunk,
                    route: RouteConfig::simple(
                        to.clone(),
                        crate::config::AgentConfig::Echo { rate: None },
                    ),
                    to,
                    from: None,
                    ring_timeout_s: Some(60),
                };
                let r = originate_leg(
                    self.shared.clone(),
                    leg,
                    Some(Box::new(agent)),
                    Some(self.id.clone()),
                )
                .map_err(|e| RequestError::Originate(e.to_string()));
                self.core.handle_bridge_leg(Instant::now(), r);
            }
            Action::HangupLeg(leg) => {
                self.shared.calls.hangup(&leg);
            }
            Action::Event(ev) => self.record(ev),
            Action::End(r) => return Some(r),
        }
        None
    }

    /// Builds the agent in a task of its own (webhooks and providers take
    /// time; the call keeps answering its dialog meanwhile).
    fn start_agent(&mut self, neg: Negotiated, done: &tokio::sync::mpsc::UnboundedSender<Done>) {
        self.uuid = uuid::Uuid::new_v4().to_string();
        let uuid = self.uuid.clone();
        self.shared
            .calls
            .update(&self.id, |c| c.uuid = Some(uuid.clone()));
        if let Some(a) = self.agent_override.take() {
            let _ = done.send(Done::Agent(Ok(a), None));
            return;
        }
        let (shared, id, route, done) = (
            self.shared.clone(),
            self.id.clone(),
            self.setup.route.clone(),
            done.clone(),
        );
        tokio::spawn(
            async move {
                let agent = build_agent(&shared, &id, &route, &neg, &uuid).await;
                let ambient = load_ambient(&route).await;
                let _ = done.send(Done::Agent(agent, ambient));
            }
            .in_current_span(),
        );
    }

    /// This call's reporting half (registry, webhooks, metrics, log).
    fn reporter(&self) -> Reporter<'_> {
        Reporter {
            shared: &self.shared,
            id: &self.id,
            uuid: &self.uuid,
            webhook_tally: &self.webhook_tally,
        }
    }

    fn record(&self, ev: CallEvent) {
        self.reporter().record(ev)
    }

    fn summarize(&self, end: &EndReason) {
        self.reporter().summarize(&self.core, end)
    }

    async fn send(&mut self, t: Transmit) {
        let r = match t.socket {
            // Never waits: a packet the socket cannot take now is dropped.
            Socket::Rtp => self.ports.rtp.try_send_to(&t.bytes, t.to),
            Socket::Rtcp => self.ports.rtcp.send_to(&t.bytes, t.to).await,
        };
        if let Err(e) = r {
            debug!(error = %e, to = %t.to, "media send failed");
        }
    }
}

/// What a call did, reported to the registry (API), webhooks, metrics and
/// the log: shared by the SIP driver and the WebRTC one (`super::webrtc`).
pub(super) struct Reporter<'a> {
    pub(super) shared: &'a Arc<Shared>,
    pub(super) id: &'a str,
    /// The call's UUID for webhooks (empty until the agent starts).
    pub(super) uuid: &'a str,
    pub(super) webhook_tally: &'a Arc<agent::webhooks::DeliveryTally>,
}

impl Reporter<'_> {
    /// Reports what the call did: the registry (API), webhooks, the log.
    pub(super) fn record(&self, ev: CallEvent) {
        let calls = &self.shared.calls;
        let id = &self.id;
        match ev {
            CallEvent::EarlyMedia => calls.update(id, |c| c.early_media = true),
            CallEvent::Answering => {
                call_metrics::setup_done(calls, id, "inbound");
                calls.update(id, |c| c.state = CallState::Answering)
            }
            CallEvent::Answered {
                codec,
                remote_rtp,
                agent,
            } => {
                calls.update(id, |c| {
                    c.state = CallState::Active;
                    c.codec = Some(codec.to_string());
                    c.remote_rtp = remote_rtp.map(|a| a.to_string());
                    if c.agents_used.is_empty() {
                        c.agents_used.push(agent.to_string());
                    }
                });
                calls.answered(id);
                self.webhook(
                    "call_started",
                    serde_json::json!({ "codec": codec, "agent": agent }),
                );
            }
            CallEvent::Srtp(suite) => calls.update(id, |c| c.srtp = suite.map(str::to_string)),
            CallEvent::Agent(ev) => {
                call_metrics::agent_event(&ev);
                self.on_agent_event(ev)
            }
            CallEvent::AgentKind(kind) => calls.update(id, |c| {
                c.agent = kind.to_string();
                if c.agents_used.last().map(String::as_str) != Some(kind) {
                    c.agents_used.push(kind.to_string());
                }
            }),
            CallEvent::Dtmf(digit) => {
                self.webhook(
                    "dtmf_digit",
                    serde_json::json!({"digit": digit.to_string()}),
                );
                calls.update(id, |c| c.dtmf.push(digit));
            }
            CallEvent::CallerTurn(ev) => {
                let speaking = matches!(ev, crate::media::dsp::TurnEvent::SpeechStarted);
                calls.update(id, |c| {
                    c.caller_speaking = speaking;
                    if !speaking {
                        c.caller_turns += 1;
                    }
                });
            }
            CallEvent::ReplySent { ms } => calls.update(id, |c| {
                if let Some(t) = c.turns.last_mut().filter(|t| t.own_out_ms.is_none()) {
                    t.own_out_ms = Some(ms);
                }
            }),
            CallEvent::Backchannel => {
                metrics::counter!("agentline_backchannels_total").increment(1);
                calls.update(id, |c| c.backchannels += 1);
            }
            CallEvent::Latched(addr) => calls.update(id, |c| c.remote_rtp = Some(addr.to_string())),
            CallEvent::MediaUpdated { codec, held } => calls.update(id, |c| {
                c.codec = Some(codec.to_string());
                c.on_hold = held;
            }),
            CallEvent::Transfer(t) => calls.update(id, |c| c.transfer = Some(t)),
            CallEvent::Amd {
                kind,
                at_ms,
                report,
            } => {
                metrics::counter!("agentline_amd_results_total", "result" => kind).increment(1);
                let mut payload = serde_json::json!({ "result": kind, "ms": at_ms });
                if let Some(d) = &report.decision {
                    payload["cause"] = d.cause.as_str().into();
                    payload["decision"] = serde_json::json!(d);
                }
                if let Some(b) = &report.beep {
                    payload["beep"] = serde_json::json!(b);
                }
                self.webhook("amd", payload);
                calls.update(id, |c| c.amd = Some(report));
            }
            CallEvent::Stats(s) => {
                call_metrics::stats_tick(calls, id, &s, true);
                calls.update(id, |c| {
                    c.srtp_rejected = s.srtp_rejected;
                    c.media = s.media;
                    c.jitter = Some(s.jitter);
                    if s.quality.packets_received > 0 {
                        c.add_mos_sample(s.quality.mos);
                    }
                    c.quality = Some(s.quality);
                });
            }
        }
    }

    /// Records and reports what the agent said or did.
    fn on_agent_event(&self, ev: agent::AgentEvent) {
        use agent::AgentEvent as E;
        let (calls, id) = (&self.shared.calls, &self.id);
        match ev {
            E::Transcript { role, text } => {
                info!(%role, %text, "transcript");
                let line = crate::calls::TranscriptLine {
                    role: role.clone(),
                    text: text.clone(),
                    at_unix_ms: unix_ms(),
                };
                calls.update(id, |c| {
                    if c.transcript.len() >= 100 {
                        c.transcript.remove(0);
                    }
                    c.transcript.push(line);
                });
                self.webhook(
                    "transcription",
                    serde_json::json!({"role": role, "text": text}),
                );
            }
            E::Interruption => {
                debug!("caller barged in");
                calls.update(id, |c| c.interruptions += 1);
                self.webhook("interruption", serde_json::json!({}));
            }
            E::Latency(l) => {
                info!(
                    total_ms = l.total_ms,
                    asr_ms = l.asr_ms,
                    llm_first_token_ms = l.llm_first_token_ms,
                    tts_first_byte_ms = l.tts_first_byte_ms,
                    "turn latency"
                );
                calls.update(id, |c| {
                    if c.turns.len() >= 50 {
                        c.turns.remove(0);
                    }
                    c.turns.push(l);
                });
            }
            E::Error { message } | E::Failed { reason: message } => {
                warn!(error = %message, "agent error");
                let m = message.clone();
                calls.update(id, |c| c.last_agent_error = Some(m));
                self.webhook("error", serde_json::json!({"message": message}));
            }
            E::Provider { kind } => {
                info!(agent = %kind, "fallback agent took over");
                calls.update(id, |c| {
                    c.agents_used.push(kind.clone());
                    c.agent = kind;
                });
            }
            E::ToolCall { name, arguments } => {
                info!(%name, "agent tool call");
                self.webhook(
                    "tool_invocation",
                    serde_json::json!({"name": name, "arguments": arguments}),
                );
            }
            E::Transfer { .. } => {}
        }
    }

    pub(super) fn webhook(&self, kind: &str, payload: serde_json::Value) {
        if let Some(w) = self.shared.webhooks() {
            w.send(self.uuid, kind, payload, self.webhook_tally);
        }
    }

    /// The end-of-call log lines and the `call_ended` webhook.
    pub(super) fn summarize(&self, core: &CallCore, end: &EndReason) {
        if let Some(st) = core.stats() {
            call_metrics::media_ended(&self.shared.calls, self.id, &st);
            let (s, q) = (&st.media, &st.quality);
            info!(
                rx = s.rx_packets,
                tx = s.tx_packets,
                malformed = s.rx_malformed,
                underruns = s.tx_underruns,
                trimmed_ms = s.tx_trimmed_ms,
                dtmf = s.rx_dtmf_digits,
                lost = q.packets_lost,
                jitter_ms = format!("{:.1}", q.jitter_ms),
                rtt_ms = q.rtt_ms.map(|r| format!("{r:.1}")),
                mos = format!("{:.2}", q.mos),
                "media summary"
            );
        }
        if let Some(c) = self.shared.calls.get(self.id) {
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
        if !self.uuid.is_empty() {
            self.webhook("call_ended", serde_json::json!({"reason": end.to_string()}));
        }
        let (sent, failed) = self.webhook_tally.counts();
        self.shared.calls.update(self.id, |c| {
            c.webhooks = crate::calls::WebhookTally { sent, failed }
        });
    }
}

/// The status of a request we sent in the dialog, or why there is none.
fn request_outcome(
    r: rsipstack::Result<Option<rsipstack::sip::Response>>,
) -> Result<u16, RequestError> {
    match r {
        Ok(Some(resp)) => Ok(u16::from(resp.status_code)),
        Ok(None) => Err(RequestError::NotConfirmed),
        Err(e) => Err(RequestError::Stack(e.to_string())),
    }
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

/// The route's ambient sound, if it has one and the file reads.
pub(super) async fn load_ambient(route: &RouteConfig) -> Option<Ambient> {
    let (file, level) = route.ambient.clone()?;
    let parsed = match tokio::fs::read(&file).await {
        Ok(b) => crate::media::wav::Wav::parse(&b).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match parsed {
        Ok(w) => Some(Ambient {
            pcm: w.mono(),
            rate: w.sample_rate,
            level,
        }),
        Err(e) => {
            warn!(file = %file.display(), error = %e, "ambient sound not loaded");
            None
        }
    }
}

/// The route's agent for this call: echo/demo directly, providers in a
/// failover chain (with the route's fallbacks and circuit breakers).
pub(super) async fn build_agent(
    shared: &Shared,
    id: &str,
    route: &RouteConfig,
    neg: &Negotiated,
    uuid: &str,
) -> Result<Box<dyn agent::Agent>, agent::AgentError> {
    let info = shared.calls.get(id);
    let mut ctx = agent::AgentContext {
        uuid: uuid.to_string(),
        caller: info.as_ref().map(|c| c.from.clone()).unwrap_or_default(),
        called: route.dial.clone(),
        codec: Some(neg.codec),
        overrides: Default::default(),
        greeting: route.greeting_text.clone(),
    };
    let mut chain = vec![route.agent.clone()];
    chain.extend(route.fallback.iter().cloned());
    if let Some(w) = shared.webhooks() {
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
            crate::config::AgentConfig::Echo { .. } | crate::config::AgentConfig::Demo
        )
    {
        return agent::build_for(&chain[0], &ctx);
    }
    let timeout = Duration::from_millis(route.response_timeout_ms);
    Ok(Box::new(agent::fallback::Fallback::new(
        chain,
        ctx,
        timeout,
        shared.breakers.clone(),
    )?))
}

fn reason(why: &TerminatedReason) -> EndReason {
    match why {
        TerminatedReason::UacBye => EndReason::CallerHungUp,
        TerminatedReason::UacCancel => EndReason::CallerCancelled,
        TerminatedReason::UasBye => EndReason::WeHungUp,
        TerminatedReason::Timeout => EndReason::NoAck,
        other => EndReason::Dialog(format!("{other:?}")),
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
                .map(|(t, _)| t)
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
            .unwrap_or_else(|| shared.cfg().domain.clone());
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

/// What an overloaded server's 503 tells callers to wait, in seconds.
const RETRY_AFTER_S: u32 = 5;

type InviteHandle =
    rsipstack::platform::JoinHandle<rsipstack::dialog::invitation::InviteAsyncResult>;
type InviteOutcome =
    Result<rsipstack::dialog::invitation::InviteAsyncResult, tokio::task::JoinError>;

/// What happens next while an outbound call rings.
enum Step {
    Final(InviteOutcome),
    Stop,
    State(Box<DialogState>),
}

/// How ringing ended: a final response, or a 183 whose SDP we take.
enum Waited {
    Final(InviteOutcome),
    Early(Negotiated),
}

/// An outbound call whose media started on a 183: its INVITE waits for
/// the final response while the call runs.
struct PendingInvite {
    invite: InviteHandle,
    deadline: tokio::time::Instant,
    caps: sdp::LocalCaps,
    /// The call this one is a bridge leg of (told once it answers).
    parent: Option<String>,
}

enum FinalError {
    BadSdp(String),
    End(EndReason),
}

/// The SDP of a 183 (early media) we can run media on.
fn early_answer(resp: &rsipstack::sip::Response, caps: &sdp::LocalCaps) -> Option<Negotiated> {
    if resp.body().is_empty() {
        return None;
    }
    let body = String::from_utf8_lossy(resp.body());
    let neg = sdp::SessionDescription::parse(&body)
        .map_err(|e| e.to_string())
        .and_then(|s| sdp::accept_answer(&s, caps).map_err(|e| e.to_string()));
    match neg {
        Ok(n) => Some(n),
        Err(e) => {
            debug!(error = %e, "183 SDP not usable: no early media");
            None
        }
    }
}

/// An INVITE's final outcome: the answer of its 2xx, or how the call ends.
fn final_answer(outcome: InviteOutcome, caps: &sdp::LocalCaps) -> Result<Negotiated, FinalError> {
    match outcome {
        Ok(Ok((_, Some(resp))))
            if resp.status_code.kind() == rsipstack::sip::StatusCodeKind::Successful =>
        {
            let body = String::from_utf8_lossy(resp.body()).to_string();
            sdp::SessionDescription::parse(&body)
                .map_err(|e| e.to_string())
                .and_then(|s| sdp::accept_answer(&s, caps).map_err(|e| e.to_string()))
                .map_err(FinalError::BadSdp)
        }
        Ok(Ok((_, Some(resp)))) => Err(FinalError::End(EndReason::CallFailed {
            code: u16::from(resp.status_code.clone()),
            reason: resp.status_code.to_string(),
        })),
        Ok(Ok((_, None))) => Err(FinalError::End(EndReason::NoFinalResponse)),
        Ok(Err(e)) => Err(FinalError::End(EndReason::InviteFailed(e.to_string()))),
        Err(e) => Err(FinalError::End(EndReason::TaskFailed(e.to_string()))),
    }
}

enum Pending {
    Final(InviteOutcome),
    Timeout,
}

/// The final response of an INVITE still pending or its ring timeout
/// (once: after it, only the response); never without one.
async fn pending_invite(p: &mut Option<PendingInvite>, expired: bool) -> Pending {
    let Some(p) = p else {
        return std::future::pending().await;
    };
    if expired {
        return Pending::Final((&mut p.invite).await);
    }
    tokio::select! {
        r = &mut p.invite => Pending::Final(r),
        _ = tokio::time::sleep_until(p.deadline) => Pending::Timeout,
    }
}

/// The first Contact of a 3xx response, as the new request-URI.
pub(crate) fn redirect_target(resp: &rsipstack::sip::Response) -> Option<rsipstack::sip::Uri> {
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

/// An outbound call to place through a trunk (`POST /calls`, AMI
/// `/originate`, a bridged transfer leg).
#[derive(Debug, Clone)]
pub struct Originate {
    pub trunk: String,
    /// The number or user to call at the trunk.
    pub to: String,
    /// Our user part in From (default: the trunk's username).
    pub from: Option<String>,
    /// The profile's route whose agent, fallbacks and options take the call
    /// once answered (never an agent described by the request).
    pub route: RouteConfig,
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
    #[error("overloaded: no new calls for now")]
    Overloaded,
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
    if shared.overload.overloaded() {
        shared.overload.refused();
        return Err(OriginateError::Overloaded);
    }
    let (trunk, password) = shared
        .trunks
        .account(&req.trunk)
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
            req.route.agent.kind().to_string()
        },
        ports.port,
    );
    info.trunk = Some(trunk.name.clone());
    info.direction = crate::calls::Direction::Outbound;
    if req.route.amd && agent_override.is_none() {
        info.amd = Some(Default::default());
    }
    if !shared
        .calls
        .try_insert(info, hangup.clone(), cmd_tx, shared.cfg().max_calls)
    {
        let d = dialog.clone();
        tokio::spawn(async move { d.cancel().await.ok() });
        return Err(OriginateError::Full);
    }
    let ring_timeout = Duration::from_secs(req.ring_timeout_s.unwrap_or(60).clamp(1, 600));
    let span = tracing::info_span!("call", call_id = %dialog.id().call_id, to = %req.to, trunk = %trunk.name);
    // The agent's `called` (and the webhooks' `to`) is the number we call.
    let route = RouteConfig {
        dial: req.to.clone(),
        ..req.route
    };
    let call_key = id.clone();
    let recording = recording_for(&shared, &route, &dialog.id().call_id);
    tokio::spawn(
        async move {
            let id = call_key;
            info!("placing outbound call");
            let mut invite = invite;
            let mut dialog = dialog;
            let mut state_rx = state_rx;
            let deadline = tokio::time::Instant::now() + ring_timeout;
            let mut redirects = 0;
            let waited = loop {
                let step = tokio::select! {
                    r = &mut invite => Step::Final(r),
                    _ = tokio::time::sleep_until(deadline) => Step::Stop,
                    _ = hangup.cancelled() => Step::Stop,
                    Some(st) = state_rx.recv() => Step::State(Box::new(st)),
                };
                let outcome = match step {
                    Step::State(st) => {
                        // A 183 with SDP: media (and the agent) start now.
                        if let DialogState::Early(_, resp) = *st {
                            if let Some(neg) = early_answer(&resp, &caps) {
                                break Waited::Early(neg);
                            }
                        }
                        continue;
                    }
                    Step::Stop => {
                        info!("not answered in time (or hung up): CANCEL");
                        dialog.cancel().await.ok();
                        break Waited::Final((&mut invite).await);
                    }
                    Step::Final(r) => r,
                };
                // 3xx: try the first Contact (at most MAX_REDIRECTS hops),
                // with the same offer and credentials.
                let target = match &outcome {
                    Ok(Ok((_, Some(resp)))) if redirects < MAX_REDIRECTS => redirect_target(resp),
                    _ => None,
                };
                let Some(target) = target else {
                    break Waited::Final(outcome);
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
                        break Waited::Final(outcome);
                    }
                }
            };
            // The media answer to run the call with, and the INVITE still
            // waiting for its final response when it came in a 183.
            let answered = match waited {
                Waited::Early(neg) => Ok((neg, Some(invite))),
                Waited::Final(outcome) => final_answer(outcome, &caps).map(|neg| (neg, None)),
            };
            let mut return_summarized = false;
            let end = match answered {
                Ok((neg, pending)) => {
                    if pending.is_none() {
                        call_metrics::setup_done(&shared.calls, &id, "outbound");
                        if let Some(p) = &parent {
                            shared
                                .calls
                                .command(p, crate::calls::CallCommand::BridgeAnswered(id.clone()));
                        }
                    }
                    let setup = CallSetup {
                        route,
                        offer: None,
                        source: neg
                            .remote_rtp
                            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
                        transport: trunk.transport,
                        caller_user: None,
                        timer: None,
                        trunk: Some(trunk.name.clone()),
                        slot: None,
                    };
                    let mut cfg = Driver::core_config(&shared, &setup, ports.port);
                    cfg.srtp_key = srtp_key;
                    cfg.sdp_session_id = sdp_origin.0;
                    if setup.route.amd && agent_override.is_none() {
                        cfg.amd = Some(super::amd::mode_for(&setup.route.amd_action).await);
                    }
                    let early = pending.is_some();
                    let driver = Driver {
                        core: CallCore::outbound(cfg, offer, neg, early),
                        agent_override,
                        uuid: String::new(),
                        shared: shared.clone(),
                        dialog: dialog.clone(),
                        state_rx,
                        ports,
                        hangup,
                        commands: cmd_rx,
                        id: id.clone(),
                        setup,
                        pending: Default::default(),
                        next_tx: 0,
                        webhook_tally: Default::default(),
                        recording,
                        invite: pending.map(|i| PendingInvite {
                            invite: i,
                            deadline,
                            caps,
                            parent: parent.clone(),
                        }),
                    };
                    return_summarized = true;
                    driver.run_and_summarize().await
                }
                Err(FinalError::BadSdp(e)) => {
                    warn!(error = %e, "answer without usable SDP: BYE");
                    let end = EndReason::BadSdpAnswer(e);
                    let reason = end.bye_reason().map(|r| vec![Header::Reason(r.into())]);
                    dialog.bye_with_headers(reason).await.ok();
                    end
                }
                Err(FinalError::End(r)) => r,
            };
            if !return_summarized {
                info!(reason = %end, "call ended");
            }
            if let Some(p) = &parent {
                // No effect once the bridge is up (the parent already switched).
                shared
                    .calls
                    .command(p, crate::calls::CallCommand::BridgeFailed(end.to_string()));
            }
            shared.dialogs.remove_dialog(&dialog.id());
            call_metrics::call_ended(&shared.calls, &id, "outbound", &end);
            let answered = shared.calls.is_answered(&id);
            shared.calls.end(&id, &end.call_end(answered));
        }
        .instrument(span),
    );
    Ok(id)
}
