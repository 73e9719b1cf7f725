//! The store's write path alone, on a fixed workload: the CPU it spends per event, for
//! comparing two builds of the same store (bench/worklist-cost).
//!
//! The simulator's calls (`alohook simulate --seed 4 --repeat-callers R`: one day, 35 % of
//! inbound calls missed, outbound attempts, returning customers) are sent as 64 concurrent
//! senders would send them (each call's events in order, the calls interleaved), parsed ahead,
//! then committed through `Store::commit` in batches of `--batch` events one after another.
//! Over HTTP the batches are whatever group commit gathers, and a slower build gathers bigger
//! ones, which hides part of its cost; here every build commits the same batches.
//!
//! Prints one JSON object: events, batches, seconds, and the CPU per event of this process (the
//! store's threads; parsing is done before the clock starts) and, with `--pg-user`, of every
//! process of that user (the PostgreSQL server's backends).
//!
//! ```text
//! cargo run --release --example write_cost -- --database sqlite:///tmp/w/alohook.db --events 100000
//! ```

use std::sync::Arc;
use std::time::Instant;

use alohook::model::parse_body;
use alohook::sim::scenario::{self, ScenarioOptions};
use alohook::store::postgres::PgStore;
use alohook::store::sqlite::SqliteStore;
use alohook::store::{Incoming, MergeSettings, Store};

/// Calls under way at once (bench/cpu-per-event's `--concurrency`).
const SENDERS: usize = 64;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// CPU time (user + system) of a process, in clock ticks.
fn ticks(pid: &str) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // The fields after the command (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of stat(5); `rest` starts at field 3.
    field(11) + field(12)
}

/// Bytes this process has written through write(2) and its kind (`wchar` of proc(5)): the WAL's
/// frames and the checkpointer's copies on SQLite, what goes to the server on PostgreSQL.
fn written() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|io| {
            io.lines()
                .find_map(|l| l.strip_prefix("wchar:").map(|v| v.trim().parse().ok()))
                .flatten()
        })
        .unwrap_or(0)
}

/// CPU ticks of every process of `user` (by uid).
fn user_ticks(user: &str) -> u64 {
    let uid = std::process::Command::new("id")
        .args(["-u", user])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/status")).is_ok_and(|s| {
                s.lines()
                    .find(|l| l.starts_with("Uid:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    == Some(uid.as_str())
            })
        })
        .map(|p| ticks(&p))
        .sum()
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let database = arg(&args, "--database").expect("--database URL");
    let number = |name: &str, default: f64| {
        arg(&args, name).map_or(default, |v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} takes a number"))
        })
    };
    let events = number("--events", 100_000.0) as usize;
    let batch = (number("--batch", 32.0) as usize).max(1);
    let repeat = number("--repeat-callers", 0.3);
    let pg_user = arg(&args, "--pg-user");

    let tz = jiff::tz::TimeZone::get("Asia/Ho_Chi_Minh").expect("the zone");
    let options = ScenarioOptions {
        seed: 4,
        duplicates: 0.0,
        reorder: 0.0,
        timezone: tz.clone(),
        days: 1,
        repeat_callers: repeat,
        callers_pool: (events / 20).max(1) as u32,
        agents: scenario::AGENTS,
        hotlines: scenario::HOTLINES.len() as u32,
    };
    // 64 senders, each sending one call's events in order and then taking the next call; which
    // sender goes next is drawn (a fixed seed: the same order every run).
    let mut rng = fastrand::Rng::with_seed(7);
    let mut next_call = 0;
    let mut senders: Vec<std::collections::VecDeque<bytes::Bytes>> = Vec::new();
    let mut bodies = Vec::with_capacity(events);
    while bodies.len() < events {
        while senders.len() < SENDERS {
            let call = scenario::generate_call(next_call, &options);
            next_call += 1;
            senders.push(call.events.into_iter().map(|e| e.body).collect());
        }
        let s = rng.usize(0..senders.len());
        match senders[s].pop_front() {
            Some(body) => bodies.push(body),
            None => {
                senders.swap_remove(s);
            }
        }
    }
    let now = jiff::Timestamp::now().as_microsecond();
    let mut batches: Vec<Vec<Incoming>> = Vec::new();
    for (i, chunk) in bodies.chunks(batch).enumerate() {
        batches.push(
            chunk
                .iter()
                .map(|body| Incoming::Event {
                    event: Box::new(parse_body(body, &tz).expect("the simulator's bodies parse")),
                    received_at: now + i as i64 * 1000,
                })
                .collect(),
        );
    }

    if args.iter().any(|a| a == "--no-commit") {
        // What generating and parsing cost alone (to subtract from an instruction count of a
        // whole run, under valgrind).
        println!(
            "{}",
            serde_json::json!({"events": events, "batches": batches.len()})
        );
        return;
    }
    let store: Arc<dyn Store> = if database.starts_with("sqlite:") {
        Arc::new(SqliteStore::open_url(&database, MergeSettings::default()).expect("the store"))
    } else {
        Arc::new(
            PgStore::open(&database, MergeSettings::default())
                .await
                .expect("the store"),
        )
    };
    let own = || ticks("self");
    let pg = || pg_user.as_deref().map_or(0, user_ticks);
    let count = batches.len();
    let (a0, p0, w0, started) = (own(), pg(), written(), Instant::now());
    for b in batches {
        store.commit(b).await.expect("a commit");
    }
    let seconds = started.elapsed().as_secs_f64();
    let (a1, p1, w1) = (own(), pg(), written());
    // Clock ticks per second: 100 on every Linux this runs on (sysconf(_SC_CLK_TCK)).
    let per_event = |t: u64| t as f64 / 100.0 / events as f64 * 1e6;
    println!(
        "{}",
        serde_json::json!({
            "events": events,
            "batches": count,
            "batch": batch,
            "seconds": seconds,
            "alohook_cpu_us_per_event": per_event(a1 - a0),
            "postgres_cpu_us_per_event": pg_user.as_ref().map(|_| per_event(p1 - p0)),
            "bytes_written_per_event": (w1 - w0) / events as u64,
        })
    );
}
