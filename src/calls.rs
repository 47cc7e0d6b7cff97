//! The registry of active calls, for the API and for shutdown. It holds
//! handles and a snapshot updated at state changes, never the media state:
//! each call's task owns that.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio_util::sync::CancellationToken;

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
        }
    }
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
}

impl CallRegistry {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding this lock cannot leave a half-written map
        // entry that matters more than losing the API view, so recover.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
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

    pub fn remove(&self, id: &str) {
        self.end(id, None);
    }

    /// Removes a call from the active set and keeps its last view, with
    /// `reason`, among the recent calls.
    pub fn end(&self, id: &str, reason: Option<&str>) {
        let Some(e) = self.lock().remove(id) else {
            return;
        };
        let mut info = e.info;
        info.state = CallState::Ended;
        info.end_reason = reason.map(str::to_string);
        info.ended_at_unix_ms = Some(unix_ms());
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
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
