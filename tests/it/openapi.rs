//! `GET /api/openapi.json`: an OpenAPI 3.1 document that describes what the server serves. The
//! router is built from the described handlers (`routes!`), so a route cannot exist without its
//! description (a unit test in `src/api/mod.rs` refuses any other way of adding one); these check
//! the other way: everything described is served, with the parameters described.

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::support::*;

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

async fn document(server: &TestServer) -> Value {
    // No token: the document holds no data.
    let response = reqwest::get(server.url("/api/openapi.json")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/json");
    response.json().await.unwrap()
}

/// `path` with each `{name}` replaced by a value no record has.
fn concrete(path: &str) -> String {
    let mut out = String::new();
    let mut rest = path;
    while let Some(open) = rest.find('{') {
        let close = rest[open..].find('}').unwrap() + open;
        out.push_str(&rest[..open]);
        out.push_str("no-such-id");
        rest = &rest[close + 1..];
    }
    out + rest
}

/// A dashboard session's cookie, signed in with the API token (the dashboard's pages take no
/// Bearer token).
async fn session_cookie(server: &TestServer) -> String {
    let mut visitor = crate::dashboard::Visitor::new(server);
    assert_eq!(visitor.sign_in(TOKEN).await, StatusCode::SEE_OTHER);
    format!(
        "alohook_session={}",
        visitor.cookie("alohook_session").unwrap()
    )
}

/// The status of `method path?query`, with the token (and a dashboard session); the body is not
/// read (the stream never ends) unless it is JSON or HTML.
async fn status(server: &TestServer, method: &str, path_and_query: &str) -> (StatusCode, String) {
    let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
    let response = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .request(method, server.url(path_and_query))
        .header("cookie", session_cookie(server).await)
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .timeout(std::time::Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let text = if response.headers().get("content-type").is_some_and(|v| {
        let v = v.to_str().unwrap();
        v.starts_with("application/json") || v.starts_with("text/html")
    }) {
        response.text().await.unwrap_or_default()
    } else {
        String::new()
    };
    (status, text)
}

crate::on_every_backend! {
/// The document is OpenAPI 3.1, covers the routes the README names, and each of its operations
/// says what it answers, errors included, in one shape.
async fn the_document_is_openapi_3_1_and_describes_the_api(db) {
    let server = TestServer::start(&db).await;
    let doc = document(&server).await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{}", doc["openapi"]);
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/webhooks/alohub", "post"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/api/openapi.json", "get"),
        ("/api/calls", "get"),
        ("/api/calls/{call_id}", "get"),
        ("/api/calls/{call_id}/events", "get"),
        ("/api/rejected", "get"),
        ("/api/stats", "get"),
        ("/api/callbacks", "get"),
        ("/api/callbacks/{id}/close", "post"),
        ("/api/export/calls", "get"),
        ("/api/export/callbacks", "get"),
        ("/api/changes", "get"),
        ("/api/stream", "get"),
        ("/api/destinations", "get"),
        ("/api/destinations", "post"),
        ("/api/destinations/{id}", "get"),
        ("/api/destinations/{id}", "patch"),
        ("/api/destinations/{id}", "delete"),
        ("/api/destinations/{id}/secret", "get"),
        ("/api/destinations/{id}/rotate-secret", "post"),
        ("/api/destinations/{id}/ping", "post"),
        ("/api/destinations/{id}/replay", "post"),
        ("/api/jobs/{id}", "get"),
        ("/api/deliveries", "get"),
    ] {
        assert!(paths.get(path).and_then(|p| p.get(method)).is_some(), "{method} {path} is not described");
    }
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    assert!(schemas["ErrorBody"]["properties"]["error"].is_object());
    for name in ["CallView", "StatsView", "Group", "ItemView", "DestinationView", "EventView"] {
        assert!(schemas.contains_key(name), "no schema {name}");
    }
    for (path, item) in paths {
        for method in METHODS {
            let Some(operation) = item.get(method) else { continue };
            let responses = operation["responses"].as_object().unwrap();
            // A dashboard form answers with where to go next (303).
            assert!(responses.keys().any(|s| s.starts_with('2') || s.starts_with('3')),
                "{method} {path}: no success");
            if path.starts_with("/api/") && path != "/api/openapi.json" {
                for status in ["401", "408", "503"] {
                    assert!(responses.contains_key(status), "{method} {path}: no {status}");
                    assert_eq!(responses[status]["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ErrorBody", "{method} {path} {status}");
                }
                assert_eq!(operation["security"][0]["api_token"], serde_json::json!([]), "{method} {path}");
            }
            // Each path parameter in the path is described, and no other.
            let described: Vec<&str> = operation["parameters"].as_array().into_iter().flatten()
                .filter(|p| p["in"] == "path").map(|p| p["name"].as_str().unwrap()).collect();
            let in_path: Vec<&str> = path.split('/').filter_map(|s| s.strip_prefix('{')?.strip_suffix('}')).collect();
            assert_eq!(described, in_path, "{method} {path}");
        }
    }
}

/// Every described operation is served: its path answers another method 405 (the path is
/// routed), its own method anything but 405, and every query parameter it describes is
/// accepted (the API refuses unknown ones with a 400 that names them).
async fn everything_described_is_served_with_its_parameters(db) {
    let server = TestServer::start(&db).await;
    let doc = document(&server).await;
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        let url = concrete(path);
        let described: Vec<&str> = METHODS.into_iter().filter(|m| item.get(*m).is_some()).collect();
        let other = METHODS.into_iter().find(|m| !described.contains(m)).unwrap();
        let (code, body) = status(&server, other, &url).await;
        assert_eq!(code, StatusCode::METHOD_NOT_ALLOWED, "{other} {url}: {body}");
        for method in described {
            operations += 1;
            let (code, body) = status(&server, method, &url).await;
            assert_ne!(code, StatusCode::METHOD_NOT_ALLOWED, "{method} {url}: {body}");
            let query: Vec<String> = item[method]["parameters"].as_array().into_iter().flatten()
                .filter(|p| p["in"] == "query")
                .map(|p| format!("{}=", p["name"].as_str().unwrap()))
                .collect();
            if query.is_empty() {
                continue;
            }
            // An empty value counts as absent: each name alone is checked for being known.
            let (code, body) = status(&server, method, &format!("{url}?{}", query.join("&"))).await;
            assert!(!body.contains("unknown parameter"), "{method} {url}: {body}");
            assert_ne!(code, StatusCode::BAD_REQUEST, "{method} {url}: {body}");
            // And a name it does not describe is refused, naming it.
            let (code, body) = status(&server, method, &format!("{url}?not_described=1")).await;
            if !url.contains("no-such-id") {
                assert_eq!(code, StatusCode::BAD_REQUEST, "{method} {url}: {body}");
                assert!(body.contains("not_described"), "{method} {url}: {body}");
            }
        }
    }
    assert!(operations >= 27, "{operations} operations");
}
}
