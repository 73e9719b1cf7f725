use serde_json::{Value, json};

use crate::support::*;

/// Sends `events` in order for `call_id` and returns the call record.
async fn record_after(server: &TestServer, events: &[Value]) -> Value {
    for event in events {
        server.send(event).await;
    }
    let id = events[0]["call_id"].as_str().unwrap();
    let mut call = server.call(id).await;
    // Receipt times differ between runs; everything else must be equal.
    let obj = call.as_object_mut().unwrap();
    obj.remove("first_received_at");
    obj.remove("last_received_at");
    obj.remove("call_id");
    call
}

crate::on_every_backend! {
async fn final_before_in_progress_gives_the_same_record(db) {
    let server = TestServer::start(&db).await;
    // The mid-call event carries another status, so the record shows which event won.
    let talking = |id: &str| {
        let mut e = in_progress(id);
        e["call_status"] = json!("talking");
        e
    };
    let in_order = record_after(&server, &[talking("c-a"), ended("c-a")]).await;
    let reversed = record_after(&server, &[ended("c-b"), talking("c-b")]).await;
    assert_eq!(in_order, reversed);
    assert_eq!(
        in_order,
        json!({
            "call_status": "answered", "phase": "ended", "direction": "outbound",
            "caller_number": "03899xxx", "destination_number": "888", "hotline": null,
            "user_name": "adminxxx", "transaction_id": "TRANSID_1111", "object_id": 1,
            "start_time": "2024-01-13T15:00:30+07:00", "answer_time": "2024-01-13T15:00:35+07:00",
            "end_time": "2024-01-13T15:05:30+07:00", "hangup_by": "customer",
            "total_duration": 300, "holding_duration": 0, "ring_seconds": 5, "talk_seconds": 295,
            "recording_url": "https://media.example.invalid:8443/IPCCMedia/MP3Export.do?url=file.mp3&source=ipcc",
            "event_count": 2
        })
    );
    // A resend of the in-progress event after the final one rolls nothing back.
    server.send(&talking("c-a")).await;
    assert_eq!(record_after(&server, &[talking("c-a")]).await, in_order);
    server.stop().await;
}
}

crate::on_every_backend! {
async fn phases_and_received_times(db) {
    let server = TestServer::start(&db).await;
    let mut ringing = in_progress("c-p");
    ringing["call_status"] = json!("ringing");
    ringing["answertime"] = json!("");
    server.send(&ringing).await;
    let call = server.call("c-p").await;
    assert_eq!(call["phase"], "ringing");
    assert_eq!(call["ring_seconds"], Value::Null);
    assert_eq!(call["first_received_at"], call["last_received_at"]);
    assert!(call["first_received_at"].as_str().unwrap().ends_with('Z'));

    server.send(&in_progress("c-p")).await;
    let call = server.call("c-p").await;
    assert_eq!(call["phase"], "in_progress");
    assert_eq!(call["ring_seconds"], 5);
    assert_eq!(call["talk_seconds"], Value::Null);
    assert!(call["last_received_at"].as_str() > call["first_received_at"].as_str());

    let mut missed = in_progress("c-missed");
    missed["call_status"] = json!("missed");
    missed["answertime"] = json!("");
    server.send(&missed).await;
    assert_eq!(server.call("c-missed").await["phase"], "ended");
    server.stop().await;
}
}

crate::on_every_backend! {
async fn loose_types_become_typed_fields_with_warnings(db) {
    let server = TestServer::start(&db).await;
    let body = r#"{
        "call_id": 20240113150030123456, "call_status": "answered", "direction": "INBOUND",
        "caller_number": "0389123456", "starttime": "2024-01-13T08:00:30Z",
        "answertime": "not a time", "total_duration": 300, "holding_duration": "abc",
        "objectId": "7", "extra_field": {"kept": true}
    }"#;
    let (status, answer) = server.post(body).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{answer}");
    let call = server.call("20240113150030123456").await;
    assert_eq!(call["direction"], "inbound");
    assert_eq!(call["start_time"], "2024-01-13T15:00:30+07:00");
    assert_eq!(call["answer_time"], Value::Null);
    assert_eq!(call["total_duration"], 300);
    assert_eq!(call["holding_duration"], Value::Null);
    assert_eq!(call["object_id"], 7);
    assert_eq!(call["phase"], "ended");

    let (_, events) = server.get("/api/calls/20240113150030123456/events").await;
    let event = &events["items"][0];
    let warnings = event["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings[0].as_str().unwrap().starts_with("answertime"));
    assert!(
        warnings[1]
            .as_str()
            .unwrap()
            .starts_with("holding_duration")
    );
    // The payload is the body as sent, unknown fields and big numbers included.
    assert_eq!(event["payload"]["extra_field"], json!({"kept": true}));
    assert_eq!(event["payload"]["answertime"], "not a time");
    assert_eq!(
        event["payload"]["call_id"].to_string(),
        "20240113150030123456"
    );
    server.stop().await;
}
}

crate::on_every_backend! {
/// Values that used to pass as good ones: a placeholder date, durations out of range.
async fn bad_values_become_null_with_a_warning(db) {
    let server = TestServer::start(&db).await;
    let body = json!({"call_id": "c-bad", "call_status": "answered",
        "starttime": "0001-01-01 00:00:00", "answertime": "1900-01-01 08:00:00",
        "endtime": "2025-11-25 09:05:00", "total_duration": "0:99", "holding_duration": "00:-5"});
    server.send(&body).await;
    let call = server.call("c-bad").await;
    for field in ["start_time", "answer_time", "total_duration", "holding_duration", "ring_seconds"] {
        assert_eq!(call[field], Value::Null, "{field}: {call}");
    }
    assert_eq!(call["end_time"], "2025-11-25T09:05:00+07:00");
    let (_, events) = server.get("/api/calls/c-bad/events").await;
    let warnings = events["items"][0]["warnings"].to_string();
    for field in ["starttime", "answertime", "total_duration", "holding_duration"] {
        assert!(warnings.contains(field), "no warning for {field}: {warnings}");
    }
    server.stop().await;
}
}

crate::on_every_backend! {
async fn the_configured_zone_reads_local_times(db) {
    let mut settings = settings(&db);
    settings.timezone = Some("UTC".into());
    let server = TestServer::start_with(settings, None).await;
    server.send(&in_progress("c-utc")).await;
    assert_eq!(
        server.call("c-utc").await["start_time"],
        "2024-01-13T15:00:30+00:00"
    );
    server.stop().await;
}
}

crate::on_every_backend! {
/// A `missed` event (a final status, no end time) and a `ringing` one, in both orders: the call
/// is missed and ended either way, and stays in `status=missed`.
async fn missed_and_ringing_in_both_orders(db) {
    let server = TestServer::start(&db).await;
    let body = |id: &str, status: &str| {
        json!({"call_id": id, "call_status": status, "direction": "inbound",
               "caller_number": "0389123456", "starttime": "2025-11-25 09:00:00",
               "eventType": "call"})
    };
    for (id, order) in [("mr-1", ["missed", "ringing"]), ("mr-2", ["ringing", "missed"])] {
        for status in order {
            server.send(&body(id, status)).await;
        }
        let call = server.call(id).await;
        assert_eq!(call["call_status"], "missed", "{id}: {call}");
        assert_eq!(call["phase"], "ended", "{id}: {call}");
    }
    let (_, page) = server.get("/api/calls?status=missed").await;
    let listed: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["call_id"].as_str().unwrap())
        .collect();
    assert_eq!(listed.len(), 2, "{page}");
    // A resend of the ringing event after both changes nothing.
    let (_, answer) = server.post(body("mr-1", "ringing").to_string()).await;
    assert_eq!(answer["duplicate"], true);
    assert_eq!(server.call("mr-1").await["call_status"], "missed");
    server.stop().await;
}
}
