//! The call's media state machine, sans-IO: RTP in, decoded frames and DTMF
//! out to the agent; agent audio in, paced RTP out.
//!
//! It never reads a clock or touches a socket: the call task feeds it
//! `(now, datagram)` and `(now, pcm)`, drains [`Session::poll_transmit`] and
//! [`Session::poll_event`], and wakes it at [`Session::next_timeout`].

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use super::codec::{
    self, AudioDecoder, AudioEncoder, Codec, CodecError, CodecKind, CodecParams, OpusFmtp,
};
use super::dsp::{CallerDsp, DspConfig, TurnEvent};
use super::dtmf::DtmfReceiver;
use super::jitter::{JitterBuffer, JitterConfig, JitterStats, Playout};
use super::latch::{Latch, LatchPolicy, Refusal};
use super::plc::Concealer;
use super::recording::{self, StereoFrame};
use super::resample::Resampler;
use super::rtcp::{self, CallQuality, RtcpSession};
use super::rtp::{looks_like_rtcp, PayloadType, RtpPacket, SeqNo, Ssrc};

/// Media direction attribute (RFC 3264 §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Direction {
    /// Also the meaning of no direction attribute at all.
    #[default]
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    /// The direction seen from the other end: what an answerer uses when it
    /// accepts an offer's direction as is.
    pub fn reversed(self) -> Self {
        match self {
            Self::SendOnly => Self::RecvOnly,
            Self::RecvOnly => Self::SendOnly,
            same => same,
        }
    }

    /// The attribute name, e.g. `sendrecv` for `a=sendrecv`.
    pub fn as_attr(self) -> &'static str {
        match self {
            Self::SendRecv => "sendrecv",
            Self::SendOnly => "sendonly",
            Self::RecvOnly => "recvonly",
            Self::Inactive => "inactive",
        }
    }

    /// Parses an attribute name (`sendrecv`, ...); `None` for other
    /// attributes.
    pub fn from_attr(name: &str) -> Option<Self> {
        [
            Self::SendRecv,
            Self::SendOnly,
            Self::RecvOnly,
            Self::Inactive,
        ]
        .into_iter()
        .find(|d| d.as_attr().eq_ignore_ascii_case(name))
    }

    pub fn sends(self) -> bool {
        matches!(self, Self::SendRecv | Self::SendOnly)
    }

    pub fn receives(self) -> bool {
        matches!(self, Self::SendRecv | Self::RecvOnly)
    }

    /// The direction that sends and receives as given.
    pub fn from_flags(sends: bool, receives: bool) -> Self {
        match (sends, receives) {
            (true, true) => Self::SendRecv,
            (true, false) => Self::SendOnly,
            (false, true) => Self::RecvOnly,
            (false, false) => Self::Inactive,
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_attr())
    }
}

/// What the SDP negotiation settled for this call's audio.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaParams {
    pub codec: Codec,
    pub pt: u8,
    pub te_pt: Option<u8>,
    pub ptime_ms: u32,
    /// Where the SDP says to send; replaced by the latched source (symmetric RTP).
    pub remote: Option<SocketAddr>,
    /// Where RTCP goes (SDP `a=rtcp`, else RTP port + 1), unless muxed.
    pub remote_rtcp: Option<SocketAddr>,
    /// RTCP shares the RTP port (RFC 5761), as negotiated.
    pub rtcp_mux: bool,
    /// Our direction.
    pub direction: Direction,
    /// Adaptive jitter buffer bounds.
    pub jitter_min_ms: u32,
    pub jitter_max_ms: u32,
    /// The PCM rate the agent hears and speaks (8, 16, 24 or 48 kHz).
    pub agent_rate: u32,
    /// The peer's a=fmtp for the codec (Opus FEC/DTX/bit rate wishes).
    pub codec_fmtp: Option<String>,
    /// Send silence when the agent has nothing to say, so RTP never stops
    /// (carriers' media timeouts, NAT bindings); off = suppress the gap and
    /// mark the next talk spurt.
    pub send_silence: bool,
}

/// Which of the call's two sockets a datagram leaves from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Socket {
    Rtp,
    Rtcp,
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub socket: Socket,
    pub to: SocketAddr,
    pub bytes: Vec<u8>,
}

impl MediaParams {
    /// One ptime of audio at the agent's rate.
    pub fn agent_frame_samples(&self) -> usize {
        (self.agent_rate as usize * self.ptime_ms as usize) / 1000
    }
}

/// The PCM rate a codec decodes to natively.
pub fn natural_rate(codec: Codec) -> u32 {
    match codec {
        Codec::Pcmu | Codec::Pcma => 8000,
        Codec::G722 => 16000,
        Codec::Opus => 48000,
    }
}

/// Codec state for both directions: decode and resample once on the way
/// in, resample and encode once on the way out.
struct Transcoder {
    decoder: Box<dyn AudioDecoder>,
    encoder: Box<dyn AudioEncoder>,
    /// Decoded caller PCM to the agent's rate; `None` when they match.
    rx_resample: Option<Resampler>,
    /// Agent PCM to the encoder's rate; `None` when they match.
    tx_resample: Option<Resampler>,
    /// Our concealment for codecs without their own (G.711, G.722); Opus
    /// conceals in its decoder.
    plc: Option<Concealer>,
}

impl Transcoder {
    fn new(p: &MediaParams) -> Result<Self, CodecError> {
        let kind = p.codec.kind();
        let mut cp = CodecParams::new(kind);
        cp.ptime_ms = p.ptime_ms;
        if kind == CodecKind::Opus {
            // Opus can run at the agent's rate itself: no resampler then.
            if [8000, 12000, 16000, 24000, 48000].contains(&p.agent_rate) {
                cp.opus_pcm_rate = p.agent_rate;
            }
            if let Some(f) = &p.codec_fmtp {
                cp.apply_remote_opus_fmtp(&OpusFmtp::parse(f));
            }
        }
        let decoder = codec::decoder(&cp)?;
        let encoder = codec::encoder(&cp)?;
        let resampler = |from: u32, to: u32| -> Result<Option<Resampler>, CodecError> {
            if from == to {
                Ok(None)
            } else {
                Resampler::new(from, to, 10).map(Some)
            }
        };
        let rx_resample = resampler(decoder.sample_rate(), p.agent_rate)?;
        let tx_resample = resampler(p.agent_rate, encoder.sample_rate())?;
        let plc = (kind != CodecKind::Opus).then(|| {
            let frame = decoder.sample_rate() as usize * p.ptime_ms as usize / 1000;
            Concealer::new(decoder.sample_rate(), frame)
        });
        Ok(Transcoder {
            decoder,
            encoder,
            rx_resample,
            tx_resample,
            plc,
        })
    }
}

/// Something the agent (or the log) must hear about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaEvent {
    /// Decoded caller audio, 16-bit PCM at the agent's rate.
    Audio(Vec<i16>),
    /// An RFC 4733 digit, reported once per event.
    Dtmf(char),
    /// RTP now goes to the address the caller's packets come from.
    Latched(SocketAddr),
    /// The caller started or stopped talking (route DSP with VAD).
    Turn(TurnEvent),
    /// Whether the frame just decoded was speech (route DSP with VAD), for
    /// decisions finer than a turn (a backchannel over the agent).
    Voice(bool),
    /// The first packet of an agent reply marked with
    /// [`Session::mark_reply`] went out this long after the mark's instant.
    ReplySent(std::time::Duration),
}

/// Per-call media counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct MediaStats {
    pub rx_packets: u64,
    /// Too short (< 12 bytes), not RTP version 2, bad padding or a bad
    /// telephone-event payload: dropped.
    pub rx_malformed: u64,
    /// Datagrams over [`MAX_DATAGRAM`] bytes on the RTP or RTCP socket:
    /// dropped.
    pub rx_oversized: u64,
    /// RTP/RTCP from an address that may not feed the call (see
    /// [`super::latch`]): dropped.
    pub rx_dropped_source: u64,
    /// RTP from the latched address with another SSRC, unsignalled: dropped.
    pub rx_dropped_ssrc: u64,
    pub rx_ignored: u64,
    pub rx_dtmf_digits: u64,
    /// Lost Opus frames rebuilt from the next packet's in-band FEC.
    pub rx_fec_frames: u64,
    pub tx_packets: u64,
    pub tx_underruns: u64,
    /// Live audio dropped to keep the echo delay bounded.
    pub tx_trimmed_ms: u64,
    /// Agent audio refused because the playout queue already held the
    /// agent's cap (a provider sending faster than real time for ever).
    pub tx_capped_ms: u64,
    /// Frames the codec or resampler refused (counted and dropped).
    pub codec_errors: u64,
    /// Opus DTX frames not sent (silence).
    pub tx_dtx_frames: u64,
    /// RFC 4733 telephone-event packets sent.
    pub tx_dtmf_packets: u64,
    pub rtcp_received: u64,
    pub rtcp_malformed: u64,
    pub rtcp_sent: u64,
}

/// An RFC 4733 event on its way out.
#[derive(Debug, Clone, Copy)]
struct DtmfSend {
    event: u8,
    /// RTP timestamp of the event's first packet; all its packets carry it.
    start_ts: u32,
    /// Timestamp units covered so far.
    duration: u32,
    /// End packets sent (three, for loss resilience, RFC 4733 section 2.5.1.4).
    ends: u8,
    /// Ticks of silence after the event before the next digit.
    gap: u8,
}

/// Tone length and the pause between digits.
const DTMF_TONE_MS: u32 = 100;
const DTMF_GAP_TICKS: u8 = 3;

/// The largest RTP/RTCP datagram taken (an Ethernet MTU's worth: 20 ms
/// of Opus at its top rate is 1,287 bytes, 150 ms of G.711 1,212); the
/// driver's receive buffers are larger so that bigger ones show as such.
pub const MAX_DATAGRAM: usize = 1500;
/// If the task was stalled longer than this, restart the clock instead of bursting.
const MAX_CATCH_UP: Duration = Duration::from_millis(100);

pub struct Session {
    params: MediaParams,
    ssrc: Ssrc,
    seq: SeqNo,
    timestamp: u32,
    marker_next: bool,
    /// Who may feed the call, and who does (symmetric RTP).
    latch: Latch,
    rtcp_latched: Option<SocketAddr>,
    rtcp: RtcpSession,
    /// Wall clock at `Instant` zero of this session, for NTP timestamps.
    wall_base: (Instant, SystemTime),
    playout: VecDeque<i16>,
    /// Agent samples refused by [`Session::handle_agent_audio_capped`].
    capped_samples: u64,
    /// Where in `playout` a reply starts, and when its first byte reached
    /// us (see `mark_reply`).
    reply_mark: Option<(usize, Instant)>,
    jitter: JitterBuffer,
    codec: Transcoder,
    /// Caller-side denoise/VAD/gain at the agent's rate, if the route asks.
    dsp: Option<(DspConfig, CallerDsp)>,
    /// RFC 4733 digits waiting to be sent, and the one being sent.
    dtmf_queue: VecDeque<u8>,
    dtmf_tx: Option<DtmfSend>,
    /// Playout ticks that are due but whose outbound frame has not been
    /// built yet: built in `poll_transmit`, after the agent has seen this
    /// tick's caller audio, so echo adds no extra tick of delay.
    due_ticks: u32,
    last_tick: Instant,
    next_send: Instant,
    sent_any: bool,
    /// Background sound mixed under the agent (looped), and its gain.
    ambient: Option<(Vec<i16>, usize, f32)>,
    transmit: VecDeque<Transmit>,
    events: VecDeque<MediaEvent>,
    dtmf: DtmfReceiver,
    stats: MediaStats,
    scratch: Vec<u8>,
    /// The call recording's tap, when the route records (`None`: no
    /// copy, no allocation).
    recording: Option<Box<RecordTap>>,
}

/// Most stereo frames kept for [`Session::poll_recording`] before the
/// oldest are dropped (a driver that stopped draining): 2 s at 20 ms.
const MAX_RECORDING_BACKLOG: usize = 100;

/// Pairs each tick's caller frame with the frame sent in the same tick.
struct RecordTap {
    /// Caller samples of ticks played but not yet paired (one frame per
    /// tick, silence when nothing was there to play).
    caller: Vec<i16>,
    /// Interleaved frames for the driver.
    ready: VecDeque<StereoFrame>,
    /// Frames dropped because the driver did not drain them.
    dropped: u64,
}

impl Session {
    /// `ssrc`, `seq` and `timestamp` are the random initial values RFC 3550
    /// asks for; the caller draws them (and reads the wall clock once) so
    /// this stays deterministic in tests.
    pub fn new(
        now: Instant,
        wall: SystemTime,
        params: MediaParams,
        ssrc: u32,
        seq: u16,
        timestamp: u32,
    ) -> Result<Self, CodecError> {
        let ptime = Duration::from_millis(params.ptime_ms as u64);
        let cname = format!("agentline-{ssrc:08x}");
        let jitter = JitterBuffer::new(jitter_config(&params));
        let codec = Transcoder::new(&params)?;
        let rtcp = RtcpSession::new(Ssrc(ssrc), cname, params.codec.clock_rate(), now);
        let latch = Latch::new(params.remote);
        Ok(Session {
            rtcp_latched: None,
            rtcp,
            wall_base: (now, wall),
            params,
            ssrc: Ssrc(ssrc),
            seq: SeqNo(seq),
            timestamp,
            marker_next: true,
            latch,
            playout: VecDeque::new(),
            capped_samples: 0,
            reply_mark: None,
            jitter,
            codec,
            dsp: None,
            dtmf_queue: VecDeque::new(),
            dtmf_tx: None,
            due_ticks: 0,
            last_tick: now,
            next_send: now + ptime,
            sent_any: false,
            ambient: None,
            transmit: VecDeque::new(),
            events: VecDeque::new(),
            dtmf: DtmfReceiver::default(),
            stats: MediaStats::default(),
            scratch: Vec::with_capacity(200),
            recording: None,
        })
    }

    pub fn params(&self) -> &MediaParams {
        &self.params
    }

    /// New negotiated parameters (re-INVITE/UPDATE: hold, resume, new
    /// address, codec change). Our SSRC, sequence and timestamp continue.
    /// On error (a codec we cannot build) nothing changes.
    pub fn update(&mut self, params: MediaParams) -> Result<(), CodecError> {
        let format_changed = params.codec != self.params.codec
            || params.ptime_ms != self.params.ptime_ms
            || params.agent_rate != self.params.agent_rate
            || params.codec_fmtp != self.params.codec_fmtp;
        if format_changed {
            self.codec = Transcoder::new(&params)?;
            if params.agent_rate != self.params.agent_rate {
                if let Some((cfg, _)) = &self.dsp {
                    // The DSP runs at the agent's rate; a rate it cannot
                    // take turns it off rather than failing the call.
                    self.dsp = CallerDsp::new(params.agent_rate, cfg.clone())
                        .ok()
                        .map(|d| (cfg.clone(), d));
                }
            }
        }
        if params.remote != self.params.remote {
            // The peer moved (or went on hold with c=0.0.0.0): forget where
            // its packets came from until new ones arrive.
            self.rtcp_latched = None;
        }
        // A signalled change: a new address latches over, a new SSRC from
        // the same one is taken for a while.
        self.latch.signalled(params.remote);
        if format_changed {
            // Queued audio was for the old format; start a new talk spurt
            // and a new jitter timeline.
            self.playout.clear();
            self.reply_mark = None;
            self.marker_next = true;
            self.jitter = JitterBuffer::new(jitter_config(&params));
            if let Some(tap) = &mut self.recording {
                tap.caller.clear();
            }
        }
        self.params = params;
        Ok(())
    }

    pub fn stats(&self) -> &MediaStats {
        &self.stats
    }

    /// Latching settings: the re-latch window and the signalling source.
    pub fn set_latch_policy(&mut self, policy: LatchPolicy) {
        self.latch.set_policy(policy);
    }

    /// Sources that sent to this port before our answer left (they cannot
    /// belong to this call): they never latch.
    pub fn refuse_sources(&mut self, sources: &[SocketAddr]) {
        self.latch.refuse(sources);
    }

    fn count_refusal(&mut self, from: SocketAddr, why: Refusal) {
        match why {
            Refusal::Source => self.stats.rx_dropped_source += 1,
            Refusal::Ssrc => self.stats.rx_dropped_ssrc += 1,
        }
        tracing::trace!(%from, ?why, "dropped RTP/RTCP");
    }

    /// Oversized datagrams are counted and dropped.
    fn oversized(&mut self, buf: &[u8]) -> bool {
        let big = buf.len() > MAX_DATAGRAM;
        if big {
            self.stats.rx_oversized += 1;
        }
        big
    }

    /// The checks that need no decryption, for a datagram still under SRTP
    /// (its header is clear): false when it is dropped (and counted), so
    /// that a stranger's packets are not even authenticated.
    pub fn screen(
        &mut self,
        now: Instant,
        from: SocketAddr,
        buf: &[u8],
        rtcp_socket: bool,
    ) -> bool {
        if self.oversized(buf) {
            return false;
        }
        let rtcp = rtcp_socket || (self.params.rtcp_mux && looks_like_rtcp(buf));
        let verdict = if rtcp {
            self.latch.check_rtcp(from, !rtcp_socket)
        } else {
            match RtpPacket::parse(buf) {
                Ok(p) => self.latch.check(now, from, p.ssrc),
                Err(_) => {
                    self.stats.rx_malformed += 1;
                    return false;
                }
            }
        };
        match verdict {
            Ok(()) => true,
            Err(why) => {
                self.count_refusal(from, why);
                false
            }
        }
    }

    /// Loss, jitter, round-trip time and MOS from RTP and RTCP so far.
    pub fn quality(&self) -> CallQuality {
        self.rtcp.quality()
    }

    fn ntp(&self, now: Instant) -> u64 {
        let wall = self.wall_base.1 + now.saturating_duration_since(self.wall_base.0);
        rtcp::ntp_from_system_time(wall)
    }

    fn rtcp_destination(&self) -> Option<SocketAddr> {
        if self.params.rtcp_mux {
            return self.remote();
        }
        self.rtcp_latched.or(self.params.remote_rtcp).or_else(|| {
            self.remote().map(|mut a| {
                a.set_port(a.port().wrapping_add(1));
                a
            })
        })
    }

    /// A datagram arrived on the RTCP socket (or RTCP muxed on the RTP one).
    pub fn handle_rtcp(&mut self, now: Instant, from: SocketAddr, buf: &[u8]) {
        if self.oversized(buf) {
            return;
        }
        if let Err(why) = self.latch.check_rtcp(from, self.params.rtcp_mux) {
            return self.count_refusal(from, why);
        }
        let ntp = self.ntp(now);
        match self.rtcp.handle_rtcp(now, ntp, buf) {
            Ok(()) => {
                self.stats.rtcp_received += 1;
                if !self.params.rtcp_mux {
                    self.rtcp_latched = Some(from);
                }
            }
            Err(e) => {
                self.stats.rtcp_malformed += 1;
                tracing::debug!(%from, error = %e, "dropped malformed RTCP");
            }
        }
    }

    /// An RTCP BYE to send as the call ends.
    pub fn rtcp_bye(&mut self) -> Option<Transmit> {
        let to = self.rtcp_destination()?;
        Some(Transmit {
            socket: self.rtcp_socket(),
            to,
            bytes: self.rtcp.bye(),
        })
    }

    fn rtcp_socket(&self) -> Socket {
        if self.params.rtcp_mux {
            Socket::Rtp
        } else {
            Socket::Rtcp
        }
    }

    /// Where outgoing RTP goes now: the latched source, else the SDP address.
    pub fn remote(&self) -> Option<SocketAddr> {
        self.latch.latched().or(self.params.remote)
    }

    /// A datagram arrived on the RTP socket.
    pub fn handle_rtp(&mut self, now: Instant, from: SocketAddr, buf: &[u8]) {
        if self.oversized(buf) {
            return;
        }
        if looks_like_rtcp(buf) {
            if self.params.rtcp_mux {
                self.handle_rtcp(now, from, buf);
            } else {
                self.stats.rx_ignored += 1;
            }
            return;
        }
        let pkt = match RtpPacket::parse(buf) {
            Ok(p) => p,
            Err(e) => {
                self.stats.rx_malformed += 1;
                tracing::debug!(%from, error = %e, "dropped malformed RTP");
                return;
            }
        };
        if let Err(why) = self.latch.check(now, from, pkt.ssrc) {
            return self.count_refusal(from, why);
        }
        let known_pt =
            pkt.payload_type.0 == self.params.pt || Some(pkt.payload_type.0) == self.params.te_pt;
        if !known_pt {
            self.stats.rx_ignored += 1;
            return;
        }
        self.stats.rx_packets += 1;
        self.rtcp
            .on_rtp_received(now, pkt.ssrc, pkt.seq, pkt.timestamp);
        if let Some(addr) = self.latch.accept(now, from, pkt.ssrc) {
            self.events.push_back(MediaEvent::Latched(addr));
        }
        if !self.params.direction.receives() {
            return;
        }
        if Some(pkt.payload_type.0) == self.params.te_pt {
            match self.dtmf.handle(pkt.seq.0, pkt.timestamp, pkt.payload) {
                Ok(Some(d)) => {
                    self.stats.rx_dtmf_digits += 1;
                    self.events.push_back(MediaEvent::Dtmf(d));
                }
                Ok(None) => {}
                Err(_) => self.stats.rx_malformed += 1,
            }
            return;
        }
        // Audio waits in the jitter buffer; the playout clock takes it out.
        let _ = self.jitter.push(
            now,
            pkt.ssrc,
            pkt.seq,
            pkt.timestamp,
            pkt.marker,
            pkt.payload,
        );
    }

    /// Turns on caller-side DSP (denoise, VAD, gain) at the agent's rate.
    /// Mixes `pcm` (at the agent's rate, looped) under everything we send,
    /// at `gain` (0.0-1.0); RTP then flows continuously.
    pub fn set_ambient(&mut self, pcm: Vec<i16>, gain: f32) {
        self.ambient = (!pcm.is_empty()).then_some((pcm, 0, gain.clamp(0.0, 1.0)));
    }

    pub fn set_dsp(&mut self, cfg: DspConfig) -> Result<(), super::dsp::DspError> {
        if !(cfg.denoise || cfg.vad || cfg.agc) {
            self.dsp = None;
            return Ok(());
        }
        let dsp = CallerDsp::new(self.params.agent_rate, cfg.clone())?;
        self.dsp = Some((cfg, dsp));
        Ok(())
    }

    /// Queues digits to send as RFC 4733 telephone-events (0-9 * # A-D).
    /// Returns false, sending nothing, if the peer did not negotiate
    /// telephone-event or a character is not a DTMF digit.
    pub fn send_dtmf(&mut self, digits: &str) -> bool {
        if self.params.te_pt.is_none() {
            return false;
        }
        let mut codes = Vec::new();
        for c in digits.chars() {
            match "0123456789*#ABCD".find(c.to_ascii_uppercase()) {
                Some(i) => codes.push(i as u8),
                None => return false,
            }
        }
        self.dtmf_queue.extend(codes);
        true
    }

    /// One telephone-event packet for this tick if a digit is being sent;
    /// `None` lets the tick carry audio.
    fn next_dtmf_payload(&mut self, ts_now: u32, step: u32) -> Option<(u32, bool, [u8; 4])> {
        if let Some(cur) = &mut self.dtmf_tx {
            if cur.ends >= 3 {
                if cur.gap == 0 {
                    self.dtmf_tx = None;
                } else {
                    cur.gap -= 1;
                    return None;
                }
            }
        }
        if self.dtmf_tx.is_none() {
            let event = self.dtmf_queue.pop_front()?;
            self.dtmf_tx = Some(DtmfSend {
                event,
                start_ts: ts_now,
                duration: 0,
                ends: 0,
                gap: DTMF_GAP_TICKS,
            });
        }
        let cur = self.dtmf_tx.as_mut()?;
        let first = cur.duration == 0;
        let tone = self.params.codec.clock_rate() * DTMF_TONE_MS / 1000;
        if cur.duration < tone {
            cur.duration = (cur.duration + step).min(u16::MAX as u32);
        }
        let end = cur.duration >= tone;
        if end {
            cur.ends += 1;
        }
        let d = (cur.duration as u16).to_be_bytes();
        // Volume 10 (-10 dBm0), the usual value.
        let flags = if end { 0x80 | 10 } else { 10 };
        Some((cur.start_ts, first, [cur.event, flags, d[0], d[1]]))
    }

    /// Whether the VAD hears the caller talking now.
    pub fn caller_speaking(&self) -> bool {
        self.dsp.as_ref().is_some_and(|(_, d)| d.speaking())
    }

    pub fn jitter_stats(&self) -> JitterStats {
        self.jitter.stats()
    }

    /// One caller frame per tick out of the jitter buffer, decoded (or
    /// concealed) and resampled to the agent's rate; the recording gets
    /// silence for a tick without one.
    fn play_caller_frame(&mut self, now: Instant) {
        if !self.decode_caller_frame(now) {
            let n = self.params.agent_frame_samples();
            if let Some(tap) = &mut self.recording {
                tap.caller.resize(tap.caller.len() + n, 0);
            }
        }
    }

    /// [`Self::play_caller_frame`]'s work; false when the tick has no audio.
    fn decode_caller_frame(&mut self, now: Instant) -> bool {
        let mut pcm = Vec::new();
        let ok = match self.jitter.pop(now) {
            Playout::Frame { payload, .. } => {
                let ok = self.codec.decoder.decode(&payload, &mut pcm).is_ok();
                if let Some(plc) = &mut self.codec.plc {
                    if ok && pcm.len() == plc.frame_len() {
                        plc.good_frame(&mut pcm);
                    }
                }
                ok
            }
            Playout::Conceal { .. } => match &mut self.codec.plc {
                Some(plc) => {
                    pcm = plc.conceal();
                    true
                }
                None => {
                    // Opus: rebuild the lost frame from the next packet's
                    // in-band FEC when it is already buffered, else PLC.
                    let next = self.jitter.peek_next().map(<[u8]>::to_vec);
                    if next.is_some() {
                        self.stats.rx_fec_frames += 1;
                    }
                    self.codec
                        .decoder
                        .conceal(next.as_deref(), &mut pcm)
                        .is_ok()
                }
            },
            Playout::Empty => return false,
        };
        if !ok {
            self.stats.codec_errors += 1;
            return false;
        }
        if let Some(r) = &mut self.codec.rx_resample {
            let mut out = Vec::with_capacity(pcm.len());
            if r.process(&pcm, &mut out).is_err() {
                self.stats.codec_errors += 1;
                return false;
            }
            pcm = out;
        }
        if let Some(tap) = &mut self.recording {
            // What the caller said, before our DSP changes it.
            tap.caller.extend_from_slice(&pcm);
        }
        if let Some((cfg, dsp)) = &mut self.dsp {
            let n = dsp.frame_len();
            let mut voiced = false;
            for chunk in pcm.chunks_mut(n) {
                if chunk.len() < n {
                    break;
                }
                let o = dsp.process(chunk);
                voiced |= o.voiced;
                if let Some(ev) = o.event {
                    self.events.push_back(MediaEvent::Turn(ev));
                }
            }
            if cfg.vad {
                self.events.push_back(MediaEvent::Voice(voiced));
            }
        }
        self.events.push_back(MediaEvent::Audio(pcm));
        true
    }

    /// Agent audio (16-bit PCM at the codec rate), in bursts of any size.
    pub fn handle_agent_audio(&mut self, pcm: &[i16]) {
        self.playout.extend(pcm.iter().copied());
    }

    /// Agent audio from a source that may send faster than real time for
    /// ever (a remote provider): at most `cap_ms` is queued, what would go
    /// past it is dropped (the newest audio: what is queued plays
    /// unchanged) and counted in `tx_capped_ms`. Returns the samples
    /// dropped.
    pub fn handle_agent_audio_capped(&mut self, pcm: &[i16], cap_ms: u32) -> usize {
        let rate = self.params.agent_rate.max(1) as usize;
        let cap = rate * cap_ms as usize / 1000;
        let room = cap.saturating_sub(self.playout.len());
        let take = pcm.len().min(room);
        self.playout.extend(pcm[..take].iter().copied());
        let dropped = pcm.len() - take;
        if dropped > 0 {
            self.capped_samples += dropped as u64;
            self.stats.tx_capped_ms = self.capped_samples * 1000 / rate as u64;
        }
        dropped
    }

    /// The agent audio queued next starts a reply whose first byte came
    /// from the provider at `at`: its first packet reports
    /// [`MediaEvent::ReplySent`] (agentline's own share on the way out).
    pub fn mark_reply(&mut self, at: Instant) {
        self.reply_mark = Some((self.playout.len(), at));
    }

    /// `n` queued samples leave; `Some(mark)` when the reply's first one
    /// is among them.
    fn take_mark(&mut self, n: usize) -> Option<Instant> {
        let (off, at) = self.reply_mark?;
        if off < n {
            self.reply_mark = None;
            Some(at)
        } else {
            self.reply_mark = Some((off - n, at));
            None
        }
    }

    /// Drops all queued agent audio at once (barge-in).
    pub fn clear_playout(&mut self) {
        self.reply_mark = None;
        self.playout.clear();
    }

    /// Bounds the queueing delay of live audio (echo): when more than
    /// `max_ms` is queued, the oldest audio is dropped down to one frame.
    /// The hysteresis lets normal arrival jitter through untouched and only
    /// acts when the caller's clock runs ahead of ours.
    pub fn trim_playout(&mut self, max_ms: u32) {
        let rate = self.params.agent_rate as usize;
        let max = rate * max_ms as usize / 1000;
        if self.playout.len() > max {
            let keep = self.params.agent_frame_samples();
            let excess = self.playout.len() - keep;
            let _ = self.take_mark(excess);
            self.playout.drain(..excess);
            self.stats.tx_trimmed_ms += (excess * 1000 / rate) as u64;
        }
    }

    pub fn queued_ms(&self) -> u64 {
        self.playout.len() as u64 * 1000 / self.params.agent_rate.max(1) as u64
    }

    pub fn next_timeout(&self) -> Instant {
        self.next_send.min(self.rtcp.next_timeout())
    }

    /// Runs the playout clock: one frame per ptime, on a steady schedule.
    pub fn handle_timeout(&mut self, now: Instant) {
        let ptime = Duration::from_millis(self.params.ptime_ms as u64);
        if now.saturating_duration_since(self.next_send) > MAX_CATCH_UP {
            self.next_send = now;
        }
        self.last_tick = now;
        while now >= self.next_send {
            self.next_send += ptime;
            self.play_caller_frame(now);
            self.due_ticks += 1;
        }
        if now >= self.rtcp.next_timeout() {
            let ntp = self.ntp(now);
            if let Some(report) = self.rtcp.handle_timeout(now, ntp) {
                if let Some(to) = self.rtcp_destination() {
                    self.stats.rtcp_sent += 1;
                    self.transmit.push_back(Transmit {
                        socket: self.rtcp_socket(),
                        to,
                        bytes: report,
                    });
                }
            }
        }
    }

    fn send_frame(&mut self, now: Instant) {
        let n = self.params.agent_frame_samples();
        let ts = self.timestamp;
        let step = self.codec.encoder.rtp_timestamp_increment();
        self.timestamp = self.timestamp.wrapping_add(step);
        if let (Some(te), Some(to)) = (self.params.te_pt, self.remote()) {
            if let Some((event_ts, first, payload)) = self.next_dtmf_payload(ts, step) {
                // The tone replaces this tick's audio; drop that audio so
                // the queue keeps its timing.
                let drop = n.min(self.playout.len());
                let _ = self.take_mark(drop);
                self.playout.drain(..drop);
                self.record_tick(&[]);
                if self.params.direction.sends() {
                    self.push_rtp(now, to, te, first, event_ts, &payload);
                    self.stats.tx_dtmf_packets += 1;
                }
                self.marker_next = true;
                return;
            }
        }
        if self.playout.is_empty() {
            if self.sent_any {
                self.stats.tx_underruns += 1;
            }
            if !self.params.send_silence && self.ambient.is_none() {
                // A gap: the next packet starts a talk spurt (RFC 3551 section 4.1).
                self.marker_next = true;
                self.record_tick(&[]);
                return;
            }
        }
        let take = n.min(self.playout.len());
        let reply = self.take_mark(take);
        let mut frame: Vec<i16> = self.playout.drain(..take).collect();
        frame.resize(n, 0);
        if let Some((amb, pos, gain)) = &mut self.ambient {
            for s in frame.iter_mut() {
                let a = f32::from(amb[*pos]) * *gain;
                *s = (f32::from(*s) + a).clamp(-32768.0, 32767.0) as i16;
                *pos = (*pos + 1) % amb.len();
            }
        }
        self.record_tick(&frame);
        let (Some(to), true) = (self.remote(), self.params.direction.sends()) else {
            return;
        };
        if let Some(r) = &mut self.codec.tx_resample {
            let mut out = Vec::with_capacity(r.output_block() * 2);
            if r.process(&frame, &mut out).is_err() {
                self.stats.codec_errors += 1;
                return;
            }
            frame = out;
        }
        let mut payload = Vec::with_capacity(200);
        if self.codec.encoder.encode(&frame, &mut payload).is_err() {
            self.stats.codec_errors += 1;
            return;
        }
        if self.codec.encoder.last_was_dtx() {
            // Opus DTX: silence need not be sent; the next packet starts a spurt.
            self.stats.tx_dtx_frames += 1;
            self.marker_next = true;
            return;
        }
        let marker = self.marker_next;
        self.push_rtp(now, to, self.params.pt, marker, ts, &payload);
        self.marker_next = false;
        self.sent_any = true;
        self.stats.tx_packets += 1;
        if let Some(at) = reply {
            self.events
                .push_back(MediaEvent::ReplySent(now.saturating_duration_since(at)));
        }
    }

    fn push_rtp(
        &mut self,
        now: Instant,
        to: SocketAddr,
        pt: u8,
        marker: bool,
        ts: u32,
        payload: &[u8],
    ) {
        let pkt = RtpPacket {
            marker,
            payload_type: PayloadType(pt),
            seq: self.seq,
            timestamp: ts,
            ssrc: self.ssrc,
            payload,
        };
        pkt.write(&mut self.scratch);
        self.rtcp.on_rtp_sent(now, ts, payload.len());
        self.transmit.push_back(Transmit {
            socket: Socket::Rtp,
            to,
            bytes: self.scratch.clone(),
        });
        self.seq = self.seq.next();
    }

    /// The next datagram to send. Outbound frames for due ticks are built
    /// here, so agent audio queued since `handle_timeout` goes out at once.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        if let Some(t) = self.transmit.pop_front() {
            return Some(t);
        }
        while self.due_ticks > 0 {
            self.due_ticks -= 1;
            self.send_frame(self.last_tick);
            if let Some(t) = self.transmit.pop_front() {
                return Some(t);
            }
        }
        None
    }

    pub fn poll_event(&mut self) -> Option<MediaEvent> {
        self.events.pop_front()
    }

    /// Starts (or stops) the recording tap: from the next tick on, each
    /// tick yields one [`StereoFrame`] from [`Session::poll_recording`],
    /// the caller's decoded frame on the left and the frame we sent on the
    /// right, silence where there was none.
    pub fn set_recording(&mut self, on: bool) {
        self.recording = on.then(|| {
            Box::new(RecordTap {
                caller: Vec::with_capacity(self.params.agent_frame_samples() * 2),
                ready: VecDeque::new(),
                dropped: 0,
            })
        });
    }

    /// The next recorded tick, if recording.
    pub fn poll_recording(&mut self) -> Option<StereoFrame> {
        self.recording.as_mut()?.ready.pop_front()
    }

    /// Recorded frames dropped because nobody drained them.
    pub fn recording_backlog_dropped(&self) -> u64 {
        self.recording.as_ref().map_or(0, |t| t.dropped)
    }

    /// Pairs the tick's agent frame (`agent`, at the agent's rate; empty
    /// for silence) with the caller frame of the same tick.
    fn record_tick(&mut self, agent: &[i16]) {
        let Some(tap) = &mut self.recording else {
            return;
        };
        let n = self.params.agent_frame_samples();
        let take = n.min(tap.caller.len());
        let mut samples = Vec::with_capacity(n * 2);
        recording::interleave(&tap.caller[..take], agent, n, &mut samples);
        tap.caller.drain(..take);
        // A resampler that ran ahead must not shift the channels apart.
        if tap.caller.len() > n * 2 {
            let excess = tap.caller.len() - n;
            tap.caller.drain(..excess);
        }
        if tap.ready.len() >= MAX_RECORDING_BACKLOG {
            tap.ready.pop_front();
            tap.dropped += 1;
        }
        tap.ready.push_back(StereoFrame {
            rate: self.params.agent_rate,
            samples,
        });
    }
}

fn jitter_config(p: &MediaParams) -> JitterConfig {
    JitterConfig {
        min_delay_ms: p.jitter_min_ms,
        max_delay_ms: p.jitter_max_ms,
        clock_rate: p.codec.clock_rate(),
        frame_ms: p.ptime_ms,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::media::g711;

    fn params() -> MediaParams {
        MediaParams {
            send_silence: false,
            codec: Codec::Pcmu,
            pt: 0,
            te_pt: Some(101),
            ptime_ms: 20,
            remote: Some("127.0.0.1:4000".parse().unwrap()),
            remote_rtcp: None,
            rtcp_mux: false,
            direction: Direction::SendRecv,
            jitter_min_ms: 20,
            jitter_max_ms: 200,
            agent_rate: 8000,
            codec_fmtp: None,
        }
    }

    fn session(t0: Instant, p: MediaParams, seq: u16, ts: u32) -> Session {
        Session::new(t0, SystemTime::UNIX_EPOCH, p, 1, seq, ts).unwrap()
    }

    fn rtp(pt: u8, seq: u16, ts: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        RtpPacket {
            marker: false,
            payload_type: PayloadType(pt),
            seq: SeqNo(seq),
            timestamp: ts,
            ssrc: Ssrc(7),
            payload,
        }
        .write(&mut out);
        out
    }

    /// RTP packets sent (RTCP reports filtered out).
    fn drain(s: &mut Session) -> Vec<(SocketAddr, Vec<u8>)> {
        std::iter::from_fn(|| s.poll_transmit())
            .filter(|t| t.socket == Socket::Rtp)
            .map(|t| (t.to, t.bytes))
            .collect()
    }

    #[test]
    fn recording_pairs_each_ticks_caller_frame_with_the_frame_sent() {
        let t0 = Instant::now();
        let mut s = session(t0, params(), 100, 0);
        // Off by default: no frames, nothing kept.
        s.handle_timeout(t0 + Duration::from_millis(20));
        drain(&mut s);
        assert_eq!(s.poll_recording(), None);
        s.set_recording(true);
        let from: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        // The caller sends a ramp per packet (value k*100 in packet k); the
        // agent speaks a constant 3000 for three frames, then nothing.
        s.handle_agent_audio(&[3000i16; 160 * 3]);
        let mut frames = Vec::new();
        for k in 0..10u16 {
            let now = t0 + Duration::from_millis(40 + 20 * k as u64);
            if k < 6 {
                let level = i16::try_from(k * 100 + 1000).unwrap();
                let payload: Vec<u8> = (0..160).map(|_| g711::linear_to_ulaw(level)).collect();
                s.handle_rtp(now, from, &rtp(0, k, 160 * k as u32, &payload));
            }
            s.handle_timeout(now);
            while s.poll_event().is_some() {}
            drain(&mut s);
            while let Some(f) = s.poll_recording() {
                frames.push(f);
            }
        }
        assert_eq!(frames.len(), 10, "one stereo frame per tick");
        assert!(frames
            .iter()
            .all(|f| f.rate == 8000 && f.samples.len() == 320));
        let left: Vec<i16> = frames.iter().map(|f| f.samples[0]).collect();
        let right: Vec<i16> = frames.iter().map(|f| f.samples[1]).collect();
        assert_eq!(&right[..3], &[3000, 3000, 3000], "agent frames as sent");
        assert!(
            right[3..].iter().all(|&r| r == 0),
            "silence after: {right:?}"
        );
        // The caller's frames come out of the jitter buffer in order, with
        // silence before the first one and concealment fading after the
        // last; every frame is whole (one level across the tick).
        let played: Vec<i16> = left.iter().copied().filter(|&l| l != 0).collect();
        assert!(played.len() >= 6, "{left:?}");
        for w in played.windows(2).take(5) {
            assert!(w[1] > w[0], "caller frames in order: {left:?}");
        }
        let decoded: Vec<&StereoFrame> = frames.iter().filter(|f| f.samples[0] != 0).collect();
        for f in decoded.iter().take(6) {
            let l: Vec<i16> = f.samples.iter().step_by(2).copied().collect();
            assert!(l.iter().all(|&x| x == l[0]), "caller frame whole: {l:?}");
        }
        for f in &frames {
            let r: Vec<i16> = f.samples.iter().skip(1).step_by(2).copied().collect();
            assert!(r.iter().all(|&x| x == r[0]), "agent frame whole");
        }
        assert_eq!(s.recording_backlog_dropped(), 0);
    }

    #[test]
    fn an_undrained_recording_keeps_a_bounded_backlog() {
        let t0 = Instant::now();
        let mut s = session(t0, params(), 100, 0);
        s.set_recording(true);
        for k in 1..=(MAX_RECORDING_BACKLOG as u64 + 30) {
            s.handle_timeout(t0 + Duration::from_millis(20 * k));
            drain(&mut s);
        }
        assert_eq!(s.recording_backlog_dropped(), 30);
        assert_eq!(
            std::iter::from_fn(|| s.poll_recording()).count(),
            MAX_RECORDING_BACKLOG
        );
    }

    #[test]
    fn bursty_agent_audio_is_paced_at_one_frame_per_ptime() {
        let t0 = Instant::now();
        let mut s = session(t0, params(), 65534, 1000);
        s.handle_agent_audio(&vec![1000i16; 160 * 5]);
        let mut sent = Vec::new();
        for ms in (0..=200).step_by(5) {
            s.handle_timeout(t0 + Duration::from_millis(ms));
            for (_, b) in drain(&mut s) {
                sent.push((ms, b));
            }
        }
        assert_eq!(sent.len(), 5, "five frames, no more");
        let pkts: Vec<_> = sent
            .iter()
            .map(|(_, b)| RtpPacket::parse(b).unwrap())
            .map(|p| (p.seq.0, p.timestamp, p.marker, p.payload.len()))
            .collect();
        assert_eq!(
            pkts,
            vec![
                (65534, 1000, true, 160),
                (65535, 1160, false, 160),
                (0, 1320, false, 160),
                (1, 1480, false, 160),
                (2, 1640, false, 160)
            ]
        );
        let times: Vec<u64> = sent.iter().map(|(ms, _)| *ms).collect();
        assert_eq!(times, vec![20, 40, 60, 80, 100], "one packet every 20 ms");
        assert!(
            s.stats().tx_underruns > 0,
            "gaps after the burst are counted"
        );
    }

    /// A 10-minute call on a steady clock (1 minute for Opus, whose encoder
    /// costs ~0.3 ms a frame): every packet's timestamp is exactly one frame
    /// after the previous (160 for G.711/G.722, 960 for Opus), none is
    /// skipped or doubled, and the last left exactly on its tick.
    #[test]
    fn ten_minute_call_has_no_timestamp_drift() {
        for (codec, rate, step, ticks) in [
            (Codec::Pcmu, 8000, 160u32, 30_000u32),
            (Codec::G722, 16000, 160, 30_000),
            (Codec::Opus, 48000, 960, 3_000),
        ] {
            let t0 = Instant::now();
            let mut p = params();
            p.codec = codec;
            p.pt = 96;
            p.agent_rate = rate;
            let mut s = session(t0, p, 0, 7);
            let frame = vec![1000i16; rate as usize / 50];
            let mut last: Option<(u16, u32)> = None;
            let mut count = 0u32;
            for tick in 1..=ticks as u64 {
                // Agent audio arrives in bursts of 5 frames every 100 ms.
                if tick % 5 == 1 {
                    for _ in 0..5 {
                        s.handle_agent_audio(&frame);
                    }
                }
                s.handle_timeout(t0 + Duration::from_millis(20 * tick));
                for (_, b) in drain(&mut s) {
                    let pkt = RtpPacket::parse(&b).unwrap();
                    if let Some((seq, ts)) = last {
                        assert_eq!(pkt.seq.0, seq.wrapping_add(1), "{codec:?}");
                        assert_eq!(
                            pkt.timestamp,
                            ts.wrapping_add(step),
                            "{codec:?} at tick {tick}"
                        );
                    }
                    last = Some((pkt.seq.0, pkt.timestamp));
                    count += 1;
                }
            }
            assert_eq!(count, ticks, "{codec:?}: one packet per tick");
            assert_eq!(last.unwrap().1, 7 + step * (ticks - 1), "{codec:?}");
            assert_eq!(s.stats().tx_underruns, 0, "{codec:?}");
        }
    }

    #[test]
    fn timestamps_advance_through_silence_and_marker_starts_a_spurt() {
        let t0 = Instant::now();
        let mut s = session(t0, params(), 0, 0);
        s.handle_agent_audio(&[5; 160]);
        s.handle_timeout(t0 + Duration::from_millis(20));
        let mut p: Vec<_> = drain(&mut s);
        s.handle_timeout(t0 + Duration::from_millis(40)); // underrun
        p.extend(drain(&mut s));
        s.handle_agent_audio(&[5; 160]);
        s.handle_timeout(t0 + Duration::from_millis(60));
        p.extend(drain(&mut s));
        let a = RtpPacket::parse(&p[0].1).unwrap();
        let b = RtpPacket::parse(&p[1].1).unwrap();
        assert_eq!(b.timestamp.wrapping_sub(a.timestamp), 320);
        assert_eq!(b.seq.0, a.seq.0 + 1, "seq counts packets, not time");
        assert!(b.marker, "first packet after a gap has the marker bit");
    }

    #[test]
    fn symmetric_rtp_sends_to_where_packets_come_from() {
        let t0 = Instant::now();
        // Behind NAT: the SDP names a private address, the INVITE came from
        // the NAT's public one.
        let mut p = params();
        p.remote = Some("192.168.1.20:4000".parse().unwrap());
        let mut s = session(t0, p, 0, 0);
        s.set_latch_policy(LatchPolicy {
            signal_ip: Some("198.51.100.7".parse().unwrap()),
            ..Default::default()
        });
        let nat: SocketAddr = "198.51.100.7:31000".parse().unwrap();
        s.handle_rtp(t0, nat, &rtp(0, 1, 0, &[0xff; 160]));
        assert_eq!(s.remote(), Some(nat));
        // A stray packet from elsewhere does not steal the stream...
        let other: SocketAddr = "203.0.113.9:4000".parse().unwrap();
        s.handle_rtp(
            t0 + Duration::from_millis(20),
            other,
            &rtp(0, 2, 160, &[0xff; 160]),
        );
        assert_eq!(s.remote(), Some(nat));
        // ...nor after the caller has been silent: only the caller's IP
        // may take over (NAT rebinding), after the re-latch window.
        s.handle_rtp(
            t0 + Duration::from_secs(5),
            other,
            &rtp(0, 3, 320, &[0xff; 160]),
        );
        assert_eq!(s.remote(), Some(nat));
        assert_eq!(s.stats().rx_dropped_source, 2);
        let rebound: SocketAddr = "198.51.100.7:31002".parse().unwrap();
        s.handle_rtp(
            t0 + Duration::from_secs(5),
            rebound,
            &rtp(0, 4, 480, &[0xff; 160]),
        );
        assert_eq!(s.remote(), Some(rebound));
        assert_eq!(s.stats().rx_packets, 2);
    }

    /// The caller's stream (SSRC 7 from the SDP address) with an attacker's
    /// packets mixed in: other sources, another SSRC from the caller's
    /// address, short and oversized datagrams. All are counted and
    /// dropped; the agent hears exactly the caller's frames, in order,
    /// and our RTP keeps going to the caller.
    #[test]
    fn injected_packets_are_counted_and_never_reach_the_agent() {
        let t0 = Instant::now();
        let mut s = session(t0, params(), 0, 0);
        let caller: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let attacker: SocketAddr = "127.0.0.2:5000".parse().unwrap();
        let neighbour: SocketAddr = "127.0.0.1:4100".parse().unwrap();
        let level = |i: u16| g711::linear_to_ulaw(100 * (i as i16 + 1));
        let mut heard = Vec::new();
        for i in 0..100u16 {
            let now = t0 + Duration::from_millis(20 * i as u64);
            let ts = i as u32 * 160;
            if i != 0 {
                // Before the caller's first packet too, from i = 1 on.
                s.handle_rtp(now, attacker, &rtp(0, i, ts, &[0x00; 160]));
            }
            s.handle_rtp(now, caller, &rtp(0, i, ts, &[level(i); 160]));
            s.handle_rtp(now, neighbour, &rtp(0, i, ts, &[0x00; 160]));
            let mut other_ssrc = rtp(0, i.wrapping_add(500), ts, &[0x00; 160]);
            other_ssrc[8..12].copy_from_slice(&99u32.to_be_bytes());
            s.handle_rtp(now, caller, &other_ssrc);
            s.handle_rtp(now, caller, &vec![0x80; (i as usize % 11) + 1]);
            s.handle_rtp(now, caller, &rtp(0, i, ts, &[level(i); MAX_DATAGRAM]));
            s.handle_rtcp(now, attacker, &[0x80, 201, 0, 1, 0, 0, 0, 9]);
            s.handle_agent_audio(&[1000; 160]);
            s.handle_timeout(now);
            while let Some(e) = s.poll_event() {
                if let MediaEvent::Audio(pcm) = e {
                    heard.push(pcm[0]);
                }
            }
            for (to, _) in drain(&mut s) {
                assert_eq!(to, caller, "our RTP goes to the caller only");
            }
        }
        let st = s.stats().clone();
        assert_eq!(st.rx_packets, 100, "{st:?}");
        assert_eq!(st.rx_dropped_source, 99 + 100 + 100, "{st:?}");
        assert_eq!(st.rx_dropped_ssrc, 100, "{st:?}");
        assert_eq!(st.rx_malformed, 100, "{st:?}");
        assert_eq!(st.rx_oversized, 100, "{st:?}");
        assert_eq!(st.rtcp_received, 0, "{st:?}");
        assert_eq!(s.jitter_stats().resets, 0, "{:?}", s.jitter_stats());
        let played: Vec<i16> = heard.into_iter().filter(|&v| v != 0).collect();
        let want: Vec<i16> = (0..played.len() as u16)
            .map(|i| g711::ulaw_to_linear(level(i)))
            .collect();
        assert!(played.len() >= 95, "{played:?}");
        assert_eq!(played, want, "the caller's frames, all and in order");
    }

    /// A re-INVITE (hold/resume) lets the phone's new SSRC in at once; its
    /// audio plays.
    #[test]
    fn a_new_ssrc_after_a_reinvite_is_taken() {
        let t0 = Instant::now();
        let mut s = session(t0, params(), 0, 0);
        let caller: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        s.handle_rtp(t0, caller, &rtp(0, 1, 0, &[0xff; 160]));
        let mut pkt = rtp(0, 900, 9000, &[0xff; 160]);
        pkt[8..12].copy_from_slice(&42u32.to_be_bytes());
        s.handle_rtp(t0 + Duration::from_millis(20), caller, &pkt);
        assert_eq!(s.stats().rx_dropped_ssrc, 1);
        s.update(params()).unwrap();
        s.handle_rtp(t0 + Duration::from_millis(40), caller, &pkt);
        assert_eq!(s.stats().rx_dropped_ssrc, 1);
        assert_eq!(s.stats().rx_packets, 2);
    }

    #[test]
    fn caller_audio_is_decoded_and_malformed_packets_are_counted() {
        let t0 = Instant::now();
        let mut s = session(t0, params(), 0, 0);
        let from: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        s.handle_rtp(t0, from, &[0x80, 0, 1]);
        s.handle_rtp(t0, from, &rtp(18, 1, 0, &[0; 20]));
        s.handle_rtp(t0, from, &rtp(0, 2, 0, &[0x80; 160]));
        assert_eq!(s.stats().rx_malformed, 1);
        assert_eq!(s.stats().rx_ignored, 1);
        let mut evs: Vec<_> = std::iter::from_fn(|| s.poll_event()).collect();
        assert_eq!(
            evs,
            vec![MediaEvent::Latched(from)],
            "audio waits for playout"
        );
        // The playout clock takes the frame out of the jitter buffer.
        for ms in (20..=100).step_by(20) {
            s.handle_timeout(t0 + Duration::from_millis(ms));
            evs.extend(std::iter::from_fn(|| s.poll_event()));
        }
        assert_eq!(evs[1], MediaEvent::Audio(vec![32124; 160]));
    }

    /// Caller packets arriving out of order and with one missing are played
    /// in order, with a concealed frame in the gap.
    #[test]
    fn reordered_caller_packets_play_in_order_and_loss_is_concealed() {
        let t0 = Instant::now();
        let mut s = session(t0, params(), 0, 0);
        let from: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        // Frames 0..6 with distinct levels; 3 is lost, 4 and 5 swapped.
        let level = |i: u16| g711::linear_to_ulaw(1000 * (i as i16 + 1));
        for (at, i) in [(0, 0u16), (20, 1), (40, 2), (80, 5), (81, 4), (100, 6)] {
            let ts = i as u32 * 160;
            s.handle_rtp(
                t0 + Duration::from_millis(at),
                from,
                &rtp(0, i, ts, &[level(i); 160]),
            );
        }
        let mut frames = Vec::new();
        for ms in (20..=300).step_by(20) {
            s.handle_timeout(t0 + Duration::from_millis(ms));
            while let Some(e) = s.poll_event() {
                if let MediaEvent::Audio(pcm) = e {
                    frames.push(pcm[80]);
                }
            }
        }
        let want = |i: u16| g711::ulaw_to_linear(level(i));
        let played: Vec<i16> = frames.iter().copied().filter(|&v| v != 0).collect();
        assert_eq!(played[..3], [want(0), want(1), want(2)]);
        assert!(played.contains(&want(4)) && played.contains(&want(5)));
        let p4 = played.iter().position(|&v| v == want(4));
        let p5 = played.iter().position(|&v| v == want(5));
        assert!(p4 < p5, "4 plays before 5: {played:?}");
        assert!(s.jitter_stats().lost >= 1, "{:?}", s.jitter_stats());
        assert!(s.jitter_stats().concealed >= 1, "{:?}", s.jitter_stats());
    }

    #[test]
    fn dtmf_digit_is_reported_once() {
        let t0 = Instant::now();
        let mut s = session(t0, params(), 0, 0);
        let from: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        for (i, p) in [
            [7u8, 10, 0, 160],
            [7, 0x8a, 1, 64],
            [7, 0x8a, 1, 64],
            [7, 0x8a, 1, 64],
        ]
        .iter()
        .enumerate()
        {
            s.handle_rtp(t0, from, &rtp(101, i as u16, 500, p));
        }
        let digits: Vec<_> = std::iter::from_fn(|| s.poll_event())
            .filter(|e| matches!(e, MediaEvent::Dtmf(_)))
            .collect();
        assert_eq!(digits, vec![MediaEvent::Dtmf('7')]);
    }

    #[test]
    fn dtmf_is_sent_as_rfc4733_events_with_three_end_packets() {
        let t0 = Instant::now();
        let mut s = session(t0, params(), 0, 1000);
        assert!(!s.send_dtmf("1x"), "not a digit: nothing queued");
        assert!(s.send_dtmf("1#"));
        let mut pkts = Vec::new();
        for tick in 1..=30u64 {
            s.handle_agent_audio(&[5; 160]);
            s.handle_timeout(t0 + Duration::from_millis(20 * tick));
            for (_, b) in drain(&mut s) {
                let p = RtpPacket::parse(&b).unwrap();
                pkts.push((p.payload_type.0, p.marker, p.timestamp, p.payload.to_vec()));
            }
        }
        let events: Vec<_> = pkts.iter().filter(|p| p.0 == 101).collect();
        let mut rx = crate::media::dtmf::DtmfReceiver::default();
        let mut heard = String::new();
        for (i, p) in pkts.iter().enumerate() {
            if p.0 == 101 {
                if let Some(d) = rx.handle(i as u16, p.2, &p.3).unwrap() {
                    heard.push(d);
                }
            }
        }
        assert_eq!(heard, "1#", "our own receiver decodes what we send");
        let first = events.first().unwrap();
        assert!(first.1, "marker on the first packet of an event");
        assert_eq!(first.3[0], 1);
        let ends: Vec<_> = events
            .iter()
            .filter(|p| p.3[0] == 1 && p.3[1] & 0x80 != 0)
            .collect();
        assert_eq!(ends.len(), 3, "three end packets");
        assert!(
            ends.iter()
                .all(|p| u16::from_be_bytes([p.3[2], p.3[3]]) == 800),
            "100 ms"
        );
        assert!(
            events
                .iter()
                .filter(|p| p.3[0] == 1)
                .all(|p| p.2 == first.2),
            "one timestamp per event"
        );
        assert!(
            pkts.iter().any(|p| p.0 == 0),
            "audio resumes after the digits"
        );
    }

    /// An Opus caller sending in-band FEC: a lost packet is rebuilt from the
    /// next one (counted), and the agent still gets one frame per tick.
    #[test]
    fn lost_opus_packet_is_rebuilt_from_fec_in_the_next() {
        let t0 = Instant::now();
        let mut p = params();
        p.codec = Codec::Opus;
        p.pt = 111;
        p.agent_rate = 48000;
        let mut s = session(t0, p, 0, 0);
        let mut cp = CodecParams::new(CodecKind::Opus);
        cp.opus_fec = true;
        let mut enc = codec::encoder(&cp).unwrap();
        let from: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let mut frames = 0;
        for i in 0..50u16 {
            let pcm: Vec<i16> = (0..960)
                .map(|n| ((n as f64 + i as f64 * 960.0) * 0.05).sin() * 8000.0)
                .map(|v| v as i16)
                .collect();
            let mut payload = Vec::new();
            enc.encode(&pcm, &mut payload).unwrap();
            let now = t0 + Duration::from_millis(20 * i as u64);
            if i != 20 {
                s.handle_rtp(now, from, &rtp(111, i, i as u32 * 960, &payload));
            }
            s.handle_timeout(now);
            while let Some(e) = s.poll_event() {
                if let MediaEvent::Audio(a) = e {
                    assert_eq!(a.len(), 960);
                    frames += 1;
                }
            }
        }
        assert_eq!(s.stats().rx_fec_frames, 1, "{:?}", s.stats());
        assert_eq!(s.jitter_stats().lost, 1);
        assert!(frames >= 45, "one frame per tick: {frames}");
    }

    #[test]
    fn clear_playout_drops_queued_audio_in_the_same_tick() {
        let t0 = Instant::now();
        let mut s = session(t0, params(), 0, 0);
        s.handle_agent_audio(&[9; 1600]);
        s.clear_playout();
        s.handle_timeout(t0 + Duration::from_millis(20));
        assert!(drain(&mut s).is_empty());
        assert_eq!(s.queued_ms(), 0);
    }

    #[test]
    fn capped_agent_audio_keeps_the_queue_bounded_and_counts_the_rest() {
        let t0 = Instant::now();
        let mut s = session(t0, params(), 0, 0);
        // 8 kHz: a 1 s cap holds 8000 samples.
        assert_eq!(s.handle_agent_audio_capped(&[1; 6000], 1000), 0);
        assert_eq!(s.handle_agent_audio_capped(&[2; 6000], 1000), 4000);
        assert_eq!(s.queued_ms(), 1000);
        assert_eq!(s.stats().tx_capped_ms, 500);
        // What was queued first plays first, unchanged.
        s.handle_timeout(t0 + Duration::from_millis(20));
        let _ = drain(&mut s);
        assert!(s.queued_ms() < 1000);
        // Room again: the next audio is taken up to the cap.
        let dropped = s.handle_agent_audio_capped(&[3; 400], 1000);
        assert!(dropped < 400, "{dropped}");
        assert_eq!(s.queued_ms(), 1000);
        s.clear_playout();
        assert_eq!(s.handle_agent_audio_capped(&[4; 800], 1000), 0);
    }

    #[test]
    fn hold_stops_sending_and_resume_restarts_with_continuous_numbers() {
        let t0 = Instant::now();
        let mut s = session(t0, params(), 100, 0);
        let mut at = |ms: u64| t0 + Duration::from_millis(ms);
        s.handle_agent_audio(&[3; 160]);
        s.handle_timeout(at(20));
        assert_eq!(drain(&mut s).len(), 1);
        let mut held = params();
        held.direction = Direction::RecvOnly; // caller sent sendonly
        s.update(held).unwrap();
        s.handle_agent_audio(&[3; 320]);
        s.handle_timeout(at(40));
        s.handle_timeout(at(60));
        assert!(drain(&mut s).is_empty(), "nothing is sent on hold");
        let mut moved = params();
        moved.remote = Some("127.0.0.1:5000".parse().unwrap());
        s.update(moved).unwrap();
        s.handle_agent_audio(&[3; 160]);
        s.handle_timeout(at(80));
        let sent = drain(&mut s);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].0.port(), 5000, "sent to the new address");
        let p = RtpPacket::parse(&sent[0].1).unwrap();
        assert_eq!(p.seq.0, 101, "sequence continues across the hold");
        assert_eq!(
            p.timestamp,
            3 * 160,
            "timestamp follows real time (4th tick)"
        );
        let _ = &mut at;
    }

    #[test]
    fn inactive_call_sends_nothing() {
        let t0 = Instant::now();
        let mut p = params();
        p.direction = Direction::Inactive;
        let mut s = session(t0, p, 0, 0);
        s.handle_agent_audio(&[9; 320]);
        s.handle_timeout(t0 + Duration::from_millis(40));
        assert!(drain(&mut s).is_empty());
    }

    #[test]
    fn rtcp_reports_go_to_the_rtcp_port_and_peer_reports_are_read() {
        let t0 = Instant::now();
        let mut s = session(t0, params(), 0, 0);
        let from: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let mut reports = Vec::new();
        for i in 0..400u32 {
            let now = t0 + Duration::from_millis(20 * i as u64);
            s.handle_rtp(now, from, &rtp(0, i as u16, i * 160, &[0xff; 160]));
            s.handle_agent_audio(&[0; 160]);
            s.handle_timeout(now);
            reports.extend(
                std::iter::from_fn(|| s.poll_transmit()).filter(|t| t.socket == Socket::Rtcp),
            );
        }
        assert!(!reports.is_empty(), "a report within 8 s");
        assert!(reports.iter().all(|t| t.to.port() == 4001), "RTP port + 1");
        let parsed = rtcp::parse_compound(&reports[0].bytes).unwrap();
        assert!(
            matches!(parsed[0], rtcp::RtcpPacket::SenderReport(_)),
            "we sent RTP: SR"
        );
        // A receiver report from the peer is parsed and counted; garbage is counted too.
        let rr = rtcp::write_compound(&[rtcp::RtcpPacket::ReceiverReport(rtcp::ReceiverReport {
            ssrc: Ssrc(7),
            reports: vec![],
        })]);
        s.handle_rtcp(t0, "127.0.0.1:4001".parse().unwrap(), &rr);
        s.handle_rtcp(t0, "127.0.0.1:4001".parse().unwrap(), &[1, 2, 3]);
        assert_eq!((s.stats().rtcp_received, s.stats().rtcp_malformed), (1, 1));
        assert_eq!(s.quality().packets_lost, 0);
    }
}
