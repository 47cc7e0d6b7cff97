//! Signalling: transports and dispatch ([`server`]), digest auth
//! ([`digest`], [`auth`]), the registrar's location store ([`registrar`]),
//! RTP/RTCP sockets and port allocation ([`ports`]), and the per-call task
//! ([`call`]). rsipstack carries the transactions and
//! dialogs; this module adds what it does not have.
pub mod amd;
pub mod auth;
pub mod barge;
pub mod call;
pub mod call_metrics;
pub mod core;
pub mod digest;
pub mod edge;
#[doc(hidden)]
pub mod fuzz_entry;
pub mod guard;
pub mod message_size;
pub mod overload;
pub mod ports;
pub mod recorder;
pub mod registrar;
pub mod reload;
pub mod rtp_socket;
pub mod sanity;
pub mod server;
pub mod shared;
pub mod tcp_listener;
pub mod timer;
pub mod trunk;
pub mod webrtc;
