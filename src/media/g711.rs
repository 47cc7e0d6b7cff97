//! G.711 mu-law and A-law (ITU-T G.711), as the classic segment algorithms.

const BIAS: i32 = 0x84;
const CLIP: i32 = 32635;

pub fn linear_to_ulaw(sample: i16) -> u8 {
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

pub fn ulaw_to_linear(code: u8) -> i16 {
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

pub fn linear_to_alaw(sample: i16) -> u8 {
    let mut s = sample as i32;
    let sign = if s >= 0 { 0x80 } else { 0 };
    if s < 0 {
        s = -s - 1;
    }
    let s = s.min(0x7fff) >> 3; // 13-bit magnitude
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

pub fn alaw_to_linear(code: u8) -> i16 {
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
