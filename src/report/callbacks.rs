//! The missed-call callback worklist: one open item per customer number that missed a call and
//! has not been called back since. Computed from one number's calls (and the manual closes of
//! its items) by walking them in start order, so the same calls give the same items whatever
//! order their events arrived in.

use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::model::time::format_local;

/// What the worklist needs of a call with the number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumberCall {
    pub call_id: String,
    /// `caller_number` as Alohub sent it.
    pub caller_number: String,
    pub direction: Option<String>,
    pub ended: bool,
    /// See [`crate::report::stats::CallFacts::answered`].
    pub answered: bool,
    pub hotline: Option<String>,
    /// Unix seconds.
    pub start_time: Option<i64>,
    pub answer_time: Option<i64>,
}

/// A close by hand: at `at` (Unix seconds), of item `item_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManualClose {
    pub item_id: String,
    pub at: i64,
    pub note: Option<String>,
    /// Who closed it: the role signed in (`admin`, `viewer`).
    pub by: Option<String>,
}

/// One item of the worklist, times in Unix seconds (the API shows them in the configured zone).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    pub id: String,
    /// E.164 when it is a phone number; as written when masked.
    pub phone: String,
    /// The number as Alohub sent it in the item's last miss.
    pub phone_as_sent: String,
    pub reachable: bool,
    pub open: bool,
    pub missed_count: u64,
    pub first_missed_at: i64,
    pub last_missed_at: i64,
    pub last_missed_call_id: String,
    /// The hotlines the misses came in on, in the order first seen.
    pub hotlines: Vec<String>,
    pub attempts: u64,
    pub last_attempt_at: Option<i64>,
    pub closed_at: Option<i64>,
    pub closed_by_call_id: Option<String>,
    pub closed_reason: Option<String>,
    pub note: Option<String>,
    /// Who closed it by hand: the role signed in (`admin`, `viewer`); none for a close by a call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_by: Option<String>,
}

/// An item as the API shows it: times in the configured zone.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ItemView {
    pub id: String,
    pub phone: String,
    pub phone_as_sent: String,
    pub reachable: bool,
    pub state: &'static str,
    pub missed_count: u64,
    pub first_missed_at: String,
    pub last_missed_at: String,
    pub last_missed_call_id: String,
    pub hotlines: Vec<String>,
    pub attempts: u64,
    pub last_attempt_at: Option<String>,
    pub age_seconds: Option<i64>,
    pub closed_at: Option<String>,
    pub closed_by_call_id: Option<String>,
    pub closed_reason: Option<String>,
    pub note: Option<String>,
    /// Who closed it by hand: `admin` or `viewer` (the role signed in); null otherwise.
    pub closed_by: Option<String>,
}

impl ItemView {
    /// `now` in Unix seconds, for the age of an open item.
    pub fn of(item: Item, tz: &TimeZone, now: i64) -> Self {
        let at = |s: i64| format_local(s, tz);
        ItemView {
            state: if item.open { "open" } else { "closed" },
            age_seconds: item
                .open
                .then(|| now.saturating_sub(item.first_missed_at).max(0)),
            first_missed_at: at(item.first_missed_at),
            last_missed_at: at(item.last_missed_at),
            last_attempt_at: item.last_attempt_at.map(at),
            closed_at: item.closed_at.map(at),
            id: item.id,
            phone: item.phone,
            phone_as_sent: item.phone_as_sent,
            reachable: item.reachable,
            missed_count: item.missed_count,
            last_missed_call_id: item.last_missed_call_id,
            hotlines: item.hotlines,
            attempts: item.attempts,
            closed_by_call_id: item.closed_by_call_id,
            closed_reason: item.closed_reason,
            note: item.note,
            closed_by: item.closed_by,
        }
    }
}

/// Whether a number is masked (`03899xxx`): anything but digits, separators and a leading `+`.
pub fn is_masked(raw: &str) -> bool {
    let compact: String = raw
        .trim()
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')'))
        .collect();
    let digits = compact.strip_prefix('+').unwrap_or(&compact);
    !digits.bytes().all(|b| b.is_ascii_digit())
}

/// An item's id: from its number and its first miss, so it stays the same when its later
/// calls arrive.
pub fn item_id(phone: &str, first_miss_call_id: &str) -> String {
    let digest = Sha256::digest(format!("{phone}\n{first_miss_call_id}").as_bytes());
    let hex: String = digest[..10].iter().map(|b| format!("{b:02x}")).collect();
    format!("cb_{hex}")
}

fn is(direction: &Option<String>, wanted: &str) -> bool {
    direction
        .as_deref()
        .is_some_and(|d| d.trim().eq_ignore_ascii_case(wanted))
}

/// What a call does to its number's worklist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Ended, unanswered, inbound: opens an item or adds to the open one.
    Miss,
    /// Answered, inbound or outbound: closes the open item when it starts after its last miss.
    Answered,
    /// Unanswered, outbound: an attempt on the open item.
    Attempt,
    /// Anything else (ringing inbound, no direction): nothing.
    Nothing,
}

impl NumberCall {
    pub fn role(&self) -> Role {
        let inbound = is(&self.direction, "inbound");
        let outbound = is(&self.direction, "outbound");
        if self.answered && (inbound || outbound) {
            Role::Answered
        } else if inbound && self.ended {
            Role::Miss
        } else if outbound {
            Role::Attempt
        } else {
            Role::Nothing
        }
    }

    fn is_miss(&self) -> bool {
        self.role() == Role::Miss
    }

    /// What of the call the worklist depends on: equal effects, equal worklists.
    pub fn effect(&self) -> Option<Effect<'_>> {
        let role = self.role();
        (role != Role::Nothing && self.start_time.is_some()).then_some(Effect {
            role,
            start_time: self.start_time,
            answer_time: self.answer_time,
            hotline: self.hotline.as_deref(),
            caller_number: &self.caller_number,
            direction: self.direction.as_deref(),
        })
    }
}

/// See [`NumberCall::effect`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Effect<'a> {
    pub role: Role,
    pub start_time: Option<i64>,
    pub answer_time: Option<i64>,
    pub hotline: Option<&'a str>,
    pub caller_number: &'a str,
    pub direction: Option<&'a str>,
}

/// Every item of the number `phone` (its normal form, `caller_norm`), open and closed, from all
/// its calls and the manual closes of its items. Calls without a start time have no place in
/// the order and are left out.
pub fn worklist(phone: &str, calls: &[NumberCall], closes: &[ManualClose]) -> Vec<Item> {
    if phone.trim().is_empty() {
        return Vec::new();
    }
    let mut calls: Vec<&NumberCall> = calls.iter().filter(|c| c.start_time.is_some()).collect();
    calls.sort_by(|a, b| (a.start_time, &a.call_id).cmp(&(b.start_time, &b.call_id)));
    let new_item = |call: &NumberCall, start: i64, reachable: bool| Item {
        id: item_id(phone, &call.call_id),
        phone: phone.to_string(),
        phone_as_sent: call.caller_number.clone(),
        reachable,
        open: true,
        missed_count: 1,
        first_missed_at: start,
        last_missed_at: start,
        last_missed_call_id: call.call_id.clone(),
        hotlines: call.hotline.iter().cloned().collect(),
        attempts: 0,
        last_attempt_at: None,
        closed_at: None,
        closed_by_call_id: None,
        closed_reason: None,
        note: None,
        closed_by: None,
    };
    let close_by_hand = |item: &mut Item, close: &ManualClose| {
        item.open = false;
        item.closed_at = Some(close.at);
        item.closed_reason = Some("manual".into());
        item.note = close.note.clone();
        item.closed_by = close.by.clone();
    };

    if is_masked(phone) {
        // Nobody can call a masked number back: each miss is an item of its own, closed only
        // by hand.
        return calls
            .iter()
            .filter(|c| c.is_miss())
            .map(|c| {
                let mut item = new_item(c, c.start_time.unwrap_or_default(), false);
                if let Some(close) = closes.iter().find(|m| m.item_id == item.id) {
                    close_by_hand(&mut item, close);
                }
                item
            })
            .collect();
    }

    let mut closes: Vec<&ManualClose> = closes.iter().collect();
    closes.sort_by_key(|c| c.at);
    let mut closes = closes.into_iter().peekable();
    let mut items = Vec::new();
    let mut open: Option<Item> = None;
    for call in calls {
        let start = call.start_time.unwrap_or_default();
        // A close by hand comes after every call that started at or before it.
        while let Some(close) = closes.next_if(|c| c.at < start) {
            match open.take() {
                Some(mut item) => {
                    close_by_hand(&mut item, close);
                    items.push(item);
                }
                None => keep_note(&mut items, close),
            }
        }
        if call.is_miss() {
            match &mut open {
                Some(item) => {
                    item.missed_count += 1;
                    item.last_missed_at = start;
                    item.last_missed_call_id = call.call_id.clone();
                    item.phone_as_sent = call.caller_number.clone();
                    if let Some(h) = &call.hotline
                        && !item.hotlines.contains(h)
                    {
                        item.hotlines.push(h.clone());
                    }
                }
                None => open = Some(new_item(call, start, true)),
            }
            continue;
        }
        let Some(item) = &mut open else { continue };
        let role = call.role();
        let inbound = is(&call.direction, "inbound");
        if role == Role::Answered && start > item.last_missed_at {
            item.open = false;
            item.closed_at = Some(call.answer_time.unwrap_or(start));
            item.closed_by_call_id = Some(call.call_id.clone());
            item.closed_reason = Some(
                if inbound {
                    "answered_inbound"
                } else {
                    "answered_outbound"
                }
                .into(),
            );
            items.extend(open.take());
        } else if role == Role::Attempt && start > item.first_missed_at {
            item.attempts += 1;
            item.last_attempt_at = Some(item.last_attempt_at.map_or(start, |l| l.max(start)));
        }
    }
    match open.take() {
        Some(mut item) => {
            if let Some(close) = closes.next() {
                close_by_hand(&mut item, close);
            }
            items.push(item);
        }
        None => {
            for close in closes {
                keep_note(&mut items, close);
            }
        }
    }
    items
}

/// A close by hand that finds the item closed already (a call-back that started before it
/// arrived after it) keeps its note on that item, so what the agent wrote is not lost.
fn keep_note(items: &mut [Item], close: &ManualClose) {
    if let Some(item) = items.last_mut()
        && item.note.is_none()
        && item.id == close.item_id
    {
        item.note = close.note.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PHONE: &str = "+84901234567";

    fn call(id: &str, direction: &str, start: i64, answered: bool) -> NumberCall {
        NumberCall {
            call_id: id.into(),
            caller_number: "0901234567".into(),
            direction: Some(direction.into()),
            ended: true,
            answered,
            hotline: Some("H1".into()),
            start_time: Some(start),
            answer_time: answered.then_some(start + 5),
        }
    }

    fn miss(id: &str, start: i64) -> NumberCall {
        call(id, "inbound", start, false)
    }

    #[test]
    fn repeat_misses_are_one_item_and_an_answer_closes_it() {
        let mut second = miss("m2", 200);
        second.hotline = Some("H2".into());
        let calls = [miss("m1", 100), second, call("a", "inbound", 300, true)];
        let items = worklist(PHONE, &calls, &[]);
        assert_eq!(items.len(), 1);
        let item = &items[0];
        assert_eq!(item.id, item_id(PHONE, "m1"));
        assert_eq!(
            (item.missed_count, item.first_missed_at, item.last_missed_at),
            (2, 100, 200)
        );
        assert_eq!(item.last_missed_call_id, "m2");
        assert_eq!(item.hotlines, ["H1", "H2"]);
        assert!(!item.open);
        assert_eq!(item.closed_at, Some(305), "the answer time");
        assert_eq!(item.closed_by_call_id.as_deref(), Some("a"));
        assert_eq!(item.closed_reason.as_deref(), Some("answered_inbound"));
    }

    #[test]
    fn outbound_attempts_count_and_an_answered_one_closes() {
        let calls = [
            miss("m1", 100),
            call("o1", "outbound", 150, false),
            call("o2", "outbound", 160, false),
            call("o3", "outbound", 170, true),
        ];
        let items = worklist(PHONE, &calls, &[]);
        assert_eq!(items.len(), 1);
        assert_eq!(
            (items[0].attempts, items[0].last_attempt_at),
            (2, Some(160))
        );
        assert_eq!(items[0].closed_reason.as_deref(), Some("answered_outbound"));
        // An outbound call before the miss is no attempt, and an answered one does not close.
        let before = [
            call("o0", "outbound", 50, true),
            call("o", "outbound", 60, false),
            miss("m1", 100),
        ];
        let items = worklist(PHONE, &before, &[]);
        assert_eq!((items[0].open, items[0].attempts), (true, 0));
    }

    #[test]
    fn a_miss_after_the_close_opens_a_new_item() {
        let calls = [
            miss("m1", 100),
            call("a", "inbound", 200, true),
            miss("m2", 300),
        ];
        let items = worklist(PHONE, &calls, &[]);
        assert_eq!(items.len(), 2);
        assert!(!items[0].open);
        assert!(items[1].open);
        assert_eq!(items[1].id, item_id(PHONE, "m2"));
    }

    #[test]
    fn manual_close_then_a_new_miss() {
        let calls = [miss("m1", 100), miss("m2", 300)];
        let first = item_id(PHONE, "m1");
        let close = ManualClose {
            item_id: first.clone(),
            at: 200,
            note: Some("đã gọi".into()),
            by: Some("admin".into()),
        };
        let items = worklist(PHONE, &calls, std::slice::from_ref(&close));
        assert_eq!(items.len(), 2);
        assert_eq!((items[0].open, items[0].closed_at), (false, Some(200)));
        assert_eq!(items[0].closed_reason.as_deref(), Some("manual"));
        assert_eq!(items[0].note.as_deref(), Some("đã gọi"));
        assert_eq!(items[0].closed_by_call_id, None);
        assert!(items[1].open);
        // Closed now, after every miss: one closed item.
        let late = ManualClose { at: 1000, ..close };
        let items = worklist(PHONE, &calls, &[late]);
        assert_eq!(items.len(), 1);
        assert_eq!((items[0].missed_count, items[0].open), (2, false));
    }

    #[test]
    fn a_call_back_that_started_before_a_close_by_hand_keeps_its_note() {
        let id = item_id(PHONE, "m1");
        let close = ManualClose {
            item_id: id.clone(),
            at: 500,
            note: Some("gọi rồi".into()),
            by: None,
        };
        let calls = [miss("m1", 100), call("a", "outbound", 200, true)];
        let items = worklist(PHONE, &calls, std::slice::from_ref(&close));
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].closed_reason.as_deref(), Some("answered_outbound"));
        assert_eq!(items[0].note.as_deref(), Some("gọi rồi"));
        // A later miss opens a new item; the note stays on the first.
        let calls = [
            miss("m1", 100),
            call("a", "outbound", 200, true),
            miss("m2", 600),
        ];
        let items = worklist(PHONE, &calls, &[close]);
        assert_eq!(items[0].note.as_deref(), Some("gọi rồi"));
        assert_eq!(items[1].note, None);
    }

    #[test]
    fn masked_numbers_are_an_item_per_miss_that_only_a_hand_closes() {
        let masked = "03899xxx";
        let calls = [
            miss("m1", 100),
            miss("m2", 200),
            call("a", "inbound", 300, true),
        ];
        let close = ManualClose {
            item_id: item_id(masked, "m2"),
            at: 400,
            note: None,
            by: None,
        };
        let items = worklist(masked, &calls, &[close]);
        assert_eq!(items.len(), 2);
        assert!(items.iter().all(|i| !i.reachable && i.missed_count == 1));
        assert!(items[0].open);
        assert_eq!(items[1].closed_reason.as_deref(), Some("manual"));
        assert!(is_masked("03899xxx") && is_masked("090***1234"));
        assert!(!is_masked("+84 90 123-4567") && !is_masked("888"));
    }

    #[test]
    fn only_ended_unanswered_inbound_calls_are_misses() {
        let mut ringing = miss("r", 100);
        ringing.ended = false;
        let mut unknown = miss("u", 110);
        unknown.direction = None;
        let outbound = call("o", "outbound", 120, false);
        assert!(worklist(PHONE, &[ringing, unknown, outbound], &[]).is_empty());
        let mut undated = miss("d", 0);
        undated.start_time = None;
        assert!(worklist(PHONE, &[undated], &[]).is_empty());
        assert!(worklist("", &[miss("m", 1)], &[]).is_empty());
    }

    #[test]
    fn an_answer_at_the_same_second_as_the_miss_does_not_close_it() {
        let calls = [call("a", "inbound", 100, true), miss("m1", 100)];
        let items = worklist(PHONE, &calls, &[]);
        assert!(items[0].open);
    }

    proptest::proptest! {
        /// The calls in any order give the same items.
        #[test]
        fn any_order_gives_the_same_items(
            calls in proptest::collection::vec(
                (0..4u8, 0..20i64, proptest::prelude::any::<bool>(), 0..3u8), 0..24),
            seed in proptest::prelude::any::<u64>(),
        ) {
            let calls: Vec<NumberCall> = calls
                .into_iter()
                .enumerate()
                .map(|(n, (kind, start, ended, hotline))| NumberCall {
                    call_id: format!("c{n}"),
                    caller_number: "0901234567".into(),
                    direction: Some(if kind % 2 == 0 { "inbound" } else { "outbound" }.into()),
                    ended,
                    answered: kind >= 2,
                    hotline: Some(format!("H{hotline}")),
                    start_time: Some(start * 10),
                    answer_time: (kind >= 2).then_some(start * 10 + 3),
                })
                .collect();
            let closes = [ManualClose { item_id: "x".into(), at: 95, note: None, by: None }];
            let mut shuffled = calls.clone();
            fastrand::Rng::with_seed(seed).shuffle(&mut shuffled);
            proptest::prop_assert_eq!(
                worklist(PHONE, &calls, &closes),
                worklist(PHONE, &shuffled, &closes)
            );
            let items = worklist(PHONE, &calls, &closes);
            proptest::prop_assert!(items.iter().filter(|i| i.open).count() <= 1);
            let misses = calls.iter().filter(|c| c.is_miss()).count() as u64;
            proptest::prop_assert_eq!(items.iter().map(|i| i.missed_count).sum::<u64>(), misses);
        }
    }
}
