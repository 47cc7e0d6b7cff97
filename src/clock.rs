//! Wall-clock time as the records and webhooks write it. The media and
//! call cores take `now` as an input instead; only edges read this.

/// Milliseconds since the Unix epoch (0 if the clock is before it): the
/// timestamps of calls, transcripts and webhooks.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
