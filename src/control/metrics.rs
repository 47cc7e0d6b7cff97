//! `GET /metrics`: the Prometheus text exposition of the process.
//!
//! Owns the recorder (`metrics` + `metrics-exporter-prometheus`, without its
//! own HTTP listener), the description of every `agentline_*` metric, the
//! gauges that only exist as a snapshot (active calls, registrations, trunk
//! and circuit-breaker state), read from the server's state at scrape time,
//! and the process metrics read from `/proc/self`. Events (call ends, stats
//! ticks, agent latency, failures) are counted where they happen, through the
//! `metrics` macros: the call driver's `record`, the trunk loop, webhooks.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use super::ApiState;

/// Histogram buckets, by metric name.
const BUCKETS: &[(&str, &[f64])] = &[
    (
        "agentline_call_setup_seconds",
        &[0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0],
    ),
    (
        "agentline_turn_latency_seconds",
        &[0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0],
    ),
    (
        "agentline_call_mos",
        &[1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.2, 4.4, 5.0],
    ),
    (
        "agentline_rtp_jitter_seconds",
        &[0.001, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2],
    ),
    (
        "agentline_jitter_buffer_delay_seconds",
        &[0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5],
    ),
];

/// Every metric the recorder exports, with its help text. Process metrics
/// (`agentline_process_*`) are written by [`process_text`] instead.
pub const DESCRIPTIONS: &[(&str, &str)] = &[
    ("agentline_calls_active", "Calls in progress (ringing, answering or active)."),
    ("agentline_calls_total", "Calls ended, by direction, route, who hung up and whether they were answered."),
    ("agentline_call_setup_seconds", "Time from the INVITE to the 200 OK (sent for inbound calls, received for outbound)."),
    ("agentline_registrations_active", "Phones registered to the local registrar."),
    ("agentline_trunk_registered", "1 when the trunk is registered (or IP-authenticated), 0 otherwise."),
    ("agentline_trunk_registration_failures_total", "Failed REGISTER attempts to a trunk."),
    ("agentline_rtp_packets_received_total", "RTP packets received from callers."),
    ("agentline_rtp_packets_sent_total", "RTP packets sent to callers."),
    ("agentline_rtp_packets_lost_total", "RTP packets callers sent that never arrived."),
    ("agentline_rtp_dropped_total", "RTP/RTCP datagrams dropped, by reason: source (not the call's latched or signalled address), ssrc (another SSRC unsignalled), malformed, oversized, srtp_auth."),
    ("agentline_rtp_jitter_seconds", "Interarrival jitter of callers' streams, sampled every second per call."),
    ("agentline_call_mos", "E-model MOS of each call with media, at its end."),
    ("agentline_jitter_buffer_delay_seconds", "Jitter-buffer added delay, sampled every second per call."),
    ("agentline_jitter_buffer_concealed_total", "Frames the jitter buffer concealed (lost or late audio)."),
    ("agentline_jitter_buffer_late_total", "Packets the jitter buffer dropped because their playout time had passed."),
    ("agentline_playout_underruns_total", "Frames with no agent audio queued while the agent was speaking."),
    ("agentline_playout_capped_frames_total", "Agent audio (20 ms frames) dropped because the call already queued a remote provider's playout cap (30 s): a provider sending faster than real time."),
    ("agentline_turn_latency_seconds", "Agent turn latency by stage: asr, llm_first_token, tts_first_byte and total (caller end of speech to first agent audio)."),
    ("agentline_provider_errors_total", "Agent provider errors: kind error (the session goes on) or failed (the provider is replaced or the call ends)."),
    ("agentline_provider_failovers_total", "Times a fallback agent took over a call."),
    ("agentline_circuit_breaker_open", "1 while a provider's circuit breaker is open (skipped for new calls)."),
    ("agentline_circuit_breakers_open", "Providers whose circuit breaker is open."),
    ("agentline_webhook_failures_total", "Webhooks not delivered (after retries) or call_initiated answers missing."),
    ("agentline_backchannels_total", "Short caller speech over the agent (under the route's barge_in_min_ms) that did not interrupt it."),
    ("agentline_amd_results_total", "Answering-machine detection results on outbound calls: human, machine, notsure, beep, greeting_ended."),
    ("agentline_overloaded", "1 while new calls are refused for overload ([sip] max_cpu / max_media_lag_ms)."),
    ("agentline_cpu_share", "This process's CPU over the last half second, as a share of all cores."),
    ("agentline_media_lag_seconds", "Mean lateness of the calls' media ticks over the last half second."),
    ("agentline_calls_refused_overload_total", "New calls refused with 503 (or POST /calls refused) for overload."),
    ("agentline_security_bans_total", "SIP sources banned ([security]: rate, auth_failures, scanner)."),
    ("agentline_security_dropped_total", "SIP requests dropped or refused at the edge, by reason: banned, rate, scanner, calls_per_source, calls_per_user."),
    ("agentline_security_banned_sources", "SIP sources banned now."),
    ("agentline_recording_dropped_frames_total", "Call recording frames (20 ms) dropped because the disk writer fell behind."),
    ("agentline_log_lines_dropped_total", "Log lines not written: stderr is a closed pipe, or its reader fell behind."),
    ("agentline_tcp_connections_refused_total", "SIP TCP connections closed at once: the source already held [security] max_tcp_per_source."),
    ("agentline_tcp_unauthenticated_closed_total", "SIP TCP connections closed for carrying no authenticated request within [security] tcp_auth_timeout_s."),
    ("agentline_sip_rejected_total", "SIP messages refused by sanity checks, by reason: version (not SIP/2.0: 505), sdp_address (multicast, broadcast or reserved media address: 488), too_large_udp (datagram over security.max_message_bytes: dropped)."),
    ("agentline_tcp_accept_errors_total", "Failed accepts on the SIP TCP listener (EMFILE, ENFILE, ...); each backs off 100 ms."),
];

/// Turn-latency stages, initialised to zero so dashboards see them at once.
pub const TURN_STAGES: &[&str] = &["asr", "llm_first_token", "tts_first_byte", "total"];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// How often histogram samples are folded into their buckets between scrapes.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// The process's Prometheus handle: the recorder is built and installed as
/// the global `metrics` recorder on first use. Several servers in one
/// process (tests) share it; if another recorder was installed first, ours
/// still renders its own (scrape-time) metrics and says so in the log.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        // Only an empty bucket list is refused, and ours are constants.
        let builder = with_buckets().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "histogram buckets refused: summaries instead");
            PrometheusBuilder::new()
        });
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!(
                "a metrics recorder was already installed: /metrics shows only scrape-time values"
            );
        }
        describe();
        // Histogram samples wait in the recorder until drained; without a
        // scraper they would pile up (two per call per second), so drain
        // them into the buckets on a clock of our own.
        let upkeep = handle.clone();
        let spawned = std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || loop {
                std::thread::sleep(UPKEEP_EVERY);
                upkeep.run_upkeep();
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "no metrics upkeep thread: histograms drain only when scraped");
        }
        handle
    })
}

fn with_buckets() -> Result<PrometheusBuilder, metrics_exporter_prometheus::BuildError> {
    let mut b = PrometheusBuilder::new();
    for (name, buckets) in BUCKETS {
        b = b.set_buckets_for_metric(Matcher::Full((*name).to_string()), buckets)?;
    }
    Ok(b)
}

/// Help text for every metric, and zero series for the ones whose labels are
/// known up front, so a fresh server exposes them before the first event.
fn describe() {
    for (name, help) in DESCRIPTIONS {
        let kind = BUCKETS.iter().any(|(n, _)| n == name);
        if kind {
            metrics::describe_histogram!(*name, *help);
        } else if name.ends_with("_total") {
            metrics::describe_counter!(*name, *help);
        } else {
            metrics::describe_gauge!(*name, *help);
        }
    }
    for stage in TURN_STAGES {
        // Registering the handle is enough: the series renders at zero.
        let _ = metrics::histogram!("agentline_turn_latency_seconds", "stage" => *stage);
    }
    for reason in crate::sip::call_metrics::DROP_REASONS {
        metrics::counter!("agentline_rtp_dropped_total", "reason" => reason).increment(0);
    }
    for r in crate::sip::sanity::RejectReason::ALL {
        metrics::counter!(crate::sip::sanity::REJECTED_METRIC, "reason" => r.as_str()).increment(0);
    }
    for kind in ["error", "failed"] {
        metrics::counter!("agentline_provider_errors_total", "kind" => kind).increment(0);
    }
    for dir in ["inbound", "outbound"] {
        let _ = metrics::histogram!("agentline_call_setup_seconds", "direction" => dir);
    }
    for name in [
        "agentline_rtp_packets_received_total",
        "agentline_rtp_packets_sent_total",
        "agentline_rtp_packets_lost_total",
        "agentline_jitter_buffer_concealed_total",
        "agentline_jitter_buffer_late_total",
        "agentline_playout_underruns_total",
        "agentline_playout_capped_frames_total",
        "agentline_provider_failovers_total",
        "agentline_webhook_failures_total",
        "agentline_log_lines_dropped_total",
    ] {
        metrics::counter!(name).increment(0);
    }
    for name in [
        "agentline_call_mos",
        "agentline_rtp_jitter_seconds",
        "agentline_jitter_buffer_delay_seconds",
    ] {
        let _ = metrics::histogram!(name);
    }
}

/// `GET /metrics` (no authentication: the exposition holds no secrets).
pub async fn scrape(State(s): State<ApiState>) -> impl IntoResponse {
    let handle = handle();
    let shared = &s.sip.shared;
    metrics::gauge!("agentline_calls_active").set(shared.calls.len() as f64);
    metrics::gauge!("agentline_registrations_active").set(s.sip.registration_count() as f64);
    for t in shared.trunks.snapshot() {
        use crate::sip::trunk::TrunkState;
        let up = matches!(t.state, TrunkState::Registered | TrunkState::Static);
        metrics::gauge!("agentline_trunk_registered", "trunk" => t.name.clone()).set(if up {
            1.0
        } else {
            0.0
        });
        // Registers the series at 0 for trunks that never failed.
        metrics::counter!("agentline_trunk_registration_failures_total", "trunk" => t.name)
            .increment(0);
    }
    let breakers = shared.breakers.open_now(Instant::now());
    let open = breakers.iter().filter(|(_, open)| *open).count();
    for (provider, is_open) in breakers {
        metrics::gauge!("agentline_circuit_breaker_open", "provider" => provider_label(&provider))
            .set(if is_open { 1.0 } else { 0.0 });
    }
    metrics::gauge!("agentline_circuit_breakers_open").set(open as f64);
    let ov = &shared.overload;
    let f = ov.last();
    metrics::gauge!("agentline_overloaded").set(if ov.overloaded() { 1.0 } else { 0.0 });
    metrics::gauge!("agentline_cpu_share").set(f.cpu);
    metrics::gauge!("agentline_media_lag_seconds").set(f.media_lag_ms / 1000.0);
    metrics::counter!("agentline_calls_refused_overload_total")
        .absolute(ov.rejected.load(std::sync::atomic::Ordering::Relaxed));
    {
        let g = shared.guard.lock();
        metrics::counter!("agentline_security_bans_total").absolute(g.bans_total());
        for r in crate::sip::guard::DropReason::ALL {
            metrics::counter!("agentline_security_dropped_total", "reason" => r.as_str())
                .absolute(g.dropped(r));
        }
        metrics::gauge!("agentline_security_banned_sources")
            .set(g.banned_sources(Instant::now()) as f64);
    }
    let mut body = handle.render();
    body.push_str(&process_text(&ProcessStats::read()));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
}

/// A breaker's key (`kind:url`) without what a URL may carry that is not
/// for an unauthenticated page: user info, query and fragment.
fn provider_label(key: &str) -> String {
    let key = key.split(['?', '#']).next().unwrap_or(key);
    match key.find("://") {
        Some(i) => {
            let (scheme, rest) = key.split_at(i + 3);
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            format!("{scheme}{host}{path}")
        }
        None => key.to_string(),
    }
}

/// What `/proc/self` says about this process; `None` where it cannot be read
/// (not Linux, or a hardened `/proc`).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: Option<f64>,
    pub resident_bytes: Option<u64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
}

impl ProcessStats {
    pub fn read() -> ProcessStats {
        let read = |p: &str| std::fs::read_to_string(p).ok();
        ProcessStats {
            cpu_seconds: crate::sip::overload::process_cpu_seconds(),
            resident_bytes: read("/proc/self/status").and_then(|s| resident_bytes(&s)),
            open_fds: std::fs::read_dir("/proc/self/fd")
                .ok()
                .map(|d| d.count() as u64),
            max_fds: read("/proc/self/limits").and_then(|s| max_open_files(&s)),
        }
    }
}

/// `VmRSS` from `/proc/self/status`, in bytes.
fn resident_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut parts = line["VmRSS:".len()..].split_whitespace();
    let kb: u64 = parts.next()?.parse().ok()?;
    (parts.next()? == "kB").then_some(kb * 1024)
}

/// The soft limit of `Max open files` from `/proc/self/limits`.
fn max_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The process metrics in the text format (the recorder has no float
/// counter for CPU seconds, and these are read, not recorded).
fn process_text(p: &ProcessStats) -> String {
    let mut out = String::new();
    let mut put = |name: &str, kind: &str, help: &str, value: Option<String>| {
        if let Some(v) = value {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n\n"
            ));
        }
    };
    put(
        "agentline_process_cpu_seconds_total",
        "counter",
        "User and system CPU time of the process, in seconds.",
        p.cpu_seconds.map(|v| format!("{v:.2}")),
    );
    put(
        "agentline_process_resident_memory_bytes",
        "gauge",
        "Resident memory of the process, in bytes.",
        p.resident_bytes.map(|v| v.to_string()),
    );
    put(
        "agentline_process_open_fds",
        "gauge",
        "Open file descriptors of the process.",
        p.open_fds.map(|v| v.to_string()),
    );
    put(
        "agentline_process_max_fds",
        "gauge",
        "The process's limit on open file descriptors.",
        p.max_fds.map(|v| v.to_string()),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_label_drops_credentials_and_query() {
        assert_eq!(
            provider_label("openai_compat:https://user:secret@api.example/v1?key=sk-1#x"),
            "openai_compat:https://api.example/v1"
        );
        assert_eq!(
            provider_label("avr_sts:ws://10.0.0.5:9000"),
            "avr_sts:ws://10.0.0.5:9000"
        );
        assert_eq!(
            provider_label("audiosocket:127.0.0.1:9092"),
            "audiosocket:127.0.0.1:9092"
        );
    }

    #[test]
    fn resident_memory_is_vmrss_in_bytes() {
        let status = "Name:\tagentline\nVmPeak:\t  99999 kB\nVmRSS:\t   12345 kB\nThreads:\t9\n";
        assert_eq!(resident_bytes(status), Some(12345 * 1024));
        assert_eq!(resident_bytes("Name:\tx\n"), None);
        assert_eq!(resident_bytes("VmRSS:\t 12 pages\n"), None);
    }

    #[test]
    fn max_fds_is_the_soft_limit() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             63448                63448                processes \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(max_open_files(limits), Some(1024));
        assert_eq!(max_open_files("Max processes 1 1 processes\n"), None);
    }

    #[test]
    fn this_process_is_read_from_proc() {
        let p = ProcessStats::read();
        assert!(p.resident_bytes.is_some_and(|b| b > 1024 * 1024), "{p:?}");
        assert!(p.open_fds.is_some_and(|n| n >= 3), "{p:?}");
        assert!(p.cpu_seconds.is_some(), "{p:?}");
        let text = process_text(&p);
        for name in [
            "agentline_process_cpu_seconds_total",
            "agentline_process_resident_memory_bytes",
            "agentline_process_open_fds",
        ] {
            assert!(text.contains(&format!("# TYPE {name} ")), "{text}");
            assert!(text.contains(&format!("\n{name} ")), "{text}");
        }
    }

    #[test]
    fn recorder_exports_described_metrics_with_zero_series() {
        let text = handle().render();
        for stage in TURN_STAGES {
            assert!(
                text.contains(&format!(
                    "agentline_turn_latency_seconds_count{{stage=\"{stage}\"}}"
                )),
                "{text}"
            );
        }
        assert!(
            text.contains("# HELP agentline_webhook_failures_total "),
            "{text}"
        );
        assert!(
            text.contains("# TYPE agentline_call_mos histogram"),
            "{text}"
        );
        // A second call gives the same handle (several servers per process).
        assert!(std::ptr::eq(handle(), handle()));
    }
}
