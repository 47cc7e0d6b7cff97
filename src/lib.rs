//! agentline: a SIP/RTP media server that puts AI voice agents straight onto
//! the phone network. See `DESIGN.md` for the shape; `server::run` starts it.
pub mod agent;
pub mod calls;
pub mod config;
pub mod control;
pub mod media;
pub mod sdp;
pub mod server;
pub mod sip;
pub mod tls;

/// Milliseconds since the Unix epoch (0 if the clock is before it): the
/// timestamps of calls, transcripts and webhooks.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
