//! Audio codecs behind one decoder and one encoder trait: G.711 µ-law and
//! A-law (our tables in [`super::g711`]), G.722 (`ezk-g722`, spandsp's
//! codec) and Opus (`audiopus` over the system libopus), sans-IO.
//!
//! A decoder turns one RTP payload into PCM at [`AudioDecoder::sample_rate`];
//! an encoder turns exactly one frame of PCM into one RTP payload. Rate
//! conversion to the agent's rate is [`super::resample`]'s job, once per
//! direction. Opus can decode and encode at 8, 12, 16, 24 or 48 kHz itself
//! ([`CodecParams::opus_pcm_rate`]), so an Opus call to a 16 or 24 kHz
//! agent needs no resampler at all.
//!
//! Payloads come from the network: every decoder turns any byte string into
//! PCM or a [`CodecError`], never a panic.

use std::fmt;

use audiopus::coder::{Decoder as OpusDec, Encoder as OpusEnc};
use audiopus::packet::Packet;
use audiopus::{Application, Bandwidth, Bitrate, Channels, MutSignals, SampleRate, Signal};
use ezk_g722::libg722::{self, Bitrate as G722Rate};
use thiserror::Error;

use super::g711;

/// Audio codecs we can send and receive.
///
/// The negotiated codec as SDP names it (the `sdp` module re-exports it and
/// adds its a=rtpmap form); [`Codec::kind`] is the implementation that
/// encodes and decodes it. To add one: add the variant, its row in
/// `Codec::info` and its entry in [`Codec::ALL`]; matching, offers and
/// answers are driven by that data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// G.711 µ-law.
    Pcmu,
    /// G.711 A-law.
    Pcma,
    /// G.722: 16 kHz audio on an 8000 Hz RTP clock (RFC 3551 section 4.5.2).
    G722,
    /// Opus (RFC 7587): `opus/48000/2` in SDP, mono audio.
    Opus,
}

/// The SDP-visible facts about a codec.
struct CodecInfo {
    encoding_name: &'static str,
    /// RTP clock rate, as in a=rtpmap (not always the sample rate: G.722
    /// says 8000 for 16 kHz audio).
    clock_rate: u32,
    /// a=rtpmap encoding parameters; `None` means one channel.
    channels: Option<u8>,
    /// RFC 3551 static payload type, if the codec has one.
    static_pt: Option<u8>,
}

impl Codec {
    /// Every codec we implement.
    pub const ALL: &'static [Codec] = &[Codec::Pcmu, Codec::Pcma, Codec::G722, Codec::Opus];

    const fn info(self) -> CodecInfo {
        match self {
            Self::Pcmu => CodecInfo {
                encoding_name: "PCMU",
                clock_rate: 8000,
                channels: None,
                static_pt: Some(0),
            },
            Self::Pcma => CodecInfo {
                encoding_name: "PCMA",
                clock_rate: 8000,
                channels: None,
                static_pt: Some(8),
            },
            Self::G722 => CodecInfo {
                encoding_name: "G722",
                clock_rate: 8000,
                channels: None,
                static_pt: Some(9),
            },
            Self::Opus => CodecInfo {
                encoding_name: "opus",
                clock_rate: 48000,
                channels: Some(2),
                static_pt: None,
            },
        }
    }

    /// Encoding name as written in a=rtpmap, e.g. `PCMU`.
    pub fn encoding_name(self) -> &'static str {
        self.info().encoding_name
    }

    /// RTP timestamp clock rate in Hz.
    pub fn clock_rate(self) -> u32 {
        self.info().clock_rate
    }

    /// a=rtpmap channel count, `None` for mono (written without `/1`).
    pub fn channels(self) -> Option<u8> {
        self.info().channels
    }

    /// The RFC 3551 static payload type. `Option` because codecs such as
    /// Opus have none and are always carried on a dynamic payload type.
    pub fn static_pt(self) -> Option<u8> {
        self.info().static_pt
    }

    /// The codec a static payload type stands for when no a=rtpmap says
    /// otherwise.
    pub fn from_static_pt(pt: u8) -> Option<Self> {
        Self::ALL
            .iter()
            .copied()
            .find(|c| c.static_pt() == Some(pt))
    }
}

impl Codec {
    /// The encoder/decoder implementation for this codec.
    pub fn kind(self) -> CodecKind {
        match self {
            Self::Pcmu => CodecKind::Pcmu,
            Self::Pcma => CodecKind::Pcma,
            Self::G722 => CodecKind::G722,
            Self::Opus => CodecKind::Opus,
        }
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.encoding_name(), self.clock_rate())
    }
}

/// A codec we can decode and encode.
///
/// [`Codec`] is the SDP-facing twin of this enum; it maps
/// variant for variant (`Pcmu`, `Pcma`, `G722`, `Opus`), with the SDP facts
/// in [`CodecKind::encoding_name`], [`CodecKind::rtp_clock_rate`],
/// [`CodecKind::rtpmap_channels`] and [`CodecKind::static_pt`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CodecKind {
    /// G.711 µ-law, 8 kHz.
    Pcmu,
    /// G.711 A-law, 8 kHz.
    Pcma,
    /// G.722 at 64 kbit/s: 16 kHz audio on an 8000 Hz RTP clock (RFC 3551 §4.5.2).
    G722,
    /// Opus (RFC 7587): `opus/48000/2` in SDP, mono here.
    Opus,
}

impl CodecKind {
    /// Every codec this module implements.
    pub const ALL: &'static [CodecKind] = &[Self::Pcmu, Self::Pcma, Self::G722, Self::Opus];

    /// Encoding name as written in a=rtpmap.
    pub fn encoding_name(self) -> &'static str {
        match self {
            Self::Pcmu => "PCMU",
            Self::Pcma => "PCMA",
            Self::G722 => "G722",
            Self::Opus => "opus",
        }
    }

    /// RTP timestamp clock rate (a=rtpmap). Not the audio rate for G.722.
    pub fn rtp_clock_rate(self) -> u32 {
        match self {
            Self::Pcmu | Self::Pcma | Self::G722 => 8000,
            Self::Opus => 48000,
        }
    }

    /// a=rtpmap channel count: RFC 7587 always says `/2` for Opus, even for
    /// a mono stream; `None` (written without `/1`) for the others.
    pub fn rtpmap_channels(self) -> Option<u8> {
        match self {
            Self::Opus => Some(2),
            _ => None,
        }
    }

    /// RFC 3551 static payload type, if any. Opus is always dynamic.
    pub fn static_pt(self) -> Option<u8> {
        match self {
            Self::Pcmu => Some(0),
            Self::Pcma => Some(8),
            Self::G722 => Some(9),
            Self::Opus => None,
        }
    }

    /// True for PCMU/PCMA, which can reach a G.711 agent untranscoded.
    pub fn is_g711(self) -> bool {
        matches!(self, Self::Pcmu | Self::Pcma)
    }

    /// Allowed packet times in ms.
    fn check_ptime(self, ptime_ms: u32) -> Result<(), CodecError> {
        let ok = match self {
            // Any whole ms up to 200 (1600 bytes of G.711, under an MTU
            // only up to ~180 ms, but the peer chose it).
            Self::Pcmu | Self::Pcma | Self::G722 => (1..=200).contains(&ptime_ms),
            // What opus_encode accepts in whole ms (2.5 and 5 ms are not
            // whole, and not used on SIP trunks).
            Self::Opus => matches!(ptime_ms, 10 | 20 | 40 | 60 | 80 | 100 | 120),
        };
        if ok {
            Ok(())
        } else {
            Err(CodecError::UnsupportedPtime {
                kind: self,
                ptime_ms,
            })
        }
    }
}

impl fmt::Display for CodecKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.encoding_name())
    }
}

/// Errors from codecs and the resampler.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CodecError {
    #[error("{kind} cannot use a packet time of {ptime_ms} ms")]
    UnsupportedPtime { kind: CodecKind, ptime_ms: u32 },
    #[error("Opus works at 8000, 12000, 16000, 24000 or 48000 Hz, not {0} Hz")]
    UnsupportedOpusRate(u32),
    #[error("expected {expected} PCM samples, got {got}")]
    FrameSize { expected: usize, got: usize },
    #[error("empty {kind} payload")]
    EmptyPayload { kind: CodecKind },
    /// The codec has no concealment of its own: conceal in PCM
    /// (`media::plc`) or play [`AudioDecoder::frame_samples`] of silence.
    #[error("{kind} has no packet-loss concealment of its own")]
    NoPlc { kind: CodecKind },
    #[error("opus decoder rejected the payload: {0}")]
    OpusDecode(#[source] audiopus::Error),
    #[error("opus encoder failed: {0}")]
    OpusEncode(#[source] audiopus::Error),
    #[error("opus setup failed: {0}")]
    OpusSetup(#[source] audiopus::Error),
    #[error("cannot resample {from} Hz to {to} Hz in exact {block_ms} ms blocks")]
    UnsupportedResample { from: u32, to: u32, block_ms: u32 },
    #[error("cannot resample {from} Hz to {to} Hz")]
    UnsupportedRates { from: u32, to: u32 },
    #[error("resampler setup failed: {0}")]
    ResamplerSetup(#[from] rubato::ResamplerConstructionError),
    #[error("resampling failed: {0}")]
    Resample(#[from] rubato::ResampleError),
    #[error("resampler buffer: {0}")]
    ResampleBuffer(String),
}

/// What to build a decoder or encoder for. Build with [`CodecParams::new`]
/// and adjust fields; [`CodecParams::apply_remote_opus_fmtp`] applies what
/// the peer asked for in its Opus a=fmtp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodecParams {
    pub kind: CodecKind,
    /// Packet time of what we send (a=ptime), in ms. The decoders accept
    /// any packet length the peer sends; this only sets their idea of a
    /// frame before the first packet (for concealment).
    pub ptime_ms: u32,
    /// Opus: put in-band FEC (LBRR) for the previous frame in each packet.
    /// Set it when the peer's fmtp says `useinbandfec=1`.
    pub opus_fec: bool,
    /// Opus: discontinuous transmission; silence is sent as 1-2 byte
    /// packets the caller may skip ([`AudioEncoder::last_was_dtx`]).
    pub opus_dtx: bool,
    /// Opus: target bit rate in bit/s (clamped to 6000..=510000); `None`
    /// picks a speech default for [`CodecParams::opus_pcm_rate`].
    pub opus_bitrate: Option<u32>,
    /// Opus: the PCM rate of our side of the codec (8000, 12000, 16000,
    /// 24000 or 48000). The RTP clock stays 48000 whatever this is.
    pub opus_pcm_rate: u32,
    /// Opus: encoder complexity 0-10 (libopus's default is 10); `None`
    /// takes [`opus_speech_complexity`] for the PCM rate.
    pub opus_complexity: Option<u8>,
    /// Opus: the highest audio rate the peer wants to play
    /// (`maxplaybackrate`), capping the encoded bandwidth.
    pub opus_max_playback_rate: Option<u32>,
}

impl CodecParams {
    /// 20 ms packets, no FEC or DTX, default bit rate, Opus at 48 kHz.
    pub fn new(kind: CodecKind) -> Self {
        Self {
            kind,
            ptime_ms: 20,
            opus_fec: false,
            opus_dtx: false,
            opus_bitrate: None,
            opus_pcm_rate: 48000,
            opus_complexity: None,
            opus_max_playback_rate: None,
        }
    }

    /// Applies the peer's Opus a=fmtp (what the peer wants to *receive*,
    /// RFC 7587 §6.1) to what we send: FEC, DTX, bit rate ceiling and
    /// playback rate ceiling.
    pub fn apply_remote_opus_fmtp(&mut self, fmtp: &OpusFmtp) {
        self.opus_fec = fmtp.useinbandfec;
        self.opus_dtx = fmtp.usedtx;
        if let Some(max) = fmtp.maxaveragebitrate {
            let ours = self
                .opus_bitrate
                .unwrap_or(default_opus_bitrate(self.opus_pcm_rate));
            self.opus_bitrate = Some(ours.min(max));
        }
        self.opus_max_playback_rate = fmtp.maxplaybackrate;
    }
}

/// The Opus a=fmtp parameters of RFC 7587 §6.1 that we act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OpusFmtp {
    pub useinbandfec: bool,
    pub usedtx: bool,
    pub maxaveragebitrate: Option<u32>,
    pub maxplaybackrate: Option<u32>,
    pub minptime: Option<u32>,
}

impl OpusFmtp {
    /// Parses an a=fmtp value such as `minptime=10;useinbandfec=1`.
    /// Unknown parameters and values outside RFC 7587's ranges are ignored
    /// (the RFC's defaults apply), so a peer's typo cannot fail the call.
    pub fn parse(value: &str) -> Self {
        let mut f = Self::default();
        for (key, val) in value
            .split(';')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.trim(), v.trim()))
        {
            let flag = || match val {
                "1" => Some(true),
                "0" => Some(false),
                _ => None,
            };
            let num = || val.parse::<u32>().ok();
            if key.eq_ignore_ascii_case("useinbandfec") {
                f.useinbandfec = flag().unwrap_or(false);
            } else if key.eq_ignore_ascii_case("usedtx") {
                f.usedtx = flag().unwrap_or(false);
            } else if key.eq_ignore_ascii_case("maxaveragebitrate") {
                f.maxaveragebitrate = num().filter(|b| (6000..=510_000).contains(b));
            } else if key.eq_ignore_ascii_case("maxplaybackrate") {
                f.maxplaybackrate = num().filter(|r| (8000..=48000).contains(r));
            } else if key.eq_ignore_ascii_case("minptime") {
                f.minptime = num().filter(|p| (3..=120).contains(p));
            }
        }
        f
    }
}

impl fmt::Display for OpusFmtp {
    /// The a=fmtp value announcing what *we* want to receive.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        if let Some(p) = self.minptime {
            parts.push(format!("minptime={p}"));
        }
        parts.push(format!("useinbandfec={}", u8::from(self.useinbandfec)));
        if self.usedtx {
            parts.push("usedtx=1".to_owned());
        }
        if let Some(b) = self.maxaveragebitrate {
            parts.push(format!("maxaveragebitrate={b}"));
        }
        if let Some(r) = self.maxplaybackrate {
            parts.push(format!("maxplaybackrate={r}"));
        }
        f.write_str(&parts.join(";"))
    }
}

/// Turns RTP payloads into PCM.
pub trait AudioDecoder: Send {
    /// Rate of the decoded PCM in Hz: 8000 (G.711), 16000 (G.722), or the
    /// configured Opus PCM rate (48000 by default).
    fn sample_rate(&self) -> u32;

    /// Samples in one frame: those of the last decoded packet, or the
    /// configured packet time before the first packet.
    fn frame_samples(&self) -> usize;

    /// Decodes one RTP payload, *appending* its PCM to `out` (a bad payload
    /// leaves `out` as it was).
    fn decode(&mut self, payload: &[u8], out: &mut Vec<i16>) -> Result<(), CodecError>;

    /// A packet is missing: append one frame ([`Self::frame_samples`]) of
    /// concealment to `out`.
    ///
    /// Opus: with `next_payload` (the packet after the lost one, which the
    /// caller still decodes normally afterwards) the frame is rebuilt from
    /// that packet's in-band FEC when it carries some, otherwise libopus's
    /// PLC runs. For a run of losses, pass `None` for all but the last.
    ///
    /// G.711 and G.722 have no concealment of their own and return
    /// [`CodecError::NoPlc`]; conceal in PCM instead.
    fn conceal(
        &mut self,
        next_payload: Option<&[u8]>,
        out: &mut Vec<i16>,
    ) -> Result<(), CodecError>;
}

/// Turns PCM frames into RTP payloads.
pub trait AudioEncoder: Send {
    /// Rate of the PCM the encoder takes, in Hz.
    fn sample_rate(&self) -> u32;

    /// Samples [`Self::encode`] takes per call (one packet time).
    fn frame_samples(&self) -> usize;

    /// Encodes exactly [`Self::frame_samples`] samples, *appending* one
    /// RTP payload to `out`.
    fn encode(&mut self, pcm: &[i16], out: &mut Vec<u8>) -> Result<(), CodecError>;

    /// How far the RTP timestamp advances per packet: 160 for 20 ms of
    /// G.711 *and* of G.722 (8000 Hz clock), 960 for 20 ms of Opus.
    fn rtp_timestamp_increment(&self) -> u32;

    /// True when the last payload was an Opus DTX frame (1-2 bytes) that
    /// need not be sent; the timestamp still advances, and the next sent
    /// packet should carry the RTP marker bit. Always false without DTX.
    fn last_was_dtx(&self) -> bool {
        false
    }
}

/// A decoder for `p.kind`.
pub fn decoder(p: &CodecParams) -> Result<Box<dyn AudioDecoder>, CodecError> {
    p.kind.check_ptime(p.ptime_ms)?;
    Ok(match p.kind {
        CodecKind::Pcmu | CodecKind::Pcma => Box::new(G711Decoder {
            kind: p.kind,
            frame: samples(8000, p.ptime_ms),
        }),
        CodecKind::G722 => Box::new(G722Decoder {
            // libg722's argument order differs between encoder and
            // decoder: (rate, packed, eight_k) here.
            codec: libg722::decoder::Decoder::new(G722Rate::Mode1_64000, false, false),
            frame: samples(16000, p.ptime_ms),
        }),
        CodecKind::Opus => Box::new(OpusDecoder::new(p)?),
    })
}

/// An encoder for `p.kind`.
pub fn encoder(p: &CodecParams) -> Result<Box<dyn AudioEncoder>, CodecError> {
    p.kind.check_ptime(p.ptime_ms)?;
    Ok(match p.kind {
        CodecKind::Pcmu | CodecKind::Pcma => Box::new(G711Encoder {
            kind: p.kind,
            frame: samples(8000, p.ptime_ms),
        }),
        CodecKind::G722 => Box::new(G722Encoder {
            // (rate, eight_k, packed): 64 kbit/s, 16 kHz input, one byte
            // per sample pair (RFC 3551 G.722 is never bit-packed).
            codec: libg722::encoder::Encoder::new(G722Rate::Mode1_64000, false, false),
            frame: samples(16000, p.ptime_ms),
            ts_increment: p.ptime_ms * 8,
        }),
        CodecKind::Opus => Box::new(OpusEncoder::new(p)?),
    })
}

fn samples(rate: u32, ms: u32) -> usize {
    // Rates and ptimes are validated small numbers; u64 avoids overflow.
    (u64::from(rate) * u64::from(ms) / 1000) as usize
}

fn check_frame(expected: usize, got: usize) -> Result<(), CodecError> {
    if expected == got {
        Ok(())
    } else {
        Err(CodecError::FrameSize { expected, got })
    }
}

// ---- G.711 ----------------------------------------------------------------

struct G711Decoder {
    kind: CodecKind,
    frame: usize,
}

impl AudioDecoder for G711Decoder {
    fn sample_rate(&self) -> u32 {
        8000
    }

    fn frame_samples(&self) -> usize {
        self.frame
    }

    fn decode(&mut self, payload: &[u8], out: &mut Vec<i16>) -> Result<(), CodecError> {
        if payload.is_empty() {
            return Err(CodecError::EmptyPayload { kind: self.kind });
        }
        let law = if self.kind == CodecKind::Pcmu {
            g711::ulaw_to_linear
        } else {
            g711::alaw_to_linear
        };
        out.extend(payload.iter().map(|&b| law(b)));
        self.frame = payload.len();
        Ok(())
    }

    fn conceal(&mut self, _: Option<&[u8]>, _: &mut Vec<i16>) -> Result<(), CodecError> {
        Err(CodecError::NoPlc { kind: self.kind })
    }
}

struct G711Encoder {
    kind: CodecKind,
    frame: usize,
}

impl AudioEncoder for G711Encoder {
    fn sample_rate(&self) -> u32 {
        8000
    }

    fn frame_samples(&self) -> usize {
        self.frame
    }

    fn encode(&mut self, pcm: &[i16], out: &mut Vec<u8>) -> Result<(), CodecError> {
        check_frame(self.frame, pcm.len())?;
        let law = if self.kind == CodecKind::Pcmu {
            g711::linear_to_ulaw
        } else {
            g711::linear_to_alaw
        };
        out.extend(pcm.iter().map(|&s| law(s)));
        Ok(())
    }

    fn rtp_timestamp_increment(&self) -> u32 {
        self.frame as u32
    }
}

// ---- G.722 ----------------------------------------------------------------

struct G722Decoder {
    codec: libg722::decoder::Decoder,
    frame: usize,
}

impl AudioDecoder for G722Decoder {
    fn sample_rate(&self) -> u32 {
        16000
    }

    fn frame_samples(&self) -> usize {
        self.frame
    }

    fn decode(&mut self, payload: &[u8], out: &mut Vec<i16>) -> Result<(), CodecError> {
        if payload.is_empty() {
            return Err(CodecError::EmptyPayload {
                kind: CodecKind::G722,
            });
        }
        // Every byte is a valid code word (6 low-band + 2 high-band bits)
        // giving two 16 kHz samples. libg722 returns a fresh Vec per call.
        let pcm = self.codec.decode(payload);
        self.frame = pcm.len();
        out.extend_from_slice(&pcm);
        Ok(())
    }

    fn conceal(&mut self, _: Option<&[u8]>, _: &mut Vec<i16>) -> Result<(), CodecError> {
        Err(CodecError::NoPlc {
            kind: CodecKind::G722,
        })
    }
}

struct G722Encoder {
    codec: libg722::encoder::Encoder,
    frame: usize,
    ts_increment: u32,
}

impl AudioEncoder for G722Encoder {
    fn sample_rate(&self) -> u32 {
        16000
    }

    fn frame_samples(&self) -> usize {
        self.frame
    }

    fn encode(&mut self, pcm: &[i16], out: &mut Vec<u8>) -> Result<(), CodecError> {
        // Also guarantees the even length libg722 asserts on.
        check_frame(self.frame, pcm.len())?;
        out.extend_from_slice(&self.codec.encode(pcm));
        Ok(())
    }

    fn rtp_timestamp_increment(&self) -> u32 {
        // RFC 3551 §4.5.2: G.722's RTP clock is 8000 Hz although it
        // samples at 16 kHz, an error in RFC 1890 kept for compatibility.
        self.ts_increment
    }
}

// ---- Opus -----------------------------------------------------------------

/// Longest Opus packet: 120 ms.
const OPUS_MAX_PACKET_MS: u32 = 120;
/// libopus's recommended output buffer for one packet.
const OPUS_MAX_PAYLOAD: usize = 4000;
/// Encoder complexity for calls at a PCM rate. libopus defaults to 10,
/// its slowest. Measured on the call's speech (`opus_complexity_table`,
/// release build, benches/RESULTS.md "Opus for speech"): the lowest
/// complexity whose fidelity stays with 10's.
/// - 8 and 12 kHz (narrowband SILK, a G.711-rate agent): 2 matches 10
///   (correlation 0.974 vs 0.972, SNR 12.8 vs 12.4 dB) at 45 % of its cost
///   (36.5 vs 81.3 µs per 20 ms frame); 0-1 lose 0.01 of correlation.
/// - 16 kHz and up: 5 costs half of 10 (16 kHz 86 vs 178 µs, 48 kHz 106
///   vs 196 µs) for at most 0.002 less correlation and ~1-2 dB less SNR;
///   below 5 wideband fidelity drops (16 kHz correlation 0.984 at 0).
pub fn opus_speech_complexity(pcm_rate: u32) -> u8 {
    if pcm_rate <= 12000 {
        2
    } else {
        5
    }
}
/// Loss rate the encoder plans FEC for. libopus sends no LBRR at 0 %.
const OPUS_FEC_LOSS_PERC: u8 = 10;

fn opus_rate(rate: u32) -> Result<SampleRate, CodecError> {
    Ok(match rate {
        8000 => SampleRate::Hz8000,
        12000 => SampleRate::Hz12000,
        16000 => SampleRate::Hz16000,
        24000 => SampleRate::Hz24000,
        48000 => SampleRate::Hz48000,
        other => return Err(CodecError::UnsupportedOpusRate(other)),
    })
}

/// Speech bit rates in RFC 7587 §3.1.1's recommended ranges, by the audio
/// bandwidth our PCM rate allows.
fn default_opus_bitrate(pcm_rate: u32) -> u32 {
    match pcm_rate {
        0..=8000 => 12_000,
        8001..=12000 => 16_000,
        12001..=16000 => 20_000,
        16001..=24000 => 28_000,
        _ => 32_000,
    }
}

struct OpusDecoder {
    codec: OpusDec,
    rate: u32,
    /// Samples of the last decoded packet (one "frame" to conceal).
    frame: usize,
    max_samples: usize,
}

impl OpusDecoder {
    fn new(p: &CodecParams) -> Result<Self, CodecError> {
        let rate = p.opus_pcm_rate;
        let codec =
            OpusDec::new(opus_rate(rate)?, Channels::Mono).map_err(CodecError::OpusSetup)?;
        Ok(Self {
            codec,
            rate,
            frame: samples(rate, p.ptime_ms),
            max_samples: samples(rate, OPUS_MAX_PACKET_MS),
        })
    }

    /// Runs libopus into `out[start..start + room]`, keeping only what it
    /// wrote. Errors leave `out` as it was.
    fn decode_into(
        &mut self,
        packet: Option<&[u8]>,
        room: usize,
        fec: bool,
        out: &mut Vec<i16>,
    ) -> Result<usize, CodecError> {
        let start = out.len();
        out.resize(start + room, 0);
        let result = (|| {
            let packet = packet
                .map(Packet::try_from)
                .transpose()
                .map_err(CodecError::OpusDecode)?;
            let signals =
                MutSignals::try_from(&mut out[start..]).map_err(CodecError::OpusDecode)?;
            self.codec
                .decode(packet, signals, fec)
                .map_err(CodecError::OpusDecode)
        })();
        match result {
            Ok(n) if n <= room => {
                out.truncate(start + n);
                Ok(n)
            }
            Ok(n) => {
                out.truncate(start);
                Err(CodecError::FrameSize {
                    expected: room,
                    got: n,
                })
            }
            Err(e) => {
                out.truncate(start);
                Err(e)
            }
        }
    }
}

impl AudioDecoder for OpusDecoder {
    fn sample_rate(&self) -> u32 {
        self.rate
    }

    fn frame_samples(&self) -> usize {
        self.frame
    }

    fn decode(&mut self, payload: &[u8], out: &mut Vec<i16>) -> Result<(), CodecError> {
        if payload.is_empty() {
            return Err(CodecError::EmptyPayload {
                kind: CodecKind::Opus,
            });
        }
        let n = self.decode_into(Some(payload), self.max_samples, false, out)?;
        if n > 0 {
            self.frame = n;
        }
        Ok(())
    }

    fn conceal(
        &mut self,
        next_payload: Option<&[u8]>,
        out: &mut Vec<i16>,
    ) -> Result<(), CodecError> {
        // libopus conceals (or FEC-decodes) exactly the frame size asked
        // for, which must be the lost packet's duration.
        let frame = self.frame;
        match next_payload.filter(|p| !p.is_empty()) {
            Some(next) => match self.decode_into(Some(next), frame, true, out) {
                Ok(_) => Ok(()),
                // A corrupt next packet must not cost us the frame.
                Err(_) => self.decode_into(None, frame, false, out).map(|_| ()),
            },
            None => self.decode_into(None, frame, false, out).map(|_| ()),
        }
    }
}

struct OpusEncoder {
    codec: OpusEnc,
    rate: u32,
    frame: usize,
    ts_increment: u32,
    last_dtx: bool,
}

impl OpusEncoder {
    fn new(p: &CodecParams) -> Result<Self, CodecError> {
        let rate = p.opus_pcm_rate;
        // Audio rather than Voip: the agent's voice (often TTS) keeps its
        // waveform better; measured on a baresip echo through two Opus
        // encoders, correlation 0.91 (Voip) -> 0.95 (Audio).
        let mut codec = OpusEnc::new(opus_rate(rate)?, Channels::Mono, Application::Audio)
            .map_err(CodecError::OpusSetup)?;
        let bitrate = p
            .opus_bitrate
            .unwrap_or(default_opus_bitrate(rate))
            .clamp(6000, 510_000);
        let setup = |codec: &mut OpusEnc| -> Result<(), audiopus::Error> {
            // Speech: biases libopus towards SILK/hybrid, the modes that
            // carry FEC and do DTX.
            codec.set_signal(Signal::Voice)?;
            let complexity = p.opus_complexity.unwrap_or(opus_speech_complexity(rate));
            codec.set_complexity(complexity.min(10))?;
            // Clamped above, so the cast cannot wrap.
            codec.set_bitrate(Bitrate::BitsPerSecond(bitrate as i32))?;
            codec.set_inband_fec(p.opus_fec)?;
            codec.set_packet_loss_perc(if p.opus_fec { OPUS_FEC_LOSS_PERC } else { 0 })?;
            codec.set_dtx(p.opus_dtx)?;
            if let Some(max) = p.opus_max_playback_rate {
                codec.set_max_bandwidth(match max {
                    0..=8000 => Bandwidth::Narrowband,
                    8001..=12000 => Bandwidth::Mediumband,
                    12001..=16000 => Bandwidth::Wideband,
                    16001..=24000 => Bandwidth::Superwideband,
                    _ => Bandwidth::Fullband,
                })?;
            }
            Ok(())
        };
        setup(&mut codec).map_err(CodecError::OpusSetup)?;
        Ok(Self {
            codec,
            rate,
            frame: samples(rate, p.ptime_ms),
            ts_increment: p.ptime_ms * 48,
            last_dtx: false,
        })
    }
}

impl AudioEncoder for OpusEncoder {
    fn sample_rate(&self) -> u32 {
        self.rate
    }

    fn frame_samples(&self) -> usize {
        self.frame
    }

    fn encode(&mut self, pcm: &[i16], out: &mut Vec<u8>) -> Result<(), CodecError> {
        check_frame(self.frame, pcm.len())?;
        let start = out.len();
        out.resize(start + OPUS_MAX_PAYLOAD, 0);
        match self.codec.encode(pcm, &mut out[start..]) {
            Ok(n) if n <= OPUS_MAX_PAYLOAD => {
                out.truncate(start + n);
                // libopus: "2 bytes or less: no need to transmit (DTX)".
                self.last_dtx = n <= 2;
                Ok(())
            }
            Ok(n) => {
                out.truncate(start);
                Err(CodecError::FrameSize {
                    expected: OPUS_MAX_PAYLOAD,
                    got: n,
                })
            }
            Err(e) => {
                out.truncate(start);
                Err(CodecError::OpusEncode(e))
            }
        }
    }

    fn rtp_timestamp_increment(&self) -> u32 {
        // RFC 7587 §4.1: the RTP clock is 48 kHz whatever the PCM rate.
        self.ts_increment
    }

    fn last_was_dtx(&self) -> bool {
        self.last_dtx
    }
}

/// Signal generators and measurements shared by the codec and resampler
/// tests.
#[cfg(test)]
pub(crate) mod test_signal {
    use std::f64::consts::TAU;

    /// `n` samples of a sine at `freq` Hz sampled at `rate`.
    pub fn sine(freq: f64, rate: u32, n: usize, amp: f64) -> Vec<i16> {
        (0..n)
            .map(|i| (amp * (TAU * freq * i as f64 / f64::from(rate)).sin()).round() as i16)
            .collect()
    }

    /// Speech-like: a gliding 110-180 Hz pitch with harmonics up to `top`
    /// Hz under a 4 Hz syllable envelope. Harmonics fall at 6 dB/octave,
    /// with two formant bumps and another 6 dB/octave above 2 kHz, which
    /// puts the 4 kHz band ~25 dB and the 7 kHz band ~32 dB under the
    /// 500 Hz band, close to the long-term average speech spectrum.
    pub fn speech_like(rate: u32, n: usize, top: f64) -> Vec<i16> {
        let mut phase = 0.0f64;
        (0..n)
            .map(|i| {
                let t = i as f64 / f64::from(rate);
                let f0 = 145.0 + 35.0 * (TAU * 0.7 * t).sin();
                phase += TAU * f0 / f64::from(rate);
                let mut v = 0.0;
                let mut k = 1.0;
                while k * f0 < top {
                    // A formant-ish bump around 500 Hz and 1500 Hz.
                    let f = k * f0;
                    let formant = 1.0
                        + 2.0 * (-((f - 500.0) / 300.0).powi(2)).exp()
                        + 1.0 * (-((f - 1500.0) / 400.0).powi(2)).exp();
                    let tilt = 1.0 / (1.0 + (f / 2000.0).powi(2)).sqrt();
                    v += formant * tilt / k * (k * phase).sin();
                    k += 1.0;
                }
                let env = 0.55 + 0.45 * (TAU * 4.0 * t).sin();
                (3000.0 * env * v).round().clamp(-32768.0, 32767.0) as i16
            })
            .collect()
    }

    /// `n` samples of uniform white noise in ±`amp`: a delay probe that,
    /// unlike a sine, has one unambiguous best lag.
    pub fn noise(n: usize, amp: u32, seed: u64) -> Vec<i16> {
        let mut rng = Lcg(seed);
        (0..n)
            .map(|_| ((rng.next_u32() % (2 * amp + 1)) as i32 - amp as i32) as i16)
            .collect()
    }

    /// The lag (0..=max_lag) by which `test` trails `reference`, by
    /// normalised cross-correlation. Use a broadband `reference`: for a
    /// sine every period ties.
    pub fn best_lag(reference: &[i16], test: &[i16], max_lag: usize) -> usize {
        (0..=max_lag)
            .max_by(|&a, &b| {
                correlation(reference, test, a).total_cmp(&correlation(reference, test, b))
            })
            .unwrap_or(0)
    }

    /// Normalised cross-correlation of `reference[i]` with `test[i + lag]`.
    pub fn correlation(reference: &[i16], test: &[i16], lag: usize) -> f64 {
        let pairs = reference
            .iter()
            .zip(test.iter().skip(lag))
            .map(|(&r, &t)| (f64::from(r), f64::from(t)));
        let (mut rt, mut rr, mut tt) = (0.0, 0.0, 0.0);
        for (r, t) in pairs {
            rt += r * t;
            rr += r * r;
            tt += t * t;
        }
        if rr == 0.0 || tt == 0.0 {
            0.0
        } else {
            rt / (rr * tt).sqrt()
        }
    }

    /// SNR in dB of `test[i + lag]` against `reference[i]`, skipping the
    /// first `skip` reference samples (start-up transients).
    pub fn snr_db(reference: &[i16], test: &[i16], lag: usize, skip: usize) -> f64 {
        let (mut sig, mut noise) = (0.0, 0.0);
        for (&r, &t) in reference.iter().zip(test.iter().skip(lag)).skip(skip) {
            let (r, t) = (f64::from(r), f64::from(t));
            sig += r * r;
            noise += (r - t) * (r - t);
        }
        10.0 * (sig / noise.max(1e-9)).log10()
    }

    /// A small deterministic generator (no `rand` in tests' hot loops).
    pub struct Lcg(pub u64);

    impl Lcg {
        pub fn next_u32(&mut self) -> u32 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) as u32
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::test_signal::*;
    use super::*;

    fn round_trip(p: &CodecParams, input: &[i16]) -> (Vec<i16>, Vec<usize>) {
        let mut enc = encoder(p).unwrap();
        let mut dec = decoder(p).unwrap();
        let (mut pcm, mut sizes) = (Vec::new(), Vec::new());
        for frame in input.chunks_exact(enc.frame_samples()) {
            let mut payload = Vec::new();
            enc.encode(frame, &mut payload).unwrap();
            sizes.push(payload.len());
            dec.decode(&payload, &mut pcm).unwrap();
        }
        (pcm, sizes)
    }

    // ---- G.711 --------------------------------------------------------

    #[test]
    fn g711_frames_are_one_byte_per_sample_on_an_8k_clock() {
        for kind in [CodecKind::Pcmu, CodecKind::Pcma] {
            let p = CodecParams::new(kind);
            let enc = encoder(&p).unwrap();
            assert_eq!(
                (enc.frame_samples(), enc.rtp_timestamp_increment()),
                (160, 160)
            );
            let input = speech_like(8000, 8000, 3400.0);
            let (pcm, sizes) = round_trip(&p, &input);
            assert!(sizes.iter().all(|&s| s == 160));
            let snr = snr_db(&input, &pcm, 0, 0);
            assert!(snr > 30.0, "{kind}: {snr:.1} dB");
        }
    }

    #[test]
    fn g711_decoder_matches_the_tables() {
        let mut dec = decoder(&CodecParams::new(CodecKind::Pcmu)).unwrap();
        let mut out = Vec::new();
        dec.decode(&[0xff, 0x80, 0x00], &mut out).unwrap();
        assert_eq!(out, [0, 32124, -32124]);
        let mut dec = decoder(&CodecParams::new(CodecKind::Pcma)).unwrap();
        out.clear();
        dec.decode(&[0xd5, 0x55], &mut out).unwrap();
        assert_eq!(out, [8, -8]);
    }

    #[test]
    fn codecs_without_plc_say_so() {
        for kind in [CodecKind::Pcmu, CodecKind::Pcma, CodecKind::G722] {
            let mut dec = decoder(&CodecParams::new(kind)).unwrap();
            let mut out = Vec::new();
            assert!(matches!(
                dec.conceal(None, &mut out),
                Err(CodecError::NoPlc { kind: k }) if k == kind
            ));
            assert!(out.is_empty());
            assert_eq!(
                dec.frame_samples(),
                if kind == CodecKind::G722 { 320 } else { 160 }
            );
        }
    }

    // ---- G.722 --------------------------------------------------------

    #[test]
    fn g722_is_64_kbits_on_an_8k_rtp_clock() {
        let p = CodecParams::new(CodecKind::G722);
        let enc = encoder(&p).unwrap();
        let dec = decoder(&p).unwrap();
        assert_eq!(enc.sample_rate(), 16000);
        assert_eq!(dec.sample_rate(), 16000);
        assert_eq!(enc.frame_samples(), 320);
        assert_eq!(enc.rtp_timestamp_increment(), 160);
        let p30 = CodecParams { ptime_ms: 30, ..p };
        assert_eq!(encoder(&p30).unwrap().rtp_timestamp_increment(), 240);
    }

    /// The codec's delay (its two 24-tap QMFs), found with white noise.
    fn g722_delay() -> usize {
        let input = noise(16000, 4000, 3);
        let (pcm, _) = round_trip(&CodecParams::new(CodecKind::G722), &input);
        let lag = best_lag(&input, &pcm, 64);
        assert_eq!(lag, 22, "spandsp G.722's QMF delay");
        lag
    }

    #[test]
    fn g722_keeps_a_1khz_sine_above_20db() {
        let p = CodecParams::new(CodecKind::G722);
        let input = sine(1000.0, 16000, 16000, 10000.0);
        let (pcm, sizes) = round_trip(&p, &input);
        assert!(sizes.iter().all(|&s| s == 160), "160 bytes per 20 ms");
        assert_eq!(pcm.len(), input.len());
        let lag = g722_delay();
        let snr = snr_db(&input, &pcm, lag, 1600);
        eprintln!("G.722 1 kHz sine: delay {lag} samples, SNR {snr:.1} dB");
        assert!(snr >= 20.0, "SNR {snr:.1} dB");
    }

    #[test]
    fn g722_keeps_speech_like_audio_above_20db() {
        let p = CodecParams::new(CodecKind::G722);
        let input = speech_like(16000, 32000, 7000.0);
        let (pcm, _) = round_trip(&p, &input);
        let lag = g722_delay();
        assert_eq!(best_lag(&input, &pcm, 64), lag);
        let snr = snr_db(&input, &pcm, lag, 1600);
        eprintln!("G.722 speech-like: delay {lag} samples, SNR {snr:.1} dB");
        assert!(snr >= 20.0, "SNR {snr:.1} dB");
    }

    #[test]
    fn g722_rejects_odd_frames_instead_of_panicking() {
        let mut enc = encoder(&CodecParams::new(CodecKind::G722)).unwrap();
        let mut out = Vec::new();
        let err = enc.encode(&[0; 319], &mut out).unwrap_err();
        assert!(matches!(
            err,
            CodecError::FrameSize {
                expected: 320,
                got: 319
            }
        ));
        assert!(out.is_empty());
    }

    // ---- Opus ---------------------------------------------------------

    fn opus(fec: bool, dtx: bool) -> CodecParams {
        CodecParams {
            opus_fec: fec,
            opus_dtx: dtx,
            ..CodecParams::new(CodecKind::Opus)
        }
    }

    #[test]
    fn opus_frames_are_20ms_on_a_48k_clock_at_any_pcm_rate() {
        for rate in [8000u32, 12000, 16000, 24000, 48000] {
            let p = CodecParams {
                opus_pcm_rate: rate,
                ..opus(false, false)
            };
            let enc = encoder(&p).unwrap();
            let dec = decoder(&p).unwrap();
            assert_eq!(enc.frame_samples(), rate as usize / 50);
            assert_eq!(enc.rtp_timestamp_increment(), 960);
            assert_eq!((enc.sample_rate(), dec.sample_rate()), (rate, rate));
        }
        let p = CodecParams {
            opus_pcm_rate: 44100,
            ..opus(false, false)
        };
        assert!(matches!(
            encoder(&p),
            Err(CodecError::UnsupportedOpusRate(44100))
        ));
        for ptime_ms in [0, 5, 30, 200] {
            let p = CodecParams {
                ptime_ms,
                ..opus(false, false)
            };
            assert!(matches!(
                decoder(&p),
                Err(CodecError::UnsupportedPtime { .. })
            ));
        }
    }

    #[test]
    fn opus_round_trip_tracks_speech_like_audio() {
        let p = opus(false, false);
        let input = speech_like(48000, 96000, 8000.0);
        let (pcm, sizes) = round_trip(&p, &input);
        assert_eq!(pcm.len(), input.len());
        let lag = best_lag(&input, &pcm, 1000);
        let corr = correlation(&input[4800..], &pcm[4800..], lag);
        let snr = snr_db(&input, &pcm, lag, 4800);
        let kbps = sizes.iter().sum::<usize>() as f64 * 8.0 / 2.0 / 1000.0;
        eprintln!(
            "Opus 48k speech-like: delay {lag} samples, correlation {corr:.3}, SNR {snr:.1} dB, {kbps:.1} kbit/s"
        );
        // SILK codes perceptually, not the waveform: its variable high-pass
        // (60-100 Hz) and pitch processing shift the phase of the lowest
        // harmonics, which caps waveform SNR near 7 dB at any bit rate.
        assert!(corr >= 0.85, "correlation {corr:.3}");
    }

    #[test]
    fn opus_keeps_a_1khz_sine_above_20db() {
        let p = opus(false, false);
        let input = sine(1000.0, 48000, 96000, 8000.0);
        let (pcm, _) = round_trip(&p, &input);
        // The lag is ambiguous for a sine, so search within half a period
        // of the encoder's 312-sample look-ahead.
        let (lag, snr) = (288..=336)
            .map(|lag| (lag, snr_db(&input, &pcm, lag, 4800)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap();
        eprintln!("Opus 48k 1 kHz sine: delay {lag} samples, SNR {snr:.1} dB");
        assert!(snr >= 20.0, "SNR {snr:.1} dB");
    }

    #[test]
    fn opus_at_16k_needs_no_resampler() {
        let p = CodecParams {
            opus_pcm_rate: 16000,
            ..opus(false, false)
        };
        let input = speech_like(16000, 32000, 7000.0);
        let (pcm, _) = round_trip(&p, &input);
        let lag = best_lag(&input, &pcm, 400);
        let corr = correlation(&input[1600..], &pcm[1600..], lag);
        eprintln!("Opus 16k speech-like: delay {lag} samples, correlation {corr:.3}");
        assert!(corr >= 0.85, "correlation {corr:.3}");
    }

    #[test]
    fn opus_decodes_longer_packets_than_it_sends() {
        let p40 = CodecParams {
            ptime_ms: 40,
            ..opus(false, false)
        };
        let mut enc = encoder(&p40).unwrap();
        let mut dec = decoder(&opus(false, false)).unwrap();
        assert_eq!(dec.frame_samples(), 960);
        let mut payload = Vec::new();
        enc.encode(&sine(440.0, 48000, 1920, 8000.0), &mut payload)
            .unwrap();
        let mut out = Vec::new();
        dec.decode(&payload, &mut out).unwrap();
        assert_eq!(out.len(), 1920);
        assert_eq!(
            dec.frame_samples(),
            1920,
            "conceals in the peer's frame size"
        );
        dec.conceal(None, &mut out).unwrap();
        assert_eq!(out.len(), 3840);
    }

    /// Encodes `input`, drops ~10 % of packets (never two in a row, so each
    /// loss has a next packet carrying its FEC) and decodes with
    /// `conceal(Some(next))` or `conceal(None)`. Returns the output and
    /// the lost frame indices.
    fn decode_with_loss(packets: &[Vec<u8>], lost: &[bool], use_fec: bool) -> Vec<i16> {
        let mut dec = decoder(&opus(true, false)).unwrap();
        let mut out = Vec::new();
        for (i, packet) in packets.iter().enumerate() {
            if lost[i] {
                let next = packets.get(i + 1).map(Vec::as_slice).filter(|_| use_fec);
                let before = out.len();
                dec.conceal(next, &mut out).unwrap();
                assert_eq!(out.len() - before, 960);
            } else {
                dec.decode(packet, &mut out).unwrap();
            }
        }
        out
    }

    #[test]
    fn opus_fec_conceals_better_than_plc() {
        let p = opus(true, false);
        let input = speech_like(48000, 48000 * 4, 8000.0);
        let mut enc = encoder(&p).unwrap();
        let packets: Vec<Vec<u8>> = input
            .chunks_exact(960)
            .map(|f| {
                let mut v = Vec::new();
                enc.encode(f, &mut v).unwrap();
                v
            })
            .collect();
        let mut rng = Lcg(7);
        let mut lost = vec![false; packets.len()];
        for i in 5..packets.len() - 1 {
            lost[i] = !lost[i - 1] && rng.next_u32().is_multiple_of(10);
        }
        let n_lost = lost.iter().filter(|&&l| l).count();
        assert!(n_lost >= 12, "{n_lost} losses");

        let clean = decode_with_loss(&packets, &vec![false; packets.len()], false);
        let lag = best_lag(&input, &clean, 1000);
        let fec = decode_with_loss(&packets, &lost, true);
        let plc = decode_with_loss(&packets, &lost, false);
        // Score only the concealed frames (in output time).
        let score = |out: &[i16]| {
            let (mut sum_c, mut sum_snr) = (0.0, 0.0);
            for (i, _) in lost.iter().enumerate().filter(|(_, &l)| l) {
                let r = &input[i * 960..(i + 1) * 960];
                let t = &out[i * 960 + lag..((i + 1) * 960 + lag).min(out.len())];
                sum_c += correlation(r, t, 0);
                sum_snr += snr_db(r, t, 0, 0);
            }
            (sum_c / n_lost as f64, sum_snr / n_lost as f64)
        };
        let (c_fec, s_fec) = score(&fec);
        let (c_plc, s_plc) = score(&plc);
        eprintln!(
            "Opus {n_lost} lost of {} frames: FEC correlation {c_fec:.3} (SNR {s_fec:.1} dB), PLC {c_plc:.3} (SNR {s_plc:.1} dB)",
            packets.len()
        );
        assert!(c_fec > c_plc + 0.1, "FEC {c_fec:.3} vs PLC {c_plc:.3}");
    }

    #[test]
    fn opus_dtx_sends_tiny_packets_on_silence() {
        let mut enc = encoder(&opus(false, true)).unwrap();
        let mut sizes = Vec::new();
        let silence = vec![0i16; 960];
        for _ in 0..50 {
            let mut v = Vec::new();
            enc.encode(&silence, &mut v).unwrap();
            sizes.push((v.len(), enc.last_was_dtx()));
        }
        let tail = &sizes[25..];
        eprintln!(
            "Opus DTX on silence, payload sizes: {:?}",
            sizes.iter().map(|s| s.0).collect::<Vec<_>>()
        );
        assert!(
            tail.iter().filter(|&&(len, dtx)| len <= 2 && dtx).count() >= tail.len() * 3 / 4,
            "{sizes:?}"
        );
        // Speech again: real packets, DTX flag cleared.
        let mut v = Vec::new();
        let speech = speech_like(48000, 960 * 5, 8000.0);
        for f in speech.chunks_exact(960) {
            v.clear();
            enc.encode(f, &mut v).unwrap();
        }
        assert!(v.len() > 10 && !enc.last_was_dtx());

        let mut enc = encoder(&opus(false, false)).unwrap();
        for _ in 0..50 {
            let mut v = Vec::new();
            enc.encode(&silence, &mut v).unwrap();
            assert!(!enc.last_was_dtx());
        }
    }

    #[test]
    fn opus_rejects_malformed_packets() {
        let mut dec = decoder(&opus(false, false)).unwrap();
        let mut out = vec![1, 2, 3];
        let bad: &[&[u8]] = &[
            &[],
            // Code 3 (arbitrary frame count) with no count byte.
            &[0x03],
            // Code 1 (two equal frames) with an odd remainder.
            &[0x01, 0x00],
            // Code 3, 63 frames of 20 ms: 1.26 s, over the 120 ms cap.
            &[0x0b, 0x3f],
            // Code 2 (two frames), first length runs past the end.
            &[0x02, 0xfb, 0x01],
        ];
        for payload in bad {
            assert!(dec.decode(payload, &mut out).is_err(), "{payload:02x?}");
            assert_eq!(out, [1, 2, 3], "error leaves out untouched");
        }
        // The decoder still works afterwards.
        let mut enc = encoder(&opus(false, false)).unwrap();
        let mut payload = Vec::new();
        enc.encode(&sine(300.0, 48000, 960, 5000.0), &mut payload)
            .unwrap();
        dec.decode(&payload, &mut out).unwrap();
        assert_eq!(out.len(), 3 + 960);
        // A corrupt "next" packet still gives a concealed frame.
        dec.conceal(Some(&[0x03]), &mut out).unwrap();
        assert_eq!(out.len(), 3 + 1920);
    }

    #[test]
    fn encoders_reject_wrong_frame_sizes() {
        for kind in CodecKind::ALL {
            let mut enc = encoder(&CodecParams::new(*kind)).unwrap();
            let n = enc.frame_samples();
            let mut out = Vec::new();
            for len in [0, 1, n - 1, n + 1, 2 * n] {
                assert!(
                    matches!(
                        enc.encode(&vec![0; len], &mut out),
                        Err(CodecError::FrameSize { .. })
                    ),
                    "{kind} {len}"
                );
            }
            assert!(out.is_empty());
        }
    }

    #[test]
    fn garbage_and_truncated_payloads_never_panic() {
        let mut rng = Lcg(0x5eed);
        for kind in CodecKind::ALL {
            for rate in [8000u32, 48000] {
                let p = CodecParams {
                    opus_pcm_rate: rate,
                    ..CodecParams::new(*kind)
                };
                let mut dec = decoder(&p).unwrap();
                let mut enc = encoder(&p).unwrap();
                let mut good = Vec::new();
                enc.encode(
                    &sine(440.0, enc.sample_rate(), enc.frame_samples(), 9000.0),
                    &mut good,
                )
                .unwrap();
                let mut out = Vec::new();
                for round in 0..3000 {
                    out.clear();
                    let payload: Vec<u8> = match round % 3 {
                        // Random bytes, random length (up to a jumbo frame).
                        0 => {
                            let len = (rng.next_u32() % 1600) as usize;
                            (0..len).map(|_| rng.next_u32() as u8).collect()
                        }
                        // A real packet cut short.
                        1 => good[..(rng.next_u32() as usize % (good.len() + 1))].to_vec(),
                        // A real packet with flipped bits.
                        _ => good
                            .iter()
                            .map(|&b| {
                                if rng.next_u32().is_multiple_of(8) {
                                    b ^ rng.next_u32() as u8
                                } else {
                                    b
                                }
                            })
                            .collect(),
                    };
                    if dec.decode(&payload, &mut out).is_ok() {
                        assert!(
                            out.len() <= 48000 * 120 / 1000,
                            "{kind}: {} samples",
                            out.len()
                        );
                    }
                    let _ = dec.conceal(Some(&payload), &mut out);
                    let _ = dec.conceal(None, &mut out);
                }
            }
        }
    }

    #[test]
    fn opus_fmtp_is_parsed_leniently_and_applied_to_what_we_send() {
        let f = OpusFmtp::parse(" minptime=10; useinbandfec=1;usedtx=1;maxaveragebitrate=20000;maxplaybackrate=16000;stereo=0");
        assert_eq!(
            f,
            OpusFmtp {
                useinbandfec: true,
                usedtx: true,
                maxaveragebitrate: Some(20000),
                maxplaybackrate: Some(16000),
                minptime: Some(10),
            }
        );
        let junk = OpusFmtp::parse("useinbandfec=yes;maxaveragebitrate=9999999;=;;x;usedtx");
        assert_eq!(junk, OpusFmtp::default());

        let mut p = CodecParams::new(CodecKind::Opus);
        p.apply_remote_opus_fmtp(&f);
        assert!(p.opus_fec && p.opus_dtx);
        assert_eq!(p.opus_bitrate, Some(20000));
        assert_eq!(p.opus_max_playback_rate, Some(16000));
        assert!(encoder(&p).is_ok());

        let ours = OpusFmtp {
            minptime: Some(10),
            useinbandfec: true,
            ..OpusFmtp::default()
        };
        assert_eq!(ours.to_string(), "minptime=10;useinbandfec=1");
        assert_eq!(OpusFmtp::parse(&ours.to_string()), ours);
    }

    #[test]
    fn sdp_facts_match_rfc_3551_and_7587() {
        let facts: Vec<_> = CodecKind::ALL
            .iter()
            .map(|k| {
                (
                    k.encoding_name(),
                    k.rtp_clock_rate(),
                    k.rtpmap_channels(),
                    k.static_pt(),
                )
            })
            .collect();
        assert_eq!(
            facts,
            [
                ("PCMU", 8000, None, Some(0)),
                ("PCMA", 8000, None, Some(8)),
                ("G722", 8000, None, Some(9)),
                ("opus", 48000, Some(2), None),
            ]
        );
        assert!(CodecKind::Pcma.is_g711() && !CodecKind::G722.is_g711());
    }

    /// Per-20 ms-frame cost of each codec and of 8k<->48k resampling.
    /// Run: `cargo test --release per_frame_cost -- --ignored --nocapture`.
    #[test]
    #[ignore = "timing report, run in release"]
    fn per_frame_cost() {
        use crate::media::resample::Resampler;
        use std::time::Instant;
        const FRAMES: usize = 5000;
        let report = |what: &str, start: Instant| {
            let ns = start.elapsed().as_nanos() as f64 / FRAMES as f64;
            eprintln!("{what:<34} {:>8.1} µs/frame", ns / 1000.0);
        };
        let opus_at = |rate: u32, fec: bool| CodecParams {
            opus_pcm_rate: rate,
            opus_fec: fec,
            ..CodecParams::new(CodecKind::Opus)
        };
        let setups = [
            ("PCMU".to_owned(), CodecParams::new(CodecKind::Pcmu)),
            ("PCMA".to_owned(), CodecParams::new(CodecKind::Pcma)),
            ("G722".to_owned(), CodecParams::new(CodecKind::G722)),
            ("opus 48k".to_owned(), opus_at(48000, false)),
            ("opus 48k fec".to_owned(), opus_at(48000, true)),
            ("opus 16k".to_owned(), opus_at(16000, false)),
        ];
        for (name, p) in &setups {
            let kind = name;
            let mut enc = encoder(p).unwrap();
            let mut dec = decoder(p).unwrap();
            let top = f64::from(enc.sample_rate()).min(16000.0) * 0.45;
            let input = speech_like(enc.sample_rate(), enc.frame_samples() * FRAMES, top);
            let mut packets = Vec::with_capacity(FRAMES);
            let t = Instant::now();
            for f in input.chunks_exact(enc.frame_samples()) {
                let mut v = Vec::with_capacity(200);
                enc.encode(f, &mut v).unwrap();
                packets.push(v);
            }
            report(&format!("{kind} encode"), t);
            let mut out = Vec::with_capacity(6000);
            let t = Instant::now();
            for pkt in &packets {
                out.clear();
                dec.decode(pkt, &mut out).unwrap();
            }
            report(&format!("{kind} decode"), t);
            if p.kind == CodecKind::Opus {
                let t = Instant::now();
                for _ in 0..FRAMES {
                    out.clear();
                    dec.conceal(None, &mut out).unwrap();
                }
                report(&format!("{kind} conceal (PLC)"), t);
                if p.opus_fec {
                    let t = Instant::now();
                    for pkt in &packets {
                        out.clear();
                        dec.conceal(Some(pkt), &mut out).unwrap();
                    }
                    report(&format!("{kind} conceal (FEC)"), t);
                }
            }
        }
        for (from, to) in [
            (8000, 48000),
            (48000, 8000),
            (8000, 16000),
            (16000, 24000),
            (24000, 8000),
        ] {
            let mut r = Resampler::new(from, to, 20).unwrap();
            let input = speech_like(from, r.input_block() * FRAMES, 3400.0);
            let mut out = Vec::with_capacity(r.output_block());
            let t = Instant::now();
            for f in input.chunks_exact(r.input_block()) {
                out.clear();
                r.process(f, &mut out).unwrap();
            }
            report(&format!("resample {from}->{to}"), t);
        }
    }

    /// Encode cost and waveform fidelity of Opus by encoder complexity, on
    /// real speech (tests/data/speech_8k.wav, resampled to the PCM rate),
    /// the numbers behind [`opus_speech_complexity`].
    /// Run: `cargo test --release --lib opus_complexity_table -- --ignored --nocapture`.
    #[test]
    #[ignore = "timing report, run in release"]
    fn opus_complexity_table() {
        use crate::media::resample::Resampler;
        use crate::media::wav::Wav;
        use std::time::Instant;
        let speech8 = Wav::parse(include_bytes!("../../tests/data/speech_8k.wav"))
            .unwrap()
            .mono();
        eprintln!("| PCM rate | complexity | encode µs/frame | correlation | SNR dB | kbit/s |");
        eprintln!("|---:|---:|---:|---:|---:|---:|");
        for rate in [8000u32, 16000, 48000] {
            let speech = if rate == 8000 {
                speech8.clone()
            } else {
                let mut r = Resampler::new(8000, rate, 20).unwrap();
                let mut out = Vec::new();
                for f in speech8.chunks_exact(r.input_block()) {
                    r.process(f, &mut out).unwrap();
                }
                out
            };
            for complexity in [0u8, 1, 2, 3, 4, 5, 6, 8, 10] {
                let p = CodecParams {
                    opus_pcm_rate: rate,
                    opus_complexity: Some(complexity),
                    ..CodecParams::new(CodecKind::Opus)
                };
                let mut enc = encoder(&p).unwrap();
                let mut dec = decoder(&p).unwrap();
                let frames: Vec<&[i16]> = speech.chunks_exact(enc.frame_samples()).collect();
                let mut packets = Vec::with_capacity(frames.len() * 3);
                let t = Instant::now();
                for _ in 0..3 {
                    for f in &frames {
                        let mut v = Vec::with_capacity(200);
                        enc.encode(f, &mut v).unwrap();
                        packets.push(v);
                    }
                }
                let us = t.elapsed().as_secs_f64() * 1e6 / packets.len() as f64;
                let mut pcm = Vec::new();
                for pkt in &packets[..frames.len()] {
                    dec.decode(pkt, &mut pcm).unwrap();
                }
                let skip = rate as usize / 10;
                let lag = best_lag(
                    &speech[skip..skip + rate as usize],
                    &pcm[skip..],
                    rate as usize / 50,
                );
                let corr = correlation(&speech[skip..], &pcm[skip..], lag);
                let snr = snr_db(&speech[skip..], &pcm[skip..], lag, 0);
                let bytes: usize = packets[..frames.len()].iter().map(Vec::len).sum();
                let kbps = bytes as f64 * 8.0 / (frames.len() as f64 * 0.02) / 1000.0;
                eprintln!("| {rate} | {complexity} | {us:.1} | {corr:.3} | {snr:.1} | {kbps:.1} |");
            }
        }
    }
}
