//! G.711 mu-law and A-law (ITU-T G.711), as the classic segment algorithms.

const BIAS: i32 = 0x84;
const CLIP: i32 = 32635;

/// mu-law encode, branch-free: the exponent is the biased magnitude's
/// highest set bit (always >= bit 7, as the bias is 0x84).
#[inline]
pub fn linear_to_ulaw(sample: i16) -> u8 {
    let s = sample as i32;
    let sign = ((s >> 24) & 0x80) as u8;
    let biased = (s.unsigned_abs().min(CLIP as u32) + BIAS as u32) as i32;
    let exponent = (24 - biased.leading_zeros()) as i32;
    let mantissa = (biased >> (exponent + 3)) & 0x0f;
    !(sign | (exponent << 4) as u8 | mantissa as u8)
}

/// mu-law decode: a table built at compile time.
#[inline]
pub fn ulaw_to_linear(code: u8) -> i16 {
    ULAW_TO_LINEAR[code as usize]
}

static ULAW_TO_LINEAR: [i16; 256] = {
    let mut t = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = ulaw_decode(i as u8);
        i += 1;
    }
    t
};

const fn ulaw_decode(code: u8) -> i16 {
    let u = !code;
    let sign = u & 0x80;
    let exponent = ((u >> 4) & 0x07) as i32;
    let mantissa = (u & 0x0f) as i32;
    let magnitude = (((mantissa << 3) + BIAS) << exponent) - BIAS;
    if sign != 0 {
        -magnitude as i16
    } else {
        magnitude as i16
    }
}

/// A-law encode, branch-free: below 32 (13-bit magnitude) the segment is
/// 0, above it the highest set bit gives the segment.
#[inline]
pub fn linear_to_alaw(sample: i16) -> u8 {
    let s = sample as i32;
    // Negative samples code the magnitude -s - 1 (that is, !s).
    let neg = s >> 31;
    let sign = (!neg & 0x80) as u8;
    let m = (s ^ neg).min(0x7fff) >> 3;
    // The highest set bit of the 13-bit magnitude (bit 5..=11) gives the
    // segment 1..=7; below 32 it is segment 0, shifted as segment 1.
    let seg = (27 - (m | 0x1f).leading_zeros() as i32).max(0) as u32;
    let shift = if seg == 0 { 1 } else { seg };
    let code = ((seg << 4) as u8) | ((m >> shift) & 0x0f) as u8;
    (code | sign) ^ 0x55
}

/// A-law decode: a table built at compile time.
#[inline]
pub fn alaw_to_linear(code: u8) -> i16 {
    ALAW_TO_LINEAR[code as usize]
}

static ALAW_TO_LINEAR: [i16; 256] = {
    let mut t = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = alaw_decode(i as u8);
        i += 1;
    }
    t
};

const fn alaw_decode(code: u8) -> i16 {
    let a = code ^ 0x55;
    let sign = a & 0x80;
    let exponent = ((a >> 4) & 0x07) as i32;
    let mantissa = (a & 0x0f) as i32;
    let magnitude = if exponent == 0 {
        (mantissa << 4) + 8
    } else {
        ((mantissa << 4) + 0x108) << (exponent - 1)
    };
    if sign != 0 {
        magnitude as i16
    } else {
        -magnitude as i16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The textbook loops the branch-free encoders replaced.
    fn ulaw_reference(sample: i16) -> u8 {
        let mut s = sample as i32;
        let sign = if s < 0 { 0x80 } else { 0 };
        if s < 0 {
            s = -s;
        }
        s = s.min(CLIP) + BIAS;
        let mut exponent = 7;
        let mut mask = 0x4000;
        while exponent > 0 && s & mask == 0 {
            exponent -= 1;
            mask >>= 1;
        }
        let mantissa = (s >> (exponent + 3)) & 0x0f;
        !(sign | (exponent << 4) as u8 | mantissa as u8)
    }

    fn alaw_reference(sample: i16) -> u8 {
        let mut s = sample as i32;
        let sign = if s >= 0 { 0x80 } else { 0 };
        if s < 0 {
            s = -s - 1;
        }
        let s = s.min(0x7fff) >> 3;
        let code = if s < 32 {
            (s >> 1) as u8
        } else {
            let mut exponent = 1;
            let mut v = s >> 5;
            while v > 1 {
                v >>= 1;
                exponent += 1;
            }
            ((exponent << 4) as u8) | ((s >> exponent) & 0x0f) as u8
        };
        (code | sign) ^ 0x55
    }

    #[test]
    fn encoders_match_the_reference_for_every_sample() {
        for s in i16::MIN..=i16::MAX {
            assert_eq!(linear_to_ulaw(s), ulaw_reference(s), "mu-law {s}");
            assert_eq!(linear_to_alaw(s), alaw_reference(s), "A-law {s}");
        }
    }

    /// Reference points from ITU-T G.711 tables (decoder output in 16-bit scale).
    #[test]
    fn itu_reference_points() {
        let ulaw: &[(u8, i16)] = &[
            (0xff, 0),
            (0x7f, 0),
            (0x80, 32124),
            (0x00, -32124),
            (0xfe, 8),
            (0x7e, -8),
        ];
        for &(code, lin) in ulaw {
            assert_eq!(ulaw_to_linear(code), lin, "mu-law code {code:#04x}");
        }
        let alaw: &[(u8, i16)] = &[(0xd5, 8), (0x55, -8), (0xaa, 32256), (0x2a, -32256)];
        for &(code, lin) in alaw {
            assert_eq!(alaw_to_linear(code), lin, "A-law code {code:#04x}");
        }
        assert_eq!(linear_to_ulaw(0), 0xff);
        assert_eq!(linear_to_alaw(0), 0xd5);
        assert_eq!(linear_to_ulaw(i16::MAX), 0x80);
        assert_eq!(linear_to_ulaw(i16::MIN), 0x00);
        assert_eq!(linear_to_alaw(i16::MAX), 0xaa);
        assert_eq!(linear_to_alaw(i16::MIN), 0x2a);
    }

    /// Every code word decodes to a value that encodes back to the same code
    /// (the negative-zero mu-law code 0x7f maps to 0xff).
    #[test]
    fn every_code_round_trips() {
        for code in 0..=255u8 {
            let back = linear_to_ulaw(ulaw_to_linear(code));
            let want = if code == 0x7f { 0xff } else { code };
            assert_eq!(back, want, "mu-law {code:#04x}");
            assert_eq!(
                linear_to_alaw(alaw_to_linear(code)),
                code,
                "A-law {code:#04x}"
            );
        }
    }

    #[test]
    fn quantisation_error_is_bounded() {
        for s in (-32000i32..32000).step_by(7) {
            let s = s as i16;
            let e = (ulaw_to_linear(linear_to_ulaw(s)) as i32 - s as i32).abs();
            assert!(e <= (s as i32).abs() / 16 + 8, "mu-law {s}: err {e}");
            let e = (alaw_to_linear(linear_to_alaw(s)) as i32 - s as i32).abs();
            assert!(e <= (s as i32).abs() / 16 + 16, "A-law {s}: err {e}");
        }
    }
}
