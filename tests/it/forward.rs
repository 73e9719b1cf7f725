//! Forwarding: destinations through the API and the command line.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::*;

/// A request to the API with the test token and a JSON body.
async fn send_json(
    server: &TestServer,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = server
        .client
        .request(method, server.url(path))
        .bearer_auth(TOKEN);
    if let Some(body) = body {
        request = request.body(body.to_string());
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn missed(call_id: &str) -> Value {
    json!({"call_id": call_id, "call_status": "missed", "direction": "inbound",
           "caller_number": "0389123456", "hotline": "19001234",
           "starttime": "2024-01-13 15:00:30"})
}

crate::on_every_backend! {
/// Create, read, change, rotate the secret of and remove a destination.
async fn a_destinations_life_through_the_api(db) {
    use reqwest::Method;
    let server = TestServer::start(&db).await;
    let (status, created) = send_json(&server, Method::POST, "/api/destinations",
        Some(json!({"url": "https://crm.example.com/hooks/alohub", "types": ["call.ended"],
            "filter": {"hotline": "19001234", "direction": "inbound", "status": "missed"},
            "headers": {"X-Api-Key": "k"}, "ordering": "per_call", "start": "now",
            "timeout_seconds": 15, "max_in_flight": 8, "description": "CRM"}))).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("dst_"));
    let secret = created["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_"));
    assert_eq!(alohook::forward::sign::secret_key(&secret).unwrap().len(), 32);
    assert_eq!(created["types"], json!(["call.ended"]));
    assert_eq!(created["filter"]["status"], "missed");
    assert_eq!(created["enabled"], true);
    assert_eq!(created["disabled_reason"], Value::Null);
    assert_eq!(created["description"], "CRM");
    assert_eq!(created["stats"]["pending"], 0);

    let (status, shown) = server.get(&format!("/api/destinations/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(shown.get("secret").is_none(), "the secret is shown once: {shown}");
    for field in ["url", "types", "filter", "headers", "ordering", "start", "timeout_seconds",
                  "max_in_flight", "description", "enabled", "disabled_reason", "stats"] {
        assert_eq!(shown[field], created[field], "{field}");
    }
    for stat in ["pending", "delivered", "failed_attempts", "dead", "oldest_pending_seconds",
                 "last_success_at", "last_error"] {
        assert!(shown["stats"].get(stat).is_some(), "{stat}");
    }
    let (_, listed) = server.get("/api/destinations").await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);
    let (_, shown_secret) = server.get(&format!("/api/destinations/{id}/secret")).await;
    assert_eq!(shown_secret["secret"], secret);

    // Matching changes count as pending until they are delivered.
    server.send(&missed("D1")).await;
    server.send(&json!({"call_id": "D2", "call_status": "answered"})).await;
    let (_, shown) = server.get(&format!("/api/destinations/{id}")).await;
    assert_eq!(shown["stats"]["pending"], 1, "{shown}");
    assert!(shown["stats"]["oldest_pending_seconds"].as_i64().unwrap() >= 0);

    let (status, changed) = send_json(&server, Method::PATCH, &format!("/api/destinations/{id}"),
        Some(json!({"enabled": false, "max_in_flight": 2, "filter": {"status": "busy"}}))).await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    assert_eq!(changed["enabled"], false);
    assert!(changed["disabled_reason"].is_string());
    assert_eq!(changed["max_in_flight"], 2);
    assert_eq!(changed["description"], "CRM", "what a patch does not name stays");
    assert_eq!(changed["stats"]["pending"], 0, "the filter follows the patch");
    let (_, enabled) = send_json(&server, Method::PATCH, &format!("/api/destinations/{id}"),
        Some(json!({"enabled": true}))).await;
    assert_eq!((enabled["enabled"].clone(), enabled["disabled_reason"].clone()), (json!(true), Value::Null));

    let (status, rotated) = send_json(&server, Method::POST,
        &format!("/api/destinations/{id}/rotate-secret"), None).await;
    assert_eq!(status, StatusCode::OK);
    let new_secret = rotated["secret"].as_str().unwrap();
    assert!(new_secret.starts_with("whsec_") && new_secret != secret);
    let (_, shown_secret) = server.get(&format!("/api/destinations/{id}/secret")).await;
    assert_eq!(shown_secret["secret"], new_secret);

    let (status, _) = send_json(&server, Method::DELETE, &format!("/api/destinations/{id}"), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    for (method, path) in [
        (Method::GET, format!("/api/destinations/{id}")),
        (Method::GET, format!("/api/destinations/{id}/secret")),
        (Method::PATCH, format!("/api/destinations/{id}")),
        (Method::DELETE, format!("/api/destinations/{id}")),
        (Method::POST, format!("/api/destinations/{id}/rotate-secret")),
    ] {
        let (status, body) = send_json(&server, method.clone(), &path, Some(json!({}))).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}");
        assert_eq!(body["error"], "not_found");
    }
    server.stop().await;
}

/// Each bad field is a 400 naming it; a history backfill starts where asked.
async fn bad_fields_are_named_and_start_backfills(db) {
    use reqwest::Method;
    let server = TestServer::start(&db).await;
    for i in 0..3 {
        server.send(&missed(&format!("S{i}"))).await;
    }
    for (body, parameter) in [
        (json!({}), "url"),
        (json!({"url": "ftp://example.com/x"}), "url"),
        (json!({"url": "https://h/x", "types": ["call.bogus"]}), "types"),
        (json!({"url": "https://h/x", "filter": {"colour": "red"}}), "filter"),
        (json!({"url": "https://h/x", "ordering": "random"}), "ordering"),
        (json!({"url": "https://h/x", "start": 99}), "start"),
        (json!({"url": "https://h/x", "max_in_flight": 0}), "max_in_flight"),
    ] {
        let (status, error) = send_json(&server, Method::POST, "/api/destinations", Some(body.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(error["error"], "invalid_parameter");
        assert_eq!(error["parameter"], parameter, "{body}: {error}");
    }
    let response = server.client.post(server.url("/api/destinations")).bearer_auth(TOKEN)
        .body("{not json").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    for (start, pending) in [(json!("beginning"), 3), (json!(1), 2), (json!("now"), 0)] {
        let (status, created) = send_json(&server, Method::POST, "/api/destinations",
            Some(json!({"url": "http://127.0.0.1:9/hook", "start": start}))).await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(created["stats"]["pending"], pending, "start {start}");
        assert_eq!(created["start"], start);
    }
    let (status, _) = server.get_with_auth("/api/destinations", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    server.stop().await;
}
}

crate::on_every_backend! {
/// `alohook destinations add / list / show / remove` against the configured database.
async fn destinations_from_the_command_line(db) {
    let run = |args: &[&str]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_alohook"));
        command.arg("destinations").arg("--data-dir").arg(db.path());
        if let Some(url) = db.database() {
            command.args(["--database", &url]);
        }
        let output = command.args(args).env("ALOHOOK_LOG", "warn").output().unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).to_string(),
            String::from_utf8_lossy(&output.stderr).to_string(),
        )
    };
    let (ok, out, err) = run(&["list"]);
    assert!(ok, "{err}");
    assert!(out.contains("no destinations"), "{out}");
    let (ok, out, err) = run(&[
        "add", "https://crm.example.com/hook", "--types", "call.ended", "--status", "missed",
        "--header", "X-Api-Key: k", "--start", "beginning", "--description", "CRM",
    ]);
    assert!(ok, "{err}");
    let id = out.lines().find_map(|l| l.strip_prefix("id:")).unwrap().trim().to_string();
    let secret = out.lines().find_map(|l| l.strip_prefix("secret:")).unwrap().trim().to_string();
    assert!(id.starts_with("dst_") && secret.starts_with("whsec_"), "{out}");
    let (ok, out, _) = run(&["list"]);
    assert!(ok && out.contains(&id) && out.contains("(CRM)"), "{out}");
    let (ok, out, _) = run(&["show", &id]);
    assert!(ok);
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["filter"]["status"], "missed");
    assert_eq!(shown["headers"]["X-Api-Key"], "k");
    assert_eq!(shown["start"], "beginning");
    assert!(shown.get("secret").is_none());
    // The server sees what the command line made.
    let server = TestServer::start(&db).await;
    let (status, listed) = server.get("/api/destinations").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed["items"][0]["id"], id);
    server.stop().await;
    let (ok, _, err) = run(&["add", "ftp://x/y"]);
    assert!(!ok && err.contains("URL"), "{err}");
    let (ok, _, err) = run(&["add", "https://h/x", "--ordering", "random"]);
    assert!(!ok && err.contains("--ordering"), "{err}");
    let (ok, out, _) = run(&["remove", &id]);
    assert!(ok && out.contains(&id));
    let (ok, _, err) = run(&["show", &id]);
    assert!(!ok && err.contains("no destination"), "{err}");
}
}
