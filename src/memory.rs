//! Returning freed heap to the operating system.
//!
//! glibc's malloc keeps what a burst of work freed in its arenas: a
//! fuzzed-message flood (thousands of parsed and dropped SIP messages a
//! second, each on whichever worker thread's arena) raised the server's
//! RSS from 14 MB to 290-447 MB and it never came down (issue 14). The
//! memory is free, only not given back: the top of an arena is trimmed by
//! `free` itself, but the holes below it and the other threads' arenas
//! are returned only by `malloc_trim`. [`spawn_trim`] calls it every
//! [`TRIM_EVERY`] on a blocking thread, so RSS follows the live heap
//! after a burst; with it the fuzz flood ends near the idle RSS (see
//! `tests/fuzz_memory.rs`).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How often freed heap is handed back.
pub const TRIM_EVERY: Duration = Duration::from_secs(10);

/// `AGENTLINE_MALLOC_TRIM_S`: seconds between trims instead of
/// [`TRIM_EVERY`]; `0` turns trimming off (to measure what it saves).
pub const TRIM_ENV: &str = "AGENTLINE_MALLOC_TRIM_S";

/// The interval [`spawn_trim`] uses: [`TRIM_ENV`] if it is a number
/// (`None` for 0: off), else [`TRIM_EVERY`].
pub fn trim_interval(env: Option<&str>) -> Option<Duration> {
    match env.and_then(|v| v.trim().parse::<u64>().ok()) {
        Some(0) => None,
        Some(s) => Some(Duration::from_secs(s)),
        None => Some(TRIM_EVERY),
    }
}

/// Hands the allocator's free memory back to the system (glibc
/// `malloc_trim(0)`); true when some was released. A no-op elsewhere.
pub fn trim() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim takes no pointers and only walks glibc's own
        // arenas under their locks; it is safe to call from any thread at
        // any time, concurrently with malloc and free.
        #[allow(unsafe_code)]
        let released = unsafe { libc::malloc_trim(0) };
        released == 1
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Calls [`trim`] every [`TRIM_EVERY`] (see [`TRIM_ENV`]) until `stop`
/// fires. Each trim runs on the blocking pool: walking the arenas takes a
/// few milliseconds when there is much to release, and must not hold up a
/// media tick.
pub fn spawn_trim(stop: CancellationToken) -> Option<tokio::task::JoinHandle<()>> {
    let Some(period) = trim_interval(std::env::var(TRIM_ENV).ok().as_deref()) else {
        tracing::info!("{TRIM_ENV}=0: freed heap is not handed back to the system");
        return None;
    };
    Some(tokio::spawn(async move {
        let mut every = tokio::time::interval(period);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = every.tick() => {}
            }
            let _ = tokio::task::spawn_blocking(trim).await;
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interval_comes_from_the_environment() {
        assert_eq!(trim_interval(None), Some(TRIM_EVERY));
        assert_eq!(trim_interval(Some("0")), None);
        assert_eq!(trim_interval(Some(" 3 ")), Some(Duration::from_secs(3)));
        assert_eq!(trim_interval(Some("often")), Some(TRIM_EVERY));
    }

    #[test]
    fn trim_returns_a_freed_burst() {
        // Many small blocks, freed: glibc keeps them until a trim. On
        // other platforms trim() does nothing and says so.
        // A block allocated after them keeps `free` from trimming the
        // top of the heap itself.
        let blocks: Vec<Vec<u8>> = (0..20_000).map(|i| vec![i as u8; 512]).collect();
        let fence = vec![1u8; 512];
        drop(blocks);
        let released = trim();
        assert_eq!(
            released,
            cfg!(all(target_os = "linux", target_env = "gnu")),
            "malloc_trim after freeing ~10 MB"
        );
        assert_eq!(fence[0], 1);
    }
}
