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

/// Tracks events by their RTP timestamp so each digit is reported once.
#[derive(Debug, Default)]
pub struct DtmfReceiver {
    last_reported_ts: Option<u32>,
}

impl DtmfReceiver {
    /// Feeds one telephone-event payload; returns a digit when an event ends
    /// for the first time.
    pub fn handle(&mut self, timestamp: u32, payload: &[u8]) -> Result<Option<char>, DtmfError> {
        if payload.len() < 4 {
            return Err(DtmfError::TooShort(payload.len()));
        }
        let event = payload[0];
        let end = payload[1] & 0x80 != 0;
        let digit = event_digit(event)?;
        if end && self.last_reported_ts != Some(timestamp) {
            self.last_reported_ts = Some(timestamp);
            return Ok(Some(digit));
        }
        Ok(None)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn redundant_end_packets_give_one_digit() {
        let mut rx = DtmfReceiver::default();
        assert_eq!(rx.handle(100, &[5, 10, 0, 160]).unwrap(), None);
        assert_eq!(rx.handle(100, &[5, 0x8a, 1, 64]).unwrap(), Some('5'));
        assert_eq!(rx.handle(100, &[5, 0x8a, 1, 64]).unwrap(), None);
        assert_eq!(rx.handle(100, &[5, 0x8a, 1, 64]).unwrap(), None);
        assert_eq!(rx.handle(900, &[11, 0x8a, 1, 64]).unwrap(), Some('#'));
    }

    #[test]
    fn bad_payloads_are_errors() {
        let mut rx = DtmfReceiver::default();
        assert_eq!(rx.handle(1, &[1, 2]), Err(DtmfError::TooShort(2)));
        assert_eq!(
            rx.handle(1, &[40, 0x80, 0, 0]),
            Err(DtmfError::NotADigit(40))
        );
    }
}
