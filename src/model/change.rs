//! Changes: what the feed says about each new event. Every new event (never a resend) makes
//! exactly one change, committed with it, at a position `seq` in one total order per database.
//!
//! A change of a call carries the call record as it was right after that event was merged, so a
//! filter matched against it gives the same answer live and in a replay, whenever it is asked.

use bytes::Bytes;
use jiff::tz::TimeZone;

use super::merge::{CallRecord, Phase};
use super::phone::normalize_phone;
use super::time::format_utc_micros;
use super::view::CallView;

/// What a change says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeType {
    /// The event created the call record (and did not end it).
    CallCreated,
    /// The event was merged into a call record that existed, without ending it for the first time.
    CallUpdated,
    /// The event moved the call's phase to `ended` (or created an already ended call).
    CallEnded,
    /// An event whose `eventType` is not `call`: stored, merged into nothing.
    EventReceived,
}

impl ChangeType {
    pub const ALL: [ChangeType; 4] = [
        ChangeType::CallCreated,
        ChangeType::CallUpdated,
        ChangeType::CallEnded,
        ChangeType::EventReceived,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ChangeType::CallCreated => "call.created",
            ChangeType::CallUpdated => "call.updated",
            ChangeType::CallEnded => "call.ended",
            ChangeType::EventReceived => "event.received",
        }
    }

    pub fn parse(text: &str) -> Option<ChangeType> {
        Self::ALL.into_iter().find(|t| t.as_str() == text)
    }

    /// The type of a change of a call whose phase was `before` (`None`: the event created the
    /// record) and is `after` once the event is merged.
    pub fn of_call(before: Option<Phase>, after: Phase) -> ChangeType {
        match (before, after) {
            (Some(Phase::Ended), _) => ChangeType::CallUpdated,
            (_, Phase::Ended) => ChangeType::CallEnded,
            (None, _) => ChangeType::CallCreated,
            (Some(_), _) => ChangeType::CallUpdated,
        }
    }
}

/// What filters of the feed look at: the call as of the change, in normal form (lower-cased
/// status and direction, phone numbers in E.164 where they are phone numbers). All `None` for
/// an `event.received` change, so that every call filter leaves those out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeSubject {
    pub call_id: Option<String>,
    pub status_norm: Option<String>,
    pub phase: Option<String>,
    pub direction: Option<String>,
    pub hotline: Option<String>,
    pub user_name: Option<String>,
    pub transaction_id: Option<String>,
    pub caller_norm: Option<String>,
    pub destination_norm: Option<String>,
}

impl ChangeSubject {
    fn of_call(record: &CallRecord, phase: Phase) -> Self {
        let f = &record.fields;
        ChangeSubject {
            call_id: f.call_id.clone(),
            status_norm: f.call_status.as_deref().map(str::to_lowercase),
            phase: Some(phase.as_str().to_string()),
            direction: f.direction.as_deref().map(str::to_lowercase),
            hotline: f.hotline.clone(),
            user_name: f.user_name.clone(),
            transaction_id: f.transaction_id.clone(),
            caller_norm: f.caller_number.as_deref().map(normalize_phone),
            destination_norm: f.destination_number.as_deref().map(normalize_phone),
        }
    }
}

/// What a change carries: the call as of the change, or a non-call event's payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeBody {
    /// The call record right after the change's event was merged, in its phase then.
    Call {
        record: Box<CallRecord>,
        phase: Phase,
    },
    /// The payload of an event whose `eventType` is not `call`, as sent, on one line.
    Event { payload: String },
}

/// A change being committed: everything but its position, which the store gives it.
#[derive(Debug, Clone)]
pub struct NewChange {
    pub kind: ChangeType,
    pub event_id: i64,
    /// Unix microseconds: the first receipt of the event.
    pub received_at: i64,
    pub subject: ChangeSubject,
    pub body: ChangeBody,
}

impl NewChange {
    /// The change an event makes to its call: `before` is the call's phase before the event
    /// (`None`: the event created the record), `record` and `phase` the call after it.
    pub fn call(
        event_id: i64,
        received_at: i64,
        before: Option<Phase>,
        record: &CallRecord,
        phase: Phase,
    ) -> Self {
        // What the call shows, without what only merging needs (which a stored change does not
        // keep either).
        let record = CallRecord {
            fields: record.fields.clone(),
            sources: [None; super::merge::MERGED_FIELDS],
            event_count: record.event_count,
            first_received_at: record.first_received_at,
            last_received_at: record.last_received_at,
            sort_time: None,
        };
        NewChange {
            kind: ChangeType::of_call(before, phase),
            event_id,
            received_at,
            subject: ChangeSubject::of_call(&record, phase),
            body: ChangeBody::Call {
                record: Box::new(record),
                phase,
            },
        }
    }

    /// The change of an event that is not about a call: its payload as sent. A body may be
    /// written over several lines; line breaks between JSON tokens are only whitespace (inside a
    /// JSON string they are escaped), so the one-line form is the same JSON value.
    pub fn event(event_id: i64, received_at: i64, payload: &str) -> Self {
        let payload = if payload.contains(['\n', '\r']) {
            payload.replace(['\n', '\r'], " ")
        } else {
            payload.to_string()
        };
        NewChange {
            kind: ChangeType::EventReceived,
            event_id,
            received_at,
            subject: ChangeSubject::default(),
            body: ChangeBody::Event { payload },
        }
    }
}

/// A committed change, at its position in the feed.
///
/// Its two wire forms, the JSON and the Server-Sent Events message that carries it (sharing its
/// bytes), are rendered when first asked for, once for every reader: a commit does not pay for
/// them, and a change nobody reads is never rendered. Call times render in the zone the change
/// was made (or read) with, the configured one.
#[derive(Debug, Clone)]
pub struct Change {
    pub seq: i64,
    pub kind: ChangeType,
    pub event_id: i64,
    pub received_at: i64,
    pub subject: ChangeSubject,
    pub body: ChangeBody,
    tz: TimeZone,
    rendered: std::sync::OnceLock<Rendered>,
}

#[derive(Debug, Clone)]
struct Rendered {
    /// `id: <seq>\nevent: <type>\ndata: <json>\n\n`.
    message: Bytes,
    /// The JSON, within `message`.
    json: Bytes,
}

impl PartialEq for Change {
    fn eq(&self, other: &Self) -> bool {
        (
            self.seq,
            self.kind,
            self.event_id,
            self.received_at,
            &self.body,
        ) == (
            other.seq,
            other.kind,
            other.event_id,
            other.received_at,
            &other.body,
        )
    }
}

impl Eq for Change {}

impl Change {
    /// The change `change` at position `seq`, its call times to be shown in `tz`.
    pub fn new(seq: i64, change: NewChange, tz: &TimeZone) -> Self {
        Change {
            seq,
            kind: change.kind,
            event_id: change.event_id,
            received_at: change.received_at,
            subject: change.subject,
            body: change.body,
            tz: tz.clone(),
            rendered: std::sync::OnceLock::new(),
        }
    }

    /// `{"seq":…,"type":…,"event_id":…,"received_at":…,"call":{…}}` (or `"event":{…}`).
    fn rendered(&self) -> &Rendered {
        self.rendered.get_or_init(|| {
            let (field, data) = match &self.body {
                ChangeBody::Call { record, phase } => {
                    let view = CallView::of((**record).clone(), *phase, &self.tz);
                    // A struct of strings, numbers and options: serialising it cannot fail.
                    ("call", serde_json::to_string(&view).unwrap_or_default())
                }
                ChangeBody::Event { payload } => ("event", payload.clone()),
            };
            let head = format!("id: {}\nevent: {}\ndata: ", self.seq, self.kind.as_str());
            let json = format!(
                r#"{{"seq":{},"type":"{}","event_id":{},"received_at":"{}","{field}":{data}}}"#,
                self.seq,
                self.kind.as_str(),
                self.event_id,
                format_utc_micros(self.received_at),
            );
            let mut message = String::with_capacity(head.len() + json.len() + 2);
            message.push_str(&head);
            message.push_str(&json);
            message.push_str("\n\n");
            let message = Bytes::from(message);
            let json = message.slice(head.len()..head.len() + json.len());
            Rendered { message, json }
        })
    }

    /// The change as the API shows it: one line of JSON.
    pub fn json(&self) -> &str {
        // Made from a String: always UTF-8.
        std::str::from_utf8(&self.rendered().json).unwrap_or_default()
    }

    /// The change as one Server-Sent Events message, shared (no copy).
    pub fn message(&self) -> Bytes {
        self.rendered().message.clone()
    }

    /// About how many bytes the change takes in memory before it is rendered, and its JSON
    /// after: what pages and the live ring count.
    pub fn size(&self) -> usize {
        let body = match &self.body {
            ChangeBody::Call { .. } => 900,
            ChangeBody::Event { payload } => payload.len() * 2 + 200,
        };
        body + 200
    }
}

/// Which changes a reader wants: every given filter must match (AND). Filters other than
/// `types` look at the call as of the change, with the meaning they have in `/api/calls`, and
/// leave out `event.received` changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeFilter {
    pub types: Option<Vec<ChangeType>>,
    pub call_id: Option<String>,
    /// Lower-cased.
    pub status: Option<String>,
    pub phase: Option<Phase>,
    /// Lower-cased.
    pub direction: Option<String>,
    pub hotline: Option<String>,
    pub user_name: Option<String>,
    pub transaction_id: Option<String>,
    /// In normal form ([`normalize_phone`]).
    pub destination_number: Option<String>,
    /// In normal form ([`normalize_phone`]): caller or destination.
    pub phone: Option<String>,
}

impl ChangeFilter {
    pub fn matches(&self, change: &Change) -> bool {
        let s = &change.subject;
        let equal = |want: &Option<String>, have: &Option<String>| {
            want.as_ref().is_none_or(|w| have.as_ref() == Some(w))
        };
        self.types
            .as_ref()
            .is_none_or(|types| types.contains(&change.kind))
            && equal(&self.call_id, &s.call_id)
            && equal(&self.status, &s.status_norm)
            && equal(&self.phase.map(|p| p.as_str().to_string()), &s.phase)
            && equal(&self.direction, &s.direction)
            && equal(&self.hotline, &s.hotline)
            && equal(&self.user_name, &s.user_name)
            && equal(&self.transaction_id, &s.transaction_id)
            && equal(&self.destination_number, &s.destination_norm)
            && self.phone.as_ref().is_none_or(|p| {
                s.caller_norm.as_ref() == Some(p) || s.destination_norm.as_ref() == Some(p)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::event::EventFields;
    use crate::model::merge::{FinalStatuses, SourceKey};

    #[test]
    fn types_follow_the_phase() {
        use ChangeType::*;
        use Phase::*;
        assert_eq!(ChangeType::of_call(None, Ringing), CallCreated);
        assert_eq!(ChangeType::of_call(None, InProgress), CallCreated);
        assert_eq!(ChangeType::of_call(None, Ended), CallEnded);
        assert_eq!(ChangeType::of_call(Some(Ringing), InProgress), CallUpdated);
        assert_eq!(ChangeType::of_call(Some(InProgress), Ended), CallEnded);
        assert_eq!(ChangeType::of_call(Some(Ended), Ended), CallUpdated);
        for t in ChangeType::ALL {
            assert_eq!(ChangeType::parse(t.as_str()), Some(t));
        }
        assert_eq!(ChangeType::parse("call"), None);
    }

    fn record(status: &str, caller: &str) -> CallRecord {
        let fields = EventFields {
            call_id: Some("c1".into()),
            call_status: Some(status.into()),
            direction: Some("inbound".into()),
            caller_number: Some(caller.into()),
            destination_number: Some("888".into()),
            ..EventFields::default()
        };
        let finals = FinalStatuses::default();
        CallRecord::from_event("c1", &fields, SourceKey::new(&fields, &[0; 32], &finals), 5)
    }

    #[test]
    fn a_change_is_one_line_of_json_with_the_call_or_the_event() {
        let tz = TimeZone::UTC;
        let call = record("Missed", "0389123456");
        let change = Change::new(
            7,
            NewChange::call(3, 1_000_000, None, &call, Phase::Ended),
            &tz,
        );
        let value: serde_json::Value = serde_json::from_str(change.json()).unwrap();
        assert_eq!(value["seq"], 7);
        assert_eq!(value["type"], "call.ended");
        assert_eq!(value["event_id"], 3);
        assert_eq!(value["received_at"], "1970-01-01T00:00:01Z");
        assert_eq!(value["call"]["call_id"], "c1");
        assert_eq!(value["call"]["phase"], "ended");
        assert_eq!(change.subject.status_norm.as_deref(), Some("missed"));
        assert_eq!(change.subject.caller_norm.as_deref(), Some("+84389123456"));

        let event = Change::new(
            8,
            NewChange::event(4, 0, "{\"eventType\":\"sms\",\r\n\"a\":1}"),
            &tz,
        );
        assert!(!event.json().contains('\n') && !event.json().contains('\r'));
        let value: serde_json::Value = serde_json::from_str(event.json()).unwrap();
        assert_eq!(
            &event.message()[..],
            format!("id: 8\nevent: event.received\ndata: {}\n\n", event.json()).as_bytes()
        );
        assert_eq!(value["event"]["a"], 1);
        assert_eq!(value["type"], "event.received");
        assert!(value.get("call").is_none());
    }

    #[test]
    fn filters_match_the_call_as_of_the_change_and_call_filters_leave_out_events() {
        let tz = TimeZone::UTC;
        let call = Change::new(
            1,
            NewChange::call(1, 0, None, &record("MISSED", "84389123456"), Phase::Ended),
            &tz,
        );
        let event = Change::new(2, NewChange::event(2, 0, "{}"), &tz);
        let all = ChangeFilter::default();
        assert!(all.matches(&call) && all.matches(&event));
        let missed = ChangeFilter {
            status: Some("missed".into()),
            ..ChangeFilter::default()
        };
        assert!(missed.matches(&call) && !missed.matches(&event));
        let by_phone = ChangeFilter {
            phone: Some(normalize_phone("0389123456")),
            ..ChangeFilter::default()
        };
        assert!(by_phone.matches(&call));
        let by_agent_number = ChangeFilter {
            phone: Some(normalize_phone("888")),
            direction: Some("inbound".into()),
            phase: Some(Phase::Ended),
            ..ChangeFilter::default()
        };
        assert!(by_agent_number.matches(&call));
        let ringing = ChangeFilter {
            phase: Some(Phase::Ringing),
            ..ChangeFilter::default()
        };
        assert!(!ringing.matches(&call));
        let only_events = ChangeFilter {
            types: Some(vec![ChangeType::EventReceived]),
            ..ChangeFilter::default()
        };
        assert!(!only_events.matches(&call) && only_events.matches(&event));
    }
}
