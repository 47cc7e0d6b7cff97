//! Adaptive jitter buffer for one call's inbound RTP, sans-IO.
//!
//! It owns the playout timeline of the caller's audio: packets go in with
//! [`JitterBuffer::push`] in arrival order, the playout clock takes exactly
//! one frame per `frame_ms` with [`JitterBuffer::pop`]. It never reads a
//! clock (every call gets `now`) and never decodes (payloads are opaque).
//!
//! How the timeline works:
//! - Each packet's transit is `arrival - timestamp`. The minimum transit over
//!   the last 3-4 s (`base`) is the network's fastest path; a packet's
//!   *delay variation* is `transit - base`. A frame with timestamp `T` is due
//!   at `T + base + delay`, so `delay` is the added latency and every packet
//!   whose delay variation is below it arrives in time.
//! - Target delay = the 97th percentile of recent delay variation, clamped
//!   to `[min_delay_ms, max_delay_ms]`. The percentile comes from a histogram
//!   whose weights halve every ~70 packets: a new jitter level reaches the
//!   target within a few packets, a vanished one leaves it after ~7 s. Why
//!   not `k * J` (RFC 3550): J averages `|D|` between consecutive packets, so
//!   it misses rare spikes, overshoots uniform jitter, and with its 1/16 gain
//!   wanders +-15 %; a rise-at-once target then rides J's peaks. In the
//!   simulator (60 ms uniform jitter, 5 % loss) `max(P97, 3 J)` settled at
//!   83 ms (86 ms mean added delay), P97 alone at 60 ms (67 ms), with no
//!   late packet either way. J is still measured and reported.
//! - The *applied* delay changes where it is least audible. A talk spurt
//!   start (marker bit, or a silence: a timestamp gap with contiguous
//!   sequence numbers) starts at the target, i.e. at the first pop at or
//!   after `T + base + target`: the delay is then in `[target, target +
//!   frame)`. Within a spurt only a large error (the target moved with the
//!   jitter) is corrected by inserting a concealed frame or dropping one; a
//!   small error (clock drift, clock phase) waits for the next spurt start.
//!   A missing packet while the delay is short is concealed *without*
//!   advancing, so it may still arrive. A stream with no spurt start for
//!   10 s (no silence suppression) is corrected in place to stay within
//!   `[target, target + frame]`: one frame per 20 s absorbs 0.1 % drift.
//! - Missing packets: with a later packet buffered, exactly the packets the
//!   sequence numbers say are missing are concealed (the rest of a timestamp
//!   gap is silence); with nothing buffered, at most 100 ms is concealed,
//!   then playout reports `Empty` and restarts with the next packet.
//! - A new SSRC, or a timestamp jump of more than 2 s against arrival times,
//!   starts a new timeline; whatever the old one still has buffered plays
//!   out first, and stragglers of the old stream are late.

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use super::rtp::{SeqNo, Ssrc};

/// Jitter buffer settings, usually from the SDP (clock rate, ptime) and config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JitterConfig {
    /// Lowest added delay the buffer adapts down to.
    pub min_delay_ms: u32,
    /// Highest added delay; jitter beyond this is lost as late packets.
    pub max_delay_ms: u32,
    /// RTP clock rate: 8000 for G.711 and G.722, 48000 for Opus.
    pub clock_rate: u32,
    /// Packet duration (ptime): one packet is one frame, popped once per frame.
    pub frame_ms: u32,
}

impl Default for JitterConfig {
    fn default() -> Self {
        JitterConfig {
            min_delay_ms: 20,
            max_delay_ms: 200,
            clock_rate: 8000,
            frame_ms: 20,
        }
    }
}

/// Why a new playout timeline was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetReason {
    /// Another sender took over the stream (re-INVITE, transfer, media server switch).
    SsrcChanged { from: Ssrc, to: Ssrc },
    /// The sender's RTP timestamps moved this far from where arrival times put them.
    TimestampJump { by_ms: i64 },
}

/// What happened to a pushed packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// Buffered for playout.
    Accepted,
    /// Same packet seen before (sequence number and timestamp); dropped.
    Duplicate,
    /// Its playout time has passed (or it is a straggler of a replaced stream); dropped.
    TooLate,
    /// Buffered as the first packet of a new timeline. Frames of the old
    /// timeline that are still buffered play out first.
    Reset(ResetReason),
}

/// What the decoder should do for this frame period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Playout {
    /// Decode this payload.
    Frame {
        payload: Vec<u8>,
        timestamp: u32,
        ssrc: Ssrc,
    },
    /// A packet is missing (or a frame is being inserted to grow the delay):
    /// the decoder must conceal one frame.
    Conceal { timestamp: u32 },
    /// Nothing to play: before the first packet, silence between talk spurts,
    /// or an underrun longer than concealment can usefully cover.
    Empty,
}

/// Per-call counters and gauges.
///
/// For a stream without silence suppression and without gaps longer than
/// 100 ms, `concealed == lost + stretched` holds exactly; `concealed` also
/// includes up to 100 ms at the end of a talk spurt when the sender went
/// silent before the next spurt was buffered.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct JitterStats {
    /// Packets pushed, duplicates excluded (late ones included).
    pub received: u64,
    /// Frames handed to the decoder.
    pub played: u64,
    /// Frames the playout passed over without their packet: lost on the
    /// network or arrived late (those are also counted in `late`).
    pub lost: u64,
    /// Packets dropped because their playout time had passed.
    pub late: u64,
    pub duplicate: u64,
    /// `Conceal` outputs.
    pub concealed: u64,
    /// `Conceal` outputs inserted to grow the delay rather than for a lost packet.
    pub stretched: u64,
    /// In-time frames dropped to shrink the delay (clock drift, bursts).
    pub discarded: u64,
    /// Times the buffer ran dry mid-spurt: a packet turned up after its slot
    /// had been concealed, or audio stopped for longer than concealment covers.
    pub underruns: u64,
    /// New timelines after SSRC changes and timestamp jumps.
    pub resets: u64,
    /// Added delay of the last frame played: playout time minus the arrival
    /// time it would have had on the network's fastest path.
    pub current_delay_ms: u32,
    pub peak_delay_ms: u32,
    pub target_delay_ms: u32,
    /// RFC 3550 interarrival jitter J, in milliseconds.
    pub jitter_ms: f64,
}

/// Timestamp moves beyond this (relative to arrival times) are a new timeline,
/// not jitter: no network holds a packet this long and still delivers it.
const TS_JUMP_US: i64 = 2_000_000;
/// Concealing longer than this without any later packet buffered is pointless
/// (the concealer is silent after ~60 ms); the buffer reports `Empty` instead.
const MAX_BLIND_CONCEAL_US: i64 = 100_000;
/// The base transit is the minimum over this many blocks of this length:
/// long enough to find the fast path under heavy jitter, short enough to
/// follow clock drift (0.1 % is 4 ms over the window) and route changes.
const BASE_BLOCK_US: i64 = 1_000_000;
const BASE_BLOCKS: i64 = 4;
/// Histogram forgetting per packet: weight halves every ~70 packets (~1.4 s
/// at 20 ms). Rising jitter reaches the tail within a few packets and the
/// target is most of the way up within half a second; a tail that stops
/// being fed drops below 3 % only after ~350 packets (~7 s): the slow shrink.
const HIST_FORGET: f64 = 0.99;
/// Fraction of packets the target delay keeps in time.
const TARGET_QUANTILE: f64 = 0.97;
/// When the raw target falls, the target moves 1/64 of the way per packet.
const TARGET_DECAY: f64 = 1.0 / 64.0;
/// A proactive one-frame insertion mid-spurt at most this often.
const GROW_EVERY_US: i64 = 100_000;
/// A mid-spurt frame drop at most this often.
const SHRINK_EVERY_US: i64 = 3_000_000;
/// Small delay errors (clock drift, playout-clock phase) wait this long for
/// the next talk spurt to correct them for free; a stream without a spurt
/// start for this long is continuous and gets corrected in place.
const SPURT_PATIENCE_US: i64 = 10_000_000;
/// Duplicate detection window, in sequence numbers (~10 s at 20 ms).
const SEEN_SLOTS: usize = 512;
/// Hard cap on buffered packets whatever their timestamps say.
const MAX_PACKETS: usize = 500;

struct Entry {
    seq: SeqNo,
    marker: bool,
    ssrc: Ssrc,
    /// The stream's base transit when this packet arrived, for old timelines.
    base_us: i64,
    payload: Vec<u8>,
}

/// Minimum over a sliding window kept as per-block minima.
#[derive(Default)]
struct MinWindow {
    blocks: VecDeque<(i64, i64)>,
}

impl MinWindow {
    fn push(&mut self, t_us: i64, value: i64) {
        let block = t_us.div_euclid(BASE_BLOCK_US);
        match self.blocks.back_mut() {
            Some((b, m)) if *b == block => *m = (*m).min(value),
            _ => self.blocks.push_back((block, value)),
        }
        // Expire by time, not count: after a silence the old blocks would
        // otherwise pin the base to where clock drift had it seconds ago.
        while self
            .blocks
            .front()
            .is_some_and(|&(b, _)| b <= block - BASE_BLOCKS)
        {
            self.blocks.pop_front();
        }
    }

    fn min(&self) -> Option<i64> {
        self.blocks.iter().map(|&(_, m)| m).min()
    }
}

/// Per-SSRC receive state: timestamp unwrapping, duplicates, base transit.
struct Stream {
    ssrc: Ssrc,
    generation: u32,
    /// Newest timestamp seen and its unwrapped value, the unwrap reference.
    ref_ts: u32,
    ref_ext: i64,
    highest_seq: SeqNo,
    seen: Vec<Option<(SeqNo, i64)>>,
    base: MinWindow,
    last_transit: i64,
}

impl Stream {
    fn unwrap_ts(&self, ts: u32) -> i64 {
        // Signed 32-bit distance: +-2^31 ticks is hours even at 48 kHz.
        self.ref_ext + i64::from(ts.wrapping_sub(self.ref_ts) as i32)
    }

    fn slot(seq: SeqNo) -> usize {
        usize::from(seq.0) % SEEN_SLOTS
    }

    fn seen(&self, seq: SeqNo, ext: i64) -> bool {
        self.seen.get(Self::slot(seq)).copied().flatten() == Some((seq, ext))
    }

    fn mark_seen(&mut self, seq: SeqNo, ext: i64) {
        if let Some(s) = self.seen.get_mut(Self::slot(seq)) {
            *s = Some((seq, ext));
        }
    }

    fn base_us(&self) -> i64 {
        self.base.min().unwrap_or(self.last_transit)
    }
}

/// Target delay from measured delay variation; survives stream resets
/// because the network path usually does.
struct DelayEstimator {
    jitter_us: f64,
    hist: Vec<f64>,
    bucket_us: i64,
    target_us: f64,
    min_us: f64,
    max_us: f64,
}

impl DelayEstimator {
    fn new(min_us: i64, max_us: i64) -> Self {
        // ~100 buckets whatever the range: resolution 2 ms at the default 200 ms.
        let bucket_us = (max_us / 100).max(1000);
        let buckets = usize::try_from(max_us / bucket_us + 2).unwrap_or(2);
        DelayEstimator {
            jitter_us: 0.0,
            hist: vec![0.0; buckets],
            bucket_us,
            target_us: min_us as f64,
            min_us: min_us as f64,
            max_us: max_us as f64,
        }
    }

    /// `transit_delta`: RFC 3550 D(i-1, i); `variation`: transit above the base.
    fn observe(&mut self, transit_delta: Option<i64>, variation_us: i64) {
        if let Some(d) = transit_delta {
            self.jitter_us += (d.unsigned_abs() as f64 - self.jitter_us) / 16.0;
        }
        for w in &mut self.hist {
            *w *= HIST_FORGET;
        }
        let last = self.hist.len().saturating_sub(1);
        let idx = usize::try_from(variation_us.max(0) / self.bucket_us)
            .unwrap_or(last)
            .min(last);
        if let Some(w) = self.hist.get_mut(idx) {
            *w += 1.0 - HIST_FORGET;
        }
        let raw = self
            .quantile(TARGET_QUANTILE)
            .clamp(self.min_us, self.max_us);
        if raw > self.target_us {
            self.target_us = raw;
        } else {
            self.target_us += (raw - self.target_us) * TARGET_DECAY;
        }
    }

    /// Upper edge of the bucket holding quantile `q`.
    fn quantile(&self, q: f64) -> f64 {
        let total: f64 = self.hist.iter().sum();
        if total <= 0.0 {
            return 0.0;
        }
        let mut acc = 0.0;
        for (i, w) in self.hist.iter().enumerate() {
            acc += w;
            if acc >= q * total {
                return ((i as i64 + 1) * self.bucket_us) as f64;
            }
        }
        self.max_us
    }

    fn target_us(&self) -> i64 {
        self.target_us as i64
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No frame of this timeline played yet.
    Idle,
    /// Between talk spurts or after a long underrun: the next packet starts
    /// when it is due at the target delay.
    Waiting,
    /// In a talk spurt: one frame per pop.
    Playing,
}

/// A starvation episode: the buffer was empty when a frame was due.
#[derive(Debug, Clone, Copy)]
struct Starved {
    counted: bool,
}

struct Timeline {
    generation: u32,
    phase: Phase,
    /// Unwrapped timestamp of the slot the next pop plays; earlier packets are late.
    next: i64,
    /// Last frame played: sequence number and unwrapped timestamp.
    last: Option<(SeqNo, i64)>,
    /// Slots concealed (timeline advanced) since the last frame played.
    slots_concealed: u64,
    /// Consecutive `Conceal` outputs, stretches included.
    run: u64,
    starved: Option<Starved>,
    /// Base transit of the timeline while its stream is no longer current.
    base_us: i64,
    /// Last spurt start or mid-spurt insertion/drop, for rate limits.
    last_adjust_us: i64,
    spurt_start_us: i64,
}

impl Timeline {
    fn new(generation: u32) -> Self {
        Timeline {
            generation,
            phase: Phase::Idle,
            next: 0,
            last: None,
            slots_concealed: 0,
            run: 0,
            starved: None,
            base_us: 0,
            last_adjust_us: 0,
            spurt_start_us: 0,
        }
    }
}

/// The adaptive jitter buffer for one inbound RTP stream (see module docs).
pub struct JitterBuffer {
    cfg: JitterConfig,
    frame_ticks: i64,
    frame_us: i64,
    epoch: Option<Instant>,
    stream: Option<Stream>,
    /// The stream replaced by the last SSRC change: its stragglers still play
    /// while its timeline does, and are late after; only a packet newer than
    /// any it sent is a change back.
    previous: Option<Stream>,
    timeline: Timeline,
    /// Keyed by (timeline generation, unwrapped timestamp): playout order.
    buffer: BTreeMap<(u32, i64), Entry>,
    estimator: DelayEstimator,
    stats: JitterStats,
}

impl JitterBuffer {
    /// Out-of-range settings are clamped (clock rate >= 1000 Hz, frame
    /// 1..=1000 ms, max >= min) rather than refused: the values come from a
    /// negotiated SDP and a call is better served by a sane buffer than none.
    pub fn new(cfg: JitterConfig) -> Self {
        let clock_rate = cfg.clock_rate.max(1000);
        let frame_ms = cfg.frame_ms.clamp(1, 1000);
        let min_delay_ms = cfg.min_delay_ms.min(10_000);
        let max_delay_ms = cfg.max_delay_ms.clamp(min_delay_ms, 10_000);
        let cfg = JitterConfig {
            min_delay_ms,
            max_delay_ms,
            clock_rate,
            frame_ms,
        };
        let estimator = DelayEstimator::new(
            i64::from(min_delay_ms) * 1000,
            i64::from(max_delay_ms) * 1000,
        );
        let stats = JitterStats {
            target_delay_ms: min_delay_ms,
            ..JitterStats::default()
        };
        JitterBuffer {
            cfg,
            frame_ticks: (i64::from(clock_rate) * i64::from(frame_ms) / 1000).max(1),
            frame_us: i64::from(frame_ms) * 1000,
            epoch: None,
            stream: None,
            previous: None,
            timeline: Timeline::new(0),
            buffer: BTreeMap::new(),
            estimator,
            stats,
        }
    }

    /// The payload of the frame the next `pop` is due to play, if it is
    /// already here: right after a `Conceal`, that is the packet following
    /// the lost one, whose Opus in-band FEC can rebuild the loss.
    pub fn peek_next(&self) -> Option<&[u8]> {
        self.buffer
            .get(&(self.timeline.generation, self.timeline.next))
            .map(|e| e.payload.as_slice())
    }

    pub fn config(&self) -> JitterConfig {
        self.cfg
    }

    pub fn stats(&self) -> JitterStats {
        let mut s = self.stats.clone();
        s.target_delay_ms = self.target_delay_ms();
        s.jitter_ms = self.estimator.jitter_us / 1000.0;
        s
    }

    pub fn target_delay_ms(&self) -> u32 {
        u32::try_from((self.estimator.target_us() + 500) / 1000).unwrap_or(u32::MAX)
    }

    /// Frames currently buffered (all timelines).
    pub fn len(&self) -> usize {
        self.buffer.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buffer.is_empty()
    }

    /// A packet arrived. The payload is opaque encoded audio for one frame.
    pub fn push(
        &mut self,
        now: Instant,
        ssrc: Ssrc,
        seq: SeqNo,
        timestamp: u32,
        marker: bool,
        payload: &[u8],
    ) -> PushOutcome {
        let now_us = self.clock(now);
        let Some(stream) = self.stream.as_ref() else {
            self.start_stream(now_us, 0, ssrc, seq, timestamp, marker, payload);
            return PushOutcome::Accepted;
        };
        if stream.ssrc != ssrc {
            let straggler = self
                .previous
                .as_ref()
                .is_some_and(|p| p.ssrc == ssrc && p.highest_seq.delta_to(seq) <= 0);
            if straggler {
                return self.push_straggler(seq, timestamp, marker, payload);
            }
            let reason = ResetReason::SsrcChanged {
                from: stream.ssrc,
                to: ssrc,
            };
            let generation = stream.generation.wrapping_add(1);
            self.previous = self.stream.take();
            self.start_stream(now_us, generation, ssrc, seq, timestamp, marker, payload);
            self.stats.resets += 1;
            return PushOutcome::Reset(reason);
        }

        let ext = stream.unwrap_ts(timestamp);
        if stream.seen(seq, ext) {
            self.stats.duplicate += 1;
            return PushOutcome::Duplicate;
        }
        let transit = now_us - self.ticks_to_us(ext);
        let deviation = transit - stream.base_us();
        let ahead = stream.highest_seq.delta_to(seq);
        if deviation.unsigned_abs() > TS_JUMP_US.unsigned_abs() {
            if ahead > 0 {
                let reason = ResetReason::TimestampJump {
                    by_ms: -deviation / 1000,
                };
                let generation = stream.generation.wrapping_add(1);
                self.start_stream(now_us, generation, ssrc, seq, timestamp, marker, payload);
                self.stats.resets += 1;
                return PushOutcome::Reset(reason);
            }
            // An old packet with an absurd timestamp: a straggler from before
            // a jump, or garbage. Either way it cannot be played.
            self.stats.received += 1;
            self.stats.late += 1;
            return PushOutcome::TooLate;
        }

        self.stats.received += 1;
        let generation = stream.generation;
        let base_us = {
            let Some(stream) = self.stream.as_mut() else {
                return PushOutcome::TooLate;
            };
            stream.mark_seen(seq, ext);
            // RFC 3550 A.1 in spirit: a big jump back with a newer timestamp is
            // a sender that restarted its sequence numbers, not a straggler.
            if ahead > 0 || (ahead < -100 && ext > stream.ref_ext) {
                stream.highest_seq = seq;
            }
            if ext > stream.ref_ext {
                stream.ref_ext = ext;
                stream.ref_ts = timestamp;
            }
            let delta = transit - stream.last_transit;
            stream.last_transit = transit;
            stream.base.push(now_us, transit);
            let base_us = stream.base_us();
            self.estimator.observe(Some(delta), transit - base_us);
            base_us
        };

        let tl = &mut self.timeline;
        if tl.generation == generation
            && tl.phase != Phase::Idle
            && ext < tl.next - self.frame_ticks / 2
        {
            self.stats.late += 1;
            if let Some(st) = tl.starved.as_mut() {
                if !st.counted {
                    st.counted = true;
                    self.stats.underruns += 1;
                }
            }
            return PushOutcome::TooLate;
        }
        if self.buffer.contains_key(&(generation, ext)) {
            // Same timestamp under another sequence number: a re-sent frame.
            self.stats.duplicate += 1;
            return PushOutcome::Duplicate;
        }
        self.buffer.insert(
            (generation, ext),
            Entry {
                seq,
                marker,
                ssrc,
                base_us,
                payload: payload.to_vec(),
            },
        );
        self.enforce_limits();
        PushOutcome::Accepted
    }

    /// A reordered packet of the stream an SSRC change replaced: it joins
    /// that stream's timeline if that is still playing and its slot is ahead.
    fn push_straggler(
        &mut self,
        seq: SeqNo,
        timestamp: u32,
        marker: bool,
        payload: &[u8],
    ) -> PushOutcome {
        let Some(prev) = self.previous.as_mut() else {
            return PushOutcome::TooLate;
        };
        let ext = prev.unwrap_ts(timestamp);
        if prev.seen(seq, ext) {
            self.stats.duplicate += 1;
            return PushOutcome::Duplicate;
        }
        prev.mark_seen(seq, ext);
        self.stats.received += 1;
        let key = (prev.generation, ext);
        let entry = Entry {
            seq,
            marker,
            ssrc: prev.ssrc,
            base_us: prev.base_us(),
            payload: payload.to_vec(),
        };
        let tl = &self.timeline;
        let in_time = tl.generation == prev.generation
            && (tl.phase == Phase::Idle || ext >= tl.next - self.frame_ticks / 2);
        if !in_time {
            self.stats.late += 1;
            return PushOutcome::TooLate;
        }
        if self.buffer.contains_key(&key) {
            self.stats.duplicate += 1;
            return PushOutcome::Duplicate;
        }
        self.buffer.insert(key, entry);
        PushOutcome::Accepted
    }

    /// Called once per `frame_ms` by the playout clock: what to decode now.
    pub fn pop(&mut self, now: Instant) -> Playout {
        let now_us = self.clock(now);
        self.switch_timeline_if_done();
        if let Some(stream) = self.stream.as_ref() {
            if stream.generation == self.timeline.generation {
                self.timeline.base_us = stream.base_us();
            }
        }
        match self.timeline.phase {
            Phase::Idle | Phase::Waiting => self.pop_waiting(now_us),
            Phase::Playing => self.pop_playing(now_us),
        }
    }

    fn pop_waiting(&mut self, now_us: i64) -> Playout {
        let generation = self.timeline.generation;
        let Some((&(_, ext), entry)) = self.first_entry(generation) else {
            return Playout::Empty;
        };
        let due = self.ticks_to_us(ext) + self.timeline.base_us + self.estimator.target_us();
        // First pop at or after the due time: the applied delay is the
        // target plus up to one frame of playout-clock phase.
        if now_us < due {
            return Playout::Empty;
        }
        let seq = entry.seq;
        let tl = &mut self.timeline;
        if let (Some(st), Some((last_seq, last_ext))) = (tl.starved, tl.last) {
            // Resuming without a silence gap means the caller was talking
            // through it: that was an underrun, not a pause.
            let missing = i64::from(last_seq.delta_to(seq) - 1).max(0);
            let slots = ((ext - last_ext + self.frame_ticks / 2) / self.frame_ticks - 1).max(0);
            if !st.counted && slots <= missing {
                self.stats.underruns += 1;
            }
        }
        tl.starved = None;
        tl.phase = Phase::Playing;
        tl.last_adjust_us = now_us;
        tl.spurt_start_us = now_us;
        self.play_first(now_us)
    }

    fn pop_playing(&mut self, now_us: i64) -> Playout {
        let generation = self.timeline.generation;
        let half = self.frame_ticks / 2;
        // Entries behind the slot cannot be played any more (off-grid
        // timestamps after a skip); they are dropped, not replayed.
        while let Some((&key, _)) = self.first_entry(generation) {
            if key.1 >= self.timeline.next - half {
                break;
            }
            self.buffer.remove(&key);
            self.stats.discarded += 1;
        }
        let error = self.current_delay_us(now_us, self.timeline.next) - self.estimator.target_us();
        let first = self
            .first_entry(generation)
            .map(|(&(_, ext), e)| (ext, e.seq, e.marker));
        match first {
            Some((ext, _, marker)) if ext <= self.timeline.next + half => {
                if marker && error < -self.slack_us() {
                    // A talk spurt starts: grow the delay with silence before
                    // it rather than concealment inside it.
                    self.timeline.phase = Phase::Waiting;
                    return self.pop_waiting(now_us);
                }
                // Within a spurt only a large error (the target moved with
                // the jitter) is corrected at once; a small one (drift, clock
                // phase) waits for the next spurt start unless there is none.
                let since = now_us - self.timeline.last_adjust_us;
                let patient = now_us - self.timeline.spurt_start_us < SPURT_PATIENCE_US;
                let (grow_at, shrink_at) = if patient {
                    (-self.frame_us / 2, self.frame_us * 3 / 2)
                } else {
                    (0, self.frame_us + self.slack_us())
                };
                if error < grow_at && since >= GROW_EVERY_US {
                    self.timeline.last_adjust_us = now_us;
                    return self.conceal(now_us, false);
                }
                if error >= shrink_at && since >= SHRINK_EVERY_US {
                    self.discard_first_if_followed(now_us, ext);
                }
                self.play_first(now_us)
            }
            Some((_, seq, _)) => {
                // The slot's packet is missing but a later one is here: conceal
                // exactly the packets the sequence numbers say are missing;
                // a timestamp gap beyond them is silence (a new talk spurt).
                let missing = match self.timeline.last {
                    Some((last_seq, _)) => u64::try_from(last_seq.delta_to(seq) - 1).unwrap_or(0),
                    None => 0,
                };
                if self.timeline.slots_concealed >= missing {
                    self.timeline.phase = Phase::Waiting;
                    return self.pop_waiting(now_us);
                }
                let stretch = error < -self.slack_us() && !self.blind_limit_reached();
                self.conceal(now_us, !stretch)
            }
            None => {
                if self.blind_limit_reached() {
                    self.timeline.phase = Phase::Waiting;
                    return Playout::Empty;
                }
                self.timeline
                    .starved
                    .get_or_insert(Starved { counted: false });
                // Short of the target: hold the slot so the missing packet
                // can still play if it is only late.
                self.conceal(now_us, error >= -self.slack_us())
            }
        }
    }

    /// The applied delay is kept in `[target, target + frame)` (where a spurt
    /// start puts it) give or take this much measurement noise in the base
    /// transit, so that one inserted or dropped frame does not overshoot into
    /// the opposite correction.
    fn slack_us(&self) -> i64 {
        self.frame_us / 10
    }

    /// 100 ms of given-up slots, or twice that including stretches (which
    /// stop by themselves once the delay has grown to the target).
    fn blind_limit_reached(&self) -> bool {
        let us = |n: u64| {
            i64::try_from(n)
                .unwrap_or(i64::MAX)
                .saturating_mul(self.frame_us)
        };
        us(self.timeline.slots_concealed) >= MAX_BLIND_CONCEAL_US
            || us(self.timeline.run) >= 2 * MAX_BLIND_CONCEAL_US
    }

    /// One `Conceal` output; `advance` moves past the slot (the packet is
    /// given up), otherwise the frame is inserted and the slot is kept.
    fn conceal(&mut self, now_us: i64, advance: bool) -> Playout {
        let tl = &mut self.timeline;
        let slot = tl.next;
        tl.run += 1;
        if advance {
            tl.next += self.frame_ticks;
            tl.slots_concealed += 1;
        } else {
            self.stats.stretched += 1;
        }
        self.stats.concealed += 1;
        self.note_delay(now_us, slot);
        Playout::Conceal {
            timestamp: slot as u32,
        }
    }

    /// Drops the frame at `ext` when the one after it is already here, so the
    /// drop shortens the delay without opening a hole.
    fn discard_first_if_followed(&mut self, now_us: i64, ext: i64) {
        let generation = self.timeline.generation;
        let follower = self
            .buffer
            .range((generation, ext + 1)..=(generation, i64::MAX))
            .next()
            .map(|(&(_, e), _)| e);
        if follower.is_some_and(|f| f <= ext + self.frame_ticks + self.frame_ticks / 2) {
            if let Some(entry) = self.buffer.remove(&(generation, ext)) {
                self.pass_over(entry.seq, ext);
                self.timeline.last_adjust_us = now_us;
                self.stats.discarded += 1;
            }
        }
    }

    fn play_first(&mut self, now_us: i64) -> Playout {
        let generation = self.timeline.generation;
        let Some(((_, ext), entry)) = self.pop_first_entry(generation) else {
            return Playout::Empty;
        };
        self.pass_over(entry.seq, ext);
        let tl = &mut self.timeline;
        tl.run = 0;
        tl.starved = None;
        self.stats.played += 1;
        self.note_delay(now_us, ext);
        Playout::Frame {
            payload: entry.payload,
            timestamp: ext as u32,
            ssrc: entry.ssrc,
        }
    }

    /// Moves the timeline past a frame (played or dropped), counting the
    /// frames between it and the previous one as lost: as many as the
    /// sequence numbers say existed, but never more than the timestamp gap
    /// has room for (the rest of a gap is silence).
    fn pass_over(&mut self, seq: SeqNo, ext: i64) {
        let tl = &mut self.timeline;
        if let Some((last_seq, last_ext)) = tl.last {
            let missing = i64::from(last_seq.delta_to(seq) - 1).max(0);
            let slots = ((ext - last_ext + self.frame_ticks / 2) / self.frame_ticks - 1).max(0);
            self.stats.lost += u64::try_from(missing.min(slots)).unwrap_or(0);
        }
        tl.last = Some((seq, ext));
        tl.next = ext + self.frame_ticks;
        tl.slots_concealed = 0;
    }

    fn note_delay(&mut self, now_us: i64, slot: i64) {
        let d = self.current_delay_us(now_us, slot).max(0);
        let ms = u32::try_from((d + 500) / 1000).unwrap_or(u32::MAX);
        self.stats.current_delay_ms = ms;
        self.stats.peak_delay_ms = self.stats.peak_delay_ms.max(ms);
    }

    fn current_delay_us(&self, now_us: i64, slot: i64) -> i64 {
        now_us - self.ticks_to_us(slot) - self.timeline.base_us
    }

    /// When the playing timeline belongs to a replaced stream and has nothing
    /// left, playout moves on to the next timeline.
    fn switch_timeline_if_done(&mut self) {
        let Some(stream) = self.stream.as_ref() else {
            return;
        };
        let current = self.timeline.generation;
        if current == stream.generation || self.first_entry(current).is_some() {
            return;
        }
        let next_generation = self
            .buffer
            .keys()
            .map(|&(g, _)| g)
            .find(|&g| g > current)
            .unwrap_or(stream.generation);
        // Slots concealed at the very end of a timeline were never resolved
        // by a later frame; count them now so concealment stays accounted.
        self.stats.lost += self.timeline.slots_concealed;
        self.timeline = Timeline::new(next_generation);
        if let Some((_, e)) = self.first_entry(next_generation) {
            self.timeline.base_us = e.base_us;
        }
    }

    #[allow(clippy::too_many_arguments)] // the packet's fields, as in `push`
    fn start_stream(
        &mut self,
        now_us: i64,
        generation: u32,
        ssrc: Ssrc,
        seq: SeqNo,
        timestamp: u32,
        marker: bool,
        payload: &[u8],
    ) {
        let ext = i64::from(timestamp);
        let transit = now_us - self.ticks_to_us(ext);
        let mut stream = Stream {
            ssrc,
            generation,
            ref_ts: timestamp,
            ref_ext: ext,
            highest_seq: seq,
            seen: vec![None; SEEN_SLOTS],
            base: MinWindow::default(),
            last_transit: transit,
        };
        stream.mark_seen(seq, ext);
        stream.base.push(now_us, transit);
        self.estimator.observe(None, 0);
        self.stream = Some(stream);
        self.stats.received += 1;
        if self.buffer.is_empty() && self.timeline.phase == Phase::Idle {
            self.timeline = Timeline::new(generation);
        }
        self.buffer.insert(
            (generation, ext),
            Entry {
                seq,
                marker,
                ssrc,
                base_us: transit,
                payload: payload.to_vec(),
            },
        );
        self.enforce_limits();
    }

    /// Bounds delay and memory when a sender bursts: the span buffered ahead
    /// of the playout may not exceed the maximum delay plus two frames.
    fn enforce_limits(&mut self) {
        let max_span = i64::from(self.cfg.max_delay_ms) * i64::from(self.cfg.clock_rate) / 1000
            + 2 * self.frame_ticks;
        loop {
            let (Some((&first, _)), Some((&last, _))) =
                (self.buffer.first_key_value(), self.buffer.last_key_value())
            else {
                return;
            };
            let over_span = first.0 == last.0 && last.1 - first.1 > max_span;
            if !over_span && self.buffer.len() <= MAX_PACKETS {
                return;
            }
            if let Some(entry) = self.buffer.remove(&first) {
                if first.0 == self.timeline.generation && self.timeline.phase != Phase::Idle {
                    self.pass_over(entry.seq, first.1);
                }
            }
            self.stats.discarded += 1;
        }
    }

    fn first_entry(&self, generation: u32) -> Option<(&(u32, i64), &Entry)> {
        self.buffer
            .range((generation, i64::MIN)..=(generation, i64::MAX))
            .next()
    }

    fn pop_first_entry(&mut self, generation: u32) -> Option<((u32, i64), Entry)> {
        let key = *self.first_entry(generation)?.0;
        self.buffer.remove(&key).map(|e| (key, e))
    }

    fn ticks_to_us(&self, ticks: i64) -> i64 {
        let us = i128::from(ticks) * 1_000_000 / i128::from(self.cfg.clock_rate);
        i64::try_from(us).unwrap_or(if us < 0 { i64::MIN / 4 } else { i64::MAX / 4 })
    }

    /// Microseconds since the first call; the caller's clock is the only clock.
    fn clock(&mut self, now: Instant) -> i64 {
        let epoch = *self.epoch.get_or_insert(now);
        i64::try_from(now.saturating_duration_since(epoch).as_micros()).unwrap_or(i64::MAX / 4)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::collections::HashMap;
    use std::time::Duration;

    const FRAME_US: f64 = 20_000.0;
    const TICKS: u32 = 160;

    fn cfg() -> JitterConfig {
        JitterConfig::default()
    }

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    /// Pushes frame `i` of a simple stream (seq = i, ts = 160 i) at `ms`.
    fn push_frame(jb: &mut JitterBuffer, t0: Instant, ms: u64, i: u16) -> PushOutcome {
        jb.push(
            at(t0, ms),
            Ssrc(1),
            SeqNo(i),
            u32::from(i) * TICKS,
            i == 0,
            &i.to_le_bytes(),
        )
    }

    fn frame_index(p: &Playout) -> Option<u16> {
        match p {
            Playout::Frame { payload, .. } => Some(u16::from_le_bytes([payload[0], payload[1]])),
            _ => None,
        }
    }

    #[test]
    fn first_packet_waits_for_the_target_delay() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(cfg());
        assert_eq!(jb.pop(t0), Playout::Empty, "nothing buffered yet");
        assert_eq!(push_frame(&mut jb, t0, 5, 0), PushOutcome::Accepted);
        // Target starts at the minimum, 20 ms: due at 25 ms, first pop after it.
        assert_eq!(jb.pop(at(t0, 10)), Playout::Empty);
        assert_eq!(jb.pop(at(t0, 20)), Playout::Empty);
        assert_eq!(frame_index(&jb.pop(at(t0, 30))), Some(0));
        assert_eq!(jb.stats().current_delay_ms, 25);
    }

    #[test]
    fn reordered_packets_play_in_order() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(JitterConfig {
            min_delay_ms: 60,
            ..cfg()
        });
        for (ms, i) in [(0, 0), (41, 2), (42, 1), (60, 3), (100, 5), (101, 4)] {
            assert_eq!(push_frame(&mut jb, t0, ms, i), PushOutcome::Accepted);
        }
        let played: Vec<_> = (0..6)
            .map(|k| frame_index(&jb.pop(at(t0, 60 + 20 * k))))
            .collect();
        assert_eq!(played, (0..6).map(Some).collect::<Vec<_>>());
        assert_eq!(jb.stats().lost, 0);
    }

    #[test]
    fn duplicates_are_dropped_and_counted() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(cfg());
        assert_eq!(push_frame(&mut jb, t0, 0, 0), PushOutcome::Accepted);
        assert_eq!(push_frame(&mut jb, t0, 1, 0), PushOutcome::Duplicate);
        assert_eq!(frame_index(&jb.pop(at(t0, 20))), Some(0));
        // A duplicate of a frame already played is still a duplicate, not late.
        assert_eq!(push_frame(&mut jb, t0, 25, 0), PushOutcome::Duplicate);
        assert_eq!(jb.stats().duplicate, 2);
        assert_eq!(jb.stats().received, 1);
    }

    #[test]
    fn packet_after_its_slot_is_late_and_its_slot_concealed() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(cfg());
        push_frame(&mut jb, t0, 0, 0);
        assert_eq!(frame_index(&jb.pop(at(t0, 20))), Some(0));
        push_frame(&mut jb, t0, 40, 2);
        assert_eq!(jb.pop(at(t0, 40)), Playout::Conceal { timestamp: 160 });
        assert_eq!(push_frame(&mut jb, t0, 45, 1), PushOutcome::TooLate);
        assert_eq!(frame_index(&jb.pop(at(t0, 60))), Some(2));
        let s = jb.stats();
        assert_eq!((s.late, s.lost, s.concealed, s.played), (1, 1, 1, 2));
    }

    #[test]
    fn sequence_and_timestamp_wrap_play_through() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(cfg());
        let mut played = Vec::new();
        for k in 0..10u16 {
            let seq = SeqNo(65530u16.wrapping_add(k));
            let ts = (u32::MAX - 800).wrapping_add(u32::from(k) * TICKS);
            let out = jb.push(at(t0, 20 * u64::from(k)), Ssrc(9), seq, ts, false, &[0]);
            assert_eq!(out, PushOutcome::Accepted);
            if let Playout::Frame { timestamp, .. } = jb.pop(at(t0, 20 * u64::from(k) + 20)) {
                played.push(timestamp);
            }
        }
        assert_eq!(played.len(), 10);
        assert!(played.windows(2).all(|w| w[1].wrapping_sub(w[0]) == TICKS));
        assert_eq!(jb.stats().lost, 0);
    }

    #[test]
    fn ssrc_change_starts_a_new_timeline_after_the_old_one_drains() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(cfg());
        let mut out = Vec::new();
        // Old stream frames 0..5, frame 3 held up in the network; the new
        // stream (another sender after a transfer) carries frames 5..10.
        for k in (0..10u64).filter(|&k| k != 3) {
            let (ssrc, seq, ts) = if k < 5 {
                (Ssrc(1), k as u16, k as u32 * TICKS)
            } else {
                (Ssrc(2), 40_000 + k as u16, 7_000_000 + k as u32 * TICKS)
            };
            let o = jb.push(at(t0, 20 * k), ssrc, SeqNo(seq), ts, k == 5, &[k as u8]);
            out.push(o);
        }
        assert_eq!(
            out[4],
            PushOutcome::Reset(ResetReason::SsrcChanged {
                from: Ssrc(1),
                to: Ssrc(2)
            })
        );
        let mut played = Vec::new();
        let mut pop = |jb: &mut JitterBuffer, ms| {
            if let Playout::Frame { payload, ssrc, .. } = jb.pop(at(t0, ms)) {
                played.push((ssrc.0, payload[0]));
            }
        };
        for ms in [20, 40, 60] {
            pop(&mut jb, ms);
        }
        // The straggler still makes its slot in the old timeline: it plays,
        // and does not flip the stream back to the old sender.
        assert_eq!(
            jb.push(at(t0, 75), Ssrc(1), SeqNo(3), 3 * TICKS, false, &[3]),
            PushOutcome::Accepted
        );
        for ms in (80..=280).step_by(20) {
            pop(&mut jb, ms);
        }
        let expect: Vec<_> = (0..10).map(|k| (if k < 5 { 1 } else { 2 }, k)).collect();
        assert_eq!(played, expect, "old stream plays out, then the new one");
        // Once the old timeline is over, its stragglers are late (and
        // repeats of what it played are still duplicates).
        assert_eq!(
            jb.push(at(t0, 290), Ssrc(1), SeqNo(2), 2 * TICKS, false, &[2]),
            PushOutcome::Duplicate
        );
        assert_eq!(
            jb.push(at(t0, 290), Ssrc(1), SeqNo(4), 4 * TICKS + 1, false, &[4]),
            PushOutcome::TooLate
        );
        assert_eq!(jb.stats().resets, 1);
    }

    #[test]
    fn timestamp_jump_resets_the_timeline() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(cfg());
        push_frame(&mut jb, t0, 0, 0);
        push_frame(&mut jb, t0, 20, 1);
        // The sender jumps 10 s ahead in RTP time without any real time passing.
        let o = jb.push(
            at(t0, 40),
            Ssrc(1),
            SeqNo(2),
            2 * TICKS + 80_000,
            false,
            &[2, 0],
        );
        assert!(matches!(
            o,
            PushOutcome::Reset(ResetReason::TimestampJump { by_ms }) if (9990..=10_010).contains(&by_ms)
        ));
        let played: Vec<_> = (1..6)
            .filter_map(|k| frame_index(&jb.pop(at(t0, 20 * k))))
            .collect();
        assert_eq!(played, vec![0, 1, 2]);
        // A stale old-timeline packet is late, not another jump.
        assert_eq!(
            jb.push(at(t0, 130), Ssrc(1), SeqNo(1), TICKS, false, &[1, 0]),
            PushOutcome::TooLate
        );
        assert_eq!(
            jb.push(at(t0, 130), Ssrc(1), SeqNo(0), 5 * TICKS, false, &[1, 0]),
            PushOutcome::TooLate
        );
    }

    #[test]
    fn long_gap_with_nothing_buffered_becomes_an_underrun() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(cfg());
        push_frame(&mut jb, t0, 0, 0);
        assert!(frame_index(&jb.pop(at(t0, 20))).is_some());
        // Frames 1..=9 never arrive: five conceal (100 ms), then silence.
        let outs: Vec<_> = (2..10).map(|k| jb.pop(at(t0, 20 * k))).collect();
        assert_eq!(
            outs.iter()
                .filter(|p| matches!(p, Playout::Conceal { .. }))
                .count(),
            5
        );
        assert!(outs[5..].iter().all(|p| *p == Playout::Empty));
        push_frame(&mut jb, t0, 190, 10);
        assert_eq!(
            jb.pop(at(t0, 200)),
            Playout::Empty,
            "waits for the target again"
        );
        assert_eq!(frame_index(&jb.pop(at(t0, 220))), Some(10));
        let s = jb.stats();
        assert_eq!((s.lost, s.concealed, s.underruns), (9, 5, 1));
    }

    #[test]
    fn silence_between_talk_spurts_is_not_loss() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(JitterConfig {
            min_delay_ms: 60,
            ..cfg()
        });
        for k in 0..3u16 {
            push_frame(&mut jb, t0, 20 * u64::from(k), k);
        }
        // Next spurt after 40 ms of silence: seq continues, the timestamp
        // skips two frames, marker set. It is buffered when the first spurt
        // ends, so the gap is known to be silence, not loss.
        jb.push(at(t0, 100), Ssrc(1), SeqNo(3), 5 * TICKS, true, &[3, 0]);
        let outs: Vec<_> = (3..9).map(|k| jb.pop(at(t0, 20 * k))).collect();
        let frames: Vec<_> = outs.iter().map(frame_index).collect();
        assert_eq!(
            frames,
            vec![Some(0), Some(1), Some(2), None, None, Some(3)],
            "{outs:?}"
        );
        assert_eq!(outs[3], Playout::Empty);
        let s = jb.stats();
        assert_eq!((s.lost, s.concealed, s.underruns), (0, 0, 0));
    }

    #[test]
    fn target_growth_is_applied_as_silence_before_a_talk_spurt() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(cfg());
        // A calm spurt: the target stays at 20 ms.
        for k in 0..5u16 {
            push_frame(&mut jb, t0, 20 * u64::from(k), k);
            let _ = jb.pop(at(t0, 20 * u64::from(k) + 20));
        }
        // Jitter appears: packets 5..15 arrive up to 60 ms late, but in
        // order, and each is played on time. The target rises at once.
        let mut out = Vec::new();
        for k in 5..15u16 {
            let late = if k % 2 == 0 { 60 } else { 0 };
            push_frame(&mut jb, t0, 20 * u64::from(k) + late, k);
            out.push(jb.pop(at(t0, 20 * u64::from(k) + 20)));
        }
        let target = jb.target_delay_ms();
        assert!(target >= 60, "target follows the jitter at once: {target}");
        // The next talk spurt (marker, after 200 ms of silence) starts at the
        // new target: silence is inserted before it, not concealment in it.
        let spurt_ts = 25 * TICKS;
        jb.push(at(t0, 500), Ssrc(1), SeqNo(15), spurt_ts, true, &[15, 0]);
        let mut first_play = None;
        for ms in (300..700).step_by(20) {
            if let Some(15) = frame_index(&jb.pop(at(t0, ms))) {
                first_play = Some(ms);
            }
        }
        let delay = first_play.unwrap() - 500;
        assert!(
            delay >= u64::from(target) && delay < u64::from(target) + 20,
            "{delay} vs {target}"
        );
    }

    // ----- seeded network simulator -------------------------------------

    #[derive(Clone)]
    struct Scenario {
        seed: u64,
        frames: u32,
        /// Random loss probability per packet.
        loss: f64,
        /// Gilbert-Elliott bursts: (enter bad state, stay in bad state); lost while bad.
        burst: Option<(f64, f64)>,
        /// Piecewise constant uniform jitter range: (from frame, max extra ms).
        jitter: Vec<(u32, f64)>,
        /// Probability a packet is delivered twice.
        dup: f64,
        /// Sender clock rate error: +0.001 is a sender 0.1 % fast.
        drift: f64,
        ssrc_change_at: Option<u32>,
        /// (talk frames, silence frames) with silence suppression, or continuous.
        spurts: Option<(u32, u32)>,
        seq0: u16,
        ts0: u32,
    }

    impl Scenario {
        fn new(seed: u64, frames: u32) -> Self {
            Scenario {
                seed,
                frames,
                loss: 0.0,
                burst: None,
                jitter: vec![(0, 0.0)],
                dup: 0.0,
                drift: 0.0,
                ssrc_change_at: None,
                spurts: None,
                seq0: 65_000,
                ts0: u32::MAX - 50_000,
            }
        }

        fn jitter_at(&self, i: u32) -> f64 {
            self.jitter
                .iter()
                .rev()
                .find(|(from, _)| *from <= i)
                .map_or(0.0, |j| j.1)
        }
    }

    struct Sent {
        ssrc: u32,
        seq: u16,
        ts: u32,
        marker: bool,
        send_us: f64,
    }

    #[derive(Default)]
    struct Report {
        stats: JitterStats,
        /// Sender frame index of each played frame, in playout order.
        played: Vec<u32>,
        /// (added delay, target) in ms for every played frame.
        delays: Vec<(f64, f64)>,
        /// Duplicates the network delivered (copies after the first).
        net_dups: u64,
        longest_burst: u32,
        targets: Vec<u32>,
        outcomes: HashMap<u32, Vec<PushOutcome>>,
        sent: Vec<(u32, u16, u32)>,
        /// Conceal outputs after the last played frame (the stream ended).
        trailing_conceals: u64,
        ts_of_played: Vec<(u32, u32)>,
        /// (pop time, SSRC, timestamp) of every frame played or concealed.
        slots: Vec<(u64, u32, u32)>,
        /// Arrival time of every TooLate outcome, by frame.
        late_at: Vec<(u64, u32)>,
    }

    const NET_BASE_MS: f64 = 30.0;

    fn run(sc: &Scenario) -> Report {
        let mut rng = StdRng::seed_from_u64(sc.seed);
        let mut sent = Vec::new();
        let (mut ssrc, mut seq, mut ts) = (0x1111_u32, sc.seq0, sc.ts0);
        let mut silent_before = true;
        for i in 0..sc.frames {
            if Some(i) == sc.ssrc_change_at {
                ssrc = 0x2222;
                seq = seq.wrapping_add(30_000);
                ts = ts.wrapping_add(0x4000_0000);
                silent_before = true;
            }
            let talking = sc.spurts.is_none_or(|(t, s)| i % (t + s) < t);
            if talking {
                sent.push(Sent {
                    ssrc,
                    seq,
                    ts,
                    marker: silent_before,
                    send_us: f64::from(i) * FRAME_US / (1.0 + sc.drift),
                });
                seq = seq.wrapping_add(1);
            }
            silent_before = !talking;
            ts = ts.wrapping_add(TICKS);
        }
        let mut report = Report::default();
        let mut arrivals: Vec<(u64, usize)> = Vec::new();
        let mut bad = false;
        let mut burst = 0;
        for (k, p) in sent.iter().enumerate() {
            bad = match sc.burst {
                Some((enter, stay)) => rng.gen_bool(if bad { stay } else { enter }),
                None => false,
            };
            let lost = bad || rng.gen_bool(sc.loss);
            burst = if lost { burst + 1 } else { 0 };
            report.longest_burst = report.longest_burst.max(burst);
            if lost {
                continue;
            }
            let copies = if rng.gen_bool(sc.dup) { 2 } else { 1 };
            report.net_dups += copies - 1;
            for _ in 0..copies {
                let jitter = rng.gen::<f64>() * sc.jitter_at(k as u32);
                let t = p.send_us + (NET_BASE_MS + jitter) * 1000.0;
                arrivals.push((t as u64, k));
            }
        }
        arrivals.sort_by_key(|&(t, k)| (t, k));
        report.sent = sent.iter().map(|p| (p.ssrc, p.seq, p.ts)).collect();

        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(cfg());
        let by_ts: HashMap<(u32, u32), u32> = sent
            .iter()
            .enumerate()
            .map(|(k, p)| ((p.ssrc, p.ts), k as u32))
            .collect();
        let end_us = arrivals.last().map_or(0, |a| a.0) + 1_000_000;
        let mut next_arrival = 0;
        // The receiver's playout clock runs at its own phase.
        let mut pop_us = rng.gen_range(0..20_000u64);
        while pop_us < end_us {
            while let Some(&(t, k)) = arrivals.get(next_arrival) {
                if t > pop_us {
                    break;
                }
                let p = &sent[k];
                let o = jb.push(
                    t0 + Duration::from_micros(t),
                    Ssrc(p.ssrc),
                    SeqNo(p.seq),
                    p.ts,
                    p.marker,
                    &(k as u32).to_le_bytes(),
                );
                report.outcomes.entry(k as u32).or_default().push(o);
                if o == PushOutcome::TooLate {
                    report.late_at.push((t, k as u32));
                }
                next_arrival += 1;
            }
            let out = jb.pop(t0 + Duration::from_micros(pop_us));
            let target = jb.target_delay_ms();
            report.targets.push(target);
            match out {
                Playout::Frame {
                    payload,
                    timestamp,
                    ssrc,
                } => {
                    let k = u32::from_le_bytes(payload[..4].try_into().unwrap());
                    assert_eq!(
                        by_ts.get(&(ssrc.0, timestamp)),
                        Some(&k),
                        "frame carries its own timestamp"
                    );
                    let added = (pop_us as f64 - sent[k as usize].send_us) / 1000.0 - NET_BASE_MS;
                    report.delays.push((added, f64::from(target)));
                    report.played.push(k);
                    report.trailing_conceals = 0;
                    report.ts_of_played.push((ssrc.0, timestamp));
                    report.slots.push((pop_us, ssrc.0, timestamp));
                }
                Playout::Conceal { timestamp } => {
                    report.trailing_conceals += 1;
                    // A concealed slot belongs to the stream last played.
                    if let Some(&(_, ssrc, _)) = report.slots.last() {
                        report.slots.push((pop_us, ssrc, timestamp));
                    }
                }
                Playout::Empty => {}
            }
            pop_us += 20_000;
        }
        report.stats = jb.stats();
        report
    }

    /// Invariants every scenario must keep.
    fn check(sc: &Scenario, r: &Report) {
        // Frames play in order within an SSRC, each at most once.
        let mut last: HashMap<u32, u32> = HashMap::new();
        for &(ssrc, ts) in &r.ts_of_played {
            if let Some(prev) = last.insert(ssrc, ts) {
                assert!(
                    (ts.wrapping_sub(prev) as i32) > 0,
                    "timestamps strictly increase within an SSRC"
                );
            }
        }
        // A packet called late really was: before it arrived, playout had
        // reached its timestamp, or had moved on to the next sender.
        for &(t, k) in &r.late_at {
            let (ssrc, _, ts) = r.sent[k as usize];
            let passed = r.slots.iter().take_while(|s| s.0 < t).any(|&(_, s, slot)| {
                if s == ssrc {
                    slot.wrapping_sub(ts) as i32 >= 0
                } else {
                    Some(ssrc) == r.sent.first().map(|f| f.0)
                }
            });
            assert!(
                passed,
                "frame {k} was called late at {t} us before its slot"
            );
        }
        let mut times_played: HashMap<u32, u32> = HashMap::new();
        for &k in &r.played {
            *times_played.entry(k).or_default() += 1;
        }
        assert!(
            times_played.values().all(|&n| n == 1),
            "no frame plays twice"
        );
        // Every frame the buffer accepted plays exactly once, unless it was
        // discarded to cut delay; late and duplicate ones never play.
        let mut accepted_not_played = 0;
        for (&k, outs) in &r.outcomes {
            let accepted = outs
                .iter()
                .filter(|o| matches!(o, PushOutcome::Accepted | PushOutcome::Reset(_)))
                .count();
            assert!(accepted <= 1, "a frame is accepted at most once: {outs:?}");
            let played = times_played.get(&k).copied().unwrap_or(0);
            if accepted == 0 {
                assert_eq!(played, 0, "frame {k} played without being accepted");
            } else if played == 0 {
                accepted_not_played += 1;
            }
        }
        assert_eq!(
            accepted_not_played, r.stats.discarded,
            "only discarded frames go unplayed"
        );
        let dup_outcomes: u64 = r
            .outcomes
            .values()
            .flatten()
            .filter(|o| **o == PushOutcome::Duplicate)
            .count() as u64;
        let late_outcomes: u64 = r
            .outcomes
            .values()
            .flatten()
            .filter(|o| **o == PushOutcome::TooLate)
            .count() as u64;
        assert_eq!(r.stats.duplicate, dup_outcomes);
        assert_eq!(r.stats.late, late_outcomes);
        assert!(r.stats.duplicate <= r.net_dups);
        // Lost = frames between the first and last played frame of each
        // stream that were not played (nor discarded), by the sender's log.
        let mut lost_oracle = 0u64;
        let mut by_ssrc: HashMap<u32, (u32, u32, u64)> = HashMap::new();
        for &k in &r.played {
            let ssrc = r.sent[k as usize].0;
            let e = by_ssrc.entry(ssrc).or_insert((k, k, 0));
            e.0 = e.0.min(k);
            e.1 = e.1.max(k);
            e.2 += 1;
        }
        for (first, last, played) in by_ssrc.values() {
            let discarded_inside = r
                .outcomes
                .iter()
                .filter(|(&k, outs)| {
                    k >= *first
                        && k <= *last
                        && !times_played.contains_key(&k)
                        && outs
                            .iter()
                            .any(|o| matches!(o, PushOutcome::Accepted | PushOutcome::Reset(_)))
                })
                .count() as u64;
            lost_oracle += u64::from(last - first + 1) - played - discarded_inside;
        }
        if sc.spurts.is_none() {
            assert_eq!(r.stats.lost, lost_oracle, "lost matches the sender's log");
            if r.longest_burst * 20 <= 100 {
                assert_eq!(
                    r.stats.concealed - r.trailing_conceals,
                    r.stats.lost + r.stats.stretched,
                    "every lost frame is concealed once"
                );
            }
        }
        assert_eq!(r.stats.played as usize, r.played.len());
    }

    fn summary(name: &str, r: &Report) -> String {
        let n = r.delays.len().max(1) as f64;
        let mean = r.delays.iter().map(|d| d.0).sum::<f64>() / n;
        let over = r.delays.iter().filter(|(d, t)| *d > t + 25.0).count();
        let s = &r.stats;
        format!(
            "{name}: played {} received {} lost {} late {} dup {} concealed {} stretched {} discarded {} underruns {} resets {} | added delay mean {mean:.1} ms, peak {} ms, over target+frame+5 ms {over}, final target {} ms, J {:.1} ms",
            s.played, s.received, s.lost, s.late, s.duplicate, s.concealed, s.stretched, s.discarded,
            s.underruns, s.resets, s.peak_delay_ms, s.target_delay_ms, s.jitter_ms
        )
    }

    #[test]
    fn sim_clean_network_plays_everything_at_minimum_delay() {
        let sc = Scenario::new(1, 500);
        let r = run(&sc);
        check(&sc, &r);
        println!("{}", summary("clean", &r));
        assert_eq!(r.stats.played, 500);
        assert_eq!(r.stats.concealed, r.trailing_conceals);
        assert!(r.delays.iter().all(|&(d, t)| d >= t && d < t + 20.0));
    }

    #[test]
    fn sim_loss_jitter_reorder_duplicates() {
        let mut sc = Scenario::new(2, 3000);
        sc.loss = 0.05;
        sc.jitter = vec![(0, 60.0)];
        sc.dup = 0.02;
        let r = run(&sc);
        check(&sc, &r);
        println!("{}", summary("5% loss, 60 ms jitter, 2% dup", &r));
        let s = &r.stats;
        assert!(s.late * 100 <= s.received * 3, "late under 3%");
        assert!(s.duplicate > 30);
    }

    #[test]
    fn sim_bursty_loss_high_jitter_ssrc_change_and_wrap() {
        let mut sc = Scenario::new(3, 6000);
        sc.loss = 0.05;
        sc.burst = Some((0.02, 0.5));
        sc.jitter = vec![(0, 120.0)];
        sc.dup = 0.01;
        sc.ssrc_change_at = Some(3000);
        sc.seq0 = 63_000;
        let r = run(&sc);
        check(&sc, &r);
        println!(
            "{}",
            summary("bursty ~9% loss, 120 ms jitter, SSRC change", &r)
        );
        assert_eq!(r.stats.resets, 1);
        assert!(r.stats.late * 100 <= r.stats.received * 3, "late under 3%");
    }

    #[test]
    fn sim_target_grows_under_jitter_and_shrinks_after() {
        let mut sc = Scenario::new(4, 9000);
        sc.loss = 0.02;
        // 60 s calm, 60 s of 100 ms jitter, 60 s calm again.
        sc.jitter = vec![(0, 5.0), (3000, 100.0), (6000, 5.0)];
        let r = run(&sc);
        check(&sc, &r);
        println!("{}", summary("jitter 5 -> 100 -> 5 ms", &r));
        let t = |frame: usize| r.targets[frame];
        assert!(t(2900) <= 30, "calm: {}", t(2900));
        assert!(t(3050) >= 80, "grows within a second: {}", t(3050));
        assert!(t(5900) >= 90, "high jitter: {}", t(5900));
        assert!(t(6100) >= 80, "does not collapse at once: {}", t(6100));
        assert!(t(8900) <= 30, "shrinks back: {}", t(8900));
        // The applied delay follows (continuous stream: by drop/insert).
        let late_calm = &r.delays[r.delays.len() - 500..];
        let mean = late_calm.iter().map(|d| d.0).sum::<f64>() / 500.0;
        assert!(mean <= 45.0, "applied delay shrinks too: {mean}");
    }

    #[test]
    fn sim_added_delay_stays_within_target_plus_a_frame() {
        for (seed, jitter, spurts) in [
            (5, 30.0, None),
            (6, 60.0, Some((150, 50))),
            (7, 120.0, None),
        ] {
            let mut sc = Scenario::new(seed, 5000);
            sc.loss = 0.03;
            sc.jitter = vec![(0, jitter)];
            sc.spurts = spurts;
            let r = run(&sc);
            check(&sc, &r);
            println!(
                "{}",
                summary(
                    &format!("delay vs target, jitter {jitter}, spurts {spurts:?}"),
                    &r
                )
            );
            // Skip the first 5 s while the estimator learns the network.
            // 5 ms covers the target's own noise (2 ms histogram buckets)
            // and the 2 ms correction slack.
            let steady = &r.delays[250..];
            let over = steady.iter().filter(|(d, t)| *d > t + 20.0 + 5.0).count();
            assert!(
                over * 100 <= steady.len(),
                "{over} of {} over target + frame",
                steady.len()
            );
        }
    }

    #[test]
    fn sim_ten_minutes_of_clock_drift_stays_bounded() {
        for spurts in [None, Some((200, 60))] {
            for (seed, drift) in [(8, 0.0), (9, 0.001), (10, -0.001)] {
                let mut sc = Scenario::new(seed, 30_000);
                sc.loss = 0.01;
                sc.jitter = vec![(0, 40.0)];
                sc.drift = drift;
                sc.spurts = spurts;
                let r = run(&sc);
                check(&sc, &r);
                let name = format!("10 min, drift {drift:+}, spurts {spurts:?}");
                println!("{}", summary(&name, &r));
                let s = &r.stats;
                // 0.1 % of 10 minutes is 600 ms: 30 frames were dropped or
                // inserted, yet the delay ends where it started.
                assert!(
                    s.current_delay_ms <= s.target_delay_ms + 25,
                    "{name}: {s:?}"
                );
                assert!(s.peak_delay_ms <= 100, "{name}: {s:?}");
                let mean = |d: &[(f64, f64)]| d.iter().map(|x| x.0).sum::<f64>() / d.len() as f64;
                let first = mean(&r.delays[250..3250]);
                let last = mean(&r.delays[r.delays.len() - 3000..]);
                assert!((last - first).abs() <= 20.0, "{name}: {first} -> {last}");
                assert!(s.underruns <= 30, "{name}: {s:?}");
                assert!(
                    s.late * 200 <= s.received,
                    "{name}: late under 0.5 %: {s:?}"
                );
                if spurts.is_some() {
                    assert_eq!(s.discarded, 0, "{name}: drift is absorbed in the silences");
                }
                if drift == 0.0 {
                    assert_eq!(s.discarded + s.stretched, 0, "{name}: nothing to correct");
                }
            }
        }
    }
}
