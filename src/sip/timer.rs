//! RFC 4028 session timers: what the INVITE asked for, what we grant, and
//! when a refresh is due or the session has expired. Pure logic; the call
//! task sends the refreshes and the BYE.

use std::time::{Duration, Instant};

/// Who refreshes the session (RFC 4028 section 7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresher {
    Uac,
    Uas,
}

impl Refresher {
    pub fn as_str(self) -> &'static str {
        match self {
            Refresher::Uac => "uac",
            Refresher::Uas => "uas",
        }
    }
}

/// The session timer agreed for a call we answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionTimer {
    pub interval_s: u32,
    pub refresher: Refresher,
    /// The caller listed `timer` in Supported: our 200 carries `Require: timer`.
    pub uac_supports: bool,
}

/// What to do with an INVITE's Session-Expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimerDecision {
    /// No timer asked for.
    None,
    Granted(SessionTimer),
    /// 422 Session Interval Too Small, with our Min-SE.
    TooSmall {
        min_se: u32,
    },
}

/// Reads `Session-Expires: N[;refresher=uac|uas]` (also the compact `x`
/// form's value) and `Supported`, and decides (RFC 4028 section 9).
/// `max_s` caps what we grant; `min_se` is the smallest we accept.
pub fn decide(
    session_expires: Option<&str>,
    supported: &[String],
    min_se: u32,
    max_s: u32,
) -> TimerDecision {
    let Some(value) = session_expires else {
        return TimerDecision::None;
    };
    let mut parts = value.split(';');
    let Some(interval) = parts.next().and_then(|n| n.trim().parse::<u32>().ok()) else {
        // Unparsable: treat as absent rather than fail the call.
        return TimerDecision::None;
    };
    if interval < min_se {
        return TimerDecision::TooSmall { min_se };
    }
    let asked = parts.find_map(|p| {
        let (k, v) = p.split_once('=')?;
        if !k.trim().eq_ignore_ascii_case("refresher") {
            return None;
        }
        match v.trim().to_ascii_lowercase().as_str() {
            "uac" => Some(Refresher::Uac),
            "uas" => Some(Refresher::Uas),
            _ => None,
        }
    });
    let uac_supports = supported
        .iter()
        .flat_map(|s| s.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("timer"));
    // Section 9: without the caller's preference, it refreshes if it can.
    let refresher = asked.unwrap_or(if uac_supports {
        Refresher::Uac
    } else {
        Refresher::Uas
    });
    TimerDecision::Granted(SessionTimer {
        interval_s: interval.min(max_s.max(min_se)),
        refresher,
        uac_supports,
    })
}

impl SessionTimer {
    pub fn header_value(&self) -> String {
        format!("{};refresher={}", self.interval_s, self.refresher.as_str())
    }

    /// When we send the next refresh (we are the refresher): half the interval.
    pub fn refresh_due(&self, last_refresh: Instant) -> Option<Instant> {
        (self.refresher == Refresher::Uas)
            .then(|| last_refresh + Duration::from_secs(self.interval_s as u64) / 2)
    }

    /// When the session expires without a refresh from the caller
    /// (section 10: interval minus min(32 s, interval / 3)).
    pub fn expiry(&self, last_refresh: Instant) -> Option<Instant> {
        (self.refresher == Refresher::Uac).then(|| {
            let i = self.interval_s as u64;
            last_refresh + Duration::from_secs(i - (i / 3).min(32))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sup(v: &str) -> Vec<String> {
        vec![v.to_string()]
    }

    #[test]
    fn no_header_no_timer_and_short_interval_gets_422() {
        assert_eq!(decide(None, &[], 90, 1800), TimerDecision::None);
        assert_eq!(
            decide(Some("60"), &[], 90, 1800),
            TimerDecision::TooSmall { min_se: 90 }
        );
    }

    #[test]
    fn refresher_follows_the_request_or_the_callers_support() {
        let g = |se: &str, s: &[String]| match decide(Some(se), s, 90, 1800) {
            TimerDecision::Granted(t) => t,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            g("1800;refresher=uas", &sup("timer")).refresher,
            Refresher::Uas
        );
        assert_eq!(g("1800", &sup("100rel, timer")).refresher, Refresher::Uac);
        assert_eq!(g("1800", &[]).refresher, Refresher::Uas);
        assert_eq!(g("7200", &[]).interval_s, 1800, "capped to our maximum");
        assert_eq!(
            g("900;refresher=uac", &[]).header_value(),
            "900;refresher=uac"
        );
    }

    #[test]
    fn refresh_at_half_and_expiry_before_the_end() {
        let t0 = Instant::now();
        let uas = SessionTimer {
            interval_s: 90,
            refresher: Refresher::Uas,
            uac_supports: true,
        };
        assert_eq!(uas.refresh_due(t0), Some(t0 + Duration::from_secs(45)));
        assert_eq!(uas.expiry(t0), None);
        let uac = SessionTimer {
            refresher: Refresher::Uac,
            ..uas
        };
        assert_eq!(uac.expiry(t0), Some(t0 + Duration::from_secs(60)));
        let short = SessionTimer {
            interval_s: 6,
            ..uac
        };
        assert_eq!(short.expiry(t0), Some(t0 + Duration::from_secs(4)));
    }
}
