//! SIP edge protection (`[security]`): per-source request rate limit (token
//! bucket), failed-authentication counting, temporary bans that expire,
//! and concurrent calls per source and per user.
//!
//! [`GuardState`] is sans-IO: every input carries `now` and the limits in
//! force, so its tests run in virtual time. [`Guard`] is the thin shared
//! wrapper the transport hook (every datagram and new connection, before
//! rsipstack parses it), the dispatcher and the API use. What is exempt
//! (trusted networks, trunk sources) is decided by the caller and passed in.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::SecurityConfig;

/// Sources tracked at most; past this, new sources pass untracked rather
/// than refusing everyone (spoofed UDP sources could otherwise fill memory).
const MAX_SOURCES: usize = 100_000;
/// How often idle sources are forgotten.
const PRUNE_EVERY: Duration = Duration::from_secs(10);

/// Why a source was banned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BanReason {
    /// It emptied its request bucket.
    Rate,
    /// Too many failed digest authentications within the window.
    AuthFailures,
    /// A known scanner's User-Agent.
    Scanner,
    /// Banned by hand (tests, future API).
    Manual,
}

impl BanReason {
    pub fn as_str(self) -> &'static str {
        match self {
            BanReason::Rate => "rate",
            BanReason::AuthFailures => "auth_failures",
            BanReason::Scanner => "scanner",
            BanReason::Manual => "manual",
        }
    }
}

/// Why a request was dropped or refused at the edge (the `reason` label of
/// `agentline_security_dropped_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// From a banned source.
    Banned,
    /// The request that emptied the source's bucket.
    Rate,
    /// A scanner's User-Agent.
    Scanner,
    /// Its source already has `max_calls_per_source` calls.
    CallsPerSource,
    /// Its user already has `max_calls_per_user` calls.
    CallsPerUser,
}

impl DropReason {
    pub const ALL: [DropReason; 5] = [
        DropReason::Banned,
        DropReason::Rate,
        DropReason::Scanner,
        DropReason::CallsPerSource,
        DropReason::CallsPerUser,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Banned => "banned",
            DropReason::Rate => "rate",
            DropReason::Scanner => "scanner",
            DropReason::CallsPerSource => "calls_per_source",
            DropReason::CallsPerUser => "calls_per_user",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What to do with a datagram (or a new connection) from a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Drop(DropReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ban {
    since: Instant,
    until: Instant,
    reason: BanReason,
    dropped: u64,
}

#[derive(Debug, Clone)]
struct Source {
    tokens: f64,
    refilled: Instant,
    failures: VecDeque<Instant>,
    ban: Option<Ban>,
}

/// A ban as `GET /security/bans` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BanInfo {
    pub ip: IpAddr,
    pub reason: &'static str,
    /// Seconds since the ban started.
    pub age_s: u64,
    /// Seconds until it is lifted.
    pub expires_in_s: u64,
    /// Requests dropped (or refused) from it while banned.
    pub dropped: u64,
}

/// A call the per-source / per-user limit refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CallLimit {
    #[error("source has {0} calls (security.max_calls_per_source)")]
    PerSource(u32),
    #[error("user has {0} calls (security.max_calls_per_user)")]
    PerUser(u32),
}

/// The edge's state, sans-IO.
#[derive(Debug, Default)]
pub struct GuardState {
    sources: HashMap<IpAddr, Source>,
    calls_by_source: HashMap<IpAddr, u32>,
    calls_by_user: HashMap<String, u32>,
    last_prune: Option<Instant>,
    bans_total: u64,
    dropped: [u64; DropReason::ALL.len()],
}

impl GuardState {
    /// A datagram or connection from `ip` arrived at `now`.
    pub fn packet(
        &mut self,
        ip: IpAddr,
        now: Instant,
        cfg: &SecurityConfig,
        exempt: bool,
    ) -> Verdict {
        if !cfg.enabled || exempt {
            return Verdict::Pass;
        }
        self.maybe_prune(now, cfg);
        let Some(src) = source(&mut self.sources, ip, now, cfg) else {
            return Verdict::Pass;
        };
        if let Some(ban) = &mut src.ban {
            if now < ban.until {
                ban.dropped += 1;
                self.dropped[DropReason::Banned.index()] += 1;
                return Verdict::Drop(DropReason::Banned);
            }
            src.ban = None;
            src.failures.clear();
            src.tokens = f64::from(cfg.burst);
            src.refilled = now;
        }
        let elapsed = now.saturating_duration_since(src.refilled).as_secs_f64();
        src.tokens = (src.tokens + elapsed * cfg.rate).min(f64::from(cfg.burst));
        src.refilled = now;
        if src.tokens >= 1.0 {
            src.tokens -= 1.0;
            return Verdict::Pass;
        }
        self.dropped[DropReason::Rate.index()] += 1;
        self.ban(ip, now, cfg, BanReason::Rate);
        Verdict::Drop(DropReason::Rate)
    }

    /// A failed digest authentication from `ip`; true when it banned the source.
    pub fn auth_failed(
        &mut self,
        ip: IpAddr,
        now: Instant,
        cfg: &SecurityConfig,
        exempt: bool,
    ) -> bool {
        if !cfg.enabled || exempt {
            return false;
        }
        let window = Duration::from_secs(cfg.auth_window_s);
        let Some(src) = source(&mut self.sources, ip, now, cfg) else {
            return false;
        };
        if src.ban.is_some_and(|b| now < b.until) {
            return true;
        }
        while src
            .failures
            .front()
            .is_some_and(|&t| now.saturating_duration_since(t) >= window)
        {
            src.failures.pop_front();
        }
        src.failures.push_back(now);
        if src.failures.len() >= cfg.auth_failures as usize {
            self.ban(ip, now, cfg, BanReason::AuthFailures);
            return true;
        }
        false
    }

    /// Counts a request refused for `reason` (not a datagram the hook dropped).
    pub fn count(&mut self, reason: DropReason) {
        self.dropped[reason.index()] += 1;
    }

    /// Bans `ip` for `security.ban_s` from `now`.
    pub fn ban(&mut self, ip: IpAddr, now: Instant, cfg: &SecurityConfig, reason: BanReason) {
        let until = now + Duration::from_secs(cfg.ban_s);
        let src = self.sources.entry(ip).or_insert_with(|| Source {
            tokens: f64::from(cfg.burst),
            refilled: now,
            failures: VecDeque::new(),
            ban: None,
        });
        if src.ban.is_some_and(|b| now < b.until) {
            return;
        }
        src.ban = Some(Ban {
            since: now,
            until,
            reason,
            dropped: 0,
        });
        self.bans_total += 1;
        tracing::warn!(%ip, reason = reason.as_str(), ban_s = cfg.ban_s, "SIP source banned");
    }

    pub fn is_banned(&self, ip: IpAddr, now: Instant) -> bool {
        self.sources
            .get(&ip)
            .and_then(|s| s.ban)
            .is_some_and(|b| now < b.until)
    }

    /// Lifts `ip`'s ban (and forgets its failures); false if it had none.
    pub fn unban(&mut self, ip: IpAddr, now: Instant) -> bool {
        let banned = self.is_banned(ip, now);
        self.sources.remove(&ip);
        banned
    }

    /// Bans in force at `now`, longest-standing first.
    pub fn bans(&self, now: Instant) -> Vec<BanInfo> {
        let mut out: Vec<(Instant, BanInfo)> = self
            .sources
            .iter()
            .filter_map(|(ip, s)| {
                let b = s.ban.filter(|b| now < b.until)?;
                Some((
                    b.since,
                    BanInfo {
                        ip: *ip,
                        reason: b.reason.as_str(),
                        age_s: now.saturating_duration_since(b.since).as_secs(),
                        expires_in_s: b.until.saturating_duration_since(now).as_secs_f64().ceil()
                            as u64,
                        dropped: b.dropped,
                    },
                ))
            })
            .collect();
        out.sort_by_key(|(since, b)| (*since, b.ip));
        out.into_iter().map(|(_, b)| b).collect()
    }

    /// Takes a call slot for `ip` (and `user`), unless a limit is reached.
    pub fn call_start(
        &mut self,
        ip: IpAddr,
        user: Option<&str>,
        cfg: &SecurityConfig,
        exempt: bool,
    ) -> Result<(), CallLimit> {
        if cfg.enabled {
            let by_source = self.calls_by_source.get(&ip).copied().unwrap_or(0);
            if !exempt && cfg.max_calls_per_source > 0 && by_source >= cfg.max_calls_per_source {
                self.count(DropReason::CallsPerSource);
                return Err(CallLimit::PerSource(by_source));
            }
            let by_user = user
                .and_then(|u| self.calls_by_user.get(u))
                .copied()
                .unwrap_or(0);
            if user.is_some() && cfg.max_calls_per_user > 0 && by_user >= cfg.max_calls_per_user {
                self.count(DropReason::CallsPerUser);
                return Err(CallLimit::PerUser(by_user));
            }
        }
        *self.calls_by_source.entry(ip).or_default() += 1;
        if let Some(u) = user {
            *self.calls_by_user.entry(u.to_string()).or_default() += 1;
        }
        Ok(())
    }

    /// Gives back a slot [`GuardState::call_start`] took.
    pub fn call_end(&mut self, ip: IpAddr, user: Option<&str>) {
        if let Some(n) = self.calls_by_source.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.calls_by_source.remove(&ip);
            }
        }
        if let Some(u) = user {
            if let Some(n) = self.calls_by_user.get_mut(u) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.calls_by_user.remove(u);
                }
            }
        }
    }

    pub fn bans_total(&self) -> u64 {
        self.bans_total
    }

    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason.index()]
    }

    pub fn banned_sources(&self, now: Instant) -> usize {
        self.sources
            .values()
            .filter(|s| s.ban.is_some_and(|b| now < b.until))
            .count()
    }

    /// Sources tracked (for tests of the pruning).
    pub fn tracked(&self) -> usize {
        self.sources.len()
    }

    /// Forgets sources that would look new anyway: bucket full again, no
    /// failure in the window, no ban in force.
    fn maybe_prune(&mut self, now: Instant, cfg: &SecurityConfig) {
        if self
            .last_prune
            .is_some_and(|t| now.saturating_duration_since(t) < PRUNE_EVERY)
        {
            return;
        }
        self.last_prune = Some(now);
        let window = Duration::from_secs(cfg.auth_window_s);
        let burst = f64::from(cfg.burst);
        self.sources.retain(|_, s| {
            let banned = s.ban.is_some_and(|b| now < b.until);
            let recent_failure = s
                .failures
                .back()
                .is_some_and(|&t| now.saturating_duration_since(t) < window);
            let refilled = s.tokens
                + now.saturating_duration_since(s.refilled).as_secs_f64() * cfg.rate
                >= burst;
            banned || recent_failure || !refilled
        });
    }
}

/// `ip`'s entry, created when there is room.
fn source<'a>(
    sources: &'a mut HashMap<IpAddr, Source>,
    ip: IpAddr,
    now: Instant,
    cfg: &SecurityConfig,
) -> Option<&'a mut Source> {
    if !sources.contains_key(&ip) && sources.len() >= MAX_SOURCES {
        return None;
    }
    Some(sources.entry(ip).or_insert_with(|| Source {
        tokens: f64::from(cfg.burst),
        refilled: now,
        failures: VecDeque::new(),
        ban: None,
    }))
}

/// [`GuardState`] behind a lock, for the transport hook, the dispatcher and
/// the API.
#[derive(Debug, Default)]
pub struct Guard {
    state: Mutex<GuardState>,
}

impl Guard {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, GuardState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A call slot released when the returned value is dropped.
    pub fn call_slot(
        self: &Arc<Self>,
        ip: IpAddr,
        user: Option<String>,
        cfg: &SecurityConfig,
        exempt: bool,
    ) -> Result<CallSlot, CallLimit> {
        self.lock().call_start(ip, user.as_deref(), cfg, exempt)?;
        Ok(CallSlot {
            guard: self.clone(),
            ip,
            user,
        })
    }
}

/// A call counted against its source and user until dropped.
#[derive(Debug)]
pub struct CallSlot {
    guard: Arc<Guard>,
    ip: IpAddr,
    user: Option<String>,
}

impl Drop for CallSlot {
    fn drop(&mut self) {
        self.guard.lock().call_end(self.ip, self.user.as_deref());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn cfg() -> SecurityConfig {
        SecurityConfig {
            rate: 10.0,
            burst: 20,
            auth_failures: 5,
            auth_window_s: 60,
            ban_s: 600,
            max_calls_per_source: 2,
            max_calls_per_user: 1,
            ..SecurityConfig::default()
        }
    }

    const ATTACKER: &str = "198.51.100.7";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_flood_empties_the_bucket_and_bans_the_source_until_the_ban_ends() {
        let (c, t0) = (cfg(), Instant::now());
        let mut g = GuardState::default();
        let a = ip(ATTACKER);
        // 2,000 requests/s: the burst passes, then the source is banned.
        let mut passed = 0;
        let mut first_drop = None;
        for i in 0..2000u64 {
            let now = t0 + Duration::from_micros(500 * i);
            match g.packet(a, now, &c, false) {
                Verdict::Pass => passed += 1,
                Verdict::Drop(r) => {
                    first_drop.get_or_insert((i, r));
                }
            }
        }
        assert_eq!(first_drop.map(|(_, r)| r), Some(DropReason::Rate));
        assert!((20..=21).contains(&passed), "passed {passed}");
        assert!(g.is_banned(a, t0 + Duration::from_secs(1)));
        assert_eq!(g.bans_total(), 1);
        assert_eq!(g.dropped(DropReason::Rate), 1);
        assert_eq!(g.dropped(DropReason::Banned), 2000 - passed - 1);
        let (first, _) = first_drop.unwrap();
        let banned_at = t0 + Duration::from_micros(500 * first);
        let bans = g.bans(banned_at + Duration::from_secs(100));
        assert_eq!(bans.len(), 1);
        assert_eq!((bans[0].ip, bans[0].reason), (a, "rate"));
        assert_eq!(bans[0].age_s, 100);
        assert_eq!(bans[0].expires_in_s, 500);
        // Another source is not affected.
        assert_eq!(
            g.packet(ip("198.51.100.8"), t0 + Duration::from_secs(1), &c, false),
            Verdict::Pass
        );
        // Still banned just before the end, free just after.
        let ban_end = banned_at + Duration::from_secs(600);
        assert_eq!(
            g.packet(a, ban_end - Duration::from_millis(10), &c, false),
            Verdict::Drop(DropReason::Banned)
        );
        assert_eq!(g.packet(a, ban_end, &c, false), Verdict::Pass);
        assert!(g.bans(ban_end).is_empty());
        assert_eq!(g.banned_sources(ban_end), 0);
    }

    #[test]
    fn a_steady_rate_under_the_limit_is_never_banned() {
        let (c, t0) = (cfg(), Instant::now());
        let mut g = GuardState::default();
        for i in 0..10_000u64 {
            // 9 requests/s against a 10/s limit, for 1,111 s.
            let now = t0 + Duration::from_micros(111_111 * i);
            assert_eq!(
                g.packet(ip(ATTACKER), now, &c, false),
                Verdict::Pass,
                "#{i}"
            );
        }
    }

    #[test]
    fn failed_authentications_ban_at_the_threshold_within_the_window() {
        let (c, t0) = (cfg(), Instant::now());
        let mut g = GuardState::default();
        let a = ip(ATTACKER);
        // 4 failures, then a pause longer than the window: they are forgotten.
        for i in 0..4 {
            assert!(!g.auth_failed(a, t0 + Duration::from_secs(i), &c, false));
        }
        let later = t0 + Duration::from_secs(70);
        for i in 0..4 {
            assert!(!g.auth_failed(a, later + Duration::from_secs(i), &c, false));
        }
        assert!(g.auth_failed(a, later + Duration::from_secs(5), &c, false));
        assert!(g.is_banned(a, later + Duration::from_secs(6)));
        assert_eq!(
            g.bans(later + Duration::from_secs(6))[0].reason,
            "auth_failures"
        );
    }

    #[test]
    fn exempt_sources_and_a_disabled_guard_never_ban() {
        let (c, t0) = (cfg(), Instant::now());
        let mut g = GuardState::default();
        let off = SecurityConfig {
            enabled: false,
            ..cfg()
        };
        for i in 0..1000 {
            let now = t0 + Duration::from_micros(i);
            assert_eq!(g.packet(ip("10.0.0.1"), now, &c, true), Verdict::Pass);
            assert_eq!(g.packet(ip("10.0.0.2"), now, &off, false), Verdict::Pass);
            assert!(!g.auth_failed(ip("10.0.0.1"), now, &c, true));
            assert!(!g.auth_failed(ip("10.0.0.2"), now, &off, false));
        }
        assert_eq!(g.bans_total(), 0);
        assert_eq!(g.tracked(), 0);
    }

    #[test]
    fn unban_lifts_a_ban_at_once() {
        let (c, t0) = (cfg(), Instant::now());
        let mut g = GuardState::default();
        let a = ip(ATTACKER);
        g.ban(a, t0, &c, BanReason::Scanner);
        assert_eq!(
            g.packet(a, t0, &c, false),
            Verdict::Drop(DropReason::Banned)
        );
        assert!(g.unban(a, t0));
        assert!(!g.unban(a, t0));
        assert_eq!(g.packet(a, t0, &c, false), Verdict::Pass);
    }

    #[test]
    fn idle_sources_are_forgotten_and_banned_ones_kept() {
        let (c, t0) = (cfg(), Instant::now());
        let mut g = GuardState::default();
        for i in 0..100u8 {
            g.packet(IpAddr::from([192, 0, 2, i]), t0, &c, false);
        }
        g.ban(ip(ATTACKER), t0, &c, BanReason::Manual);
        assert_eq!(g.tracked(), 101);
        // Ten seconds later every bucket is full again.
        g.packet(ip("203.0.113.1"), t0 + Duration::from_secs(11), &c, false);
        assert_eq!(g.tracked(), 2, "the banned source and the new one");
    }

    #[test]
    fn calls_are_limited_per_source_and_per_user_and_slots_come_back() {
        let c = cfg();
        let guard = Arc::new(Guard::default());
        let a = ip(ATTACKER);
        let s1 = guard.call_slot(a, Some("1000".into()), &c, false).unwrap();
        assert_eq!(
            guard
                .call_slot(a, Some("1000".into()), &c, false)
                .unwrap_err(),
            CallLimit::PerUser(1)
        );
        let s2 = guard.call_slot(a, Some("1001".into()), &c, false).unwrap();
        assert_eq!(
            guard.call_slot(a, None, &c, false).unwrap_err(),
            CallLimit::PerSource(2)
        );
        // Exempt sources (trunks, trusted) have no per-source limit.
        let s3 = guard.call_slot(a, None, &c, true).unwrap();
        drop((s1, s2, s3));
        let _again = guard.call_slot(a, Some("1000".into()), &c, false).unwrap();
        assert_eq!(guard.lock().dropped(DropReason::CallsPerUser), 1);
        assert_eq!(guard.lock().dropped(DropReason::CallsPerSource), 1);
    }
}
