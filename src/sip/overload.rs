//! Overload control: past capacity, new calls are refused (503 with
//! Retry-After) instead of breaking everyone's audio at once.
//!
//! Two signals, judged every [`WINDOW`]: this process's CPU as a share of
//! the machine's cores (`[sip] max_cpu`), and how late the calls' media
//! ticks ran on average (`[sip] max_media_lag_ms`: the cores may be busy
//! with something else). Calls report each tick's lateness with one atomic
//! add ([`Overload::tick_lag`]); a sampler task reads `/proc/self/stat` and
//! decides ([`Judge::window`], sans-IO, tested with made-up figures).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::{info, warn};

/// How often the sampler judges.
pub const WINDOW: Duration = Duration::from_millis(500);
/// Ticks needed in a window before their lateness counts (a lone late
/// tick of one call is no overload).
const MIN_TICKS: u64 = 25;
/// Back under a ceiling by this share of it before calls are taken again
/// (0.85 -> 0.80).
const HYSTERESIS: f64 = 0.06;

/// `sysconf(_SC_CLK_TCK)` is 100 on every Linux architecture we build for;
/// reading it would need libc (and `unsafe`) for a constant.
const CLOCK_TICKS_PER_S: f64 = 100.0;

/// utime + stime from `/proc/self/stat`, in seconds. The command name (field
/// 2) may hold spaces and parentheses, so fields are counted after its last `)`.
pub fn cpu_seconds(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / CLOCK_TICKS_PER_S)
}

/// This process's CPU seconds so far, where `/proc` says.
pub fn process_cpu_seconds() -> Option<f64> {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| cpu_seconds(&s))
}

/// The ceilings, from `[sip]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Share of all cores (0-1].
    pub max_cpu: f64,
    /// Mean lateness of media ticks, ms.
    pub max_media_lag_ms: f64,
}

/// One window's figures.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Figures {
    pub cpu: f64,
    pub media_lag_ms: f64,
    pub ticks: u64,
}

/// The decision, from one window to the next.
#[derive(Debug, Default)]
pub struct Judge {
    overloaded: bool,
}

impl Judge {
    /// Overloaded after this window? Over a ceiling turns it on; it goes off
    /// once both are below their ceilings by [`HYSTERESIS`] of them.
    pub fn window(&mut self, f: Figures, limits: Limits) -> bool {
        let lag_counts = f.ticks >= MIN_TICKS;
        let over =
            f.cpu > limits.max_cpu || (lag_counts && f.media_lag_ms > limits.max_media_lag_ms);
        let clear = f.cpu < limits.max_cpu * (1.0 - HYSTERESIS)
            && (!lag_counts || f.media_lag_ms < limits.max_media_lag_ms * (1.0 - HYSTERESIS));
        if over {
            self.overloaded = true;
        } else if clear {
            self.overloaded = false;
        }
        self.overloaded
    }
}

/// Shared by the calls, admission, the sampler and the API.
#[derive(Debug, Default)]
pub struct Overload {
    overloaded: AtomicBool,
    lag_us: AtomicU64,
    ticks: AtomicU64,
    /// The last window's figures (for /health and /metrics).
    last: Mutex<Figures>,
    /// Calls refused for overload since start.
    pub rejected: AtomicU64,
}

impl Overload {
    /// A call's media tick ran `late` after its deadline.
    pub fn tick_lag(&self, late: Duration) {
        self.lag_us
            .fetch_add(late.as_micros() as u64, Ordering::Relaxed);
        self.ticks.fetch_add(1, Ordering::Relaxed);
    }

    pub fn overloaded(&self) -> bool {
        self.overloaded.load(Ordering::Relaxed)
    }

    /// A new call is refused: counted.
    pub fn refused(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }

    pub fn last(&self) -> Figures {
        *self.last.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the window's media ticks (their count and mean lateness).
    fn take_lag(&self) -> (u64, f64) {
        let us = self.lag_us.swap(0, Ordering::Relaxed);
        let n = self.ticks.swap(0, Ordering::Relaxed);
        (
            n,
            if n == 0 {
                0.0
            } else {
                us as f64 / n as f64 / 1000.0
            },
        )
    }

    fn set(&self, f: Figures, overloaded: bool) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = f;
        let was = self.overloaded.swap(overloaded, Ordering::Relaxed);
        if overloaded && !was {
            warn!(
                cpu = f.cpu,
                media_lag_ms = f.media_lag_ms,
                "overloaded: new calls get 503"
            );
        } else if was && !overloaded {
            info!(
                cpu = f.cpu,
                media_lag_ms = f.media_lag_ms,
                "no longer overloaded"
            );
        }
    }
}

/// Judges every [`WINDOW`] until `stop`; `limits` reads the ceilings in
/// force (a reload may change them).
pub async fn run(
    overload: std::sync::Arc<Overload>,
    limits: impl Fn() -> Limits,
    stop: tokio_util::sync::CancellationToken,
) {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as f64;
    let mut judge = Judge::default();
    let mut prev = (Instant::now(), process_cpu_seconds());
    loop {
        tokio::select! {
            _ = tokio::time::sleep(WINDOW) => {}
            _ = stop.cancelled() => return,
        }
        let now = (Instant::now(), process_cpu_seconds());
        let wall = now.0.duration_since(prev.0).as_secs_f64();
        let cpu = match (prev.1, now.1) {
            (Some(a), Some(b)) if wall > 0.0 => (b - a) / wall / cores,
            _ => 0.0,
        };
        prev = now;
        let (ticks, media_lag_ms) = overload.take_lag();
        let f = Figures {
            cpu,
            media_lag_ms,
            ticks,
        };
        let on = judge.window(f, limits());
        overload.set(f, on);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_cpu: 0.85,
        max_media_lag_ms: 40.0,
    };

    fn fig(cpu: f64, lag: f64, ticks: u64) -> Figures {
        Figures {
            cpu,
            media_lag_ms: lag,
            ticks,
        }
    }

    #[test]
    fn cpu_over_the_ceiling_refuses_until_it_is_clearly_back_under() {
        let mut j = Judge::default();
        assert!(!j.window(fig(0.5, 1.0, 5000), LIMITS));
        assert!(j.window(fig(0.9, 1.0, 5000), LIMITS));
        // Just under the ceiling is not enough to take calls again.
        assert!(j.window(fig(0.83, 1.0, 5000), LIMITS));
        assert!(!j.window(fig(0.79, 1.0, 5000), LIMITS));
    }

    #[test]
    fn late_media_ticks_refuse_but_a_few_late_ticks_do_not() {
        let mut j = Judge::default();
        // Another process took the cores: our CPU is low, our ticks late.
        assert!(j.window(fig(0.2, 60.0, 5000), LIMITS));
        assert!(j.window(fig(0.2, 39.0, 5000), LIMITS));
        assert!(!j.window(fig(0.2, 5.0, 5000), LIMITS));
        // One call's single late tick is no overload.
        assert!(!j.window(fig(0.01, 300.0, 3), LIMITS));
    }

    #[test]
    fn lateness_is_averaged_over_the_window_and_reset() {
        let o = Overload::default();
        for ms in [10, 30, 20] {
            o.tick_lag(Duration::from_millis(ms));
        }
        assert_eq!(o.take_lag(), (3, 20.0));
        assert_eq!(o.take_lag(), (0, 0.0));
    }

    #[test]
    fn cpu_seconds_counts_fields_after_the_command_name() {
        // A command name with spaces and a `)` must not shift the fields.
        let stat = "4242 (agent line) x) S 1 4242 4242 0 -1 4194560 2000 0 0 0 \
                    350 150 0 0 20 0 9 0 100 1000000 500 18446744073709551615";
        assert_eq!(cpu_seconds(stat), Some(5.0));
        assert_eq!(cpu_seconds("4242 (agentline) S 1 2"), None);
        assert_eq!(cpu_seconds("no parenthesis"), None);
    }
}
