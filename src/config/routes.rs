//! `[[routes]]`: which agent answers a dialled user or a trunk's DID, its
//! fallbacks, and the per-route media options (caller DSP, ambient sound).

use std::collections::HashSet;
use std::path::PathBuf;

use serde::Deserialize;

use super::{AgentConfig, ConfigError, Ctx};
use crate::media::dsp::DspConfig;
use crate::media::tones::RingbackTone;
use crate::media::wav::Wav;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    dial: Option<String>,
    did: Option<String>,
    agent: AgentConfig,
    #[serde(default)]
    fallback: Vec<AgentConfig>,
    /// Fail over when the agent says nothing this long after the caller's turn.
    response_timeout_ms: Option<u64>,
    /// Caller speech (route VAD) drops the agent's queued audio.
    barge_in: Option<bool>,
    /// Caller speech over the agent must last this long to cut it; shorter
    /// is a backchannel ("mm-hm") and the agent goes on. Default 400.
    barge_in_min_ms: Option<u32>,
    /// Ignore caller speech while the agent talks (AVR INTERRUPT_LISTENING).
    #[serde(default)]
    interrupt_listening: bool,
    /// Background sound (WAV) mixed under the agent, AVR AMBIENT_NOISE_FILE.
    ambient_file: Option<PathBuf>,
    /// Its volume, 0.0-1.0 (AMBIENT_NOISE_LEVEL), default 0.1.
    ambient_level: Option<f32>,
    #[serde(default)]
    answer_delay_ms: u64,
    #[serde(default)]
    dsp: RawDsp,
    /// Record each call to a stereo WAV in `state.record_dir`.
    #[serde(default)]
    record: bool,
    /// Answering-machine detection on this route's outbound calls.
    #[serde(default)]
    amd: bool,
    /// What a machine gets: "agent" (default), "hangup" or "message".
    amd_action: Option<String>,
    /// The WAV played after the beep with `amd_action = "message"`.
    amd_message: Option<PathBuf>,
    /// A WAV played the moment the call is answered, before the agent says
    /// anything (every agent kind).
    greeting_file: Option<PathBuf>,
    /// A text the agent speaks first, with its own voice (agents with a
    /// TTS or a speaking model: openai_compat, avr_pipeline,
    /// openai_realtime).
    greeting: Option<String>,
    /// A short sound (typing, "one moment") played when the agent has said
    /// nothing `filler_after_ms` after the caller's turn ended; cut the
    /// moment the agent speaks. Off without a file.
    filler_file: Option<PathBuf>,
    filler_after_ms: Option<u64>,
    /// "ringback": answer 183 with SDP and play ringback (or
    /// `ringback_file`) while the agent is set up; the 200 follows once it
    /// is ready. "none" (default): 180, then 200.
    early_media: Option<String>,
    /// The cadence of the ringback tone: "us" (default), "eu" or "uk".
    ringback_tone: Option<String>,
    /// A WAV looped as early media instead of the tone.
    ringback_file: Option<PathBuf>,
}

/// `dsp = { denoise = true, vad = true, agc = true }` on a route: caller-side
/// processing before the agent hears the audio. All off by default.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDsp {
    #[serde(default)]
    denoise: bool,
    #[serde(default)]
    vad: bool,
    #[serde(default)]
    agc: bool,
    vad_threshold: Option<f32>,
    end_of_turn_ms: Option<u32>,
    speech_start_ms: Option<u32>,
}

/// Caller speech over the agent shorter than this is a backchannel.
pub const DEFAULT_BARGE_IN_MIN_MS: u32 = 400;

#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// The dialled request-URI user part this route answers (for a `did`
    /// route: the number; it also matches the To user, where trunks put it).
    pub dial: String,
    /// Routed by DID from a trunk.
    pub is_did: bool,
    pub agent: AgentConfig,
    /// Tried in order when the agent fails within a call.
    pub fallback: Vec<AgentConfig>,
    pub response_timeout_ms: u64,
    pub barge_in: bool,
    pub barge_in_min_ms: u32,
    pub interrupt_listening: bool,
    /// Background sound mixed under the agent and its volume.
    pub ambient: Option<(PathBuf, f32)>,
    pub answer_delay_ms: u64,
    /// Caller-side denoise / VAD / gain.
    pub dsp: DspConfig,
    /// Record each call (stereo WAV: caller left, agent right).
    pub record: bool,
    /// Answering-machine detection on outbound calls (`POST /calls` can
    /// also ask for it per call).
    pub amd: bool,
    pub amd_action: AmdAction,
    /// Played the moment the call is answered (loaded with the profile).
    pub greeting_audio: Option<std::sync::Arc<Prompt>>,
    /// Spoken first by the agent itself.
    pub greeting_text: Option<String>,
    /// Played while the agent has not answered a turn for this long.
    pub filler: Option<(std::sync::Arc<Prompt>, std::time::Duration)>,
    /// Looped as early media (183) while the agent is set up; `None`: no
    /// early media.
    pub early_media: Option<std::sync::Arc<Prompt>>,
}

/// Audio loaded with the profile: mono PCM at its own rate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    pub pcm: Vec<i16>,
    pub rate: u32,
}

/// What an outbound call does once AMD hears a machine.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum AmdAction {
    /// The agent keeps the call; AMD only reports.
    #[default]
    Agent,
    /// BYE at once.
    Hangup,
    /// Hold the agent's audio back until the beep (or the greeting's end),
    /// play this WAV, then BYE.
    Message(PathBuf),
}

impl AmdAction {
    pub fn as_str(&self) -> &'static str {
        match self {
            AmdAction::Agent => "agent",
            AmdAction::Hangup => "hangup",
            AmdAction::Message(_) => "message",
        }
    }
}

impl RouteConfig {
    /// A route that answers with `agent` and nothing else.
    pub fn simple(dial: String, agent: AgentConfig) -> RouteConfig {
        RouteConfig {
            dial,
            is_did: false,
            agent,
            fallback: Vec::new(),
            response_timeout_ms: 8000,
            barge_in: true,
            barge_in_min_ms: DEFAULT_BARGE_IN_MIN_MS,
            interrupt_listening: false,
            ambient: None,
            answer_delay_ms: 0,
            dsp: DspConfig::off(),
            record: false,
            amd: false,
            amd_action: AmdAction::Agent,
            greeting_audio: None,
            greeting_text: None,
            filler: None,
            early_media: None,
        }
    }
}

/// `[[routes]]`, validated: each dial or DID routed once, agents checked.
pub(super) fn validate(raw: Vec<RawRoute>, cx: &Ctx) -> Result<Vec<RouteConfig>, ConfigError> {
    let mut routes = Vec::new();
    let mut dials = HashSet::new();
    for (i, r) in raw.into_iter().enumerate() {
        routes.push(r.validate(&format!("routes[{i}]"), &mut dials, cx)?);
    }
    Ok(routes)
}

impl RawRoute {
    fn validate(
        self,
        key: &str,
        dials: &mut HashSet<String>,
        cx: &Ctx,
    ) -> Result<RouteConfig, ConfigError> {
        let is_did = self.did.is_some();
        let dial = match (self.dial, self.did) {
            (Some(_), Some(_)) => {
                return Err(cx.invalid(format!("{key}.did"), "give either dial or did, not both"))
            }
            (Some(d), None) | (None, Some(d)) => d,
            (None, None) => {
                return Err(cx.invalid(
                    format!("{key}.dial"),
                    "expected the dialled user (dial) or number (did)",
                ))
            }
        };
        if dial.is_empty() {
            return Err(cx.invalid(format!("{key}.dial"), "expected a non-empty user"));
        }
        if !dials.insert(dial.clone()) {
            return Err(cx.invalid(format!("{key}.dial"), format!("`{dial}` is routed twice")));
        }
        if self.answer_delay_ms > 120_000 {
            return Err(cx.invalid(
                format!("{key}.answer_delay_ms"),
                format!("expected at most 120000, got {}", self.answer_delay_ms),
            ));
        }
        let dsp = self.dsp.validate(key, cx)?;
        let barge_in_min_ms = self.barge_in_min_ms.unwrap_or(DEFAULT_BARGE_IN_MIN_MS);
        if barge_in_min_ms > 5000 {
            return Err(cx.invalid(
                format!("{key}.barge_in_min_ms"),
                format!("expected at most 5000, got {barge_in_min_ms}"),
            ));
        }
        for (j, a) in std::iter::once(&self.agent)
            .chain(&self.fallback)
            .enumerate()
        {
            let k = if j == 0 {
                format!("{key}.agent")
            } else {
                format!("{key}.fallback[{}]", j - 1)
            };
            a.validate().map_err(|e| cx.invalid(k, e))?;
        }
        let greeting_audio = match self.greeting_file {
            None => None,
            Some(f) => Some(std::sync::Arc::new(prompt(
                f,
                &format!("{key}.greeting_file"),
                cx,
            )?)),
        };
        let greeting_text = self.greeting.filter(|t| !t.trim().is_empty());
        let filler_after = self.filler_after_ms.unwrap_or(800);
        if !(100..=10_000).contains(&filler_after) {
            return Err(cx.invalid(
                format!("{key}.filler_after_ms"),
                format!("expected 100-10000, got {filler_after}"),
            ));
        }
        let filler = match self.filler_file {
            None => None,
            Some(f) => Some((
                std::sync::Arc::new(prompt(f, &format!("{key}.filler_file"), cx)?),
                std::time::Duration::from_millis(filler_after),
            )),
        };
        if greeting_text.is_some() && !self.agent.speaks_text() {
            return Err(cx.invalid(
                format!("{key}.greeting"),
                format!(
                    "a `{}` agent has no voice of its own to speak a text greeting: use greeting_file",
                    self.agent.kind()
                ),
            ));
        }
        let ambient = match self.ambient_file {
            None => None,
            Some(f) => Some(ambient(f, self.ambient_level, key, cx)?),
        };
        let amd_action = amd_action(self.amd_action, self.amd_message, key, cx)?;
        let early_media = early_media(
            self.early_media,
            self.ringback_tone,
            self.ringback_file,
            key,
            cx,
        )?;
        Ok(RouteConfig {
            dial,
            is_did,
            agent: self.agent,
            fallback: self.fallback,
            response_timeout_ms: self.response_timeout_ms.unwrap_or(8000).clamp(500, 120_000),
            barge_in: self.barge_in.unwrap_or(true),
            barge_in_min_ms,
            interrupt_listening: self.interrupt_listening,
            ambient,
            answer_delay_ms: self.answer_delay_ms,
            dsp,
            record: self.record,
            amd: self.amd,
            amd_action,
            greeting_audio,
            greeting_text,
            filler,
            early_media,
        })
    }
}

impl RawDsp {
    fn validate(self, key: &str, cx: &Ctx) -> Result<DspConfig, ConfigError> {
        let defaults = DspConfig::default();
        let threshold = self.vad_threshold.unwrap_or(defaults.vad_threshold);
        if !(0.0..=1.0).contains(&threshold) {
            return Err(cx.invalid(
                format!("{key}.dsp.vad_threshold"),
                format!("expected a probability 0.0-1.0, got {threshold}"),
            ));
        }
        Ok(DspConfig {
            denoise: self.denoise,
            vad: self.vad,
            agc: self.agc,
            vad_threshold: threshold,
            end_of_turn_ms: self.end_of_turn_ms.unwrap_or(defaults.end_of_turn_ms),
            speech_start_ms: self.speech_start_ms.unwrap_or(defaults.speech_start_ms),
        })
    }
}

/// `early_media`, `ringback_tone` and `ringback_file`: the clip to loop
/// while the call rings, or `None`.
fn early_media(
    mode: Option<String>,
    tone: Option<String>,
    file: Option<PathBuf>,
    key: &str,
    cx: &Ctx,
) -> Result<Option<std::sync::Arc<Prompt>>, ConfigError> {
    let on = match mode.as_deref().unwrap_or("none") {
        "none" => false,
        "ringback" => true,
        other => {
            return Err(cx.invalid(
                format!("{key}.early_media"),
                format!("expected \"none\" or \"ringback\", got {other:?}"),
            ))
        }
    };
    let tone = match tone.as_deref() {
        None => RingbackTone::default(),
        Some(name) => RingbackTone::from_name(name).ok_or_else(|| {
            cx.invalid(
                format!("{key}.ringback_tone"),
                format!("expected \"us\", \"eu\" or \"uk\", got {name:?}"),
            )
        })?,
    };
    if !on {
        if file.is_some() {
            return Err(cx.invalid(
                format!("{key}.ringback_file"),
                "only played with early_media = \"ringback\"".to_string(),
            ));
        }
        return Ok(None);
    }
    let clip = match file {
        Some(f) => prompt(f, &format!("{key}.ringback_file"), cx)?,
        None => Prompt {
            pcm: tone.cycle(8000),
            rate: 8000,
        },
    };
    Ok(Some(std::sync::Arc::new(clip)))
}

/// A WAV named by the profile, read and parsed now (a bad file fails the
/// profile, not a call).
fn prompt(file: PathBuf, key: &str, cx: &Ctx) -> Result<Prompt, ConfigError> {
    let file = cx.path(Some(file), "");
    let wav = read_wav(&file, key, cx)?;
    Ok(Prompt {
        pcm: wav.mono(),
        rate: wav.sample_rate,
    })
}

/// The ambient sound file (read and parsed now, so a bad file fails the
/// profile, not a call) and its level, 0.1 by default.
fn ambient(
    file: PathBuf,
    level: Option<f32>,
    key: &str,
    cx: &Ctx,
) -> Result<(PathBuf, f32), ConfigError> {
    let level = level.unwrap_or(0.1);
    if !(0.0..=1.0).contains(&level) {
        return Err(cx.invalid(
            format!("{key}.ambient_level"),
            format!("expected 0.0-1.0, got {level}"),
        ));
    }
    let file = cx.path(Some(file), "");
    read_wav(&file, &format!("{key}.ambient_file"), cx)?;
    Ok((file, level))
}

/// Reads and parses a WAV the profile names; the error names `key`.
fn read_wav(file: &std::path::Path, key: &str, cx: &Ctx) -> Result<Wav, ConfigError> {
    std::fs::read(file)
        .map_err(|e| e.to_string())
        .and_then(|b| Wav::parse(&b).map_err(|e| e.to_string()))
        .map_err(|e| cx.invalid(key.to_string(), format!("{}: {e}", file.display())))
}

/// `amd_action` and its `amd_message` WAV (read and parsed now, so a bad
/// file fails the profile, not a call).
fn amd_action(
    action: Option<String>,
    message: Option<PathBuf>,
    key: &str,
    cx: &Ctx,
) -> Result<AmdAction, ConfigError> {
    match (action.as_deref().unwrap_or("agent"), message) {
        ("agent", None) => Ok(AmdAction::Agent),
        ("hangup", None) => Ok(AmdAction::Hangup),
        ("message", Some(file)) => {
            let file = cx.path(Some(file), "");
            read_wav(&file, &format!("{key}.amd_message"), cx)?;
            Ok(AmdAction::Message(file))
        }
        ("message", None) => Err(cx.invalid(
            format!("{key}.amd_message"),
            "expected a WAV file to play after the beep (amd_action = \"message\")",
        )),
        ("agent" | "hangup", Some(_)) => Err(cx.invalid(
            format!("{key}.amd_message"),
            "only used with amd_action = \"message\"",
        )),
        (other, _) => Err(cx.invalid(
            format!("{key}.amd_action"),
            format!("expected \"agent\", \"hangup\" or \"message\", got `{other}`"),
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::{Config, Overrides};
    use super::AmdAction;

    fn route(extra: &str) -> Result<Config, String> {
        let text = format!("[[routes]]\ndial = \"out\"\nagent = {{ kind = \"echo\" }}\n{extra}");
        Config::parse(&text, "test.toml", &Overrides::default()).map_err(|e| e.to_string())
    }

    #[test]
    fn amd_options_default_to_off_and_reporting_only() {
        let cfg = route("").unwrap();
        let r = cfg.route("out").unwrap();
        assert!(!r.amd);
        assert_eq!(r.amd_action, AmdAction::Agent);
        let cfg = route("amd = true\namd_action = \"hangup\"\n").unwrap();
        let r = cfg.route("out").unwrap();
        assert!(r.amd);
        assert_eq!(r.amd_action, AmdAction::Hangup);
    }

    #[test]
    fn amd_message_is_a_wav_read_at_load_and_only_with_the_message_action() {
        let wav = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/speech_8k.wav");
        let cfg = route(&format!(
            "amd_action = \"message\"\namd_message = \"{wav}\"\n"
        ))
        .unwrap();
        assert_eq!(
            cfg.route("out").unwrap().amd_action,
            AmdAction::Message(wav.into())
        );
        let e = route("amd_action = \"message\"\n").unwrap_err();
        assert!(e.contains("routes[0].amd_message"), "{e}");
        let e =
            route("amd_action = \"message\"\namd_message = \"/nonexistent.wav\"\n").unwrap_err();
        assert!(
            e.contains("routes[0].amd_message") && e.contains("/nonexistent.wav"),
            "{e}"
        );
        let e = route(&format!("amd_message = \"{wav}\"\n")).unwrap_err();
        assert!(e.contains("only used with amd_action"), "{e}");
        let e = route("amd_action = \"voicemail\"\n").unwrap_err();
        assert!(
            e.contains("routes[0].amd_action") && e.contains("`voicemail`"),
            "{e}"
        );
    }
}
