//! Server-Sent Events, both ways: what the stream sends besides changes (each change carries
//! its own message, see [`crate::model::change::Change::message`]), and how `alohook tail` and
//! `alohook listen` read a stream back (the WHATWG event-stream format, which browsers'
//! EventSource reads too).

/// What an idle stream sends at least this often, so that proxies do not cut it.
pub const KEEP_ALIVE: &str = ": keep-alive\n\n";

/// How long a client should wait before reconnecting, sent once when a stream opens.
pub const RETRY_MILLIS: u64 = 2000;

/// One message of an event stream, as a client sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    /// The last `id:` seen on the stream so far (the field carries over, as in EventSource).
    pub id: Option<String>,
    /// `event:`, when given.
    pub event: Option<String>,
    /// The `data:` fields, joined with newlines; `None` for a block that only set the id (which
    /// EventSource does not dispatch, but remembers: alohook's stream names its starting
    /// position that way).
    pub data: Option<String>,
}

/// Reads messages from an event stream given in chunks of any size.
#[derive(Debug, Default)]
pub struct Parser {
    buffer: Vec<u8>,
    last_id: Option<String>,
    event: Option<String>,
    data: Option<String>,
    /// The block being read has an `id:` field.
    id_seen: bool,
}

impl Parser {
    /// Takes a chunk; returns the messages it completed: blocks with data, or with an id.
    /// Comments (`: keep-alive`) and fields other than `id`, `event`, `data` are skipped.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<Message> {
        self.buffer.extend_from_slice(chunk);
        let mut messages = Vec::new();
        let mut start = 0;
        while let Some(offset) = self.buffer[start..].iter().position(|&b| b == b'\n') {
            let end = start + offset;
            let mut line = &self.buffer[start..end];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            let line = String::from_utf8_lossy(line).into_owned();
            start = end + 1;
            if let Some(message) = self.line(&line) {
                messages.push(message);
            }
        }
        self.buffer.drain(..start);
        messages
    }

    fn line(&mut self, line: &str) -> Option<Message> {
        if line.is_empty() {
            let event = self.event.take();
            let data = self.data.take();
            if data.is_none() && !std::mem::take(&mut self.id_seen) {
                return None;
            }
            self.id_seen = false;
            return Some(Message {
                id: self.last_id.clone(),
                event,
                data,
            });
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "id" => {
                self.last_id = Some(value.to_string());
                self.id_seen = true;
            }
            "event" => self.event = Some(value.to_string()),
            "data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            },
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::change::{Change, NewChange};
    use proptest::prelude::*;

    #[test]
    fn a_written_change_reads_back() {
        let change = Change::new(
            42,
            NewChange::event(7, 0, "{\"eventType\":\"sms\"}"),
            &jiff::tz::TimeZone::UTC,
        );
        let mut text = format!("retry: {RETRY_MILLIS}\nid: 40\n\n{KEEP_ALIVE}");
        text.push_str(std::str::from_utf8(&change.message()).unwrap());
        let mut parser = Parser::default();
        let messages = parser.push(text.as_bytes());
        assert_eq!(
            messages,
            vec![
                Message {
                    id: Some("40".into()),
                    event: None,
                    data: None,
                },
                Message {
                    id: Some("42".into()),
                    event: Some("event.received".into()),
                    data: Some(change.json().to_string()),
                }
            ]
        );
    }

    proptest! {
        /// However the stream is cut into chunks, the same messages come out.
        #[test]
        fn any_chunking_gives_the_same_messages(cuts in proptest::collection::vec(0usize..400, 0..12), crlf in any::<bool>()) {
            let mut text = String::new();
            for seq in 1..=4 {
                let change = Change::new(
                    seq,
                    NewChange::event(seq, 0, "{\"a\":\"b: c\"}"),
                    &jiff::tz::TimeZone::UTC,
                );
                text.push_str(std::str::from_utf8(&change.message()).unwrap());
                text.push_str(KEEP_ALIVE);
            }
            if crlf {
                text = text.replace('\n', "\r\n");
            }
            let whole = Parser::default().push(text.as_bytes());
            prop_assert_eq!(whole.len(), 4);
            let mut cuts = cuts;
            cuts.push(text.len());
            cuts.sort_unstable();
            let mut parser = Parser::default();
            let mut pieces = Vec::new();
            let mut at = 0;
            for cut in cuts {
                let cut = cut.min(text.len());
                if cut < at { continue; }
                pieces.extend(parser.push(&text.as_bytes()[at..cut]));
                at = cut;
            }
            prop_assert_eq!(pieces, whole);
        }
    }
}
