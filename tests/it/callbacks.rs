//! The missed-call callback worklist: repeat misses, a call-back that arrives before the miss,
//! outbound attempts, closes by hand, masked numbers, filters and paging, any arrival order,
//! and the list rebuilt when the call records are recomputed.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::*;

/// One event of a call on 2026-11-02 (Asia/Ho_Chi_Minh): times `HH:MM:SS`, empty when unknown.
fn ev(id: &str, status: &str, dir: &str, caller: &str, hotline: &str, times: [&str; 3]) -> Value {
    let t = |s: &str| {
        if s.is_empty() {
            String::new()
        } else {
            format!("2026-11-02 {s}")
        }
    };
    call_event(
        id,
        status,
        dir,
        caller,
        "101",
        hotline,
        "",
        [&t(times[0]), &t(times[1]), &t(times[2])],
        "",
    )
}

fn miss(id: &str, caller: &str, hotline: &str, start: &str, end: &str) -> Value {
    ev(id, "missed", "inbound", caller, hotline, [start, "", end])
}

const A: &str = "0901111111";
const B: &str = "0902222222";
const MASKED: &str = "03899xxx";
const D: &str = "0904444444";

/// D's second miss: after its first was closed by hand (now), so long after.
fn d2() -> Value {
    call_event(
        "d2",
        "missed",
        "inbound",
        D,
        "101",
        "H2",
        "",
        ["2099-01-01 09:00:00", "", "2099-01-01 09:00:20"],
        "",
    )
}

/// Every event of the fixture but D's second miss, in the order Alohub sent them.
fn fixture() -> Vec<Value> {
    vec![
        // A: two misses (H1, H2), an unanswered call-back attempt, an answered call-back,
        // then a new miss.
        miss("a1", A, "H1", "09:00:00", "09:00:30"),
        miss("a2", A, "H2", "09:30:00", "09:30:10"),
        ev(
            "a3",
            "no_answer",
            "outbound",
            A,
            "",
            ["09:40:00", "", "09:40:30"],
        ),
        ev(
            "a4",
            "answered",
            "outbound",
            A,
            "",
            ["10:00:00", "10:00:10", ""],
        ),
        ev(
            "a4",
            "answered",
            "outbound",
            A,
            "",
            ["10:00:00", "10:00:10", "10:03:00"],
        ),
        miss("a5", A, "H1", "11:00:00", "11:00:20"),
        // B: the call-back's events arrive before the miss they answer.
        ev(
            "b2",
            "answered",
            "inbound",
            B,
            "H1",
            ["15:00:00", "15:00:05", "15:05:00"],
        ),
        miss("b1", B, "H1", "14:00:00", "14:00:20"),
        // A masked number: each miss on its own, whatever follows.
        miss("c1", MASKED, "H1", "12:00:00", "12:00:20"),
        miss("c2", MASKED, "H1", "12:30:00", "12:30:20"),
        ev(
            "c3",
            "answered",
            "inbound",
            MASKED,
            "H1",
            ["12:40:00", "12:40:05", "12:45:00"],
        ),
        // D: a miss, closed by hand below.
        miss("d1", D, "H2", "13:00:00", "13:00:20"),
    ]
}

async fn list(server: &TestServer, query: &str) -> Value {
    let (status, body) = server.get(&format!("/api/callbacks{query}")).await;
    assert_eq!(status, StatusCode::OK, "{query}: {body}");
    body
}

/// (phone, last missed call, state) of each item.
fn summary(page: &Value) -> Vec<(String, String, String)> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["phone"].as_str().unwrap().to_string(),
                i["last_missed_call_id"].as_str().unwrap().to_string(),
                i["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn s3(a: &str, b: &str, c: &str) -> (String, String, String) {
    (a.into(), b.into(), c.into())
}

async fn close(server: &TestServer, id: &str, body: &str) -> (StatusCode, Value) {
    let response = reqwest::Client::new()
        .post(server.url(&format!("/api/callbacks/{id}/close")))
        .bearer_auth(TOKEN)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Every item of `server`, page by page, without the age (it grows with the clock).
async fn every_item(server: &TestServer) -> Vec<Value> {
    every_item_by(server, 2).await
}

/// Every item, open and closed, oldest first, `limit` a page, without `age_seconds`.
pub async fn every_item_by(server: &TestServer, limit: usize) -> Vec<Value> {
    let mut items = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = list(server, &format!("?state=all&limit={limit}{cursor}")).await;
        for mut item in page["items"].as_array().unwrap().clone() {
            item.as_object_mut().unwrap().remove("age_seconds");
            items.push(item);
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => return items,
        }
    }
}

/// Runs `sql` on the test's store, beside the server.
async fn run_sql(db: &Db, sql: &str) {
    match db.database() {
        Some(url) => {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            let task = tokio::spawn(connection);
            client.batch_execute(sql).await.unwrap();
            drop(client);
            let _ = task.await;
        }
        None => {
            let conn = rusqlite::Connection::open(db.path().join("alohook.db")).unwrap();
            conn.busy_timeout(std::time::Duration::from_secs(10))
                .unwrap();
            conn.execute_batch(sql).unwrap();
        }
    }
}

crate::on_every_backend! {
async fn the_worklist_by_hand(db) {
    let server = TestServer::start(&db).await;
    for e in fixture() {
        server.send(&e).await;
    }
    // The default is the open items, oldest first miss first.
    let open = list(&server, "").await;
    assert_eq!(summary(&open), [
        s3("+84901111111", "a5", "open"),
        s3(MASKED, "c1", "open"),
        s3(MASKED, "c2", "open"),
        s3("+84904444444", "d1", "open"),
    ], "{open:#}");
    assert_eq!(open["next_cursor"], Value::Null);
    let a5 = &open["items"][0];
    assert_eq!(a5["phone_as_sent"], A);
    assert_eq!(a5["reachable"], true);
    assert_eq!(a5["missed_count"], 1);
    assert_eq!(a5["first_missed_at"], "2026-11-02T11:00:00+07:00");
    assert_eq!(a5["hotlines"], json!(["H1"]));
    assert_eq!(a5["attempts"], 0);
    assert!(a5["age_seconds"].as_i64().unwrap() > 0, "{a5}");
    assert_eq!((a5["closed_at"].clone(), a5["closed_reason"].clone(), a5["note"].clone()),
        (Value::Null, Value::Null, Value::Null));
    let masked = &open["items"][1];
    assert_eq!((masked["reachable"].clone(), masked["missed_count"].clone()), (json!(false), json!(1)));

    let closed = list(&server, "?state=closed").await;
    assert_eq!(summary(&closed), [
        s3("+84901111111", "a2", "closed"),
        s3("+84902222222", "b1", "closed"),
    ], "{closed:#}");
    let a = &closed["items"][0];
    assert_eq!(a["missed_count"], 2);
    assert_eq!(a["first_missed_at"], "2026-11-02T09:00:00+07:00");
    assert_eq!(a["last_missed_at"], "2026-11-02T09:30:00+07:00");
    assert_eq!(a["hotlines"], json!(["H1", "H2"]));
    assert_eq!((a["attempts"].clone(), a["last_attempt_at"].clone()),
        (json!(1), json!("2026-11-02T09:40:00+07:00")));
    assert_eq!(a["closed_at"], "2026-11-02T10:00:10+07:00", "the call-back's answer time");
    assert_eq!(a["closed_by_call_id"], "a4");
    assert_eq!(a["closed_reason"], "answered_outbound");
    assert_eq!(a["age_seconds"], Value::Null);
    let b = &closed["items"][1];
    assert_eq!((b["closed_by_call_id"].clone(), b["closed_reason"].clone()),
        (json!("b2"), json!("answered_inbound")), "a call-back that arrived first closes");

    // A close by hand, with a note; then a new miss opens a new item.
    let d1 = open["items"][3]["id"].as_str().unwrap().to_string();
    let (status, item) = close(&server, &d1, r#"{"note":"Đã gọi lại, khách hẹn mai"}"#).await;
    assert_eq!(status, StatusCode::OK, "{item}");
    assert_eq!((item["state"].clone(), item["closed_reason"].clone(), item["note"].clone()),
        (json!("closed"), json!("manual"), json!("Đã gọi lại, khách hẹn mai")));
    assert!(item["closed_at"].is_string());
    let (status, again) = close(&server, &d1, "").await;
    assert_eq!((status, again["note"].clone()), (StatusCode::OK, item["note"].clone()),
        "closing a closed item changes nothing");
    server.send(&d2()).await;
    let open = list(&server, "?state=open&sort=newest").await;
    assert_eq!(summary(&open)[0], s3("+84904444444", "d2", "open"));
    assert_ne!(open["items"][0]["id"], json!(d1));
    let (status, error) = close(&server, "cb_nothing", "").await;
    assert_eq!((status, error["error"].clone()), (StatusCode::NOT_FOUND, json!("not_found")));
    let (status, error) = close(&server, &d1, r#"{"note":5}"#).await;
    assert_eq!((status, error["parameter"].clone()), (StatusCode::BAD_REQUEST, json!("note")));

    // Filters: hotline (a miss on it), the first miss's range, and paging.
    // A number in any usual form: does this customer have an open callback?
    let a = list(&server, "?state=open&phone=%2B84901111111").await;
    assert_eq!(summary(&a), [s3("+84901111111", "a5", "open")]);
    let a = list(&server, "?state=all&phone=84901111111").await;
    assert_eq!(a["items"].as_array().unwrap().len(), 2);
    let h2 = list(&server, "?state=all&hotline=H2").await;
    assert_eq!(summary(&h2).iter().map(|s| s.1.as_str()).collect::<Vec<_>>(), ["a2", "d1", "d2"]);
    let morning = list(&server, "?state=all&from=2026-11-02T08:00:00%2B07:00&to=2026-11-02T12:00:00%2B07:00").await;
    assert_eq!(summary(&morning).iter().map(|s| s.1.as_str()).collect::<Vec<_>>(), ["a2", "a5", "c1"]);
    let all = every_item(&server).await;
    let order: Vec<&str> = all.iter().map(|i| i["last_missed_call_id"].as_str().unwrap()).collect();
    assert_eq!(order, ["a2", "a5", "c1", "c2", "d1", "b1", "d2"]);
    // Open and closed items merged newest first too, page by page, and within a hotline.
    for (query, want) in [
        ("?state=all&sort=newest&limit=2", vec!["d2", "b1", "d1", "c2", "c1", "a5", "a2"]),
        ("?state=all&sort=newest&limit=1&hotline=H2", vec!["d2", "d1", "a2"]),
        ("?state=all&limit=1&hotline=H1", vec!["a2", "a5", "c1", "c2", "b1"]),
    ] {
        let mut got = Vec::new();
        let mut cursor = String::new();
        loop {
            let page = list(&server, &format!("{query}{cursor}")).await;
            got.extend(summary(&page).into_iter().map(|s| s.1));
            match page["next_cursor"].as_str() {
                Some(next) => cursor = format!("&cursor={next}"),
                None => break,
            }
        }
        assert_eq!(got, want, "{query}");
    }
    for (query, parameter) in [("?state=maybe", "state"), ("?sort=up", "sort"),
        ("?cursor=nope", "cursor"), ("?from=soon", "from"), ("?page=2", "page")] {
        let (status, body) = server.get(&format!("/api/callbacks{query}")).await;
        assert_eq!((status, body["parameter"].clone()), (StatusCode::BAD_REQUEST, json!(parameter)),
            "{query}: {body}");
    }
    server.stop().await;
}

/// The same events in another order, some twice, into another store: the same worklist.
async fn any_arrival_order_gives_the_same_worklist(db) {
    let seed = fastrand::u64(..);
    println!("seed {seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let other = if db.database().is_some() { Db::postgres().await } else { Db::sqlite() };
    let in_order = TestServer::start(&db).await;
    let shuffled = TestServer::start(&other).await;
    let mut events = fixture();
    events.push(d2());
    for e in &events {
        in_order.send(e).await;
    }
    let resent: Vec<Value> = events.iter().filter(|_| rng.bool()).cloned().collect();
    events.extend(resent);
    rng.shuffle(&mut events);
    for e in &events {
        shuffled.send(e).await;
    }
    let expected = every_item(&in_order).await;
    assert_eq!(expected.len(), 6, "{expected:#?}");
    assert_eq!(every_item(&shuffled).await, expected, "seed {seed}");
    // The hotline filter reads rows kept beside the items (only those that change are
    // written): they follow the items' hotlines whatever the order the misses came in.
    for hotline in ["H1", "H2"] {
        let want: Vec<&Value> = expected
            .iter()
            .filter(|i| i["hotlines"].as_array().unwrap().contains(&json!(hotline)))
            .map(|i| &i["id"])
            .collect();
        assert!(!want.is_empty());
        for server in [&in_order, &shuffled] {
            let got = list(server, &format!("?state=all&limit=100&hotline={hotline}")).await;
            let got: Vec<&Value> = got["items"].as_array().unwrap().iter().map(|i| &i["id"]).collect();
            assert_eq!(got, want, "{hotline}, seed {seed}");
        }
    }
    in_order.stop().await;
    shuffled.stop().await;
    other.cleanup().await;
}

/// A miss dated after the server's clock (a PBX clock ahead, a wrong zone): closing its item by
/// hand still closes it, and a cursor of one sort order is refused for the other.
async fn a_close_by_hand_closes_a_miss_dated_later(db) {
    let server = TestServer::start(&db).await;
    server.send(&call_event("f1", "missed", "inbound", A, "101", "H1", "",
        ["2098-05-01 09:00:00", "", "2098-05-01 09:00:20"], "")).await;
    server.send(&call_event("f2", "missed", "inbound", A, "101", "H1", "",
        ["2099-05-01 09:00:00", "", "2099-05-01 09:00:20"], "")).await;
    server.send(&miss("g1", B, "H1", "09:00:00", "09:00:20")).await;
    let open = list(&server, "?limit=1").await;
    let id = open["items"][0]["id"].as_str().unwrap().to_string();
    let (status, item) = close(&server, &id, "").await;
    assert_eq!((status, item["state"].clone()), (StatusCode::OK, json!("closed")), "{item}");
    let (status, item) = close(&server, list(&server, "").await["items"][0]["id"].as_str().unwrap(), "").await;
    assert_eq!((status, item["missed_count"].clone(), item["state"].clone()),
        (StatusCode::OK, json!(2), json!("closed")), "both future misses, one item: {item}");
    assert_eq!(item["closed_at"], "2099-05-01T09:00:00+07:00", "not before its last miss");
    assert_eq!(list(&server, "").await["items"], json!([]));
    // Paging: a cursor of the oldest-first order is refused for newest first.
    let first = list(&server, "?state=all&limit=1").await;
    let cursor = first["next_cursor"].as_str().unwrap();
    let (status, body) = server.get(&format!("/api/callbacks?state=all&sort=newest&cursor={cursor}")).await;
    assert_eq!((status, body["parameter"].clone()), (StatusCode::BAD_REQUEST, json!("cursor")));
    server.stop().await;
}

/// An item whose stored JSON does not parse (a hand edit, a bug of another version): the next
/// change of its number writes it again, and its hotline rows, found by item id, follow it.
async fn an_item_that_does_not_parse_is_written_again(db) {
    let server = TestServer::start(&db).await;
    server.send(&miss("m1", A, "H1", "09:00:00", "09:00:20")).await;
    run_sql(&db, "UPDATE callbacks SET body = '{not json'").await;
    // A repeat miss on another hotline, then one more event of the number.
    server.send(&miss("m2", A, "H2", "09:10:00", "09:10:20")).await;
    let items = every_item(&server).await;
    assert_eq!(items.len(), 1, "{items:#?}");
    assert_eq!((items[0]["missed_count"].clone(), items[0]["hotlines"].clone()),
        (json!(2), json!(["H1", "H2"])));
    for hotline in ["H1", "H2"] {
        let listed = list(&server, &format!("?state=all&hotline={hotline}")).await;
        assert_eq!(listed["items"].as_array().unwrap().len(), 1, "{hotline}: {listed}");
    }
    // Corrupt again, then the miss turns out answered (a later event of the same call): the
    // item goes, and so do its rows.
    run_sql(&db, "UPDATE callbacks SET body = '{not json'").await;
    server.send(&ev("m1", "answered", "inbound", A, "H1", ["09:00:00", "09:00:05", "09:00:20"])).await;
    server.send(&ev("m2", "answered", "inbound", A, "H2", ["09:10:00", "09:10:05", "09:10:20"])).await;
    assert_eq!(every_item(&server).await, Vec::<Value>::new());
    let rows = match db.database() {
        Some(_) => None,
        None => Some(
            rusqlite::Connection::open(db.path().join("alohook.db"))
                .unwrap()
                .query_row("SELECT count(*) FROM callback_hotlines", [], |r| r.get::<_, i64>(0))
                .unwrap(),
        ),
    };
    if let Some(rows) = rows {
        assert_eq!(rows, 0);
    }
    for hotline in ["H1", "H2"] {
        let listed = list(&server, &format!("?state=all&hotline={hotline}")).await;
        assert_eq!(listed["items"], json!([]), "{hotline}");
    }
    server.stop().await;
}

/// A store whose calls came before the worklist existed (as after the upgrade that adds it):
/// the list is built from them at the next start, once.
async fn the_worklist_is_built_from_calls_stored_before_it(db) {
    let server = TestServer::start(&db).await;
    for e in fixture() {
        server.send(&e).await;
    }
    let expected = every_item(&server).await;
    assert_eq!(expected.len(), 6);
    server.stop().await;
    let forget = "DELETE FROM callback_hotlines; DELETE FROM callbacks; \
        DELETE FROM alohook_meta WHERE key = 'callbacks_built';";
    match db.database() {
        Some(url) => {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
            let task = tokio::spawn(connection);
            client.batch_execute(forget).await.unwrap();
            drop(client);
            let _ = task.await;
        }
        None => rusqlite::Connection::open(db.path().join("alohook.db"))
            .unwrap()
            .execute_batch(forget)
            .unwrap(),
    }
    let server = TestServer::start(&db).await;
    assert_eq!(every_item(&server).await, expected);
    server.stop().await;
}

/// A status that ends calls only under other settings: when the records are recomputed at
/// start, the worklist follows them.
async fn the_worklist_follows_recomputed_records(db) {
    let server = TestServer::start(&db).await;
    server.send(&ev("x1", "abandoned", "inbound", A, "H1", ["09:00:00", "", ""])).await;
    assert_eq!(list(&server, "?state=all").await["items"], json!([]), "not ended: no miss");
    server.stop().await;
    let mut ending = settings(&db);
    ending.final_statuses = vec!["abandoned".into(), "missed".into()];
    let server = TestServer::start_with(ending, None).await;
    assert_eq!(summary(&list(&server, "").await), [s3("+84901111111", "x1", "open")]);
    server.stop().await;
}
}
