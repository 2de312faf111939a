//! Server-sent events read from a byte stream as it arrives (WHATWG rules: `field: value` lines,
//! an empty line ends an event, `:` lines are comments, `data` lines join with newlines; CR, LF and
//! CRLF all end lines). Bounded: an event larger than [`MAX_EVENT_BYTES`] is an error.

/// One event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` name, if any (OpenAI sends none; Anthropic names every event).
    pub event: Option<String>,
    pub data: String,
}

/// The most an event (or a line) may take; a provider sending more is broken or hostile.
pub const MAX_EVENT_BYTES: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SseError {
    #[error("an event exceeds {MAX_EVENT_BYTES} bytes")]
    TooLarge,
    #[error("an event is not UTF-8")]
    NotUtf8,
}

/// Feeds bytes in, takes complete events out.
#[derive(Default)]
pub struct SseDecoder {
    line: Vec<u8>,
    /// The previous chunk ended with CR: a leading LF of the next belongs to it.
    after_cr: bool,
    event: Option<String>,
    data: String,
    has_data: bool,
}

impl SseDecoder {
    pub fn new() -> SseDecoder {
        SseDecoder::default()
    }

    /// Reads `bytes`, pushing each event completed by them onto `out`.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        for &b in bytes {
            if self.after_cr {
                self.after_cr = false;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\r' => {
                    self.after_cr = true;
                    self.end_line(out)?;
                }
                b'\n' => self.end_line(out)?,
                _ => {
                    if self.line.len() + self.data.len() >= MAX_EVENT_BYTES {
                        return Err(SseError::TooLarge);
                    }
                    self.line.push(b);
                }
            }
        }
        Ok(())
    }

    /// The event left open when the stream ended without its blank line (some providers do that).
    pub fn finish(&mut self, out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        if !self.line.is_empty() {
            self.end_line(out)?;
        }
        self.dispatch(out);
        Ok(())
    }

    fn end_line(&mut self, out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        if self.line.is_empty() {
            self.dispatch(out);
            return Ok(());
        }
        let line = std::str::from_utf8(&self.line).map_err(|_| SseError::NotUtf8)?;
        if !line.starts_with(':') {
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line, ""),
            };
            match field {
                "event" => self.event = Some(value.to_string()),
                "data" => {
                    if self.has_data {
                        self.data.push('\n');
                    }
                    self.data.push_str(value);
                    self.has_data = true;
                }
                _ => {} // id, retry and unknown fields carry nothing the gateway needs
            }
        }
        self.line.clear();
        Ok(())
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        if self.has_data || self.event.is_some() {
            out.push(SseEvent { event: self.event.take(), data: std::mem::take(&mut self.data) });
        }
        self.has_data = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_in_pieces(input: &[u8], piece: usize) -> Vec<SseEvent> {
        let mut d = SseDecoder::new();
        let mut out = Vec::new();
        for chunk in input.chunks(piece) {
            d.feed(chunk, &mut out).unwrap();
        }
        d.finish(&mut out).unwrap();
        out
    }

    #[test]
    fn events_survive_any_split_and_any_line_ending() {
        let input = b"event: message_start\r\ndata: {\"a\":1}\r\n\r\n: ping comment\n\ndata: line1\ndata: line2\n\nid:7\r:HTTP_STATUS/200\rdata:x\r\rdata: [DONE]";
        let want = vec![
            SseEvent { event: Some("message_start".into()), data: "{\"a\":1}".into() },
            SseEvent { event: None, data: "line1\nline2".into() },
            SseEvent { event: None, data: "x".into() },
            SseEvent { event: None, data: "[DONE]".into() },
        ];
        for piece in 1..input.len() {
            assert_eq!(decode_in_pieces(input, piece), want, "pieces of {piece}");
        }
    }

    #[test]
    fn oversized_events_are_refused() {
        let mut d = SseDecoder::new();
        let mut out = Vec::new();
        let big = vec![b'a'; 1 << 20];
        let mut result = d.feed(b"data: ", &mut out);
        for _ in 0..17 {
            result = result.and_then(|_| d.feed(&big, &mut out));
        }
        assert!(matches!(result, Err(SseError::TooLarge)));
    }
}
