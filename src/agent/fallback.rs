//! Failover within a call and circuit breakers across calls.
//!
//! A route's agent and its `fallback` list form a chain. When the speaking
//! provider fails (cannot connect, drops, reports an error, or stays silent
//! past `response_timeout_ms` after the caller finished a turn) the next one
//! is started in the same call at once. Every provider endpoint has a
//! breaker shared by all calls: after [`TRIP_AFTER`] consecutive failures it
//! is skipped for new calls for [`OPEN_FOR`], then tried again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{build_for, Agent, AgentContext, AgentError, AgentEvent, AgentOutput};
use crate::config::AgentConfig;
use crate::media::dsp::TurnEvent;
use crate::media::resample::Resampler;

pub const TRIP_AFTER: u32 = 3;
pub const OPEN_FOR: Duration = Duration::from_secs(30);

#[derive(Debug, Default, Clone, Copy)]
struct Breaker {
    failures: u32,
    open_until: Option<Instant>,
}

/// The circuit breakers of every provider endpoint, shared by all calls of
/// one server (cheap to clone: the clones share the table).
#[derive(Debug, Clone, Default)]
pub struct CircuitBreakers {
    table: Arc<Mutex<HashMap<String, Breaker>>>,
}

impl CircuitBreakers {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Breaker>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether new calls may use this provider now.
    pub fn allows(&self, key: &str, now: Instant) -> bool {
        self.lock()
            .get(key)
            .and_then(|b| b.open_until)
            .is_none_or(|until| now >= until)
    }

    /// Each provider seen so far and whether its breaker is open now
    /// (for `/metrics`).
    pub fn open_now(&self, now: Instant) -> Vec<(String, bool)> {
        self.lock()
            .iter()
            .map(|(k, b)| (k.clone(), b.open_until.is_some_and(|until| now < until)))
            .collect()
    }

    /// Records an attempt's outcome: a success closes the breaker, the
    /// [`TRIP_AFTER`]th failure in a row opens it for [`OPEN_FOR`].
    pub fn record(&self, key: &str, ok: bool, now: Instant) {
        let mut map = self.lock();
        let b = map.entry(key.to_string()).or_default();
        if ok {
            *b = Breaker::default();
        } else {
            b.failures += 1;
            if b.failures >= TRIP_AFTER {
                b.open_until = Some(now + OPEN_FOR);
                tracing::warn!(
                    provider = key,
                    open_for_s = OPEN_FOR.as_secs(),
                    "circuit open: skipped for new calls"
                );
            }
        }
    }
}

/// Adapts an agent at one rate to a call session at another (both whole
/// kHz multiples), so a fallback can differ in rate from the first agent.
struct RateAdapter {
    inner: Box<dyn Agent>,
    up: Resampler,
    down: Resampler,
    pending_in: Vec<i16>,
    pending_out: Vec<i16>,
    rate: u32,
}

impl RateAdapter {
    fn new(inner: Box<dyn Agent>, call_rate: u32, agent_rate: u32) -> Result<Self, AgentError> {
        let r = |from, to| {
            Resampler::new(from, to, 20).map_err(|e| AgentError::Rate {
                from,
                to,
                reason: e.to_string(),
            })
        };
        Ok(RateAdapter {
            up: r(call_rate, agent_rate)?,
            down: r(agent_rate, call_rate)?,
            inner,
            pending_in: Vec::new(),
            pending_out: Vec::new(),
            rate: call_rate,
        })
    }

    fn convert_out(&mut self, out: &mut AgentOutput) {
        if out.clear {
            self.pending_out.clear();
        }
        if out.audio.is_empty() {
            return;
        }
        self.pending_out.append(&mut out.audio);
        let block = self.down.input_block();
        let whole = self.pending_out.len() / block * block;
        if whole > 0 {
            let chunk: Vec<i16> = self.pending_out.drain(..whole).collect();
            let _ = self.down.process(&chunk, &mut out.audio);
        }
    }
}

impl Agent for RateAdapter {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    fn start(&mut self, out: &mut AgentOutput) {
        self.inner.start(out);
        self.convert_out(out);
    }
    fn on_audio(&mut self, pcm: &[i16], out: &mut AgentOutput) {
        self.pending_in.extend_from_slice(pcm);
        let block = self.up.input_block();
        let whole = self.pending_in.len() / block * block;
        if whole > 0 {
            let chunk: Vec<i16> = self.pending_in.drain(..whole).collect();
            let mut conv = Vec::new();
            if self.up.process(&chunk, &mut conv).is_ok() {
                self.inner.on_audio(&conv, out);
            }
        }
        self.convert_out(out);
    }
    fn poll(&mut self, out: &mut AgentOutput) {
        self.inner.poll(out);
        self.convert_out(out);
    }
    fn on_dtmf(&mut self, d: char, out: &mut AgentOutput) {
        self.inner.on_dtmf(d, out);
        self.convert_out(out);
    }
    fn on_hold(&mut self, h: bool, out: &mut AgentOutput) {
        self.inner.on_hold(h, out);
        self.convert_out(out);
    }
    fn on_turn(&mut self, e: TurnEvent, out: &mut AgentOutput) {
        self.inner.on_turn(e, out);
        self.convert_out(out);
    }
    fn on_cleared(&mut self, ms: u64) {
        self.pending_out.clear();
        self.inner.on_cleared(ms);
    }
    fn sample_rate(&self) -> Option<u32> {
        Some(self.rate)
    }
    fn playout_cap_ms(&self) -> Option<u32> {
        self.inner.playout_cap_ms()
    }
}

/// A route's agent with its fallbacks.
pub struct Fallback {
    chain: Vec<AgentConfig>,
    next: usize,
    ctx: AgentContext,
    current: Box<dyn Agent>,
    current_key: String,
    breakers: CircuitBreakers,
    /// The rate the call session runs at (the first agent's).
    rate: Option<u32>,
    response_timeout: Duration,
    /// The caller finished a turn and no agent audio came yet.
    waiting_since: Option<Instant>,
    heard_audio: bool,
    /// The agent answered since the caller started the current turn (a
    /// streaming ASR can answer before our VAD's end of turn).
    answered_turn: bool,
}

impl Fallback {
    /// Starts the first provider of `chain` whose breaker is closed (the
    /// last one is tried regardless, so a call is never left with nothing).
    pub fn new(
        chain: Vec<AgentConfig>,
        ctx: AgentContext,
        response_timeout: Duration,
        breakers: CircuitBreakers,
    ) -> Result<Fallback, AgentError> {
        let mut f = Fallback {
            chain,
            next: 0,
            ctx,
            current: Box::new(super::Echo::default()),
            current_key: String::new(),
            breakers,
            rate: None,
            response_timeout,
            waiting_since: None,
            heard_audio: false,
            answered_turn: false,
        };
        let mut out = AgentOutput::default();
        if !f.advance(&mut out) {
            return Err(AgentError::NoAgentStarted);
        }
        Ok(f)
    }

    /// Starts the next usable agent; false when none is left.
    fn advance(&mut self, out: &mut AgentOutput) -> bool {
        let now = Instant::now();
        while self.next < self.chain.len() {
            let cfg = self.chain[self.next].clone();
            self.next += 1;
            let key = cfg.endpoint_key();
            let last = self.next == self.chain.len();
            if !last && !self.breakers.allows(&key, now) {
                tracing::info!(provider = %key, "circuit open: skipping");
                continue;
            }
            let agent = build_for(&cfg, &self.ctx);
            // Only the call's first agent greets; a fallback taking over
            // mid-call does not start with a hello.
            self.ctx.greeting = None;
            let agent = match agent {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(provider = %key, error = %e, "agent cannot start");
                    if e.is_outage() {
                        self.breakers.record(&key, false, now);
                    }
                    continue;
                }
            };
            let agent_rate = agent.sample_rate();
            let agent: Box<dyn Agent> = match (self.rate, agent_rate) {
                (None, _) => {
                    self.rate = agent_rate;
                    agent
                }
                (Some(call), Some(a)) if call != a => match RateAdapter::new(agent, call, a) {
                    Ok(r) => Box::new(r),
                    Err(e) => {
                        tracing::warn!(provider = %key, error = %e, "rate not adaptable");
                        continue;
                    }
                },
                _ => agent,
            };
            self.current = agent;
            self.current_key = key;
            self.heard_audio = false;
            self.waiting_since = None;
            if self.next > 1 {
                out.events.push(AgentEvent::Provider {
                    kind: self.current.kind().to_string(),
                });
            }
            self.current.start(out);
            self.after(out);
            return true;
        }
        false
    }

    /// Looks at what the current agent produced: failover on failure,
    /// success bookkeeping on its first audio.
    fn after(&mut self, out: &mut AgentOutput) {
        if !out.audio.is_empty() {
            self.waiting_since = None;
            self.answered_turn = true;
            if !self.heard_audio {
                self.heard_audio = true;
                self.breakers
                    .record(&self.current_key, true, Instant::now());
            }
        }
        let failed = out.events.iter().find_map(|e| match e {
            AgentEvent::Failed { reason } => Some(reason.clone()),
            _ => None,
        });
        let silent = self
            .waiting_since
            .is_some_and(|t| t.elapsed() >= self.response_timeout);
        let reason = match (failed, silent) {
            (Some(r), _) => r,
            (None, true) => format!(
                "no answer within {} ms of the caller's turn",
                self.response_timeout.as_millis()
            ),
            (None, false) => return,
        };
        self.breakers
            .record(&self.current_key, false, Instant::now());
        // Failed events are reported as errors; the chain goes on.
        out.events
            .retain(|e| !matches!(e, AgentEvent::Failed { .. }));
        out.events.push(AgentEvent::Error {
            message: format!("{}: {reason}", self.current_key),
        });
        out.hangup = false;
        if !self.advance(out) {
            out.events.push(AgentEvent::Failed { reason });
            out.hangup = true;
        }
    }
}

impl Agent for Fallback {
    fn kind(&self) -> &'static str {
        self.current.kind()
    }
    fn start(&mut self, _out: &mut AgentOutput) {
        // The first agent was started in `new`; its greeting is polled.
    }
    fn on_audio(&mut self, pcm: &[i16], out: &mut AgentOutput) {
        self.current.on_audio(pcm, out);
        self.after(out);
    }
    fn poll(&mut self, out: &mut AgentOutput) {
        self.current.poll(out);
        self.after(out);
    }
    fn on_dtmf(&mut self, d: char, out: &mut AgentOutput) {
        self.current.on_dtmf(d, out);
        self.after(out);
    }
    fn on_hold(&mut self, h: bool, out: &mut AgentOutput) {
        self.current.on_hold(h, out);
        self.after(out);
    }
    fn on_turn(&mut self, e: TurnEvent, out: &mut AgentOutput) {
        match e {
            TurnEvent::SpeechStarted => self.answered_turn = false,
            TurnEvent::SpeechEnded if !self.answered_turn => {
                self.waiting_since = Some(Instant::now())
            }
            TurnEvent::SpeechEnded => {}
        }
        self.current.on_turn(e, out);
        self.after(out);
    }
    fn on_cleared(&mut self, ms: u64) {
        self.current.on_cleared(ms);
    }
    fn sample_rate(&self) -> Option<u32> {
        self.rate
    }
    fn max_queue_ms(&self) -> Option<u32> {
        self.current.max_queue_ms()
    }
    fn playout_cap_ms(&self) -> Option<u32> {
        self.current.playout_cap_ms()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_opens_after_repeated_failures_and_closes_on_success() {
        let now = Instant::now();
        let key = "test://breaker";
        let b = CircuitBreakers::new();
        assert!(b.allows(key, now));
        for _ in 0..TRIP_AFTER {
            b.record(key, false, now);
        }
        assert!(!b.allows(key, now + Duration::from_secs(1)));
        assert!(b.allows(key, now + OPEN_FOR));
        b.record(key, true, now);
        assert!(b.allows(key, now));
    }

    #[test]
    fn breakers_are_per_server_and_shared_by_clones() {
        let now = Instant::now();
        let key = "test://shared";
        let a = CircuitBreakers::new();
        let clone = a.clone();
        for _ in 0..TRIP_AFTER {
            clone.record(key, false, now);
        }
        assert!(!a.allows(key, now), "a clone shares the table");
        assert!(
            CircuitBreakers::new().allows(key, now),
            "another server's table is its own"
        );
    }

    #[test]
    fn a_misconfigured_agent_is_skipped_without_tripping_its_breaker() {
        let bad = AgentConfig::OpenaiRealtime {
            model: "m".into(),
            api_key_env: Some("AGENTLINE_TEST_KEY_THAT_IS_NEVER_SET".into()),
            api_key_file: None,
            base_url: Some("ws://127.0.0.1:9/v1/realtime".into()),
            instructions: None,
            instructions_file: None,
            voice: None,
            beta: false,
            tools: vec![],
        };
        let breakers = CircuitBreakers::new();
        for _ in 0..=TRIP_AFTER {
            let f = Fallback::new(
                vec![bad.clone(), AgentConfig::Echo { rate: None }],
                AgentContext::default(),
                Duration::from_secs(1),
                breakers.clone(),
            );
            assert_eq!(f.map(|f| f.kind()).ok(), Some("echo"), "the chain moved on");
        }
        assert!(
            breakers.allows(&bad.endpoint_key(), Instant::now()),
            "a missing API key says nothing about the provider's health"
        );
    }
}
