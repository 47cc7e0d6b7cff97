//! SDP (RFC 4566) parsing and audio offer/answer (RFC 3264).
//!
//! This module owns session descriptions: turning a peer's SDP text into
//! typed values, deciding what an audio call uses (codec, payload types,
//! packetisation time, addresses, direction), and rendering our own offers
//! and answers. It is sans-IO: no sockets, no clock; session ids and
//! versions come from the caller.
//!
//! Scope: one audio stream over RTP/AVP, or RTP/SAVP (and RTP/AVP with
//! a=crypto) with SDES keys (RFC 4568) when the caller allows SRTP. Other m= lines in an offer
//! are rejected in the answer (port 0) rather than dropped, because
//! RFC 3264 §6 requires the answer to mirror the offer's m= lines.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

mod address;
pub use address::{check_media, classify, AddressKind, BadAddress};

/// The codec and direction enums are media's (the layer below); SDP adds
/// their a=rtpmap form ([`RtpMap::of`], [`RtpMap::codec`]).
pub use crate::media::codec::Codec;
pub use crate::media::session::Direction;

/// Payload type we put telephone-event (RFC 4733 DTMF) on in our offers;
/// 101 is what most SIP stacks use, which makes traces easier to read.
pub const TELEPHONE_EVENT_PT: u8 = 101;

/// First dynamic RTP payload type (RFC 3551 §3).
const FIRST_DYNAMIC_PT: u8 = 96;

/// Largest RTP payload type: the PT field is 7 bits.
const MAX_PT: u8 = 127;

/// a=ptime values outside this range are treated as absent: 0 would mean
/// no audio per packet and large values would blow up jitter buffers.
const PTIME_RANGE_MS: std::ops::RangeInclusive<u32> = 5..=200;

/// How much of an offending line an error message quotes.
const ERROR_EXCERPT_CHARS: usize = 80;

/// An `a=rtpmap:<pt> <encoding>/<clock>[/<channels>]` attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpMap {
    pub pt: u8,
    pub encoding: String,
    pub clock_rate: u32,
    pub channels: Option<u8>,
}

impl RtpMap {
    /// a=rtpmap value for `codec` on `pt`.
    pub fn of(codec: Codec, pt: u8) -> Self {
        Self {
            pt,
            encoding: codec.encoding_name().to_owned(),
            clock_rate: codec.clock_rate(),
            channels: codec.channels(),
        }
    }

    /// The codec this a=rtpmap describes: encoding name case-insensitively
    /// (RFC 4855 §3), clock rate and channel count (absent means 1).
    pub fn codec(&self) -> Option<Codec> {
        Codec::ALL.iter().copied().find(|c| {
            c.encoding_name().eq_ignore_ascii_case(&self.encoding)
                && c.clock_rate() == self.clock_rate
                && c.channels().unwrap_or(1) == self.channels.unwrap_or(1)
        })
    }

    fn parse(value: &str) -> Option<Self> {
        let (pt, rest) = value.trim().split_once(char::is_whitespace)?;
        let mut parts = rest.trim().split('/');
        let encoding = parts.next().filter(|e| !e.is_empty())?.to_owned();
        let clock_rate = parts.next()?.parse().ok()?;
        let channels = match parts.next() {
            Some(ch) => Some(ch.parse().ok()?),
            None => None,
        };
        if parts.next().is_some() {
            return None;
        }
        Some(Self {
            pt: parse_pt(pt)?,
            encoding,
            clock_rate,
            channels,
        })
    }
}

/// Renders the attribute value, e.g. `96 opus/48000/2`.
impl fmt::Display for RtpMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.pt, self.encoding, self.clock_rate)?;
        if let Some(ch) = self.channels {
            write!(f, "/{ch}")?;
        }
        Ok(())
    }
}

/// One m= section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaDescription {
    /// `audio`, `video`, `image`, ...
    pub media: String,
    /// 0 means the stream is disabled (RFC 3264 §8.2).
    pub port: u16,
    pub proto: String,
    /// Payload types, in the m= line's (preference) order. Empty for
    /// non-RTP protocols, whose formats are not payload types.
    pub formats: Vec<u8>,
    /// The m= line's format tokens as written, for every protocol.
    pub raw_formats: Vec<String>,
    /// Media-level c=; the session-level one applies when absent.
    pub connection: Option<IpAddr>,
    pub rtpmaps: Vec<RtpMap>,
    /// a=fmtp payload type and parameter text.
    pub fmtps: Vec<(u8, String)>,
    pub ptime: Option<u32>,
    pub direction: Option<Direction>,
    /// a=rtcp (RFC 3605): port and optional address.
    pub rtcp: Option<(u16, Option<IpAddr>)>,
    /// a=rtcp-mux (RFC 5761) was present.
    pub rtcp_mux: bool,
    /// a=crypto lines (RFC 4568) we can use, in offer order.
    pub crypto: Vec<SdesCrypto>,
    /// Every other attribute, without the `a=` prefix.
    pub other_attrs: Vec<String>,
}

/// One usable a=crypto line: tag, suite and the master key||salt.
#[derive(Clone, PartialEq, Eq)]
pub struct SdesCrypto {
    pub tag: u32,
    pub suite: crate::media::srtp::SrtpSuite,
    pub key: [u8; crate::media::srtp::MASTER_KEY_LEN],
}

impl fmt::Debug for SdesCrypto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Key material stays out of logs.
        write!(f, "SdesCrypto({} {})", self.tag, self.suite.name())
    }
}

impl SdesCrypto {
    /// `<tag> <suite> inline:<base64>[|lifetime]` with no MKI and no session
    /// parameters; anything else (unknown suite, MKI, UNENCRYPTED_SRTP...)
    /// is `None` and the line is skipped as unusable.
    pub fn parse(value: &str) -> Option<Self> {
        use base64::Engine as _;
        let mut parts = value.split_whitespace();
        let tag: u32 = parts.next()?.parse().ok()?;
        let suite = crate::media::srtp::SrtpSuite::from_name(parts.next()?)?;
        let key_params = parts.next()?;
        if parts.next().is_some() || key_params.contains(';') {
            return None;
        }
        let inline = key_params.strip_prefix("inline:")?;
        let mut fields = inline.split('|');
        let b64 = fields.next()?;
        for f in fields {
            // A lifetime (2^31 or a number) is fine; an MKI (n:len) is not.
            if f.contains(':') {
                return None;
            }
        }
        let raw = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
        let key = raw.try_into().ok()?;
        Some(SdesCrypto { tag, suite, key })
    }

    /// The attribute value, `<tag> <suite> inline:<base64>`.
    pub fn attr_value(&self) -> String {
        use base64::Engine as _;
        format!(
            "{} {} inline:{}",
            self.tag,
            self.suite.name(),
            base64::engine::general_purpose::STANDARD.encode(self.key)
        )
    }
}

/// Whether a call may use SRTP. SDES keys travel in the SDP, so only calls
/// signalled over TLS should allow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SrtpPolicy {
    /// Plain RTP only: RTP/SAVP offers are refused, a=crypto is ignored.
    #[default]
    Off,
    /// Answer a=crypto (RTP/SAVP, or RTP/AVP carrying crypto) with SRTP.
    Allow,
    /// Offer RTP/SAVP with crypto, and require it in the answer.
    Require,
}

impl MediaDescription {
    fn new(media: String, port: u16, proto: String) -> Self {
        Self {
            media,
            port,
            proto,
            formats: Vec::new(),
            raw_formats: Vec::new(),
            connection: None,
            rtpmaps: Vec::new(),
            fmtps: Vec::new(),
            ptime: None,
            direction: None,
            rtcp: None,
            rtcp_mux: false,
            crypto: Vec::new(),
            other_attrs: Vec::new(),
        }
    }

    pub fn rtpmap(&self, pt: u8) -> Option<&RtpMap> {
        self.rtpmaps.iter().find(|m| m.pt == pt)
    }

    pub fn fmtp(&self, pt: u8) -> Option<&str> {
        self.fmtps
            .iter()
            .find(|(p, _)| *p == pt)
            .map(|(_, params)| params.as_str())
    }

    /// The codec payload type `pt` carries here: its a=rtpmap if any, else
    /// the static assignment (dynamic types without a=rtpmap are unknown).
    pub fn codec_for(&self, pt: u8) -> Option<Codec> {
        match self.rtpmap(pt) {
            Some(map) => map.codec(),
            None if pt < FIRST_DYNAMIC_PT => Codec::from_static_pt(pt),
            None => None,
        }
    }

    fn is_rtp(&self) -> bool {
        is_rtp_proto(&self.proto)
    }

    /// How a format reads in error messages: its rtpmap, else its RFC 3551
    /// static name, else the bare number.
    fn describe_format(&self, pt: u8) -> String {
        if let Some(map) = self.rtpmap(pt) {
            return format!("{}/{}", map.encoding, map.clock_rate);
        }
        match static_pt_name(pt) {
            Some(name) => name.to_owned(),
            None => pt.to_string(),
        }
    }
}

fn is_rtp_proto(proto: &str) -> bool {
    proto.to_ascii_uppercase().contains("RTP/")
}

/// Names of RFC 3551 static audio payload types, for readable errors.
fn static_pt_name(pt: u8) -> Option<&'static str> {
    Some(match pt {
        0 => "PCMU/8000",
        3 => "GSM/8000",
        4 => "G723/8000",
        5 => "DVI4/8000",
        6 => "DVI4/16000",
        7 => "LPC/8000",
        8 => "PCMA/8000",
        9 => "G722/8000",
        10 => "L16/44100/2",
        11 => "L16/44100",
        12 => "QCELP/8000",
        13 => "CN/8000",
        14 => "MPA/90000",
        15 => "G728/8000",
        16 => "DVI4/11025",
        17 => "DVI4/22050",
        18 => "G729/8000",
        _ => return None,
    })
}

/// A parsed session description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionDescription {
    /// o= sess-id. Kept as text: RFC 4566 only says "numeric string" and
    /// some stacks exceed u64.
    pub origin_session_id: String,
    /// o= sess-version; a re-INVITE with the same version repeats the SDP.
    pub origin_session_version: String,
    /// Session-level c=.
    pub connection: Option<IpAddr>,
    /// Session-level direction attribute.
    pub direction: Option<Direction>,
    pub media: Vec<MediaDescription>,
    /// Other session-level attributes, without the `a=` prefix.
    pub other_attrs: Vec<String>,
}

/// Errors from parsing SDP text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    #[error("expected SDP to start with `v=0`, got {found:?}")]
    BadVersion { found: String },
    #[error("expected an o= line, found none")]
    MissingOrigin,
    #[error("line {line}: expected {expected}, got {found:?}")]
    Malformed {
        /// 1-based line number.
        line: usize,
        expected: &'static str,
        found: String,
    },
}

impl SessionDescription {
    /// Parses SDP text with `\r\n` or `\n` line ends.
    ///
    /// Unknown line types and unknown attributes are kept or skipped, never
    /// fatal; a missing `v=0` or `o=`, or a garbled line we rely on (o=, c=,
    /// m=, and rtpmap/fmtp/ptime/rtcp on RTP media) is an error.
    pub fn parse(text: &str) -> Result<Self, SdpError> {
        let mut lines = text
            .split('\n')
            .map(|l| l.trim_end())
            .enumerate()
            .map(|(i, l)| (i + 1, l))
            // Blank lines are not SDP but some stacks emit a trailing one.
            .filter(|(_, l)| !l.is_empty());

        match lines.next() {
            Some((_, "v=0")) => {}
            Some((_, other)) => {
                return Err(SdpError::BadVersion {
                    found: excerpt(other),
                })
            }
            None => {
                return Err(SdpError::BadVersion {
                    found: String::new(),
                })
            }
        }

        let mut origin = None;
        let mut session = SessionDescription {
            origin_session_id: String::new(),
            origin_session_version: String::new(),
            connection: None,
            direction: None,
            media: Vec::new(),
            other_attrs: Vec::new(),
        };
        let mut current: Option<MediaDescription> = None;

        for (line_no, line) in lines {
            let malformed = |expected: &'static str| SdpError::Malformed {
                line: line_no,
                expected,
                found: excerpt(line),
            };
            // RFC 4566 §5: every line is `<one letter>=<value>`; anything
            // else is not ours to judge.
            let Some((kind, value)) = line.split_once('=') else {
                continue;
            };
            match kind {
                "o" => {
                    let fields: Vec<&str> = value.split_whitespace().collect();
                    let [_user, id, version, _net, _addrtype, _addr] = fields.as_slice() else {
                        return Err(malformed(
                            "o=<username> <sess-id> <sess-version> <nettype> <addrtype> <address>",
                        ));
                    };
                    origin = Some(((*id).to_owned(), (*version).to_owned()));
                }
                "c" => {
                    let addr = parse_connection(value)
                        .ok_or_else(|| malformed("c=IN IP4|IP6 <address>"))?;
                    match &mut current {
                        Some(m) => m.connection = Some(addr),
                        None => session.connection = Some(addr),
                    }
                }
                "m" => {
                    let media = parse_media_line(value).ok_or_else(|| {
                        malformed(
                            "m=<media> <port> <proto> <fmt>... with payload types 0-127 for RTP",
                        )
                    })?;
                    if let Some(done) = current.replace(media) {
                        session.media.push(done);
                    }
                }
                "a" => {
                    let (name, attr_value) = match value.split_once(':') {
                        Some((n, v)) => (n, Some(v)),
                        None => (value, None),
                    };
                    match &mut current {
                        Some(m) => {
                            parse_media_attr(m, name, attr_value, value).map_err(malformed)?
                        }
                        None => match Direction::from_attr(name) {
                            Some(d) => session.direction = Some(d),
                            None => session.other_attrs.push(value.to_owned()),
                        },
                    }
                }
                _ => {}
            }
        }
        if let Some(done) = current {
            session.media.push(done);
        }
        let (id, version) = origin.ok_or(SdpError::MissingOrigin)?;
        session.origin_session_id = id;
        session.origin_session_version = version;
        Ok(session)
    }
}

fn excerpt(line: &str) -> String {
    line.chars().take(ERROR_EXCERPT_CHARS).collect()
}

fn parse_pt(text: &str) -> Option<u8> {
    text.parse().ok().filter(|pt| *pt <= MAX_PT)
}

/// `IN IP4 192.0.2.1` or `IN IP6 2001:db8::1`; a multicast `/ttl` suffix
/// is dropped. Host names are not resolved (no I/O here), so they fail.
fn parse_connection(value: &str) -> Option<IpAddr> {
    let mut fields = value.split_whitespace();
    let (Some(net), Some(addrtype), Some(addr), None) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return None;
    };
    if !net.eq_ignore_ascii_case("IN") {
        return None;
    }
    let addr = addr.split('/').next()?;
    let ip: IpAddr = addr.parse().ok()?;
    let family_ok = match ip {
        IpAddr::V4(_) => addrtype.eq_ignore_ascii_case("IP4"),
        IpAddr::V6(_) => addrtype.eq_ignore_ascii_case("IP6"),
    };
    family_ok.then_some(ip)
}

/// `<media> <port>[/<count>] <proto> <fmt> ...`
fn parse_media_line(value: &str) -> Option<MediaDescription> {
    let mut fields = value.split_whitespace();
    let media = fields.next()?.to_owned();
    // A port count (RFC 4566 `/<number of ports>`) is for layered
    // encodings we never use; only the base port matters.
    let port = fields.next()?.split('/').next()?.parse().ok()?;
    let proto = fields.next()?.to_owned();
    let mut m = MediaDescription::new(media, port, proto);
    m.raw_formats = fields.map(str::to_owned).collect();
    if m.is_rtp() {
        m.formats = m
            .raw_formats
            .iter()
            .map(|f| parse_pt(f))
            .collect::<Option<_>>()?;
    }
    Some(m)
}

/// Applies one media-level attribute; `Err` carries what was expected.
fn parse_media_attr(
    m: &mut MediaDescription,
    name: &str,
    value: Option<&str>,
    whole: &str,
) -> Result<(), &'static str> {
    if let Some(d) = Direction::from_attr(name) {
        m.direction = Some(d);
        return Ok(());
    }
    // Attribute grammar below is RTP's; other protocols (T.38 `udptl`,
    // BFCP...) may reuse names with other meanings, so keep them verbatim.
    if !m.is_rtp() {
        m.other_attrs.push(whole.to_owned());
        return Ok(());
    }
    match name {
        "rtpmap" => {
            let map = value
                .and_then(RtpMap::parse)
                .ok_or("a=rtpmap:<pt> <encoding>/<clock rate>[/<channels>]")?;
            m.rtpmaps.push(map);
        }
        "fmtp" => {
            const EXPECTED: &str = "a=fmtp:<pt> <parameters>";
            let value = value.ok_or(EXPECTED)?.trim();
            let (pt, params) = value.split_once(char::is_whitespace).unwrap_or((value, ""));
            let pt = parse_pt(pt).ok_or(EXPECTED)?;
            m.fmtps.push((pt, params.trim().to_owned()));
        }
        "ptime" => {
            // RFC 4566 says integer milliseconds, but some stacks write
            // `20.0`; the fraction is below anything we can packetise.
            let ms = value
                .map(str::trim)
                .map(|v| v.split_once('.').map_or(v, |(int, _)| int))
                .and_then(|v| v.parse().ok())
                .ok_or("a=ptime:<milliseconds>")?;
            m.ptime = Some(ms);
        }
        "rtcp" => {
            let rtcp = value
                .and_then(parse_rtcp_attr)
                .ok_or("a=rtcp:<port> [IN IP4|IP6 <address>]")?;
            m.rtcp = Some(rtcp);
        }
        "rtcp-mux" => m.rtcp_mux = true,
        "crypto" => match value.and_then(SdesCrypto::parse) {
            Some(c) => m.crypto.push(c),
            None => m.other_attrs.push(whole.to_owned()),
        },
        _ => m.other_attrs.push(whole.to_owned()),
    }
    Ok(())
}

/// `<port> [IN IP4 <address>]` (RFC 3605).
fn parse_rtcp_attr(value: &str) -> Option<(u16, Option<IpAddr>)> {
    let value = value.trim();
    let (port, addr) = match value.split_once(char::is_whitespace) {
        Some((port, addr)) => (port, Some(parse_connection(addr)?)),
        None => (value, None),
    };
    Some((port.parse().ok()?, addr))
}

/// What we can do, used to answer offers and to make our own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalCaps {
    /// Codecs we accept, in our preference order (used when WE offer; when
    /// answering, the offerer's order wins).
    pub codecs: Vec<Codec>,
    /// Accept / offer RFC 4733 telephone-event.
    pub telephone_event: bool,
    /// Packetisation time when the peer does not state one.
    pub ptime_ms: u32,
    pub srtp: SrtpPolicy,
}

impl Default for LocalCaps {
    fn default() -> Self {
        Self {
            codecs: vec![Codec::Pcmu, Codec::Pcma],
            telephone_event: true,
            ptime_ms: 20,
            srtp: SrtpPolicy::Off,
        }
    }
}

/// One m= line of the answer we will write, mirroring the offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaSlot {
    /// The negotiated audio stream.
    Audio,
    /// An offered stream we decline: written back with port 0 (RFC 3264
    /// §6), with the offer's media, proto and first format.
    Rejected {
        media: String,
        proto: String,
        format: String,
    },
}

/// The outcome of offer/answer for the audio stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub codec: Codec,
    /// Payload type for `codec`, as the peer numbered it.
    pub pt: u8,
    /// Payload type of telephone-event at the codec's clock rate, if both
    /// sides do it.
    pub telephone_event_pt: Option<u8>,
    pub ptime_ms: u32,
    /// Where to send RTP; `None` while the peer is on hold with c=0.0.0.0
    /// (RFC 2543 style), in which case we must not send.
    pub remote_rtp: Option<SocketAddr>,
    /// Where to send RTCP: a=rtcp if given, else RTP port + 1, else (with
    /// `rtcp_mux`) the RTP address.
    pub remote_rtcp: Option<SocketAddr>,
    /// RTCP shares the RTP port in both directions (RFC 5761): the peer
    /// offered a=rtcp-mux and our answer accepts it.
    pub rtcp_mux: bool,
    /// OUR direction.
    pub direction: Direction,
    /// The answer's m= lines in order. Empty is read as just `[Audio]`.
    pub media_slots: Vec<MediaSlot>,
    /// The peer's a=fmtp for the chosen codec (e.g. Opus `useinbandfec=1`).
    pub codec_fmtp: Option<String>,
    /// The transport profile of the audio line (`RTP/AVP` or `RTP/SAVP`),
    /// written back in the answer.
    pub proto: String,
    /// SRTP with the peer's key (what we receive) when a=crypto was agreed;
    /// our answer echoes the tag and suite with our own key.
    pub srtp: Option<SdesCrypto>,
}

/// Why an offer or answer gives us no usable audio.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NegotiationError {
    #[error("expected an m=audio line, found none")]
    NoAudio,
    #[error("expected a non-zero port on m=audio, got 0 (stream disabled)")]
    AudioDisabled,
    #[error("expected m=audio with proto RTP/AVP (or RTP/SAVP on a TLS call), got {proto}")]
    UnsupportedProto { proto: String },
    #[error("expected an a=crypto line with AES_CM_128_HMAC_SHA1_80 or _32 (no MKI) on the SRTP audio line, found none")]
    NoCommonCrypto,
    #[error("expected one of our codecs ({supported}), got {}", offered.join(" "))]
    NoCommonCodec {
        offered: Vec<String>,
        supported: String,
    },
    #[error("expected a c= line for the audio stream at media or session level, found none")]
    MissingConnection,
    /// A multicast, broadcast or reserved media address ([`check_media`]).
    #[error(transparent)]
    BadAddress(#[from] BadAddress),
}

/// Answers an offer.
///
/// The codec is the first format in the offerer's m= order that we support
/// (static payload types count without a=rtpmap; dynamic ones match by
/// rtpmap name case-insensitively and clock rate), kept on the offered
/// payload type. telephone-event is accepted on its offered payload type
/// at the codec's clock rate. ptime is the offer's, else ours. Remote
/// addresses are media c= else session c=, with the m= port; a multicast,
/// broadcast or reserved one (c= or a=rtcp) makes the stream unusable
/// ([`NegotiationError::BadAddress`]). Our direction
/// is the offer's (media, else session, else sendrecv) reversed, minus
/// sending when the offer's address is unspecified (0.0.0.0 / ::).
///
/// The first m=audio line that works is used; every other m= line becomes
/// a rejected slot. If none works, the first audio line's error is
/// returned.
pub fn negotiate_offer(
    offer: &SessionDescription,
    local: &LocalCaps,
) -> Result<Negotiated, NegotiationError> {
    let (index, mut neg) = pick_audio(offer, local, true)?;
    neg.media_slots = offer
        .media
        .iter()
        .enumerate()
        .map(|(i, m)| {
            if i == index {
                MediaSlot::Audio
            } else {
                MediaSlot::Rejected {
                    media: m.media.clone(),
                    proto: m.proto.clone(),
                    // RFC 4566 needs at least one format even on a
                    // rejected line; 0 stands in if the offer had none.
                    format: m.raw_formats.first().cloned().unwrap_or_else(|| "0".into()),
                }
            }
        })
        .collect();
    Ok(neg)
}

/// Reads the answer to an offer we made with [`build_offer`] from `local`
/// (e.g. the SDP in the ACK of a late-offer INVITE).
///
/// Same rules as [`negotiate_offer`], with the answerer's m= order deciding
/// among codecs. rtcp-mux is never the outcome since we do not offer it.
pub fn accept_answer(
    answer: &SessionDescription,
    local: &LocalCaps,
) -> Result<Negotiated, NegotiationError> {
    let (_, mut neg) = pick_audio(answer, local, false)?;
    neg.media_slots = vec![MediaSlot::Audio];
    Ok(neg)
}

fn pick_audio(
    sd: &SessionDescription,
    local: &LocalCaps,
    allow_mux: bool,
) -> Result<(usize, Negotiated), NegotiationError> {
    let mut first_error = None;
    for (i, m) in sd.media.iter().enumerate() {
        if !m.media.eq_ignore_ascii_case("audio") {
            continue;
        }
        match negotiate_stream(sd, m, local, allow_mux) {
            Ok(neg) => return Ok((i, neg)),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Err(first_error.unwrap_or(NegotiationError::NoAudio))
}

fn negotiate_stream(
    sd: &SessionDescription,
    m: &MediaDescription,
    local: &LocalCaps,
    allow_mux: bool,
) -> Result<Negotiated, NegotiationError> {
    // AVPF feedback profiles would need an answer we cannot honour.
    let savp = m.proto.eq_ignore_ascii_case("RTP/SAVP");
    if !(m.proto.eq_ignore_ascii_case("RTP/AVP") || savp && local.srtp != SrtpPolicy::Off) {
        return Err(NegotiationError::UnsupportedProto {
            proto: m.proto.clone(),
        });
    }
    let srtp = match local.srtp {
        SrtpPolicy::Off => None,
        SrtpPolicy::Allow | SrtpPolicy::Require => m.crypto.first().cloned(),
    };
    if srtp.is_none() && (savp || local.srtp == SrtpPolicy::Require) {
        return Err(NegotiationError::NoCommonCrypto);
    }
    if m.port == 0 {
        return Err(NegotiationError::AudioDisabled);
    }
    let (pt, codec) = m
        .formats
        .iter()
        .find_map(|&pt| {
            m.codec_for(pt)
                .filter(|c| local.codecs.contains(c))
                .map(|c| (pt, c))
        })
        .ok_or_else(|| NegotiationError::NoCommonCodec {
            offered: m.formats.iter().map(|&pt| m.describe_format(pt)).collect(),
            supported: local
                .codecs
                .iter()
                .map(Codec::to_string)
                .collect::<Vec<_>>()
                .join(" "),
        })?;
    let telephone_event_pt = if local.telephone_event {
        m.formats.iter().copied().find(|&pt| {
            m.rtpmap(pt).is_some_and(|map| {
                map.encoding.eq_ignore_ascii_case("telephone-event")
                    && map.clock_rate == codec.clock_rate()
            })
        })
    } else {
        None
    };
    let ptime_ms = m
        .ptime
        .filter(|p| PTIME_RANGE_MS.contains(p))
        .unwrap_or(local.ptime_ms);

    let conn = m
        .connection
        .or(sd.connection)
        .ok_or(NegotiationError::MissingConnection)?;
    // Never a remote we would fan RTP out to; 0.0.0.0 is hold (no sending).
    check_media(sd, m, true)?;
    let remote_rtp = (!conn.is_unspecified()).then(|| SocketAddr::new(conn, m.port));
    let rtcp_mux = allow_mux && m.rtcp_mux;
    let remote_rtcp = match (remote_rtp, m.rtcp) {
        (None, _) => None,
        (Some(rtp), _) if rtcp_mux => Some(rtp),
        (Some(_), Some((port, addr))) => {
            let ip = addr.unwrap_or(conn);
            (port != 0 && !ip.is_unspecified()).then(|| SocketAddr::new(ip, port))
        }
        (Some(rtp), None) => rtp
            .port()
            .checked_add(1)
            .map(|port| SocketAddr::new(rtp.ip(), port)),
    };

    let theirs = m.direction.or(sd.direction).unwrap_or_default();
    let ours = theirs.reversed();
    // With no address to send to we can only receive, whatever they said.
    let direction = Direction::from_flags(ours.sends() && remote_rtp.is_some(), ours.receives());

    Ok(Negotiated {
        codec,
        pt,
        telephone_event_pt,
        ptime_ms,
        remote_rtp,
        remote_rtcp,
        rtcp_mux,
        direction,
        media_slots: Vec::new(),
        codec_fmtp: m.fmtp(pt).map(str::to_owned),
        proto: if savp { "RTP/SAVP" } else { "RTP/AVP" }.to_string(),
        srtp,
    })
}

/// Our side of the session: where we receive RTP and the o= identifiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalMedia {
    pub ip: IpAddr,
    pub rtp_port: u16,
    pub session_id: u64,
    /// Must grow with every changed SDP we send in a dialog (RFC 3264 §8).
    pub session_version: u64,
    /// Our SRTP master key||salt, written into a=crypto when SRTP is used.
    pub srtp_key: Option<[u8; crate::media::srtp::MASTER_KEY_LEN]>,
}

/// SDP answer text (CRLF line ends) for `neg`, receiving at `local`.
pub fn build_answer(neg: &Negotiated, local: &LocalMedia) -> String {
    let mut out = session_header(local);
    let audio = AudioSection {
        payloads: vec![(neg.pt, neg.codec)],
        telephone_event_pt: neg.telephone_event_pt,
        clock_rate: neg.codec.clock_rate(),
        ptime_ms: neg.ptime_ms,
        port: local.rtp_port,
        rtcp_mux: neg.rtcp_mux,
        direction: neg.direction,
        proto: if neg.proto.is_empty() {
            "RTP/AVP".to_string()
        } else {
            neg.proto.clone()
        },
        crypto: match (&neg.srtp, local.srtp_key) {
            (Some(theirs), Some(key)) => vec![SdesCrypto {
                tag: theirs.tag,
                suite: theirs.suite,
                key,
            }],
            _ => Vec::new(),
        },
    };
    if neg.media_slots.is_empty() {
        audio.write(&mut out);
    }
    for slot in &neg.media_slots {
        match slot {
            MediaSlot::Audio => audio.write(&mut out),
            MediaSlot::Rejected {
                media,
                proto,
                format,
            } => push_line(&mut out, format_args!("m={media} 0 {proto} {format}")),
        }
    }
    out
}

/// SDP offer text (CRLF line ends): every local codec in local order,
/// telephone-event on [`TELEPHONE_EVENT_PT`] if enabled, a=ptime, a=rtcp
/// and a=sendrecv. Codecs without a static payload type get dynamic ones
/// from 96 up.
pub fn build_offer(local: &LocalCaps, media: &LocalMedia) -> String {
    let mut payloads: Vec<(u8, Codec)> = Vec::new();
    let mut next_dynamic = FIRST_DYNAMIC_PT;
    for &codec in &local.codecs {
        if payloads.iter().any(|&(_, c)| c == codec) {
            continue;
        }
        let pt = match codec.static_pt() {
            Some(pt) => pt,
            None => {
                if next_dynamic == TELEPHONE_EVENT_PT {
                    next_dynamic += 1;
                }
                // Running out of the 32 dynamic types would take 32 codecs;
                // skip the rest rather than write an invalid PT.
                if next_dynamic > MAX_PT {
                    continue;
                }
                next_dynamic += 1;
                next_dynamic - 1
            }
        };
        payloads.push((pt, codec));
    }
    let clock_rate = payloads
        .first()
        .map_or(8000, |&(_, codec)| codec.clock_rate());
    let mut out = session_header(media);
    AudioSection {
        payloads,
        telephone_event_pt: local.telephone_event.then_some(TELEPHONE_EVENT_PT),
        clock_rate,
        ptime_ms: local.ptime_ms,
        port: media.rtp_port,
        rtcp_mux: false,
        direction: Direction::SendRecv,
        proto: match (local.srtp, media.srtp_key) {
            (SrtpPolicy::Require, Some(_)) => "RTP/SAVP",
            _ => "RTP/AVP",
        }
        .to_string(),
        crypto: match (local.srtp, media.srtp_key) {
            (SrtpPolicy::Require, Some(key)) => vec![
                SdesCrypto {
                    tag: 1,
                    suite: crate::media::srtp::SrtpSuite::AesCm128HmacSha1_80,
                    key,
                },
                SdesCrypto {
                    tag: 2,
                    suite: crate::media::srtp::SrtpSuite::AesCm128HmacSha1_32,
                    key,
                },
            ],
            _ => Vec::new(),
        },
    }
    .write(&mut out);
    out
}

fn session_header(local: &LocalMedia) -> String {
    let addr = address_fields(local.ip);
    let mut out = String::new();
    push_line(&mut out, format_args!("v=0"));
    push_line(
        &mut out,
        format_args!(
            "o=agentline {} {} {addr}",
            local.session_id, local.session_version
        ),
    );
    push_line(&mut out, format_args!("s=agentline"));
    push_line(&mut out, format_args!("c={addr}"));
    push_line(&mut out, format_args!("t=0 0"));
    out
}

/// `IN IP4 <ip>` / `IN IP6 <ip>`.
fn address_fields(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("IN IP4 {v4}"),
        IpAddr::V6(v6) => format!("IN IP6 {v6}"),
    }
}

/// Our m=audio section, shared by offers and answers.
struct AudioSection {
    payloads: Vec<(u8, Codec)>,
    telephone_event_pt: Option<u8>,
    /// Clock rate telephone-event runs at: the codec's.
    clock_rate: u32,
    ptime_ms: u32,
    port: u16,
    rtcp_mux: bool,
    direction: Direction,
    proto: String,
    crypto: Vec<SdesCrypto>,
}

impl AudioSection {
    fn write(&self, out: &mut String) {
        let mut m_line = format!("m=audio {} {}", self.port, self.proto);
        for pt in self
            .payloads
            .iter()
            .map(|&(pt, _)| pt)
            .chain(self.telephone_event_pt)
        {
            m_line.push(' ');
            m_line.push_str(&pt.to_string());
        }
        push_line(out, format_args!("{m_line}"));
        for &(pt, codec) in &self.payloads {
            push_line(out, format_args!("a=rtpmap:{}", RtpMap::of(codec, pt)));
            if codec == Codec::Opus {
                // What we want to receive (RFC 7587 section 6.1): mono, with
                // in-band FEC so our side can rebuild a lost packet.
                push_line(
                    out,
                    format_args!("a=fmtp:{pt} useinbandfec=1;stereo=0;sprop-stereo=0"),
                );
            }
        }
        if let Some(te) = self.telephone_event_pt {
            push_line(
                out,
                format_args!("a=rtpmap:{te} telephone-event/{}", self.clock_rate),
            );
            // 0-16: digits, *, #, A-D and flash (RFC 4733 §3.2).
            push_line(out, format_args!("a=fmtp:{te} 0-16"));
        }
        push_line(out, format_args!("a=ptime:{}", self.ptime_ms));
        if self.rtcp_mux {
            push_line(out, format_args!("a=rtcp-mux"));
        } else if let Some(rtcp_port) = self.port.checked_add(1) {
            push_line(out, format_args!("a=rtcp:{rtcp_port}"));
        }
        for c in &self.crypto {
            push_line(out, format_args!("a=crypto:{}", c.attr_value()));
        }
        push_line(out, format_args!("a={}", self.direction));
    }
}

fn push_line(out: &mut String, line: fmt::Arguments<'_>) {
    use fmt::Write as _;
    // Writing into a String cannot fail; fmt::Write returns Result only for
    // sinks that can.
    let _ = out.write_fmt(line);
    out.push_str("\r\n");
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// Lines joined with CRLF, as on the wire.
    fn sdp(lines: &[&str]) -> String {
        let mut s = lines.join("\r\n");
        s.push_str("\r\n");
        s
    }

    /// A minimal offer from 192.0.2.10 with the given m= line and extra
    /// media-level lines.
    fn offer(m_line: &str, attrs: &[&str]) -> SessionDescription {
        let mut lines = vec![
            "v=0",
            "o=- 1 1 IN IP4 192.0.2.10",
            "s=-",
            "c=IN IP4 192.0.2.10",
            "t=0 0",
            m_line,
        ];
        lines.extend_from_slice(attrs);
        SessionDescription::parse(&sdp(&lines)).unwrap()
    }

    fn caps() -> LocalCaps {
        LocalCaps::default()
    }

    fn local_media() -> LocalMedia {
        LocalMedia {
            ip: IpAddr::V4(Ipv4Addr::new(203, 0, 113, 5)),
            rtp_port: 40000,
            session_id: 42,
            session_version: 7,
            srtp_key: None,
        }
    }

    const BARESIP_OFFER: &str = "v=0\r\n\
o=- 3254829512 2817645316 IN IP4 192.168.1.20\r\n\
s=-\r\n\
c=IN IP4 192.168.1.20\r\n\
t=0 0\r\n\
a=tool:baresip 3.10.1\r\n\
m=audio 30000 RTP/AVP 0 8 101 9 96\r\n\
b=AS:64\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-15\r\n\
a=rtpmap:9 G722/8000\r\n\
a=rtpmap:96 opus/48000/2\r\n\
a=fmtp:96 stereo=1;sprop-stereo=1\r\n\
a=rtcp-rsize\r\n\
a=sendrecv\r\n\
a=label:1\r\n\
a=ssrc:2891052711 cname:sip:alice@example.com\r\n";

    const MICROSIP_OFFER: &str = "v=0\r\n\
o=- 3879373940 3879373940 IN IP4 10.0.0.7\r\n\
s=pjmedia\r\n\
b=AS:84\r\n\
t=0 0\r\n\
a=X-nat:0\r\n\
m=audio 4000 RTP/AVP 8 0 101\r\n\
c=IN IP4 10.0.0.7\r\n\
b=TIAS:64000\r\n\
a=rtcp:4001 IN IP4 10.0.0.7\r\n\
a=sendrecv\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-16\r\n\
a=ssrc:1229283208 cname:1b4d1e4b3e8b2b54\r\n";

    // Linphone-style: wideband codecs first, telephone-event at several
    // clock rates, a video stream we must reject, and a PT (96) reused
    // with another meaning in the video section.
    const LINPHONE_OFFER: &str = "v=0\n\
o=alice 2436 3036 IN IP4 10.0.0.5\n\
s=Talk\n\
c=IN IP4 10.0.0.5\n\
t=0 0\n\
a=rtcp-xr:rcvr-rtt=all:10000 stat-summary=loss,dup,jitt,TTL voip-metrics\n\
m=audio 7078 RTP/AVP 96 97 98 0 8 18 101 99 100\n\
a=rtpmap:96 opus/48000/2\n\
a=fmtp:96 useinbandfec=1\n\
a=rtpmap:97 speex/16000\n\
a=fmtp:97 vbr=on\n\
a=rtpmap:98 speex/8000\n\
a=fmtp:98 vbr=on\n\
a=fmtp:18 annexb=yes\n\
a=rtpmap:101 telephone-event/48000\n\
a=rtpmap:99 telephone-event/16000\n\
a=rtpmap:100 telephone-event/8000\n\
a=rtcp-fb:* trr-int 1000\n\
m=video 9078 RTP/AVP 96 97\n\
a=rtpmap:96 VP8/90000\n\
a=rtpmap:97 H264/90000\n\
a=fmtp:97 profile-level-id=42801F\n";

    // What sipp's built-in uac scenario sends once [media_port] and
    // [media_ip] are filled in.
    const SIPP_OFFER: &str = "v=0\r\n\
o=user1 53655765 2353687637 IN IP4 127.0.0.1\r\n\
s=-\r\n\
c=IN IP4 127.0.0.1\r\n\
t=0 0\r\n\
m=audio 6000 RTP/AVP 0\r\n\
a=rtpmap:0 PCMU/8000\r\n";

    #[test]
    fn parses_baresip_offer_with_many_codecs() {
        let sd = SessionDescription::parse(BARESIP_OFFER).unwrap();
        assert_eq!(sd.origin_session_id, "3254829512");
        assert_eq!(sd.origin_session_version, "2817645316");
        assert_eq!(
            sd.connection,
            Some(IpAddr::V4(Ipv4Addr::new(192, 168, 1, 20)))
        );
        assert_eq!(sd.other_attrs, vec!["tool:baresip 3.10.1".to_owned()]);
        let [m] = sd.media.as_slice() else {
            panic!("expected one m= line, got {:?}", sd.media)
        };
        assert_eq!(m.media, "audio");
        assert_eq!(m.port, 30000);
        assert_eq!(m.proto, "RTP/AVP");
        assert_eq!(m.formats, vec![0, 8, 101, 9, 96]);
        assert_eq!(m.rtpmaps.len(), 5);
        assert_eq!(
            m.rtpmap(96),
            Some(&RtpMap {
                pt: 96,
                encoding: "opus".into(),
                clock_rate: 48000,
                channels: Some(2),
            })
        );
        assert_eq!(m.fmtp(101), Some("0-15"));
        assert_eq!(m.fmtp(96), Some("stereo=1;sprop-stereo=1"));
        assert_eq!(m.direction, Some(Direction::SendRecv));
        assert!(m.other_attrs.contains(&"rtcp-rsize".to_owned()));

        let neg = negotiate_offer(&sd, &caps()).unwrap();
        assert_eq!((neg.codec, neg.pt), (Codec::Pcmu, 0));
        assert_eq!(neg.telephone_event_pt, Some(101));
        assert_eq!(neg.remote_rtp, Some("192.168.1.20:30000".parse().unwrap()));
        assert_eq!(neg.remote_rtcp, Some("192.168.1.20:30001".parse().unwrap()));
        assert_eq!(neg.direction, Direction::SendRecv);
    }

    #[test]
    fn microsip_offer_prefers_pcma_and_reads_media_level_connection_and_rtcp() {
        let sd = SessionDescription::parse(MICROSIP_OFFER).unwrap();
        assert_eq!(sd.connection, None);
        let m = &sd.media[0];
        assert_eq!(m.connection, Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7))));
        assert_eq!(
            m.rtcp,
            Some((4001, Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7)))))
        );
        let neg = negotiate_offer(&sd, &caps()).unwrap();
        assert_eq!((neg.codec, neg.pt), (Codec::Pcma, 8));
        assert_eq!(neg.telephone_event_pt, Some(101));
        assert_eq!(neg.remote_rtp, Some("10.0.0.7:4000".parse().unwrap()));
        assert_eq!(neg.remote_rtcp, Some("10.0.0.7:4001".parse().unwrap()));
    }

    #[test]
    fn linphone_offer_picks_g711_8k_telephone_event_and_rejects_video() {
        let sd = SessionDescription::parse(LINPHONE_OFFER).unwrap();
        assert_eq!(sd.media.len(), 2);
        let neg = negotiate_offer(&sd, &caps()).unwrap();
        assert_eq!((neg.codec, neg.pt), (Codec::Pcmu, 0));
        assert_eq!(neg.telephone_event_pt, Some(100));
        assert_eq!(
            neg.media_slots,
            vec![
                MediaSlot::Audio,
                MediaSlot::Rejected {
                    media: "video".into(),
                    proto: "RTP/AVP".into(),
                    format: "96".into(),
                }
            ]
        );
        let answer = build_answer(&neg, &local_media());
        assert!(answer.contains("\r\nm=video 0 RTP/AVP 96\r\n"), "{answer}");
        let parsed = SessionDescription::parse(&answer).unwrap();
        assert_eq!(parsed.media.len(), 2);
        assert_eq!(parsed.media[0].media, "audio");
        assert_eq!(parsed.media[1].port, 0);
    }

    #[test]
    fn sipp_default_offer_is_answered_with_pcmu() {
        let sd = SessionDescription::parse(SIPP_OFFER).unwrap();
        let neg = negotiate_offer(&sd, &caps()).unwrap();
        assert_eq!((neg.codec, neg.pt), (Codec::Pcmu, 0));
        assert_eq!(neg.telephone_event_pt, None);
        assert_eq!(neg.ptime_ms, 20);
        assert_eq!(neg.remote_rtp, Some("127.0.0.1:6000".parse().unwrap()));
    }

    #[test]
    fn codec_choice_follows_offerer_order_and_local_support() {
        struct Case {
            m_line: &'static str,
            attrs: &'static [&'static str],
            local: &'static [Codec],
            want: (Codec, u8),
        }
        const BOTH: &[Codec] = &[Codec::Pcmu, Codec::Pcma];
        let cases = [
            Case {
                m_line: "m=audio 5000 RTP/AVP 8",
                attrs: &[],
                local: BOTH,
                want: (Codec::Pcma, 8),
            },
            Case {
                m_line: "m=audio 5000 RTP/AVP 8 0",
                attrs: &[],
                local: BOTH,
                want: (Codec::Pcma, 8),
            },
            Case {
                m_line: "m=audio 5000 RTP/AVP 0 8",
                attrs: &[],
                local: BOTH,
                want: (Codec::Pcmu, 0),
            },
            Case {
                m_line: "m=audio 5000 RTP/AVP 0 8",
                attrs: &[],
                local: &[Codec::Pcma],
                want: (Codec::Pcma, 8),
            },
            Case {
                m_line: "m=audio 5000 RTP/AVP 18 97",
                attrs: &["a=rtpmap:97 pcma/8000"],
                local: BOTH,
                want: (Codec::Pcma, 97),
            },
        ];
        for case in cases {
            let local = LocalCaps {
                codecs: case.local.to_vec(),
                ..caps()
            };
            let neg = negotiate_offer(&offer(case.m_line, case.attrs), &local).unwrap();
            assert_eq!(
                (neg.codec, neg.pt),
                case.want,
                "{} {:?}",
                case.m_line,
                case.attrs
            );
        }
    }

    #[test]
    fn dynamic_pt_needs_matching_rtpmap_clock_rate() {
        // PCMA at a wrong clock rate, and a dynamic PT with no rtpmap, are
        // not PCMA.
        let sd = offer("m=audio 5000 RTP/AVP 97 98", &["a=rtpmap:97 PCMA/16000"]);
        assert!(matches!(
            negotiate_offer(&sd, &caps()),
            Err(NegotiationError::NoCommonCodec { .. })
        ));
    }

    #[test]
    fn g729_only_offer_has_no_common_codec() {
        let err = negotiate_offer(&offer("m=audio 6000 RTP/AVP 18", &[]), &caps()).unwrap_err();
        assert_eq!(
            err,
            NegotiationError::NoCommonCodec {
                offered: vec!["G729/8000".into()],
                supported: "PCMU/8000 PCMA/8000".into(),
            }
        );
        assert_eq!(
            err.to_string(),
            "expected one of our codecs (PCMU/8000 PCMA/8000), got G729/8000"
        );
    }

    #[test]
    fn telephone_event_is_echoed_on_its_offered_pt() {
        for pt in [96u8, 101, 127] {
            let m_line = format!("m=audio 5000 RTP/AVP 0 {pt}");
            let rtpmap = format!("a=rtpmap:{pt} telephone-event/8000");
            let neg = negotiate_offer(&offer(&m_line, &[&rtpmap]), &caps()).unwrap();
            assert_eq!(neg.telephone_event_pt, Some(pt));
            let answer = build_answer(&neg, &local_media());
            assert!(answer.contains(&format!("m=audio 40000 RTP/AVP 0 {pt}\r\n")));
            assert!(answer.contains(&format!("a=rtpmap:{pt} telephone-event/8000\r\n")));
            assert!(answer.contains(&format!("a=fmtp:{pt} 0-16\r\n")));
        }
    }

    #[test]
    fn telephone_event_is_dropped_when_disabled_locally() {
        let local = LocalCaps {
            telephone_event: false,
            ..caps()
        };
        let sd = offer(
            "m=audio 5000 RTP/AVP 0 101",
            &["a=rtpmap:101 telephone-event/8000"],
        );
        assert_eq!(
            negotiate_offer(&sd, &local).unwrap().telephone_event_pt,
            None
        );
    }

    #[test]
    fn ptime_is_echoed_or_defaulted() {
        let cases: &[(&[&str], u32)] = &[
            (&["a=ptime:30"], 30),
            (&["a=ptime:20.0"], 20),
            (&[], 20),
            (&["a=ptime:0"], 20),
            (&["a=ptime:100000"], 20),
        ];
        for (attrs, want) in cases {
            let neg = negotiate_offer(&offer("m=audio 5000 RTP/AVP 0", attrs), &caps()).unwrap();
            assert_eq!(neg.ptime_ms, *want, "{attrs:?}");
        }
        let neg =
            negotiate_offer(&offer("m=audio 5000 RTP/AVP 0", &["a=ptime:30"]), &caps()).unwrap();
        assert!(build_answer(&neg, &local_media()).contains("\r\na=ptime:30\r\n"));
    }

    #[test]
    fn our_direction_is_the_offered_one_reversed() {
        // (media-level attrs, session-level direction, our direction)
        let cases: &[(&[&str], Option<&str>, Direction)] = &[
            (&[], None, Direction::SendRecv),
            (&["a=sendrecv"], None, Direction::SendRecv),
            (&["a=sendonly"], None, Direction::RecvOnly),
            (&["a=recvonly"], None, Direction::SendOnly),
            (&["a=inactive"], None, Direction::Inactive),
            (&[], Some("a=sendonly"), Direction::RecvOnly),
            // Media level overrides session level.
            (&["a=sendrecv"], Some("a=inactive"), Direction::SendRecv),
        ];
        for (attrs, session_dir, want) in cases {
            let mut lines = vec!["v=0", "o=- 1 1 IN IP4 192.0.2.10", "s=-"];
            lines.extend(session_dir.iter());
            lines.extend(["c=IN IP4 192.0.2.10", "t=0 0", "m=audio 5000 RTP/AVP 0"]);
            lines.extend_from_slice(attrs);
            let sd = SessionDescription::parse(&sdp(&lines)).unwrap();
            let neg = negotiate_offer(&sd, &caps()).unwrap();
            assert_eq!(neg.direction, *want, "{attrs:?} {session_dir:?}");
            let answer = build_answer(&neg, &local_media());
            assert!(answer.contains(&format!("\r\na={}\r\n", want.as_attr())));
        }
    }

    #[test]
    fn unspecified_connection_means_hold_and_no_sending() {
        let cases: &[(&str, Direction)] = &[
            ("c=IN IP4 0.0.0.0", Direction::RecvOnly),
            ("c=IN IP6 ::", Direction::RecvOnly),
        ];
        for (conn, want) in cases {
            let sd = SessionDescription::parse(&sdp(&[
                "v=0",
                "o=- 1 2 IN IP4 192.0.2.10",
                "s=-",
                conn,
                "t=0 0",
                "m=audio 5000 RTP/AVP 0",
            ]))
            .unwrap();
            let neg = negotiate_offer(&sd, &caps()).unwrap();
            assert_eq!(neg.remote_rtp, None, "{conn}");
            assert_eq!(neg.remote_rtcp, None, "{conn}");
            assert_eq!(neg.direction, *want, "{conn}");
        }
        let held = SessionDescription::parse(&sdp(&[
            "v=0",
            "o=- 1 2 IN IP4 192.0.2.10",
            "s=-",
            "c=IN IP4 0.0.0.0",
            "t=0 0",
            "m=audio 5000 RTP/AVP 0",
            "a=sendonly",
        ]))
        .unwrap();
        assert_eq!(
            negotiate_offer(&held, &caps()).unwrap().direction,
            Direction::RecvOnly
        );
    }

    #[test]
    fn rtcp_attribute_and_mux_set_remote_rtcp() {
        // (attrs, remote_rtcp, rtcp_mux)
        let cases: &[(&[&str], Option<&str>, bool)] = &[
            (&[], Some("192.0.2.10:5001"), false),
            (&["a=rtcp:6001"], Some("192.0.2.10:6001"), false),
            (
                &["a=rtcp:6001 IN IP4 198.51.100.1"],
                Some("198.51.100.1:6001"),
                false,
            ),
            (&["a=rtcp-mux"], Some("192.0.2.10:5000"), true),
            (
                &["a=rtcp:5000", "a=rtcp-mux"],
                Some("192.0.2.10:5000"),
                true,
            ),
        ];
        for (attrs, rtcp, mux) in cases {
            let sd = offer("m=audio 5000 RTP/AVP 0", attrs);
            assert_eq!(sd.media[0].rtcp_mux, *mux);
            let neg = negotiate_offer(&sd, &caps()).unwrap();
            assert_eq!(
                neg.remote_rtcp,
                rtcp.map(|a| a.parse().unwrap()),
                "{attrs:?}"
            );
            assert_eq!(neg.rtcp_mux, *mux, "{attrs:?}");
            let answer = build_answer(&neg, &local_media());
            assert_eq!(answer.contains("a=rtcp-mux\r\n"), *mux, "{answer}");
            assert_eq!(answer.contains("a=rtcp:40001\r\n"), !*mux, "{answer}");
        }
        let sd = offer(
            "m=audio 5000 RTP/AVP 0",
            &["a=rtcp:6001 IN IP4 198.51.100.1"],
        );
        assert_eq!(
            sd.media[0].rtcp,
            Some((6001, Some(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)))))
        );
    }

    #[test]
    fn unusable_audio_streams_give_typed_errors() {
        let no_audio = SessionDescription::parse(&sdp(&[
            "v=0",
            "o=- 1 1 IN IP4 192.0.2.10",
            "s=-",
            "c=IN IP4 192.0.2.10",
            "t=0 0",
            "m=video 5000 RTP/AVP 96",
            "m=image 6000 udptl t38",
        ]))
        .unwrap();
        assert_eq!(
            negotiate_offer(&no_audio, &caps()),
            Err(NegotiationError::NoAudio)
        );
        assert_eq!(
            negotiate_offer(&offer("m=audio 0 RTP/AVP 0", &[]), &caps()),
            Err(NegotiationError::AudioDisabled)
        );
        assert_eq!(
            negotiate_offer(&offer("m=audio 5000 RTP/SAVP 0", &[]), &caps()),
            Err(NegotiationError::UnsupportedProto {
                proto: "RTP/SAVP".into()
            })
        );
        let no_conn = SessionDescription::parse(&sdp(&[
            "v=0",
            "o=- 1 1 IN IP4 192.0.2.10",
            "s=-",
            "t=0 0",
            "m=audio 5000 RTP/AVP 0",
        ]))
        .unwrap();
        assert_eq!(
            negotiate_offer(&no_conn, &caps()),
            Err(NegotiationError::MissingConnection)
        );
    }

    #[test]
    fn second_audio_line_is_used_when_first_is_unusable() {
        let sd = SessionDescription::parse(&sdp(&[
            "v=0",
            "o=- 1 1 IN IP4 192.0.2.10",
            "s=-",
            "c=IN IP4 192.0.2.10",
            "t=0 0",
            "m=audio 5000 RTP/SAVP 0",
            "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz",
            "m=audio 5002 RTP/AVP 8",
        ]))
        .unwrap();
        let neg = negotiate_offer(&sd, &caps()).unwrap();
        assert_eq!(neg.remote_rtp, Some("192.0.2.10:5002".parse().unwrap()));
        assert_eq!(
            neg.media_slots,
            vec![
                MediaSlot::Rejected {
                    media: "audio".into(),
                    proto: "RTP/SAVP".into(),
                    format: "0".into()
                },
                MediaSlot::Audio
            ]
        );
    }

    #[test]
    fn non_rtp_media_keeps_raw_formats_and_attributes() {
        let sd = SessionDescription::parse(&sdp(&[
            "v=0",
            "o=- 1 1 IN IP4 192.0.2.10",
            "s=-",
            "c=IN IP4 192.0.2.10",
            "t=0 0",
            "m=audio 5000 RTP/AVP 0",
            "m=image 6000 udptl t38",
            "a=T38FaxVersion:0",
            "a=fmtp:t38 whatever",
        ]))
        .unwrap();
        let image = &sd.media[1];
        assert!(image.formats.is_empty());
        assert_eq!(image.raw_formats, vec!["t38".to_owned()]);
        assert_eq!(image.other_attrs.len(), 2);
        let neg = negotiate_offer(&sd, &caps()).unwrap();
        let answer = build_answer(&neg, &local_media());
        assert!(answer.ends_with("m=image 0 udptl t38\r\n"), "{answer}");
    }

    #[test]
    fn parse_rejects_garbled_required_lines() {
        let base = [
            "v=0",
            "o=- 1 1 IN IP4 192.0.2.10",
            "s=-",
            "c=IN IP4 192.0.2.10",
            "t=0 0",
            "m=audio 5000 RTP/AVP 0",
        ];
        // (line index to replace, replacement, expected line number or 0 for
        // a non-line error)
        let cases: &[(usize, &str, usize)] = &[
            (0, "v=1", 0),
            (1, "o=- 1 1 IN IP4", 2),
            (3, "c=IN IP4 not-an-ip", 4),
            (3, "c=IN IP6 192.0.2.10", 4),
            (3, "c=IN IP4", 4),
            (5, "m=audio five RTP/AVP 0", 6),
            (5, "m=audio 70000 RTP/AVP 0", 6),
            (5, "m=audio 5000 RTP/AVP 128", 6),
            (5, "m=audio 5000 RTP/AVP PCMU", 6),
            (5, "m=audio 5000", 6),
        ];
        for &(index, replacement, line) in cases {
            let mut lines = base.to_vec();
            lines[index] = replacement;
            let err = SessionDescription::parse(&sdp(&lines)).unwrap_err();
            match err {
                SdpError::Malformed { line: got, .. } => assert_eq!(got, line, "{replacement}"),
                other => assert_eq!(line, 0, "{replacement}: {other}"),
            }
        }
        let attr_cases = [
            "a=rtpmap:96",
            "a=rtpmap:96 opus",
            "a=rtpmap:x PCMU/8000",
            "a=rtpmap:96 opus/48000/2/1",
            "a=fmtp:abc 0-16",
            "a=ptime:fast",
            "a=rtcp:port",
            "a=rtcp:5001 IN IP4 nope",
        ];
        for attr in attr_cases {
            let mut lines = base.to_vec();
            lines.push(attr);
            let err = SessionDescription::parse(&sdp(&lines)).unwrap_err();
            assert!(
                matches!(err, SdpError::Malformed { line: 7, .. }),
                "{attr}: {err}"
            );
        }
        assert_eq!(
            SessionDescription::parse("v=0\r\ns=-\r\n"),
            Err(SdpError::MissingOrigin)
        );
    }

    #[test]
    fn parse_error_messages_say_what_was_expected_and_found() {
        let err = SessionDescription::parse("hello").unwrap_err();
        assert_eq!(
            err.to_string(),
            "expected SDP to start with `v=0`, got \"hello\""
        );
        let err = SessionDescription::parse("v=0\r\no=- 1 1 IN IP4 a\r\nm=audio x RTP/AVP 0")
            .unwrap_err();
        assert!(
            err.to_string().starts_with("line 3: expected m=<media>"),
            "{err}"
        );
        assert!(
            err.to_string().ends_with("got \"m=audio x RTP/AVP 0\""),
            "{err}"
        );
    }

    #[test]
    fn parse_tolerates_lf_line_ends_blank_lines_and_unknown_lines() {
        let text = "\nv=0\no=- 1 1 IN IP4 192.0.2.10\ns=-\nz=unknown\nnot sdp\n\
                    i=info\nc=IN IP4 192.0.2.10\nt=0 0\nm=audio 5000/2 RTP/AVP 0 \n\n";
        let sd = SessionDescription::parse(text).unwrap();
        assert_eq!(sd.media[0].port, 5000);
        assert_eq!(sd.media[0].formats, vec![0]);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let inputs = [
            "",
            "\r\n",
            "v=",
            "=",
            "v=0",
            "\u{0}\u{1}\u{2}",
            "v=0\r\no=\r\n",
            "ééé=é",
            "m=audio 1 RTP/AVP 0\r\nv=0",
        ];
        for input in inputs {
            assert!(SessionDescription::parse(input).is_err(), "{input:?}");
        }
    }

    #[test]
    fn truncated_prefixes_never_panic() {
        for text in [BARESIP_OFFER, MICROSIP_OFFER, LINPHONE_OFFER, SIPP_OFFER] {
            for (end, _) in text.char_indices() {
                if let Ok(sd) = SessionDescription::parse(&text[..end]) {
                    let _ = negotiate_offer(&sd, &caps());
                    let _ = accept_answer(&sd, &caps());
                }
            }
        }
    }

    #[test]
    fn answer_text_has_expected_lines() {
        let sd = SessionDescription::parse(MICROSIP_OFFER).unwrap();
        let neg = negotiate_offer(&sd, &caps()).unwrap();
        let answer = build_answer(&neg, &local_media());
        assert_eq!(
            answer,
            sdp(&[
                "v=0",
                "o=agentline 42 7 IN IP4 203.0.113.5",
                "s=agentline",
                "c=IN IP4 203.0.113.5",
                "t=0 0",
                "m=audio 40000 RTP/AVP 8 101",
                "a=rtpmap:8 PCMA/8000",
                "a=rtpmap:101 telephone-event/8000",
                "a=fmtp:101 0-16",
                "a=ptime:20",
                "a=rtcp:40001",
                "a=sendrecv",
            ])
        );
    }

    #[test]
    fn answer_round_trips_through_parse() {
        for ip in [
            IpAddr::V4(Ipv4Addr::new(203, 0, 113, 5)),
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 5)),
        ] {
            let local = LocalMedia {
                ip,
                ..local_media()
            };
            let sd = SessionDescription::parse(BARESIP_OFFER).unwrap();
            let neg = negotiate_offer(&sd, &caps()).unwrap();
            let answer = build_answer(&neg, &local);
            let parsed = SessionDescription::parse(&answer).unwrap();
            assert_eq!(parsed.origin_session_id, "42");
            assert_eq!(parsed.origin_session_version, "7");
            assert_eq!(parsed.connection, Some(ip));
            let m = &parsed.media[0];
            assert_eq!(m.port, 40000);
            assert_eq!(m.formats, vec![0, 101]);
            assert_eq!(m.codec_for(0), Some(Codec::Pcmu));
            assert_eq!(m.fmtp(101), Some("0-16"));
            assert_eq!(m.ptime, Some(20));
            assert_eq!(m.rtcp, Some((40001, None)));
            assert_eq!(m.direction, Some(Direction::SendRecv));
            // Our answer, read back as if the peer had offered it, agrees.
            let back = negotiate_offer(&parsed, &caps()).unwrap();
            assert_eq!((back.codec, back.pt), (neg.codec, neg.pt));
            assert_eq!(back.telephone_event_pt, neg.telephone_event_pt);
            assert_eq!(back.remote_rtp, Some(SocketAddr::new(ip, 40000)));
        }
    }

    #[test]
    fn answer_without_slots_writes_just_audio() {
        let neg = Negotiated {
            codec: Codec::Pcma,
            pt: 8,
            telephone_event_pt: None,
            ptime_ms: 20,
            remote_rtp: None,
            remote_rtcp: None,
            rtcp_mux: false,
            direction: Direction::Inactive,
            media_slots: Vec::new(),
            codec_fmtp: None,
            proto: "RTP/AVP".into(),
            srtp: None,
        };
        let answer = build_answer(&neg, &local_media());
        let parsed = SessionDescription::parse(&answer).unwrap();
        assert_eq!(parsed.media.len(), 1);
        assert_eq!(parsed.media[0].direction, Some(Direction::Inactive));
    }

    #[test]
    fn offer_lists_local_codecs_in_order_with_telephone_event() {
        let local = LocalCaps {
            codecs: vec![Codec::Pcma, Codec::Pcmu, Codec::Pcma],
            telephone_event: true,
            ptime_ms: 20,
            srtp: SrtpPolicy::Off,
        };
        let text = build_offer(&local, &local_media());
        assert_eq!(
            text,
            sdp(&[
                "v=0",
                "o=agentline 42 7 IN IP4 203.0.113.5",
                "s=agentline",
                "c=IN IP4 203.0.113.5",
                "t=0 0",
                "m=audio 40000 RTP/AVP 8 0 101",
                "a=rtpmap:8 PCMA/8000",
                "a=rtpmap:0 PCMU/8000",
                "a=rtpmap:101 telephone-event/8000",
                "a=fmtp:101 0-16",
                "a=ptime:20",
                "a=rtcp:40001",
                "a=sendrecv",
            ])
        );
    }

    #[test]
    fn late_offer_answer_is_accepted() {
        let local = caps();
        let our_offer = SessionDescription::parse(&build_offer(&local, &local_media())).unwrap();
        assert_eq!(our_offer.media[0].formats, vec![0, 8, 101]);
        // A typical answer: the peer picked PCMA and DTMF, wants 30 ms.
        let answer = SessionDescription::parse(&sdp(&[
            "v=0",
            "o=bob 2890844730 2890844731 IN IP4 198.51.100.7",
            "s=-",
            "c=IN IP4 198.51.100.7",
            "t=0 0",
            "m=audio 49172 RTP/AVP 8 101",
            "a=rtpmap:8 PCMA/8000",
            "a=rtpmap:101 telephone-event/8000",
            "a=fmtp:101 0-15",
            "a=ptime:30",
            "a=rtcp-mux",
            "a=recvonly",
        ]))
        .unwrap();
        let neg = accept_answer(&answer, &local).unwrap();
        assert_eq!((neg.codec, neg.pt), (Codec::Pcma, 8));
        assert_eq!(neg.telephone_event_pt, Some(101));
        assert_eq!(neg.ptime_ms, 30);
        assert_eq!(neg.remote_rtp, Some("198.51.100.7:49172".parse().unwrap()));
        // We did not offer rtcp-mux, so the answer cannot turn it on.
        assert!(!neg.rtcp_mux);
        assert_eq!(neg.remote_rtcp, Some("198.51.100.7:49173".parse().unwrap()));
        assert_eq!(neg.direction, Direction::SendOnly);
        assert_eq!(neg.media_slots, vec![MediaSlot::Audio]);
    }

    #[test]
    fn multicast_broadcast_and_reserved_media_are_never_negotiated() {
        let with = |c: &str, attrs: &[&str]| {
            let mut lines = vec!["v=0", "o=- 1 1 IN IP4 192.0.2.10", "s=-", c, "t=0 0"];
            lines.push("m=audio 5000 RTP/AVP 0");
            lines.extend_from_slice(attrs);
            SessionDescription::parse(&sdp(&lines)).unwrap()
        };
        let cases = [
            (with("c=IN IP4 224.0.1.10/127", &[]), AddressKind::Multicast),
            (
                with("c=IN IP4 255.255.255.255", &[]),
                AddressKind::Broadcast,
            ),
            (with("c=IN IP4 240.0.0.1", &[]), AddressKind::Reserved),
            (
                with("c=IN IP4 192.0.2.10", &["c=IN IP6 ff02::1"]),
                AddressKind::Multicast,
            ),
            (
                with(
                    "c=IN IP4 192.0.2.10",
                    &["a=rtcp:5001 IN IP4 255.255.255.255"],
                ),
                AddressKind::Broadcast,
            ),
        ];
        for (sd, kind) in &cases {
            // Both as an offer (re-INVITE) and as an answer (ACK, 200).
            for got in [negotiate_offer(sd, &caps()), accept_answer(sd, &caps())] {
                match got {
                    Err(NegotiationError::BadAddress(b)) => assert_eq!(b.kind, *kind, "{sd:?}"),
                    other => panic!("{kind:?}: {other:?}"),
                }
            }
        }
        let err = accept_answer(&cases[0].0, &caps()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "c= address 224.0.1.10 is multicast: only unicast media is taken"
        );
        // 0.0.0.0 stays hold: negotiated, nothing is sent.
        let held = with("c=IN IP4 0.0.0.0", &[]);
        for got in [
            negotiate_offer(&held, &caps()),
            accept_answer(&held, &caps()),
        ] {
            let neg = got.unwrap();
            assert_eq!(neg.remote_rtp, None);
            assert!(!neg.direction.sends());
        }
    }

    #[test]
    fn answer_rejecting_audio_is_an_error() {
        let answer = offer("m=audio 0 RTP/AVP 0", &[]);
        assert_eq!(
            accept_answer(&answer, &caps()),
            Err(NegotiationError::AudioDisabled)
        );
    }

    #[test]
    fn ipv6_offer_and_answer() {
        let sd = SessionDescription::parse(&sdp(&[
            "v=0",
            "o=- 1 1 IN IP6 2001:db8::10",
            "s=-",
            "c=IN IP6 2001:db8::10",
            "t=0 0",
            "m=audio 5000 RTP/AVP 0",
        ]))
        .unwrap();
        let neg = negotiate_offer(&sd, &caps()).unwrap();
        assert_eq!(neg.remote_rtp, Some("[2001:db8::10]:5000".parse().unwrap()));
        let local = LocalMedia {
            ip: IpAddr::V6(Ipv6Addr::LOCALHOST),
            ..local_media()
        };
        let answer = build_answer(&neg, &local);
        assert!(answer.contains("\r\no=agentline 42 7 IN IP6 ::1\r\n"));
        assert!(answer.contains("\r\nc=IN IP6 ::1\r\n"));
    }

    #[test]
    fn direction_helpers_are_consistent() {
        for d in [
            Direction::SendRecv,
            Direction::SendOnly,
            Direction::RecvOnly,
            Direction::Inactive,
        ] {
            assert_eq!(Direction::from_attr(d.as_attr()), Some(d));
            assert_eq!(d.reversed().reversed(), d);
            assert_eq!(d.reversed().sends(), d.receives());
            assert_eq!(Direction::from_flags(d.sends(), d.receives()), d);
        }
    }

    #[test]
    fn codec_table_is_self_consistent() {
        for &codec in Codec::ALL {
            if let Some(pt) = codec.static_pt() {
                assert_eq!(Codec::from_static_pt(pt), Some(codec));
            }
            assert_eq!(RtpMap::of(codec, FIRST_DYNAMIC_PT).codec(), Some(codec));
        }
        assert_eq!(Codec::Pcmu.encoding_name(), "PCMU");
        assert_eq!(Codec::Pcma.static_pt(), Some(8));
        assert_eq!(Codec::Pcma.clock_rate(), 8000);
    }

    // baresip 1.0 `mediaenc=srtp`: RTP/AVP carrying crypto (best effort);
    // `srtp-mand`: RTP/SAVP.
    const KEY_B64: &str = "PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR";

    fn srtp_offer(proto: &str, crypto: &[&str]) -> SessionDescription {
        let mut attrs = vec!["a=rtpmap:0 PCMU/8000"];
        attrs.extend_from_slice(crypto);
        offer(&format!("m=audio 5000 {proto} 0"), &attrs)
    }

    #[test]
    fn crypto_attribute_parses_and_renders() {
        let c =
            SdesCrypto::parse(&format!("1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_B64}|2^20")).unwrap();
        assert_eq!(c.tag, 1);
        assert_eq!(c.suite, crate::media::srtp::SrtpSuite::AesCm128HmacSha1_80);
        assert_eq!(
            c.attr_value(),
            format!("1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_B64}")
        );
        assert!(
            !format!("{c:?}").contains(KEY_B64),
            "keys stay out of Debug"
        );
        for unusable in [
            format!("1 AEAD_AES_128_GCM inline:{KEY_B64}"),
            format!("1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_B64}|2^20|1:4"),
            format!("1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_B64} UNENCRYPTED_SRTP"),
            "1 AES_CM_128_HMAC_SHA1_80 inline:c2hvcnQ=".to_string(),
            "x AES_CM_128_HMAC_SHA1_80 inline:!!".to_string(),
        ] {
            assert!(SdesCrypto::parse(&unusable).is_none(), "{unusable}");
        }
    }

    #[test]
    fn srtp_answer_follows_policy_and_offer() {
        let allow = LocalCaps {
            srtp: SrtpPolicy::Allow,
            ..caps()
        };
        let gcm = format!("a=crypto:1 AEAD_AES_128_GCM inline:{KEY_B64}");
        let cm32 = format!("a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:{KEY_B64}");
        // SAVP with a usable line (after an unusable one): SRTP, tag 2 echoed.
        let sd = srtp_offer("RTP/SAVP", &[&gcm, &cm32]);
        let neg = negotiate_offer(&sd, &allow).unwrap();
        assert_eq!(neg.proto, "RTP/SAVP");
        let chosen = neg.srtp.clone().unwrap();
        assert_eq!(chosen.tag, 2);
        let mut media = local_media();
        media.srtp_key = Some([7u8; 30]);
        let answer = build_answer(&neg, &media);
        assert!(answer.contains("m=audio 40000 RTP/SAVP 0\r\n"), "{answer}");
        let ours = SdesCrypto {
            tag: 2,
            suite: crate::media::srtp::SrtpSuite::AesCm128HmacSha1_32,
            key: [7u8; 30],
        };
        assert!(
            answer.contains(&format!("a=crypto:{}\r\n", ours.attr_value())),
            "{answer}"
        );
        // Best-effort AVP + crypto: SRTP, proto kept.
        let neg = negotiate_offer(&srtp_offer("RTP/AVP", &[&cm32]), &allow).unwrap();
        assert_eq!((neg.proto.as_str(), neg.srtp.is_some()), ("RTP/AVP", true));
        // SAVP without a usable line, or over a non-TLS call: refused.
        assert_eq!(
            negotiate_offer(&srtp_offer("RTP/SAVP", &[&gcm]), &allow),
            Err(NegotiationError::NoCommonCrypto)
        );
        assert!(matches!(
            negotiate_offer(&srtp_offer("RTP/SAVP", &[&cm32]), &caps()),
            Err(NegotiationError::UnsupportedProto { .. })
        ));
        // Plain call: crypto in an AVP offer is ignored, the answer is plain.
        let neg = negotiate_offer(&srtp_offer("RTP/AVP", &[&cm32]), &caps()).unwrap();
        assert!(neg.srtp.is_none());
        assert!(!build_answer(&neg, &media).contains("a=crypto"));
    }

    #[test]
    fn srtp_offer_and_answer_round_trip() {
        let require = LocalCaps {
            srtp: SrtpPolicy::Require,
            ..caps()
        };
        let mut ours = local_media();
        ours.srtp_key = Some([1u8; 30]);
        let offer_text = build_offer(&require, &ours);
        let parsed = SessionDescription::parse(&offer_text).unwrap();
        assert_eq!(parsed.media[0].proto, "RTP/SAVP");
        assert_eq!(parsed.media[0].crypto.len(), 2);
        // The peer (policy Allow) answers with its own key on tag 1.
        let allow = LocalCaps {
            srtp: SrtpPolicy::Allow,
            ..caps()
        };
        let neg = negotiate_offer(&parsed, &allow).unwrap();
        let mut theirs = local_media();
        theirs.srtp_key = Some([2u8; 30]);
        let answer = SessionDescription::parse(&build_answer(&neg, &theirs)).unwrap();
        let got = accept_answer(&answer, &require).unwrap();
        let c = got.srtp.unwrap();
        assert_eq!((c.tag, c.key), (1, [2u8; 30]));
        // An answer without crypto is refused when we require SRTP.
        let plain = SessionDescription::parse(&build_answer(&neg, &local_media())).unwrap();
        assert_eq!(
            accept_answer(&plain, &require),
            Err(NegotiationError::NoCommonCrypto)
        );
    }
}
