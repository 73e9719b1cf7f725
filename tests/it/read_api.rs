use std::collections::{BTreeSet, HashMap};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::*;

fn event(call_id: &str, fields: Value) -> Value {
    let mut body = json!({"call_id": call_id, "call_status": "answered", "eventType": "call"});
    for (k, v) in fields.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

/// Four calls that differ in every filterable field.
async fn seed(server: &TestServer) {
    let events = [
        event(
            "c1",
            json!({"direction": "inbound", "hotline": "19001234", "userName": "agent01",
            "destination_number": "101", "caller_number": "0389000001",
            "starttime": "2024-01-10 10:00:00", "answertime": "2024-01-10 10:00:05",
            "endtime": "2024-01-10 10:03:00", "total_duration": "175"}),
        ),
        event(
            "c2",
            json!({"direction": "outbound", "userName": "agent02", "call_status": "missed",
            "destination_number": "102", "caller_number": "+84389000002", "transactionID": "TX-2",
            "starttime": "2024-01-11 09:00:00"}),
        ),
        event(
            "c3",
            json!({"direction": "Inbound", "hotline": "19005678", "userName": "agent01",
            "destination_number": "101", "caller_number": "0912000003",
            "starttime": "2024-01-12 20:00:00", "answertime": "2024-01-12 20:00:09"}),
        ),
        event(
            "c4",
            json!({"call_status": "queued", "caller_number": "03899xxx"}),
        ),
    ];
    for e in &events {
        server.send(e).await;
    }
}

async fn ids(server: &TestServer, query: &str) -> Vec<String> {
    let (status, page) = server.get(&format!("/api/calls?{query}")).await;
    assert_eq!(status, StatusCode::OK, "{query}: {page}");
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["call_id"].as_str().unwrap().to_string())
        .collect()
}

crate::on_every_backend! {
async fn filters(db) {
    let server = TestServer::start(&db).await;
    seed(&server).await;
    let cases: &[(&str, &[&str])] = &[
        ("", &["c3", "c2", "c1", "c4"]),
        ("status=missed", &["c2"]),
        ("status=MISSED", &["c2"]),
        ("status=Answered", &["c3", "c1"]),
        ("status=answered", &["c3", "c1"]),
        ("phase=ended", &["c2", "c1"]),
        ("phase=in_progress", &["c3"]),
        ("phase=ringing", &["c4"]),
        ("direction=inbound", &["c3", "c1"]),
        ("direction=OUTBOUND", &["c2"]),
        ("hotline=19001234", &["c1"]),
        ("user_name=agent01", &["c3", "c1"]),
        ("destination_number=101", &["c3", "c1"]),
        ("transaction_id=TX-2", &["c2"]),
        ("phone=0389000001", &["c1"]),
        ("phone=%2B84389000001", &["c1"]),
        ("phone=84389000001", &["c1"]),
        ("phone=0389000002", &["c2"]),
        ("phone=03899xxx", &["c4"]),
        ("phone=102", &["c2"]),
        ("from=2024-01-11", &["c3", "c2"]),
        ("to=2024-01-11", &["c2", "c1"]),
        ("from=2024-01-11&to=2024-01-11", &["c2"]),
        ("to=2024-01-11T09:00:00%2B07:00", &["c2", "c1"]),
        ("to=2024-01-11T01:59:59Z", &["c1"]),
        ("from=2024-01-11T02:00:00Z", &["c3", "c2"]),
        // An unencoded `+` arrives as a space; it is read as the `+` it was.
        ("from=2024-01-11T09:00:00+07:00", &["c3", "c2"]),
        ("to=2024-01-11T09:00:00+07:00", &["c2", "c1"]),
        ("user_name=agent01&hotline=19005678", &["c3"]),
        ("status=missed&direction=inbound", &[]),
        ("status=", &["c3", "c2", "c1", "c4"]),
    ];
    for (query, expected) in cases {
        assert_eq!(ids(&server, query).await, *expected, "query {query:?}");
    }
    server.stop().await;
}
}

crate::on_every_backend! {
async fn the_call_object_has_exactly_the_documented_fields(db) {
    let server = TestServer::start(&db).await;
    seed(&server).await;
    let call = server.call("c4").await;
    let keys: BTreeSet<&str> = call
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let expected: BTreeSet<&str> = [
        "call_id",
        "call_status",
        "phase",
        "direction",
        "caller_number",
        "destination_number",
        "hotline",
        "user_name",
        "transaction_id",
        "object_id",
        "start_time",
        "answer_time",
        "end_time",
        "hangup_by",
        "total_duration",
        "holding_duration",
        "ring_seconds",
        "talk_seconds",
        "recording_url",
        "event_count",
        "first_received_at",
        "last_received_at",
    ]
    .into_iter()
    .collect();
    assert_eq!(keys, expected);
    assert_eq!(call["start_time"], Value::Null);
    assert_eq!(call["hotline"], Value::Null);

    let (status, body) = server.get("/api/calls/nope").await;
    assert_eq!(
        (status, body),
        (StatusCode::NOT_FOUND, json!({"error": "not_found"}))
    );
    let (status, _) = server.get("/api/calls/nope/events").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    server.stop().await;
}
}

crate::on_every_backend! {
async fn bad_parameters_are_named(db) {
    let server = TestServer::start(&db).await;
    for (query, name) in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("phase=done", "phase"),
        ("from=yesterday", "from"),
        ("to=2024-02-30", "to"),
        ("cursor=garbage", "cursor"),
        ("colour=red", "colour"),
        ("status=a&status=b", "status"),
        ("direction=sideways", "direction"),
    ] {
        let (status, body) = server.get(&format!("/api/calls?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(body["error"], "invalid_parameter", "{query}");
        assert_eq!(body["parameter"], name, "{query}: {body}");
        assert!(
            body["detail"].as_str().unwrap().contains(name),
            "{query}: {body}"
        );
    }
    let (status, body) = server.get("/api/rejected?cursor=x").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["detail"].as_str().unwrap().contains("cursor"));
    // A path that is not UTF-8 once decoded: JSON like every other error.
    let response = server
        .client
        .get(server.url("/api/calls/%FF"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "invalid_parameter");
    assert_eq!(body["parameter"], "call_id");
    assert_eq!(ids(&server, "limit=1000").await.len(), 0);
    server.stop().await;
}
}

crate::on_every_backend! {
async fn api_token_and_webhook_key_are_separate(db) {
    let server = TestServer::start(&db).await;
    seed(&server).await;
    let key_bearer = format!("Bearer {KEY}");
    for path in [
        "/api/calls",
        "/api/calls/c1",
        "/api/calls/c1/events",
        "/api/rejected",
        "/api/anything",
    ] {
        for auth in [
            None,
            Some(KEY),
            Some(key_bearer.as_str()),
            Some(TOKEN),
            Some("Bearer nope"),
        ] {
            let mut request = server.client.get(server.url(path));
            if let Some(auth) = auth {
                request = request.header("authorization", auth);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{path} with {auth:?}");
            assert_eq!(
                response.headers()["www-authenticate"],
                "Bearer realm=\"alohook\"",
                "{path}"
            );
            let body: Value = response.json().await.unwrap();
            assert_eq!(body, json!({"error": "unauthorized"}));
        }
    }
    let (status, _) = server.get("/api/calls/c1").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = server.get("/api/anything").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = server
        .post_with_auth(
            in_progress("x").to_string(),
            Some(&format!("Bearer {TOKEN}")),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    for path in ["/healthz", "/readyz", "/metrics"] {
        let response = server.client.get(server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
    server.stop().await;
}
}

/// A call with a start time `minutes` after a fixed origin.
fn call_at(call_id: &str, minutes: i64) -> Value {
    let (h, m) = (minutes / 60, minutes % 60);
    event(
        call_id,
        json!({"starttime": format!("2024-03-01 {h:02}:{m:02}:00")}),
    )
}

crate::on_every_backend! {
async fn cursor_paging_returns_every_call_once_while_events_arrive(db) {
    let server = TestServer::start(&db).await;
    // 30 calls; several share a start time so the tie-break matters.
    let mut original = BTreeSet::new();
    for i in 0..30 {
        let id = format!("p{i:02}");
        server.send(&call_at(&id, (i / 3) * 7 + 60)).await;
        original.insert(id);
    }
    server
        .send(&event("p-nostart", json!({"call_status": "queued"})))
        .await;
    original.insert("p-nostart".to_string());

    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut order = Vec::new();
    let mut cursor: Option<String> = None;
    let mut page_no = 0;
    loop {
        let query = match &cursor {
            Some(c) => format!("/api/calls?limit=7&cursor={c}"),
            None => "/api/calls?limit=7".to_string(),
        };
        let (status, page) = server.get(&query).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        for call in page["items"].as_array().unwrap() {
            let id = call["call_id"].as_str().unwrap().to_string();
            order.push((call["start_time"].clone(), id.clone()));
            *seen.entry(id).or_default() += 1;
        }
        // Between pages: new calls before and after the cursor, new events for seen and unseen
        // calls (which change their status, phase and event count), and resends.
        page_no += 1;
        server
            .send(&call_at(&format!("new-early-{page_no}"), 1))
            .await;
        server
            .send(&call_at(&format!("new-late-{page_no}"), 1000))
            .await;
        for i in [page_no * 2, 29 - page_no * 2] {
            let id = format!("p{i:02}");
            let mut update = call_at(&id, (i / 3) * 7 + 60);
            update["endtime"] = json!("2024-03-01 23:00:00");
            update["call_status"] = json!(format!("done-{page_no}"));
            server.send(&update).await;
            server.send(&update).await;
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    for id in &original {
        assert_eq!(seen.get(id), Some(&1), "{id} seen {:?} times", seen.get(id));
    }
    assert!(seen.values().all(|n| *n == 1), "no call twice: {seen:?}");
    // Newest start first, the call without a start time last.
    assert_eq!(order.last().unwrap().1, "p-nostart");
    let starts: Vec<&str> = order.iter().filter_map(|(s, _)| s.as_str()).collect();
    let mut sorted = starts.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(starts, sorted);
    server.stop().await;
}
}

crate::on_every_backend! {
async fn rejected_listing_pages(db) {
    let server = TestServer::start(&db).await;
    for i in 0..5 {
        server.post(format!("broken {i}")).await;
    }
    let (_, first) = server.get("/api/rejected?limit=3").await;
    let bodies: Vec<&str> = first["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, ["broken 4", "broken 3", "broken 2"]);
    let cursor = first["next_cursor"].as_str().unwrap();
    let (_, second) = server
        .get(&format!("/api/rejected?limit=3&cursor={cursor}"))
        .await;
    let bodies: Vec<&str> = second["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, ["broken 1", "broken 0"]);
    assert_eq!(second["next_cursor"], Value::Null);
    let item = &second["items"][0];
    for field in [
        "id",
        "reason",
        "detail",
        "received_at",
        "deliveries",
        "body",
    ] {
        assert!(item.get(field).is_some(), "{field}");
    }
    server.stop().await;
}
}

crate::on_every_backend! {
/// A call first seen without a start time lists last; when a later event brings one (newer than
/// every other call), it must not jump ahead of a pager that is already past the top.
async fn a_call_that_gets_its_start_time_late_keeps_its_place(db) {
    let server = TestServer::start(&db).await;
    for (i, id) in ["late-a", "late-b", "late-c"].iter().enumerate() {
        server.send(&call_at(id, 60 + i as i64)).await;
    }
    server
        .send(&event("late-x", json!({"call_status": "ringing"})))
        .await;
    let (_, first) = server.get("/api/calls?limit=2").await;
    let mut seen: Vec<String> = first["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["call_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(seen, ["late-c", "late-b"]);
    // Now the call's start time arrives, later than every other call's.
    server
        .send(&event("late-x", json!({"call_status": "answered", "starttime": "2024-03-01 23:00:00"})))
        .await;
    let mut cursor = first["next_cursor"].as_str().map(str::to_string);
    while let Some(c) = cursor {
        let (status, page) = server.get(&format!("/api/calls?limit=2&cursor={c}")).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        for call in page["items"].as_array().unwrap() {
            seen.push(call["call_id"].as_str().unwrap().to_string());
        }
        cursor = page["next_cursor"].as_str().map(str::to_string);
    }
    assert_eq!(seen, ["late-c", "late-b", "late-a", "late-x"]);
    // The time filters see the start time it has now.
    assert_eq!(ids(&server, "from=2024-03-01T22:00:00%2B07:00").await, ["late-x"]);
    assert_eq!(server.call("late-x").await["start_time"], "2024-03-01T23:00:00+07:00");
    server.stop().await;
}
}

crate::on_every_backend! {
/// A call's events come in pages: every event once, oldest first.
async fn a_calls_events_are_paged(db) {
    let server = TestServer::start(&db).await;
    let mut sent = Vec::new();
    for i in 0..5 {
        sent.push(
            server
                .send(&event("c-pages", json!({"call_status": format!("step-{i}")})))
                .await,
        );
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/calls/c-pages/events?limit=2&cursor={c}"),
            None => "/api/calls/c-pages/events?limit=2".to_string(),
        };
        let (status, page) = server.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        pages += 1;
        for item in page["items"].as_array().unwrap() {
            seen.push(item["event_id"].as_i64().unwrap());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(seen, sent);
    assert_eq!(pages, 3);
    let (_, all) = server.get("/api/calls/c-pages/events").await;
    assert_eq!(all["items"].as_array().unwrap().len(), 5);
    assert_eq!(all["next_cursor"], Value::Null);
    for bad in ["limit=0", "limit=1001", "cursor=x", "colour=red"] {
        let (status, body) = server.get(&format!("/api/calls/c-pages/events?{bad}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
    server.stop().await;
}
}

crate::on_every_backend! {
/// A page of the quarantine stops at a few MiB of bodies however large `limit` is; the rest
/// follows on the next pages.
async fn quarantine_pages_are_bounded_in_bytes(db) {
    let server = TestServer::start(&db).await;
    const BODIES: usize = 80;
    for i in 0..BODIES {
        // Not JSON, 60 KB each, all different: 4.8 MB in all.
        let body = format!("{i:03}{}", "z".repeat(60_000));
        let (status, _) = server.post(body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }
    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/rejected?limit=1000&cursor={c}"),
            None => "/api/rejected?limit=1000".to_string(),
        };
        let response = server.client.get(server.url(&path)).bearer_auth(TOKEN).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let text = response.text().await.unwrap();
        assert!(text.len() < 6 * 1024 * 1024, "a page of {} bytes", text.len());
        let page: Value = serde_json::from_str(&text).unwrap();
        pages.push(page["items"].as_array().unwrap().len());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert!(pages.len() >= 2, "{pages:?}");
    assert_eq!(pages.iter().sum::<usize>(), BODIES, "{pages:?}");
    server.stop().await;
}
}

crate::on_every_backend! {
/// A page of calls stops at about 2 MiB too, however large its `limit` and its calls' fields.
async fn call_pages_are_bounded_in_bytes(db) {
    let server = TestServer::start(&db).await;
    for i in 0..45 {
        let url = format!("https://media.example.invalid/{i:02}/{}", "r".repeat(60_000));
        server
            .send(&event(&format!("big-{i:02}"), json!({"recording_url": url})))
            .await;
    }
    let (status, first) = server.get("/api/calls?limit=1000").await;
    assert_eq!(status, StatusCode::OK);
    let first_len = first["items"].as_array().unwrap().len();
    assert!((30..45).contains(&first_len), "{first_len} calls in the first page");
    let cursor = first["next_cursor"].as_str().expect("a next page").to_string();
    let (_, rest) = server.get(&format!("/api/calls?limit=1000&cursor={cursor}")).await;
    assert_eq!(first_len + rest["items"].as_array().unwrap().len(), 45);
    assert_eq!(rest["next_cursor"], Value::Null);
    server.stop().await;
}
}
