//! AudioSocket client (Asterisk's TCP audio protocol, PROTOCOLS.md section
//! 1): we connect to avr-core (or any AudioSocket server) like Asterisk's
//! `AudioSocket()` application does, send the call's UUID, then 20 ms s16le
//! 8 kHz frames both ways. Either side ends it with a hangup frame.
//!
//! Frame parsing ([`Parser`]) is sans-IO and unit tested; [`run`] only moves
//! bytes between the socket and the call's channels.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::avr_sts::{sleep_until, LatencyClock, Prebuffer};
use super::remote::{Input, Io, Output, Remote};
use super::{AgentContext, AgentError, ProviderError};
use crate::media::dsp::TurnEvent;
use crate::media::pcm::{self, S16leStream};

pub const RATE: u32 = 8000;
pub const KIND_HANGUP: u8 = 0x00;
pub const KIND_UUID: u8 = 0x01;
pub const KIND_DTMF: u8 = 0x03;
pub const KIND_AUDIO: u8 = 0x10;
pub const KIND_ERROR: u8 = 0xff;
/// 20 ms of s16le 8 kHz.
pub const AUDIO_FRAME_BYTES: usize = 320;
/// The largest audio payload accepted (1 s); anything longer is garbage.
pub const MAX_AUDIO_BYTES: usize = 16_000;
/// The largest payload of the small control frames.
const MAX_CONTROL_BYTES: usize = 64;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// One AudioSocket frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Hangup,
    Uuid([u8; 16]),
    Dtmf(u8),
    /// s16le 8 kHz mono bytes.
    Audio(Vec<u8>),
    /// The optional 1-byte error code.
    Error(Option<u8>),
}

impl Frame {
    pub fn encode(&self) -> Vec<u8> {
        let (kind, payload): (u8, &[u8]) = match self {
            Frame::Hangup => (KIND_HANGUP, &[]),
            Frame::Uuid(u) => (KIND_UUID, u),
            Frame::Dtmf(d) => (KIND_DTMF, std::slice::from_ref(d)),
            Frame::Audio(a) => (KIND_AUDIO, a),
            Frame::Error(Some(c)) => (KIND_ERROR, std::slice::from_ref(c)),
            Frame::Error(None) => (KIND_ERROR, &[]),
        };
        let len = payload.len().min(u16::MAX as usize);
        let mut v = Vec::with_capacity(3 + len);
        v.push(kind);
        v.extend_from_slice(&(len as u16).to_be_bytes());
        v.extend_from_slice(&payload[..len]);
        v
    }
}

/// Bytes that cannot be AudioSocket: the connection is unusable after it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("unknown AudioSocket frame kind {0:#04x}")]
    UnknownKind(u8),
    #[error("AudioSocket frame kind {kind:#04x} claims {len} bytes (at most {max})")]
    Oversize { kind: u8, len: usize, max: usize },
    #[error("AudioSocket frame kind {kind:#04x} has {len} bytes, expected {expected}")]
    BadLength {
        kind: u8,
        len: usize,
        expected: usize,
    },
}

/// Splits a byte stream into frames, however the bytes were cut.
#[derive(Debug, Default)]
pub struct Parser {
    buf: Vec<u8>,
}

impl Parser {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held that do not make a whole frame yet.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// The next whole frame, `Ok(None)` when more bytes are needed. A
    /// header is judged as soon as it is complete, so garbage is reported
    /// without waiting for a payload that may never come.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, ParseError> {
        if self.buf.len() < 3 {
            return Ok(None);
        }
        let kind = self.buf[0];
        let len = u16::from_be_bytes([self.buf[1], self.buf[2]]) as usize;
        let max = match kind {
            KIND_AUDIO => MAX_AUDIO_BYTES,
            KIND_HANGUP | KIND_UUID | KIND_DTMF | KIND_ERROR => MAX_CONTROL_BYTES,
            other => return Err(ParseError::UnknownKind(other)),
        };
        if len > max {
            return Err(ParseError::Oversize { kind, len, max });
        }
        let bad = |expected| ParseError::BadLength {
            kind,
            len,
            expected,
        };
        match kind {
            KIND_UUID if len != 16 => return Err(bad(16)),
            KIND_DTMF if len == 0 => return Err(bad(1)),
            _ => {}
        }
        if self.buf.len() < 3 + len {
            return Ok(None);
        }
        let payload: Vec<u8> = self.buf.drain(..3 + len).skip(3).collect();
        Ok(Some(match kind {
            KIND_HANGUP => Frame::Hangup,
            KIND_UUID => {
                let mut u = [0u8; 16];
                u.copy_from_slice(&payload);
                Frame::Uuid(u)
            }
            KIND_DTMF => Frame::Dtmf(payload[0]),
            KIND_ERROR => Frame::Error(payload.first().copied()),
            _ => Frame::Audio(payload),
        }))
    }
}

/// The 16 raw bytes of the call's UUID text (a fresh one if it is not a
/// UUID, which only happens outside a real call).
fn uuid_bytes(text: &str) -> [u8; 16] {
    match uuid::Uuid::parse_str(text) {
        Ok(u) => *u.as_bytes(),
        Err(_) => {
            tracing::warn!(
                uuid = text,
                "call id is not a UUID: AudioSocket gets a new one"
            );
            *uuid::Uuid::new_v4().as_bytes()
        }
    }
}

/// Starts the AudioSocket client for one call.
pub fn spawn(addr: &str, ctx: &AgentContext) -> Remote {
    let addr = addr.to_string();
    let uuid = uuid_bytes(&ctx.uuid);
    Remote::spawn("audiosocket", RATE, move |io| run(addr, uuid, io))
}

async fn write_all(
    w: &mut tokio::net::tcp::OwnedWriteHalf,
    bytes: &[u8],
) -> Result<(), ProviderError> {
    match tokio::time::timeout(WRITE_TIMEOUT, w.write_all(bytes)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(ProviderError::tcp_send(e)),
        Err(_) => Err(ProviderError::Timeout {
            what: "send to the AudioSocket server",
            timeout: WRITE_TIMEOUT,
        }),
    }
}

/// The connection task: `Ok` when the server hung up or the call ended,
/// `Err` (fail over) when it cannot be reached, errs or goes away.
pub async fn run(addr: String, uuid: [u8; 16], io: Io) -> Result<(), AgentError> {
    Ok(session(addr, uuid, io).await?)
}

async fn session(addr: String, uuid: [u8; 16], mut io: Io) -> Result<(), ProviderError> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&addr))
        .await
        .map_err(|_| ProviderError::ConnectTimeout {
            target: addr.clone(),
            timeout: CONNECT_TIMEOUT,
        })?
        .map_err(|source| ProviderError::Connect {
            target: addr.clone(),
            source,
        })?;
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    write_all(&mut wr, &Frame::Uuid(uuid).encode()).await?;
    tracing::info!(%addr, "AudioSocket connected");
    let mut parser = Parser::default();
    let mut out_pcm: Vec<u8> = Vec::with_capacity(AUDIO_FRAME_BYTES * 2);
    let mut carry = S16leStream::default();
    let mut latency = LatencyClock::default();
    let mut prebuffer = Prebuffer::default();
    let mut buf = vec![0u8; 4096];
    loop {
        tokio::select! {
            input = io.inputs.recv() => match input {
                Some(Input::Audio(pcm)) => {
                    pcm::extend_s16le(&pcm, &mut out_pcm);
                    let whole = out_pcm.len() / AUDIO_FRAME_BYTES * AUDIO_FRAME_BYTES;
                    let mut bytes = Vec::with_capacity(whole + whole / AUDIO_FRAME_BYTES * 3);
                    for f in out_pcm.drain(..whole).collect::<Vec<_>>().chunks(AUDIO_FRAME_BYTES) {
                        bytes.extend(Frame::Audio(f.to_vec()).encode());
                    }
                    if !bytes.is_empty() {
                        write_all(&mut wr, &bytes).await?;
                    }
                }
                Some(Input::Dtmf(d)) => {
                    if d.is_ascii() {
                        write_all(&mut wr, &Frame::Dtmf(d as u8).encode()).await?;
                    }
                }
                Some(Input::Turn(TurnEvent::SpeechEnded)) => latency.speech_ended(Instant::now()),
                Some(Input::Cleared { .. }) => prebuffer.cleared(),
                Some(Input::Turn(_) | Input::Hold(_)) => {}
                None => {
                    // The call ended: hang up and close.
                    let _ = write_all(&mut wr, &Frame::Hangup.encode()).await;
                    let _ = wr.shutdown().await;
                    return Ok(());
                }
            },
            _ = sleep_until(prebuffer.deadline()) => {
                if let Some(pcm) = prebuffer.flush(Instant::now()) {
                    io.send(Output::Audio(pcm));
                }
            }
            read = rd.read(&mut buf) => {
                let n = match read {
                    Ok(0) => {
                        let pending = parser.pending();
                        return Err(ProviderError::Closed {
                            who: "AudioSocket server",
                            detail: (pending > 0)
                                .then(|| format!("inside a frame, {pending} bytes pending")),
                        });
                    }
                    Ok(n) => n,
                    Err(e) => return Err(ProviderError::Lost(e.to_string())),
                };
                parser.push(&buf[..n]);
                while let Some(frame) = parser.next_frame()? {
                    match frame {
                        Frame::Audio(bytes) => {
                            let mut pcm = Vec::with_capacity(bytes.len() / 2 + 1);
                            carry.push(&bytes, &mut pcm);
                            if pcm.is_empty() {
                                continue;
                            }
                            let now = Instant::now();
                            if let Some(ev) = latency.agent_audio(now) {
                                io.send(Output::Event(ev));
                            }
                            if let Some(pcm) = prebuffer.push(pcm, now) {
                                if !io.send(Output::Audio(pcm)) {
                                    return Ok(());
                                }
                            }
                        }
                        Frame::Hangup => {
                            // The server is done: the call ends once its
                            // last words have played. Returning now would
                            // hang up at once, so stay until the call ends.
                            tracing::info!("AudioSocket server hung up");
                            drop((rd, wr));
                            if let Some(pcm) = prebuffer.flush(Instant::now()) {
                                io.send(Output::Audio(pcm));
                            }
                            io.send(Output::HangupAfterPlayout);
                            while io.inputs.recv().await.is_some() {}
                            return Ok(());
                        }
                        Frame::Error(code) => {
                            return Err(ProviderError::Reported {
                                who: "AudioSocket server",
                                message: match code {
                                    Some(c) => format!("error frame (code {c:#04x})"),
                                    None => "error frame (no code)".into(),
                                },
                            });
                        }
                        Frame::Dtmf(_) | Frame::Uuid(_) => {}
                    }
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let frames = [
            Frame::Hangup,
            Frame::Uuid([7; 16]),
            Frame::Dtmf(b'5'),
            Frame::Audio(vec![1; 320]),
            Frame::Error(Some(1)),
            Frame::Error(None),
        ];
        let mut p = Parser::default();
        for f in &frames {
            p.push(&f.encode());
        }
        for f in &frames {
            assert_eq!(p.next_frame().unwrap().as_ref(), Some(f));
        }
        assert_eq!(p.next_frame().unwrap(), None);
        assert_eq!(p.pending(), 0);
    }

    #[test]
    fn wire_layout_is_kind_then_big_endian_length() {
        assert_eq!(Frame::Hangup.encode(), vec![0, 0, 0]);
        assert_eq!(Frame::Dtmf(b'#').encode(), vec![3, 0, 1, b'#']);
        let a = Frame::Audio(vec![0; 320]).encode();
        assert_eq!(&a[..3], &[0x10, 0x01, 0x40]);
        assert_eq!(a.len(), 323);
    }

    #[test]
    fn frames_cut_anywhere_come_out_whole() {
        let mut bytes = Frame::Audio((0..=255).chain(0..64).collect()).encode();
        bytes.extend(Frame::Dtmf(b'9').encode());
        bytes.extend(Frame::Hangup.encode());
        for cut in 0..bytes.len() {
            let mut p = Parser::default();
            let mut got = Vec::new();
            for piece in [&bytes[..cut], &bytes[cut..]] {
                // one byte at a time for the first piece
                for b in piece.chunks(if got.is_empty() { 1 } else { 1000 }) {
                    p.push(b);
                    while let Some(f) = p.next_frame().unwrap() {
                        got.push(f);
                    }
                }
            }
            assert_eq!(got.len(), 3, "cut at {cut}");
            assert_eq!(got[1], Frame::Dtmf(b'9'));
            assert_eq!(got[2], Frame::Hangup);
        }
    }

    #[test]
    fn garbage_is_an_error_as_soon_as_the_header_shows_it() {
        let mut p = Parser::default();
        p.push(&[0x42, 0, 4]);
        assert_eq!(p.next_frame(), Err(ParseError::UnknownKind(0x42)));

        let mut p = Parser::default();
        p.push(&[0x10, 0xff, 0xff, 1, 2]);
        assert!(matches!(
            p.next_frame(),
            Err(ParseError::Oversize { kind: 0x10, .. })
        ));

        let mut p = Parser::default();
        p.push(&[0x01, 0, 4, 1, 2, 3, 4]);
        assert!(matches!(p.next_frame(), Err(ParseError::BadLength { .. })));

        // A frame that claims more than follows is just incomplete.
        let mut p = Parser::default();
        p.push(&[0x10, 0x0f, 0xa0, 1, 2, 3]);
        assert_eq!(p.next_frame(), Ok(None));
        assert_eq!(p.pending(), 6);
    }

    #[test]
    fn uuid_text_becomes_its_16_bytes() {
        let u = uuid_bytes("01234567-89ab-cdef-0123-456789abcdef");
        assert_eq!(u[0], 0x01);
        assert_eq!(u[15], 0xef);
    }

    async fn fake_server() -> (tokio::net::TcpListener, String) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap().to_string();
        (l, a)
    }

    fn io() -> (
        Io,
        tokio::sync::mpsc::Sender<Input>,
        tokio::sync::mpsc::UnboundedReceiver<Output>,
    ) {
        let (tx, inputs) = tokio::sync::mpsc::channel(8);
        let (outputs, rx) = tokio::sync::mpsc::unbounded_channel();
        (Io { inputs, outputs }, tx, rx)
    }

    #[tokio::test]
    async fn uuid_first_audio_both_ways_and_server_hangup() {
        let (l, addr) = fake_server().await;
        let (io, tx, mut rx) = io();
        let task = tokio::spawn(run(addr, [9; 16], io));
        let (mut s, _) = l.accept().await.unwrap();
        let mut hdr = [0u8; 19];
        s.read_exact(&mut hdr).await.unwrap();
        assert_eq!(&hdr[..3], &[1, 0, 16]);
        assert_eq!(&hdr[3..], &[9; 16]);
        tx.send(Input::Audio(vec![5; 160])).await.unwrap();
        let mut f = [0u8; 323];
        s.read_exact(&mut f).await.unwrap();
        assert_eq!(&f[..3], &[0x10, 1, 0x40]);
        assert_eq!(&f[3..5], &[5, 0]);
        s.write_all(&Frame::Audio(vec![1, 0, 2, 0]).encode())
            .await
            .unwrap();
        assert_eq!(rx.recv().await, Some(Output::Audio(vec![1, 2])));
        s.write_all(&Frame::Hangup.encode()).await.unwrap();
        assert_eq!(rx.recv().await, Some(Output::HangupAfterPlayout));
        assert!(!task.is_finished(), "stays until the call has played out");
        drop(tx);
        assert!(matches!(task.await.unwrap(), Ok(())));
    }

    #[tokio::test]
    async fn call_end_sends_hangup_and_garbage_fails() {
        let (l, addr) = fake_server().await;
        let (io, tx, _rx) = io();
        let task = tokio::spawn(run(addr.clone(), [1; 16], io));
        let (mut s, _) = l.accept().await.unwrap();
        let mut hdr = [0u8; 19];
        s.read_exact(&mut hdr).await.unwrap();
        drop(tx);
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, vec![0, 0, 0], "hangup frame then close");
        assert!(matches!(task.await.unwrap(), Ok(())));

        let (io, _tx, _rx) = self::io();
        let task = tokio::spawn(run(addr, [1; 16], io));
        let (mut s, _) = l.accept().await.unwrap();
        s.write_all(&[0x42, 0, 0]).await.unwrap();
        let err = task.await.unwrap().unwrap_err().to_string();
        assert!(err.contains("unknown AudioSocket frame kind 0x42"), "{err}");
    }
}
