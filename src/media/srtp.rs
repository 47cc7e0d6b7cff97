//! SRTP and SRTCP (RFC 3711) with the AES-CM / HMAC-SHA1 suites that SDES
//! (RFC 4568) negotiates: `AES_CM_128_HMAC_SHA1_80` and `_32`.
//!
//! Sans-IO: one [`SrtpContext`] per direction (the peer's master key for what
//! we receive, ours for what we send) turns packets into packets. Session keys
//! are derived once (key derivation rate 0, no MKI, as SDES uses by default).
//! Receiving keeps, per SSRC, the rollover counter estimate of RFC 3711
//! section 3.3.1 and a 64-packet replay window; a packet is only accepted
//! (and the state moved) after its authentication tag checks out.

use std::collections::HashMap;

use aes::cipher::{KeyIvInit, StreamCipher};
use hmac::{Hmac, Mac};
use sha1::Sha1;

type HmacSha1 = Hmac<Sha1>;
type Aes128Ctr = ctr::Ctr128BE<aes::Aes128>;

/// Master key (16 bytes) followed by master salt (14 bytes), as in SDES `inline:`.
pub const MASTER_KEY_LEN: usize = 30;
const KEY_LEN: usize = 16;
const SALT_LEN: usize = 14;
const AUTH_KEY_LEN: usize = 20;
/// SRTCP always carries an 80-bit tag, whatever the RTP tag length (RFC 4568 6.2).
const SRTCP_TAG_LEN: usize = 10;
const REPLAY_WINDOW: u64 = 64;

/// The crypto suites we negotiate, strongest tag first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SrtpSuite {
    AesCm128HmacSha1_80,
    AesCm128HmacSha1_32,
}

impl SrtpSuite {
    pub fn name(self) -> &'static str {
        match self {
            SrtpSuite::AesCm128HmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
            SrtpSuite::AesCm128HmacSha1_32 => "AES_CM_128_HMAC_SHA1_32",
        }
    }
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "AES_CM_128_HMAC_SHA1_80" => Some(SrtpSuite::AesCm128HmacSha1_80),
            "AES_CM_128_HMAC_SHA1_32" => Some(SrtpSuite::AesCm128HmacSha1_32),
            _ => None,
        }
    }
    /// Length of the SRTP authentication tag in bytes.
    pub fn rtp_tag_len(self) -> usize {
        match self {
            SrtpSuite::AesCm128HmacSha1_80 => 10,
            SrtpSuite::AesCm128HmacSha1_32 => 4,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SrtpError {
    #[error("SRTP packet too short ({0} bytes)")]
    TooShort(usize),
    #[error("SRTP authentication tag mismatch")]
    AuthFailed,
    #[error("SRTP replayed or too old packet (index {0})")]
    Replay(u64),
    #[error("master key must be {MASTER_KEY_LEN} bytes, got {0}")]
    KeyLength(usize),
}

struct SessionKeys {
    enc: [u8; KEY_LEN],
    salt: [u8; SALT_LEN],
    auth: [u8; AUTH_KEY_LEN],
}

/// Key derivation with rate 0 (RFC 3711 section 4.3.1): the PRF is AES-CM
/// keyed with the master key, IV = (master salt XOR label at byte 7) * 2^16.
fn derive(master_key: &[u8; KEY_LEN], master_salt: &[u8; SALT_LEN], label: u8, out: &mut [u8]) {
    let mut iv = [0u8; 16];
    iv[..SALT_LEN].copy_from_slice(master_salt);
    iv[7] ^= label;
    out.fill(0);
    let mut c = Aes128Ctr::new(master_key.into(), &iv.into());
    c.apply_keystream(out);
}

fn session_keys(master: &[u8; MASTER_KEY_LEN], base_label: u8) -> SessionKeys {
    let mut mk = [0u8; KEY_LEN];
    mk.copy_from_slice(&master[..KEY_LEN]);
    let mut ms = [0u8; SALT_LEN];
    ms.copy_from_slice(&master[KEY_LEN..]);
    let mut k = SessionKeys {
        enc: [0; KEY_LEN],
        salt: [0; SALT_LEN],
        auth: [0; AUTH_KEY_LEN],
    };
    derive(&mk, &ms, base_label, &mut k.enc);
    derive(&mk, &ms, base_label + 1, &mut k.auth);
    derive(&mk, &ms, base_label + 2, &mut k.salt);
    k
}

/// AES-CM keystream applied to `data` with IV = (salt * 2^16) XOR (SSRC * 2^64)
/// XOR (index * 2^16) (RFC 3711 section 4.1.1).
fn aes_cm(keys: &SessionKeys, ssrc: u32, index: u64, data: &mut [u8]) {
    let mut iv = [0u8; 16];
    iv[..SALT_LEN].copy_from_slice(&keys.salt);
    for (i, b) in ssrc.to_be_bytes().iter().enumerate() {
        iv[4 + i] ^= b;
    }
    // The 48-bit index lands in bytes 8..14.
    let idx = index.to_be_bytes();
    for i in 0..6 {
        iv[8 + i] ^= idx[2 + i];
    }
    let mut c = Aes128Ctr::new(&keys.enc.into(), &iv.into());
    c.apply_keystream(data);
}

fn hmac_tag(keys: &SessionKeys, parts: &[&[u8]]) -> [u8; 20] {
    // A 20-byte key is always a valid HMAC key.
    let mut mac = match <HmacSha1 as Mac>::new_from_slice(&keys.auth) {
        Ok(m) => m,
        Err(_) => unreachable_hmac(),
    };
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

#[cold]
fn unreachable_hmac() -> ! {
    // HMAC accepts keys of any length; this cannot happen.
    panic!("HMAC rejected a 20-byte key")
}

/// Sliding replay window over packet indices (RFC 3711 section 3.3.2).
#[derive(Debug, Clone, Copy)]
struct ReplayWindow {
    max_index: u64,
    /// Bit n set: index `max_index - n` was received.
    bits: u64,
}

impl ReplayWindow {
    fn new(first: u64) -> Self {
        ReplayWindow {
            max_index: first,
            bits: 1,
        }
    }
    fn is_replay(&self, index: u64) -> bool {
        index + REPLAY_WINDOW <= self.max_index
            || (index <= self.max_index && (self.bits >> (self.max_index - index)) & 1 == 1)
    }
    fn accept(&mut self, index: u64) {
        if index > self.max_index {
            let shift = index - self.max_index;
            self.bits = if shift >= REPLAY_WINDOW {
                0
            } else {
                self.bits << shift
            } | 1;
            self.max_index = index;
        } else {
            self.bits |= 1 << (self.max_index - index);
        }
    }
}

/// Per-SSRC receive state: rollover counter, highest sequence number and
/// replay window over the 48-bit packet index.
#[derive(Debug, Clone, Copy)]
struct RecvState {
    roc: u32,
    s_l: u16,
    replay: ReplayWindow,
}

/// Per-SSRC send state.
#[derive(Debug, Clone, Copy)]
struct SendState {
    roc: u32,
    last_seq: u16,
}

/// One direction of an SRTP session (RTP and RTCP) under one master key.
pub struct SrtpContext {
    suite: SrtpSuite,
    rtp: SessionKeys,
    rtcp: SessionKeys,
    recv: HashMap<u32, RecvState>,
    send: HashMap<u32, SendState>,
    srtcp_send_index: u32,
    srtcp_recv: HashMap<u32, ReplayWindow>,
}

impl std::fmt::Debug for SrtpContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("SrtpContext")
            .field("suite", &self.suite)
            .finish_non_exhaustive()
    }
}

/// Offset of the RTP payload: fixed header, CSRCs and header extension.
fn rtp_header_len(pkt: &[u8]) -> Option<usize> {
    if pkt.len() < 12 {
        return None;
    }
    let cc = usize::from(pkt[0] & 0x0f);
    let mut len = 12 + 4 * cc;
    if pkt[0] & 0x10 != 0 {
        let ext = pkt.get(len + 2..len + 4)?;
        len += 4 + 4 * usize::from(u16::from_be_bytes([ext[0], ext[1]]));
    }
    (len <= pkt.len()).then_some(len)
}

impl SrtpContext {
    pub fn new(suite: SrtpSuite, master: &[u8]) -> Result<Self, SrtpError> {
        let master: &[u8; MASTER_KEY_LEN] = master
            .try_into()
            .map_err(|_| SrtpError::KeyLength(master.len()))?;
        Ok(SrtpContext {
            suite,
            rtp: session_keys(master, 0),
            rtcp: session_keys(master, 3),
            recv: HashMap::new(),
            send: HashMap::new(),
            srtcp_send_index: 0,
            srtcp_recv: HashMap::new(),
        })
    }

    pub fn suite(&self) -> SrtpSuite {
        self.suite
    }

    /// Encrypts and authenticates an RTP packet.
    pub fn protect_rtp(&mut self, pkt: &[u8]) -> Result<Vec<u8>, SrtpError> {
        let hl = rtp_header_len(pkt).ok_or(SrtpError::TooShort(pkt.len()))?;
        let ssrc = u32::from_be_bytes([pkt[8], pkt[9], pkt[10], pkt[11]]);
        let seq = u16::from_be_bytes([pkt[2], pkt[3]]);
        let st = self.send.entry(ssrc).or_insert(SendState {
            roc: 0,
            last_seq: seq,
        });
        // A sequence number that went backwards by more than half the space wrapped.
        if seq < st.last_seq && st.last_seq - seq > 0x8000 {
            st.roc = st.roc.wrapping_add(1);
        }
        if seq.wrapping_sub(st.last_seq) < 0x8000 {
            st.last_seq = seq;
        }
        let roc = st.roc;
        let index = (u64::from(roc) << 16) | u64::from(seq);
        let tag_len = self.suite.rtp_tag_len();
        let mut out = Vec::with_capacity(pkt.len() + tag_len);
        out.extend_from_slice(pkt);
        aes_cm(&self.rtp, ssrc, index, &mut out[hl..]);
        let tag = hmac_tag(&self.rtp, &[&out, &roc.to_be_bytes()]);
        out.extend_from_slice(&tag[..tag_len]);
        Ok(out)
    }

    /// Checks and decrypts an SRTP packet.
    pub fn unprotect_rtp(&mut self, pkt: &[u8]) -> Result<Vec<u8>, SrtpError> {
        let tag_len = self.suite.rtp_tag_len();
        if pkt.len() < 12 + tag_len {
            return Err(SrtpError::TooShort(pkt.len()));
        }
        let (body, tag) = pkt.split_at(pkt.len() - tag_len);
        let hl = rtp_header_len(body).ok_or(SrtpError::TooShort(pkt.len()))?;
        let ssrc = u32::from_be_bytes([body[8], body[9], body[10], body[11]]);
        let seq = u16::from_be_bytes([body[2], body[3]]);
        let state = self.recv.get(&ssrc).copied();
        // RFC 3711 section 3.3.1: guess the ROC from the highest seq seen.
        let v = match state {
            None => 0u32,
            Some(s) => {
                if s.s_l < 0x8000 {
                    if seq > s.s_l && seq - s.s_l > 0x8000 {
                        s.roc.wrapping_sub(1)
                    } else {
                        s.roc
                    }
                } else if s.s_l - 0x8000 > seq {
                    s.roc.wrapping_add(1)
                } else {
                    s.roc
                }
            }
        };
        let index = (u64::from(v) << 16) | u64::from(seq);
        if state.is_some_and(|s| s.replay.is_replay(index)) {
            return Err(SrtpError::Replay(index));
        }
        let expected = hmac_tag(&self.rtp, &[body, &v.to_be_bytes()]);
        if !bool::from(subtle::ConstantTimeEq::ct_eq(&expected[..tag_len], tag)) {
            return Err(SrtpError::AuthFailed);
        }
        let mut out = body.to_vec();
        aes_cm(&self.rtp, ssrc, index, &mut out[hl..]);
        match self.recv.get_mut(&ssrc) {
            None => {
                self.recv.insert(
                    ssrc,
                    RecvState {
                        roc: v,
                        s_l: seq,
                        replay: ReplayWindow::new(index),
                    },
                );
            }
            Some(s) => {
                if index > s.replay.max_index {
                    s.roc = v;
                    s.s_l = seq;
                }
                s.replay.accept(index);
            }
        }
        Ok(out)
    }

    /// Encrypts and authenticates an RTCP compound packet (SRTCP, E flag set).
    pub fn protect_rtcp(&mut self, pkt: &[u8]) -> Result<Vec<u8>, SrtpError> {
        if pkt.len() < 8 {
            return Err(SrtpError::TooShort(pkt.len()));
        }
        let ssrc = u32::from_be_bytes([pkt[4], pkt[5], pkt[6], pkt[7]]);
        let index = self.srtcp_send_index;
        self.srtcp_send_index = (index + 1) & 0x7fff_ffff;
        let mut out = Vec::with_capacity(pkt.len() + 4 + SRTCP_TAG_LEN);
        out.extend_from_slice(pkt);
        aes_cm(&self.rtcp, ssrc, u64::from(index), &mut out[8..]);
        out.extend_from_slice(&(0x8000_0000 | index).to_be_bytes());
        let tag = hmac_tag(&self.rtcp, &[&out]);
        out.extend_from_slice(&tag[..SRTCP_TAG_LEN]);
        Ok(out)
    }

    /// Checks and decrypts an SRTCP packet.
    pub fn unprotect_rtcp(&mut self, pkt: &[u8]) -> Result<Vec<u8>, SrtpError> {
        if pkt.len() < 8 + 4 + SRTCP_TAG_LEN {
            return Err(SrtpError::TooShort(pkt.len()));
        }
        let (authed, tag) = pkt.split_at(pkt.len() - SRTCP_TAG_LEN);
        let expected = hmac_tag(&self.rtcp, &[authed]);
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            &expected[..SRTCP_TAG_LEN],
            tag,
        )) {
            return Err(SrtpError::AuthFailed);
        }
        let (body, e_index) = authed.split_at(authed.len() - 4);
        let word = u32::from_be_bytes([e_index[0], e_index[1], e_index[2], e_index[3]]);
        let index = word & 0x7fff_ffff;
        let ssrc = u32::from_be_bytes([body[4], body[5], body[6], body[7]]);
        let index = u64::from(index);
        if self
            .srtcp_recv
            .get(&ssrc)
            .is_some_and(|w| w.is_replay(index))
        {
            return Err(SrtpError::Replay(index));
        }
        let mut out = body.to_vec();
        if word & 0x8000_0000 != 0 {
            aes_cm(&self.rtcp, ssrc, index, &mut out[8..]);
        }
        match self.srtcp_recv.get_mut(&ssrc) {
            Some(w) => w.accept(index),
            None => {
                self.srtcp_recv.insert(ssrc, ReplayWindow::new(index));
            }
        }
        Ok(out)
    }
}

/// Both directions of a call's SRTP: the peer's key decrypts what arrives,
/// ours encrypts what we send. RTP and RTCP are told apart by the packet
/// type (RFC 5761), so rtcp-mux works unchanged.
#[derive(Debug)]
pub struct SrtpSession {
    inbound: SrtpContext,
    outbound: SrtpContext,
    remote_key: [u8; MASTER_KEY_LEN],
    /// Packets dropped because they failed authentication, replay or length checks.
    pub rejected: u64,
}

impl SrtpSession {
    pub fn new(
        suite: SrtpSuite,
        local_key: &[u8; MASTER_KEY_LEN],
        remote_key: &[u8; MASTER_KEY_LEN],
    ) -> Result<Self, SrtpError> {
        Ok(SrtpSession {
            inbound: SrtpContext::new(suite, remote_key)?,
            outbound: SrtpContext::new(suite, local_key)?,
            remote_key: *remote_key,
            rejected: 0,
        })
    }

    /// Whether a new offer/answer keeps this session's keys and suite (then
    /// the rollover and replay state must be kept too).
    pub fn same_keys(&self, suite: SrtpSuite, remote_key: &[u8; MASTER_KEY_LEN]) -> bool {
        self.inbound.suite() == suite && &self.remote_key == remote_key
    }

    pub fn suite(&self) -> SrtpSuite {
        self.inbound.suite()
    }

    /// Decrypts an SRTP or SRTCP packet; `None` (counted) when it fails.
    pub fn unprotect(&mut self, pkt: &[u8]) -> Option<Vec<u8>> {
        let r = if crate::media::rtp::looks_like_rtcp(pkt) {
            self.inbound.unprotect_rtcp(pkt)
        } else {
            self.inbound.unprotect_rtp(pkt)
        };
        match r {
            Ok(p) => Some(p),
            Err(e) => {
                self.rejected += 1;
                tracing::debug!(error = %e, "dropped SRTP packet");
                None
            }
        }
    }

    /// Encrypts an RTP or RTCP packet we send.
    pub fn protect(&mut self, pkt: &[u8]) -> Option<Vec<u8>> {
        let r = if crate::media::rtp::looks_like_rtcp(pkt) {
            self.outbound.protect_rtcp(pkt)
        } else {
            self.outbound.protect_rtp(pkt)
        };
        r.map_err(|e| tracing::debug!(error = %e, "cannot protect packet"))
            .ok()
    }
}

/// A fresh random master key and salt for our side of an SDES exchange.
pub fn random_master_key() -> [u8; MASTER_KEY_LEN] {
    let mut k = [0u8; MASTER_KEY_LEN];
    rand::Rng::fill(&mut rand::thread_rng(), &mut k[..]);
    k
}

#[cfg(test)]
fn aes_block(key: &[u8; 16], block: &mut [u8; 16]) {
    use aes::cipher::{BlockEncrypt, KeyInit};
    let c = aes::Aes128::new(key.into());
    c.encrypt_block(block.into());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s.replace([' ', '\n'], "")).expect("hex")
    }

    #[test]
    fn key_derivation_matches_rfc3711_b3() {
        let mk: [u8; 16] = unhex("E1F97A0D3E018BE0D64FA32C06DE4139")
            .try_into()
            .expect("16");
        let ms: [u8; 14] = unhex("0EC675AD498AFEEBB6960B3AABE6")
            .try_into()
            .expect("14");
        let mut enc = [0u8; 16];
        derive(&mk, &ms, 0, &mut enc);
        assert_eq!(enc.to_vec(), unhex("C61E7A93744F39EE10734AFE3FF7A087"));
        let mut salt = [0u8; 14];
        derive(&mk, &ms, 2, &mut salt);
        assert_eq!(salt.to_vec(), unhex("30CBBC08863D8C85D49DB34A9AE1"));
        let mut auth = [0u8; 20];
        derive(&mk, &ms, 1, &mut auth);
        assert_eq!(
            auth[..16].to_vec(),
            unhex("CEBE321F6FF7716B6FD4AB49AF256A15")
        );
    }

    #[test]
    fn aes_cm_keystream_matches_rfc3711_b2() {
        // Session key 2B7E1516..., salt F0F1..FD, SSRC/index 0: the first
        // keystream block is AES(key, F0F1...FD 0000).
        let keys = SessionKeys {
            enc: unhex("2B7E151628AED2A6ABF7158809CF4F3C")
                .try_into()
                .expect("16"),
            salt: unhex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD")
                .try_into()
                .expect("14"),
            auth: [0; 20],
        };
        let mut data = [0u8; 48];
        aes_cm(&keys, 0, 0, &mut data);
        assert_eq!(
            data.to_vec(),
            unhex(
                "E03EAD0935C95E80E166B16DD92B4EB4 D23513162B02D0F72A43A2FE4A5F97AB
                 41E95B3BB0A2E8DD477901E4FCA894C0"
            )
        );
        let mut block: [u8; 16] = unhex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD0000")
            .try_into()
            .expect("16");
        aes_block(&keys.enc, &mut block);
        assert_eq!(block.to_vec(), data[..16].to_vec());
    }

    fn rtp(seq: u16, ssrc: u32, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, 0, 0, 0, 0, 0, 0, 160, 0, 0, 0, 0];
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        p[8..12].copy_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn round_trip_both_suites_and_tamper_is_rejected() {
        for suite in [
            SrtpSuite::AesCm128HmacSha1_80,
            SrtpSuite::AesCm128HmacSha1_32,
        ] {
            let key = random_master_key();
            let mut tx = SrtpContext::new(suite, &key).expect("key");
            let mut rx = SrtpContext::new(suite, &key).expect("key");
            let plain = rtp(7, 0x1234, b"hello payload of 20 bytes");
            let sealed = tx.protect_rtp(&plain).expect("protect");
            assert_eq!(sealed.len(), plain.len() + suite.rtp_tag_len());
            assert_eq!(sealed[..12], plain[..12], "header stays clear");
            assert_ne!(sealed[12..plain.len()], plain[12..], "payload encrypted");
            let mut bad = sealed.clone();
            bad[14] ^= 1;
            assert_eq!(rx.unprotect_rtp(&bad), Err(SrtpError::AuthFailed));
            assert_eq!(rx.unprotect_rtp(&sealed).expect("unprotect"), plain);
            // The same packet again is a replay.
            assert!(matches!(
                rx.unprotect_rtp(&sealed),
                Err(SrtpError::Replay(_))
            ));
        }
    }

    #[test]
    fn rollover_counter_follows_sequence_wrap_and_reordering() {
        let key = random_master_key();
        let mut tx = SrtpContext::new(SrtpSuite::AesCm128HmacSha1_80, &key).expect("key");
        let mut rx = SrtpContext::new(SrtpSuite::AesCm128HmacSha1_80, &key).expect("key");
        let seqs: Vec<u16> = (0..200u32).map(|i| (65_436 + i) as u16).collect();
        let sealed: Vec<Vec<u8>> = seqs
            .iter()
            .map(|&s| tx.protect_rtp(&rtp(s, 9, &s.to_be_bytes())).expect("p"))
            .collect();
        // Deliver with neighbours swapped: reordering across the wrap.
        let mut order: Vec<usize> = (0..sealed.len()).collect();
        for pair in order.chunks_mut(2) {
            pair.reverse();
        }
        for i in order {
            let plain = rx
                .unprotect_rtp(&sealed[i])
                .expect("decrypts across the wrap");
            assert_eq!(plain[12..], seqs[i].to_be_bytes());
        }
        assert_eq!(rx.recv[&9].roc, 1);
    }

    #[test]
    fn srtcp_round_trip_and_replay() {
        let key = random_master_key();
        let mut tx = SrtpContext::new(SrtpSuite::AesCm128HmacSha1_32, &key).expect("key");
        let mut rx = SrtpContext::new(SrtpSuite::AesCm128HmacSha1_32, &key).expect("key");
        // An RR with no report blocks plus some bytes.
        let plain = vec![0x80, 201, 0, 1, 0, 0, 0, 42, 1, 2, 3, 4];
        let a = tx.protect_rtcp(&plain).expect("p");
        let b = tx.protect_rtcp(&plain).expect("p");
        assert_eq!(
            a.len(),
            plain.len() + 4 + 10,
            "80-bit SRTCP tag even for _32"
        );
        assert_ne!(a, b, "index moves");
        assert_eq!(rx.unprotect_rtcp(&b).expect("b"), plain);
        assert_eq!(rx.unprotect_rtcp(&a).expect("a (late, in window)"), plain);
        assert!(matches!(rx.unprotect_rtcp(&a), Err(SrtpError::Replay(0))));
        let mut bad = b.clone();
        bad[9] ^= 0x80;
        assert_eq!(rx.unprotect_rtcp(&bad), Err(SrtpError::AuthFailed));
    }
}
