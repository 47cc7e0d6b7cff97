//! ITU-T G.107 E-model, simplified as VoIP monitors use it: loss and
//! delay in, MOS out.

/// ITU-T G.107 equipment impairment `Ie` and packet-loss robustness `Bpl`
/// of a codec, on the narrowband (R <= 100) scale.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CodecImpairment {
    pub ie: f64,
    pub bpl: f64,
}

impl CodecImpairment {
    /// G.711 without concealment, random loss: the provisional planning
    /// values of G.113 (11/2007) Appendix I.
    pub const G711: CodecImpairment = CodecImpairment { ie: 0.0, bpl: 4.3 };
    /// G.711 with G.711 Appendix I packet-loss concealment: same source.
    pub const G711_PLC: CodecImpairment = CodecImpairment { ie: 0.0, bpl: 25.1 };
    /// G.722 at 64 kbit/s. G.113 only rates it on the wideband scale
    /// (Ie,wb, G.107.1); on this narrowband scale it is no worse than G.711
    /// (Ie 0), and its Appendix III/IV concealment is taken as robust as
    /// G.711's. Assumed values, not from a table.
    pub const G722: CodecImpairment = CodecImpairment { ie: 0.0, bpl: 25.1 };
    /// Opus at voice bitrates: not in G.113. Transparent on the narrowband
    /// scale (Ie 0) with built-in concealment; taken as robust as G.711 with
    /// PLC, which understates it when in-band FEC is on. Assumed values.
    pub const OPUS: CodecImpairment = CodecImpairment { ie: 0.0, bpl: 25.1 };
}

/// The simplified E-model rating factor: R = 93.2 - Id - Ie,eff with the
/// G.107 default R0 - Is = 93.2 and no advantage factor.
fn e_model_r(one_way_delay_ms: f64, loss_pct: f64, codec: CodecImpairment) -> f64 {
    // NaN counts as 0 (`max` returns the other operand); infinite delay stays
    // and drives R down.
    let d = one_way_delay_ms.max(0.0);
    let ppl = if loss_pct.is_nan() {
        0.0
    } else {
        loss_pct.clamp(0.0, 100.0)
    };
    // Delay impairment, Cole & Rosenbluth's fit to G.107 Id (echo-cancelled).
    let id = 0.024 * d + if d > 177.3 { 0.11 * (d - 177.3) } else { 0.0 };
    // G.107 (7-29) with BurstR = 1: random loss.
    let ie_eff = if ppl > 0.0 {
        codec.ie + (95.0 - codec.ie) * ppl / (ppl + codec.bpl.max(0.0))
    } else {
        codec.ie
    };
    93.2 - id - ie_eff
}

/// G.107 Annex B: MOS from R, clamped to [1, 4.5] (the cubic dips a hair
/// below 1 for 0 < R < 6.5, where G.107 also says 1).
fn mos_from_r(r: f64) -> f64 {
    if r.is_nan() || r <= 0.0 {
        return 1.0;
    }
    if r >= 100.0 {
        return 4.5;
    }
    (1.0 + 0.035 * r + r * (r - 60.0) * (100.0 - r) * 7.0e-6).clamp(1.0, 4.5)
}

/// ITU-T G.107 E-model, simplified as VoIP monitors (and RFC 3611's VoIP
/// metrics) use it: `R = 93.2 - Id(delay) - Ie,eff(loss, codec)`, MOS from R.
/// `one_way_delay_ms` is mouth-to-ear (network, jitter buffer, packetisation);
/// `loss_pct` is random packet loss in percent. Non-increasing in both.
pub fn e_model_mos(one_way_delay_ms: f64, loss_pct: f64, codec: CodecImpairment) -> f64 {
    mos_from_r(e_model_r(one_way_delay_ms, loss_pct, codec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn g711_without_loss_at_20ms_is_mos_4_4() {
        let r = e_model_r(20.0, 0.0, CodecImpairment::G711);
        assert!((r - 92.72).abs() < 1e-9, "{r}");
        let mos = e_model_mos(20.0, 0.0, CodecImpairment::G711);
        assert!((mos - 4.40).abs() < 0.01, "{mos}");
        assert!((e_model_mos(0.0, 0.0, CodecImpairment::G711_PLC) - 4.41).abs() < 0.01);
    }

    #[test]
    fn five_percent_random_loss_with_plc_is_fair_to_good() {
        // Ie,eff = 95 * 5 / (5 + 25.1) = 15.8 -> R = 76.9 -> MOS 3.90: the
        // "some users dissatisfied" band of G.107 (R 70-80, MOS 3.6-4.0).
        let mos = e_model_mos(20.0, 5.0, CodecImpairment::G711_PLC);
        assert!((3.7..=4.1).contains(&mos), "{mos}");
        // Without concealment the same loss is far worse (R 41.6 -> MOS 2.1).
        let bare = e_model_mos(20.0, 5.0, CodecImpairment::G711);
        assert!((1.8..=2.5).contains(&bare), "{bare}");
    }

    #[test]
    fn mos_never_rises_with_more_loss_or_delay() {
        let codecs = [
            CodecImpairment::G711,
            CodecImpairment::G711_PLC,
            CodecImpairment::G722,
            CodecImpairment::OPUS,
        ];
        for codec in codecs {
            for delay in [0.0, 100.0, 200.0, 400.0] {
                let mut prev = e_model_mos(delay, 0.0, codec);
                for step in 1..=200 {
                    let mos = e_model_mos(delay, f64::from(step) * 0.5, codec);
                    assert!(mos <= prev, "{codec:?} {delay} ms {step}");
                    if prev > 1.0 {
                        assert!(mos < prev, "{codec:?} {delay} ms {step}");
                    }
                    prev = mos;
                }
            }
            for loss in [0.0, 1.0, 5.0, 20.0] {
                let mut prev = e_model_mos(0.0, loss, codec);
                for step in 1..=200 {
                    let mos = e_model_mos(f64::from(step) * 5.0, loss, codec);
                    assert!(mos <= prev, "{codec:?} {loss}% {step}");
                    if prev > 1.0 {
                        assert!(mos < prev, "{codec:?} {loss}% {step}");
                    }
                    prev = mos;
                }
            }
        }
        for (d, l) in [
            (f64::NAN, 0.0),
            (0.0, f64::NAN),
            (f64::INFINITY, 0.0),
            (-5.0, -1.0),
            (0.0, 500.0),
        ] {
            let mos = e_model_mos(d, l, CodecImpairment::G711);
            assert!((1.0..=4.5).contains(&mos), "{d} {l} -> {mos}");
        }
    }
}
