//! One record per call, rebuilt from events that arrive in any order.
//!
//! What an event tells about its call is a point on a lattice: first how far the call had got
//! ([`EventFields::rank`]: `ringing < answered < ended`, where a final status such as `missed`
//! is an end), then how much it knows (how many fields it fills), then, for two events that tie
//! on both, a fixed part of its identity (the hash of its content). That makes a total order on
//! events that depends only on their content, never on when they arrived.
//!
//! Each field of the record comes from the greatest event that has a value for it, and remembers
//! that event's [`SourceKey`]; merging an event is a per-field maximum, which is a join: it is
//! commutative, associative and idempotent. So any set of events gives the same record in any
//! arrival order, a resent or late early event never rolls a call back, and a field once filled is
//! never emptied. (Property-tested over random event sets in every permutation below.)

use serde::{Deserialize, Serialize};

use super::event::{DedupeKey, EventFields};

/// Where an event stands among its call's events: compared by rank, then by how many fields it
/// knows, then by the first 48 bits of its identity hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SourceKey {
    pub rank: u8,
    pub known: u8,
    pub tiebreak: u64,
}

impl SourceKey {
    pub fn new(fields: &EventFields, dedupe_key: &DedupeKey, finals: &FinalStatuses) -> Self {
        let mut prefix = [0u8; 8];
        prefix[2..].copy_from_slice(&dedupe_key[..6]);
        SourceKey {
            rank: fields.rank(finals),
            known: fields.known_fields(),
            tiebreak: u64::from_be_bytes(prefix),
        }
    }
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
    /// The call's place in the listing, fixed when the call is first stored: the start time of
    /// its first event (`None`: it had none, and the call lists after every call that had one).
    /// It never changes, even when a later event brings or changes the start time, so a call
    /// never moves while someone pages through the list.
    pub sort_time: Option<i64>,
}

impl CallRecord {
    /// A record holding only one event, received at `received_at` (Unix microseconds).
    pub fn from_event(
        call_id: &str,
        event: &EventFields,
        key: SourceKey,
        received_at: i64,
    ) -> Self {
        let mut record = CallRecord {
            fields: EventFields {
                call_id: Some(call_id.to_string()),
                ..EventFields::default()
            },
            sources: [None; MERGED_FIELDS],
            event_count: 0,
            first_received_at: received_at,
            last_received_at: received_at,
            sort_time: event.start_time,
        };
        record.merge(event, key, received_at);
        record
    }

    /// Merges one new (not resent) event into the record. `key` is the event's
    /// [`SourceKey`].
    pub fn merge(&mut self, event: &EventFields, key: SourceKey, received_at: i64) {
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

/// Keeps the value of the greater event. Two distinct events with equal keys (a 48-bit hash
/// collision between equally ranked events of one call) are settled by the greater value, so the
/// merge stays a join even then.
fn take<T: Clone + Ord>(
    slot: &mut Option<T>,
    source: &mut Option<SourceKey>,
    value: &Option<T>,
    key: SourceKey,
) {
    let Some(v) = value else {
        return;
    };
    let greater = match *source {
        None => true,
        Some(current) => key > current || (key == current && slot.as_ref() < Some(v)),
    };
    if greater {
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
    use proptest::prelude::*;

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

    fn missed() -> EventFields {
        EventFields {
            call_status: Some("missed".into()),
            ..ringing()
        }
    }

    /// A source key as the store makes it, with `n` standing in for the identity hash.
    fn key(fields: &EventFields, n: u8) -> SourceKey {
        let mut hash = [0u8; 32];
        hash[0] = n;
        SourceKey::new(fields, &hash, &FinalStatuses::default())
    }

    /// Merges `events` (fields, identity, received at) in the order given.
    fn build(events: &[(EventFields, u8, i64)]) -> CallRecord {
        let (first, n, at) = &events[0];
        let mut r = CallRecord::from_event("c1", first, key(first, *n), *at);
        for (ev, n, at) in &events[1..] {
            r.merge(ev, key(ev, *n), *at);
        }
        r
    }

    /// What must not depend on arrival order (the listing position is fixed by the first event
    /// stored, on purpose).
    fn merged(r: &CallRecord) -> impl PartialEq + std::fmt::Debug {
        (
            r.fields.clone(),
            r.sources,
            r.event_count,
            r.first_received_at,
            r.last_received_at,
        )
    }

    #[test]
    fn any_arrival_order_gives_the_same_record() {
        let events = [(ringing(), 1, 10), (answered(), 2, 20), (ended(), 3, 30)];
        let reference = build(&events);
        for order in [
            [0, 1, 2],
            [0, 2, 1],
            [1, 0, 2],
            [1, 2, 0],
            [2, 0, 1],
            [2, 1, 0],
        ] {
            let shuffled: Vec<_> = order.iter().map(|&i| events[i].clone()).collect();
            assert_eq!(
                merged(&build(&shuffled)),
                merged(&reference),
                "order {order:?}"
            );
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
        let r = build(&[(ended(), 1, 10), (answered(), 2, 20)]);
        assert_eq!(r.phase(&FinalStatuses::default()), Phase::Ended);
        assert_eq!(r.fields.end_time, Some(1300));
        assert_eq!(r.fields.hangup_by.as_deref(), Some("customer"));
    }

    /// The bug of issue 8: `missed` (a final status, no end time) then a late `ringing` gave
    /// `ringing`, and the call dropped out of `status=missed`.
    #[test]
    fn a_final_status_is_an_end_in_both_orders() {
        let finals = FinalStatuses::default();
        for events in [
            [(missed(), 1, 10), (ringing(), 2, 20)],
            [(ringing(), 2, 10), (missed(), 1, 20)],
        ] {
            let r = build(&events);
            assert_eq!(r.fields.call_status.as_deref(), Some("missed"));
            assert_eq!(r.phase(&finals), Phase::Ended);
        }
        assert_eq!(missed().rank(&finals), 3);
        assert_eq!(missed().rank(&FinalStatuses::new(["busy"])), 1);
    }

    #[test]
    fn between_equal_ranks_the_event_that_knows_more_wins_whatever_the_order() {
        let bare = EventFields {
            call_status: Some("completed".into()),
            end_time: Some(1300),
            ..Default::default()
        };
        let full = ended();
        for events in [
            [(bare.clone(), 9, 10), (full.clone(), 1, 20)],
            [(full.clone(), 1, 10), (bare.clone(), 9, 20)],
        ] {
            assert_eq!(
                build(&events).fields.call_status.as_deref(),
                Some("answered")
            );
        }
        // A true tie (same rank, same number of fields) is settled by the identity, not arrival.
        let other = EventFields {
            call_status: Some("completed".into()),
            ..ended()
        };
        let a = build(&[(full.clone(), 1, 10), (other.clone(), 2, 20)]);
        let b = build(&[(other, 2, 10), (full, 1, 20)]);
        assert_eq!(a.fields.call_status, b.fields.call_status);
        assert_eq!(a.fields.call_status.as_deref(), Some("completed"));
    }

    #[test]
    fn equal_keys_are_settled_by_value() {
        let a = answered();
        let b = EventFields {
            call_status: Some("talking".into()),
            ..answered()
        };
        let forward = build(&[(a.clone(), 7, 1), (b.clone(), 7, 2)]);
        let backward = build(&[(b, 7, 1), (a, 7, 2)]);
        assert_eq!(forward.fields, backward.fields);
        assert_eq!(forward.fields.call_status.as_deref(), Some("talking"));
    }

    #[test]
    fn a_field_once_filled_is_never_emptied() {
        let sparse = EventFields {
            call_status: Some("answered".into()),
            end_time: Some(1300),
            ..Default::default()
        };
        let r = build(&[(answered(), 1, 10), (sparse, 2, 20)]);
        assert_eq!(r.fields.caller_number.as_deref(), Some("0389123456"));
        assert_eq!(r.fields.answer_time, Some(1005));
    }

    #[test]
    fn phases() {
        let finals = FinalStatuses::default();
        assert_eq!(build(&[(ringing(), 1, 1)]).phase(&finals), Phase::Ringing);
        assert_eq!(
            build(&[(answered(), 1, 1)]).phase(&finals),
            Phase::InProgress
        );
        let shouting = EventFields {
            call_status: Some("MISSED".into()),
            ..ringing()
        };
        assert_eq!(
            build(&[(shouting.clone(), 1, 1)]).phase(&finals),
            Phase::Ended
        );
        assert_eq!(
            build(&[(shouting, 1, 1)]).phase(&FinalStatuses::new(["busy"])),
            Phase::Ringing
        );
    }

    #[test]
    fn the_listing_position_is_fixed_by_the_first_event() {
        let no_start = EventFields {
            call_status: Some("x".into()),
            ..Default::default()
        };
        // First seen without a start time: listed last, and it stays there.
        let r = build(&[(no_start, 1, 5), (ringing(), 2, 6)]);
        assert_eq!(r.sort_time, None);
        assert_eq!(r.fields.start_time, Some(1000));
        let moved = EventFields {
            start_time: Some(2000),
            ..answered()
        };
        let r = build(&[(ringing(), 1, 1), (moved, 2, 2)]);
        assert_eq!(r.fields.start_time, Some(2000));
        assert_eq!(r.sort_time, Some(1000));
    }

    /// An event drawn from small domains, so that sets of them often tie on rank, on what they
    /// know, and disagree on values.
    fn any_event() -> impl Strategy<Value = EventFields> {
        let status = prop::sample::select(vec![
            "ringing",
            "answered",
            "missed",
            "busy",
            "completed",
            "talking",
            "no_answer",
        ]);
        let time = |base: i64| prop::option::of((0..3i64).prop_map(move |d| base + d));
        let text = |values: &'static [&'static str]| {
            prop::option::of(prop::sample::select(values.to_vec()).prop_map(str::to_string))
        };
        (
            (
                status,
                time(1000),
                time(1005),
                time(1300),
                prop::option::of(0..3i64),
            ),
            (
                text(&["888", "889"]),
                text(&["customer", "agent"]),
                text(&["https://a/1.mp3", "https://a/2.mp3"]),
                prop::option::of(0..2i64),
                text(&["inbound", "outbound"]),
            ),
        )
            .prop_map(
                |((status, start, answer, end, total), (dest, hangup, url, holding, dir))| {
                    EventFields {
                        call_id: Some("c1".into()),
                        call_status: Some(status.to_string()),
                        start_time: start,
                        answer_time: answer,
                        end_time: end,
                        total_duration: total.map(|t| t + 295),
                        destination_number: dest,
                        hangup_by: hangup,
                        recording_url: url,
                        holding_duration: holding,
                        direction: dir,
                        ..Default::default()
                    }
                },
            )
    }

    /// Every permutation of `0..n`.
    fn permutations(n: usize) -> Vec<Vec<usize>> {
        if n == 0 {
            return vec![vec![]];
        }
        let mut out = Vec::new();
        for rest in permutations(n - 1) {
            for i in 0..=rest.len() {
                let mut p = rest.clone();
                p.insert(i, n - 1);
                out.push(p);
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any set of distinct events (1 to 5 of them: up to 120 orders each) merged in every
        /// order, receipt times following the arrival order, and resends of some of them merged
        /// again at the end, gives one record.
        #[test]
        fn every_permutation_of_any_event_set_gives_one_record(
            events in prop::collection::vec(any_event(), 1..=5),
            resends in prop::collection::vec(any::<prop::sample::Index>(), 0..3),
        ) {
            // Identity is the content: equal events are one event, as the store's dedupe makes them.
            let mut distinct: Vec<EventFields> = Vec::new();
            for e in events {
                if !distinct.contains(&e) {
                    distinct.push(e);
                }
            }
            let identity = |e: &EventFields| -> DedupeKey {
                use sha2::Digest;
                sha2::Sha256::digest(format!("{e:?}").as_bytes()).into()
            };
            let finals = FinalStatuses::default();
            let mut reference = None;
            for order in permutations(distinct.len()) {
                let mut arrivals: Vec<&EventFields> = order.iter().map(|&i| &distinct[i]).collect();
                for r in &resends {
                    arrivals.push(arrivals[r.index(arrivals.len())]);
                }
                let mut record: Option<CallRecord> = None;
                for (at, e) in arrivals.iter().enumerate() {
                    let key = SourceKey::new(e, &identity(e), &finals);
                    match &mut record {
                        None => record = Some(CallRecord::from_event("c1", e, key, at as i64)),
                        Some(r) => r.merge(e, key, at as i64),
                    }
                }
                let record = record.unwrap();
                let view = (record.fields.clone(), record.sources, record.phase(&finals));
                match &reference {
                    None => reference = Some(view),
                    Some(first) => prop_assert_eq!(first, &view, "order {:?}", order),
                }
            }
            // A final status, wherever it came in the order, ends the call.
            let (fields, _, phase) = reference.unwrap();
            if distinct.iter().any(|e| e.rank(&finals) == 3) {
                prop_assert_eq!(phase, Phase::Ended, "{:?}", fields);
            }
        }
    }
}
