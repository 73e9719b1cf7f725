//! Realistic Alohub traffic, deterministic for a seed: calls with their events (exactly the body
//! shape of the sender's spec) and the record each call must end up as.

use jiff::civil::DateTime;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};
use serde_json::{Value, json};

/// One simulated call: the events to send, in sending order, and the record alohook must build.
#[derive(Debug, Clone)]
pub struct SimCall {
    pub call_id: String,
    pub events: Vec<SimEvent>,
    pub expected: Expected,
}

#[derive(Debug, Clone)]
pub struct SimEvent {
    pub body: bytes::Bytes,
    /// Sent once more after it is acknowledged (`--duplicates`).
    pub resend: bool,
}

/// What the call record must say once every event has arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub call_status: String,
    pub phase: &'static str,
    pub direction: String,
    pub caller_number: String,
    pub destination_number: String,
    pub hotline: Option<String>,
    pub user_name: String,
    pub transaction_id: Option<String>,
    /// Unix seconds.
    pub start_time: i64,
    pub answer_time: Option<i64>,
    pub end_time: i64,
    pub hangup_by: String,
    pub total_duration: i64,
    pub holding_duration: i64,
    pub ring_seconds: Option<i64>,
    pub talk_seconds: Option<i64>,
    pub event_count: i64,
}

/// Knobs of the generated traffic.
#[derive(Debug, Clone)]
pub struct ScenarioOptions {
    pub seed: u64,
    /// Share of acknowledged events sent again.
    pub duplicates: f64,
    /// Share of answered calls whose final event is sent before the mid-call one.
    pub reorder: f64,
    pub timezone: TimeZone,
    /// Days the calls are spread over (1: one day, evenly; more: a contact centre's shape).
    pub days: u32,
    /// Share of calls from the pool of returning customers.
    pub repeat_callers: f64,
    /// How many returning customers there are.
    pub callers_pool: u32,
    /// Agents taking and making calls (each an extension from 101 and a user name).
    pub agents: u32,
    /// Hotlines called (the first three are [`HOTLINES`], the others `1900` numbers).
    pub hotlines: u32,
}

/// How busy each hour from 08:00 to 19:00 is, relative to the busiest (mornings and
/// mid-afternoons; lunch and evenings quieter).
const HOUR_SHAPE: [f64; 12] = [0.6, 1.0, 1.0, 0.9, 0.5, 0.6, 0.9, 1.0, 0.9, 0.7, 0.4, 0.25];
/// How busy each weekday is, Monday first.
const WEEKDAY_SHAPE: [f64; 7] = [1.0, 1.0, 0.95, 0.95, 0.9, 0.5, 0.2];

/// Seconds after the first day's 08:00 (local) at which a call of a `days`-day spread starts:
/// a day drawn by weekday weight, an hour by the hour shape, a second within it.
fn spread_start(rng: &mut fastrand::Rng, first_day: jiff::civil::Date, days: u32) -> (i64, i64) {
    let day = loop {
        let d = rng.u32(0..days);
        let date = first_day
            .checked_add(i64::from(d).days())
            .unwrap_or(first_day);
        let weekday = date.weekday().to_monday_zero_offset() as usize;
        if rng.f64() < WEEKDAY_SHAPE[weekday] {
            break i64::from(d);
        }
    };
    let hour = loop {
        let h = rng.usize(0..HOUR_SHAPE.len());
        if rng.f64() < HOUR_SHAPE[h] {
            break h as i64;
        }
    };
    (day, hour * 3600 + rng.i64(0..3600))
}

const FAMILY: &[&str] = &[
    "nguyen", "tran", "le", "pham", "hoang", "huynh", "phan", "vu", "vo", "dang", "bui", "do",
    "ho", "ngo", "duong", "ly",
];
const GIVEN: &[&str] = &[
    "an", "binh", "chi", "dung", "giang", "hanh", "khanh", "linh", "minh", "nam", "phuong",
    "quang", "thao", "trang", "tuan", "vy",
];
const MOBILE_PREFIXES: &[&str] = &[
    "032", "033", "034", "035", "036", "037", "038", "039", "070", "076", "077", "078", "079",
    "081", "082", "083", "084", "085", "088", "086", "096", "097", "098", "090", "093", "091",
    "094",
];
pub const HOTLINES: &[&str] = &["19001234", "18006789", "02873001234"];
/// The simulator's agents.
pub const AGENTS: u32 = 40;

/// The calls of a run; call `i` is the same for the same seed whatever `n` is.
pub fn generate(n: usize, options: &ScenarioOptions) -> Vec<SimCall> {
    (0..n).map(|i| generate_call(i, options)).collect()
}

/// Hotline `i` of a scenario.
fn hotline(i: u32) -> String {
    HOTLINES
        .get(i as usize)
        .map_or_else(|| format!("1900{:04}", 5000 + i), |h| h.to_string())
}

/// Call `index` of the scenario (what [`generate`] gives at that place).
pub fn generate_call(index: usize, options: &ScenarioOptions) -> SimCall {
    let mut rng = fastrand::Rng::with_seed(
        options
            .seed
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(index as u64),
    );
    // A working day per seed, 08:00 to 20:00, calls spread across it in order.
    let day = DateTime::constant(2024, 1, 1, 8, 0, 0, 0)
        .checked_add(((options.seed % 3000) as i64).days())
        .unwrap_or(DateTime::constant(2024, 1, 1, 8, 0, 0, 0));
    let day_start = options
        .timezone
        .to_ambiguous_zoned(day)
        .compatible()
        .map(|z| z.timestamp())
        .unwrap_or(Timestamp::UNIX_EPOCH);
    let (start, call_id) = if options.days <= 1 {
        let start = day_start.as_second() + (index as i64 * 7) % (12 * 3600) + rng.i64(0..7);
        let call_id = format!(
            "{}{:06}",
            local(start, &options.timezone).strftime("%Y%m%d%H%M%S"),
            (options.seed.wrapping_mul(7919).wrapping_add(index as u64)) % 1_000_000
        );
        (start, call_id)
    } else {
        let (day_offset, second) = spread_start(&mut rng, day.date(), options.days);
        let start = options
            .timezone
            .to_ambiguous_zoned(day.checked_add(day_offset.days()).unwrap_or(day))
            .compatible()
            .map_or(day_start.as_second(), |z| z.timestamp().as_second())
            + second;
        // Eight digits after the start time: unique for up to 100 million calls of a seed.
        let call_id = format!(
            "{}{:08}",
            local(start, &options.timezone).strftime("%Y%m%d%H%M%S"),
            (options.seed.wrapping_mul(7919).wrapping_add(index as u64)) % 100_000_000
        );
        (start, call_id)
    };

    let agent = rng.u32(0..options.agents.max(1));
    let extension = (101 + agent).to_string();
    let user_name = format!(
        "{}.{}",
        GIVEN[agent as usize % GIVEN.len()],
        FAMILY[(agent as usize / GIVEN.len() + agent as usize) % FAMILY.len()]
    );
    let caller_number = if options.repeat_callers > 0.0 && rng.f64() < options.repeat_callers {
        // A returning customer: the same number for the same pool place, whatever the call.
        let place = u64::from(rng.u32(0..options.callers_pool.max(1)));
        let mut pool = fastrand::Rng::with_seed(options.seed ^ place.wrapping_mul(0xA076_1D64));
        format!(
            "{}{:07}",
            pool.choice(MOBILE_PREFIXES).unwrap_or(&"038"),
            pool.u32(0..10_000_000)
        )
    } else if rng.f64() < 0.05 {
        format!(
            "{}{}xxx",
            rng.choice(MOBILE_PREFIXES).unwrap_or(&"038"),
            rng.u32(10..99)
        )
    } else {
        format!(
            "{}{:07}",
            rng.choice(MOBILE_PREFIXES).unwrap_or(&"038"),
            rng.u32(0..10_000_000)
        )
    };
    let inbound = rng.f64() < 0.6;
    let direction = if inbound { "inbound" } else { "outbound" };
    let hotline = inbound.then(|| hotline(rng.usize(..options.hotlines.max(1) as usize) as u32));
    let transaction_id = (!inbound).then(|| {
        if rng.bool() {
            format!("CAMP-{}-{:08}", 1 + rng.u32(0..9), rng.u32(0..100_000_000))
        } else {
            format!("CRM-{:010}", rng.u64(0..10_000_000_000))
        }
    });
    let numbers_as_numbers = rng.f64() < 0.1;

    let roll = rng.f64();
    let ring = rng.i64(3..26);
    let base = Base {
        call_id: &call_id,
        direction,
        caller_number: &caller_number,
        destination_number: &extension,
        start,
        hotline: hotline.as_deref(),
        transaction_id: transaction_id.as_deref(),
        user_name: &user_name,
        tz: &options.timezone,
        numbers_as_numbers,
    };
    let mut expected = Expected {
        call_status: String::new(),
        phase: "ended",
        direction: direction.to_string(),
        caller_number: caller_number.clone(),
        destination_number: extension.clone(),
        hotline: hotline.clone(),
        user_name: user_name.clone(),
        transaction_id: transaction_id.clone(),
        start_time: start,
        answer_time: None,
        end_time: 0,
        hangup_by: String::new(),
        total_duration: 0,
        holding_duration: 0,
        ring_seconds: None,
        talk_seconds: None,
        event_count: 0,
    };
    let mut bodies = Vec::new();
    if roll < 0.65 {
        let answer = start + ring;
        let talk = rng.i64(10..600);
        let end = answer + talk;
        let hold = if rng.f64() < 0.7 {
            0
        } else {
            rng.i64(5..60).min(talk)
        };
        let hangup = *rng
            .choice(["customer", "agent", "system"].iter())
            .unwrap_or(&"customer");
        let recording = format!(
            "https://media.example.invalid:8443/IPCCMedia/MP3Export.do?url={call_id}.mp3&source=ipcc"
        );
        let mid = base.body("answered", Some(answer), None, "", None, None, "");
        let fin = base.body(
            "answered",
            Some(answer),
            Some(end),
            hangup,
            Some(end - start),
            Some(hold),
            &recording,
        );
        if rng.f64() < options.reorder {
            bodies.push(fin);
            bodies.push(mid);
        } else {
            bodies.push(mid);
            bodies.push(fin);
        }
        expected.call_status = "answered".into();
        expected.answer_time = Some(answer);
        expected.end_time = end;
        expected.hangup_by = hangup.into();
        expected.total_duration = end - start;
        expected.holding_duration = hold;
        expected.ring_seconds = Some(ring);
        expected.talk_seconds = Some(talk);
    } else {
        let status = if roll < 0.85 {
            if inbound { "missed" } else { "no_answer" }
        } else {
            *rng.choice(["busy", "failed", "no_answer"].iter())
                .unwrap_or(&"busy")
        };
        let end = start + ring;
        let hangup = if status == "missed" {
            "customer"
        } else {
            "system"
        };
        bodies.push(base.body(status, None, Some(end), hangup, Some(ring), Some(0), ""));
        expected.call_status = status.into();
        expected.end_time = end;
        expected.hangup_by = hangup.into();
        expected.total_duration = ring;
    }
    expected.event_count = bodies.len() as i64;
    let events = bodies
        .into_iter()
        .map(|body| SimEvent {
            body: bytes::Bytes::from(body.to_string()),
            resend: rng.f64() < options.duplicates,
        })
        .collect();
    SimCall {
        call_id,
        events,
        expected,
    }
}

struct Base<'a> {
    call_id: &'a str,
    direction: &'a str,
    caller_number: &'a str,
    destination_number: &'a str,
    start: i64,
    hotline: Option<&'a str>,
    transaction_id: Option<&'a str>,
    user_name: &'a str,
    tz: &'a TimeZone,
    numbers_as_numbers: bool,
}

impl Base<'_> {
    /// One event body, with every field of the spec in its order, empty ones as `""`.
    #[allow(clippy::too_many_arguments)]
    fn body(
        &self,
        status: &str,
        answer: Option<i64>,
        end: Option<i64>,
        hangup_by: &str,
        total: Option<i64>,
        hold: Option<i64>,
        recording_url: &str,
    ) -> Value {
        let time = |t: Option<i64>| {
            t.map(|t| local(t, self.tz).strftime("%Y-%m-%d %H:%M:%S").to_string())
                .unwrap_or_default()
        };
        let seconds = |s: Option<i64>| match s {
            Some(s) if self.numbers_as_numbers => json!(s),
            Some(s) => json!(s.to_string()),
            None => json!(""),
        };
        json!({
            "call_id": self.call_id,
            "call_status": status,
            "direction": self.direction,
            "caller_number": self.caller_number,
            "destination_number": self.destination_number,
            "starttime": time(Some(self.start)),
            "answertime": time(answer),
            "endtime": time(end),
            "hangup_by": hangup_by,
            "hotline": self.hotline.unwrap_or(""),
            "total_duration": seconds(total),
            "holding_duration": seconds(hold),
            "recording_url": recording_url,
            "objectId": 1,
            "transactionID": self.transaction_id.unwrap_or(""),
            "userName": self.user_name,
            "eventType": "call"
        })
    }
}

fn local(seconds: i64, tz: &TimeZone) -> jiff::Zoned {
    Timestamp::from_second(seconds)
        .unwrap_or(Timestamp::UNIX_EPOCH)
        .to_zoned(tz.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{CallRecord, FinalStatuses, Phase, parse_body};

    fn options(seed: u64) -> ScenarioOptions {
        ScenarioOptions {
            seed,
            duplicates: 0.1,
            reorder: 0.5,
            timezone: TimeZone::get("Asia/Ho_Chi_Minh").unwrap(),
            days: 1,
            repeat_callers: 0.0,
            callers_pool: 1,
            agents: AGENTS,
            hotlines: HOTLINES.len() as u32,
        }
    }

    #[test]
    fn days_spread_calls_like_a_contact_centre() {
        let spread = ScenarioOptions {
            days: 14,
            repeat_callers: 0.3,
            callers_pool: 250,
            ..options(11)
        };
        let calls = generate(5000, &spread);
        let mut ids = std::collections::HashSet::new();
        let (mut by_weekday, mut by_hour) = ([0u32; 7], [0u32; 24]);
        let mut days = std::collections::HashSet::new();
        for c in &calls {
            assert!(ids.insert(c.call_id.clone()), "call ids are unique");
            let local = local(c.expected.start_time, &spread.timezone);
            assert!((8..20).contains(&local.hour()), "business hours: {local}");
            assert!(
                c.call_id
                    .starts_with(&local.strftime("%Y%m%d%H%M%S").to_string())
            );
            by_weekday[local.weekday().to_monday_zero_offset() as usize] += 1;
            by_hour[local.hour() as usize] += 1;
            days.insert(local.date());
        }
        assert_eq!(days.len(), 14, "every day has calls");
        assert!(
            by_weekday[6] * 3 < by_weekday[0],
            "Sundays are quiet: {by_weekday:?}"
        );
        assert!(
            by_hour[12] * 3 < by_hour[9] * 2,
            "lunch is quieter: {by_hour:?}"
        );
        // Returning customers call more than once.
        let mut per_number = std::collections::HashMap::new();
        for c in &calls {
            *per_number
                .entry(c.expected.caller_number.clone())
                .or_insert(0u32) += 1;
        }
        let repeated = per_number.values().filter(|n| **n > 1).count();
        assert!(repeated > 100, "{repeated} numbers called more than once");
        // One day, as before: evenly through it.
        let one = generate(100, &options(11));
        assert!(one.iter().all(|c| c.call_id.len() == 20));
    }

    #[test]
    fn deterministic_for_a_seed() {
        let a = generate(50, &options(7));
        let b = generate(50, &options(7));
        let c = generate(50, &options(8));
        let bodies = |calls: &[SimCall]| -> Vec<bytes::Bytes> {
            calls
                .iter()
                .flat_map(|c| c.events.iter().map(|e| e.body.clone()))
                .collect()
        };
        assert_eq!(bodies(&a), bodies(&b));
        assert_ne!(bodies(&a), bodies(&c));
        let ids: std::collections::HashSet<_> = a.iter().map(|c| &c.call_id).collect();
        assert_eq!(ids.len(), 50, "call ids are unique");
        assert_eq!(a[0].call_id.len(), 20);
    }

    #[test]
    fn the_mix_looks_like_a_contact_centre() {
        let calls = generate(2000, &options(1));
        let answered = calls
            .iter()
            .filter(|c| c.expected.answer_time.is_some())
            .count();
        let missed = calls
            .iter()
            .filter(|c| c.expected.call_status == "missed")
            .count();
        let campaign = calls
            .iter()
            .filter(|c| {
                c.expected
                    .transaction_id
                    .as_deref()
                    .is_some_and(|t| t.starts_with("CAMP"))
            })
            .count();
        assert!((1100..1500).contains(&answered), "{answered}");
        assert!((150..400).contains(&missed), "{missed}");
        assert!(campaign > 100, "{campaign}");
    }

    /// The simulator's expectation and alohook's merge agree, whatever the sending order.
    #[test]
    fn expected_records_match_the_merge_rule() {
        let opts = options(3);
        let finals = FinalStatuses::default();
        for call in generate(300, &opts) {
            let mut record: Option<CallRecord> = None;
            for (i, event) in call.events.iter().enumerate() {
                let parsed = parse_body(&event.body, &opts.timezone).unwrap();
                assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
                let key = parsed.source_key(&finals);
                match &mut record {
                    None => {
                        record = Some(CallRecord::from_event(
                            &call.call_id,
                            &parsed.fields,
                            key,
                            i as i64,
                        ))
                    }
                    Some(r) => r.merge(&parsed.fields, key, i as i64),
                }
            }
            let r = record.unwrap();
            let e = &call.expected;
            assert_eq!(
                r.fields.call_status.as_deref(),
                Some(e.call_status.as_str())
            );
            assert_eq!(r.phase(&finals), Phase::Ended);
            assert_eq!(r.fields.start_time, Some(e.start_time));
            assert_eq!(r.fields.answer_time, e.answer_time);
            assert_eq!(r.fields.end_time, Some(e.end_time));
            assert_eq!(r.fields.total_duration, Some(e.total_duration));
            assert_eq!(r.ring_seconds(), e.ring_seconds);
            assert_eq!(r.talk_seconds(), e.talk_seconds);
            assert_eq!(r.event_count, e.event_count);
        }
    }
}
