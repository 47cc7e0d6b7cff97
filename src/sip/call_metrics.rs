//! What the call path counts for `/metrics`, from the driver's call events
//! and the end of the call (the names and help texts are described in
//! `control::metrics`).
//!
//! Nothing here runs per packet: media counters arrive as totals in the
//! per-second stats snapshot, and [`StatsDelta`] turns two consecutive
//! snapshots into counter increments, so a total is never counted twice.

use crate::agent::{AgentEvent, TurnLatency};
use crate::calls::{unix_ms, CallInfo, CallRegistry};

use super::core::{EndReason, StatsSnapshot};

/// What one stats tick adds to the counters, and its samples.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct StatsDelta {
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub lost: u64,
    pub concealed: u64,
    pub late: u64,
    pub underruns: u64,
    /// Agent audio dropped over its playout cap (ms).
    pub capped_ms: u64,
    /// Interarrival jitter, when packets arrived in this tick.
    pub jitter_s: Option<f64>,
    /// Jitter-buffer added delay, when packets arrived in this tick.
    pub jb_delay_s: Option<f64>,
    /// RTP/RTCP datagrams dropped, by reason (see [`DROP_REASONS`]).
    pub dropped: [u64; DROP_REASONS.len()],
}

/// `agentline_rtp_dropped_total`'s `reason` label values: another address
/// than the latched one, another SSRC unsignalled, too short or not RTP,
/// over the size limit, SRTP authentication (or replay) failed.
pub const DROP_REASONS: [&str; 5] = ["source", "ssrc", "malformed", "oversized", "srtp_auth"];

fn dropped_totals(media: &crate::media::session::MediaStats, srtp_rejected: u64) -> [u64; 5] {
    [
        media.rx_dropped_source,
        media.rx_dropped_ssrc,
        media.rx_malformed + media.rtcp_malformed,
        media.rx_oversized,
        srtp_rejected,
    ]
}

impl StatsDelta {
    /// From the totals the registry holds (`prev`, the last tick) to `now`.
    /// A total that went down (media restarted) counts from zero again.
    pub fn between(prev: &CallInfo, now: &StatsSnapshot, with_samples: bool) -> StatsDelta {
        let d = |new: u64, old: u64| if new >= old { new - old } else { new };
        let (pj, nj) = (prev.jitter.as_ref(), &now.jitter);
        let prev_lost = prev.quality.as_ref().map_or(0, |q| q.packets_lost);
        let rx_packets = d(now.media.rx_packets, prev.media.rx_packets);
        let sampled = with_samples && rx_packets > 0;
        StatsDelta {
            rx_packets,
            tx_packets: d(now.media.tx_packets, prev.media.tx_packets),
            lost: d(now.quality.packets_lost, prev_lost),
            concealed: d(nj.concealed, pj.map_or(0, |j| j.concealed)),
            late: d(nj.late, pj.map_or(0, |j| j.late)),
            underruns: d(now.media.tx_underruns, prev.media.tx_underruns),
            capped_ms: d(now.media.tx_capped_ms / 20, prev.media.tx_capped_ms / 20),
            jitter_s: sampled.then(|| now.quality.jitter_ms / 1000.0),
            jb_delay_s: sampled.then(|| f64::from(nj.current_delay_ms) / 1000.0),
            dropped: {
                let new = dropped_totals(&now.media, now.srtp_rejected);
                let old = dropped_totals(&prev.media, prev.srtp_rejected);
                std::array::from_fn(|i| d(new[i], old[i]))
            },
        }
    }

    pub fn emit(&self) {
        let counters = [
            ("agentline_rtp_packets_received_total", self.rx_packets),
            ("agentline_rtp_packets_sent_total", self.tx_packets),
            ("agentline_rtp_packets_lost_total", self.lost),
            ("agentline_jitter_buffer_concealed_total", self.concealed),
            ("agentline_jitter_buffer_late_total", self.late),
            ("agentline_playout_underruns_total", self.underruns),
            ("agentline_playout_capped_frames_total", self.capped_ms),
        ];
        for (name, n) in counters {
            if n > 0 {
                metrics::counter!(name).increment(n);
            }
        }
        for (reason, n) in DROP_REASONS.iter().zip(self.dropped) {
            if n > 0 {
                metrics::counter!("agentline_rtp_dropped_total", "reason" => *reason).increment(n);
            }
        }
        if let Some(j) = self.jitter_s {
            metrics::histogram!("agentline_rtp_jitter_seconds").record(j);
        }
        if let Some(d) = self.jb_delay_s {
            metrics::histogram!("agentline_jitter_buffer_delay_seconds").record(d);
        }
    }
}

/// A stats tick: counts what it adds to the registry's last totals. Call
/// before the registry takes the new snapshot.
pub fn stats_tick(calls: &CallRegistry, id: &str, now: &StatsSnapshot, with_samples: bool) {
    let mut delta = None;
    calls.update(id, |prev| {
        delta = Some(StatsDelta::between(prev, now, with_samples))
    });
    if let Some(d) = delta {
        d.emit();
    }
}

/// The end of the media: the counts since the last tick (no new samples)
/// and the call's MOS, when it had media.
pub fn media_ended(calls: &CallRegistry, id: &str, last: &StatsSnapshot) {
    stats_tick(calls, id, last, false);
    if last.media.rx_packets > 0 {
        metrics::histogram!("agentline_call_mos").record(last.quality.mos);
    }
}

/// INVITE to 200 OK, from the call's start time in the registry.
pub fn setup_done(calls: &CallRegistry, id: &str, direction: &'static str) {
    let mut started = None;
    calls.update(id, |c| started = Some(c.started_at_unix_ms));
    if let Some(started) = started {
        let ms = unix_ms().saturating_sub(started);
        metrics::histogram!("agentline_call_setup_seconds", "direction" => direction)
            .record(ms as f64 / 1000.0);
    }
}

/// The call is over: one count by route, who hung up and whether it was
/// answered. Call before the registry forgets the call.
pub fn call_ended(calls: &CallRegistry, id: &str, direction: &'static str, end: &EndReason) {
    let (mut route, mut answered) = (String::new(), false);
    calls.update(id, |c| {
        route = c.route.clone();
        answered = c.answered_at_unix_ms.is_some();
    });
    let by = serde_json::to_value(end.hung_up_by())
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    metrics::counter!("agentline_calls_total",
        "direction" => direction,
        "route" => route,
        "hung_up_by" => by,
        "answered" => if answered { "true" } else { "false" })
    .increment(1);
}

/// Agent latency, provider errors and failovers.
pub fn agent_event(ev: &AgentEvent) {
    match ev {
        AgentEvent::Latency(l) => turn_latency(l),
        AgentEvent::Error { .. } => {
            metrics::counter!("agentline_provider_errors_total", "kind" => "error").increment(1)
        }
        AgentEvent::Failed { .. } => {
            metrics::counter!("agentline_provider_errors_total", "kind" => "failed").increment(1)
        }
        AgentEvent::Provider { .. } => {
            metrics::counter!("agentline_provider_failovers_total").increment(1)
        }
        _ => {}
    }
}

fn turn_latency(l: &TurnLatency) {
    let stages = [
        ("asr", l.asr_ms),
        ("llm_first_token", l.llm_first_token_ms),
        ("tts_first_byte", l.tts_first_byte_ms),
        ("total", Some(l.total_ms)),
    ];
    for (stage, ms) in stages {
        if let Some(ms) = ms {
            metrics::histogram!("agentline_turn_latency_seconds", "stage" => stage)
                .record(ms as f64 / 1000.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> CallInfo {
        CallInfo::new(
            "id".into(),
            "cid".into(),
            "from".into(),
            "to".into(),
            "echo".into(),
            "echo".into(),
            10000,
        )
    }

    fn snapshot(rx: u64, tx: u64, lost: u64, concealed: u64, underruns: u64) -> StatsSnapshot {
        let mut s = StatsSnapshot {
            media: Default::default(),
            quality: crate::media::rtcp::CallQuality {
                packets_received: 0,
                packets_lost: 0,
                fraction_lost_pct: 0.0,
                jitter_ms: 0.0,
                rtt_ms: None,
                remote_reported_loss_pct: None,
                remote_reported_jitter_ms: None,
                mos: 4.4,
            },
            jitter: Default::default(),
            srtp_rejected: 0,
        };
        s.media.rx_packets = rx;
        s.media.tx_packets = tx;
        s.media.tx_underruns = underruns;
        s.quality.packets_lost = lost;
        s.quality.jitter_ms = 4.0;
        s.jitter.concealed = concealed;
        s.jitter.late = concealed / 2;
        s.jitter.current_delay_ms = 40;
        s
    }

    /// The registry after it took `s`, as the driver's `record` leaves it.
    fn after(s: &StatsSnapshot) -> CallInfo {
        let mut c = info();
        c.media = s.media.clone();
        c.jitter = Some(s.jitter.clone());
        c.quality = Some(s.quality.clone());
        c
    }

    #[test]
    fn consecutive_ticks_count_each_packet_once() {
        let first = snapshot(50, 49, 1, 2, 0);
        let d1 = StatsDelta::between(&info(), &first, true);
        assert_eq!(
            (d1.rx_packets, d1.tx_packets, d1.lost, d1.concealed, d1.late),
            (50, 49, 1, 2, 1)
        );
        assert_eq!(d1.jitter_s, Some(0.004));
        assert_eq!(d1.jb_delay_s, Some(0.04));
        let second = snapshot(100, 99, 1, 6, 3);
        let d2 = StatsDelta::between(&after(&first), &second, true);
        assert_eq!(
            (
                d2.rx_packets,
                d2.tx_packets,
                d2.lost,
                d2.concealed,
                d2.late,
                d2.underruns
            ),
            (50, 50, 0, 4, 2, 3)
        );
        assert_eq!(d1.rx_packets + d2.rx_packets, second.media.rx_packets);
    }

    #[test]
    fn a_tick_without_packets_takes_no_samples() {
        let s = snapshot(50, 49, 1, 2, 0);
        let d = StatsDelta::between(&after(&s), &s, true);
        assert_eq!(d, StatsDelta::default());
        let d = StatsDelta::between(&info(), &s, false);
        assert_eq!((d.rx_packets, d.jitter_s, d.jb_delay_s), (50, None, None));
    }

    #[test]
    fn a_restarted_total_counts_from_zero() {
        let old = snapshot(500, 500, 10, 0, 0);
        let d = StatsDelta::between(&after(&old), &snapshot(20, 30, 1, 0, 0), true);
        assert_eq!((d.rx_packets, d.tx_packets, d.lost), (20, 30, 1));
    }
}
