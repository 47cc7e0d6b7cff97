#![allow(clippy::unwrap_used)]
//! Checks the audio measurements of tests/common/audio.rs on synthetic
//! signals with known answers, so the media tests can trust them.

mod common;

use common::audio::{self, Audio};

const RATE: u32 = 8000;

/// Deterministic white noise in [-1, 1).
fn noise(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Speech-like test signal: `syllables` bursts of 200 ms (noise plus a tone,
/// rising and falling) separated by 100 ms of silence, after `lead_ms` of
/// silence, at `rate`.
fn speechlike(rate: u32, lead_ms: usize, syllables: usize, seed: u64) -> Audio {
    let ms = |m: usize| m * rate as usize / 1000;
    let mut s = vec![0.0f32; ms(lead_ms)];
    let burst = ms(200);
    for k in 0..syllables {
        let n = noise(burst, seed + k as u64);
        for (i, v) in n.iter().enumerate() {
            let env = (std::f32::consts::PI * i as f32 / burst as f32).sin();
            let tone = (2.0 * std::f32::consts::PI * (300.0 + 40.0 * k as f32) * i as f32
                / rate as f32)
                .sin();
            s.push(0.25 * env * (0.6 * v + 0.4 * tone));
        }
        s.extend(std::iter::repeat_n(0.0, ms(100)));
    }
    Audio::new(rate, s)
}

fn delayed(a: &Audio, delay_ms: usize, gain: f32) -> Audio {
    let mut s = vec![0.0f32; delay_ms * a.rate as usize / 1000];
    s.extend(a.samples.iter().map(|v| v * gain));
    Audio::new(a.rate, s)
}

fn sine(rate: u32, freq: f32, amp: f32, ms: usize) -> Audio {
    let n = ms * rate as usize / 1000;
    Audio::new(
        rate,
        (0..n)
            .map(|i| amp * (2.0 * std::f32::consts::PI * freq * i as f32 / rate as f32).sin())
            .collect(),
    )
}

/// 200 Hz -> 3 kHz over one second, amplitude 0.5 (not periodic, unlike a tone).
fn chirp(rate: u32) -> Audio {
    let n = rate as usize;
    Audio::new(
        rate,
        (0..n)
            .map(|i| {
                let t = i as f64 / rate as f64;
                let phase = 2.0 * std::f64::consts::PI * (200.0 * t + 1400.0 * t * t);
                0.5 * phase.sin() as f32
            })
            .collect(),
    )
}

fn chunk(id: &[u8; 4], body: &[u8]) -> Vec<u8> {
    let mut c = id.to_vec();
    c.extend_from_slice(&(body.len() as u32).to_le_bytes());
    c.extend_from_slice(body);
    if body.len() % 2 == 1 {
        c.push(0);
    }
    c
}

fn fmt_body(tag: u16, channels: u16, rate: u32, bits: u16) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&tag.to_le_bytes());
    f.extend_from_slice(&channels.to_le_bytes());
    f.extend_from_slice(&rate.to_le_bytes());
    f.extend_from_slice(&(rate * channels as u32 * bits as u32 / 8).to_le_bytes());
    f.extend_from_slice(&(channels * bits / 8).to_le_bytes());
    f.extend_from_slice(&bits.to_le_bytes());
    f
}

fn riff(chunks: &[Vec<u8>]) -> Vec<u8> {
    let body: Vec<u8> = chunks.concat();
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&((body.len() + 4) as u32).to_le_bytes());
    out.extend_from_slice(b"WAVE");
    out.extend_from_slice(&body);
    out
}

fn pcm(samples: &[i16]) -> Vec<u8> {
    samples.iter().flat_map(|s| s.to_le_bytes()).collect()
}

#[test]
fn wav_written_then_read_gives_the_same_samples() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.wav");
    let a = Audio::new(16000, vec![0.0, 0.5, -0.5, -1.0, 0.999_969_5]);
    audio::write_wav(&p, &a).unwrap();
    let (b, info) = audio::read_wav_info(&p).unwrap();
    assert_eq!(info.rate, 16000);
    assert_eq!(info.channels, 1);
    assert_eq!(info.frames, 5);
    assert!(!info.truncated_header);
    assert_eq!(b, a, "round trip changed the samples");
}

#[test]
fn stereo_extensible_wav_with_extra_chunks_is_mixed_to_mono() {
    // WAVE_FORMAT_EXTENSIBLE, 2 channels, 11025 Hz, a LIST chunk of odd size
    // before the data and a trailing chunk after it.
    let mut fmt = fmt_body(0xFFFE, 2, 11025, 16);
    fmt.extend_from_slice(&22u16.to_le_bytes()); // cbSize
    fmt.extend_from_slice(&16u16.to_le_bytes()); // valid bits
    fmt.extend_from_slice(&3u32.to_le_bytes()); // channel mask
    fmt.extend_from_slice(&1u16.to_le_bytes()); // sub-format: PCM ...
    fmt.extend_from_slice(&[
        0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x80, 0x00, 0x00, 0xAA, 0x00, 0x38, 0x9B, 0x71,
    ]);
    let data = pcm(&[1000, 3000, -16384, 0, 32767, 32767]);
    let bytes = riff(&[
        chunk(b"LIST", b"odd"),
        chunk(b"fmt ", &fmt),
        chunk(b"data", &data),
        chunk(b"junk", b"tail"),
    ]);
    let (a, info) = audio::parse_wav(&bytes).unwrap();
    assert_eq!((info.rate, info.channels, info.frames), (11025, 2, 3));
    let want = [2000.0 / 32768.0, -8192.0 / 32768.0, 32767.0 / 32768.0];
    assert_eq!(a.samples.len(), 3);
    for (got, want) in a.samples.iter().zip(want) {
        assert!((got - want).abs() < 1e-6, "got {got}, want {want}");
    }
}

#[test]
fn wav_with_unfinished_header_is_read_to_the_end() {
    // A writer killed before it patched the sizes: data size 0.
    let mut bytes = riff(&[chunk(b"fmt ", &fmt_body(1, 1, 8000, 16))]);
    bytes.extend_from_slice(b"data");
    bytes.extend_from_slice(&0u32.to_le_bytes());
    bytes.extend_from_slice(&pcm(&[1, 2, 3, 4]));
    bytes.push(0x7f); // half a sample
    let (a, info) = audio::parse_wav(&bytes).unwrap();
    assert!(info.truncated_header);
    assert_eq!(a.samples.len(), 4);
    assert!((a.samples[3] - 4.0 / 32768.0).abs() < 1e-9);
}

#[test]
fn non_pcm16_or_non_wav_input_is_rejected() {
    let eight_bit = riff(&[
        chunk(b"fmt ", &fmt_body(1, 1, 8000, 8)),
        chunk(b"data", &[1, 2, 3]),
    ]);
    let e = audio::parse_wav(&eight_bit).unwrap_err();
    assert!(e.contains("8-bit"), "{e}");
    let alaw = riff(&[
        chunk(b"fmt ", &fmt_body(6, 1, 8000, 16)),
        chunk(b"data", &[1, 2]),
    ]);
    assert!(audio::parse_wav(&alaw).is_err());
    assert!(audio::parse_wav(b"RIFX....WAVE").is_err());
    assert!(audio::parse_wav(&riff(&[chunk(b"fmt ", &fmt_body(1, 1, 8000, 16))])).is_err());
}

#[test]
fn rms_of_a_sine_is_its_amplitude_over_root_two() {
    let s = sine(RATE, 440.0, 0.5, 1000);
    let db = audio::rms_dbfs(&s.samples);
    let want = 20.0 * (0.5f64 / 2f64.sqrt()).log10(); // -9.03
    assert!((db - want).abs() < 0.05, "rms {db:.3} dBFS, want {want:.3}");
    assert_eq!(audio::rms_dbfs(&[0.0; 160]), audio::SILENCE_DBFS);
}

#[test]
fn speech_level_ignores_leading_and_trailing_silence() {
    let tone = sine(RATE, 500.0, 0.5, 1000);
    let mut padded = vec![0.0f32; 8000];
    padded.extend_from_slice(&tone.samples);
    padded.extend(std::iter::repeat_n(0.0, 16000));
    let padded = Audio::new(RATE, padded);
    let region = audio::speech_region(&padded).unwrap();
    assert_eq!(region, (8000, 16000), "speech region in samples");
    let (a, b) = (
        audio::speech_rms_dbfs(&tone),
        audio::speech_rms_dbfs(&padded),
    );
    assert!((a - b).abs() < 0.01, "tone {a:.2} dBFS, padded {b:.2} dBFS");
    assert_eq!(
        audio::speech_region(&Audio::new(RATE, vec![0.0; 8000])),
        None
    );
    // line hum 46 dB below the speech (-55 dBFS) before it is not speech
    let mut hum = sine(RATE, 50.0, 0.0025, 1000).samples;
    hum.extend_from_slice(&tone.samples);
    let region = audio::speech_region(&Audio::new(RATE, hum)).unwrap();
    assert_eq!(region, (8000, 16000), "hum counted as speech");
}

#[test]
fn level_check_passes_within_tolerance_and_fails_beyond_it() {
    let sent = speechlike(RATE, 200, 8, 1);
    let softer = delayed(&sent, 30, 0.8); // -1.9 dB
    let diff = audio::rms_within_db(&sent, &softer, 3.0).unwrap();
    assert!((diff + 1.94).abs() < 0.05, "difference {diff:.2} dB");
    let half = delayed(&sent, 30, 0.5); // -6 dB
    let err = audio::rms_within_db(&sent, &half, 3.0).unwrap_err();
    assert!(
        err.contains("-6.0"),
        "message should show the numbers: {err}"
    );
    let silent = Audio::new(RATE, vec![0.0; 16000]);
    assert!(audio::rms_within_db(&sent, &silent, 3.0).is_err());
}

#[test]
fn cross_correlation_finds_a_known_delay() {
    let sent = speechlike(RATE, 100, 10, 7);
    for delay in [0usize, 37, 250, 1500] {
        let mut received = delayed(&sent, delay, 0.7);
        // some noise on top (about 30 dB below the signal)
        let hiss = noise(received.samples.len(), 99);
        for (v, n) in received.samples.iter_mut().zip(hiss) {
            *v += 0.003 * n;
        }
        let d = audio::cross_correlation_delay(&sent, &received, 2000.0).unwrap();
        assert!(
            (d.ms - delay as f64).abs() <= 0.25,
            "delay {delay} ms measured as {:.3} ms",
            d.ms
        );
        assert!(d.corr > 0.95, "corr {:.3} at {delay} ms", d.corr);
    }
}

#[test]
fn delay_is_found_across_sample_rates_and_beyond_the_range_is_not() {
    // sent at 16 kHz, received at 8 kHz 120 ms later
    let sent16 = speechlike(16000, 100, 10, 3);
    let recv8 = delayed(&audio::resample(&sent16, 8000), 120, 1.0);
    let d = audio::cross_correlation_delay(&sent16, &recv8, 2000.0).unwrap();
    assert!((d.ms - 120.0).abs() <= 0.25, "measured {:.3} ms", d.ms);
    assert!(d.corr > 0.95, "corr {:.3}", d.corr);
    // a 2.5 s delay is outside 0..2000 ms: whatever is found correlates badly
    let late = delayed(&audio::resample(&sent16, 8000), 2500, 1.0);
    let d = audio::cross_correlation_delay(&sent16, &late, 2000.0);
    assert!(
        d.map(|d| d.corr < 0.5).unwrap_or(true),
        "2.5 s delay gave {d:?}"
    );
}

#[test]
fn unrelated_signals_do_not_correlate() {
    let a = speechlike(RATE, 0, 10, 11);
    let b = speechlike(RATE, 0, 10, 500);
    // the tones are shared, the noise is not: correlation well below an echo's
    let d = audio::cross_correlation_delay(&a, &b, 2000.0).unwrap();
    assert!(d.corr < 0.6, "unrelated corr {:.3}", d.corr);
    let n = Audio::new(RATE, noise(24000, 5));
    let m = Audio::new(RATE, noise(24000, 6));
    let d = audio::cross_correlation_delay(&n, &m, 2000.0).unwrap();
    assert!(d.corr < 0.1, "noise corr {:.3}", d.corr);
}

#[test]
fn a_dropout_inside_speech_is_measured() {
    let sent = speechlike(RATE, 0, 1, 21);
    // one long "syllable": 1 s of continuous speech-like noise
    let sent = Audio::new(
        RATE,
        noise(8000, 4)
            .iter()
            .chain(sent.samples.iter())
            .map(|v| v * 0.2)
            .collect(),
    );
    let mut received = delayed(&sent, 40, 1.0);
    let clean = audio::longest_gap_ms(&sent, &received, 40.0);
    assert_eq!(clean, 0.0, "gap in an intact echo");
    // zero 100 ms in the middle of the speech (received clock: +40 ms)
    let start = (400 + 40) * 8;
    for v in &mut received.samples[start..start + 800] {
        *v = 0.0;
    }
    let gap = audio::longest_gap_ms(&sent, &received, 40.0);
    assert!(
        (80.0..=100.0).contains(&gap),
        "100 ms dropout measured as {gap} ms"
    );
    // a received signal that stops early is silence too
    let cut = Audio::new(RATE, received.samples[..(500 + 40) * 8].to_vec());
    let gap = audio::longest_gap_ms(&sent, &cut, 40.0);
    assert!(gap >= 500.0, "missing tail measured as {gap} ms");
}

#[test]
fn natural_pauses_are_not_gaps() {
    // 100 ms pauses between syllables exist in both signals
    let sent = speechlike(RATE, 300, 12, 8);
    let received = delayed(&sent, 20, 0.9);
    let gap = audio::longest_gap_ms(&sent, &received, 20.0);
    assert!(gap <= 20.0, "pauses counted as a {gap} ms gap");
    // misaligning by 150 ms makes syllables fall into pauses: now it shows
    let gap = audio::longest_gap_ms(&sent, &received, 170.0);
    assert!(gap >= 40.0, "misaligned echo gave only {gap} ms");
}

#[test]
fn echo_report_sums_up_a_clean_and_a_broken_echo() {
    let sent = speechlike(RATE, 200, 12, 13);
    let good = delayed(&sent, 60, 1.0);
    let r = audio::echo_report(&sent, &good, 2000.0);
    let d = r.delay.unwrap();
    assert!((d.ms - 60.0).abs() <= 0.25 && d.corr > 0.99, "{r}");
    assert!(
        r.level_diff_db().abs() < 0.1 && r.longest_gap_ms == 0.0,
        "{r}"
    );
    let silent = Audio::new(RATE, vec![0.0; sent.samples.len()]);
    let r = audio::echo_report(&sent, &silent, 2000.0);
    assert!(r.delay.is_none(), "{r}");
    assert!(r.longest_gap_ms > 3000.0, "{r}");
}

#[test]
fn a_clip_is_found_inside_a_longer_recording() {
    let greeting = speechlike(RATE, 0, 6, 40);
    let other = speechlike(RATE, 0, 30, 1000);
    // recording: 0.7 s silence, greeting, then unrelated speech
    let mut rec = vec![0.0f32; 5600];
    rec.extend(greeting.samples.iter().map(|v| v * 0.8));
    rec.extend_from_slice(&other.samples);
    let rec = Audio::new(RATE, rec);
    let (off, corr) = audio::find_segment(&rec, &greeting).unwrap();
    assert!((off - 700.0).abs() <= 0.25, "found at {off} ms");
    assert!(corr > 0.99, "corr {corr}");
    // a recording that missed the clip's first 100 ms still finds it, before 0
    let late = Audio::new(RATE, rec.samples[(700 + 100) * 8..].to_vec());
    let (off, corr) = audio::find_segment(&late, &greeting).unwrap();
    assert!(
        (off + 100.0).abs() <= 0.25,
        "clip cut at the start found at {off} ms"
    );
    assert!(corr > 0.99, "corr {corr}");
    // a clip that is not there correlates poorly wherever it is "found"
    let absent = Audio::new(RATE, noise(8000, 77).iter().map(|v| v * 0.2).collect());
    let (_, corr) = audio::find_segment(&rec, &absent).unwrap();
    assert!(corr < 0.2, "absent clip corr {corr}");
    assert_eq!(
        audio::find_segment(&Audio::new(RATE, vec![0.0; 800]), &greeting),
        None
    );
    // only the first 10% of the clip, at the very end of the recording: too
    // little of it overlaps to count as found
    let mut cut = other.samples.clone();
    cut.extend_from_slice(&greeting.samples[..greeting.samples.len() / 10]);
    let (off, corr) = audio::find_segment(&Audio::new(RATE, cut), &greeting).unwrap();
    assert!(
        corr < 0.5,
        "a clip cut to 10% matched at {off} ms, corr {corr}"
    );
}

#[test]
fn downsampling_keeps_the_passband_and_removes_what_would_alias() {
    let hi = 22050;
    let pass = audio::resample(&sine(hi, 1000.0, 0.5, 1000), 8000);
    assert_eq!(pass.rate, 8000);
    assert_eq!(pass.samples.len(), 8000);
    let level = audio::rms_dbfs(&pass.samples[400..7600]);
    assert!((level + 9.03).abs() < 0.3, "1 kHz tone at {level:.2} dBFS");
    // a chirp resampled lines up with the same chirp made at 8 kHz
    let direct = chirp(8000);
    let d =
        audio::cross_correlation_delay(&direct, &audio::resample(&chirp(hi), 8000), 10.0).unwrap();
    assert!(d.ms.abs() <= 0.125 && d.corr > 0.99, "{d:?}");
    // 6 kHz cannot exist at 8 kHz; it must not fold back to 2 kHz
    let stop = audio::resample(&sine(hi, 6000.0, 0.5, 1000), 8000);
    let level = audio::rms_dbfs(&stop.samples[400..7600]);
    assert!(level < -45.0, "6 kHz tone leaked at {level:.2} dBFS");
    // upsampling 8 kHz -> 16 kHz keeps the level
    let up = audio::resample(&sine(8000, 1000.0, 0.5, 1000), 16000);
    let level = audio::rms_dbfs(&up.samples[800..15200]);
    assert!(
        (level + 9.03).abs() < 0.3,
        "upsampled tone at {level:.2} dBFS"
    );
}

#[test]
fn the_test_speech_file_is_8k_mono_speech() {
    let p = common::data_path("speech_8k.wav");
    let (a, info) = audio::read_wav_info(&p).unwrap();
    assert_eq!((info.rate, info.channels, info.bits), (8000, 1, 16));
    let ms = a.duration_ms();
    assert!((3000.0..=4500.0).contains(&ms), "{ms} ms");
    let (s, e) = audio::speech_region(&a).unwrap();
    assert!(e - s > 2500 * 8, "speech part {} ms", (e - s) / 8);
    let db = audio::speech_rms_dbfs(&a);
    assert!((-30.0..=-15.0).contains(&db), "speech RMS {db:.2} dBFS");
}

#[test]
fn a_one_frame_slip_keeps_every_piece_but_distortion_or_a_hole_does_not() {
    // 2 s of chirp (two of the 1 s chirps back to back), played after 300 ms.
    let one = chirp(RATE);
    let mut reply = one.samples.clone();
    reply.extend(one.samples.iter().rev());
    let reply = Audio::new(RATE, reply);
    let lead = 300 * 8;
    let clean = delayed(&reply, 300, 0.7);
    assert!(audio::worst_piece_corr(&clean, &reply, 300.0, 250.0, 45.0) > 0.99);

    // A phone's jitter buffer inserted 20 ms of silence 1 s in: the whole
    // signal no longer correlates, every piece still does.
    let mut slipped = clean.samples[..lead + 8000].to_vec();
    slipped.extend(std::iter::repeat_n(0.0, 160));
    slipped.extend_from_slice(&clean.samples[lead + 8000..]);
    let slipped = Audio::new(RATE, slipped);
    let (at, whole) = audio::find_segment(&slipped, &reply).unwrap();
    let pieces = audio::worst_piece_corr(&slipped, &reply, at, 250.0, 45.0);
    assert!(whole < 0.9, "whole-signal corr {whole}");
    assert!(pieces > 0.9, "worst piece {pieces}");

    // 100 ms replaced by noise: that piece fails.
    let mut holed = clean.samples.clone();
    for (i, v) in noise(800, 5).iter().enumerate() {
        holed[lead + 12000 + i] = 0.3 * v;
    }
    let holed = Audio::new(RATE, holed);
    let (at, _) = audio::find_segment(&holed, &reply).unwrap();
    let pieces = audio::worst_piece_corr(&holed, &reply, at, 250.0, 45.0);
    assert!(pieces < 0.8, "a hole went unnoticed: {pieces}");

    // Played 6 % slow (a clock or sample-rate mismatch): every piece is
    // stretched and fails.
    let stretched = Audio::new(
        RATE,
        (0..(clean.samples.len() as f64 * 1.06) as usize)
            .map(|i| clean.samples[((i as f64 / 1.06) as usize).min(clean.samples.len() - 1)])
            .collect(),
    );
    let pieces = audio::worst_piece_corr(&stretched, &reply, 318.0, 250.0, 45.0);
    assert!(pieces < 0.9, "a stretched reply went unnoticed: {pieces}");

    // The reply ending early: the missing pieces fail.
    let short = Audio::new(RATE, clean.samples[..lead + 12000].to_vec());
    assert!(audio::worst_piece_corr(&short, &reply, 300.0, 250.0, 45.0) < 0.5);
}

#[test]
fn pacing_lateness_is_the_worst_frame_behind_the_senders_own_schedule() {
    let on_time: Vec<f64> = (0..50).map(|k| 10.0 + k as f64 * 0.02).collect();
    assert!(audio::pacing_lateness_ms(&on_time, 20.0) < 1e-6);
    // One 90 ms stall, then the sender catches up (sends the backlog at once).
    let mut stalled = on_time.clone();
    for t in &mut stalled[20..25] {
        *t = 10.0 + 24.0 * 0.02 + 0.01;
    }
    let late = audio::pacing_lateness_ms(&stalled, 20.0);
    assert!((late - 90.0).abs() < 1e-6, "{late}");
    // A sender that runs steadily slow falls further behind every frame.
    let slow: Vec<f64> = (0..50).map(|k| k as f64 * 0.021).collect();
    assert!((audio::pacing_lateness_ms(&slow, 20.0) - 49.0).abs() < 1e-6);
    assert_eq!(audio::pacing_lateness_ms(&[], 20.0), 0.0);
}
