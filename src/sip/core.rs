//! The per-call decisions, sans-IO: ringing, answering, waiting for the
//! ACK, re-INVITE/UPDATE answers, hold, RFC 4028 session-timer refresh and
//! expiry, DTMF, REFER/NOTIFY progress, the switch to a bridged leg, the
//! agent's requests, the RTP timeout, and why the call ended.
//!
//! Shaped like str0m's `Rtc` and quinn-proto's `Connection`: inputs come in
//! through `handle_*(now, ..)`, outputs are drained with [`CallCore::poll_action`]
//! and [`CallCore::poll_transmit`], and [`CallCore::poll_timeout`] says when
//! to call [`CallCore::handle_timeout`]. It never reads a clock, touches a
//! socket or awaits; the driver in [`super::call`] moves bytes and timers
//! between rsipstack, the RTP sockets and this core. Tests drive it in
//! virtual time.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use tracing::{debug, info, warn};

use super::amd::{AmdMode, AmdStep, CallAmd};
use super::barge::{BargeIn, Decision, Verdict};
use super::timer::SessionTimer;
use crate::agent::{self, Agent, AgentEvent, AgentOutput};
use crate::calls::{
    CallCommand, TransferInfo, TransferMethod, TransferMode, TransferRequest, TransferState,
};
use crate::config::SipTransport;
use crate::media::dsp::{DspConfig, TurnEvent};
use crate::media::latch::LatchPolicy;
use crate::media::recording::StereoFrame;
use crate::media::session::{natural_rate, MediaEvent, MediaParams, Session, Transmit};
use crate::media::srtp::{SrtpSession, MASTER_KEY_LEN};
use crate::sdp::{self, Codec, LocalCaps, LocalMedia, Negotiated};

/// How long the driver waits for rsipstack's `Calling` state (its 100
/// Trying goes out only then) before our 180 moves the dialog on.
const TRYING_WAIT: Duration = Duration::from_millis(500);
/// Call statistics are refreshed (and the RTP timeout checked) this often.
const STATS_EVERY: Duration = Duration::from_secs(1);
/// After the NOTIFY that completes a transfer, our 200 to it leaves through
/// its own transaction; the BYE waits this long so the transferee sees them
/// in order.
const BYE_AFTER_NOTIFY: Duration = Duration::from_millis(100);

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

/// Why a call ended. Its text (Display) is what the API and logs show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    CallerHungUp,
    CallerCancelled,
    /// Our BYE as the dialog layer reports it.
    WeHungUp,
    /// The caller never ACKed our 200.
    NoAck,
    /// The dialog's event channel closed under us.
    DialogGone,
    /// Another dialog termination (rsipstack's own words).
    Dialog(String),
    /// Hung up (API, shutdown) while ringing: rejected with 503.
    HangupBeforeAnswer,
    /// Hung up by the API or the shutdown drain once answered.
    HangupByServer,
    AgentHungUp,
    /// The agent ended the call after its last words were played.
    AgentFinished,
    /// AMD heard a machine: hung up at once, or after the message.
    AnsweringMachine {
        message_left: bool,
    },
    Transferred {
        target: String,
    },
    SessionTimerExpired,
    SessionRefreshFailed,
    RtpTimeout,
    /// A SIP message we had to send could not be sent.
    CannotSend {
        what: &'static str,
        detail: String,
    },
    /// The ACK to our offerless 200 carried no usable answer.
    BadAckAnswer(String),
    /// An outbound call's 200 carried no usable answer.
    BadSdpAnswer(String),
    AgentError(String),
    CodecError(String),
    /// An outbound call that was not answered: its final status.
    CallFailed {
        code: u16,
        reason: String,
    },
    NoFinalResponse,
    /// An outbound call that failed before any final response.
    InviteFailed(String),
    TaskFailed(String),
}

/// Who ended a call, for records and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HungUpBy {
    Caller,
    Agent,
    Api,
    Timeout,
    Error,
    Callee,
}

impl HungUpBy {
    pub fn as_str(self) -> &'static str {
        match self {
            HungUpBy::Caller => "caller",
            HungUpBy::Agent => "agent",
            HungUpBy::Api => "api",
            HungUpBy::Timeout => "timeout",
            HungUpBy::Error => "error",
            HungUpBy::Callee => "callee",
        }
    }
}

impl EndReason {
    /// The RFC 3326 `Reason` header value a BYE for this end carries, for
    /// ends the peer caused by what it sent (`SIP;cause=488;text="..."`).
    pub fn bye_reason(&self) -> Option<String> {
        match self {
            EndReason::BadAckAnswer(_) | EndReason::BadSdpAnswer(_) => {
                let text: String = self
                    .to_string()
                    .chars()
                    .filter(|c| !matches!(c, '"' | '\\') && !c.is_control())
                    .collect();
                Some(format!("SIP;cause=488;text=\"{text}\""))
            }
            _ => None,
        }
    }

    /// The INVITE's final status as the caller (or, outbound, the callee)
    /// saw it: 200 once answered, else the failure.
    pub fn sip_code(&self, answered: bool) -> Option<u16> {
        use EndReason as E;
        match self {
            E::CallFailed { code, .. } => Some(*code),
            E::NoFinalResponse | E::InviteFailed(_) => None,
            _ if answered => Some(200),
            E::CallerCancelled => Some(487),
            E::HangupBeforeAnswer => Some(503),
            _ => None,
        }
    }

    /// The record's view of this end.
    pub fn call_end(&self, answered: bool) -> crate::calls::CallEnd {
        crate::calls::CallEnd {
            reason: self.to_string(),
            hung_up_by: self.hung_up_by().as_str(),
            sip_code: self.sip_code(answered),
        }
    }

    pub fn hung_up_by(&self) -> HungUpBy {
        use EndReason as E;
        match self {
            E::CallerHungUp | E::CallerCancelled => HungUpBy::Caller,
            E::AgentHungUp
            | E::AgentFinished
            | E::Transferred { .. }
            | E::AnsweringMachine { .. } => HungUpBy::Agent,
            E::HangupBeforeAnswer | E::HangupByServer | E::WeHungUp => HungUpBy::Api,
            E::NoAck | E::SessionTimerExpired | E::RtpTimeout => HungUpBy::Timeout,
            E::CallFailed { .. } | E::NoFinalResponse => HungUpBy::Callee,
            _ => HungUpBy::Error,
        }
    }
}

impl std::fmt::Display for EndReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use EndReason as E;
        match self {
            E::CallerHungUp => f.write_str("caller hung up"),
            E::CallerCancelled => f.write_str("caller cancelled"),
            E::WeHungUp => f.write_str("we hung up"),
            E::NoAck => f.write_str("no ACK (timeout)"),
            E::DialogGone => f.write_str("dialog gone"),
            E::Dialog(s) => f.write_str(s),
            E::HangupBeforeAnswer => f.write_str("hangup before answer"),
            E::HangupByServer => f.write_str("hangup by server"),
            E::AgentHungUp => f.write_str("agent hung up"),
            E::AgentFinished => f.write_str("agent finished"),
            E::AnsweringMachine { message_left: true } => {
                f.write_str("answering machine: message left")
            }
            E::AnsweringMachine {
                message_left: false,
            } => f.write_str("answering machine"),
            E::Transferred { target } => write!(f, "transferred to {target}"),
            E::SessionTimerExpired => f.write_str("session timer expired"),
            E::SessionRefreshFailed => f.write_str("session refresh failed"),
            E::RtpTimeout => f.write_str("RTP timeout"),
            E::CannotSend { what, detail } => write!(f, "cannot send {what}: {detail}"),
            E::BadAckAnswer(e) => write!(f, "bad answer in ACK: {e}"),
            E::BadSdpAnswer(e) => write!(f, "bad SDP answer: {e}"),
            E::AgentError(e) => write!(f, "agent error: {e}"),
            E::CodecError(e) => write!(f, "codec error: {e}"),
            E::CallFailed { code, reason } => write!(f, "call failed: {code} {reason}"),
            E::NoFinalResponse => f.write_str("call failed: no final response"),
            E::InviteFailed(e) => write!(f, "call failed: {e}"),
            E::TaskFailed(e) => write!(f, "call task failed: {e}"),
        }
    }
}

/// A handle the driver keeps for an in-dialog request it must answer.
pub type TxId = u64;

/// What the dialog layer reports, as the core needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DialogInput {
    /// The new dialog is `Calling` (the stack has sent 100 Trying).
    Calling,
    /// The ACK for our 200 arrived, with its body (an answer, if our 200
    /// carried the offer).
    Confirmed {
        ack_body: Vec<u8>,
    },
    Terminated(EndReason),
    /// re-INVITE or UPDATE with its body (empty: no offer).
    Offer {
        tx: TxId,
        body: Vec<u8>,
    },
    /// INFO, with the DTMF digit it carries if any.
    Info {
        tx: TxId,
        dtmf: Option<char>,
    },
    /// NOTIFY, with the sipfrag status if it reports a REFER.
    Notify {
        tx: TxId,
        refer_status: Option<u16>,
    },
    /// OPTIONS or MESSAGE (answered 200).
    Ping {
        tx: TxId,
    },
    /// A request we do not take in a dialog (REFER from the peer, PUBLISH).
    Unsupported {
        tx: TxId,
    },
}

/// A SIP message for the driver to send on this call's dialog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SipAction {
    /// 180 Ringing.
    Ringing,
    /// 183 Session Progress with this SDP (early media).
    Progress {
        sdp: String,
    },
    /// 200 OK to the INVITE with this SDP (and the session-timer headers).
    Accept {
        sdp: String,
    },
    /// A final error response to the INVITE.
    Reject {
        code: u16,
    },
    /// Answer an in-dialog request; `sdp` goes with a 200 to an offer.
    Respond {
        tx: TxId,
        code: u16,
        sdp: Option<String>,
    },
    Bye,
    /// BYE with an RFC 3326 `Reason` header (this value): the call ends
    /// because of something the peer sent (an unusable SDP answer).
    ByeWithReason {
        reason: String,
    },
    /// CANCEL our INVITE (an outbound call hung up during early media).
    Cancel,
    /// RFC 4028 refresh: a re-INVITE with our SDP; the outcome comes back
    /// through [`CallCore::handle_refresh_result`].
    Refresh {
        sdp: String,
    },
    /// REFER to `target`; the outcome comes back through
    /// [`CallCore::handle_refer_result`].
    Refer {
        target: String,
    },
}

/// What a call reports as it goes (the registry, webhooks, records).
#[derive(Debug, Clone)]
pub enum CallEvent {
    /// 183 with SDP is out: the caller hears early media (ringback) while
    /// the agent is set up.
    EarlyMedia,
    /// The 200 OK is on its way.
    Answering,
    /// Media is up with this codec and agent.
    Answered {
        codec: &'static str,
        remote_rtp: Option<SocketAddr>,
        agent: &'static str,
    },
    /// SRTP suite in use, or `None` for plain RTP.
    Srtp(Option<&'static str>),
    Agent(AgentEvent),
    /// The agent serving the call changed kind (a bridged leg took over).
    AgentKind(&'static str),
    Dtmf(char),
    CallerTurn(TurnEvent),
    /// The caller said something short over the agent ("mm-hm") that did
    /// not interrupt it.
    Backchannel,
    /// The first packet of an agent's reply went out this long after the
    /// provider's first byte of it (the turn's `own_out_ms`).
    ReplySent {
        ms: u64,
    },
    Latched(SocketAddr),
    /// A re-INVITE/UPDATE changed the media.
    MediaUpdated {
        codec: &'static str,
        held: bool,
    },
    Transfer(TransferInfo),
    Stats(Box<StatsSnapshot>),
    /// Answering-machine detection found something (`kind`: human,
    /// machine, notsure, beep, greeting_ended).
    Amd {
        kind: &'static str,
        at_ms: u64,
        report: crate::calls::AmdReport,
    },
}

/// Media counters and quality, as of the last stats tick.
#[derive(Debug, Clone)]
pub struct StatsSnapshot {
    pub media: crate::media::session::MediaStats,
    pub quality: crate::media::rtcp::CallQuality,
    pub jitter: crate::media::jitter::JitterStats,
    pub srtp_rejected: u64,
}

/// The driver's work list.
pub enum Action {
    Sip(SipAction),
    /// Build the agent for this media (async: webhooks, providers), then
    /// hand it to [`CallCore::start_media`] (or report
    /// [`CallCore::agent_failed`]).
    StartAgent(Box<Negotiated>),
    /// Turn an agent's transfer request into a [`TransferRequest`] (needs
    /// the trunk table) and hand it back as [`CallCommand::Transfer`].
    ResolveTransfer {
        to: String,
    },
    /// Place the transfer's bridge leg through `trunk` with `agent` as its
    /// media end; report with [`CallCore::handle_bridge_leg`].
    PlaceBridgeLeg {
        trunk: String,
        to: String,
        agent: agent::Bridge,
    },
    /// Hang up another call (the bridged leg of this one).
    HangupLeg(String),
    Event(CallEvent),
    /// The call is over; nothing follows.
    End(EndReason),
}

impl std::fmt::Debug for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Sip(s) => write!(f, "Sip({s:?})"),
            Action::StartAgent(n) => write!(f, "StartAgent({})", n.codec.encoding_name()),
            Action::ResolveTransfer { to } => write!(f, "ResolveTransfer({to})"),
            Action::PlaceBridgeLeg { trunk, to, .. } => write!(f, "PlaceBridgeLeg({trunk}, {to})"),
            Action::HangupLeg(id) => write!(f, "HangupLeg({id})"),
            Action::Event(e) => write!(f, "Event({e:?})"),
            Action::End(r) => write!(f, "End({r})"),
        }
    }
}

/// A SIP request we sent that failed (its error text from the stack).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("dialog not confirmed")]
    NotConfirmed,
    #[error("{0}")]
    Stack(String),
    #[error("bad target: {0}")]
    BadTarget(String),
    /// A new call (a transfer's bridge leg) could not be placed.
    #[error("{0}")]
    Originate(String),
}

/// What the core needs from the profile and the route.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    pub transport: SipTransport,
    pub advertised_ip: IpAddr,
    pub rtp_port: u16,
    pub timer: Option<SessionTimer>,
    pub answer_delay: Duration,
    pub barge_in: bool,
    /// Caller speech over the agent shorter than this is a backchannel,
    /// not a barge-in (see [`super::barge`]).
    pub barge_in_min_ms: u32,
    pub interrupt_listening: bool,
    pub dsp: DspConfig,
    /// Hang up after this long without RTP (zero: never).
    pub rtp_timeout: Duration,
    pub send_silence: bool,
    pub jitter_min_ms: u32,
    pub jitter_max_ms: u32,
    /// Our SRTP master key (used when the SDP agrees on SRTP).
    pub srtp_key: [u8; MASTER_KEY_LEN],
    /// SDP `o=` session id.
    pub sdp_session_id: u64,
    /// Record the call: the media session's stereo frames come out of
    /// [`CallCore::poll_recording`] from the answer to the end.
    pub record: bool,
    /// Answering-machine detection on the callee's audio (outbound calls
    /// that asked for it), and what a machine gets.
    pub amd: Option<AmdMode>,
    /// Played the moment media starts, ahead of anything the agent says.
    pub greeting: Option<std::sync::Arc<crate::config::Prompt>>,
    /// Played when the agent is silent this long after the caller's turn.
    pub filler: Option<(std::sync::Arc<crate::config::Prompt>, Duration)>,
    /// Early media for an inbound call that offered SDP: 183 with our
    /// answer and this clip looped while the agent is set up; the 200 goes
    /// once the agent is ready (and `answer_delay` has passed).
    pub early: Option<EarlyMedia>,
    /// Who may feed the media: the re-latch window and the INVITE's source.
    pub latch: LatchPolicy,
}

/// What early media plays, and where its RTP stream starts (it is the
/// stream the agent goes on with after the 200).
#[derive(Debug, Clone)]
pub struct EarlyMedia {
    pub clip: std::sync::Arc<crate::config::Prompt>,
    pub start: MediaStart,
}

/// Random starting points of the RTP stream and the wall clock for RTCP.
#[derive(Debug, Clone, Copy)]
pub struct MediaStart {
    pub wall: SystemTime,
    pub ssrc: u32,
    pub seq: u16,
    pub ts: u32,
}

impl MediaStart {
    /// Drawn now (the driver's; tests pass fixed values).
    pub fn random() -> MediaStart {
        MediaStart {
            wall: SystemTime::now(),
            ssrc: rand::random(),
            seq: rand::random(),
            ts: rand::random(),
        }
    }
}

/// A clip (ambient sound, greeting, filler) at the call's agent rate;
/// `None`, logged, when it cannot be resampled (the call goes on without).
fn clip_at(pcm: &[i16], from: u32, to: u32, what: &'static str) -> Option<Vec<i16>> {
    crate::media::resample::resample_once(pcm, from, to)
        .map_err(|e| warn!(error = %e, what, "clip not played"))
        .ok()
}

/// Ambient sound to loop under the agent.
#[derive(Debug, Clone)]
pub struct Ambient {
    pub pcm: Vec<i16>,
    pub rate: u32,
    pub level: f32,
}

enum Phase {
    /// Waiting (briefly) for the stack's `Calling` before ringing.
    Trying {
        until: Instant,
    },
    Ringing {
        answer_at: Instant,
    },
    /// Our 200 is out; a hangup now waits for the ACK to send its BYE.
    AwaitingAck {
        bye_on_ack: bool,
    },
    /// The driver is building the agent.
    StartingAgent {
        neg: Box<Negotiated>,
    },
    /// 183 is out, the clip loops, the driver is building the agent.
    Early(Box<Early>),
    Active(Box<Active>),
    Ended,
}

/// Media before the answer: our RTP stream playing the early-media clip.
struct Early {
    session: Session,
    srtp: Option<SrtpSession>,
    neg: Box<Negotiated>,
    /// The clip at the session's rate (looped).
    clip: Vec<i16>,
    /// Not answered before this (the route's `answer_delay`).
    answer_at: Instant,
    /// The agent, once built, waiting for `answer_at`.
    ready: Option<(Box<dyn Agent>, Option<Ambient>)>,
}

/// A transfer in progress.
struct Transfer {
    req: TransferRequest,
    info: TransferInfo,
    /// Our end of the bridge, while its leg is being placed / rings.
    bridge_placing: Option<agent::Bridge>,
    bridge_ringing: Option<agent::Bridge>,
}

struct Active {
    session: Session,
    srtp: Option<SrtpSession>,
    agent: Box<dyn Agent>,
    out: AgentOutput,
    last_refresh: Instant,
    refresh_in_flight: bool,
    next_stats: Instant,
    /// When RTP was last seen arriving (and the count then).
    last_rx: (Instant, u64),
    transfer: Option<Transfer>,
    /// The bridge leg placed for a transfer (hung up with this call).
    bridged_leg: Option<String>,
    /// BYE at this time, ending for this reason (after a transfer's NOTIFY).
    bye_at: Option<(Instant, EndReason)>,
    amd: Option<Box<CallAmd>>,
    barge: BargeIn,
    filler: Filler,
    /// Answered from early media: the 200 is out and its ACK not yet in
    /// (`true`: a hangup is waiting for it to send the BYE).
    awaiting_ack: Option<bool>,
    /// An outbound call in early media (183): the agent hears the callee's
    /// side, what it says is held until the 200.
    unanswered: bool,
    /// The agent's audio went over its playout cap once (logged once).
    capped: bool,
}

/// The route's filler sound and when it is due.
#[derive(Default)]
struct Filler {
    /// At the call's agent rate; empty when the route has none.
    pcm: Vec<i16>,
    after: Duration,
    due: Option<Instant>,
    /// In the playout queue now (dropped as soon as the agent speaks).
    playing: bool,
}

/// One call's signalling and media decisions.
pub struct CallCore {
    cfg: CoreConfig,
    phase: Phase,
    /// The caller's offer (inbound), or `None` when our 200 offers.
    offer: Option<Negotiated>,
    /// The SDP we last sent, re-sent in session refreshes.
    last_sdp: String,
    sdp_version: u64,
    actions: std::collections::VecDeque<Action>,
    /// The RTCP BYE of a call that just ended, still to be sent.
    last_transmit: Option<Transmit>,
    /// An outbound call whose media started on a 183: not answered yet.
    outbound_early: bool,
    final_stats: Option<StatsSnapshot>,
    /// The recording's last frames, taken from the session as it ended.
    recording_tail: std::collections::VecDeque<StereoFrame>,
    /// Sources that sent to our RTP port before our answer could tell
    /// anyone this call's port (a killed server's old calls): they never
    /// latch.
    pre_answer: Vec<SocketAddr>,
}

/// At most this many pre-answer sources are remembered.
const MAX_PRE_ANSWER: usize = 16;

impl CallCore {
    /// An INVITE we will answer (after `answer_delay`).
    pub fn inbound(now: Instant, cfg: CoreConfig, offer: Option<Negotiated>) -> CallCore {
        CallCore {
            cfg,
            phase: Phase::Trying {
                until: now + TRYING_WAIT,
            },
            offer,
            last_sdp: String::new(),
            sdp_version: 0,
            actions: Default::default(),
            last_transmit: None,
            outbound_early: false,
            final_stats: None,
            recording_tail: Default::default(),
            pre_answer: Vec::new(),
        }
    }

    /// A call we placed that was answered with `answer` (to our
    /// `offer_sdp`) - or, with `early`, whose 183 carried it: media and
    /// the agent start now, the answer comes with
    /// [`CallCore::handle_answered`] (or the end with
    /// [`CallCore::handle_failed`]).
    pub fn outbound(
        cfg: CoreConfig,
        offer_sdp: String,
        answer: Negotiated,
        early: bool,
    ) -> CallCore {
        let mut core = CallCore {
            cfg,
            phase: Phase::Ended,
            offer: None,
            last_sdp: offer_sdp,
            sdp_version: 1,
            actions: Default::default(),
            last_transmit: None,
            outbound_early: early,
            final_stats: None,
            recording_tail: Default::default(),
            pre_answer: Vec::new(),
        };
        core.start_agent(answer);
        core
    }

    pub fn is_ended(&self) -> bool {
        matches!(self.phase, Phase::Ended)
    }

    /// The next thing for the driver to do.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The next RTP/RTCP datagram to send (SRTP applied).
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        let Some((session, srtp)) = self.media() else {
            return self.last_transmit.take();
        };
        loop {
            let mut t = session.poll_transmit()?;
            match srtp {
                None => return Some(t),
                Some(s) => {
                    if let Some(p) = s.protect(&t.bytes) {
                        t.bytes = p;
                        return Some(t);
                    }
                }
            }
        }
    }

    /// The next recorded tick (caller left, sent audio right), while the
    /// call records and until its last frame after the end.
    pub fn poll_recording(&mut self) -> Option<StereoFrame> {
        match &mut self.phase {
            Phase::Active(a) => a.session.poll_recording(),
            _ => self.recording_tail.pop_front(),
        }
    }

    /// When [`CallCore::handle_timeout`] is due next.
    /// A media session's playout clock runs (early media or an active
    /// call): the core wakes at least every ptime, so the driver may read
    /// RTP at those wakes instead of being woken per packet.
    pub fn media_clocked(&self) -> bool {
        matches!(self.phase, Phase::Early(_) | Phase::Active(_))
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Trying { until } => Some(*until),
            Phase::Ringing { answer_at } => Some(*answer_at),
            Phase::AwaitingAck { .. } | Phase::StartingAgent { .. } | Phase::Ended => None,
            Phase::Early(e) => {
                let wake = e.session.next_timeout();
                Some(match e.ready {
                    Some(_) => wake.min(e.answer_at),
                    None => wake,
                })
            }
            Phase::Active(a) => {
                let mut wake = a.session.next_timeout().min(a.next_stats);
                if let Some(t) = self.cfg.timer {
                    if !a.refresh_in_flight {
                        if let Some(due) = t.refresh_due(a.last_refresh) {
                            wake = wake.min(due);
                        }
                    }
                    if let Some(exp) = t.expiry(a.last_refresh) {
                        wake = wake.min(exp);
                    }
                }
                if let Some((at, _)) = &a.bye_at {
                    wake = wake.min(*at);
                }
                if let Some(at) = a.filler.due {
                    wake = wake.min(at);
                }
                if let Some(t) = a.amd.as_ref().and_then(|d| d.poll_timeout()) {
                    wake = wake.min(t);
                }
                Some(wake)
            }
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        match &mut self.phase {
            Phase::Trying { until } if now >= *until => {
                debug!("no Calling state within 500 ms");
                self.ring(now);
            }
            Phase::Ringing { answer_at } if now >= *answer_at => self.answer(),
            Phase::Early(e) => {
                e.session.handle_timeout(now);
                Self::early_media(e);
                if e.ready.is_some() && now >= e.answer_at {
                    self.answer_early(now);
                }
            }
            Phase::Active(a) => {
                if let Some((at, _)) = &a.bye_at {
                    if now >= *at {
                        let reason = a.bye_at.take().map(|(_, r)| r);
                        if let Some(r) = reason {
                            self.end_with_bye(r);
                        }
                        return;
                    }
                }
                a.session.handle_timeout(now);
                if let Some(d) = &mut a.amd {
                    d.handle_timeout(now);
                }
                a.agent.poll(&mut a.out);
                Self::apply_output(a);
                if let Some(t) = self.cfg.timer {
                    if t.expiry(a.last_refresh).is_some_and(|e| now >= e) {
                        warn!(
                            interval_s = t.interval_s,
                            "session not refreshed: hanging up"
                        );
                        self.end_with_bye(EndReason::SessionTimerExpired);
                        return;
                    }
                    if !a.refresh_in_flight
                        && t.refresh_due(a.last_refresh).is_some_and(|d| now >= d)
                    {
                        a.refresh_in_flight = true;
                        self.actions.push_back(Action::Sip(SipAction::Refresh {
                            sdp: self.last_sdp.clone(),
                        }));
                    }
                }
                self.after_input(now);
            }
            _ => {}
        }
    }

    /// A hangup asked for by the API or the shutdown drain.
    pub fn handle_hangup(&mut self, _now: Instant) {
        match &mut self.phase {
            Phase::Trying { .. } | Phase::Ringing { .. } | Phase::Early(_) => {
                self.actions
                    .push_back(Action::Sip(SipAction::Reject { code: 503 }));
                self.end(EndReason::HangupBeforeAnswer);
            }
            // A 200 cannot be taken back: BYE once the ACK comes.
            Phase::AwaitingAck { bye_on_ack } => *bye_on_ack = true,
            // The agent may take long (webhooks, provider connect): end now;
            // a late agent is dropped.
            Phase::StartingAgent { .. } if self.outbound_early => {
                self.actions.push_back(Action::Sip(SipAction::Cancel));
                self.end(EndReason::HangupBeforeAnswer);
            }
            Phase::StartingAgent { .. } => self.end_with_bye(EndReason::HangupByServer),
            Phase::Active(a) if a.awaiting_ack.is_some() => a.awaiting_ack = Some(true),
            Phase::Active(a) if a.unanswered => {
                self.actions.push_back(Action::Sip(SipAction::Cancel));
                self.end(EndReason::HangupBeforeAnswer);
            }
            Phase::Active(_) => self.end_with_bye(EndReason::HangupByServer),
            Phase::Ended => {}
        }
    }

    pub fn handle_dialog(&mut self, now: Instant, input: DialogInput) {
        if let DialogInput::Terminated(r) = input {
            if !self.is_ended() {
                self.end(r);
            }
            return;
        }
        match &mut self.phase {
            Phase::Trying { .. } => {
                self.not_active(input);
                self.ring(now);
            }
            Phase::AwaitingAck { bye_on_ack } => match input {
                DialogInput::Confirmed { ack_body } => {
                    if *bye_on_ack {
                        self.end_with_bye(EndReason::HangupByServer);
                        return;
                    }
                    self.confirmed(&ack_body);
                }
                other => self.not_active(other),
            },
            Phase::Active(a) if a.awaiting_ack.is_some() => match input {
                DialogInput::Confirmed { .. } => {
                    if a.awaiting_ack.take() == Some(true) {
                        self.end_with_bye(EndReason::HangupByServer);
                    }
                }
                other => self.active_dialog(now, other),
            },
            Phase::Active(_) => self.active_dialog(now, input),
            _ => self.not_active(input),
        }
    }

    /// In-dialog requests before the call is up: answered, not acted on.
    fn not_active(&mut self, input: DialogInput) {
        match input {
            DialogInput::Offer { tx, .. } => self.respond(tx, 501, None),
            DialogInput::Info { tx, .. }
            | DialogInput::Notify { tx, .. }
            | DialogInput::Ping { tx } => self.respond(tx, 200, None),
            DialogInput::Unsupported { tx } => self.respond(tx, 501, None),
            DialogInput::Calling | DialogInput::Confirmed { .. } | DialogInput::Terminated(_) => {}
        }
    }

    fn respond(&mut self, tx: TxId, code: u16, sdp: Option<String>) {
        self.actions
            .push_back(Action::Sip(SipAction::Respond { tx, code, sdp }));
    }

    fn ring(&mut self, now: Instant) {
        let answer_at = now + self.cfg.answer_delay;
        if self.cfg.early.is_some() && self.offer.is_some() {
            return self.start_early(now, answer_at);
        }
        self.actions.push_back(Action::Sip(SipAction::Ringing));
        self.phase = Phase::Ringing { answer_at };
    }

    /// Early media: 183 with our answer, our RTP stream playing the clip,
    /// and the agent built meanwhile. A codec we cannot run falls back to
    /// plain ringing.
    fn start_early(&mut self, now: Instant, answer_at: Instant) {
        let (Some(early), Some(neg)) = (self.cfg.early.clone(), self.offer.take()) else {
            return;
        };
        let params = self.media_params(&neg, None);
        let st = early.start;
        let session = match Session::new(now, st.wall, params, st.ssrc, st.seq, st.ts) {
            Ok(s) => self.guarded(s),
            Err(e) => {
                warn!(error = %e, "no early media: codec setup failed");
                self.offer = Some(neg);
                self.actions.push_back(Action::Sip(SipAction::Ringing));
                self.phase = Phase::Ringing { answer_at };
                return;
            }
        };
        let rate = session.params().agent_rate;
        let clip =
            clip_at(&early.clip.pcm, early.clip.rate, rate, "early media").unwrap_or_default();
        let local = self.local_media();
        let sdp = sdp::build_answer(&neg, &local);
        self.last_sdp = sdp.clone();
        self.actions
            .push_back(Action::Sip(SipAction::Progress { sdp }));
        self.actions.push_back(Action::Event(CallEvent::EarlyMedia));
        let mut srtp = None;
        self.apply_srtp(&mut srtp, &neg);
        self.actions
            .push_back(Action::StartAgent(Box::new(neg.clone())));
        info!(codec = neg.codec.encoding_name(), "183 with early media");
        let mut e = Box::new(Early {
            session,
            srtp,
            neg: Box::new(neg),
            clip,
            answer_at,
            ready: None,
        });
        Self::early_media(&mut e);
        self.phase = Phase::Early(e);
    }

    /// Keeps at least a second of the clip queued; what the caller sends
    /// meanwhile goes nowhere.
    fn early_media(e: &mut Early) {
        while e.session.poll_event().is_some() {}
        if !e.clip.is_empty() && e.session.queued_ms() < 1000 {
            e.session.handle_agent_audio(&e.clip);
        }
    }

    /// The agent is ready and the answer delay over: 200 with the SDP of
    /// our 183, and the agent takes over the RTP stream at once.
    fn answer_early(&mut self, now: Instant) {
        let Phase::Early(mut e) = std::mem::replace(&mut self.phase, Phase::Ended) else {
            return;
        };
        let Some((agent, ambient)) = e.ready.take() else {
            self.phase = Phase::Early(e);
            return;
        };
        self.actions.push_back(Action::Event(CallEvent::Answering));
        self.actions.push_back(Action::Sip(SipAction::Accept {
            sdp: self.last_sdp.clone(),
        }));
        let params = self.media_params(&e.neg, agent.sample_rate());
        let mut session = e.session;
        session.clear_playout();
        if let Err(err) = session.update(params) {
            warn!(error = %err, "codec setup failed");
            self.phase = Phase::AwaitingAck { bye_on_ack: false };
            return self.end_with_bye(EndReason::CodecError(err.to_string()));
        }
        self.activate(now, session, e.srtp, &e.neg, agent, ambient);
        if let Phase::Active(a) = &mut self.phase {
            a.awaiting_ack = Some(false);
        }
    }

    /// Our media description for the next SDP we send.
    fn local_media(&mut self) -> LocalMedia {
        self.sdp_version += 1;
        LocalMedia {
            ip: self.cfg.advertised_ip,
            rtp_port: self.cfg.rtp_port,
            session_id: self.cfg.sdp_session_id,
            session_version: self.sdp_version,
            srtp_key: (self.cfg.transport == SipTransport::Tls).then_some(self.cfg.srtp_key),
        }
    }

    fn answer(&mut self) {
        let local = self.local_media();
        let body = match &self.offer {
            Some(neg) => sdp::build_answer(neg, &local),
            None => sdp::build_offer(&local_caps(self.cfg.transport), &local),
        };
        self.last_sdp = body.clone();
        self.actions.push_back(Action::Event(CallEvent::Answering));
        self.actions
            .push_back(Action::Sip(SipAction::Accept { sdp: body }));
        self.phase = Phase::AwaitingAck { bye_on_ack: false };
    }

    fn confirmed(&mut self, ack_body: &[u8]) {
        let neg = match self.offer.take() {
            Some(n) => n,
            None => {
                let text = String::from_utf8_lossy(ack_body);
                let answer = sdp::SessionDescription::parse(&text)
                    .map_err(|e| e.to_string())
                    .and_then(|s| {
                        sdp::accept_answer(&s, &local_caps(self.cfg.transport))
                            .map_err(|e| e.to_string())
                    });
                match answer {
                    Ok(n) => n,
                    Err(e) => {
                        warn!(error = %e, "no usable SDP answer in the ACK");
                        self.end_with_bye(EndReason::BadAckAnswer(e));
                        return;
                    }
                }
            }
        };
        self.start_agent(neg);
    }

    fn start_agent(&mut self, neg: Negotiated) {
        self.actions
            .push_back(Action::StartAgent(Box::new(neg.clone())));
        self.phase = Phase::StartingAgent { neg: Box::new(neg) };
    }

    /// The agent could not be built: the call ends.
    pub fn agent_failed(&mut self, error: &agent::AgentError) {
        match self.phase {
            Phase::StartingAgent { .. } if self.outbound_early => {
                warn!(%error, "agent failed to start: CANCEL");
                self.actions.push_back(Action::Sip(SipAction::Cancel));
                self.end(EndReason::AgentError(error.to_string()));
            }
            Phase::StartingAgent { .. } => {
                warn!(%error, "agent failed to start");
                self.end_with_bye(EndReason::AgentError(error.to_string()));
            }
            Phase::Early(_) => {
                warn!(%error, "agent failed to start: 500 to the INVITE");
                self.actions
                    .push_back(Action::Sip(SipAction::Reject { code: 500 }));
                self.end(EndReason::AgentError(error.to_string()));
            }
            _ => {}
        }
    }

    /// Media params for `neg` with an agent at `agent_rate` (`None`: the
    /// codec's own rate).
    fn media_params(&self, neg: &Negotiated, agent_rate: Option<u32>) -> MediaParams {
        MediaParams {
            send_silence: self.cfg.send_silence,
            codec: neg.codec,
            pt: neg.pt,
            te_pt: neg.telephone_event_pt,
            ptime_ms: neg.ptime_ms,
            remote: neg.remote_rtp,
            remote_rtcp: neg.remote_rtcp,
            rtcp_mux: neg.rtcp_mux,
            direction: neg.direction,
            jitter_min_ms: self.cfg.jitter_min_ms,
            jitter_max_ms: self.cfg.jitter_max_ms,
            agent_rate: agent_rate.unwrap_or_else(|| natural_rate(neg.codec)),
            codec_fmtp: neg.codec_fmtp.clone(),
        }
    }

    /// The agent is ready: media starts.
    pub fn start_media(
        &mut self,
        now: Instant,
        agent: Box<dyn Agent>,
        start: MediaStart,
        ambient: Option<Ambient>,
    ) {
        if let Phase::Early(e) = &mut self.phase {
            // Answered once the answer delay is over (now, or at its timeout).
            e.ready = Some((agent, ambient));
            if now >= e.answer_at {
                self.answer_early(now);
            }
            return;
        }
        let Phase::StartingAgent { neg } = std::mem::replace(&mut self.phase, Phase::Ended) else {
            // Hung up meanwhile: the late agent is dropped.
            return;
        };
        let params = self.media_params(&neg, agent.sample_rate());
        let session = match Session::new(now, start.wall, params, start.ssrc, start.seq, start.ts) {
            Ok(s) => self.guarded(s),
            Err(e) => {
                warn!(error = %e, "codec setup failed");
                self.end_with_bye(EndReason::CodecError(e.to_string()));
                return;
            }
        };
        let mut srtp = None;
        self.apply_srtp(&mut srtp, &neg);
        self.activate(now, session, srtp, &neg, agent, ambient);
    }

    /// Media and agent are ready: the call is up (recording, DSP, ambient,
    /// greeting, the agent's first words).
    fn activate(
        &mut self,
        now: Instant,
        mut session: Session,
        srtp: Option<SrtpSession>,
        neg: &Negotiated,
        mut agent: Box<dyn Agent>,
        ambient: Option<Ambient>,
    ) {
        let rate = session.params().agent_rate;
        if let Some(a) = ambient {
            if let Some(pcm) = clip_at(&a.pcm, a.rate, rate, "ambient sound") {
                session.set_ambient(pcm, a.level);
            }
        }
        if let Err(e) = session.set_dsp(self.cfg.dsp.clone()) {
            warn!(error = %e, "caller DSP unavailable for this call");
        }
        session.set_recording(self.cfg.record);
        let unanswered = std::mem::take(&mut self.outbound_early);
        if unanswered {
            info!(
                codec = neg.codec.encoding_name(),
                remote = neg.remote_rtp.map(tracing::field::display),
                agent = agent.kind(),
                "early media: the agent hears the callee's side"
            );
            self.actions.push_back(Action::Event(CallEvent::EarlyMedia));
        } else {
            info!(
                codec = neg.codec.encoding_name(),
                pt = neg.pt,
                remote = neg.remote_rtp.map(tracing::field::display),
                agent = agent.kind(),
                "call answered"
            );
            self.actions.push_back(Action::Event(CallEvent::Answered {
                codec: neg.codec.encoding_name(),
                remote_rtp: neg.remote_rtp,
                agent: agent.kind(),
            }));
        }
        let mut out = AgentOutput::default();
        if let Some(g) = &self.cfg.greeting {
            out.audio = clip_at(&g.pcm, g.rate, rate, "greeting").unwrap_or_default();
        }
        agent.start(&mut out);
        let mut filler = Filler::default();
        if let Some((f, after)) = &self.cfg.filler {
            filler.pcm = clip_at(&f.pcm, f.rate, rate, "filler").unwrap_or_default();
            filler.after = *after;
        }
        let mut a = Box::new(Active {
            session,
            srtp,
            agent,
            out,
            last_refresh: now,
            refresh_in_flight: false,
            next_stats: now + STATS_EVERY,
            last_rx: (now, 0),
            transfer: None,
            bridged_leg: None,
            bye_at: None,
            amd: None,
            barge: BargeIn::new(self.cfg.barge_in_min_ms, self.cfg.dsp.speech_start_ms),
            filler,
            awaiting_ack: None,
            unanswered,
            capped: false,
        });
        if let (Some(mode), false) = (self.cfg.amd.clone(), unanswered) {
            let rate = a.session.params().agent_rate;
            a.amd = Some(Box::new(CallAmd::new(mode, rate)));
        }
        Self::apply_output(&mut a);
        self.phase = Phase::Active(a);
        self.after_input(now);
    }

    /// Applies the SRTP outcome of an offer/answer: keys kept, changed,
    /// started or stopped.
    fn apply_srtp(&mut self, srtp: &mut Option<SrtpSession>, neg: &Negotiated) {
        match &neg.srtp {
            None => {
                if srtp.take().is_some() {
                    info!("SRTP off");
                }
            }
            Some(c) => {
                if srtp.as_ref().is_some_and(|s| s.same_keys(c.suite, &c.key)) {
                    return;
                }
                match SrtpSession::new(c.suite, &self.cfg.srtp_key, &c.key) {
                    Ok(s) => {
                        info!(suite = c.suite.name(), "SRTP on");
                        *srtp = Some(s);
                    }
                    Err(e) => warn!(error = %e, "SRTP setup failed"),
                }
            }
        }
        let suite = srtp.as_ref().map(|s| s.suite().name());
        self.actions
            .push_back(Action::Event(CallEvent::Srtp(suite)));
    }

    pub fn handle_rtp(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        self.media_in(now, from, bytes, false);
    }

    pub fn handle_rtcp(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        self.media_in(now, from, bytes, true);
    }

    /// The call's latching rules on a new media session.
    fn guarded(&self, mut session: Session) -> Session {
        session.set_latch_policy(self.cfg.latch);
        session.refuse_sources(&self.pre_answer);
        session
    }

    /// A datagram from the RTP or RTCP socket, SRTP removed, to the session.
    fn media_in(&mut self, now: Instant, from: SocketAddr, bytes: &[u8], rtcp: bool) {
        let Some((session, srtp)) = self.media() else {
            // Before our answer nobody can know this call's port: whoever
            // sends now is a stale stream (a killed server's call).
            let unanswered = matches!(self.phase, Phase::Trying { .. } | Phase::Ringing { .. });
            if unanswered
                && self.pre_answer.len() < MAX_PRE_ANSWER
                && !self.pre_answer.contains(&from)
            {
                info!(%from, "RTP before our answer: this source will not latch");
                self.pre_answer.push(from);
            }
            return;
        };
        if srtp.is_some() && !session.screen(now, from, bytes, rtcp) {
            // A stranger's packet is not even authenticated.
            return self.after_input(now);
        }
        let plain = match srtp {
            None => None,
            Some(s) => match s.unprotect(bytes) {
                Some(p) => Some(p),
                // Dropped and counted by the SRTP session (`rejected`).
                None => return self.after_input(now),
            },
        };
        let bytes = plain.as_deref().unwrap_or(bytes);
        if rtcp {
            session.handle_rtcp(now, from, bytes);
        } else {
            session.handle_rtp(now, from, bytes);
        }
        match &mut self.phase {
            // Latching and RTCP count from the first packet; the audio
            // itself goes nowhere before the answer.
            Phase::Early(e) => Self::early_media(e),
            _ => self.after_input(now),
        }
    }

    /// The media session and its SRTP context, while there is one (early
    /// media or an active call).
    fn media(&mut self) -> Option<(&mut Session, &mut Option<SrtpSession>)> {
        match &mut self.phase {
            Phase::Active(a) => Some((&mut a.session, &mut a.srtp)),
            Phase::Early(e) => Some((&mut e.session, &mut e.srtp)),
            _ => None,
        }
    }

    /// A request from the API or another call.
    pub fn handle_command(&mut self, now: Instant, cmd: CallCommand) {
        let Phase::Active(a) = &mut self.phase else {
            return;
        };
        match cmd {
            CallCommand::SendDtmf(digits) => {
                if a.session.send_dtmf(&digits) {
                    info!(%digits, "sending DTMF");
                } else {
                    warn!(%digits, "cannot send DTMF: no telephone-event negotiated");
                }
            }
            CallCommand::Transfer(req) => self.begin_transfer(req),
            CallCommand::BridgeAnswered(leg) => {
                let end = a.transfer.as_mut().and_then(|t| t.bridge_ringing.take());
                if let Some(end) = end {
                    info!(%leg, "transfer: bridged");
                    a.session.clear_playout();
                    a.agent = Box::new(end);
                    self.actions
                        .push_back(Action::Event(CallEvent::AgentKind("bridge")));
                    self.set_transfer(|t| {
                        t.state = TransferState::Succeeded;
                        t.detail = Some("bridged".into());
                    });
                }
            }
            CallCommand::BridgeFailed(why) => {
                let ringing = a.transfer.as_mut().and_then(|t| t.bridge_ringing.take());
                if ringing.is_some() {
                    info!(%why, "transfer: bridge leg failed; the agent stays");
                    self.set_transfer(|t| {
                        t.state = TransferState::Failed;
                        t.detail = Some(why);
                    });
                }
            }
        }
        self.after_input(now);
    }

    fn active(&mut self) -> Option<&mut Active> {
        match &mut self.phase {
            Phase::Active(a) => Some(a),
            _ => None,
        }
    }

    fn set_transfer(&mut self, f: impl FnOnce(&mut TransferInfo)) {
        let Some(t) = self.active().and_then(|a| a.transfer.as_mut()) else {
            return;
        };
        f(&mut t.info);
        let info = t.info.clone();
        self.actions
            .push_back(Action::Event(CallEvent::Transfer(info)));
    }

    /// Starts a transfer: REFER, or for `bridge` a second leg through the trunk.
    fn begin_transfer(&mut self, req: TransferRequest) {
        info!(target = %req.refer_to, mode = ?req.mode, "transfer requested");
        let method = if req.mode == TransferMode::Bridge {
            TransferMethod::Bridge
        } else {
            TransferMethod::Refer
        };
        let Some(a) = self.active() else { return };
        a.transfer = Some(Transfer {
            info: TransferInfo {
                target: req.refer_to.clone(),
                method,
                state: TransferState::Requested,
                detail: None,
                bridged_call: None,
            },
            req: req.clone(),
            bridge_placing: None,
            bridge_ringing: None,
        });
        self.set_transfer(|_| {});
        if req.mode == TransferMode::Bridge {
            self.start_bridge();
        } else {
            self.actions.push_back(Action::Sip(SipAction::Refer {
                target: req.refer_to,
            }));
        }
    }

    /// B2BUA transfer: the target is called through the trunk with one end
    /// of a bridge; this call switches to the other end once it answers.
    fn start_bridge(&mut self) {
        let Some(a) = self.active() else { return };
        let rate = a.session.params().agent_rate;
        let Some(t) = a.transfer.as_mut() else { return };
        let Some((trunk, to)) = t.req.bridge.clone() else {
            self.set_transfer(|t| {
                t.method = TransferMethod::Bridge;
                t.state = TransferState::Failed;
                t.detail = Some("no trunk to bridge through".into());
            });
            return;
        };
        let (here, there) = agent::bridge_pair(rate);
        t.bridge_placing = Some(here);
        self.actions.push_back(Action::PlaceBridgeLeg {
            trunk,
            to,
            agent: there,
        });
    }

    /// The bridge leg was placed (its call id) or could not be.
    pub fn handle_bridge_leg(&mut self, now: Instant, leg: Result<String, RequestError>) {
        let Some(a) = self.active() else { return };
        let Some(t) = a.transfer.as_mut() else { return };
        let here = t.bridge_placing.take();
        match leg {
            Ok(id) => {
                info!(leg = %id, "transfer: bridging through the trunk");
                t.bridge_ringing = here;
                a.bridged_leg = Some(id.clone());
                self.set_transfer(|t| {
                    t.method = TransferMethod::Bridge;
                    t.state = TransferState::Trying;
                    t.bridged_call = Some(id);
                });
            }
            Err(e) => self.set_transfer(|t| {
                t.method = TransferMethod::Bridge;
                t.state = TransferState::Failed;
                t.detail = Some(e.to_string());
            }),
        }
        self.after_input(now);
    }

    /// The final answer to our REFER (its status code).
    pub fn handle_refer_result(&mut self, now: Instant, r: Result<u16, RequestError>) {
        if self.active().is_none() {
            return;
        }
        match r {
            Ok(code) if (200..300).contains(&code) => {
                info!(code, "REFER accepted");
                self.set_transfer(|t| t.state = TransferState::Accepted);
            }
            other => {
                let why = match &other {
                    Ok(code) => format!("REFER refused: {code}"),
                    Err(RequestError::BadTarget(e)) => format!("bad target: {e}"),
                    Err(e) => format!("REFER failed: {e}"),
                };
                info!(%why, "transfer");
                let fallback = self
                    .active()
                    .and_then(|a| a.transfer.as_ref())
                    .is_some_and(|t| t.req.mode == TransferMode::Auto && t.req.bridge.is_some());
                if fallback && !matches!(other, Err(RequestError::BadTarget(_))) {
                    self.set_transfer(|t| t.detail = Some(why));
                    self.start_bridge();
                } else {
                    self.set_transfer(|t| {
                        t.state = TransferState::Failed;
                        t.detail = Some(why);
                    });
                }
            }
        }
        self.after_input(now);
    }

    /// The answer to our session refresh (its status code).
    pub fn handle_refresh_result(&mut self, now: Instant, r: Result<u16, RequestError>) {
        let Some(a) = self.active() else { return };
        a.refresh_in_flight = false;
        match r {
            Ok(code) if (200..300).contains(&code) => {
                debug!(code, "session refreshed");
                a.last_refresh = now;
            }
            other => {
                let outcome = match &other {
                    Ok(code) => code.to_string(),
                    Err(e) => e.to_string(),
                };
                warn!(%outcome, "session refresh failed: hanging up");
                self.end_with_bye(EndReason::SessionRefreshFailed);
            }
        }
    }

    fn active_dialog(&mut self, now: Instant, input: DialogInput) {
        match input {
            DialogInput::Offer { tx, body } => {
                // Any re-INVITE/UPDATE from the caller refreshes the session.
                if let Some(a) = self.active() {
                    a.last_refresh = now;
                }
                self.on_offer(tx, &body);
            }
            DialogInput::Info { tx, dtmf } => {
                if let Some(d) = dtmf {
                    self.on_dtmf(d);
                }
                self.respond(tx, 200, None);
            }
            DialogInput::Notify { tx, refer_status } => {
                self.respond(tx, 200, None);
                self.on_refer_notify(now, refer_status);
            }
            other => self.not_active(other),
        }
        self.after_input(now);
    }

    fn on_refer_notify(&mut self, now: Instant, status: Option<u16>) {
        let Some(a) = self.active() else { return };
        let Some(t) = a.transfer.as_ref() else { return };
        let refer_pending = t.req.mode != TransferMode::Bridge
            && t.info.state != TransferState::Failed
            && t.bridge_ringing.is_none()
            && t.bridge_placing.is_none();
        let (true, Some(code)) = (refer_pending, status) else {
            return;
        };
        info!(code, "transfer progress (NOTIFY sipfrag)");
        if (200..300).contains(&code) {
            let target = t.req.refer_to.clone();
            self.set_transfer(|t| {
                t.state = TransferState::Succeeded;
                t.detail = Some(format!("NOTIFY {code}"));
            });
            if let Some(a) = self.active() {
                a.bye_at = Some((now + BYE_AFTER_NOTIFY, EndReason::Transferred { target }));
            }
        } else if code >= 300 {
            // Failed: later NOTIFYs are not acted on.
            self.set_transfer(|t| {
                t.state = TransferState::Failed;
                t.detail = Some(format!("NOTIFY {code}"));
            });
        } else {
            self.set_transfer(|t| t.state = TransferState::Trying);
        }
    }

    fn on_dtmf(&mut self, digit: char) {
        info!(%digit, "DTMF");
        self.actions
            .push_back(Action::Event(CallEvent::Dtmf(digit)));
        let Some(a) = self.active() else { return };
        a.agent.on_dtmf(digit, &mut a.out);
        Self::apply_output(a);
    }

    /// re-INVITE/UPDATE: answer the new offer and apply it (hold with
    /// sendonly/inactive or c=0.0.0.0, resume, new address, codec change);
    /// the call goes on. An offer we cannot take gets 488 and the call keeps
    /// its old media (RFC 3261 section 14.2).
    fn on_offer(&mut self, tx: TxId, body: &[u8]) {
        let local = self.local_media();
        let caps = local_caps(self.cfg.transport);
        if body.is_empty() {
            // No offer (e.g. a session refresh): we offer, the answer comes in the ACK.
            let offer = sdp::build_offer(&caps, &local);
            self.last_sdp = offer.clone();
            return self.respond(tx, 200, Some(offer));
        }
        let text = String::from_utf8_lossy(body);
        let neg = sdp::SessionDescription::parse(&text)
            .map_err(|e| e.to_string())
            .and_then(|s| sdp::negotiate_offer(&s, &caps).map_err(|e| e.to_string()));
        let n = match neg {
            Ok(n) => n,
            Err(e) => {
                info!(error = %e, "re-INVITE offer refused: 488");
                return self.respond(tx, 488, None);
            }
        };
        let answer = sdp::build_answer(&n, &local);
        let Phase::Active(a) = &mut self.phase else {
            return;
        };
        let rate = a.agent.sample_rate();
        let was_held = !a.session.params().direction.sends();
        let held = !n.direction.sends();
        info!(direction = %n.direction, codec = n.codec.encoding_name(),
              remote = n.remote_rtp.map(tracing::field::display), "re-INVITE answered");
        let params = self.media_params(&n, rate);
        let Phase::Active(a) = &mut self.phase else {
            return;
        };
        if let Err(e) = a.session.update(params) {
            info!(error = %e, "re-INVITE codec unusable: 488");
            return self.respond(tx, 488, None);
        }
        let mut srtp = a.srtp.take();
        self.apply_srtp(&mut srtp, &n);
        let Phase::Active(a) = &mut self.phase else {
            return;
        };
        a.srtp = srtp;
        if was_held != held {
            a.agent.on_hold(held, &mut a.out);
            Self::apply_output(a);
        }
        self.actions
            .push_back(Action::Event(CallEvent::MediaUpdated {
                codec: n.codec.encoding_name(),
                held,
            }));
        self.last_sdp = answer.clone();
        self.respond(tx, 200, Some(answer));
    }

    /// Hands the agent's output to the media session.
    fn apply_output(a: &mut Active) {
        if a.unanswered {
            // Nobody listens before the 200: the agent's words wait for it.
            return;
        }
        let out = &mut a.out;
        if a.amd.as_ref().is_some_and(|d| d.holds_agent()) {
            // A machine gets the route's message, not the agent.
            out.audio.clear();
            out.clear = false;
            return;
        }
        if out.clear {
            let dropped = a.session.queued_ms();
            a.session.clear_playout();
            a.agent.on_cleared(dropped);
        }
        if !out.audio.is_empty() {
            // The agent speaks: the filler stops (and is no longer due).
            a.filler.due = None;
            if std::mem::take(&mut a.filler.playing) {
                a.session.clear_playout();
            }
            if let Some(at) = out.reply_started.take() {
                a.session.mark_reply(at);
            }
            match a.agent.playout_cap_ms() {
                Some(cap) => {
                    let dropped = a.session.handle_agent_audio_capped(&out.audio, cap);
                    if dropped > 0 && !std::mem::replace(&mut a.capped, true) {
                        warn!(cap_ms = cap, "agent audio over the playout cap: dropped");
                    }
                }
                None => a.session.handle_agent_audio(&out.audio),
            }
            out.audio.clear();
        }
        out.clear = false;
        if let Some(max) = a.agent.max_queue_ms() {
            a.session.trim_playout(max);
        }
    }

    /// A caller turn event for the agent; with `cut`, the agent's queued
    /// audio is dropped first (a barge-in).
    fn caller_turn(a: &mut Active, events: &mut Vec<CallEvent>, ev: TurnEvent, cut: bool) {
        events.push(CallEvent::CallerTurn(ev));
        if cut && a.session.queued_ms() > 0 {
            a.out.clear = true;
            a.out.events.push(AgentEvent::Interruption);
        }
        a.agent.on_turn(ev, &mut a.out);
        Self::apply_output(a);
    }

    /// After every input while the call is up: media events to the agent,
    /// the agent's requests, statistics and the RTP timeout.
    fn after_input(&mut self, now: Instant) {
        let barge_in = self.cfg.barge_in;
        let interrupt_listening = self.cfg.interrupt_listening;
        let Phase::Active(a) = &mut self.phase else {
            return;
        };
        let mut events = Vec::new();
        let cut_in = barge_in && !interrupt_listening;
        while let Some(ev) = a.session.poll_event() {
            match ev {
                MediaEvent::Audio(pcm) => {
                    if let Some(d) = &mut a.amd {
                        d.push(now, &pcm);
                    }
                    // INTERRUPT_LISTENING: the agent does not hear the
                    // caller while it talks (the stream keeps its pace).
                    if interrupt_listening && a.session.queued_ms() > 0 {
                        a.agent.on_audio(&vec![0; pcm.len()], &mut a.out);
                    } else {
                        a.agent.on_audio(&pcm, &mut a.out);
                    }
                    Self::apply_output(a);
                }
                MediaEvent::Dtmf(d) => {
                    info!(digit = %d, "DTMF");
                    events.push(CallEvent::Dtmf(d));
                    a.agent.on_dtmf(d, &mut a.out);
                    Self::apply_output(a);
                }
                MediaEvent::Turn(ev) => {
                    info!(event = ?ev, "caller turn");
                    if ev == TurnEvent::SpeechStarted {
                        // The caller talks: no filler (and the one playing
                        // is not the agent being interrupted).
                        a.filler.due = None;
                        if std::mem::take(&mut a.filler.playing) {
                            a.session.clear_playout();
                        }
                    }
                    let verdict = match (cut_in, ev) {
                        (false, _) => Verdict::Pass,
                        (true, TurnEvent::SpeechStarted) => {
                            a.barge.speech_started(now, a.session.queued_ms() > 0)
                        }
                        (true, TurnEvent::SpeechEnded) => a.barge.speech_ended(),
                    };
                    match verdict {
                        Verdict::Hold => {}
                        Verdict::Backchannel => {
                            info!("backchannel: the agent goes on");
                            events.push(CallEvent::Backchannel);
                        }
                        Verdict::Pass => Self::caller_turn(a, &mut events, ev, false),
                        Verdict::Interrupt => Self::caller_turn(a, &mut events, ev, true),
                    }
                    if ev == TurnEvent::SpeechEnded
                        && verdict == Verdict::Pass
                        && !a.filler.pcm.is_empty()
                    {
                        a.filler.due = Some(now + a.filler.after);
                    }
                }
                MediaEvent::Voice(voiced) => match a.barge.frame(now, voiced) {
                    None => {}
                    Some(Decision::BargeIn) => {
                        info!("caller speech over the agent: barge-in");
                        Self::caller_turn(a, &mut events, TurnEvent::SpeechStarted, true);
                    }
                    Some(Decision::Backchannel) => {
                        info!("backchannel: the agent goes on");
                        events.push(CallEvent::Backchannel);
                    }
                },
                MediaEvent::ReplySent(d) => events.push(CallEvent::ReplySent {
                    ms: d.as_millis() as u64,
                }),
                MediaEvent::Latched(addr) => {
                    info!(%addr, "RTP latched");
                    events.push(CallEvent::Latched(addr));
                }
            }
        }
        if a.filler.playing && a.session.queued_ms() == 0 {
            a.filler.playing = false;
        }
        if a.filler.due.is_some_and(|d| now >= d) {
            a.filler.due = None;
            if a.session.queued_ms() == 0 {
                debug!("agent silent after the caller's turn: filler");
                a.session.handle_agent_audio(&a.filler.pcm);
                a.filler.playing = true;
            }
        }
        let mut amd_end = None;
        while let Some(step) = a.amd.as_mut().and_then(|d| d.poll_step()) {
            match step {
                AmdStep::Report {
                    kind,
                    at_ms,
                    report,
                } => {
                    info!(result = kind, at_ms, "AMD");
                    events.push(CallEvent::Amd {
                        kind,
                        at_ms,
                        report,
                    });
                }
                AmdStep::Hangup => amd_end = Some(false),
                AmdStep::PlayMessage(pcm) => {
                    a.session.clear_playout();
                    a.session.handle_agent_audio(&pcm);
                }
            }
        }
        if a.amd.as_ref().is_some_and(|d| d.message_queued()) && a.session.queued_ms() == 0 {
            amd_end = Some(true);
        }
        // The chain's last provider failed (the fallback wrapper hangs up
        // with `Failed`): the call ends as an agent error, not as if the
        // agent had chosen to hang up.
        let mut agent_failed = None;
        for ev in std::mem::take(&mut a.out.events) {
            if let AgentEvent::Failed { reason } = &ev {
                agent_failed = Some(reason.clone());
            }
            if let AgentEvent::Transfer { to } = &ev {
                info!(%to, "agent asked for a transfer");
                self.actions
                    .push_back(Action::ResolveTransfer { to: to.clone() });
            }
            events.push(CallEvent::Agent(ev));
        }
        self.actions.extend(events.into_iter().map(Action::Event));
        if let Some(message_left) = amd_end {
            return self.end_with_bye(EndReason::AnsweringMachine { message_left });
        }
        let Phase::Active(a) = &mut self.phase else {
            return;
        };
        if a.out.hangup {
            return self.end_with_bye(match agent_failed {
                Some(reason) => EndReason::AgentError(reason),
                None => EndReason::AgentHungUp,
            });
        }
        if a.out.hangup_after_playout && a.session.queued_ms() == 0 {
            return self.end_with_bye(EndReason::AgentFinished);
        }
        if now >= a.next_stats {
            a.next_stats = now + STATS_EVERY;
            // A caller that vanished without BYE (network gone, phone
            // crashed) must not hold a call slot and ports forever.
            let rx = a.session.stats().rx_packets;
            if rx != a.last_rx.1 {
                a.last_rx = (now, rx);
            } else if !self.cfg.rtp_timeout.is_zero()
                && !a.unanswered
                && a.session.params().direction.receives()
                && now.duration_since(a.last_rx.0) >= self.cfg.rtp_timeout
            {
                warn!(secs = self.cfg.rtp_timeout.as_secs(), "no RTP: hanging up");
                return self.end_with_bye(EndReason::RtpTimeout);
            }
            let snap = Self::snapshot(a);
            self.actions
                .push_back(Action::Event(CallEvent::Stats(Box::new(snap))));
        }
    }

    fn snapshot(a: &Active) -> StatsSnapshot {
        StatsSnapshot {
            media: a.session.stats().clone(),
            quality: a.session.quality(),
            jitter: a.session.jitter_stats(),
            srtp_rejected: a.srtp.as_ref().map_or(0, |s| s.rejected),
        }
    }

    /// The media figures now, or as the call ended (for its summary).
    pub fn stats(&self) -> Option<StatsSnapshot> {
        match &self.phase {
            Phase::Active(a) => Some(Self::snapshot(a)),
            _ => self.final_stats.clone(),
        }
    }

    /// Sends a BYE and ends the call.
    fn end_with_bye(&mut self, reason: EndReason) {
        let early = match &self.phase {
            Phase::Active(a) => a.unanswered,
            Phase::StartingAgent { .. } => self.outbound_early,
            _ => false,
        };
        let how = match reason.bye_reason() {
            _ if early => SipAction::Cancel,
            Some(reason) => SipAction::ByeWithReason { reason },
            None => SipAction::Bye,
        };
        self.actions.push_back(Action::Sip(how));
        self.end(reason);
    }

    /// The final 2xx to our INVITE after early media, with its answer (or
    /// why its SDP is unusable): the media follows the answer if it moved,
    /// the call is up and the agent's held words go out.
    pub fn handle_answered(&mut self, now: Instant, answer: Result<Negotiated, String>) {
        let neg = match answer {
            Ok(n) => n,
            Err(e) => {
                warn!(error = %e, "answer without usable SDP: BYE");
                if let Some(a) = self.active() {
                    a.unanswered = false;
                }
                self.outbound_early = false;
                return self.end_with_bye(EndReason::BadSdpAnswer(e));
            }
        };
        if matches!(self.phase, Phase::StartingAgent { .. }) {
            // Answered before the agent was ready: start_media takes this answer.
            self.outbound_early = false;
            self.phase = Phase::StartingAgent { neg: Box::new(neg) };
            return;
        }
        let Phase::Active(a) = &mut self.phase else {
            return;
        };
        if !a.unanswered {
            return;
        }
        let rate = a.agent.sample_rate();
        let params = self.media_params(&neg, rate);
        let Phase::Active(a) = &mut self.phase else {
            return;
        };
        let moved = params.remote != a.session.params().remote
            || params.codec != a.session.params().codec
            || params.pt != a.session.params().pt;
        if moved {
            info!(
                codec = neg.codec.encoding_name(),
                remote = neg.remote_rtp.map(tracing::field::display),
                "the 200 moved the media"
            );
            if let Err(e) = a.session.update(params) {
                warn!(error = %e, "codec setup failed");
                a.unanswered = false;
                return self.end_with_bye(EndReason::CodecError(e.to_string()));
            }
        }
        let mut srtp = a.srtp.take();
        self.apply_srtp(&mut srtp, &neg);
        let Phase::Active(a) = &mut self.phase else {
            return;
        };
        a.srtp = srtp;
        a.unanswered = false;
        a.last_rx = (now, a.session.stats().rx_packets);
        if let Some(mode) = self.cfg.amd.clone() {
            let rate = a.session.params().agent_rate;
            a.amd = Some(Box::new(CallAmd::new(mode, rate)));
        }
        info!(
            codec = neg.codec.encoding_name(),
            agent = a.agent.kind(),
            "call answered"
        );
        self.actions.push_back(Action::Event(CallEvent::Answered {
            codec: neg.codec.encoding_name(),
            remote_rtp: neg.remote_rtp,
            agent: a.agent.kind(),
        }));
        Self::apply_output(a);
        self.after_input(now);
    }

    /// The INVITE of an outbound call in early media failed (its final
    /// status, or no answer in time): the call ends without a BYE.
    pub fn handle_failed(&mut self, reason: EndReason) {
        if let Some(a) = self.active() {
            a.unanswered = false;
        }
        self.outbound_early = false;
        if !self.is_ended() {
            self.end(reason);
        }
    }

    /// Ends the call: a last RTCP BYE and statistics, the bridged leg hung
    /// up, then [`Action::End`]. The agent and media session go here.
    fn end(&mut self, reason: EndReason) {
        if let Phase::Active(a) = &mut self.phase {
            if let Some(mut t) = a.session.rtcp_bye() {
                let protected = match &mut a.srtp {
                    None => Some(t.bytes),
                    Some(s) => s.protect(&t.bytes),
                };
                if let Some(p) = protected {
                    t.bytes = p;
                    self.last_transmit = Some(t);
                }
            }
            self.final_stats = Some(Self::snapshot(a));
            self.recording_tail
                .extend(std::iter::from_fn(|| a.session.poll_recording()));
            if let Some(leg) = a.bridged_leg.take() {
                self.actions.push_back(Action::HangupLeg(leg));
            }
        }
        self.phase = Phase::Ended;
        self.actions.push_back(Action::End(reason));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    //! The call's decisions in virtual time: no sockets, no runtime.

    use super::*;
    use crate::sip::timer::Refresher;
    use std::sync::{Arc, Mutex};

    const T0_OFFER: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
        m=audio 40000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n\
        a=sendrecv\r\n";

    fn offer(direction: &str) -> Vec<u8> {
        T0_OFFER.replace("a=sendrecv", direction).into_bytes()
    }

    fn negotiated(body: &[u8]) -> Negotiated {
        let s = sdp::SessionDescription::parse(std::str::from_utf8(body).unwrap()).unwrap();
        sdp::negotiate_offer(&s, &local_caps(SipTransport::Udp)).unwrap()
    }

    fn config(timer: Option<SessionTimer>) -> CoreConfig {
        CoreConfig {
            transport: SipTransport::Udp,
            advertised_ip: "127.0.0.1".parse().unwrap(),
            rtp_port: 30000,
            timer,
            answer_delay: Duration::from_millis(1000),
            barge_in: true,
            barge_in_min_ms: 400,
            greeting: None,
            filler: None,
            interrupt_listening: false,
            dsp: DspConfig::off(),
            rtp_timeout: Duration::from_secs(30),
            send_silence: false,
            jitter_min_ms: 20,
            jitter_max_ms: 200,
            srtp_key: [7; MASTER_KEY_LEN],
            sdp_session_id: 42,
            record: false,
            amd: None,
            early: None,
            latch: LatchPolicy::default(),
        }
    }

    /// What a scripted agent saw, shared with the test.
    #[derive(Default)]
    struct Seen {
        holds: Vec<bool>,
        audio_frames: usize,
        dtmf: Vec<char>,
    }

    /// An agent the test scripts: it records its inputs and hands out
    /// whatever the test queued for its next poll.
    struct Probe {
        seen: Arc<Mutex<Seen>>,
        next: Arc<Mutex<AgentOutput>>,
    }

    impl Agent for Probe {
        fn kind(&self) -> &'static str {
            "probe"
        }
        fn on_audio(&mut self, _pcm: &[i16], _out: &mut AgentOutput) {
            self.seen.lock().unwrap().audio_frames += 1;
        }
        fn poll(&mut self, out: &mut AgentOutput) {
            let next = std::mem::take(&mut *self.next.lock().unwrap());
            out.audio.extend(next.audio);
            out.events.extend(next.events);
            out.hangup |= next.hangup;
            out.hangup_after_playout |= next.hangup_after_playout;
        }
        fn on_dtmf(&mut self, digit: char, _out: &mut AgentOutput) {
            self.seen.lock().unwrap().dtmf.push(digit);
        }
        fn on_hold(&mut self, held: bool, _out: &mut AgentOutput) {
            self.seen.lock().unwrap().holds.push(held);
        }
    }

    struct Call {
        core: CallCore,
        now: Instant,
        seen: Arc<Mutex<Seen>>,
        next: Arc<Mutex<AgentOutput>>,
    }

    fn drain(core: &mut CallCore) -> Vec<Action> {
        while core.poll_transmit().is_some() {}
        std::iter::from_fn(|| core.poll_action()).collect()
    }

    fn sip(actions: &[Action]) -> Vec<SipAction> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Sip(s) => Some(s.clone()),
                _ => None,
            })
            .collect()
    }

    fn end(actions: &[Action]) -> Option<EndReason> {
        actions.iter().find_map(|a| match a {
            Action::End(r) => Some(r.clone()),
            _ => None,
        })
    }

    fn transfers(actions: &[Action]) -> Vec<TransferInfo> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Event(CallEvent::Transfer(t)) => Some(t.clone()),
                _ => None,
            })
            .collect()
    }

    impl Call {
        /// Runs timeouts up to `until` (every media tick on the way);
        /// returns every action taken.
        fn run_until(&mut self, until: Instant) -> Vec<Action> {
            let mut all = drain(&mut self.core);
            while let Some(t) = self.core.poll_timeout() {
                if t > until || self.core.is_ended() {
                    break;
                }
                self.now = self.now.max(t);
                self.core.handle_timeout(self.now);
                all.extend(drain(&mut self.core));
            }
            self.now = self.now.max(until);
            all
        }

        fn advance(&mut self, by: Duration) -> Vec<Action> {
            let until = self.now + by;
            self.run_until(until)
        }

        fn dialog(&mut self, input: DialogInput) -> Vec<Action> {
            self.core.handle_dialog(self.now, input);
            drain(&mut self.core)
        }

        /// Caller RTP: one PCMU packet.
        fn rtp(&mut self, seq: u16) {
            let mut p = vec![0x80, 0, (seq >> 8) as u8, seq as u8];
            p.extend_from_slice(&(seq as u32 * 160).to_be_bytes());
            p.extend_from_slice(&0x1234_5678u32.to_be_bytes());
            p.extend(std::iter::repeat_n(0xffu8, 160));
            self.core
                .handle_rtp(self.now, "127.0.0.1:40000".parse().unwrap(), &p);
        }
    }

    /// A stream that hit our port while the call was still ringing (a
    /// killed server's old call, from the caller's NAT IP) is dropped
    /// after the answer; the caller's own stream from the same IP latches.
    #[test]
    fn rtp_arriving_before_the_answer_never_latches_the_call() {
        let mut cfg = config(None);
        // Behind NAT: the INVITE came from another IP than the SDP's.
        cfg.latch.signal_ip = Some("203.0.113.5".parse().unwrap());
        let t0 = Instant::now();
        let mut core = CallCore::inbound(t0, cfg, Some(negotiated(&offer("a=sendrecv"))));
        core.handle_dialog(t0, DialogInput::Calling);
        let stale: SocketAddr = "203.0.113.5:7000".parse().unwrap();
        let pkt = |seq: u16, ssrc: u32| {
            let mut p = vec![0x80, 0, (seq >> 8) as u8, seq as u8];
            p.extend_from_slice(&(seq as u32 * 160).to_be_bytes());
            p.extend_from_slice(&ssrc.to_be_bytes());
            p.extend(std::iter::repeat_n(0xffu8, 160));
            p
        };
        core.handle_rtp(t0 + Duration::from_millis(10), stale, &pkt(1, 99));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let next = Arc::new(Mutex::new(AgentOutput::default()));
        let mut call = Call {
            core,
            now: t0,
            seen: seen.clone(),
            next,
        };
        call.advance(Duration::from_millis(1000));
        call.dialog(DialogInput::Confirmed { ack_body: vec![] });
        let start = MediaStart {
            wall: SystemTime::now(),
            ssrc: 1,
            seq: 1,
            ts: 1,
        };
        let agent = Box::new(Probe {
            seen,
            next: Default::default(),
        });
        call.core.start_media(call.now, agent, start, None);
        drain(&mut call.core);
        let now = call.now;
        call.core.handle_rtp(now, stale, &pkt(2, 99));
        let caller: SocketAddr = "203.0.113.5:7002".parse().unwrap();
        call.core.handle_rtp(now, caller, &pkt(1, 0x1234));
        let latched: Vec<SocketAddr> = drain(&mut call.core)
            .into_iter()
            .filter_map(|a| match a {
                Action::Event(CallEvent::Latched(addr)) => Some(addr),
                _ => None,
            })
            .collect();
        assert_eq!(latched, vec![caller]);
        let media = call.core.stats().unwrap().media;
        assert_eq!((media.rx_packets, media.rx_dropped_source), (1, 1));
    }

    /// An inbound call taken to the point where media runs.
    fn answered(timer: Option<SessionTimer>) -> Call {
        let mut cfg = config(timer);
        if timer.is_some() {
            // Only the session timer may end these calls.
            cfg.rtp_timeout = Duration::ZERO;
        }
        answered_with(cfg)
    }

    fn answered_with(cfg: CoreConfig) -> Call {
        let t0 = Instant::now();
        let mut core = CallCore::inbound(t0, cfg, Some(negotiated(&offer("a=sendrecv"))));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let next = Arc::new(Mutex::new(AgentOutput::default()));
        core.handle_dialog(t0, DialogInput::Calling);
        let mut call = Call {
            core,
            now: t0,
            seen: seen.clone(),
            next: next.clone(),
        };
        let a = call.advance(Duration::from_millis(1000));
        let sent = sip(&a);
        assert_eq!(sent[0], SipAction::Ringing);
        assert!(
            matches!(&sent[1], SipAction::Accept { sdp } if sdp.contains("m=audio 30000 RTP/AVP 0")),
            "{sent:?}"
        );
        let a = call.dialog(DialogInput::Confirmed { ack_body: vec![] });
        assert!(matches!(a[0], Action::StartAgent(_)), "{a:?}");
        let agent = Box::new(Probe { seen, next });
        let start = MediaStart {
            wall: SystemTime::now(),
            ssrc: 1,
            seq: 1,
            ts: 1,
        };
        call.core.start_media(call.now, agent, start, None);
        let a = drain(&mut call.core);
        assert!(
            a.iter()
                .any(|a| matches!(a, Action::Event(CallEvent::Answered { agent: "probe", .. }))),
            "{a:?}"
        );
        call
    }

    #[test]
    fn a_recorded_call_yields_a_frame_per_tick_and_keeps_the_last_ones_past_the_end() {
        let mut cfg = config(None);
        cfg.record = true;
        let mut call = answered_with(cfg);
        // 200 ms drained as they come, then 300 ms left in the session.
        let mut frames = 0;
        for seq in 0..10 {
            call.rtp(seq);
            call.advance(Duration::from_millis(20));
            while let Some(f) = call.core.poll_recording() {
                assert_eq!((f.rate, f.samples.len()), (8000, 320));
                frames += 1;
            }
        }
        assert!((9..=11).contains(&frames), "{frames} frames in 200 ms");
        call.advance(Duration::from_millis(300));
        call.core.handle_hangup(call.now);
        let a = drain(&mut call.core);
        assert_eq!(end(&a), Some(EndReason::HangupByServer));
        let tail = std::iter::from_fn(|| call.core.poll_recording()).count();
        assert!(
            (14..=16).contains(&tail),
            "{tail} frames kept after the end"
        );
        // Off by default: nothing.
        let mut plain = answered(None);
        plain.rtp(0);
        plain.advance(Duration::from_millis(200));
        assert!(plain.core.poll_recording().is_none());
    }

    #[test]
    fn rings_then_answers_after_the_routes_delay() {
        let t0 = Instant::now();
        let mut core = CallCore::inbound(t0, config(None), Some(negotiated(&offer("a=sendrecv"))));
        // No `Calling` from the stack: 180 after 500 ms anyway.
        assert_eq!(core.poll_timeout(), Some(t0 + TRYING_WAIT));
        core.handle_timeout(t0 + TRYING_WAIT);
        assert_eq!(sip(&drain(&mut core)), vec![SipAction::Ringing]);
        let answer_at = t0 + TRYING_WAIT + Duration::from_millis(1000);
        assert_eq!(core.poll_timeout(), Some(answer_at));
        core.handle_timeout(answer_at - Duration::from_millis(1));
        assert!(drain(&mut core).is_empty());
        core.handle_timeout(answer_at);
        let a = drain(&mut core);
        assert!(matches!(a[0], Action::Event(CallEvent::Answering)));
        assert!(matches!(&sip(&a)[0], SipAction::Accept { .. }));
    }

    /// A route with early media: a loud 1 s clip, media starting at SSRC 77.
    fn early_config(answer_delay_ms: u64) -> CoreConfig {
        let mut cfg = config(None);
        cfg.answer_delay = Duration::from_millis(answer_delay_ms);
        cfg.early = Some(EarlyMedia {
            clip: Arc::new(crate::config::Prompt {
                pcm: vec![8000; 8000],
                rate: 8000,
            }),
            start: MediaStart {
                wall: SystemTime::now(),
                ssrc: 77,
                seq: 1,
                ts: 1,
            },
        });
        cfg
    }

    /// Runs `ms` of media ticks; the RTP packets sent (SSRC, first payload byte).
    fn rtp_out(core: &mut CallCore, now: &mut Instant, ms: u64) -> (Vec<(u32, u8)>, Vec<Action>) {
        let until = *now + Duration::from_millis(ms);
        let (mut pkts, mut actions) = (Vec::new(), Vec::new());
        loop {
            while let Some(t) = core.poll_transmit() {
                if t.socket == crate::media::session::Socket::Rtp && t.bytes.len() > 12 {
                    let ssrc =
                        u32::from_be_bytes([t.bytes[8], t.bytes[9], t.bytes[10], t.bytes[11]]);
                    pkts.push((ssrc, t.bytes[12]));
                }
            }
            actions.extend(std::iter::from_fn(|| core.poll_action()));
            match core.poll_timeout() {
                Some(t) if t <= until && !core.is_ended() => {
                    *now = (*now).max(t);
                    core.handle_timeout(*now);
                }
                _ => break,
            }
        }
        *now = until;
        (pkts, actions)
    }

    fn probe() -> (Box<Probe>, Arc<Mutex<AgentOutput>>) {
        let next = Arc::new(Mutex::new(AgentOutput::default()));
        let agent = Box::new(Probe {
            seen: Default::default(),
            next: next.clone(),
        });
        (agent, next)
    }

    #[test]
    fn early_media_sends_183_plays_the_clip_and_answers_once_the_agent_is_ready() {
        let t0 = Instant::now();
        let mut now = t0;
        let mut core = CallCore::inbound(
            t0,
            early_config(1000),
            Some(negotiated(&offer("a=sendrecv"))),
        );
        core.handle_dialog(t0, DialogInput::Calling);
        let a = drain(&mut core);
        let sdp183 = match &sip(&a)[..] {
            [SipAction::Progress { sdp }] => sdp.clone(),
            other => panic!("{other:?}"),
        };
        assert!(sdp183.contains("m=audio 30000 RTP/AVP 0"), "{sdp183}");
        assert!(
            a.iter().any(|a| matches!(a, Action::StartAgent(_))),
            "{a:?}"
        );
        assert!(a
            .iter()
            .any(|a| matches!(a, Action::Event(CallEvent::EarlyMedia))));
        // The clip plays (not PCMU silence, 0xff) from SSRC 77 while the
        // agent is built; building it takes 300 ms.
        let (pkts, a) = rtp_out(&mut core, &mut now, 300);
        assert!((14..=16).contains(&pkts.len()), "{}", pkts.len());
        assert!(
            pkts.iter().all(|&(ssrc, b)| ssrc == 77 && b != 0xff),
            "{pkts:?}"
        );
        assert!(sip(&a).is_empty(), "{a:?}");
        let (agent, next) = probe();
        next.lock().unwrap().audio = vec![0; 1600];
        core.start_media(now, agent, MediaStart::random(), None);
        // Not answered before the route's answer delay (1 s after ringing).
        let (pkts, a) = rtp_out(&mut core, &mut now, 690);
        assert!(sip(&a).is_empty(), "{a:?}");
        assert!(pkts.iter().all(|&(_, b)| b != 0xff));
        let (pkts, a) = rtp_out(&mut core, &mut now, 100);
        // 200 with the 183's SDP; the agent speaks on the same stream at once.
        assert!(
            matches!(&sip(&a)[..], [SipAction::Accept { sdp }] if *sdp == sdp183),
            "{a:?}"
        );
        assert!(a
            .iter()
            .any(|a| matches!(a, Action::Event(CallEvent::Answered { agent: "probe", .. }))));
        assert!(pkts.iter().all(|&(ssrc, _)| ssrc == 77));
        let first_agent = pkts
            .iter()
            .position(|&(_, b)| b == 0xff)
            .expect("agent audio");
        assert!(
            pkts[first_agent..].iter().all(|&(_, b)| b == 0xff),
            "the clip goes on: {pkts:?}"
        );
        // The ACK confirms; a hangup now is a BYE.
        core.handle_dialog(now, DialogInput::Confirmed { ack_body: vec![] });
        assert!(drain(&mut core).is_empty());
        core.handle_hangup(now);
        let a = drain(&mut core);
        assert_eq!(sip(&a), vec![SipAction::Bye]);
        assert_eq!(end(&a), Some(EndReason::HangupByServer));
    }

    #[test]
    fn early_media_answers_as_soon_as_a_slow_agent_is_ready_and_a_hangup_waits_for_the_ack() {
        let t0 = Instant::now();
        let mut now = t0;
        let mut core =
            CallCore::inbound(t0, early_config(0), Some(negotiated(&offer("a=sendrecv"))));
        core.handle_dialog(t0, DialogInput::Calling);
        drain(&mut core);
        // The agent takes 3 s (a webhook, a provider): ringback all along.
        let (pkts, a) = rtp_out(&mut core, &mut now, 3000);
        assert!(sip(&a).is_empty(), "{a:?}");
        assert!(pkts.len() >= 148, "{}", pkts.len());
        let (agent, _) = probe();
        core.start_media(now, agent, MediaStart::random(), None);
        let a = drain(&mut core);
        assert!(matches!(&sip(&a)[..], [SipAction::Accept { .. }]), "{a:?}");
        // Hung up before the ACK: the BYE waits for it.
        core.handle_hangup(now);
        assert!(sip(&drain(&mut core)).is_empty());
        assert!(!core.is_ended());
        core.handle_dialog(now, DialogInput::Confirmed { ack_body: vec![] });
        let a = drain(&mut core);
        assert_eq!(sip(&a), vec![SipAction::Bye]);
        assert_eq!(end(&a), Some(EndReason::HangupByServer));
    }

    #[test]
    fn early_media_ends_with_503_on_hangup_and_500_when_the_agent_fails() {
        for fail in [false, true] {
            let t0 = Instant::now();
            let mut core =
                CallCore::inbound(t0, early_config(0), Some(negotiated(&offer("a=sendrecv"))));
            core.handle_dialog(t0, DialogInput::Calling);
            drain(&mut core);
            if fail {
                core.agent_failed(&agent::AgentError::Config {
                    agent: "probe",
                    problem: "no such provider".into(),
                });
            } else {
                core.handle_hangup(t0);
            }
            let a = drain(&mut core);
            let code = if fail { 500 } else { 503 };
            assert_eq!(sip(&a), vec![SipAction::Reject { code }]);
            assert!(core.is_ended());
            // A late agent is dropped.
            let (agent, _) = probe();
            core.start_media(t0, agent, MediaStart::random(), None);
            assert!(sip(&drain(&mut core)).is_empty());
        }
        // An INVITE without an offer rings the plain way (nothing to answer in a 183).
        let t0 = Instant::now();
        let mut core = CallCore::inbound(t0, early_config(0), None);
        core.handle_dialog(t0, DialogInput::Calling);
        assert_eq!(sip(&drain(&mut core)), vec![SipAction::Ringing]);
    }

    /// An outbound call whose 183 carried `T0_OFFER`'s media, its agent
    /// (a probe that says 100 ms at once) started.
    fn outbound_early() -> (CallCore, Instant, Arc<Mutex<AgentOutput>>, Arc<Mutex<Seen>>) {
        let t0 = Instant::now();
        let neg = negotiated(&offer("a=sendrecv"));
        let mut core = CallCore::outbound(config(None), "v=0 our offer".into(), neg, true);
        let a = drain(&mut core);
        assert!(matches!(a[0], Action::StartAgent(_)), "{a:?}");
        let seen = Arc::new(Mutex::new(Seen::default()));
        let next = Arc::new(Mutex::new(AgentOutput::default()));
        next.lock().unwrap().audio = vec![0; 800];
        let agent = Box::new(Probe {
            seen: seen.clone(),
            next: next.clone(),
        });
        core.start_media(t0, agent, MediaStart::random(), None);
        let a = drain(&mut core);
        assert!(
            a.iter()
                .any(|a| matches!(a, Action::Event(CallEvent::EarlyMedia))),
            "{a:?}"
        );
        assert!(!a
            .iter()
            .any(|a| matches!(a, Action::Event(CallEvent::Answered { .. }))));
        (core, t0, next, seen)
    }

    #[test]
    fn outbound_early_media_reaches_the_agent_and_its_words_wait_for_the_200() {
        let (mut core, t0, _next, seen) = outbound_early();
        let mut call = Call {
            core,
            now: t0,
            seen: seen.clone(),
            next: Default::default(),
        };
        // The callee's early audio (ringback, an announcement) reaches the agent.
        for seq in 0..50 {
            call.rtp(seq);
            call.advance(Duration::from_millis(20));
        }
        assert!(seen.lock().unwrap().audio_frames >= 45);
        // Nothing goes out before the answer, and no RTP timeout either.
        core = call.core;
        let mut now = call.now;
        let (pkts, a) = rtp_out(&mut core, &mut now, 40_000);
        assert!(pkts.is_empty(), "{} packets before the 200", pkts.len());
        assert!(end(&a).is_none(), "{a:?}");
        // The 200: answered, and the agent's held 100 ms goes out.
        core.handle_answered(now, Ok(negotiated(&offer("a=sendrecv"))));
        let a = drain(&mut core);
        assert!(
            a.iter()
                .any(|a| matches!(a, Action::Event(CallEvent::Answered { agent: "probe", .. }))),
            "{a:?}"
        );
        let (pkts, _) = rtp_out(&mut core, &mut now, 200);
        assert!(
            (4..=6).contains(&pkts.len()),
            "{} packets after the 200",
            pkts.len()
        );
        core.handle_hangup(now);
        assert_eq!(sip(&drain(&mut core)), vec![SipAction::Bye]);
    }

    #[test]
    fn outbound_early_media_ends_with_cancel_or_the_final_error() {
        let (mut core, t0, _, _) = outbound_early();
        core.handle_hangup(t0);
        let a = drain(&mut core);
        assert_eq!(sip(&a), vec![SipAction::Cancel]);
        assert_eq!(end(&a), Some(EndReason::HangupBeforeAnswer));

        let (mut core, _, _, _) = outbound_early();
        let busy = EndReason::CallFailed {
            code: 486,
            reason: "Busy Here".into(),
        };
        core.handle_failed(busy.clone());
        let a = drain(&mut core);
        assert!(sip(&a).is_empty(), "{a:?}");
        assert_eq!(end(&a), Some(busy));

        // A 200 whose SDP we cannot use: BYE (the dialog is confirmed).
        let (mut core, t0, _, _) = outbound_early();
        core.handle_answered(t0, Err("no audio".into()));
        let a = drain(&mut core);
        assert_eq!(
            sip(&a),
            vec![SipAction::ByeWithReason {
                reason: "SIP;cause=488;text=\"bad SDP answer: no audio\"".into()
            }]
        );
        assert!(matches!(end(&a), Some(EndReason::BadSdpAnswer(_))));
    }

    #[test]
    fn hangup_while_ringing_rejects_with_503() {
        let t0 = Instant::now();
        let mut core = CallCore::inbound(t0, config(None), None);
        core.handle_dialog(t0, DialogInput::Calling);
        drain(&mut core);
        core.handle_hangup(t0);
        let a = drain(&mut core);
        assert_eq!(sip(&a), vec![SipAction::Reject { code: 503 }]);
        assert_eq!(end(&a), Some(EndReason::HangupBeforeAnswer));
        assert!(core.is_ended());
    }

    #[test]
    fn hangup_before_ack_waits_without_a_timer_then_byes_on_the_ack() {
        let t0 = Instant::now();
        let mut core = CallCore::inbound(t0, config(None), Some(negotiated(&offer("a=sendrecv"))));
        core.handle_dialog(t0, DialogInput::Calling);
        core.handle_timeout(t0 + Duration::from_secs(1));
        assert!(matches!(
            &sip(&drain(&mut core))[..],
            [SipAction::Ringing, SipAction::Accept { .. }]
        ));
        core.handle_hangup(t0 + Duration::from_secs(2));
        // Nothing to do and nothing to wake for until the ACK (or the
        // dialog's own timeout) comes: no busy loop.
        assert!(drain(&mut core).is_empty());
        assert_eq!(core.poll_timeout(), None);
        core.handle_dialog(
            t0 + Duration::from_secs(3),
            DialogInput::Confirmed { ack_body: vec![] },
        );
        let a = drain(&mut core);
        assert_eq!(sip(&a), vec![SipAction::Bye]);
        assert_eq!(end(&a), Some(EndReason::HangupByServer));
    }

    #[test]
    fn hangup_while_the_agent_starts_ends_at_once_and_drops_the_late_agent() {
        let t0 = Instant::now();
        let mut core = CallCore::inbound(t0, config(None), Some(negotiated(&offer("a=sendrecv"))));
        core.handle_timeout(t0 + TRYING_WAIT);
        core.handle_timeout(t0 + Duration::from_secs(2));
        core.handle_dialog(
            t0 + Duration::from_secs(2),
            DialogInput::Confirmed { ack_body: vec![] },
        );
        assert!(matches!(
            drain(&mut core).last(),
            Some(Action::StartAgent(_))
        ));
        // A slow call_initiated webhook: the hangup does not wait for it.
        core.handle_hangup(t0 + Duration::from_secs(3));
        let a = drain(&mut core);
        assert_eq!(sip(&a), vec![SipAction::Bye]);
        assert_eq!(end(&a), Some(EndReason::HangupByServer));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let next = Arc::new(Mutex::new(AgentOutput::default()));
        let start = MediaStart {
            wall: SystemTime::now(),
            ssrc: 1,
            seq: 1,
            ts: 1,
        };
        core.start_media(
            t0 + Duration::from_secs(9),
            Box::new(Probe { seen, next }),
            start,
            None,
        );
        core.agent_failed(&agent::AgentError::TaskEnded("provider task gone".into()));
        assert!(drain(&mut core).is_empty(), "nothing after the end");
        assert!(core.poll_transmit().is_none());
    }

    #[test]
    fn no_ack_ends_the_call_with_the_dialogs_timeout() {
        let t0 = Instant::now();
        let mut core = CallCore::inbound(t0, config(None), Some(negotiated(&offer("a=sendrecv"))));
        core.handle_timeout(t0 + Duration::from_secs(2));
        core.handle_timeout(t0 + Duration::from_secs(2));
        drain(&mut core);
        core.handle_dialog(
            t0 + Duration::from_secs(34),
            DialogInput::Terminated(EndReason::NoAck),
        );
        let a = drain(&mut core);
        assert!(sip(&a).is_empty(), "no BYE for a dialog that never started");
        assert_eq!(end(&a), Some(EndReason::NoAck));
    }

    #[test]
    fn offerless_invite_takes_the_answer_from_the_ack() {
        let t0 = Instant::now();
        let mut core = CallCore::inbound(t0, config(None), None);
        core.handle_timeout(t0 + TRYING_WAIT);
        core.handle_timeout(t0 + Duration::from_secs(2));
        let a = drain(&mut core);
        assert!(
            matches!(&sip(&a)[1], SipAction::Accept { sdp } if sdp.contains("a=rtpmap:0 PCMU"))
        );
        core.handle_dialog(
            t0 + Duration::from_secs(2),
            DialogInput::Confirmed {
                ack_body: b"garbage".to_vec(),
            },
        );
        let a = drain(&mut core);
        assert!(
            matches!(&sip(&a)[..], [SipAction::ByeWithReason { reason }]
                if reason.starts_with("SIP;cause=488;text=\"bad answer in ACK: ")),
            "{a:?}"
        );
        assert!(matches!(end(&a), Some(EndReason::BadAckAnswer(_))), "{a:?}");
    }

    #[test]
    fn reinvite_puts_the_call_on_hold_and_resumes_it() {
        let mut call = answered(None);
        let a = call.dialog(DialogInput::Offer {
            tx: 1,
            body: offer("a=sendonly"),
        });
        match &sip(&a)[..] {
            [SipAction::Respond {
                tx: 1,
                code: 200,
                sdp: Some(sdp),
            }] => {
                assert!(sdp.contains("a=recvonly"), "{sdp}");
                assert!(sdp.contains(" 42 2 IN IP4"), "version +1: {sdp}");
            }
            other => panic!("{other:?}"),
        }
        assert!(a
            .iter()
            .any(|a| matches!(a, Action::Event(CallEvent::MediaUpdated { held: true, .. }))));
        let a = call.dialog(DialogInput::Offer {
            tx: 2,
            body: offer("a=sendrecv"),
        });
        assert!(
            matches!(&sip(&a)[..], [SipAction::Respond { tx: 2, code: 200, sdp: Some(s) }] if s.contains("a=sendrecv"))
        );
        assert_eq!(call.seen.lock().unwrap().holds, vec![true, false]);
        assert_eq!(end(&a), None);
    }

    #[test]
    fn unusable_reinvite_gets_488_and_the_call_keeps_its_media() {
        let mut call = answered(None);
        let bad = T0_OFFER
            .replace("RTP/AVP 0 101", "RTP/AVP 98")
            .replace("a=rtpmap:0 PCMU/8000", "a=rtpmap:98 AMR/8000");
        let a = call.dialog(DialogInput::Offer {
            tx: 5,
            body: bad.into_bytes(),
        });
        assert_eq!(
            sip(&a),
            vec![SipAction::Respond {
                tx: 5,
                code: 488,
                sdp: None
            }]
        );
        // Media still flows to the agent.
        let before = call.seen.lock().unwrap().audio_frames;
        for seq in 1..20 {
            call.rtp(seq);
            call.advance(Duration::from_millis(20));
        }
        assert!(call.seen.lock().unwrap().audio_frames > before + 10);
        assert!(!call.core.is_ended());
    }

    #[test]
    fn we_refresh_the_session_and_hang_up_when_a_refresh_fails() {
        let timer = SessionTimer {
            interval_s: 90,
            refresher: Refresher::Uas,
            uac_supports: true,
        };
        let mut call = answered(Some(timer));
        let a = call.advance(Duration::from_millis(44_900));
        assert!(sip(&a).is_empty(), "{:?}", sip(&a));
        let a = call.advance(Duration::from_millis(200));
        let refreshes: Vec<_> = sip(&a);
        assert!(
            matches!(&refreshes[..], [SipAction::Refresh { sdp }] if sdp.contains("m=audio 30000")),
            "{refreshes:?}"
        );
        // One refresh in flight at a time.
        assert!(sip(&call.advance(Duration::from_secs(10))).is_empty());
        call.core.handle_refresh_result(call.now, Ok(200));
        // The next one is due half an interval after the success.
        assert!(sip(&call.advance(Duration::from_millis(44_900))).is_empty());
        assert!(matches!(
            &sip(&call.advance(Duration::from_millis(200)))[..],
            [SipAction::Refresh { .. }]
        ));
        call.core.handle_refresh_result(call.now, Ok(481));
        let a = drain(&mut call.core);
        assert_eq!(sip(&a), vec![SipAction::Bye]);
        assert_eq!(end(&a), Some(EndReason::SessionRefreshFailed));
    }

    #[test]
    fn session_expires_when_the_caller_does_not_refresh() {
        let timer = SessionTimer {
            interval_s: 90,
            refresher: Refresher::Uac,
            uac_supports: true,
        };
        let mut call = answered(Some(timer));
        for seq in 0..3000u16 {
            // Keep RTP flowing so only the session timer can end the call.
            if seq % 50 == 0 {
                call.rtp(seq);
            }
            let a = call.advance(Duration::from_millis(20));
            if call.core.is_ended() {
                break;
            }
            assert!(end(&a).is_none());
            // A re-INVITE at 50 s refreshes the session.
            if seq == 2500 {
                call.dialog(DialogInput::Offer {
                    tx: 9,
                    body: offer("a=sendrecv"),
                });
            }
        }
        // Expiry is interval - min(32, interval/3) = 60 s after the refresh at 50 s.
        let a = call.advance(Duration::from_secs(60));
        assert_eq!(sip(&a), vec![SipAction::Bye]);
        assert_eq!(end(&a), Some(EndReason::SessionTimerExpired));
    }

    #[test]
    fn rtp_timeout_hangs_up_a_silent_caller() {
        let mut call = answered(None);
        call.rtp(1);
        let a = call.advance(Duration::from_secs(29));
        assert!(end(&a).is_none());
        let a = call.advance(Duration::from_secs(3));
        assert_eq!(sip(&a), vec![SipAction::Bye]);
        assert_eq!(end(&a), Some(EndReason::RtpTimeout));
    }

    fn refer_request(bridge: bool) -> TransferRequest {
        TransferRequest {
            refer_to: "sip:operator@pbx.example.test".into(),
            bridge: bridge.then(|| ("carrier".to_string(), "operator".to_string())),
            mode: TransferMode::Auto,
        }
    }

    #[test]
    fn refer_accepted_then_notify_2xx_ends_the_call_as_transferred() {
        let mut call = answered(None);
        call.core
            .handle_command(call.now, CallCommand::Transfer(refer_request(false)));
        let a = drain(&mut call.core);
        assert_eq!(
            sip(&a),
            vec![SipAction::Refer {
                target: "sip:operator@pbx.example.test".into()
            }]
        );
        assert_eq!(transfers(&a)[0].state, TransferState::Requested);
        call.core.handle_refer_result(call.now, Ok(202));
        assert_eq!(
            transfers(&drain(&mut call.core))[0].state,
            TransferState::Accepted
        );
        let a = call.dialog(DialogInput::Notify {
            tx: 3,
            refer_status: Some(100),
        });
        assert_eq!(
            sip(&a),
            vec![SipAction::Respond {
                tx: 3,
                code: 200,
                sdp: None
            }]
        );
        assert_eq!(transfers(&a)[0].state, TransferState::Trying);
        let a = call.dialog(DialogInput::Notify {
            tx: 4,
            refer_status: Some(200),
        });
        assert_eq!(transfers(&a)[0].state, TransferState::Succeeded);
        assert!(end(&a).is_none(), "the 200 to the NOTIFY leaves first");
        let a = call.advance(Duration::from_millis(100));
        assert_eq!(sip(&a), vec![SipAction::Bye]);
        assert_eq!(
            end(&a),
            Some(EndReason::Transferred {
                target: "sip:operator@pbx.example.test".into()
            })
        );
        assert_eq!(
            end(&a).unwrap().to_string(),
            "transferred to sip:operator@pbx.example.test"
        );
    }

    #[test]
    fn refused_refer_without_a_trunk_fails_and_the_call_goes_on() {
        let mut call = answered(None);
        call.core
            .handle_command(call.now, CallCommand::Transfer(refer_request(false)));
        drain(&mut call.core);
        call.core.handle_refer_result(call.now, Ok(501));
        let a = drain(&mut call.core);
        let t = transfers(&a);
        assert_eq!(t[0].state, TransferState::Failed);
        assert_eq!(t[0].detail.as_deref(), Some("REFER refused: 501"));
        assert!(end(&a).is_none());
        // A NOTIFY after a failed transfer does not end the call.
        let a = call.dialog(DialogInput::Notify {
            tx: 8,
            refer_status: Some(200),
        });
        assert!(end(&call.advance(Duration::from_millis(200))).is_none());
        assert!(transfers(&a).is_empty());
    }

    #[test]
    fn refused_refer_falls_back_to_a_bridge_through_the_trunk() {
        let mut call = answered(None);
        call.core
            .handle_command(call.now, CallCommand::Transfer(refer_request(true)));
        drain(&mut call.core);
        call.core
            .handle_refer_result(call.now, Err(RequestError::Stack("timeout".into())));
        let a = drain(&mut call.core);
        assert!(
            a.iter().any(|a| matches!(a, Action::PlaceBridgeLeg { trunk, to, .. } if trunk == "carrier" && to == "operator")),
            "{a:?}"
        );
        call.core.handle_bridge_leg(call.now, Ok("leg-1".into()));
        let t = transfers(&drain(&mut call.core));
        assert_eq!(
            (t[0].method, t[0].state),
            (TransferMethod::Bridge, TransferState::Trying)
        );
        assert_eq!(t[0].bridged_call.as_deref(), Some("leg-1"));
        call.core
            .handle_command(call.now, CallCommand::BridgeAnswered("leg-1".into()));
        let a = drain(&mut call.core);
        assert!(a
            .iter()
            .any(|a| matches!(a, Action::Event(CallEvent::AgentKind("bridge")))));
        assert_eq!(transfers(&a)[0].state, TransferState::Succeeded);
        // The caller hangs up: the bridged leg goes with it.
        let a = call.dialog(DialogInput::Terminated(EndReason::CallerHungUp));
        assert!(
            a.iter()
                .any(|a| matches!(a, Action::HangupLeg(l) if l == "leg-1")),
            "{a:?}"
        );
        assert_eq!(end(&a), Some(EndReason::CallerHungUp));
    }

    #[test]
    fn bridge_leg_that_fails_leaves_the_agent_in_place() {
        let mut call = answered(None);
        let mut req = refer_request(true);
        req.mode = TransferMode::Bridge;
        call.core
            .handle_command(call.now, CallCommand::Transfer(req));
        let a = drain(&mut call.core);
        assert!(sip(&a).is_empty(), "no REFER in bridge mode");
        call.core.handle_bridge_leg(call.now, Ok("leg-2".into()));
        drain(&mut call.core);
        call.core.handle_command(
            call.now,
            CallCommand::BridgeFailed("call failed: 486 Busy Here".into()),
        );
        let a = drain(&mut call.core);
        let t = transfers(&a);
        assert_eq!(t[0].state, TransferState::Failed);
        assert_eq!(t[0].detail.as_deref(), Some("call failed: 486 Busy Here"));
        assert!(!a
            .iter()
            .any(|a| matches!(a, Action::Event(CallEvent::AgentKind(_)))));
    }

    #[test]
    fn bye_crossing_a_reinvite_ends_without_our_bye() {
        let mut call = answered(None);
        // The caller's re-INVITE and BYE cross: the re-INVITE is answered,
        // the BYE ends the call, and we send no BYE of our own.
        call.core.handle_dialog(
            call.now,
            DialogInput::Offer {
                tx: 1,
                body: offer("a=sendonly"),
            },
        );
        call.core
            .handle_dialog(call.now, DialogInput::Terminated(EndReason::CallerHungUp));
        let a = drain(&mut call.core);
        assert!(
            matches!(
                &sip(&a)[..],
                [SipAction::Respond {
                    tx: 1,
                    code: 200,
                    ..
                }]
            ),
            "{a:?}"
        );
        assert_eq!(end(&a), Some(EndReason::CallerHungUp));
        // Our own refresh re-INVITE failing after the end changes nothing.
        call.core
            .handle_refresh_result(call.now, Err(RequestError::Stack("481".into())));
        call.core.handle_hangup(call.now);
        assert!(drain(&mut call.core).is_empty());
        assert!(call.core.poll_timeout().is_none());
    }

    #[test]
    fn provider_failover_is_reported_and_the_call_goes_on() {
        let mut call = answered(None);
        call.next.lock().unwrap().events = vec![
            AgentEvent::Failed {
                reason: "provider closed the socket".into(),
            },
            AgentEvent::Provider { kind: "say".into() },
        ];
        call.next.lock().unwrap().audio = vec![100; 800];
        let a = call.advance(Duration::from_millis(40));
        let agent_events: Vec<_> = a
            .iter()
            .filter_map(|a| match a {
                Action::Event(CallEvent::Agent(e)) => Some(e.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(agent_events.len(), 2, "{agent_events:?}");
        assert!(matches!(&agent_events[1], AgentEvent::Provider { kind } if kind == "say"));
        assert!(end(&a).is_none());
    }

    #[test]
    fn a_failed_provider_without_fallback_ends_as_an_agent_error() {
        let mut call = answered(None);
        {
            let mut n = call.next.lock().unwrap();
            n.events = vec![AgentEvent::Failed {
                reason: "connect to 127.0.0.1:9: no answer within 3s".into(),
            }];
            n.hangup = true;
        }
        let a = call.advance(Duration::from_millis(40));
        assert_eq!(sip(&a), vec![SipAction::Bye]);
        let reason = end(&a).unwrap();
        assert_eq!(
            reason,
            EndReason::AgentError("connect to 127.0.0.1:9: no answer within 3s".into())
        );
        assert_eq!(
            reason.to_string(),
            "agent error: connect to 127.0.0.1:9: no answer within 3s"
        );
        assert_eq!(reason.hung_up_by(), HungUpBy::Error);
        // A plain hangup is still the agent's choice.
        let mut call = answered(None);
        call.next.lock().unwrap().hangup = true;
        let a = call.advance(Duration::from_millis(40));
        assert_eq!(end(&a), Some(EndReason::AgentHungUp));
    }

    #[test]
    fn agent_ends_the_call_after_its_last_words_are_played() {
        let mut call = answered(None);
        {
            let mut n = call.next.lock().unwrap();
            n.audio = vec![100; 1600]; // 200 ms at 8 kHz
            n.hangup_after_playout = true;
        }
        let a = call.advance(Duration::from_millis(100));
        assert!(end(&a).is_none(), "still playing");
        let a = call.advance(Duration::from_millis(200));
        assert_eq!(sip(&a), vec![SipAction::Bye]);
        assert_eq!(end(&a), Some(EndReason::AgentFinished));
    }

    #[test]
    fn dtmf_by_info_reaches_the_agent_and_the_record() {
        let mut call = answered(None);
        let a = call.dialog(DialogInput::Info {
            tx: 7,
            dtmf: Some('5'),
        });
        assert_eq!(
            sip(&a),
            vec![SipAction::Respond {
                tx: 7,
                code: 200,
                sdp: None
            }]
        );
        assert!(a
            .iter()
            .any(|a| matches!(a, Action::Event(CallEvent::Dtmf('5')))));
        assert_eq!(call.seen.lock().unwrap().dtmf, vec!['5']);
    }

    #[test]
    fn end_reasons_read_as_before_and_say_who_hung_up() {
        assert_eq!(EndReason::CallerHungUp.to_string(), "caller hung up");
        assert_eq!(EndReason::AgentFinished.to_string(), "agent finished");
        assert_eq!(
            EndReason::CallFailed {
                code: 486,
                reason: "Busy Here".into()
            }
            .to_string(),
            "call failed: 486 Busy Here"
        );
        assert_eq!(EndReason::HangupByServer.hung_up_by(), HungUpBy::Api);
        assert_eq!(EndReason::RtpTimeout.hung_up_by(), HungUpBy::Timeout);
        assert_eq!(EndReason::CallerCancelled.hung_up_by(), HungUpBy::Caller);
    }

    /// Answering-machine detection with `amd_action = "message"`: the
    /// agent is heard until a machine is decided, then nothing of it; the
    /// message plays when the beep ends, and the call ends after it.
    #[test]
    fn amd_message_holds_the_agent_on_a_machine_and_plays_the_message_after_the_beep() {
        let mut cfg = config(None);
        cfg.record = true;
        cfg.rtp_timeout = Duration::ZERO;
        cfg.amd = Some(AmdMode::Message(vec![3000; 8000], 8000));
        let mut call = answered_with(cfg);
        let buzz = |ms: u32| -> Vec<i16> {
            (0..8 * ms)
                .map(|i| {
                    let t = i as f32 / 8000.0;
                    let v: f32 = (1..20)
                        .map(|h| {
                            (2.0 * std::f32::consts::PI * 130.0 * h as f32 * t).sin() / h as f32
                        })
                        .sum();
                    (3000.0 * v) as i16
                })
                .collect()
        };
        let beep: Vec<i16> = (0..8 * 400)
            .map(|i| {
                (9000.0 * (2.0 * std::f32::consts::PI * 1000.0 * i as f32 / 8000.0).sin()) as i16
            })
            .collect();
        // 400 ms silence, a 3 s greeting, 400 ms, the beep (ends at 4.2 s), silence.
        let callee = [
            vec![0; 3200],
            buzz(3000),
            vec![0; 3200],
            beep,
            vec![0; 8 * 3000],
        ]
        .concat();
        let (mut sent, mut actions) = (Vec::new(), Vec::new());
        for (k, chunk) in callee.chunks(160).enumerate() {
            // The agent talks all along (a constant -6000).
            call.next.lock().unwrap().audio.extend([-6000i16; 160]);
            let mut p = vec![0x80, 0, (k >> 8) as u8, k as u8];
            p.extend_from_slice(&(k as u32 * 160).to_be_bytes());
            p.extend_from_slice(&0x1234_5678u32.to_be_bytes());
            p.extend(chunk.iter().map(|&s| crate::media::g711::linear_to_ulaw(s)));
            call.core
                .handle_rtp(call.now, "127.0.0.1:40000".parse().unwrap(), &p);
            actions.extend(call.advance(Duration::from_millis(20)));
            while let Some(f) = call.core.poll_recording() {
                // What we sent this tick: its right channel's first sample.
                sent.push(f.samples.get(1).copied().unwrap_or(0));
            }
            if call.core.is_ended() {
                break;
            }
        }
        let amd: Vec<(&str, u64)> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Event(CallEvent::Amd { kind, at_ms, .. }) => Some((*kind, *at_ms)),
                _ => None,
            })
            .collect();
        assert_eq!(
            amd.iter().map(|a| a.0).collect::<Vec<_>>(),
            ["machine", "beep"]
        );
        let decided_tick = (amd[0].1 / 20) as usize;
        let last_agent = sent.iter().rposition(|&s| s == -6000).unwrap();
        let first_message = sent.iter().position(|&s| s == 3000).unwrap();
        let message_ticks = sent.iter().filter(|&&s| s == 3000).count();
        assert!(
            last_agent <= decided_tick + 2,
            "agent heard until tick {last_agent}, machine decided at tick {decided_tick}"
        );
        // The beep ends 4200 ms in (tick 210); the message follows at once.
        assert!(
            (210..=216).contains(&first_message),
            "message from tick {first_message}"
        );
        assert_eq!(message_ticks, 50, "the whole 1 s message");
        assert!(
            sent[first_message..].iter().all(|&s| s != -6000),
            "no agent audio after the message started"
        );
        assert_eq!(
            end(&actions),
            Some(EndReason::AnsweringMachine { message_left: true }),
            "{actions:?}"
        );
    }
}
