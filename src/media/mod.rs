//! Per-call media, sans-IO: RTP parsing, G.711, DTMF, playout and the call's
//! media state machine ([`session::Session`]). Only the call task owns sockets.
//! The bottom layer: nothing here imports from above (`sdp`, `config`,
//! `agent`, `sip`, ...), and nothing here opens a socket.
pub mod codec;
pub mod dsp;
pub mod dtmf;
pub mod g711;
pub mod jitter;
pub mod pcm;
pub mod plc;
pub mod resample;
pub mod rtcp;
pub mod rtp;
pub mod session;
pub mod srtp;
pub mod wav;
