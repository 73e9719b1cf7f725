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
