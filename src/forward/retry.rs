//! When to try a delivery again, in two questions (as vector's sinks split them): is this
//! outcome worth another attempt, and how long to wait before it.

use std::time::Duration;

/// The waits between attempts: after the first attempt fails, the second comes 5 s later, the
/// third 5 min after that, and so on; after the last wait's attempt fails, the delivery is dead.
/// About three days in all.
pub const DEFAULT_SCHEDULE: &str = "5s,5m,30m,2h,5h,10h,14h,20h,24h";

/// The shortest and longest wait a `Retry-After` can ask for.
const RETRY_AFTER_MIN: Duration = Duration::from_secs(1);
const RETRY_AFTER_MAX: Duration = Duration::from_secs(24 * 60 * 60);

/// The waits between attempts (see [`DEFAULT_SCHEDULE`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule(Vec<Duration>);

impl Default for Schedule {
    fn default() -> Self {
        Schedule::parse(DEFAULT_SCHEDULE).expect("the default schedule parses")
    }
}

impl Schedule {
    /// `5s,5m,30m,2h,…`: comma-separated durations, each a number and a unit (`ms`, `s`, `m`,
    /// `h`, `d`); N entries are N retries after the first attempt.
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let waits = text
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(parse_duration)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Schedule(waits))
    }

    /// How many retries follow the first attempt.
    pub fn retries(&self) -> usize {
        self.0.len()
    }

    /// The wait after failed attempt number `attempts` (1 = the first), with `jitter` in
    /// [-1, 1] applied as ±20 %, and at least the server's `Retry-After` (clamped to 1 s..24 h);
    /// `None` when that was the last attempt: the delivery is dead.
    pub fn next_wait(
        &self,
        attempts: usize,
        jitter: f64,
        retry_after: Option<Duration>,
    ) -> Option<Duration> {
        let base = *self.0.get(attempts.checked_sub(1)?)?;
        let jittered = base.mul_f64(1.0 + 0.2 * jitter.clamp(-1.0, 1.0));
        let asked = retry_after.map(|r| r.clamp(RETRY_AFTER_MIN, RETRY_AFTER_MAX));
        Some(asked.map_or(jittered, |asked| jittered.max(asked)))
    }
}

/// The schedule as it is written in the settings (`5s,5m,30m,…`).
impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (n, wait) in self.0.iter().enumerate() {
            if n > 0 {
                f.write_str(",")?;
            }
            let ms = wait.as_millis();
            let unit = [(3_600_000, "h"), (60_000, "m"), (1000, "s")]
                .into_iter()
                .find(|(size, _)| ms > 0 && ms % size == 0);
            match unit {
                Some((size, unit)) => write!(f, "{}{unit}", ms / size)?,
                None => write!(f, "{ms}ms")?,
            }
        }
        Ok(())
    }
}

/// `5s`, `5m`, `2h`, `1d`, `250ms`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} has no unit (s, m, h, d, ms)"))?;
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a number and a unit"))?;
    let seconds = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("{text:?}: the unit is one of ms, s, m, h, d")),
    };
    Ok(Duration::from_secs(seconds))
}

/// What a delivery attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx: delivered.
    Delivered,
    /// 410 Gone: the receiver asks not to be sent anything more; the destination is disabled.
    Gone,
    /// Anything else (another status, a timeout, a refused connection, a TLS error, a redirect):
    /// try again later.
    Failed,
}

impl Verdict {
    pub fn of_status(status: u16) -> Verdict {
        match status {
            200..=299 => Verdict::Delivered,
            410 => Verdict::Gone,
            _ => Verdict::Failed,
        }
    }
}

/// A `Retry-After` header: seconds, or an HTTP date (how long from `now`, Unix seconds).
pub fn parse_retry_after(value: &str, now: i64) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = jiff::fmt::rfc2822::parse(value)
        .ok()?
        .timestamp()
        .as_second();
    Some(Duration::from_secs(u64::try_from(at - now).unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schedule_is_shown_as_it_is_written() {
        assert_eq!(Schedule::default().to_string(), DEFAULT_SCHEDULE);
        let odd = Schedule::parse("250ms, 90s,1500ms,2d").unwrap();
        assert_eq!(odd.to_string(), "250ms,90s,1500ms,48h");
        assert_eq!(Schedule::parse(&odd.to_string()).unwrap(), odd);
    }

    #[test]
    fn the_default_schedule_is_nine_retries_over_about_three_days() {
        let schedule = Schedule::default();
        assert_eq!(schedule.retries(), 9);
        let total: Duration = (1..=9)
            .map(|a| schedule.next_wait(a, 0.0, None).unwrap())
            .sum();
        assert_eq!(
            total.as_secs(),
            5 + 300 + 1800 + 7200 + 18000 + 36000 + 50400 + 72000 + 86400
        );
        // 3.15 days.
        assert!((3.0..3.3).contains(&(total.as_secs_f64() / 86_400.0)));
        assert_eq!(schedule.next_wait(10, 0.0, None), None, "then it is dead");
        assert_eq!(schedule.next_wait(0, 0.0, None), None);
    }

    #[test]
    fn jitter_is_twenty_percent_either_way() {
        let schedule = Schedule::default();
        assert_eq!(
            schedule.next_wait(2, 1.0, None),
            Some(Duration::from_secs(360))
        );
        assert_eq!(
            schedule.next_wait(2, -1.0, None),
            Some(Duration::from_secs(240))
        );
        assert_eq!(
            schedule.next_wait(2, 7.0, None),
            Some(Duration::from_secs(360))
        );
    }

    #[test]
    fn retry_after_is_a_floor_clamped_to_a_second_and_a_day() {
        let schedule = Schedule::default();
        let wait = |r| schedule.next_wait(1, 0.0, Some(r)).unwrap();
        assert_eq!(wait(Duration::from_secs(120)), Duration::from_secs(120));
        assert_eq!(
            wait(Duration::from_secs(2)),
            Duration::from_secs(5),
            "never shorter"
        );
        assert_eq!(wait(Duration::from_secs(0)), Duration::from_secs(5));
        assert_eq!(
            wait(Duration::from_secs(10 * 86_400)),
            Duration::from_secs(86_400),
            "a day at most"
        );
        let quick = Schedule::parse("100ms").unwrap();
        assert_eq!(
            quick.next_wait(1, 0.0, Some(Duration::ZERO)),
            Some(Duration::from_secs(1)),
            "a second at least"
        );
    }

    #[test]
    fn schedules_and_retry_after_values_parse() {
        assert_eq!(
            Schedule::parse("1s, 2m,3h,1d,250ms").unwrap().0,
            vec![
                Duration::from_secs(1),
                Duration::from_secs(120),
                Duration::from_secs(10_800),
                Duration::from_secs(86_400),
                Duration::from_millis(250)
            ]
        );
        for bad in ["5", "5x", "s", "-1s"] {
            assert!(Schedule::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_retry_after("30", 0), Some(Duration::from_secs(30)));
        // Wed, 21 Oct 2015 07:28:00 GMT is 1445412480.
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1445412480 - 90),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1445412480 + 90),
            Some(Duration::ZERO),
            "a date past is no wait"
        );
        assert_eq!(parse_retry_after("soon", 0), None);
    }

    #[test]
    fn verdicts() {
        assert_eq!(Verdict::of_status(200), Verdict::Delivered);
        assert_eq!(Verdict::of_status(204), Verdict::Delivered);
        assert_eq!(Verdict::of_status(410), Verdict::Gone);
        for failed in [301, 302, 400, 404, 429, 500, 503] {
            assert_eq!(Verdict::of_status(failed), Verdict::Failed, "{failed}");
        }
    }

    /// A delivery that always fails, driven through the whole default schedule on tokio's
    /// paused clock (no real waiting): the attempts come at 0, 5 s, 5 min 5 s, … within the
    /// jitter, a Retry-After of an hour holds the second attempt back an hour, and after the
    /// tenth attempt (about three days on) nothing is tried: dead.
    #[tokio::test(start_paused = true)]
    async fn a_failing_delivery_walks_the_schedule_on_a_paused_clock() {
        let schedule = Schedule::default();
        for (jitter, retry_after) in [(0.0, None), (1.0, None), (-1.0, None), (0.0, Some(3600))] {
            let start = tokio::time::Instant::now();
            let mut attempts_at = Vec::new();
            let mut attempts = 0;
            loop {
                attempts_at.push(start.elapsed());
                attempts += 1;
                let asked = if attempts == 1 {
                    retry_after.map(Duration::from_secs)
                } else {
                    None
                };
                match schedule.next_wait(attempts, jitter, asked) {
                    Some(wait) => tokio::time::sleep(wait).await,
                    None => break,
                }
            }
            assert_eq!(attempts_at.len(), 10, "the first attempt and nine retries");
            let mut expected = Duration::ZERO;
            for (n, at) in attempts_at.iter().enumerate().skip(1) {
                let base = schedule.0[n - 1].mul_f64(1.0 + 0.2 * jitter);
                let wait = if n == 1 && retry_after.is_some() {
                    base.max(Duration::from_secs(3600))
                } else {
                    base
                };
                expected += wait;
                let drift = at.abs_diff(expected);
                assert!(
                    drift < Duration::from_millis(10),
                    "attempt {n}: {at:?} vs {expected:?}"
                );
            }
            let days = attempts_at[9].as_secs_f64() / 86_400.0;
            assert!((2.5..3.8).contains(&days), "dead after {days:.2} days");
        }
    }
}
