//! Media address sanity: only unicast addresses are media addresses.
//!
//! A `c=` (session or media level) or `a=rtcp` address that is multicast,
//! broadcast or reserved would have us send RTP where it fans out or goes
//! nowhere; `0.0.0.0` / `::` is RFC 2543-style hold (we send nothing),
//! which only a re-offer may use. The SIP edge (`sip::sanity`) refuses such
//! offers with a 488 and a Warning; offer/answer ([`super::negotiate_offer`],
//! [`super::accept_answer`]) refuses them too, so that no path (a re-INVITE,
//! the answer in an ACK or in a 200 to our INVITE) ever sends RTP there.

use std::net::{IpAddr, Ipv4Addr};

use super::{MediaDescription, SessionDescription};

/// What is wrong with a media address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressKind {
    Multicast,
    Broadcast,
    /// `0.0.0.0` / `::`: hold in a re-offer, nothing in an initial one.
    Unspecified,
    /// 0.0.0.0/8 (other than 0.0.0.0) and 240.0.0.0/4.
    Reserved,
}

impl AddressKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AddressKind::Multicast => "multicast",
            AddressKind::Broadcast => "broadcast",
            AddressKind::Unspecified => "unspecified",
            AddressKind::Reserved => "reserved",
        }
    }
}

/// A media address an offer or answer may not carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{field} address {addr} is {}: only unicast media is taken", kind.as_str())]
pub struct BadAddress {
    /// `c=` or `a=rtcp`.
    pub field: &'static str,
    pub addr: IpAddr,
    pub kind: AddressKind,
}

/// What kind of unusable address `ip` is, or `None` for a unicast one.
pub fn classify(ip: IpAddr) -> Option<AddressKind> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => {
            if v6.is_unspecified() {
                Some(AddressKind::Unspecified)
            } else if v6.is_multicast() {
                Some(AddressKind::Multicast)
            } else if let Some(mapped) = v6.to_ipv4_mapped() {
                // ::ffff:a.b.c.d is judged as a.b.c.d (its 0.0.0.0 is no
                // hold marker: reserved).
                classify_v4(mapped).map(|k| match k {
                    AddressKind::Unspecified => AddressKind::Reserved,
                    k => k,
                })
            } else {
                None
            }
        }
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<AddressKind> {
    let first = ip.octets()[0];
    if ip.is_unspecified() {
        Some(AddressKind::Unspecified)
    } else if ip.is_broadcast() {
        Some(AddressKind::Broadcast)
    } else if ip.is_multicast() {
        Some(AddressKind::Multicast)
    } else if first == 0 || first >= 240 {
        Some(AddressKind::Reserved)
    } else {
        None
    }
}

/// Judges the addresses of media stream `m` of `sd` (its `c=`, else the
/// session's, and its `a=rtcp` address). `hold_ok`: `0.0.0.0` / `::`
/// passes (hold).
pub fn check_media(
    sd: &SessionDescription,
    m: &MediaDescription,
    hold_ok: bool,
) -> Result<(), BadAddress> {
    let judge = |field: &'static str, addr: IpAddr| match classify(addr) {
        None => Ok(()),
        Some(AddressKind::Unspecified) if hold_ok => Ok(()),
        Some(kind) => Err(BadAddress { field, addr, kind }),
    };
    if let Some(addr) = m.connection.or(sd.connection) {
        judge("c=", addr)?;
    }
    if let Some((_, Some(addr))) = m.rtcp {
        judge("a=rtcp", addr)?;
    }
    Ok(())
}
