//! One record per call, rebuilt from events that arrive in any order.
//!
//! Each field of the record comes from the highest-ranked event that has a value for it, where an
//! event's rank is how far the call had got ([`EventFields::rank`]) and, between equal ranks, the
//! event first received later wins. Every field remembers the [`SourceKey`] of the event that
//! filled it, so merging is a per-field maximum: commutative and idempotent. The same set of
//! events gives the same record whatever their order, and a field once filled is never emptied.

use serde::{Deserialize, Serialize};

use super::event::EventFields;

/// Which event filled a field: its rank, then its event id (first receipt order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SourceKey {
    pub rank: u8,
    pub event_id: i64,
}

/// The number of merged fields (`EventFields` without `call_id`).
pub const MERGED_FIELDS: usize = 15;

/// Where a call is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Ringing,
    InProgress,
    Ended,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Ringing => "ringing",
            Phase::InProgress => "in_progress",
            Phase::Ended => "ended",
        }
    }

    pub fn parse(text: &str) -> Option<Phase> {
        match text {
            "ringing" => Some(Phase::Ringing),
            "in_progress" => Some(Phase::InProgress),
            "ended" => Some(Phase::Ended),
            _ => None,
        }
    }
}

/// Statuses that end a call even without an end time (`missed`, `busy`…). Compared
/// case-insensitively.
#[derive(Debug, Clone)]
pub struct FinalStatuses(Vec<String>);

impl FinalStatuses {
    pub const DEFAULT: &'static [&'static str] = &[
        "missed",
        "busy",
        "failed",
        "no_answer",
        "noanswer",
        "no-answer",
        "cancelled",
        "canceled",
        "rejected",
        "ended",
        "completed",
    ];

    pub fn new<I: IntoIterator<Item = S>, S: AsRef<str>>(statuses: I) -> Self {
        FinalStatuses(
            statuses
                .into_iter()
                .map(|s| s.as_ref().trim().to_lowercase())
                .filter(|s| !s.is_empty())
                .collect(),
        )
    }

    pub fn contains(&self, status: &str) -> bool {
        self.0.iter().any(|s| s.eq_ignore_ascii_case(status))
    }

    pub fn as_slice(&self) -> &[String] {
        &self.0
    }
}

impl Default for FinalStatuses {
    fn default() -> Self {
        FinalStatuses::new(Self::DEFAULT)
    }
}

/// The up-to-date record of one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRecord {
    /// The merged fields; `fields.call_id` is always set.
    pub fields: EventFields,
    /// Which event filled each merged field, in the order of [`CallRecord::merge`].
    pub sources: [Option<SourceKey>; MERGED_FIELDS],
    /// Distinct events merged (resends are not events).
    pub event_count: i64,
    /// First receipt of the earliest and of the latest event, Unix microseconds.
    pub first_received_at: i64,
    pub last_received_at: i64,
    /// The start time the call was first seen with: the listing order and the `from`/`to`
    /// filters use it so that a call never moves while someone pages through the list.
    pub sort_time: Option<i64>,
}

impl CallRecord {
    /// A record holding only one event.
    pub fn from_event(call_id: &str, event: &EventFields, event_id: i64, received_at: i64) -> Self {
        let mut record = CallRecord {
            fields: EventFields {
                call_id: Some(call_id.to_string()),
                ..EventFields::default()
            },
            sources: [None; MERGED_FIELDS],
            event_count: 0,
            first_received_at: received_at,
            last_received_at: received_at,
            sort_time: None,
        };
        record.merge(event, event_id, received_at);
        record
    }

    /// Merges one new (not resent) event into the record.
    pub fn merge(&mut self, event: &EventFields, event_id: i64, received_at: i64) {
        let key = SourceKey {
            rank: event.rank(),
            event_id,
        };
        let f = &mut self.fields;
        let s = &mut self.sources;
        take(&mut f.call_status, &mut s[0], &event.call_status, key);
        take(&mut f.direction, &mut s[1], &event.direction, key);
        take(&mut f.caller_number, &mut s[2], &event.caller_number, key);
        take(
            &mut f.destination_number,
            &mut s[3],
            &event.destination_number,
            key,
        );
        take(&mut f.hotline, &mut s[4], &event.hotline, key);
        take(&mut f.user_name, &mut s[5], &event.user_name, key);
        take(&mut f.transaction_id, &mut s[6], &event.transaction_id, key);
        take(&mut f.object_id, &mut s[7], &event.object_id, key);
        take(&mut f.start_time, &mut s[8], &event.start_time, key);
        take(&mut f.answer_time, &mut s[9], &event.answer_time, key);
        take(&mut f.end_time, &mut s[10], &event.end_time, key);
        take(&mut f.hangup_by, &mut s[11], &event.hangup_by, key);
        take(
            &mut f.total_duration,
            &mut s[12],
            &event.total_duration,
            key,
        );
        take(
            &mut f.holding_duration,
            &mut s[13],
            &event.holding_duration,
            key,
        );
        take(&mut f.recording_url, &mut s[14], &event.recording_url, key);

        self.event_count += 1;
        self.first_received_at = self.first_received_at.min(received_at);
        self.last_received_at = self.last_received_at.max(received_at);
        if self.sort_time.is_none() {
            self.sort_time = self.fields.start_time;
        }
    }

    /// `ended` once the call has an end time or total duration or a final status;
    /// `in_progress` once answered; `ringing` before.
    pub fn phase(&self, finals: &FinalStatuses) -> Phase {
        let f = &self.fields;
        let final_status = f.call_status.as_deref().is_some_and(|s| finals.contains(s));
        if f.end_time.is_some() || f.total_duration.is_some() || final_status {
            Phase::Ended
        } else if f.answer_time.is_some() {
            Phase::InProgress
        } else {
            Phase::Ringing
        }
    }

    /// Seconds from start to answer, when both are known.
    pub fn ring_seconds(&self) -> Option<i64> {
        span(self.fields.start_time, self.fields.answer_time)
    }

    /// Seconds from answer to end, when both are known.
    pub fn talk_seconds(&self) -> Option<i64> {
        span(self.fields.answer_time, self.fields.end_time)
    }
}

fn take<T: Clone>(
    slot: &mut Option<T>,
    source: &mut Option<SourceKey>,
    value: &Option<T>,
    key: SourceKey,
) {
    if let Some(v) = value
        && source.is_none_or(|current| key > current)
    {
        *slot = Some(v.clone());
        *source = Some(key);
    }
}

fn span(from: Option<i64>, to: Option<i64>) -> Option<i64> {
    let d = to? - from?;
    (d >= 0).then_some(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ringing() -> EventFields {
        EventFields {
            call_id: Some("c1".into()),
            call_status: Some("ringing".into()),
            direction: Some("inbound".into()),
            caller_number: Some("0389123456".into()),
            start_time: Some(1000),
            ..Default::default()
        }
    }

    fn answered() -> EventFields {
        EventFields {
            call_status: Some("answered".into()),
            answer_time: Some(1005),
            destination_number: Some("888".into()),
            ..ringing()
        }
    }

    fn ended() -> EventFields {
        EventFields {
            end_time: Some(1300),
            total_duration: Some(300),
            holding_duration: Some(0),
            hangup_by: Some("customer".into()),
            recording_url: Some("https://media.example.invalid/r.mp3".into()),
            ..answered()
        }
    }

    fn build(events: &[(EventFields, i64)]) -> CallRecord {
        let (first, id) = &events[0];
        let mut r = CallRecord::from_event("c1", first, *id, *id * 10);
        for (ev, id) in &events[1..] {
            r.merge(ev, *id, *id * 10);
        }
        r
    }

    #[test]
    fn any_arrival_order_gives_the_same_record() {
        let events = [(ringing(), 1), (answered(), 2), (ended(), 3)];
        let reference = build(&events);
        let orders = [
            [0, 1, 2],
            [0, 2, 1],
            [1, 0, 2],
            [1, 2, 0],
            [2, 0, 1],
            [2, 1, 0],
        ];
        for order in orders {
            let shuffled: Vec<_> = order.iter().map(|&i| events[i].clone()).collect();
            assert_eq!(build(&shuffled), reference, "order {order:?}");
        }
        assert_eq!(reference.fields.call_status.as_deref(), Some("answered"));
        assert_eq!(reference.fields.end_time, Some(1300));
        assert_eq!(reference.phase(&FinalStatuses::default()), Phase::Ended);
        assert_eq!(reference.ring_seconds(), Some(5));
        assert_eq!(reference.talk_seconds(), Some(295));
        assert_eq!(reference.event_count, 3);
        assert_eq!(reference.first_received_at, 10);
        assert_eq!(reference.last_received_at, 30);
    }

    #[test]
    fn a_late_in_progress_event_never_rolls_back_a_final_one() {
        // The final event is received first (id 1), the in-progress one later (id 2).
        let r = build(&[(ended(), 1), (answered(), 2)]);
        assert_eq!(r.phase(&FinalStatuses::default()), Phase::Ended);
        assert_eq!(r.fields.end_time, Some(1300));
        assert_eq!(r.fields.hangup_by.as_deref(), Some("customer"));
    }

    #[test]
    fn later_receipt_wins_between_equal_ranks() {
        let first = EventFields {
            call_status: Some("answered".into()),
            ..ended()
        };
        let second = EventFields {
            call_status: Some("completed".into()),
            ..ended()
        };
        assert_eq!(
            build(&[(first.clone(), 1), (second.clone(), 2)])
                .fields
                .call_status
                .as_deref(),
            Some("completed")
        );
        assert_eq!(
            build(&[(second, 2), (first, 1)])
                .fields
                .call_status
                .as_deref(),
            Some("completed"),
            "order of merging does not matter, only order of receipt"
        );
    }

    #[test]
    fn a_field_once_filled_is_never_emptied() {
        let sparse = EventFields {
            call_status: Some("answered".into()),
            end_time: Some(1300),
            ..Default::default()
        };
        let r = build(&[(answered(), 1), (sparse, 2)]);
        assert_eq!(r.fields.caller_number.as_deref(), Some("0389123456"));
        assert_eq!(r.fields.answer_time, Some(1005));
    }

    #[test]
    fn phases() {
        let finals = FinalStatuses::default();
        assert_eq!(build(&[(ringing(), 1)]).phase(&finals), Phase::Ringing);
        assert_eq!(build(&[(answered(), 1)]).phase(&finals), Phase::InProgress);
        let missed = EventFields {
            call_status: Some("MISSED".into()),
            ..ringing()
        };
        assert_eq!(build(&[(missed.clone(), 1)]).phase(&finals), Phase::Ended);
        assert_eq!(
            build(&[(missed, 1)]).phase(&FinalStatuses::new(["busy"])),
            Phase::Ringing
        );
    }

    #[test]
    fn sort_time_is_the_first_known_start() {
        let no_start = EventFields {
            call_status: Some("x".into()),
            ..Default::default()
        };
        let r = build(&[(no_start, 1), (ringing(), 2)]);
        assert_eq!(r.sort_time, Some(1000));
        let moved = EventFields {
            start_time: Some(2000),
            ..answered()
        };
        let r = build(&[(ringing(), 1), (moved, 2)]);
        assert_eq!(r.fields.start_time, Some(2000));
        assert_eq!(r.sort_time, Some(1000));
    }
}
