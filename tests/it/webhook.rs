use std::sync::Arc;
use std::sync::atomic::Ordering;

use alohook::store::Store;
use reqwest::StatusCode;
use serde_json::json;

use crate::support::*;

crate::on_every_backend! {
async fn unauthorized_requests_keep_nothing(db) {
    let server = TestServer::start(&db).await;
    let body = in_progress("c-unauth").to_string();
    for auth in [
        None,
        Some("wrong"),
        Some("Bearer wrong"),
        Some(TOKEN),
        Some(&*format!("Bearer {TOKEN}")),
    ] {
        let (status, answer) = server.post_with_auth(body.clone(), auth).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "auth {auth:?}");
        assert_eq!(answer, json!({"error": "unauthorized"}));
    }
    // Not even a bad body is quarantined without a key.
    let (status, _) = server.post_with_auth("{", Some("wrong")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (_, rejected) = server.get("/api/rejected").await;
    assert_eq!(rejected["items"], json!([]));
    let (status, _) = server.get("/api/calls/c-unauth").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    server.stop().await;
}
}

crate::on_every_backend! {
async fn key_as_is_or_bearer_and_rotation(db) {
    let mut settings = settings(&db);
    settings.webhook_keys = vec!["old-key".into(), "new-key".into()];
    let server = TestServer::start_with(settings, None).await;
    for (i, auth) in ["old-key", "new-key", "Bearer new-key"].iter().enumerate() {
        let (status, answer) = server
            .post_with_auth(in_progress(&format!("c-key-{i}")).to_string(), Some(auth))
            .await;
        assert_eq!(status, StatusCode::OK, "{auth}: {answer}");
    }
    server.stop().await;
}
}

crate::on_every_backend! {
async fn body_limit_is_exact(db) {
    let mut settings = settings(&db);
    settings.max_body = Some(1024);
    let server = TestServer::start_with(settings, None).await;
    let event = in_progress("c-limit").to_string();
    // Trailing whitespace keeps the JSON valid while padding it to the exact size.
    let exact = format!("{event}{}", " ".repeat(1024 - event.len()));
    assert_eq!(exact.len(), 1024);
    let (status, answer) = server.post(format!("{exact} ")).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(answer, json!({"error": "payload_too_large"}));
    let (status, answer) = server.post(exact).await;
    assert_eq!(status, StatusCode::OK, "{answer}");

    // Without Content-Length (chunked), the limit holds too.
    let big = format!("{event}{}", " ".repeat(2000));
    assert_eq!(chunked_post(&server, &big).await, 413);
    let (_, rejected) = server.get("/api/rejected").await;
    assert_eq!(
        rejected["items"],
        json!([]),
        "oversized bodies are not kept"
    );
    server.stop().await;
}
}

/// POSTs `body` with `Transfer-Encoding: chunked` over a raw socket; returns the status code.
async fn chunked_post(server: &TestServer, body: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = server.base.trim_start_matches("http://");
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request = format!(
        "POST /webhooks/alohub HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {KEY}\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    for chunk in body.as_bytes().chunks(100) {
        request.push_str(&format!(
            "{:x}\r\n{}\r\n",
            chunk.len(),
            std::str::from_utf8(chunk).unwrap()
        ));
    }
    request.push_str("0\r\n\r\n");
    // The server may answer and close before reading everything; that is fine.
    let _ = socket.write_all(request.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = socket.read_to_end(&mut answer).await;
    let text = String::from_utf8_lossy(&answer);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

crate::on_every_backend! {
async fn invalid_json_is_400_and_quarantined_once(db) {
    let server = TestServer::start(&db).await;
    for _ in 0..2 {
        let (status, answer) = server.post("{\"call_id\": ").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(answer["error"], "invalid_json");
        assert!(answer["detail"].as_str().unwrap().len() > 5, "{answer}");
    }
    let (status, answer) = server.post(b"{\"call_id\":\"\xff\"}".to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(answer["error"], "invalid_json");

    let (status, rejected) = server.get("/api/rejected").await;
    assert_eq!(status, StatusCode::OK);
    let items = rejected["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{rejected}");
    // Newest first: the non-UTF-8 body, then the truncated one received twice.
    assert_eq!(items[0]["reason"], "invalid_json");
    assert_eq!(items[0]["body_base64"], "eyJjYWxsX2lkIjoi/yJ9");
    assert_eq!(items[1]["body"], "{\"call_id\": ");
    assert_eq!(items[1]["deliveries"], 2);
    assert!(items[1].get("body_base64").is_none());
    server.stop().await;
}
}

crate::on_every_backend! {
async fn invalid_events_are_422_and_quarantined(db) {
    let server = TestServer::start(&db).await;
    let bodies = [
        "[1,2,3]",
        "\"just a string\"",
        r#"{"call_status":"answered"}"#,
        r#"{"call_id":"c1","call_status":""}"#,
        r#"{"call_id":"","call_status":"answered","eventType":"call"}"#,
        r#"{"call_id":null,"call_status":"missed","eventType":""}"#,
    ];
    for body in bodies {
        let (status, answer) = server.post(body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(answer["error"], "invalid_event", "{body}");
        assert!(answer["detail"].is_string());
    }
    let (_, rejected) = server.get("/api/rejected?limit=1000").await;
    let kept: Vec<&str> = rejected["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["body"].as_str().unwrap())
        .collect();
    for body in bodies {
        assert!(kept.contains(&body), "{body} not quarantined");
    }
    assert!(
        rejected["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["reason"] == "invalid_event")
    );
    server.stop().await;
}
}

crate::on_every_backend! {
async fn new_event_then_resend(db) {
    let server = TestServer::start(&db).await;
    let body = in_progress("c-new").to_string();
    let (status, first) = server.post(body.clone()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(first["ok"], true);
    assert_eq!(first["duplicate"], false);
    assert!(first["event_id"].is_i64());
    let (status, second) = server.post(body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        second,
        json!({"ok": true, "event_id": first["event_id"], "duplicate": true})
    );
    // The answer's text, in the contract's key order.
    let text = server
        .client
        .post(server.url("/webhooks/alohub"))
        .header("authorization", KEY)
        .body(in_progress("c-new").to_string())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        text,
        format!(
            r#"{{"ok":true,"event_id":{},"duplicate":true}}"#,
            first["event_id"]
        )
    );
    let (_, events) = server.get("/api/calls/c-new/events").await;
    assert_eq!(events["items"].as_array().unwrap().len(), 1);
    assert_eq!(events["items"][0]["deliveries"], 3);
    assert_eq!(server.call("c-new").await["event_count"], 1);
    server.stop().await;
}
}

crate::on_every_backend! {
async fn content_type_does_not_matter(db) {
    let server = TestServer::start(&db).await;
    let response = server
        .client
        .post(server.url("/webhooks/alohub"))
        .header("authorization", KEY)
        .header("content-type", "text/plain")
        .body(in_progress("c-ct").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    server.stop().await;
}
}

crate::on_every_backend! {
async fn other_methods_are_405_before_the_key(db) {
    let server = TestServer::start(&db).await;
    for method in [
        reqwest::Method::GET,
        reqwest::Method::PUT,
        reqwest::Method::DELETE,
    ] {
        let response = server
            .client
            .request(method.clone(), server.url("/webhooks/alohub"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{method}"
        );
        assert_eq!(response.headers()["allow"], "POST");
        assert_eq!(
            response.json::<serde_json::Value>().await.unwrap(),
            json!({"error": "method_not_allowed"})
        );
    }
    // Every path answers a wrong method in the same JSON.
    for (method, path) in [
        (reqwest::Method::POST, "/healthz"),
        (reqwest::Method::DELETE, "/readyz"),
        (reqwest::Method::PUT, "/metrics"),
        (reqwest::Method::DELETE, "/api/calls"),
        (reqwest::Method::POST, "/api/calls/c1"),
        (reqwest::Method::PUT, "/api/rejected"),
    ] {
        let response = server
            .client
            .request(method.clone(), server.url(path))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert_eq!(
            response.headers()["content-type"],
            "application/json",
            "{method} {path}"
        );
        assert_eq!(
            response.json::<serde_json::Value>().await.unwrap(),
            json!({"error": "method_not_allowed"}),
            "{method} {path}"
        );
    }
    server.stop().await;
}
}

crate::on_every_backend! {
/// A commit slower than the client timeout is the server's delay, not a slow client: the client
/// gets its answer, not a reset connection.
async fn a_slow_commit_is_answered_whatever_the_client_timeout(db) {
    let mut settings = settings(&db);
    settings.client_timeout = Some(1);
    let store = Arc::new(FlakyStore::slow(open_store(&settings).await, std::time::Duration::from_millis(3000)));
    let server = TestServer::start_with(settings, Some(store as Arc<dyn Store>)).await;
    let (status, answer) = server.post(in_progress("c-slow").to_string()).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["duplicate"], false);
    server.stop().await;
}
}

crate::on_every_backend! {
/// Past --max-inflight bytes of bodies, a request is answered 503 with Retry-After at once, and
/// nothing is lost: what got 200 is stored, what got 503 is not, and is taken when resent.
async fn backpressure_at_the_byte_bound(db) {
    let mut settings = settings(&db);
    settings.max_body = Some(16 * 1024);
    // Room for three of the 11 KB bodies below, not four.
    let cost = alohook::ingest::request_cost(11 * 1024);
    settings.max_inflight = Some(3 * cost + cost / 2);
    let store = Arc::new(FlakyStore::slow(open_store(&settings).await, std::time::Duration::from_millis(1500)));
    let server = TestServer::start_with(settings, Some(store as Arc<dyn Store>)).await;
    let body = |i: usize| {
        let mut e = in_progress(&format!("c-bp-{i}"));
        e["padding"] = json!("x".repeat(10 * 1024));
        let text = e.to_string();
        assert!(text.len() <= 11 * 1024, "{}", text.len());
        text
    };
    let mut tasks = Vec::new();
    for i in 0..8 {
        let client = server.client.clone();
        let url = server.url("/webhooks/alohub");
        let body = body(i);
        tasks.push(tokio::spawn(async move {
            let started = std::time::Instant::now();
            let response = client
                .post(url)
                .header("authorization", KEY)
                .body(body)
                .send()
                .await
                .unwrap();
            (
                i,
                response.status(),
                response.headers().get("retry-after").cloned(),
                started.elapsed(),
            )
        }));
    }
    let mut taken = Vec::new();
    let mut refused = Vec::new();
    for task in tasks {
        let (i, status, retry_after, took) = task.await.unwrap();
        match status {
            StatusCode::OK => taken.push(i),
            StatusCode::SERVICE_UNAVAILABLE => {
                assert!(retry_after.is_some(), "503 without Retry-After");
                assert!(took < std::time::Duration::from_millis(1000), "refused at once: {took:?}");
                refused.push(i);
            }
            other => panic!("request {i}: {other}"),
        }
    }
    assert_eq!(taken.len(), 3, "taken {taken:?}, refused {refused:?}");
    for i in &taken {
        assert_eq!(server.call(&format!("c-bp-{i}")).await["event_count"], 1);
    }
    for i in &refused {
        let (status, _) = server.get(&format!("/api/calls/c-bp-{i}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "a refused body was kept");
        let (status, answer) = server.post(body(*i)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(answer["duplicate"], false);
    }
    assert!(server.metrics().await.contains("alohook_overloaded_total 5"));
    server.stop().await;
}
}

crate::on_every_backend! {
/// A real failure inside the store (a trigger that aborts the call's insert, after the event's
/// row was written) is a 503 that keeps nothing, as a full disk would be.
async fn a_store_failure_inside_the_transaction_is_503_and_keeps_nothing(db) {
    let server = TestServer::start(&db).await;
    crate::store::execute(&db, crate::store::POISON_SQLITE, crate::store::POISON_POSTGRES).await;
    let body = ended("poison").to_string();
    let response = server
        .client
        .post(server.url("/webhooks/alohub"))
        .header("authorization", KEY)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("retry-after"));
    // Other events still go through.
    server.send(&ended("healthy")).await;
    crate::store::execute(&db, "DROP TRIGGER poison", "DROP TRIGGER poison ON calls").await;
    let (status, answer) = server.post(body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["duplicate"], false, "the failed delivery kept its event");
    assert_eq!(server.call("poison").await["event_count"], 1);
    server.stop().await;
}
}

crate::on_every_backend! {
async fn store_failure_is_503_and_keeps_nothing(db) {
    let settings = settings(&db);
    let config = settings.clone().resolve().unwrap();
    let inner = alohook::server::open_store(&config).await.unwrap();
    let flaky = Arc::new(FlakyStore::slow(inner, std::time::Duration::ZERO));
    let server = TestServer::start_with(settings, Some(flaky.clone() as Arc<dyn Store>)).await;

    flaky.failing.store(true, Ordering::SeqCst);
    let body = ended("c-503").to_string();
    let response = server
        .client
        .post(server.url("/webhooks/alohub"))
        .header("authorization", KEY)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(
        response.json::<serde_json::Value>().await.unwrap(),
        json!({"error": "unavailable"})
    );
    let (status, _) = server.post("{").await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "a bad body that cannot be kept is not 400"
    );
    let (status, _) = server.get_with_auth("/readyz", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let (status, _) = server.get_with_auth("/healthz", None).await;
    assert_eq!(status, StatusCode::OK);

    flaky.failing.store(false, Ordering::SeqCst);
    let (status, _) = server.get_with_auth("/readyz", None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, answer) = server.post(body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        answer["duplicate"], false,
        "the failed delivery kept nothing"
    );
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("alohook_commit_failures_total 2"),
        "{metrics}"
    );
    server.stop().await;
}
}

/// An alert on the rate of refused requests needs its series before the first one: every reason
/// is on /metrics at 0 from the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rejection_reason_is_on_the_metrics_from_the_start() {
    let server = TestServer::start(&Db::sqlite()).await;
    let text = server.metrics().await;
    for reason in ["invalid_json", "invalid_event", "payload_too_large"] {
        let line = format!("alohook_rejected_total{{reason=\"{reason}\"}} 0");
        assert!(text.contains(&line), "missing {line:?} in\n{text}");
    }
    server.stop().await;
}

crate::on_every_backend! {
async fn metrics_count_what_happened(db) {
    let server = TestServer::start(&db).await;
    server.send(&in_progress("c-m")).await;
    server.send(&in_progress("c-m")).await;
    server.post("nope").await;
    server.post(r#"{"x":1}"#).await;
    server.post_with_auth("{}", Some("bad")).await;
    let text = server.metrics().await;
    for line in [
        "alohook_events_accepted_total 1",
        "alohook_duplicates_total 1",
        "alohook_rejected_total{reason=\"invalid_json\"} 1",
        "alohook_rejected_total{reason=\"invalid_event\"} 1",
        "alohook_unauthorized_total 1",
        "alohook_ack_latency_seconds_count 2",
        "alohook_commit_batch_size_count",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    server.stop().await;
}
}

/// A client that trickles its headers, or opens a connection and says nothing, is disconnected
/// after the client timeout; a client that keeps its connection busy is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_silent_clients_are_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let db = Db::sqlite();
    let mut settings = settings(&db);
    settings.client_timeout = Some(1);
    let server = TestServer::start_with(settings, None).await;
    let addr = server.base.trim_start_matches("http://").to_string();

    // Headers one line every 200 ms, for up to 10 s: closed about 1 s after the first byte.
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let started = std::time::Instant::now();
    slow.write_all(b"POST /webhooks/alohub HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut cut = false;
    for i in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        if slow
            .write_all(format!("X-{i}: a\r\n").as_bytes())
            .await
            .is_err()
        {
            cut = true;
            break;
        }
        let mut byte = [0u8; 1];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(std::time::Duration::from_millis(1), slow.read(&mut byte)).await
        {
            cut = true;
            break;
        }
    }
    assert!(cut, "the trickling client kept its connection");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );

    // A connection that never sends a byte.
    let mut silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(std::time::Duration::from_secs(4), silent.read(&mut byte))
        .await
        .expect("an idle connection is closed within the timeout");
    assert!(matches!(closed, Ok(0) | Err(_)));

    // One keep-alive connection used every 400 ms for 3 s: every request is answered.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()
        .unwrap();
    for i in 0..8 {
        let response = client
            .post(server.url("/webhooks/alohub"))
            .header("authorization", KEY)
            .body(in_progress(&format!("c-keepalive-{i}")).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    }
    server.stop().await;
}

/// A client that pipelines 100 reads of a large call and then stops reading is cut off once its
/// answers have waited the client timeout, instead of holding its socket and the queued answers
/// forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let db = Db::sqlite();
    let mut settings = settings(&db);
    settings.client_timeout = Some(1);
    let server = TestServer::start_with(settings, None).await;
    // A call of 300 events of about 1 KiB: some 350 KB per page of its events.
    let mut sends = Vec::new();
    for i in 0..300 {
        let mut event = in_progress("c-big");
        event["padding"] = json!(format!("{i:04}{}", "x".repeat(1000)));
        let (client, url) = (server.client.clone(), server.url("/webhooks/alohub"));
        sends.push(tokio::spawn(async move {
            let r = client
                .post(url)
                .header("authorization", KEY)
                .body(event.to_string())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK);
        }));
    }
    for s in sends {
        s.await.unwrap();
    }
    let page = server
        .client
        .get(server.url("/api/calls/c-big/events?limit=1000"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .len();
    assert!(page > 300_000, "{page}");

    let addr = server.base.trim_start_matches("http://").to_string();
    let mut stalled = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let request = format!(
        "GET /api/calls/c-big/events?limit=1000 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    );
    stalled
        .write_all(request.repeat(100).as_bytes())
        .await
        .unwrap();
    // Read nothing for a while: the server's writes stall.
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    let mut received = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    let drained = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        loop {
            match stalled.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received += n,
            }
        }
    })
    .await;
    assert!(drained.is_ok(), "the connection was still open after 24 s");
    assert!(
        received < 50 * page,
        "{received} bytes of {} were still delivered: the stalled connection was kept",
        100 * page
    );
    server.stop().await;
}

/// A request that stopped waiting for its commit (503 after 10 s) still holds its body's share of
/// the in-flight budget until the commit is done: otherwise a stuck store would let the queue
/// fill with bodies whose requests are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_holds_until_the_commit_not_the_request() {
    let db = Db::sqlite();
    let mut settings = settings(&db);
    settings.max_body = Some(16 * 1024);
    // Room for one request of up to --max-body: two of these 11 KB ones do not fit.
    settings.max_inflight = Some(alohook::ingest::request_cost(16 * 1024));
    let store = Arc::new(FlakyStore::slow(
        open_store(&settings).await,
        std::time::Duration::from_secs(12),
    ));
    let server = TestServer::start_with(settings, Some(store as Arc<dyn Store>)).await;
    let body = |id: &str| {
        let mut e = in_progress(id);
        e["padding"] = json!("x".repeat(10 * 1024));
        e.to_string()
    };
    let (status, _) = server.post(body("c-gone")).await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "the request gave up after 10 s"
    );
    let started = std::time::Instant::now();
    let (status, _) = server.post(body("c-next")).await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "the budget was free again"
    );
    let took = started.elapsed();
    let metrics = server.metrics().await;
    assert!(
        took < std::time::Duration::from_secs(1),
        "{took:?} {metrics}"
    );
    assert!(metrics.contains("alohook_overloaded_total 1"), "{metrics}");
    // The slow commit did land: the first event was kept after all (its resend will be
    // answered as a duplicate).
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(server.call("c-gone").await["event_count"], 1);
    server.stop().await;
}

/// At most `--max-connections` connections are taken at once; the next waits until one closes,
/// then is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_wait_for_a_place() {
    let db = Db::sqlite();
    let mut settings = settings(&db);
    settings.max_connections = Some(2);
    let server = TestServer::start_with(settings, None).await;
    let addr = server.base.trim_start_matches("http://").to_string();
    let first = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let second = tokio::net::TcpStream::connect(&addr).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let third = tokio::spawn({
        let url = server.url("/healthz");
        async move { client.get(url).send().await.map(|r| r.status()) }
    });
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    assert!(
        !third.is_finished(),
        "a third connection is not served while two are open"
    );
    drop((first, second));
    let status = tokio::time::timeout(std::time::Duration::from_secs(5), third)
        .await
        .expect("served once a place is free")
        .unwrap()
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    server.stop().await;
}
