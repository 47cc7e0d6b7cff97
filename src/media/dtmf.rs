//! RFC 4733 telephone-event receive: one digit per event, despite the
//! redundant end packets every sender transmits.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DtmfError {
    #[error("telephone-event payload: expected 4 bytes, got {0}")]
    TooShort(usize),
    #[error("telephone-event {0} is not a DTMF digit")]
    NotADigit(u8),
}

/// Maps an RFC 4733 event code to its DTMF character.
pub fn event_digit(event: u8) -> Result<char, DtmfError> {
    const DIGITS: &[u8; 16] = b"0123456789*#ABCD";
    DIGITS
        .get(event as usize)
        .map(|&c| c as char)
        .ok_or(DtmfError::NotADigit(event))
}

/// Tracks events so each digit is reported once: an event is identified by
/// its RTP timestamp and code (RFC 4733 section 2.5.1.3); the redundant end
/// packets of one event carry consecutive or equal sequence numbers, so an
/// end packet far from the last one reported starts a new event even if a
/// sender (or a replayed capture) reuses the timestamp.
#[derive(Debug, Default)]
pub struct DtmfReceiver {
    last_reported: Option<(u32, u8, u16)>,
}

/// Redundant end packets of one event stay within this many sequence numbers.
const SAME_EVENT_SEQ_SPAN: i32 = 8;

impl DtmfReceiver {
    /// Feeds one telephone-event payload; returns a digit when an event ends
    /// for the first time.
    pub fn handle(
        &mut self,
        seq: u16,
        timestamp: u32,
        payload: &[u8],
    ) -> Result<Option<char>, DtmfError> {
        if payload.len() < 4 {
            return Err(DtmfError::TooShort(payload.len()));
        }
        let event = payload[0];
        let end = payload[1] & 0x80 != 0;
        let digit = event_digit(event)?;
        if !end {
            return Ok(None);
        }
        let repeat = self.last_reported.is_some_and(|(ts, ev, last_seq)| {
            let span = (seq.wrapping_sub(last_seq) as i16 as i32).abs();
            ts == timestamp && ev == event && span <= SAME_EVENT_SEQ_SPAN
        });
        if repeat {
            return Ok(None);
        }
        self.last_reported = Some((timestamp, event, seq));
        Ok(Some(digit))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn redundant_end_packets_give_one_digit() {
        let mut rx = DtmfReceiver::default();
        assert_eq!(rx.handle(1, 100, &[5, 10, 0, 160]).unwrap(), None);
        assert_eq!(rx.handle(2, 100, &[5, 0x8a, 1, 64]).unwrap(), Some('5'));
        assert_eq!(rx.handle(2, 100, &[5, 0x8a, 1, 64]).unwrap(), None);
        assert_eq!(rx.handle(2, 100, &[5, 0x8a, 1, 64]).unwrap(), None);
        assert_eq!(rx.handle(3, 900, &[11, 0x8a, 1, 64]).unwrap(), Some('#'));
    }

    /// The sipp sample captures all use timestamp 13280; replayed one after
    /// another they are still separate digits.
    #[test]
    fn a_reused_timestamp_far_away_in_sequence_is_a_new_digit() {
        let mut rx = DtmfReceiver::default();
        assert_eq!(rx.handle(7991, 13280, &[1, 0x8a, 3, 0]).unwrap(), Some('1'));
        assert_eq!(rx.handle(7991, 13280, &[1, 0x8a, 3, 0]).unwrap(), None);
        assert_eq!(rx.handle(8100, 13280, &[2, 0x8a, 3, 0]).unwrap(), Some('2'));
        assert_eq!(rx.handle(9000, 13280, &[2, 0x8a, 3, 0]).unwrap(), Some('2'));
    }

    #[test]
    fn bad_payloads_are_errors() {
        let mut rx = DtmfReceiver::default();
        assert_eq!(rx.handle(0, 1, &[1, 2]), Err(DtmfError::TooShort(2)));
        assert_eq!(
            rx.handle(0, 1, &[40, 0x80, 0, 0]),
            Err(DtmfError::NotADigit(40))
        );
    }
}
