//! Call-centre figures (`GET /api/stats`): answer rate, abandons, service level, handling times,
//! by agent, hotline, direction, status or time. Every figure is computed from call records
//! alone, so it is the same whatever order the events arrived in; the definitions are the
//! README's, word for word where it matters.

use std::collections::BTreeMap;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::Serialize;

/// Below this many seconds of ringing, an unanswered inbound call is a short abandon.
pub const DEFAULT_SHORT_ABANDON_SECONDS: u64 = 5;
/// Below this many seconds of ringing, an answered inbound call meets the service level.
pub const DEFAULT_SERVICE_LEVEL_SECONDS: u64 = 20;

/// The most groups a time series (`group_by=day|hour`) may have: ten years of days, five of
/// hours. A wider range is refused rather than built in memory.
pub const MAX_BUCKETS: i64 = 45_000;

/// The two thresholds of the figures (`--short-abandon-seconds`, `--service-level-seconds`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    pub short_abandon_seconds: u64,
    pub service_level_seconds: u64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            short_abandon_seconds: DEFAULT_SHORT_ABANDON_SECONDS,
            service_level_seconds: DEFAULT_SERVICE_LEVEL_SECONDS,
        }
    }
}

/// What the figures need of a call record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallFacts {
    /// Its phase is `ended`.
    pub ended: bool,
    pub call_status: Option<String>,
    pub direction: Option<String>,
    pub destination_number: Option<String>,
    pub hotline: Option<String>,
    pub user_name: Option<String>,
    /// Unix seconds.
    pub start_time: Option<i64>,
    pub answer_time: Option<i64>,
    pub end_time: Option<i64>,
    /// Seconds.
    pub holding_duration: Option<i64>,
}

/// A call is answered when an answer time is known, or its `call_status` is `answered` (in
/// any case).
pub fn is_answered(answer_time: Option<i64>, call_status: Option<&str>) -> bool {
    answer_time.is_some() || call_status.is_some_and(|s| s.trim().eq_ignore_ascii_case("answered"))
}

fn present(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

impl CallFacts {
    /// An answer time is known, or `call_status` is `answered`.
    pub fn answered(&self) -> bool {
        is_answered(self.answer_time, self.call_status.as_deref())
    }

    /// Answer − start for an answered call, end − start for an unanswered one; unknown when
    /// either time is missing (or the times are the wrong way round).
    pub fn ring_seconds(&self) -> Option<i64> {
        let until = if self.answered() {
            self.answer_time
        } else {
            self.end_time
        };
        until?.checked_sub(self.start_time?).filter(|s| *s >= 0)
    }

    /// End − answer (hold included); unknown when either is missing.
    pub fn talk_seconds(&self) -> Option<i64> {
        self.end_time?
            .checked_sub(self.answer_time?)
            .filter(|s| *s >= 0)
    }

    /// `user_name`, or the `destination_number` extension when there is no user name.
    pub fn agent(&self) -> Option<&str> {
        present(&self.user_name).or_else(|| present(&self.destination_number))
    }

    fn direction_is(&self, direction: &str) -> bool {
        present(&self.direction).is_some_and(|d| d.eq_ignore_ascii_case(direction))
    }
}

/// How `GET /api/stats` groups calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    None,
    Agent,
    Hotline,
    Direction,
    Status,
    Day,
    Hour,
    HourOfDay,
    Weekday,
}

impl GroupBy {
    pub const NAMES: &'static str =
        "none, agent, hotline, direction, status, day, hour, hour_of_day, weekday";

    pub fn parse(text: &str) -> Option<GroupBy> {
        Some(match text {
            "none" => GroupBy::None,
            "agent" => GroupBy::Agent,
            "hotline" => GroupBy::Hotline,
            "direction" => GroupBy::Direction,
            "status" => GroupBy::Status,
            "day" => GroupBy::Day,
            "hour" => GroupBy::Hour,
            "hour_of_day" => GroupBy::HourOfDay,
            "weekday" => GroupBy::Weekday,
            _ => return None,
        })
    }

    /// Whether a series from `from` to `to` (Unix seconds) has at most [`MAX_BUCKETS`].
    pub fn check_range(self, from: i64, to: i64) -> Result<(), TooManyBuckets> {
        let step = match self {
            GroupBy::Day => 86_400,
            GroupBy::Hour => 3_600,
            _ => return Ok(()),
        };
        let buckets = (to.saturating_sub(from)) / step + 1;
        if buckets > MAX_BUCKETS {
            return Err(TooManyBuckets { buckets });
        }
        Ok(())
    }

    /// A time series: every bucket of the range is shown, empty ones too.
    fn is_series(self) -> bool {
        matches!(self, GroupBy::Day | GroupBy::Hour)
    }
}

const WEEKDAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// A group's key, ordered as the groups are shown: by `order` (the hour of the day, the day of
/// the week), then by text (days and hours sort as they are written), `null` last.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    order: u8,
    text: Option<String>,
}

impl Key {
    fn text(text: Option<&str>) -> Key {
        Key {
            order: u8::from(text.is_none()),
            text: text.map(str::to_string),
        }
    }
}

/// The counts and sums behind one group's figures.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    calls: u64,
    ended: u64,
    answered: u64,
    inbound: u64,
    inbound_answered: u64,
    abandoned: u64,
    short_abandoned: u64,
    service_level_met: u64,
    inbound_ring_answered_sum: i64,
    inbound_ring_answered_count: u64,
    talk_sum: i64,
    talk_count: u64,
    hold_sum: i64,
    hold_count: u64,
    talk_total: i64,
    longest_wait: Option<i64>,
    outbound: u64,
    outbound_answered: u64,
}

impl Tally {
    /// Counts one dated call in.
    pub fn add(&mut self, call: &CallFacts, thresholds: &Thresholds) {
        self.calls += 1;
        if !call.ended {
            return;
        }
        self.ended += 1;
        let answered = call.answered();
        let ring = call.ring_seconds();
        let talk = call.talk_seconds();
        if answered {
            self.answered += 1;
            if let Some(talk) = talk {
                self.talk_sum += talk;
                self.talk_count += 1;
            }
            if let Some(hold) = call.holding_duration {
                self.hold_sum += hold;
                self.hold_count += 1;
            }
        }
        if let Some(talk) = talk {
            self.talk_total += talk;
        }
        if call.direction_is("inbound") {
            self.inbound += 1;
            if let Some(ring) = ring {
                self.longest_wait = Some(self.longest_wait.map_or(ring, |w| w.max(ring)));
            }
            if answered {
                self.inbound_answered += 1;
                if let Some(ring) = ring {
                    self.inbound_ring_answered_sum += ring;
                    self.inbound_ring_answered_count += 1;
                    if (ring as u64) < thresholds.service_level_seconds {
                        self.service_level_met += 1;
                    }
                }
            } else {
                match ring {
                    Some(ring) if (ring as u64) < thresholds.short_abandon_seconds => {
                        self.short_abandoned += 1;
                    }
                    // A missed call without an end time is not a misdial.
                    _ => self.abandoned += 1,
                }
            }
        } else if call.direction_is("outbound") {
            self.outbound += 1;
            if answered {
                self.outbound_answered += 1;
            }
        }
    }

    /// The tally of one call alone.
    pub fn of(call: &CallFacts, thresholds: &Thresholds) -> Tally {
        let mut tally = Tally::default();
        tally.add(call, thresholds);
        tally
    }

    /// The counts and sums, in [`Tally::COUNT_NAMES`]' order.
    pub fn counts(&self) -> [i64; 17] {
        [
            self.calls as i64,
            self.ended as i64,
            self.answered as i64,
            self.inbound as i64,
            self.inbound_answered as i64,
            self.abandoned as i64,
            self.short_abandoned as i64,
            self.service_level_met as i64,
            self.inbound_ring_answered_sum,
            self.inbound_ring_answered_count as i64,
            self.talk_sum,
            self.talk_count as i64,
            self.hold_sum,
            self.hold_count as i64,
            self.talk_total,
            self.outbound as i64,
            self.outbound_answered as i64,
        ]
    }

    /// The names of [`Tally::counts`], as the summary's columns are named.
    pub const COUNT_NAMES: [&'static str; 17] = [
        "calls",
        "ended",
        "answered",
        "inbound",
        "inbound_answered",
        "abandoned",
        "short_abandoned",
        "service_level_met",
        "asa_sum",
        "asa_count",
        "talk_sum",
        "talk_count",
        "hold_sum",
        "hold_count",
        "talk_total",
        "outbound",
        "outbound_answered",
    ];

    /// A tally from its counts and longest wait. A count below zero (a summary that no longer
    /// matches its calls) is an error rather than a figure.
    pub fn from_counts(counts: [i64; 17], longest_wait: Option<i64>) -> Option<Tally> {
        let n = |i: usize| u64::try_from(counts[i]).ok();
        Some(Tally {
            calls: n(0)?,
            ended: n(1)?,
            answered: n(2)?,
            inbound: n(3)?,
            inbound_answered: n(4)?,
            abandoned: n(5)?,
            short_abandoned: n(6)?,
            service_level_met: n(7)?,
            inbound_ring_answered_sum: counts[8],
            inbound_ring_answered_count: n(9)?,
            talk_sum: counts[10],
            talk_count: n(11)?,
            hold_sum: counts[12],
            hold_count: n(13)?,
            talk_total: counts[14],
            outbound: n(15)?,
            outbound_answered: n(16)?,
            longest_wait,
        })
    }

    /// The longest known ring of an ended inbound call counted.
    pub fn longest_wait(&self) -> Option<i64> {
        self.longest_wait
    }

    /// Adds another tally's calls to this one.
    pub fn merge(&mut self, other: &Tally) {
        let (a, b) = (self.counts(), other.counts());
        let mut sum = [0i64; 17];
        for i in 0..17 {
            sum[i] = a[i] + b[i];
        }
        let wait = match (self.longest_wait, other.longest_wait) {
            (Some(x), Some(y)) => Some(x.max(y)),
            (x, y) => x.or(y),
        };
        // Sums of non-negative counts stay non-negative.
        *self = Tally::from_counts(sum, wait).unwrap_or_default();
    }

    fn group(&self, key: Option<String>) -> Group {
        let ratio = |n: u64, d: u64| (d > 0).then(|| n as f64 / d as f64);
        let mean = |sum: i64, n: u64| (n > 0).then(|| sum as f64 / n as f64);
        let offered = self.inbound - self.short_abandoned;
        Group {
            key,
            calls: self.calls,
            ended: self.ended,
            in_progress: self.calls - self.ended,
            answered: self.answered,
            unanswered: self.ended - self.answered,
            answer_rate: ratio(self.answered, self.ended),
            inbound: self.inbound,
            inbound_answered: self.inbound_answered,
            abandoned: self.abandoned,
            short_abandoned: self.short_abandoned,
            abandon_rate: ratio(self.abandoned, offered),
            service_level: ratio(self.service_level_met, offered),
            asa_seconds: mean(
                self.inbound_ring_answered_sum,
                self.inbound_ring_answered_count,
            ),
            aht_seconds: mean(self.talk_sum, self.talk_count),
            avg_hold_seconds: mean(self.hold_sum, self.hold_count),
            talk_seconds_total: self.talk_total,
            longest_wait_seconds: self.longest_wait,
            outbound: self.outbound,
            outbound_answered: self.outbound_answered,
        }
    }
}

/// One group of `GET /api/stats`.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Group {
    pub key: Option<String>,
    pub calls: u64,
    pub ended: u64,
    pub in_progress: u64,
    pub answered: u64,
    pub unanswered: u64,
    pub answer_rate: Option<f64>,
    pub inbound: u64,
    pub inbound_answered: u64,
    pub abandoned: u64,
    pub short_abandoned: u64,
    pub abandon_rate: Option<f64>,
    pub service_level: Option<f64>,
    pub asa_seconds: Option<f64>,
    pub aht_seconds: Option<f64>,
    pub avg_hold_seconds: Option<f64>,
    pub talk_seconds_total: i64,
    pub longest_wait_seconds: Option<i64>,
    pub outbound: u64,
    pub outbound_answered: u64,
}

/// A range too wide for a time series.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{buckets} buckets from `from` to `to`; at most {MAX_BUCKETS}: narrow the range")]
pub struct TooManyBuckets {
    pub buckets: i64,
}

/// Builds the groups from call records given one at a time (in any order).
#[derive(Debug, Clone)]
pub struct StatsBuilder {
    group_by: GroupBy,
    thresholds: Thresholds,
    tz: TimeZone,
    groups: BTreeMap<Key, Tally>,
    first: Option<i64>,
    last: Option<i64>,
    undated: u64,
}

impl StatsBuilder {
    pub fn new(group_by: GroupBy, thresholds: Thresholds, tz: TimeZone) -> Self {
        StatsBuilder {
            group_by,
            thresholds,
            tz,
            groups: BTreeMap::new(),
            first: None,
            last: None,
            undated: 0,
        }
    }

    /// Counts a call in: into its group when it has a start time, as undated when it has none.
    pub fn add(&mut self, call: &CallFacts) {
        let Some(start) = call.start_time else {
            self.undated += 1;
            return;
        };
        self.first = Some(self.first.map_or(start, |f| f.min(start)));
        self.last = Some(self.last.map_or(start, |l| l.max(start)));
        let key = self.key(call, start);
        self.groups
            .entry(key)
            .or_default()
            .add(call, &self.thresholds);
    }

    /// Counts in a summary of calls rather than a call: `dims` gives the group's dimensions
    /// (agent, hotline, direction, status; its times are not read), `bucket` a start time the
    /// summary's calls share the group of. The range of starts is given apart
    /// ([`StatsBuilder::include_range`]).
    pub fn add_summary(&mut self, dims: &CallFacts, bucket: i64, tally: &Tally) {
        let key = self.key(dims, bucket);
        self.groups.entry(key).or_default().merge(tally);
    }

    /// Widens the range of starts counted to `first`..`last`.
    pub fn include_range(&mut self, first: i64, last: i64) {
        self.first = Some(self.first.map_or(first, |f| f.min(first)));
        self.last = Some(self.last.map_or(last, |l| l.max(last)));
    }

    pub fn group_by(&self) -> GroupBy {
        self.group_by
    }

    pub fn thresholds(&self) -> Thresholds {
        self.thresholds
    }

    pub fn time_zone(&self) -> &TimeZone {
        &self.tz
    }

    /// Undated calls counted by the store rather than given one by one.
    pub fn add_undated(&mut self, n: u64) {
        self.undated += n;
    }

    pub fn undated(&self) -> u64 {
        self.undated
    }

    /// The first and last start time counted.
    pub fn range(&self) -> (Option<i64>, Option<i64>) {
        (self.first, self.last)
    }

    fn key(&self, call: &CallFacts, start: i64) -> Key {
        let local = || {
            Timestamp::from_second(start)
                .unwrap_or(Timestamp::UNIX_EPOCH)
                .to_zoned(self.tz.clone())
        };
        match self.group_by {
            GroupBy::None => Key::text(None),
            GroupBy::Agent => Key::text(call.agent()),
            GroupBy::Hotline => Key::text(present(&call.hotline)),
            GroupBy::Direction => {
                Key::text(present(&call.direction).map(str::to_lowercase).as_deref())
            }
            GroupBy::Status => {
                Key::text(present(&call.call_status).map(str::to_lowercase).as_deref())
            }
            GroupBy::Day => Key::text(Some(&day_key(&local()))),
            GroupBy::Hour => Key::text(Some(&hour_key(&local()))),
            GroupBy::HourOfDay => {
                let hour = local().hour();
                Key {
                    order: hour as u8,
                    text: Some(hour.to_string()),
                }
            }
            GroupBy::Weekday => {
                let day = local().weekday().to_monday_zero_offset() as usize;
                Key {
                    order: day as u8,
                    text: Some(WEEKDAYS[day].to_string()),
                }
            }
        }
    }

    /// The same calls grouped by `target`, folded from this builder's hourly groups (each local
    /// hour lies in one local day, hour of day and weekday, and tallies add up exactly): one read
    /// of the store serves several groupings. `None` unless this builder is by hour and `target`
    /// is `none`, `day`, `hour_of_day` or `weekday`.
    pub fn regrouped(&self, target: GroupBy) -> Option<StatsBuilder> {
        if self.group_by != GroupBy::Hour
            || !matches!(
                target,
                GroupBy::None | GroupBy::Day | GroupBy::HourOfDay | GroupBy::Weekday
            )
        {
            return None;
        }
        let mut out = StatsBuilder {
            group_by: target,
            groups: BTreeMap::new(),
            tz: self.tz.clone(),
            ..*self
        };
        for (key, tally) in &self.groups {
            // `YYYY-MM-DDTHH:00`, local.
            let text = key.text.as_deref()?;
            let (date, hour) = text.split_once('T')?;
            let hour: u8 = hour.get(..2)?.parse().ok()?;
            let new_key = match target {
                GroupBy::None => Key::text(None),
                GroupBy::Day => Key::text(Some(date)),
                GroupBy::HourOfDay => Key {
                    order: hour,
                    text: Some(hour.to_string()),
                },
                _ => {
                    let day = date.parse::<jiff::civil::Date>().ok()?;
                    let d = day.weekday().to_monday_zero_offset() as usize;
                    Key {
                        order: d as u8,
                        text: Some(WEEKDAYS[d].to_string()),
                    }
                }
            };
            out.groups.entry(new_key).or_default().merge(tally);
        }
        Some(out)
    }

    /// The groups in order. A time series runs from `from` to `to` (Unix seconds, inclusive),
    /// or from the first to the last call where they are not given, empty buckets included.
    pub fn finish(
        mut self,
        from: Option<i64>,
        to: Option<i64>,
    ) -> Result<Vec<Group>, TooManyBuckets> {
        if self.group_by == GroupBy::None && self.groups.is_empty() {
            self.groups.insert(Key::text(None), Tally::default());
        }
        if self.group_by.is_series()
            && let (Some(from), Some(to)) = (from.or(self.first), to.or(self.last))
            && from <= to
        {
            self.group_by.check_range(from, to)?;
            for key in series_keys(self.group_by, from, to, &self.tz) {
                self.groups.entry(Key::text(Some(&key))).or_default();
            }
        }
        Ok(self
            .groups
            .into_iter()
            .map(|(key, tally)| tally.group(key.text))
            .collect())
    }
}

fn day_key(local: &jiff::Zoned) -> String {
    local.strftime("%Y-%m-%d").to_string()
}

fn hour_key(local: &jiff::Zoned) -> String {
    local.strftime("%Y-%m-%dT%H:00").to_string()
}

/// Every day or hour key from `from` to `to`, in the zone.
fn series_keys(group_by: GroupBy, from: i64, to: i64, tz: &TimeZone) -> Vec<String> {
    let at = |s: i64| {
        Timestamp::from_second(s)
            .unwrap_or(Timestamp::UNIX_EPOCH)
            .to_zoned(tz.clone())
    };
    let mut keys = Vec::new();
    if group_by == GroupBy::Day {
        let (mut day, last) = (at(from).date(), at(to).date());
        while day <= last {
            keys.push(day.strftime("%Y-%m-%d").to_string());
            match day.tomorrow() {
                Ok(next) => day = next,
                Err(_) => break,
            }
        }
    } else {
        // From the start of `from`'s local hour, an hour at a time, and `to`'s own hour (a zone
        // whose offset changes by half an hour would skip it otherwise).
        let first = at(from);
        let mut t = from - i64::from(first.minute()) * 60 - i64::from(first.second());
        while t <= to {
            keys.push(hour_key(&at(t)));
            t += 3_600;
        }
        keys.push(hour_key(&at(to)));
        keys.dedup();
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hcm() -> TimeZone {
        TimeZone::get("Asia/Ho_Chi_Minh").unwrap()
    }

    /// 2026-11-02 (a Monday) at `h:m:s` in Ho Chi Minh City, as Unix seconds.
    fn at(h: i64, m: i64, s: i64) -> i64 {
        1_793_552_400 + h * 3600 + m * 60 + s
    }

    fn call(direction: &str, start: i64, answer: Option<i64>, end: Option<i64>) -> CallFacts {
        CallFacts {
            ended: end.is_some(),
            call_status: Some(
                if answer.is_some() {
                    "answered"
                } else {
                    "missed"
                }
                .into(),
            ),
            direction: Some(direction.into()),
            start_time: Some(start),
            answer_time: answer,
            end_time: end,
            ..CallFacts::default()
        }
    }

    proptest::proptest! {
        /// Folding the hourly groups into days, the whole range, hours of the day or weekdays
        /// gives what grouping the calls that way gives, for any calls.
        #[test]
        fn regrouping_the_hours_is_grouping_the_calls(
            calls in proptest::collection::vec(
                (0i64..20 * 86_400, proptest::option::of(0i64..120), proptest::option::of(0i64..900),
                 proptest::bool::ANY, proptest::option::of(0i64..60), proptest::bool::ANY),
                0..60),
            undated in 0usize..3,
        ) {
            let facts: Vec<CallFacts> = calls.iter().map(|&(start, ring, talk, inbound, hold, ended)| {
                let start = at(0, 0, 0) + start - 5 * 86_400;
                let answer = ring.filter(|_| talk.is_some()).map(|r| start + r);
                let end = ended.then(|| answer.unwrap_or(start) + talk.unwrap_or(ring.unwrap_or(30)));
                CallFacts {
                    holding_duration: hold,
                    ..call(if inbound { "inbound" } else { "outbound" }, start, answer, end)
                }
            }).chain((0..undated).map(|_| CallFacts::default())).collect();
            let mut hourly = StatsBuilder::new(GroupBy::Hour, Thresholds::default(), hcm());
            for c in &facts {
                hourly.add(c);
            }
            for target in [GroupBy::None, GroupBy::Day, GroupBy::HourOfDay, GroupBy::Weekday] {
                let folded = hourly.regrouped(target).unwrap();
                proptest::prop_assert_eq!(folded.undated(), undated as u64);
                proptest::prop_assert_eq!(folded.range(), hourly.range());
                proptest::prop_assert_eq!(folded.finish(None, None).unwrap(), stats(&facts, target), "{:?}", target);
            }
            proptest::prop_assert!(hourly.regrouped(GroupBy::Agent).is_none());
        }
    }

    fn stats(calls: &[CallFacts], group_by: GroupBy) -> Vec<Group> {
        let mut builder = StatsBuilder::new(group_by, Thresholds::default(), hcm());
        for c in calls {
            builder.add(c);
        }
        builder.finish(None, None).unwrap()
    }

    #[test]
    fn the_epoch_of_the_fixtures_is_a_monday_midnight_in_the_zone() {
        let local = Timestamp::from_second(at(0, 0, 0)).unwrap().to_zoned(hcm());
        assert_eq!(
            local.strftime("%Y-%m-%d %H:%M:%S %a").to_string(),
            "2026-11-02 00:00:00 Mon"
        );
    }

    #[test]
    fn ring_and_talk_follow_the_definitions() {
        let answered = call(
            "inbound",
            at(9, 0, 0),
            Some(at(9, 0, 12)),
            Some(at(9, 5, 12)),
        );
        assert_eq!(answered.ring_seconds(), Some(12));
        assert_eq!(answered.talk_seconds(), Some(300));
        let missed = call("inbound", at(9, 0, 0), None, Some(at(9, 0, 30)));
        assert_eq!(missed.ring_seconds(), Some(30));
        assert_eq!(missed.talk_seconds(), None);
        let no_end = call("inbound", at(9, 0, 0), None, None);
        assert_eq!(no_end.ring_seconds(), None);
        // Answered by its status alone: its ring is unknown, not end − start.
        let by_status = CallFacts {
            answer_time: None,
            ..call("inbound", at(9, 0, 0), Some(0), Some(at(9, 2, 0)))
        };
        assert!(by_status.answered());
        assert_eq!(by_status.ring_seconds(), None);
        // Times the wrong way round are unknown, not negative.
        let wrong = call("inbound", at(9, 0, 0), Some(at(8, 0, 0)), Some(at(7, 0, 0)));
        assert_eq!((wrong.ring_seconds(), wrong.talk_seconds()), (None, None));
    }

    /// Six ended inbound calls, one outbound, one in progress, by hand.
    #[test]
    fn every_figure_by_hand() {
        let mut calls = vec![
            // answered after 10 s, talked 100 s, held 20 s
            call(
                "inbound",
                at(9, 0, 0),
                Some(at(9, 0, 10)),
                Some(at(9, 1, 50)),
            ),
            // answered after 30 s (misses the 20 s service level), talked 60 s
            call(
                "inbound",
                at(9, 10, 0),
                Some(at(9, 10, 30)),
                Some(at(9, 11, 30)),
            ),
            // missed after 40 s: abandoned, the longest wait
            call("inbound", at(10, 0, 0), None, Some(at(10, 0, 40))),
            // missed after 3 s: a short abandon
            call("inbound", at(10, 5, 0), None, Some(at(10, 5, 3))),
            // missed with no end time: abandoned (ring unknown)
            CallFacts {
                ended: true,
                ..call("inbound", at(11, 0, 0), None, None)
            },
            // exactly 5 s: not short
            call("inbound", at(11, 30, 0), None, Some(at(11, 30, 5))),
            // outbound answered, talked 50 s
            call(
                "outbound",
                at(12, 0, 0),
                Some(at(12, 0, 8)),
                Some(at(12, 0, 58)),
            ),
            // still ringing: counted in calls and in_progress only
            call("inbound", at(13, 0, 0), None, None),
        ];
        calls[0].holding_duration = Some(20);
        let groups = stats(&calls, GroupBy::None);
        assert_eq!(groups.len(), 1);
        let g = &groups[0];
        assert_eq!(g.key, None);
        assert_eq!((g.calls, g.ended, g.in_progress), (8, 7, 1));
        assert_eq!((g.answered, g.unanswered), (3, 4));
        assert_eq!(g.answer_rate, Some(3.0 / 7.0));
        assert_eq!((g.inbound, g.inbound_answered), (6, 2));
        assert_eq!((g.abandoned, g.short_abandoned), (3, 1));
        assert_eq!(g.abandon_rate, Some(3.0 / 5.0));
        assert_eq!(g.service_level, Some(1.0 / 5.0));
        assert_eq!(g.asa_seconds, Some(20.0));
        assert_eq!(g.aht_seconds, Some((100.0 + 60.0 + 50.0) / 3.0));
        assert_eq!(g.avg_hold_seconds, Some(20.0));
        assert_eq!(g.talk_seconds_total, 210);
        assert_eq!(g.longest_wait_seconds, Some(40));
        assert_eq!((g.outbound, g.outbound_answered), (1, 1));
    }

    #[test]
    fn figures_over_no_calls_are_null() {
        let groups = stats(&[call("inbound", at(9, 0, 0), None, None)], GroupBy::None);
        let g = &groups[0];
        assert_eq!((g.calls, g.ended, g.in_progress), (1, 0, 1));
        assert_eq!(g.answer_rate, None);
        assert_eq!(g.abandon_rate, None);
        assert_eq!(g.service_level, None);
        assert_eq!(g.asa_seconds, None);
        assert_eq!(g.aht_seconds, None);
        assert_eq!(g.avg_hold_seconds, None);
        assert_eq!(g.longest_wait_seconds, None);
        assert_eq!(g.talk_seconds_total, 0);
        // Only short abandons: no denominator for the abandon rate or the service level.
        let short = stats(
            &[call("inbound", at(9, 0, 0), None, Some(at(9, 0, 2)))],
            GroupBy::None,
        );
        assert_eq!(
            (short[0].abandon_rate, short[0].service_level),
            (None, None)
        );
        // Nothing at all: still one group, of zeros.
        let none = stats(&[], GroupBy::None);
        assert_eq!(none.len(), 1);
        assert_eq!(none[0].calls, 0);
        assert!(stats(&[], GroupBy::Agent).is_empty());
        assert!(stats(&[], GroupBy::Day).is_empty());
    }

    #[test]
    fn undated_calls_are_apart() {
        let mut builder = StatsBuilder::new(GroupBy::Agent, Thresholds::default(), hcm());
        builder.add(&CallFacts {
            start_time: None,
            ..call("inbound", at(9, 0, 0), None, Some(at(9, 0, 9)))
        });
        assert_eq!(builder.undated(), 1);
        assert!(builder.finish(None, None).unwrap().is_empty());
    }

    #[test]
    fn agents_hotlines_statuses_and_directions() {
        let mut a = call("inbound", at(9, 0, 0), Some(at(9, 0, 5)), Some(at(9, 1, 0)));
        a.user_name = Some("lan".into());
        a.destination_number = Some("101".into());
        let mut b = call("outbound", at(9, 0, 0), None, Some(at(9, 0, 9)));
        b.destination_number = Some("102".into());
        b.hotline = Some("19001234".into());
        b.call_status = Some("MISSED".into());
        let mut c = call("inbound", at(9, 0, 0), None, Some(at(9, 0, 9)));
        c.direction = None;
        c.call_status = None;
        let keys = |g: GroupBy| {
            stats(&[a.clone(), b.clone(), c.clone()], g)
                .into_iter()
                .map(|g| (g.key, g.calls))
                .collect::<Vec<_>>()
        };
        let s = |t: &str| Some(t.to_string());
        assert_eq!(
            keys(GroupBy::Agent),
            [(s("102"), 1), (s("lan"), 1), (None, 1)]
        );
        assert_eq!(keys(GroupBy::Hotline), [(s("19001234"), 1), (None, 2)]);
        assert_eq!(
            keys(GroupBy::Status),
            [(s("answered"), 1), (s("missed"), 1), (None, 1)]
        );
        assert_eq!(
            keys(GroupBy::Direction),
            [(s("inbound"), 1), (s("outbound"), 1), (None, 1)]
        );
    }

    #[test]
    fn time_groups_are_local_and_calls_spanning_midnight_belong_to_their_start() {
        // 23:59:50 on Monday, ended 00:02 on Tuesday; and 00:00:10 on Tuesday.
        let late = call(
            "inbound",
            at(23, 59, 50),
            Some(at(24, 0, 0)),
            Some(at(24, 2, 0)),
        );
        let early = call("inbound", at(24, 0, 10), None, Some(at(24, 0, 20)));
        let both = [late, early];
        let keys = |g: GroupBy| {
            stats(&both, g)
                .into_iter()
                .map(|g| (g.key.unwrap(), g.calls))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            keys(GroupBy::Day),
            [("2026-11-02".into(), 1), ("2026-11-03".into(), 1)]
        );
        assert_eq!(
            keys(GroupBy::Hour),
            [
                ("2026-11-02T23:00".into(), 1),
                ("2026-11-03T00:00".into(), 1)
            ]
        );
        assert_eq!(
            keys(GroupBy::HourOfDay),
            [("0".to_string(), 1), ("23".into(), 1)]
        );
        assert_eq!(
            keys(GroupBy::Weekday),
            [("mon".to_string(), 1), ("tue".into(), 1)]
        );
    }

    #[test]
    fn hours_of_the_day_sort_as_numbers_and_series_include_empty_buckets() {
        let calls = [
            call("inbound", at(9, 0, 0), None, Some(at(9, 0, 9))),
            call("inbound", at(10, 0, 0), None, Some(at(10, 0, 9))),
            call(
                "inbound",
                at(24 * 3 + 2, 0, 0),
                None,
                Some(at(24 * 3 + 2, 0, 9)),
            ),
        ];
        let hours: Vec<_> = stats(&calls, GroupBy::HourOfDay)
            .into_iter()
            .map(|g| g.key.unwrap())
            .collect();
        assert_eq!(hours, ["2", "9", "10"]);
        let days: Vec<_> = stats(&calls, GroupBy::Day)
            .into_iter()
            .map(|g| (g.key.unwrap(), g.calls))
            .collect();
        assert_eq!(
            days,
            [
                ("2026-11-02".to_string(), 2),
                ("2026-11-03".into(), 0),
                ("2026-11-04".into(), 0),
                ("2026-11-05".into(), 1)
            ]
        );
        // A range given: its every day, whether or not calls fall in it.
        let mut builder = StatsBuilder::new(GroupBy::Day, Thresholds::default(), hcm());
        builder.add(&calls[0]);
        let days: Vec<_> = builder
            .finish(Some(at(-24, 0, 0)), Some(at(24 * 2 - 1, 59, 59)))
            .unwrap()
            .into_iter()
            .map(|g| g.key.unwrap())
            .collect();
        assert_eq!(days, ["2026-11-01", "2026-11-02", "2026-11-03"]);
        let mut builder = StatsBuilder::new(GroupBy::Hour, Thresholds::default(), hcm());
        builder.add(&calls[0]);
        let hours: Vec<_> = builder
            .finish(Some(at(8, 30, 0)), Some(at(10, 10, 0)))
            .unwrap()
            .into_iter()
            .map(|g| (g.key.unwrap(), g.calls))
            .collect();
        assert_eq!(
            hours,
            [
                ("2026-11-02T08:00".to_string(), 0),
                ("2026-11-02T09:00".into(), 1),
                ("2026-11-02T10:00".into(), 0)
            ]
        );
        let builder = StatsBuilder::new(GroupBy::Hour, Thresholds::default(), hcm());
        assert!(builder.finish(Some(0), Some(at(0, 0, 0))).is_err());
    }

    #[test]
    fn the_thresholds_are_settings() {
        let calls = [
            call("inbound", at(9, 0, 0), None, Some(at(9, 0, 7))),
            call(
                "inbound",
                at(9, 0, 0),
                Some(at(9, 0, 25)),
                Some(at(9, 1, 0)),
            ),
        ];
        let mut builder = StatsBuilder::new(
            GroupBy::None,
            Thresholds {
                short_abandon_seconds: 10,
                service_level_seconds: 30,
            },
            hcm(),
        );
        for c in &calls {
            builder.add(c);
        }
        let g = &builder.finish(None, None).unwrap()[0];
        assert_eq!((g.abandoned, g.short_abandoned), (0, 1));
        assert_eq!(g.service_level, Some(1.0));
        let g = &stats(&calls, GroupBy::None)[0];
        assert_eq!((g.abandoned, g.short_abandoned), (1, 0));
        assert_eq!(g.service_level, Some(0.0));
    }

    fn any_call() -> impl proptest::strategy::Strategy<Value = CallFacts> {
        use proptest::prelude::*;
        let text = |values: &'static [&'static str]| {
            prop::option::of(prop::sample::select(values.to_vec()).prop_map(str::to_string))
        };
        let base = 1_793_552_400i64;
        (
            (
                any::<bool>(),
                text(&["answered", "missed", "busy", "ANSWERED"]),
                text(&["inbound", "outbound", "Inbound"]),
                text(&["101", "102"]),
                text(&["H1", "H2"]),
                text(&["lan", "minh", ""]),
            ),
            (
                prop::option::of(0..3 * 86_400i64),
                prop::option::of(0..40i64),
                prop::option::of(0..400i64),
                prop::option::of(0..60i64),
            ),
        )
            .prop_map(
                move |((ended, status, dir, dest, hot, user), (start, ring, talk, hold))| {
                    let start = start.map(|s| base + s);
                    let answer = ring.and_then(|r| start.map(|s| s + r));
                    CallFacts {
                        ended,
                        call_status: status,
                        direction: dir,
                        destination_number: dest,
                        hotline: hot,
                        user_name: user,
                        start_time: start,
                        answer_time: answer.filter(|_| talk.is_some_and(|t| t % 2 == 0)),
                        end_time: talk.and_then(|t| start.map(|s| s + t)),
                        holding_duration: hold,
                    }
                },
            )
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Calls counted in any order give the same groups, and the figures keep their
        /// invariants: answered + unanswered = ended, no rate above 1, every call in a group or
        /// undated.
        #[test]
        fn any_order_gives_the_same_figures(
            calls in proptest::collection::vec(any_call(), 0..60),
            seed in proptest::prelude::any::<u64>(),
        ) {
            for group_by in [GroupBy::None, GroupBy::Agent, GroupBy::Hotline, GroupBy::Direction,
                GroupBy::Status, GroupBy::Day, GroupBy::Hour, GroupBy::HourOfDay, GroupBy::Weekday] {
                let count = |calls: &[CallFacts]| {
                    let mut b = StatsBuilder::new(group_by, Thresholds::default(), hcm());
                    for c in calls {
                        b.add(c);
                    }
                    let undated = b.undated();
                    (b.finish(None, None).unwrap(), undated)
                };
                let mut shuffled = calls.clone();
                fastrand::Rng::with_seed(seed).shuffle(&mut shuffled);
                let (groups, undated) = count(&calls);
                proptest::prop_assert_eq!(&(groups.clone(), undated), &count(&shuffled));
                let total: u64 = groups.iter().map(|g| g.calls).sum();
                proptest::prop_assert_eq!(total + undated, calls.len() as u64);
                for g in &groups {
                    proptest::prop_assert_eq!(g.answered + g.unanswered, g.ended);
                    proptest::prop_assert_eq!(g.ended + g.in_progress, g.calls);
                    proptest::prop_assert!(g.inbound + g.outbound <= g.ended);
                    proptest::prop_assert!(g.abandoned + g.short_abandoned + g.inbound_answered == g.inbound);
                    for rate in [g.answer_rate, g.abandon_rate, g.service_level].into_iter().flatten() {
                        proptest::prop_assert!((0.0..=1.0).contains(&rate), "{:?}", g);
                    }
                }
            }
        }
    }
}
