//! The registry of active calls, for the API and for shutdown. It holds
//! handles and a snapshot updated at state changes, never the media state:
//! each call's task owns that.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio_util::sync::CancellationToken;

pub use crate::store::Direction;
use crate::store::{CdrEnd, CdrStart, Store};

/// What the API shows about a call.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CallInfo {
    pub id: String,
    pub call_id: String,
    pub from: String,
    pub to: String,
    /// The caller's number: P-Asserted-Identity (trunks), else the From user.
    pub caller_id: Option<String>,
    pub route: String,
    pub agent: String,
    /// The trunk the call came in on or goes out through.
    pub trunk: Option<String>,
    pub state: CallState,
    pub codec: Option<String>,
    /// The SRTP suite when the media is encrypted (SDES over TLS).
    pub srtp: Option<String>,
    /// SRTP packets dropped (bad authentication tag, replay, too short).
    pub srtp_rejected: u64,
    pub local_rtp_port: u16,
    pub remote_rtp: Option<String>,
    pub started_at_unix_ms: u64,
    pub answered_at_unix_ms: Option<u64>,
    pub dtmf: String,
    pub media: crate::media::session::MediaStats,
    /// Loss, jitter, RTT and MOS from RTP and RTCP, refreshed every second.
    pub quality: Option<crate::media::rtcp::CallQuality>,
    /// Jitter buffer counters: lost, late, duplicate, concealed, delay.
    pub jitter: Option<crate::media::jitter::JitterStats>,
    /// We may not send (the caller put us on hold: sendonly/inactive/c=0.0.0.0).
    pub on_hold: bool,
    /// The route's VAD hears the caller talking (false without VAD).
    pub caller_speaking: bool,
    /// Caller turns the VAD saw end (speech then end-of-turn silence).
    pub caller_turns: u64,
    /// Short caller speech over the agent that did not interrupt it.
    pub backchannels: u64,
    /// The UUID the agent providers and webhooks know this call by.
    pub uuid: Option<String>,
    /// What was said, as the providers transcribed it (last 100 lines).
    pub transcript: Vec<TranscriptLine>,
    /// Per-turn latency: caller end of speech to first agent audio (last 50).
    pub turns: Vec<crate::agent::TurnLatency>,
    /// Times the caller barged in on the agent.
    pub interruptions: u64,
    /// The last provider error (a fallback may have taken over).
    pub last_agent_error: Option<String>,
    /// Channel variables (AMI `/setvar`), for tools that read them back.
    pub variables: std::collections::BTreeMap<String, String>,
    /// The last transfer asked for, and how it went.
    pub transfer: Option<TransferInfo>,
    /// The call's recording (stereo WAV, caller left, agent right) when
    /// its route records; set when media starts.
    pub recording: Option<String>,
    /// Recorded frames (20 ms) dropped because the disk fell behind.
    pub recording_dropped_frames: u64,
    /// Why the call ended (e.g. "caller hung up", "call failed: 486 Busy Here").
    pub end_reason: Option<String>,
    pub ended_at_unix_ms: Option<u64>,
    /// Inbound (we were called) or outbound (we placed it).
    pub direction: Direction,
    /// How the call's media travels: "sip" (SIP with RTP/SRTP) or "webrtc"
    /// (a browser: ICE, DTLS-SRTP, `POST /webrtc/{route}`).
    pub transport: &'static str,
    /// Every agent kind that took the call, in order (fallbacks after the first).
    pub agents_used: Vec<String>,
    /// MOS over the call's one-second quality samples.
    pub mos_min: Option<f64>,
    pub mos_avg: Option<f64>,
    #[serde(skip)]
    mos_samples: u64,
    /// Webhook deliveries for this call (failures known by now).
    pub webhooks: WebhookTally,
    /// Answering-machine detection, when the outbound call asked for it.
    pub amd: Option<AmdReport>,
    /// Early media was played (inbound: our 183 with ringback; outbound:
    /// the callee's 183 reached the agent).
    pub early_media: bool,
}

/// What answering-machine detection found (`GET /calls/{id}`'s `amd`).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct AmdReport {
    /// human / machine / notsure, once decided.
    pub result: Option<crate::media::amd::AmdResult>,
    /// When it was decided, in ms from the answer.
    pub ms: Option<u64>,
    /// What it rested on (cause, at_ms, initial silence, greeting, words).
    pub decision: Option<crate::media::amd::AmdDecision>,
    pub beep: Option<crate::media::amd::Beep>,
    /// A machine's greeting ended without a beep (ms from answer).
    pub greeting_ended_ms: Option<u64>,
}

/// Webhook deliveries for one call.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct WebhookTally {
    pub sent: u64,
    pub failed: u64,
}

impl CallInfo {
    /// A call that is just starting (ringing), with empty counters.
    pub fn new(
        id: String,
        call_id: String,
        from: String,
        to: String,
        route: String,
        agent: String,
        local_rtp_port: u16,
    ) -> Self {
        CallInfo {
            id,
            call_id,
            from,
            to,
            caller_id: None,
            route,
            agent,
            trunk: None,
            state: CallState::Ringing,
            codec: None,
            srtp: None,
            srtp_rejected: 0,
            local_rtp_port,
            remote_rtp: None,
            started_at_unix_ms: unix_ms(),
            answered_at_unix_ms: None,
            dtmf: String::new(),
            media: Default::default(),
            quality: None,
            jitter: None,
            on_hold: false,
            caller_speaking: false,
            caller_turns: 0,
            backchannels: 0,
            uuid: None,
            transcript: Vec::new(),
            turns: Vec::new(),
            interruptions: 0,
            last_agent_error: None,
            variables: Default::default(),
            transfer: None,
            recording: None,
            recording_dropped_frames: 0,
            end_reason: None,
            ended_at_unix_ms: None,
            direction: Direction::Inbound,
            transport: "sip",
            agents_used: Vec::new(),
            mos_min: None,
            mos_avg: None,
            mos_samples: 0,
            webhooks: WebhookTally::default(),
            amd: None,
            early_media: false,
        }
    }

    /// Folds one quality sample into the call's MOS minimum and average.
    pub fn add_mos_sample(&mut self, mos: f64) {
        self.mos_samples += 1;
        self.mos_min = Some(self.mos_min.map_or(mos, |m| m.min(mos)));
        let avg = self.mos_avg.unwrap_or(0.0);
        self.mos_avg = Some(avg + (mos - avg) / self.mos_samples as f64);
    }

    fn cdr_start(&self) -> CdrStart {
        CdrStart {
            id: self.id.clone(),
            call_id: self.call_id.clone(),
            direction: self.direction,
            from: self.from.clone(),
            to: self.to.clone(),
            caller_id: self.caller_id.clone(),
            trunk: self.trunk.clone(),
            route: self.route.clone(),
            agent: Some(self.agent.clone()).filter(|a| !a.is_empty()),
            invite_at_ms: self.started_at_unix_ms as i64,
        }
    }

    fn cdr_end(&self, end: &CallEnd, at_ms: u64) -> CdrEnd {
        let quality = self.quality.as_ref().map(|q| {
            serde_json::json!({
                "packets_received": q.packets_received,
                "packets_lost": q.packets_lost,
                "loss_pct": q.fraction_lost_pct,
                "jitter_ms": q.jitter_ms,
                "rtt_ms": q.rtt_ms,
                "remote_loss_pct": q.remote_reported_loss_pct,
                "remote_jitter_ms": q.remote_reported_jitter_ms,
                "mos_last": q.mos,
                "mos_min": self.mos_min,
                "mos_avg": self.mos_avg,
            })
        });
        let detail = serde_json::json!({
            "quality": quality,
            "jitter_buffer": self.jitter,
            "media": self.media,
            "srtp_rejected": self.srtp_rejected,
            "dtmf": self.dtmf,
            "transfer": self.transfer,
            "turns": self.turns,
            "transcript": self.transcript,
            "interruptions": self.interruptions,
            "caller_turns": self.caller_turns,
            "backchannels": self.backchannels,
            "agents_used": self.agents_used,
            "last_agent_error": self.last_agent_error,
            "webhooks": self.webhooks,
            "variables": self.variables,
            "recording_dropped_frames": self.recording_dropped_frames,
            "amd_detail": self.amd,
        });
        CdrEnd {
            id: self.id.clone(),
            uuid: self.uuid.clone(),
            agent: Some(self.agent.clone()).filter(|a| !a.is_empty()),
            answer_at_ms: self.answered_at_unix_ms.map(|t| t as i64),
            end_at_ms: at_ms as i64,
            end_reason: end.reason.clone(),
            hung_up_by: end.hung_up_by.to_string(),
            sip_code: end.sip_code,
            codec: self.codec.clone(),
            srtp: self.srtp.clone(),
            recording: self.recording.clone(),
            amd: self
                .amd
                .as_ref()
                .and_then(|a| a.result)
                .map(|r| r.as_str().to_string()),
            detail,
        }
    }
}

/// How a call ended, as its record keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallEnd {
    /// In words: "caller hung up", "call failed: 486 Busy Here".
    pub reason: String,
    /// caller / agent / api / timeout / error / callee.
    pub hung_up_by: &'static str,
    /// The final status of the INVITE (200 once answered).
    pub sip_code: Option<u16>,
}

/// Ended calls kept for `GET /calls/{id}` (e.g. an outbound call's outcome).
const RECENT_CALLS: usize = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CallState {
    Ringing,
    Answering,
    Active,
    Ending,
    /// Over; kept a while in the recent list with why it ended.
    Ended,
}

/// A request to a running call's task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallCommand {
    /// Send these digits as RFC 4733 telephone-events.
    SendDtmf(String),
    /// Hand the caller to someone else (blind transfer).
    Transfer(TransferRequest),
    /// The bridged leg placed for a transfer answered (its call id) or failed.
    BridgeAnswered(String),
    BridgeFailed(String),
}

/// One transcribed line.
#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
pub struct TranscriptLine {
    pub role: String,
    pub text: String,
    pub at_unix_ms: u64,
}

/// How to transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TransferMode {
    /// REFER; if the caller's side refuses it, bridge through the trunk.
    #[default]
    Auto,
    /// REFER only (RFC 3515).
    Refer,
    /// Call the target through the trunk and bridge the audio (B2BUA).
    Bridge,
}

/// A blind transfer: the REFER target and, for bridging, the trunk leg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferRequest {
    /// `sip:` URI put into Refer-To.
    pub refer_to: String,
    /// Trunk and number for a bridged leg (needed by `bridge`/`auto` fallback).
    pub bridge: Option<(String, String)>,
    pub mode: TransferMode,
}

/// What the API shows about a transfer.
#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
pub struct TransferInfo {
    pub target: String,
    pub method: TransferMethod,
    pub state: TransferState,
    pub detail: Option<String>,
    /// The bridged leg's call id.
    pub bridged_call: Option<String>,
}

/// How a transfer is carried out.
#[derive(Debug, Clone, Copy, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TransferMethod {
    /// REFER (RFC 3515): the caller's side calls the target.
    Refer,
    /// We call the target and bridge the audio (B2BUA).
    Bridge,
}

/// Where a transfer stands.
#[derive(Debug, Clone, Copy, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TransferState {
    Requested,
    /// REFER answered 202.
    Accepted,
    /// NOTIFY 1xx, or the bridge leg is ringing.
    Trying,
    /// NOTIFY 2xx, or the bridge leg answered.
    Succeeded,
    Failed,
}

struct Entry {
    info: CallInfo,
    hangup: CancellationToken,
    commands: tokio::sync::mpsc::UnboundedSender<CallCommand>,
}

#[derive(Clone, Default)]
pub struct CallRegistry {
    inner: Arc<Mutex<HashMap<String, Entry>>>,
    recent: Arc<Mutex<std::collections::VecDeque<CallInfo>>>,
    /// Where every call's record goes (none in unit tests and tools).
    store: Option<Store>,
}

impl CallRegistry {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding this lock cannot leave a half-written map
        // entry that matters more than losing the API view, so recover.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A registry that records every call in `store`.
    pub fn with_store(store: Store) -> Self {
        CallRegistry {
            store: Some(store),
            ..Default::default()
        }
    }

    pub fn store(&self) -> Option<&Store> {
        self.store.as_ref()
    }

    /// Records a call refused before it became one (404, 488, 503 ...):
    /// its record is written whole at once.
    pub fn record_rejected(&self, info: CallInfo, end: &CallEnd) {
        if let Some(store) = &self.store {
            store.call_started(info.cdr_start());
            store.call_ended(info.cdr_end(end, unix_ms()));
        }
    }

    /// Whether the active call `id` has been answered.
    pub fn is_answered(&self, id: &str) -> bool {
        self.lock()
            .get(id)
            .is_some_and(|e| e.info.answered_at_unix_ms.is_some())
    }

    /// The call was answered now.
    pub fn answered(&self, id: &str) {
        let at = unix_ms();
        let mut found = false;
        self.update(id, |c| {
            c.answered_at_unix_ms = Some(at);
            found = true;
        });
        if let (true, Some(store)) = (found, &self.store) {
            store.call_answered(id, at as i64);
        }
    }

    /// The call records to this file (its record names it at once).
    pub fn set_recording(&self, id: &str, path: String) {
        let mut found = false;
        self.update(id, |c| {
            c.recording = Some(path.clone());
            found = true;
        });
        if let (true, Some(store)) = (found, &self.store) {
            store.call_recording(id, &path);
        }
    }

    /// Adds a call unless `max` calls are already active.
    pub fn try_insert(
        &self,
        info: CallInfo,
        hangup: CancellationToken,
        commands: tokio::sync::mpsc::UnboundedSender<CallCommand>,
        max: usize,
    ) -> bool {
        let mut map = self.lock();
        if map.len() >= max {
            return false;
        }
        if let Some(store) = &self.store {
            store.call_started(info.cdr_start());
        }
        map.insert(
            info.id.clone(),
            Entry {
                info,
                hangup,
                commands,
            },
        );
        true
    }

    /// Hands a command to the call's task; false if there is no such call.
    pub fn command(&self, id: &str, cmd: CallCommand) -> bool {
        self.lock()
            .get(id)
            .is_some_and(|e| e.commands.send(cmd).is_ok())
    }

    pub fn update(&self, id: &str, f: impl FnOnce(&mut CallInfo)) {
        if let Some(e) = self.lock().get_mut(id) {
            f(&mut e.info);
        }
    }

    /// Removes a call from the active set, completes its record and keeps
    /// its last view, with why it ended, among the recent calls.
    pub fn end(&self, id: &str, end: &CallEnd) {
        // The recent list is locked first, so a `get` never finds the call
        // in neither place (a 404 for a call that just ended).
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let Some(e) = self.lock().remove(id) else {
            return;
        };
        let mut info = e.info;
        let at = unix_ms();
        info.state = CallState::Ended;
        info.end_reason = Some(end.reason.clone());
        info.ended_at_unix_ms = Some(at);
        if let Some(store) = &self.store {
            store.call_ended(info.cdr_end(end, at));
        }
        if recent.len() >= RECENT_CALLS {
            recent.pop_front();
        }
        recent.push_back(info);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn list(&self) -> Vec<CallInfo> {
        let mut v: Vec<CallInfo> = self.lock().values().map(|e| e.info.clone()).collect();
        v.sort_by_key(|c| c.started_at_unix_ms);
        v
    }

    /// The id of the active call known to providers by `uuid`.
    pub fn find_uuid(&self, uuid: &str) -> Option<String> {
        self.lock()
            .values()
            .find(|e| e.info.uuid.as_deref() == Some(uuid))
            .map(|e| e.info.id.clone())
    }

    /// An active call, else a recently ended one.
    pub fn get(&self, id: &str) -> Option<CallInfo> {
        if let Some(e) = self.lock().get(id) {
            return Some(e.info.clone());
        }
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.iter().rev().find(|c| c.id == id).cloned()
    }

    /// Asks one call to hang up (BYE if answered, reject if not).
    pub fn hangup(&self, id: &str) -> bool {
        match self.lock().get(id) {
            Some(e) => {
                e.hangup.cancel();
                true
            }
            None => false,
        }
    }

    /// Asks every call to hang up; used when draining on SIGTERM.
    pub fn hangup_all(&self) {
        for e in self.lock().values() {
            e.hangup.cancel();
        }
    }
}

/// Lives in the crate root so lower layers (webhooks) can stamp times too.
pub use crate::clock::unix_ms;
