//! Browser calls: a second call driver beside the SIP one (`call.rs`).
//!
//! `POST /webrtc/{route}` hands the browser's SDP offer to [`offer`]: str0m
//! (sans-IO WebRTC, in RTP mode) answers it as an ICE-lite peer with host
//! candidates on a socket from the RTP port range (plus `external_ip`),
//! DTLS-SRTP and Opus 48 kHz (+ RFC 4733 telephone-event at 48 kHz). Once
//! ICE and DTLS are up, the call runs on the same [`CallCore`] and media
//! `Session` as a SIP call: str0m's decrypted RTP is written back as plain
//! RTP into `handle_rtp`, and the RTP that `poll_transmit` gives is parsed
//! and sent through str0m's `StreamTx::write_rtp` (str0m does SRTP, RTCP
//! feedback and ICE consent). The core's SIP actions have no meaning here
//! and are dropped; its `CallEvent`s go to the registry, webhooks, metrics
//! and the call's record exactly as for SIP (`call::Reporter`).
//! `DELETE /webrtc/{id}` is the caller hanging up ([`WebrtcCalls::hang_up`]).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use str0m::change::SdpOffer;
use str0m::format::Codec as RtcCodec;
use str0m::media::{Frequency, MediaKind, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::rtp::RtpWrite;
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc, RtcConfig};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use super::call::{self, CallSetup, Reporter};
use super::call_metrics;
use super::core::{Action, CallCore, CallEvent, DialogInput, EndReason, MediaStart};
use super::ports::{PortError, RtpPorts};
use super::shared::Shared;
use crate::agent;
use crate::calls::CallInfo;
use crate::config::{RouteConfig, SipTransport};
use crate::media::rtp::{looks_like_rtcp, PayloadType, RtpPacket, SeqNo, Ssrc};
use crate::media::session::{Direction, Socket, Transmit};
use crate::sdp::{Codec, Negotiated};

/// How long ICE and DTLS may take before the call is given up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// The telephone-event payload type we offer to match at 48 kHz (the
/// browser's number wins in the answer).
const TELEPHONE_EVENT_PT: u8 = 110;

/// Why a browser's offer did not become a call.
#[derive(Debug, thiserror::Error)]
pub enum WebrtcError {
    #[error("no route `{0}` (GET /routes lists them)")]
    NoRoute(String),
    #[error("expected an SDP offer (Content-Type: application/sdp): {0}")]
    BadOffer(String),
    #[error("expected an audio m-line with opus/48000/2 in the offer, found none")]
    NoOpus,
    #[error("draining for shutdown: no new calls")]
    Draining,
    #[error("overloaded: no new calls for now")]
    Overloaded,
    #[error("max_calls reached")]
    Full,
    #[error(transparent)]
    Ports(#[from] PortError),
    #[error("WebRTC set-up failed: {0}")]
    Rtc(String),
}

impl WebrtcError {
    /// The HTTP status this error answers with.
    pub fn status(&self) -> u16 {
        match self {
            WebrtcError::NoRoute(_) => 404,
            WebrtcError::BadOffer(_) | WebrtcError::NoOpus => 400,
            WebrtcError::Draining
            | WebrtcError::Overloaded
            | WebrtcError::Full
            | WebrtcError::Ports(_) => 503,
            WebrtcError::Rtc(_) => 500,
        }
    }
}

/// The browser calls in progress: the caller's own hangup (`DELETE`) per
/// call id. Everything else about them is in the call registry.
#[derive(Default)]
pub struct WebrtcCalls {
    callers: Mutex<HashMap<String, CancellationToken>>,
}

impl WebrtcCalls {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, CancellationToken>> {
        self.callers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The browser hung up call `id`; false if it is no browser call here.
    pub fn hang_up(&self, id: &str) -> bool {
        match self.lock().get(id) {
            Some(t) => {
                t.cancel();
                true
            }
            None => false,
        }
    }
}

/// An accepted offer: the call's id (`Location: /webrtc/{id}`) and the
/// SDP answer.
#[derive(Debug)]
pub struct Answer {
    pub id: String,
    pub sdp: String,
}

/// The payload types of the answer: Opus and telephone-event at 48 kHz.
fn answer_pts(sdp: &str) -> (Option<u8>, Option<u8>) {
    let (mut opus, mut te) = (None, None);
    for line in sdp.lines() {
        let Some(rest) = line.trim().strip_prefix("a=rtpmap:") else {
            continue;
        };
        let Some((pt, enc)) = rest.split_once(' ') else {
            continue;
        };
        let Ok(pt) = pt.parse::<u8>() else { continue };
        let enc = enc.to_ascii_lowercase();
        if enc.starts_with("opus/48000") {
            opus = opus.or(Some(pt));
        } else if enc.starts_with("telephone-event/48000") {
            te = te.or(Some(pt));
        }
    }
    (opus, te)
}

/// The host's outward address (no packet is sent by connecting UDP).
fn outward_ip() -> Option<IpAddr> {
    std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| {
            s.connect("192.0.2.1:9")?;
            s.local_addr()
        })
        .map(|a| a.ip())
        .ok()
}

/// The addresses our host candidates name: the RTP bind address, or when
/// bound to all, the SIP side's address and the host's outward one
/// (browsers gather no loopback candidates and do not answer a loopback
/// one, so a server whose SIP is on loopback still needs it); then
/// `external_ip`.
fn candidate_ips(shared: &Shared) -> Vec<IpAddr> {
    let cfg = shared.cfg();
    let mut ips = Vec::new();
    let mut add = |ip: IpAddr| {
        if !ip.is_unspecified() && !ips.contains(&ip) {
            ips.push(ip);
        }
    };
    if !cfg.rtp_bind.is_unspecified() {
        add(cfg.rtp_bind);
    } else {
        if cfg.external_ip.is_none() {
            add(shared.advertised_ip);
        }
        if let Some(ip) = outward_ip() {
            add(ip);
        }
    }
    if let Some(ext) = cfg.external_ip {
        add(ext);
    }
    ips
}

/// Answers a browser's offer for the route dialled `route` and starts the
/// call's driver. `client` is the HTTP peer (the call's `from`).
pub fn offer(
    shared: Arc<Shared>,
    route: &str,
    offer_sdp: &str,
    client: SocketAddr,
) -> Result<Answer, WebrtcError> {
    let cfg = shared.cfg();
    let route = cfg
        .route(route)
        .cloned()
        .ok_or_else(|| WebrtcError::NoRoute(route.to_string()))?;
    if shared.draining.is_cancelled() {
        return Err(WebrtcError::Draining);
    }
    if shared.overload.overloaded() {
        shared.overload.refused();
        return Err(WebrtcError::Overloaded);
    }
    let offer =
        SdpOffer::from_sdp_string(offer_sdp).map_err(|e| WebrtcError::BadOffer(e.to_string()))?;
    let ports = shared.ports.allocate()?;

    let mut rtc_cfg = RtcConfig::new()
        .set_crypto_provider(Arc::new(str0m::crypto::from_feature_flags()))
        .set_ice_lite(true)
        .set_rtp_mode(true)
        // The connection's RTT (from the browser's RTCP) for `GET /calls`.
        .set_stats_interval(Some(Duration::from_secs(1)))
        .clear_codecs();
    let codecs = rtc_cfg.codec_config();
    codecs.enable_opus(true, false);
    codecs.add_config(
        Pt::new_with_value(TELEPHONE_EVENT_PT),
        None,
        RtcCodec::Tele,
        Frequency::FORTY_EIGHT_KHZ,
        None,
        Default::default(),
    );
    let mut rtc = rtc_cfg.build(Instant::now());
    let mut locals = Vec::new();
    for ip in candidate_ips(&shared) {
        let addr = SocketAddr::new(ip, ports.port);
        match Candidate::host(addr, "udp") {
            Ok(c) => {
                rtc.add_local_candidate(c);
                locals.push(addr);
            }
            Err(e) => debug!(%addr, error = %e, "no host candidate"),
        }
    }
    if locals.is_empty() {
        return Err(WebrtcError::Rtc("no usable host candidate".into()));
    }
    let answer = rtc
        .sdp_api()
        .accept_offer(offer)
        .map_err(|e| WebrtcError::BadOffer(e.to_string()))?
        .to_sdp_string();
    let (Some(opus_pt), te_pt) = answer_pts(&answer) else {
        return Err(WebrtcError::NoOpus);
    };

    let id = format!("webrtc-{}", uuid::Uuid::new_v4().simple());
    let hangup = CancellationToken::new();
    let caller_bye = CancellationToken::new();
    let (cmd_tx, cmd_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut info = CallInfo::new(
        id.clone(),
        id.clone(),
        format!("webrtc:{}", client.ip()),
        route.dial.clone(),
        route.dial.clone(),
        route.agent.kind().to_string(),
        ports.port,
    );
    info.transport = "webrtc";
    if !shared
        .calls
        .try_insert(info, hangup.clone(), cmd_tx, cfg.max_calls)
    {
        return Err(WebrtcError::Full);
    }
    shared.webrtc.lock().insert(id.clone(), caller_bye.clone());
    info!(call_id = %id, route = %route.dial, %client, candidates = ?locals, "browser call: offer answered");

    let span = tracing::info_span!("call", call_id = %id, from = "webrtc", to = %route.dial);
    let recording = call::recording_for(&shared, &route, &id);
    let driver = RtcDriver {
        shared: shared.clone(),
        id: id.clone(),
        uuid: String::new(),
        webhook_tally: Default::default(),
        rtc,
        ports,
        locals,
        peer: None,
        route,
        client,
        opus_pt,
        te_pt,
        mid: None,
        hangup,
        caller_bye,
        commands: cmd_rx,
        recording,
        tx_seq: None,
        rx_plain: Vec::with_capacity(1500),
        rtt: None,
    };
    let call = id.clone();
    tokio::spawn(
        async move {
            let id = call;
            // str0m panics on broken internal invariants (its docs suggest
            // catching them): the call still ends and leaves the registry.
            let end = std::panic::AssertUnwindSafe(driver.run_and_summarize())
                .catch_unwind()
                .await
                .unwrap_or_else(|_| {
                    warn!("browser call driver panicked");
                    EndReason::TaskFailed("WebRTC driver panicked".into())
                });
            shared.webrtc.lock().remove(&id);
            call_metrics::call_ended(&shared.calls, &id, "inbound", &end);
            let answered = shared.calls.is_answered(&id);
            shared.calls.end(&id, &end.call_end(answered));
        }
        .instrument(span),
    );
    Ok(Answer { id, sdp: answer })
}

/// One browser call: str0m's connection and, once it is up, the call core.
struct RtcDriver {
    shared: Arc<Shared>,
    id: String,
    /// The call's UUID for providers and webhooks (set when the agent starts).
    uuid: String,
    webhook_tally: Arc<agent::webhooks::DeliveryTally>,
    rtc: Rtc,
    ports: RtpPorts,
    /// Our host candidates (never empty).
    locals: Vec<SocketAddr>,
    /// The browser's media address: the last source str0m took a datagram from.
    peer: Option<SocketAddr>,
    route: RouteConfig,
    client: SocketAddr,
    opus_pt: u8,
    te_pt: Option<u8>,
    /// The audio media line, once str0m reports it.
    mid: Option<Mid>,
    hangup: CancellationToken,
    caller_bye: CancellationToken,
    commands: tokio::sync::mpsc::UnboundedReceiver<crate::calls::CallCommand>,
    recording: Option<super::recorder::CallRecording>,
    /// The last sequence number sent and its extended value (str0m wants
    /// the rollover counter).
    tx_seq: Option<(SeqNo, u64)>,
    /// A received packet as plain RTP for the core (reused).
    rx_plain: Vec<u8>,
    /// The round trip str0m last measured (RTCP receiver reports).
    rtt: Option<Duration>,
}

/// The agent, built in a task of its own.
type AgentDone = (
    Result<Box<dyn agent::Agent>, agent::AgentError>,
    Option<super::core::Ambient>,
);

/// Sleeps until `t`, or for ever.
async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
        None => std::future::pending().await,
    }
}

/// The earlier of two optional instants.
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A decrypted packet from str0m as the plain RTP the core takes (no
/// header extensions: the core has no use for them), written into `out`.
fn plain_rtp(p: &str0m::rtp::RtpPacket, out: &mut Vec<u8>) {
    let h = &p.header;
    RtpPacket {
        marker: h.marker,
        payload_type: PayloadType(*h.payload_type),
        seq: SeqNo(h.sequence_number),
        timestamp: h.timestamp,
        ssrc: Ssrc(*h.ssrc),
        payload: &p.payload,
    }
    .write(out);
}

/// Parses the RTP the media session sends (`None` for anything else, its
/// RTCP on the muxed port included).
fn parse_rtp(b: &[u8]) -> Option<RtpPacket<'_>> {
    if looks_like_rtcp(b) {
        return None;
    }
    RtpPacket::parse(b).ok()
}

/// `seq` extended past the last one sent (`last`: the 16-bit value and
/// its extension).
fn extend_seq(last: Option<(SeqNo, u64)>, seq: SeqNo) -> u64 {
    match last {
        None => u64::from(seq.0),
        Some((prev, ext)) => (ext as i64 + i64::from(prev.delta_to(seq))).max(0) as u64,
    }
}

impl RtcDriver {
    fn reporter(&self) -> Reporter<'_> {
        Reporter {
            shared: &self.shared,
            id: &self.id,
            uuid: &self.uuid,
            webhook_tally: &self.webhook_tally,
        }
    }

    async fn run_and_summarize(mut self) -> EndReason {
        let (end, core) = match self.connect().await {
            Ok(peer) => {
                let mut core = self.core(peer);
                let end = self.run(&mut core).await;
                (end, Some(core))
            }
            Err(end) => (end, None),
        };
        self.close().await;
        if let (Some(mut rec), Some(mut core)) = (self.recording.take(), core) {
            rec.feed(
                std::iter::from_fn(|| core.poll_recording()),
                &self.shared.calls,
                &self.id,
            );
            rec.finish(&self.shared.calls, &self.id).await;
            info!(reason = %end, "call ended");
            self.reporter().summarize(&core, &end);
        } else {
            info!(reason = %end, "call ended");
        }
        end
    }

    /// The call core of a connected browser: an answered call whose agent
    /// is built now.
    fn core(&self, peer: SocketAddr) -> CallCore {
        let setup = CallSetup {
            route: self.route.clone(),
            offer: None,
            source: self.client,
            transport: SipTransport::Udp,
            caller_user: None,
            timer: None,
            trunk: None,
            slot: None,
        };
        let mut cfg = call::Driver::core_config(&self.shared, &setup, self.ports.port);
        // The connection is answered already: no 183 with a clip.
        cfg.early = None;
        cfg.latch.signal_ip = None;
        let neg = Negotiated {
            codec: Codec::Opus,
            pt: self.opus_pt,
            telephone_event_pt: self.te_pt,
            ptime_ms: 20,
            remote_rtp: Some(peer),
            remote_rtcp: Some(peer),
            rtcp_mux: true,
            direction: Direction::SendRecv,
            media_slots: Vec::new(),
            codec_fmtp: Some("minptime=10;useinbandfec=1".into()),
            proto: "UDP/TLS/RTP/SAVPF".into(),
            srtp: None,
        };
        call_metrics::setup_done(&self.shared.calls, &self.id, "inbound");
        CallCore::outbound(cfg, String::new(), neg, false)
    }

    /// Runs str0m until ICE and DTLS are up: the browser's address, or how
    /// the call ended first.
    async fn connect(&mut self) -> Result<SocketAddr, EndReason> {
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        let mut buf = vec![0u8; 2048];
        let mut connected = false;
        loop {
            let rtc_wake = self.drain_rtc(None, &mut connected).await?;
            if let (true, Some(peer), Some(_)) = (connected, self.peer, self.mid) {
                info!(%peer, "browser connected (ICE, DTLS-SRTP)");
                return Ok(peer);
            }
            tokio::select! {
                r = self.ports.rtp.recv_from(&mut buf) => match r {
                    Ok((n, from)) => self.rtc_input(from, &buf[..n]),
                    Err(e) => debug!(error = %e, "WebRTC receive error"),
                },
                _ = sleep_until(earliest(rtc_wake, Some(deadline))) => {
                    let now = Instant::now();
                    if now >= deadline {
                        warn!("no ICE/DTLS connection in time");
                        return Err(EndReason::Dialog(format!(
                            "webrtc: no ICE/DTLS connection within {} s",
                            CONNECT_TIMEOUT.as_secs()
                        )));
                    }
                    if let Err(e) = self.rtc.handle_input(Input::Timeout(now)) {
                        return Err(EndReason::Dialog(format!("webrtc: {e}")));
                    }
                }
                _ = self.hangup.cancelled() => return Err(EndReason::HangupBeforeAnswer),
                _ = self.caller_bye.cancelled() => return Err(EndReason::CallerCancelled),
            }
        }
    }

    /// The connected call: the core's loop, as the SIP driver's.
    async fn run(&mut self, core: &mut CallCore) -> EndReason {
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<AgentDone>();
        let mut buf = vec![0u8; 2048];
        let (mut hangup_seen, mut bye_seen, mut connected) = (false, false, true);
        let mut rtc_wake = None;
        loop {
            // Twice: str0m's packets feed the core, whose output str0m sends.
            for _ in 0..2 {
                while let Some(action) = core.poll_action() {
                    if let Some(end) = self.act(action, core, &done_tx) {
                        while let Some(t) = core.poll_transmit() {
                            self.write_media(t);
                        }
                        let _ = self.drain_rtc(None, &mut connected).await;
                        return end;
                    }
                }
                while let Some(t) = core.poll_transmit() {
                    self.write_media(t);
                }
                match self.drain_rtc(Some(core), &mut connected).await {
                    Ok(w) => rtc_wake = w,
                    Err(end) => core.handle_dialog(Instant::now(), DialogInput::Terminated(end)),
                }
            }
            if let Some(rec) = &mut self.recording {
                rec.feed(
                    std::iter::from_fn(|| core.poll_recording()),
                    &self.shared.calls,
                    &self.id,
                );
            }
            let core_wake = core.poll_timeout();
            tokio::select! {
                r = self.ports.rtp.recv_from(&mut buf) => match r {
                    Ok((n, from)) => self.rtc_input(from, &buf[..n]),
                    Err(e) => debug!(error = %e, "WebRTC receive error"),
                },
                _ = sleep_until(earliest(core_wake, rtc_wake)) => {
                    let now = Instant::now();
                    if rtc_wake.is_some_and(|w| now >= w) {
                        if let Err(e) = self.rtc.handle_input(Input::Timeout(now)) {
                            let end = EndReason::Dialog(format!("webrtc: {e}"));
                            core.handle_dialog(now, DialogInput::Terminated(end));
                        }
                    }
                    if let Some(w) = core_wake.filter(|w| now >= *w) {
                        self.shared.overload.tick_lag(now.saturating_duration_since(w));
                        core.handle_timeout(now);
                    }
                }
                _ = self.hangup.cancelled(), if !hangup_seen => {
                    hangup_seen = true;
                    core.handle_hangup(Instant::now());
                }
                _ = self.caller_bye.cancelled(), if !bye_seen => {
                    bye_seen = true;
                    info!("the browser hung up (DELETE)");
                    core.handle_dialog(Instant::now(), DialogInput::Terminated(EndReason::CallerHungUp));
                }
                Some(cmd) = self.commands.recv() => core.handle_command(Instant::now(), cmd),
                Some((agent, ambient)) = done_rx.recv() => match agent {
                    Ok(a) => core.start_media(Instant::now(), a, MediaStart::random(), ambient),
                    Err(e) => core.agent_failed(&e),
                },
            }
        }
    }

    /// Carries out one of the core's actions; `Some` when the call is over.
    fn act(
        &mut self,
        action: Action,
        core: &mut CallCore,
        done: &tokio::sync::mpsc::UnboundedSender<AgentDone>,
    ) -> Option<EndReason> {
        match action {
            Action::Event(ev) => {
                let stats = matches!(ev, CallEvent::Stats(_));
                self.reporter().record(ev);
                // The session sees no RTCP here (str0m keeps it): the
                // quality's RTT is str0m's.
                if let (true, Some(rtt)) = (stats, self.rtt) {
                    let ms = rtt.as_secs_f64() * 1000.0;
                    self.shared.calls.update(&self.id, |c| {
                        if let Some(q) = &mut c.quality {
                            q.rtt_ms = Some(ms);
                        }
                    });
                }
            }
            Action::StartAgent(neg) => self.start_agent(*neg, done),
            Action::End(r) => return Some(r),
            // No dialog: the browser's side of a hangup is its own.
            Action::Sip(sip) => debug!(?sip, "SIP action on a browser call: nothing to send"),
            Action::ResolveTransfer { to } => {
                warn!(%to, "a browser call cannot be transferred (SIP only)");
            }
            Action::PlaceBridgeLeg { .. } => {
                let e = super::core::RequestError::Originate(
                    "a browser call cannot be bridged (SIP only)".into(),
                );
                core.handle_bridge_leg(Instant::now(), Err(e));
            }
            Action::HangupLeg(leg) => {
                self.shared.calls.hangup(&leg);
            }
        }
        None
    }

    /// Builds the route's agent in a task, as the SIP driver does.
    fn start_agent(
        &mut self,
        neg: Negotiated,
        done: &tokio::sync::mpsc::UnboundedSender<AgentDone>,
    ) {
        self.uuid = uuid::Uuid::new_v4().to_string();
        let uuid = self.uuid.clone();
        self.shared
            .calls
            .update(&self.id, |c| c.uuid = Some(uuid.clone()));
        let (shared, id, route, done) = (
            self.shared.clone(),
            self.id.clone(),
            self.route.clone(),
            done.clone(),
        );
        tokio::spawn(
            async move {
                let agent = call::build_agent(&shared, &id, &route, &neg, &uuid).await;
                let ambient = call::load_ambient(&route).await;
                let _ = done.send((agent, ambient));
            }
            .in_current_span(),
        );
    }

    /// The candidate a datagram from `from` came in on: a socket bound to
    /// all addresses does not say, so the one of its kind (loopback or not,
    /// IPv4 or IPv6), else the first.
    fn local_for(&self, from: SocketAddr) -> SocketAddr {
        let kind = |a: &SocketAddr| (a.ip().is_loopback(), a.is_ipv4());
        self.locals
            .iter()
            .find(|l| kind(l) == kind(&from))
            .or(self.locals.first())
            .copied()
            .unwrap_or(from)
    }

    /// A datagram from the socket, to str0m if it is this call's.
    fn rtc_input(&mut self, from: SocketAddr, bytes: &[u8]) {
        let Ok(contents) = bytes.try_into() else {
            debug!(%from, len = bytes.len(), "not a WebRTC datagram");
            return;
        };
        let input = Input::Receive(
            Instant::now(),
            Receive {
                proto: Protocol::Udp,
                source: from,
                destination: self.local_for(from),
                contents,
            },
        );
        if !self.rtc.accepts(&input) {
            debug!(%from, "datagram not for this call");
            return;
        }
        self.peer = Some(from);
        if let Err(e) = self.rtc.handle_input(input) {
            debug!(%from, error = %e, "WebRTC input refused");
        }
    }

    /// Sends what str0m has to send and takes its events (RTP to `core`
    /// once there is one) until it asks for time: when, or how the call
    /// ended (the browser left).
    async fn drain_rtc(
        &mut self,
        mut core: Option<&mut CallCore>,
        connected: &mut bool,
    ) -> Result<Option<Instant>, EndReason> {
        loop {
            let out = self
                .rtc
                .poll_output()
                .map_err(|e| EndReason::Dialog(format!("webrtc: {e}")))?;
            match out {
                Output::Timeout(t) => return Ok(Some(t)),
                Output::Transmit(t) => {
                    if let Err(e) = self.ports.rtp.send_to(&t.contents, t.destination).await {
                        debug!(error = %e, to = %t.destination, "WebRTC send failed");
                    }
                }
                Output::Event(ev) => match ev {
                    Event::Connected => *connected = true,
                    Event::MediaAdded(m) if m.kind == MediaKind::Audio => {
                        self.mid.get_or_insert(m.mid);
                    }
                    Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                        info!("ICE disconnected: the browser is gone");
                        return Err(EndReason::CallerHungUp);
                    }
                    Event::MediaEgressStats(s) => {
                        debug!(rtt = ?s.rtt, "egress stats");
                        if s.rtt.is_some() {
                            self.rtt = s.rtt;
                        }
                    }
                    Event::PeerStats(s) => {
                        debug!(rtt = ?s.rtt, "peer stats");
                        if s.rtt.is_some() {
                            self.rtt = s.rtt;
                        }
                    }
                    Event::RtpPacket(p) => {
                        if let Some(core) = core.as_deref_mut() {
                            let from = self.peer.unwrap_or(self.client);
                            plain_rtp(&p, &mut self.rx_plain);
                            core.handle_rtp(Instant::now(), from, &self.rx_plain);
                        }
                    }
                    other => debug!(event = ?other, "WebRTC event"),
                },
            }
        }
    }

    /// One datagram of the media session, through str0m (SRTP, pacing).
    /// Its RTCP stays here: str0m reports for the connection itself.
    fn write_media(&mut self, t: Transmit) {
        if t.socket == Socket::Rtcp {
            return;
        }
        let (Some(mid), Some(rtp)) = (self.mid, parse_rtp(&t.bytes)) else {
            return;
        };
        let ext = extend_seq(self.tx_seq, rtp.seq);
        self.tx_seq = Some((rtp.seq, ext));
        let mut api = self.rtc.direct_api();
        let Some(tx) = api.stream_tx_by_mid(mid, None) else {
            debug!("no send stream for the audio line");
            return;
        };
        let write = RtpWrite::new(
            Pt::from(rtp.payload_type.0),
            ext.into(),
            rtp.timestamp,
            Instant::now(),
            rtp.payload.to_vec(),
        )
        .marker(rtp.marker);
        tx.write_rtp(write);
    }

    /// Closes the connection (DTLS close_notify) on the way out.
    async fn close(&mut self) {
        self.rtc.disconnect();
        let mut connected = false;
        let _ = self.drain_rtc(None, &mut connected).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtp_round_trips_through_the_parser() {
        let mut b = vec![0x80, 0x80 | 111, 0xff, 0xfe, 0, 0, 0x03, 0xc0, 1, 2, 3, 4];
        b.extend_from_slice(&[9, 8, 7]);
        let r = parse_rtp(&b).expect("rtp");
        assert_eq!(
            r,
            RtpPacket {
                marker: true,
                payload_type: PayloadType(111),
                seq: SeqNo(0xfffe),
                timestamp: 960,
                ssrc: Ssrc(0x01020304),
                payload: &[9, 8, 7],
            }
        );
        // Header extension and padding are skipped.
        let mut x = vec![0x90 | 0x20, 111, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1];
        x.extend_from_slice(&[0xbe, 0xde, 0, 1, 0x10, 0xff, 0, 0]);
        x.extend_from_slice(&[5, 6, 0, 2]);
        assert_eq!(parse_rtp(&x).map(|r| r.payload), Some(&[5, 6][..]));
        assert_eq!(parse_rtp(&[0x80, 0]), None);
        assert_eq!(parse_rtp(&[0x40; 12]), None);
        // RTCP (a receiver report) on the muxed port is not RTP.
        assert_eq!(parse_rtp(&[0x81, 201, 0, 7, 1, 2, 3, 4, 0, 0, 0, 0]), None);
    }

    #[test]
    fn sequence_numbers_extend_across_the_wrap() {
        let a = extend_seq(None, SeqNo(65534));
        assert_eq!(a, 65534);
        let b = extend_seq(Some((SeqNo(65534), a)), SeqNo(65535));
        let c = extend_seq(Some((SeqNo(65535), b)), SeqNo(0));
        let d = extend_seq(Some((SeqNo(0), c)), SeqNo(1));
        assert_eq!((b, c, d), (65535, 65536, 65537));
        // A step back (a resent packet) does not advance it.
        assert_eq!(extend_seq(Some((SeqNo(1), d)), SeqNo(0)), 65536);
    }

    #[test]
    fn answer_payload_types() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111 110\r\n\
                   a=rtpmap:111 opus/48000/2\r\na=rtpmap:110 telephone-event/48000\r\n\
                   a=rtpmap:126 telephone-event/8000\r\n";
        assert_eq!(answer_pts(sdp), (Some(111), Some(110)));
        assert_eq!(answer_pts("m=audio 9 RTP/AVP 0\r\n"), (None, None));
    }
}
