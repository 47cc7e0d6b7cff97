//! `say`: speaks a text (espeak-ng, run off the media path) or plays a WAV,
//! then hangs up once it has been heard (`then = "hangup"`, the default) or
//! stays on the line silently (`then = "listen"`). Used on its own or as the
//! last resort of a fallback chain.

use std::path::PathBuf;

use super::remote::{Io, Output, Remote};
use super::AgentError;
use crate::media::resample::resample_once;
use crate::media::wav::Wav;

/// The rate `say` speaks at.
pub const RATE: u32 = 16000;

/// Synthesises `text` with espeak-ng (blocking; call off the media path).
pub fn espeak(text: &str) -> Result<Vec<i16>, AgentError> {
    let out = std::process::Command::new("espeak-ng")
        .arg("--stdout")
        .arg("--")
        .arg(text)
        .output()
        .map_err(|e| AgentError::Synthesis(format!("cannot run espeak-ng: {e}")))?;
    if !out.status.success() {
        return Err(AgentError::Synthesis(format!(
            "espeak-ng exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    // espeak-ng streams a WAV whose size fields are placeholders, which
    // `Wav::parse` reads up to the end of the bytes.
    let w = Wav::parse(&out.stdout)
        .map_err(|e| AgentError::Synthesis(format!("espeak-ng output is not a WAV: {e}")))?;
    resample_once(&w.mono(), w.sample_rate, RATE)
        .map_err(|e| AgentError::Synthesis(format!("espeak-ng output: {e}")))
}

fn load_wav(path: &PathBuf) -> Result<Vec<i16>, AgentError> {
    let bytes = std::fs::read(path).map_err(|source| AgentError::ReadFile {
        what: "say wav",
        path: path.clone(),
        source,
    })?;
    let w = Wav::parse(&bytes).map_err(|source| AgentError::BadWav {
        what: "say wav",
        path: path.clone(),
        source,
    })?;
    resample_once(&w.mono(), w.sample_rate, RATE)
        .map_err(|e| AgentError::Synthesis(format!("{}: {e}", path.display())))
}

pub fn spawn(
    text: Option<String>,
    wav: Option<PathBuf>,
    then: Option<String>,
) -> Result<Remote, AgentError> {
    let hangup = then.as_deref() != Some("listen");
    Ok(Remote::spawn("say", RATE, move |mut io: Io| async move {
        let audio = tokio::task::spawn_blocking(move || match (text, wav) {
            (Some(t), _) => espeak(&t),
            (None, Some(p)) => load_wav(&p),
            (None, None) => Err(AgentError::config("say", "neither `text` nor `wav` is set")),
        })
        .await
        .map_err(|e| AgentError::TaskEnded(e.to_string()))??;
        io.send(Output::Audio(audio));
        if hangup {
            io.send(Output::HangupAfterPlayout);
        }
        // Stay until the call ends (returning would hang up at once).
        while io.inputs.recv().await.is_some() {}
        Ok(())
    })
    // The prompt is finite and in memory already: all of it plays.
    .uncapped())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn prompts_are_resampled_to_their_length_and_level() {
        let tone: Vec<i16> = (0..22050)
            .map(|i| ((i as f64 * 440.0 * std::f64::consts::TAU / 22050.0).sin() * 8000.0) as i16)
            .collect();
        let out = resample_once(&tone, 22050, 16000).unwrap();
        assert_eq!(out.len(), 16000);
        let rms = |v: &[i16]| {
            (v.iter().map(|&s| (s as f64).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
        };
        let (a, b) = (rms(&tone), rms(&out));
        assert!((b / a - 1.0).abs() < 0.05, "{a} vs {b}");
    }
}
