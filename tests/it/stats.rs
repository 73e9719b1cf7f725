//! `GET /api/stats`: every figure and group against a day of calls computed by hand, the same
//! whatever order (and however many times) the events arrive.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::*;

/// The fixture: every call's events, in the order Alohub would send them.
///
/// On Monday 2026-11-02 (Asia/Ho_Chi_Minh):
/// - C1 inbound, hotline H1, agent lan: rang 10 s, talked 100 s, held 20 s
/// - C2 inbound, H1, extension 101 (no user name): rang 30 s, talked 60 s
/// - C3 inbound, H2, 101: missed after 40 s (abandoned)
/// - C4 inbound, H2, 102: missed after 3 s (a short abandon)
/// - C5 inbound, H1, no agent: missed, no end time (abandoned, ring unknown)
/// - C6 outbound, no hotline, lan: rang 8 s, talked 50 s
/// - C7 inbound, H1, minh: answered, still talking (in progress)
/// - C9 inbound, H1, minh: 23:59:50, answered 00:00:00 on Tuesday (10 s), talked 120 s, hold 0
///
/// and C8 inbound, H2, missed with no start time (undated); C10 inbound, H1, 103, missed after
/// 30 s on Wednesday 2026-11-04.
fn fixture() -> Vec<Vec<Value>> {
    let d = |t: &str| format!("2026-11-02 {t}");
    let ringing = |id: &str, dir: &str, dest: &str, hot: &str, user: &str, start: &str| {
        let caller = match id {
            "C1" => "0901234567".to_string(),
            _ => format!("090{}000000", &id[1..]),
        };
        call_event(
            id,
            "ringing",
            dir,
            &caller,
            dest,
            hot,
            user,
            [start, "", ""],
            "",
        )
    };
    vec![
        vec![
            ringing("C1", "inbound", "100", "H1", "lan", &d("09:00:00")),
            call_event(
                "C1",
                "answered",
                "inbound",
                "0901234567",
                "100",
                "H1",
                "lan",
                [&d("09:00:00"), &d("09:00:10"), ""],
                "",
            ),
            call_event(
                "C1",
                "answered",
                "inbound",
                "0901234567",
                "100",
                "H1",
                "lan",
                [&d("09:00:00"), &d("09:00:10"), &d("09:01:50")],
                "20",
            ),
        ],
        vec![
            call_event(
                "C2",
                "answered",
                "inbound",
                "0902000000",
                "101",
                "H1",
                "",
                [&d("09:10:00"), &d("09:10:30"), ""],
                "",
            ),
            call_event(
                "C2",
                "answered",
                "inbound",
                "0902000000",
                "101",
                "H1",
                "",
                [&d("09:10:00"), &d("09:10:30"), &d("09:11:30")],
                "",
            ),
        ],
        vec![
            ringing("C3", "inbound", "101", "H2", "", &d("10:00:00")),
            call_event(
                "C3",
                "missed",
                "inbound",
                "0903000000",
                "101",
                "H2",
                "",
                [&d("10:00:00"), "", &d("10:00:40")],
                "",
            ),
        ],
        vec![call_event(
            "C4",
            "missed",
            "inbound",
            "0904000000",
            "102",
            "H2",
            "",
            [&d("10:05:00"), "", &d("10:05:03")],
            "",
        )],
        vec![
            ringing("C5", "inbound", "", "H1", "", &d("11:00:00")),
            call_event(
                "C5",
                "missed",
                "inbound",
                "0905000000",
                "",
                "H1",
                "",
                [&d("11:00:00"), "", ""],
                "",
            ),
        ],
        vec![
            call_event(
                "C6",
                "answered",
                "outbound",
                "0906000000",
                "200",
                "",
                "lan",
                [&d("12:00:00"), &d("12:00:08"), ""],
                "",
            ),
            call_event(
                "C6",
                "answered",
                "outbound",
                "0906000000",
                "200",
                "",
                "lan",
                [&d("12:00:00"), &d("12:00:08"), &d("12:00:58")],
                "",
            ),
        ],
        vec![
            ringing("C7", "inbound", "300", "H1", "minh", &d("13:00:00")),
            call_event(
                "C7",
                "answered",
                "inbound",
                "0907000000",
                "300",
                "H1",
                "minh",
                [&d("13:00:00"), &d("13:00:05"), ""],
                "",
            ),
        ],
        vec![call_event(
            "C8",
            "missed",
            "inbound",
            "0908000000",
            "101",
            "H2",
            "",
            ["", "", ""],
            "",
        )],
        vec![
            call_event(
                "C9",
                "answered",
                "inbound",
                "0909000000",
                "300",
                "H1",
                "minh",
                [&d("23:59:50"), "2026-11-03 00:00:00", ""],
                "",
            ),
            call_event(
                "C9",
                "answered",
                "inbound",
                "0909000000",
                "300",
                "H1",
                "minh",
                [&d("23:59:50"), "2026-11-03 00:00:00", "2026-11-03 00:02:00"],
                "0",
            ),
        ],
        vec![call_event(
            "C10",
            "missed",
            "inbound",
            "0910000000",
            "103",
            "H1",
            "",
            ["2026-11-04 08:00:00", "", "2026-11-04 08:00:30"],
            "",
        )],
    ]
}

async fn stats(server: &TestServer, query: &str) -> Value {
    let (status, body) = server.get(&format!("/api/stats{query}")).await;
    assert_eq!(status, StatusCode::OK, "{query}: {body}");
    body
}

fn keys_and_calls(answer: &Value) -> Vec<(Value, u64)> {
    answer["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| (g["key"].clone(), g["calls"].as_u64().unwrap()))
        .collect()
}

/// Every group_by over the three days, and the fixture's day alone with filters: what the
/// permutation test compares.
const QUERIES: &[&str] = &[
    "",
    "?from=2026-11-02&to=2026-11-02",
    "?from=2026-11-02&to=2026-11-04&group_by=day",
    "?from=2026-11-02&to=2026-11-02&group_by=agent",
    "?from=2026-11-02&to=2026-11-02&group_by=hotline",
    "?from=2026-11-02&to=2026-11-02&group_by=direction",
    "?from=2026-11-02&to=2026-11-02&group_by=status",
    "?from=2026-11-02T08:30:00%2B07:00&to=2026-11-02T10:10:00%2B07:00&group_by=hour",
    "?group_by=hour_of_day",
    "?group_by=weekday",
    "?hotline=H2&group_by=agent",
    "?direction=outbound",
];

crate::on_every_backend! {
/// The fixture's day, figure by figure, as the README defines them.
async fn every_figure_of_a_day_by_hand(db) {
    let server = TestServer::start(&db).await;
    for call in fixture() {
        for e in call {
            server.send(&e).await;
        }
    }
    let day = stats(&server, "?from=2026-11-02&to=2026-11-02").await;
    assert_eq!(day["from"], "2026-11-02T00:00:00+07:00");
    assert_eq!(day["to"], "2026-11-02T23:59:59+07:00");
    assert_eq!(day["time_zone"], "Asia/Ho_Chi_Minh");
    assert_eq!(day["short_abandon_seconds"], 5);
    assert_eq!(day["service_level_seconds"], 20);
    assert_eq!(day["undated"], 1, "C8, whatever the range");
    let groups = day["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1, "{day}");
    let g = &groups[0];
    let expected = json!({
        "key": null, "calls": 8, "ended": 7, "in_progress": 1, "answered": 4, "unanswered": 3,
        "answer_rate": 4.0 / 7.0, "inbound": 6, "inbound_answered": 3, "abandoned": 2,
        "short_abandoned": 1, "abandon_rate": 0.4, "service_level": 0.4,
        "asa_seconds": 50.0 / 3.0, "aht_seconds": 82.5, "avg_hold_seconds": 10.0,
        "talk_seconds_total": 330, "longest_wait_seconds": 40, "outbound": 1,
        "outbound_answered": 1
    });
    assert_eq!(g, &expected, "{day:#}");

    // By agent: the user name, else the extension; null for neither; null last.
    let agents = stats(&server, "?from=2026-11-02&to=2026-11-02&group_by=agent").await;
    assert_eq!(keys_and_calls(&agents), [(json!("101"), 2), (json!("102"), 1),
        (json!("lan"), 2), (json!("minh"), 2), (Value::Null, 1)]);
    let lan = &agents["groups"][2];
    assert_eq!((lan["answered"].clone(), lan["aht_seconds"].clone(), lan["outbound"].clone()),
        (json!(2), json!(75.0), json!(1)));
    let hotlines = stats(&server, "?from=2026-11-02&to=2026-11-02&group_by=hotline").await;
    assert_eq!(keys_and_calls(&hotlines), [(json!("H1"), 5), (json!("H2"), 2), (Value::Null, 1)]);
    let statuses = stats(&server, "?from=2026-11-02&to=2026-11-02&group_by=status").await;
    assert_eq!(keys_and_calls(&statuses), [(json!("answered"), 5), (json!("missed"), 3)]);
    let directions = stats(&server, "?from=2026-11-02&to=2026-11-02&group_by=direction").await;
    assert_eq!(keys_and_calls(&directions), [(json!("inbound"), 7), (json!("outbound"), 1)]);

    // A time series has every bucket of the range, empty ones included; C9 rang across
    // midnight and belongs to the day it started.
    let days = stats(&server, "?from=2026-11-02&to=2026-11-04&group_by=day").await;
    assert_eq!(keys_and_calls(&days), [(json!("2026-11-02"), 8), (json!("2026-11-03"), 0),
        (json!("2026-11-04"), 1)]);
    assert_eq!(days["groups"][1]["answer_rate"], Value::Null, "a rate over no calls");
    let hours = stats(&server,
        "?from=2026-11-02T08:30:00%2B07:00&to=2026-11-02T10:10:00%2B07:00&group_by=hour").await;
    assert_eq!(keys_and_calls(&hours), [(json!("2026-11-02T08:00"), 0),
        (json!("2026-11-02T09:00"), 2), (json!("2026-11-02T10:00"), 2)]);
    let by_hour = stats(&server, "?group_by=hour_of_day").await;
    assert_eq!(keys_and_calls(&by_hour), [(json!("8"), 1), (json!("9"), 2), (json!("10"), 2),
        (json!("11"), 1), (json!("12"), 1), (json!("13"), 1), (json!("23"), 1)]);
    let weekdays = stats(&server, "?group_by=weekday").await;
    assert_eq!(keys_and_calls(&weekdays), [(json!("mon"), 8), (json!("wed"), 1)]);
    // With no range, the series runs from the first call to the last.
    let all_days = stats(&server, "?group_by=day").await;
    assert_eq!(all_days["groups"].as_array().unwrap().len(), 3, "{all_days}");
    assert_eq!(all_days["from"], "2026-11-02T09:00:00+07:00");
    assert_eq!(all_days["to"], "2026-11-04T08:00:00+07:00");

    // The filters of /api/calls; undated counts the calls they match with no start time.
    let h2 = stats(&server, "?hotline=H2").await;
    assert_eq!((h2["groups"][0]["calls"].clone(), h2["undated"].clone()), (json!(2), json!(1)));
    let outbound = stats(&server, "?direction=outbound").await;
    assert_eq!((outbound["groups"][0]["calls"].clone(), outbound["undated"].clone()),
        (json!(1), json!(0)));
    let lan_only = stats(&server, "?user_name=lan").await;
    assert_eq!(lan_only["groups"][0]["calls"], 2);
    // The agent filter selects what group_by=agent groups: "101" is C2 and C3 (no user name).
    let agent = stats(&server, "?agent=101&from=2026-11-02&to=2026-11-02").await;
    assert_eq!(agent["groups"][0]["calls"], 2, "{agent}");
    let (status, listed) = server.get("/api/calls?agent=lan").await;
    assert_eq!((status, listed["items"].as_array().unwrap().len()), (StatusCode::OK, 2));
    // A range with no calls: one group of zeros, its figures null.
    let empty = stats(&server, "?from=2025-01-01&to=2025-01-01").await;
    assert_eq!(empty["groups"][0]["calls"], 0);
    assert_eq!(empty["groups"][0]["service_level"], Value::Null);
    assert_eq!(empty["groups"][0]["talk_seconds_total"], 0);
    server.stop().await;
}

/// Bad parameters are 400 `invalid_parameter` naming the parameter.
async fn bad_parameters_are_named(db) {
    let server = TestServer::start(&db).await;
    for (query, parameter) in [
        ("?group_by=month", "group_by"),
        ("?from=yesterday", "from"),
        ("?from=2026-11-03&to=2026-11-02", "to"),
        ("?limit=5", "limit"),
        ("?direction=sideways", "direction"),
        ("?from=2000-01-01&to=2099-12-31&group_by=hour", "group_by"),
    ] {
        let (status, body) = server.get(&format!("/api/stats{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(body["error"], "invalid_parameter", "{query}: {body}");
        assert_eq!(body["parameter"], parameter, "{query}: {body}");
    }
    let (status, _) = server.get_with_auth("/api/stats", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    server.stop().await;
}

/// The same events in another order, some sent twice, into another store: the same figures,
/// for every grouping.
async fn any_arrival_order_gives_the_same_figures(db) {
    let seed = fastrand::u64(..);
    println!("seed {seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let other = if db.database().is_some() { Db::postgres().await } else { Db::sqlite() };
    let in_order = TestServer::start(&db).await;
    let shuffled = TestServer::start(&other).await;
    let mut events: Vec<Value> = Vec::new();
    for call in fixture() {
        for e in call {
            in_order.send(&e).await;
            events.push(e);
        }
    }
    let resent: Vec<Value> = events.iter().filter(|_| rng.bool()).cloned().collect();
    events.extend(resent);
    rng.shuffle(&mut events);
    for e in &events {
        shuffled.send(e).await;
    }
    for query in QUERIES {
        assert_eq!(stats(&in_order, query).await, stats(&shuffled, query).await,
            "seed {seed}: {query}");
    }
    in_order.stop().await;
    shuffled.stop().await;
    other.cleanup().await;
}
}
