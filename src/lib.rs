//! agentline: a SIP/RTP media server that puts AI voice agents straight onto
//! the phone network. See `DESIGN.md` for the shape; `server::run` starts it.
pub mod agent;
pub mod calls;
pub mod clock;
pub mod config;
pub mod control;
pub mod logging;
pub mod media;
pub mod memory;
pub mod sdp;
pub mod server;
pub mod sip;
pub mod store;
pub mod systemd;
pub mod tls;
