use reqwest::StatusCode;
use serde_json::json;

use crate::support::*;

crate::on_every_backend! {
async fn same_event_in_another_spelling_is_a_resend(db) {
    let server = TestServer::start(&db).await;
    let first = server.send(&ended("c-spell")).await;
    // Other key order, other whitespace, numbers instead of decimal strings, null for "".
    let respelled = r#"{
        "eventType" : "call", "userName":"adminxxx", "transactionID": "TRANSID_1111",
        "objectId": "1", "recording_url": "https://media.example.invalid:8443/IPCCMedia/MP3Export.do?url=file.mp3&source=ipcc",
        "holding_duration": 0, "total_duration": 300, "hotline": null, "hangup_by": "customer",
        "endtime": "2024-01-13 15:05:30", "answertime": "2024-01-13 15:00:35",
        "starttime": "2024-01-13 15:00:30", "destination_number": 888,
        "caller_number": "03899xxx", "direction": "outbound", "call_status": "answered",
        "call_id": "c-spell"
    }"#;
    let (status, answer) = server.post(respelled).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        answer,
        json!({"ok": true, "event_id": first, "duplicate": true})
    );
    // A missing field is the same as an empty one.
    let mut sparse = ended("c-spell");
    sparse.as_object_mut().unwrap().remove("hotline");
    let (_, answer) = server.post(sparse.to_string()).await;
    assert_eq!(answer["duplicate"], true);
    assert_eq!(answer["event_id"], first);

    // A real change is a new event.
    let mut changed = ended("c-spell");
    changed["holding_duration"] = json!("5");
    let (_, answer) = server.post(changed.to_string()).await;
    assert_eq!(answer["duplicate"], false);
    assert_ne!(answer["event_id"], first);

    let (_, events) = server.get("/api/calls/c-spell/events").await;
    let items = events["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["deliveries"], 3);
    assert_eq!(items[1]["deliveries"], 1);
    assert_eq!(server.call("c-spell").await["event_count"], 2);
    server.stop().await;
}
}

crate::on_every_backend! {
async fn a_resend_after_a_restart_is_still_a_duplicate(db) {
    let server = TestServer::start(&db).await;
    let first = server.send(&in_progress("c-restart")).await;
    server.stop().await;

    let server = TestServer::start(&db).await;
    let (status, answer) = server.post(in_progress("c-restart").to_string()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        answer,
        json!({"ok": true, "event_id": first, "duplicate": true})
    );
    let call = server.call("c-restart").await;
    assert_eq!(call["event_count"], 1);
    server.stop().await;
}
}

crate::on_every_backend! {
async fn concurrent_deliveries_of_one_event_store_one_event(db) {
    let server = TestServer::start(&db).await;
    let body = ended("c-burst").to_string();
    const DELIVERIES: usize = 64;
    let mut tasks = Vec::new();
    for _ in 0..DELIVERIES {
        let client = server.client.clone();
        let url = server.url("/webhooks/alohub");
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let response = client
                .post(url)
                .header("authorization", KEY)
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            response.json::<serde_json::Value>().await.unwrap()
        }));
    }
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    let firsts = answers.iter().filter(|a| a["duplicate"] == false).count();
    assert_eq!(firsts, 1, "exactly one delivery is the first");
    let id = &answers[0]["event_id"];
    assert!(answers.iter().all(|a| &a["event_id"] == id));
    let (_, events) = server.get("/api/calls/c-burst/events").await;
    assert_eq!(events["items"].as_array().unwrap().len(), 1);
    assert_eq!(events["items"][0]["deliveries"], DELIVERIES as i64);
    assert_eq!(server.call("c-burst").await["event_count"], 1);
    server.stop().await;
}
}

crate::on_every_backend! {
async fn other_event_types_are_kept_and_deduplicated_but_touch_no_call(db) {
    let server = TestServer::start(&db).await;
    let body = json!({"eventType": "agent_status", "userName": "agent01", "call_id": "c-other", "status": "online"});
    let first = server.send(&body).await;
    let (_, answer) = server.post(body.to_string()).await;
    assert_eq!(
        answer,
        json!({"ok": true, "event_id": first, "duplicate": true})
    );
    let (status, _) = server.get("/api/calls/c-other").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    server.stop().await;
}
}

crate::on_every_backend! {
/// New events that an inexact identity took for resends, and lost.
async fn near_identical_events_are_new_events(db) {
    let server = TestServer::start(&db).await;
    let with = |field: &str, value: serde_json::Value| {
        let mut body = in_progress("c-near");
        body[field] = value;
        body
    };
    let pairs = [
        // Beyond f64's precision: 20-digit numbers that differ in the last digit.
        (r#"{"call_id":"c-near","call_status":"answered","objectId":20240113150030123456.0}"#.to_string(),
         r#"{"call_id":"c-near","call_status":"answered","objectId":20240113150030123457.0}"#.to_string()),
        (with("transactionID", json!("1.10")).to_string(), with("transactionID", json!("1.1")).to_string()),
        (with("transactionID", json!("1e3")).to_string(), with("transactionID", json!("1000")).to_string()),
        (with("transactionID", json!("1.50")).to_string(), with("transactionID", json!("1.5")).to_string()),
    ];
    for (a, b) in &pairs {
        let (_, first) = server.post(a.clone()).await;
        let (status, second) = server.post(b.clone()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(second["duplicate"], false, "{b} after {a}");
        assert_ne!(second["event_id"], first["event_id"]);
    }
    let (_, events) = server.get("/api/calls/c-near/events").await;
    assert_eq!(events["items"].as_array().unwrap().len(), 8);
    server.stop().await;
}
}

crate::on_every_backend! {
/// `300.0`, `3e2` and `"300"` are one call id: one identity, one call record.
async fn a_numeric_call_id_is_one_call_whatever_its_spelling(db) {
    let server = TestServer::start(&db).await;
    let first = server.send(&json!({"call_id": "300", "call_status": "answered"})).await;
    for body in [
        r#"{"call_id":300.0,"call_status":"answered"}"#,
        r#"{"call_id":3e2,"call_status":"answered"}"#,
    ] {
        let (_, answer) = server.post(body).await;
        assert_eq!(answer, json!({"ok": true, "event_id": first, "duplicate": true}), "{body}");
    }
    server.send(&json!({"call_id": 300.0, "call_status": "missed"})).await;
    let call = server.call("300").await;
    assert_eq!(call["event_count"], 2);
    assert_eq!(call["call_status"], "missed");
    let (status, _) = server.get("/api/calls/300.0").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    server.stop().await;
}
}

crate::on_every_backend! {
/// Whitespace around string values is not part of an event: the same event padded is a resend.
async fn surrounding_whitespace_is_not_a_new_event(db) {
    let server = TestServer::start(&db).await;
    let first = server.send(&in_progress("c-ws")).await;
    let mut padded = in_progress("c-ws");
    padded["call_status"] = json!(" answered ");
    padded["userName"] = json!("adminxxx\n");
    padded["hotline"] = json!("   ");
    let (_, answer) = server.post(padded.to_string()).await;
    assert_eq!(answer, json!({"ok": true, "event_id": first, "duplicate": true}));
    assert_eq!(server.call("c-ws").await["event_count"], 1);
    server.stop().await;
}
}

crate::on_every_backend! {
/// Two values for one key: which one is meant is ambiguous. 422, kept in the quarantine.
async fn a_repeated_key_is_422_and_quarantined(db) {
    let server = TestServer::start(&db).await;
    let body = r#"{"call_id":"c-rep-1","call_status":"answered","call_id":"c-rep-2"}"#;
    let (status, answer) = server.post(body).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(answer["error"], "invalid_event");
    assert!(answer["detail"].as_str().unwrap().contains("call_id"), "{answer}");
    for id in ["c-rep-1", "c-rep-2"] {
        let (status, _) = server.get(&format!("/api/calls/{id}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    let (_, rejected) = server.get("/api/rejected").await;
    assert_eq!(rejected["items"][0]["body"], body);
    assert_eq!(rejected["items"][0]["reason"], "invalid_event");
    server.stop().await;
}
}
