//! Call-progress tones a caller expects while a call is being put through.

/// The ringback cadence of a country's network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RingbackTone {
    /// North America (ANSI T1.401): 440 + 480 Hz, 2 s on, 4 s off.
    #[default]
    Us,
    /// Most of Europe (ETSI ES 201 970): 425 Hz, 1 s on, 4 s off.
    Eu,
    /// United Kingdom: 400 + 450 Hz, 0.4 s on, 0.2 s off, 0.4 s on, 2 s off.
    Uk,
}

impl RingbackTone {
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "us" => Some(Self::Us),
            "eu" => Some(Self::Eu),
            "uk" => Some(Self::Uk),
            _ => None,
        }
    }

    /// Frequencies and (on, off) steps in ms.
    fn shape(self) -> (&'static [f32], &'static [(u32, u32)]) {
        match self {
            Self::Us => (&[440.0, 480.0], &[(2000, 4000)]),
            Self::Eu => (&[425.0], &[(1000, 4000)]),
            Self::Uk => (&[400.0, 450.0], &[(400, 200), (400, 2000)]),
        }
    }

    /// One whole cadence cycle at `rate`, to be looped; each tone at
    /// -16 dBFS (the sum of two stays clear of clipping), with 5 ms ramps so
    /// the on/off edges do not click.
    pub fn cycle(self, rate: u32) -> Vec<i16> {
        let (freqs, steps) = self.shape();
        let amp = 0.16 * i16::MAX as f32;
        let per_ms = rate as usize / 1000;
        let ramp = 5 * per_ms;
        let mut out = Vec::new();
        for &(on, off) in steps {
            let n = on as usize * per_ms;
            let start = out.len();
            out.extend((0..n).map(|i| {
                let t = (start + i) as f32 / rate as f32;
                let edge = (i.min(n - 1 - i) as f32 / ramp as f32).min(1.0);
                let s: f32 = freqs
                    .iter()
                    .map(|f| (2.0 * std::f32::consts::PI * f * t).sin())
                    .sum();
                (s * amp * edge) as i16
            }));
            out.resize(out.len() + off as usize * per_ms, 0);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn energy_at(pcm: &[i16], rate: u32, f: f32) -> f32 {
        let (mut re, mut im) = (0.0f32, 0.0f32);
        for (i, &s) in pcm.iter().enumerate() {
            let w = 2.0 * std::f32::consts::PI * f * i as f32 / rate as f32;
            re += s as f32 * w.cos();
            im += s as f32 * w.sin();
        }
        (re * re + im * im).sqrt() / pcm.len() as f32
    }

    #[test]
    fn each_cadence_has_its_length_and_its_tones() {
        for (tone, ms, on_ms, freqs) in [
            (RingbackTone::Us, 6000, 2000, vec![440.0, 480.0]),
            (RingbackTone::Eu, 5000, 1000, vec![425.0]),
            (RingbackTone::Uk, 3000, 400, vec![400.0, 450.0]),
        ] {
            let c = tone.cycle(8000);
            assert_eq!(c.len(), ms * 8, "{tone:?}");
            let on = &c[80..on_ms * 8 - 80];
            for f in &freqs {
                assert!(energy_at(on, 8000, *f) > 1000.0, "{tone:?} lacks {f} Hz");
            }
            assert!(energy_at(on, 8000, 1000.0) < 50.0, "{tone:?}");
            assert!(c[on_ms * 8 + 8..on_ms * 8 + 1600].iter().all(|&s| s == 0));
            assert!(c.iter().all(|&s| s.unsigned_abs() < 16_384));
        }
        assert_eq!(RingbackTone::Us.cycle(16000).len(), 6000 * 16);
        assert_eq!(RingbackTone::from_name("eu"), Some(RingbackTone::Eu));
        assert_eq!(RingbackTone::from_name("fr"), None);
    }
}
