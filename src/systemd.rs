//! systemd integration (`Type=notify`): `READY=1` once every listener is up,
//! `STATUS=` with the active call count, `WATCHDOG=1` while the runtime
//! turns, `STOPPING=1` when the drain starts. Every message is a no-op when
//! `NOTIFY_SOCKET` is unset (not run by systemd).

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::calls::CallRegistry;

/// How often the status task looks at the call count.
const STATUS_EVERY: Duration = Duration::from_secs(2);

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        debug!(error = %e, "sd_notify failed");
    }
}

/// The `STATUS=` text: what the server does and how many calls are up.
pub fn status_text(calls: usize, draining: bool) -> String {
    let what = if draining { "draining" } else { "ready" };
    format!("{what}: {calls} active calls")
}

/// Startup is over: every listener is bound and serving.
pub fn ready(calls: &CallRegistry) {
    send(&[
        NotifyState::Ready,
        NotifyState::Status(&status_text(calls.len(), false)),
    ]);
}

/// Shutdown has started (sent before the drain).
pub fn stopping(calls: &CallRegistry) {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status(&status_text(calls.len(), true)),
    ]);
}

/// Spawns, on the calling (SIP/media) runtime, the watchdog pings at half of
/// `WATCHDOG_USEC` (when systemd asks for a watchdog for this process) and
/// the `STATUS=` updates, until `stop`. The pings come from a timer on this
/// runtime: when the runtime is starved or stuck, they stop and systemd
/// restarts the service.
pub fn spawn(calls: CallRegistry, draining: CancellationToken, stop: CancellationToken) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Some(timeout) = sd_notify::watchdog_enabled() {
        let every = (timeout / 2).max(Duration::from_millis(100));
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => send(&[NotifyState::Watchdog]),
                }
            }
        });
    }
    tokio::spawn(async move {
        let mut last = String::new();
        let mut tick = tokio::time::interval(STATUS_EVERY);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let text = status_text(calls.len(), draining.is_cancelled());
            if text != last {
                send(&[NotifyState::Status(&text)]);
                last = text;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_the_call_count_and_the_state() {
        assert_eq!(status_text(3, false), "ready: 3 active calls");
        assert_eq!(status_text(0, true), "draining: 0 active calls");
    }
}
