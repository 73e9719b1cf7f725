//! Exports: the whole result of a filter as CSV or JSON Lines over HTTP and from the command
//! line, CSV as RFC 4180 with an optional BOM and formulas neutralised, and a store failure
//! part-way cutting the response short.

use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::*;

async fn export(server: &TestServer, path_and_query: &str) -> (StatusCode, String, Vec<u8>) {
    let response = reqwest::Client::new()
        .get(server.url(path_and_query))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (
        status,
        content_type,
        response.bytes().await.unwrap().to_vec(),
    )
}

fn csv_rows(bytes: &[u8]) -> (Vec<String>, Vec<Vec<String>>) {
    let mut reader = csv::Reader::from_reader(bytes);
    let header = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_string)
        .collect();
    let rows = reader
        .records()
        .map(|r| r.unwrap().iter().map(str::to_string).collect())
        .collect();
    (header, rows)
}

/// Every call id `/api/calls` lists for `query`, page by page.
async fn listed(server: &TestServer, query: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut cursor = String::new();
    loop {
        let (status, page) = server
            .get(&format!("/api/calls?limit=1000{query}{cursor}"))
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        for call in page["items"].as_array().unwrap() {
            ids.push(call["call_id"].as_str().unwrap().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => return ids,
        }
    }
}

crate::on_every_backend! {
/// More calls than a page: every one exported once, in the listing's order, as CSV and as JSON
/// Lines, with the listing's filters.
async fn an_export_is_the_whole_result(db) {
    let server = TestServer::start(&db).await;
    let (ok, report) = crate::sim::simulate(crate::sim::sim_args(&server.base, 1300,
        &["--concurrency", "16"])).await;
    assert!(ok, "{report:#}");
    let all = listed(&server, "").await;
    assert_eq!(all.len(), 1300);

    let (status, content_type, body) = export(&server, "/api/export/calls?format=jsonl").await;
    assert_eq!(status, StatusCode::OK);
    assert!(content_type.starts_with("application/jsonl"), "{content_type}");
    let text = String::from_utf8(body).unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let ids: Vec<String> = lines.iter().map(|c| c["call_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids, all, "every call once, newest first");
    // Each line is the call object of the API.
    let one = server.call(&ids[7]).await;
    assert_eq!(lines[7], one);

    let (status, content_type, body) = export(&server, "/api/export/calls").await;
    assert_eq!(status, StatusCode::OK);
    assert!(content_type.starts_with("text/csv"), "{content_type}");
    assert!(!body.starts_with(b"\xEF\xBB\xBF"), "no BOM unless asked");
    let (header, rows) = csv_rows(&body);
    assert_eq!(header, alohook::report::export::CALL_COLUMNS);
    assert_eq!(rows.iter().map(|r| r[0].clone()).collect::<Vec<_>>(), all);
    assert_eq!(rows[7][header.iter().position(|h| h == "start_time").unwrap()],
        one["start_time"].as_str().unwrap());

    let inbound = listed(&server, "&direction=inbound").await;
    let (_, _, body) = export(&server, "/api/export/calls?direction=inbound&format=csv").await;
    let (_, rows) = csv_rows(&body);
    assert_eq!(rows.iter().map(|r| r[0].clone()).collect::<Vec<_>>(), inbound);
    assert!(!inbound.is_empty() && inbound.len() < all.len());

    for (query, parameter) in [("?format=xlsx", "format"), ("?bom=yes", "bom"),
        ("?limit=5", "limit"), ("?direction=up", "direction")] {
        let (status, _, body) = export(&server, &format!("/api/export/calls{query}")).await;
        let error: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!((status, error["parameter"].clone()), (StatusCode::BAD_REQUEST, json!(parameter)));
    }
    let response = reqwest::get(server.url("/api/export/calls")).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    server.stop().await;
}

/// Vietnamese names survive in UTF-8 (with a BOM for Excel), and a cell that a spreadsheet
/// would run as a formula is neutralised.
async fn csv_is_safe_for_spreadsheets(db) {
    let server = TestServer::start(&db).await;
    server.send(&call_event("x1", "missed", "inbound", "+84901234567", "101", "=HYPERLINK(\"http://evil\")",
        "Nguyễn Thị Hạnh", ["2026-11-02 09:00:00", "", "2026-11-02 09:00:30"], "")).await;
    let (status, _, body) = export(&server, "/api/export/calls?bom=true").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.starts_with(b"\xEF\xBB\xBF"), "a BOM when asked");
    let (header, rows) = csv_rows(&body[3..]);
    let at = |name: &str| header.iter().position(|h| h == name).unwrap();
    assert_eq!(rows[0][at("user_name")], "Nguyễn Thị Hạnh");
    assert_eq!(rows[0][at("hotline")], "'=HYPERLINK(\"http://evil\")");
    assert_eq!(rows[0][at("caller_number")], "'+84901234567");
    assert_eq!(rows[0][at("answer_time")], "");
    // JSON Lines carry values as they are: JSON is not run by spreadsheets.
    let (_, _, body) = export(&server, "/api/export/calls?format=jsonl").await;
    let line: Value = serde_json::from_slice(body.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert_eq!(line["hotline"], "=HYPERLINK(\"http://evil\")");

    // The callback worklist exports the same way.
    let (status, _, body) = export(&server, "/api/export/callbacks?state=all").await;
    assert_eq!(status, StatusCode::OK);
    let (header, rows) = csv_rows(&body);
    assert_eq!(header, alohook::report::export::CALLBACK_COLUMNS);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0][header.iter().position(|h| h == "phone").unwrap()], "'+84901234567");
    assert_eq!(rows[0][header.iter().position(|h| h == "state").unwrap()], "open");
    let (_, _, body) = export(&server, "/api/export/callbacks?state=closed&format=jsonl").await;
    assert!(body.is_empty());

    // Closed by hand: the CSV says by whom, as the JSON does.
    let id = rows[0][header.iter().position(|h| h == "id").unwrap()].clone();
    let response = reqwest::Client::new()
        .post(server.url(&format!("/api/callbacks/{id}/close")))
        .bearer_auth(TOKEN)
        .body(r#"{"note":"called back, wrong number"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let item: Value = response.json().await.unwrap();
    assert_eq!(item["closed_by"], "admin");
    let (_, _, body) = export(&server, "/api/export/callbacks?state=closed").await;
    let (header, rows) = csv_rows(&body);
    let at = |name: &str| header.iter().position(|h| h == name).unwrap_or_else(|| panic!("no {name} column"));
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0][at("closed_reason")].as_str(), rows[0][at("closed_by")].as_str(),
        rows[0][at("note")].as_str()), ("manual", "admin", "called back, wrong number"));
    server.stop().await;
}
}

/// A store that fails after the first page: the response is cut short, never a file that ends
/// cleanly with rows missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_failure_part_way_cuts_the_export_short() {
    let db = Db::sqlite();
    let settings = settings(&db);
    let inner = open_store(&settings).await;
    let flaky = Arc::new(FlakyStore::slow(inner, std::time::Duration::ZERO));
    let store: Arc<dyn alohook::store::Store> = flaky.clone();
    let server = TestServer::start_with(settings, Some(store)).await;
    let (ok, report) = crate::sim::simulate(crate::sim::sim_args(&server.base, 1200, &[])).await;
    assert!(ok, "{report:#}");
    flaky
        .listings_left
        .store(1, std::sync::atomic::Ordering::SeqCst);
    let response = reqwest::Client::new()
        .get(server.url("/api/export/calls?format=jsonl"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "the head went out before the failure"
    );
    assert!(response.bytes().await.is_err(), "the body ends in an error");
    server.stop().await;
}

/// `alohook export` writes the same bytes as the API, from the database, without a server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_exports_the_same_bytes() {
    let db = Db::sqlite();
    let server = TestServer::start(&db).await;
    let (ok, report) = crate::sim::simulate(crate::sim::sim_args(&server.base, 300, &[])).await;
    assert!(ok, "{report:#}");
    let (_, _, from_api) = export(
        &server,
        "/api/export/calls?format=csv&bom=true&hotline=19001234",
    )
    .await;
    let (_, _, callbacks_api) =
        export(&server, "/api/export/callbacks?state=all&format=jsonl").await;
    server.stop().await;
    let out = db.path().join("calls.csv");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_alohook"))
        .args(["export", "--data-dir"])
        .arg(db.path())
        .args(["calls", "--bom", "--hotline", "19001234", "-o"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(std::fs::read(&out).unwrap(), from_api);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_alohook"))
        .args(["export", "--data-dir"])
        .arg(db.path())
        .args(["callbacks", "--state", "all", "--format", "jsonl"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    // age_seconds grows with the clock: compare the rest.
    let strip = |bytes: &[u8]| -> Vec<Value> {
        String::from_utf8_lossy(bytes)
            .lines()
            .map(|l| {
                let mut v: Value = serde_json::from_str(l).unwrap();
                v.as_object_mut().unwrap().remove("age_seconds");
                v
            })
            .collect()
    };
    assert_eq!(strip(&output.stdout), strip(&callbacks_api));
    assert!(
        !strip(&callbacks_api).is_empty(),
        "the simulator misses calls"
    );
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_alohook"))
        .args(["export", "--data-dir"])
        .arg(db.path())
        .args(["calls", "--direction", "sideways"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("--direction"),
        "{output:?}"
    );
    // An export only reads: other merge settings are refused, not a recomputation of every
    // call; a data dir with no database is named, not created.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_alohook"))
        .args(["export", "--data-dir"])
        .arg(db.path())
        .args(["--timezone", "UTC", "calls"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("--timezone"),
        "{output:?}"
    );
    let again = std::process::Command::new(env!("CARGO_BIN_EXE_alohook"))
        .args(["export", "--data-dir"])
        .arg(db.path())
        .args(["calls", "--bom", "--hotline", "19001234"])
        .output()
        .unwrap();
    assert_eq!(again.stdout, from_api, "the stored calls are as they were");
    let nowhere = db.path().join("nowhere");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_alohook"))
        .args(["export", "--data-dir"])
        .arg(&nowhere)
        .arg("calls")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("no alohook database"),
        "{output:?}"
    );
    assert!(!nowhere.join("alohook.db").exists());
}

/// `calls` calls written straight into the test's store (the write path, not HTTP), for a server
/// process started on it afterwards.
async fn load_calls(db: &Db, calls: usize) {
    use alohook::model::parse_body;
    use alohook::store::postgres::PgStore;
    use alohook::store::sqlite::SqliteStore;
    use alohook::store::{Incoming, MergeSettings, Store};
    let store: Arc<dyn Store> = match db.database() {
        Some(url) => Arc::new(PgStore::open(&url, MergeSettings::default()).await.unwrap()),
        None => Arc::new(
            SqliteStore::open(&db.path().join("alohook.db"), MergeSettings::default()).unwrap(),
        ),
    };
    let tz = jiff::tz::TimeZone::get("Asia/Ho_Chi_Minh").unwrap();
    let mut n = 0;
    while n < calls {
        let batch: Vec<Incoming> = (n..(n + 2000).min(calls))
            .map(|i| {
                let body = call_event(
                    &format!("M{i:07}"),
                    if i % 3 == 0 { "missed" } else { "answered" },
                    "inbound",
                    &format!("09{:08}", i % 50_000),
                    "101",
                    "19001234",
                    "Nguyễn Văn An",
                    [
                        &format!(
                            "2026-11-{:02} 09:{:02}:{:02}",
                            1 + i % 28,
                            i / 60 % 60,
                            i % 60
                        ),
                        "",
                        &format!(
                            "2026-11-{:02} 09:{:02}:{:02}",
                            1 + i % 28,
                            i / 60 % 60,
                            i % 60
                        ),
                    ],
                    "0",
                );
                Incoming::Event {
                    event: Box::new(parse_body(body.to_string().as_bytes(), &tz).unwrap()),
                    received_at: i as i64,
                }
            })
            .collect();
        store.commit(batch).await.unwrap();
        n = (n + 2000).min(calls);
    }
}

/// Kilobytes a process holds in memory now (VmRSS).
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

crate::on_every_backend! {
/// An export streams: the server's memory while it sends 100 000 rows (20 MB of CSV) stays
/// below one and a half times the export's size (6–17 MB measured: the allocator's per-thread
/// arenas of the read threads); a server that built the whole result first would hold every
/// row as values, several times the CSV. bench/query watches RSS during a million-row export.
async fn an_export_streams_in_flat_memory(db) {
    const CALLS: usize = 100_000;
    load_calls(&db, CALLS).await;
    let port = free_port();
    let database = db.database();
    let extra: Vec<&str> = match &database {
        Some(url) => vec!["--database", url],
        None => vec![],
    };
    let mut server = serve_process(db.path(), port, &extra);
    let pid = server.id();
    let client = reqwest::Client::new();
    let url = |q: &str| format!("http://127.0.0.1:{port}{q}");
    // Warm up: the first pages and renders, so that what follows is the export's own.
    let warm = client.get(url("/api/export/calls?format=csv&to=2026-11-02")).bearer_auth(TOKEN)
        .send().await.unwrap().bytes().await.unwrap();
    assert!(warm.len() > 1000);
    let before = rss_kib(pid);
    let mut response = client.get(url("/api/export/calls?format=csv")).bearer_auth(TOKEN)
        .send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let (mut bytes, mut lines, mut peak) = (0usize, 0usize, before);
    while let Some(chunk) = response.chunk().await.unwrap() {
        bytes += chunk.len();
        lines += chunk.iter().filter(|b| **b == b'\n').count();
        peak = peak.max(rss_kib(pid));
    }
    server.kill().unwrap();
    server.wait().unwrap();
    assert_eq!(lines, CALLS + 1, "a header and every call");
    let grew = peak.saturating_sub(before) * 1024;
    println!("export of {bytes} bytes: RSS {before} KiB before, peak {peak} KiB");
    assert!(grew < bytes as u64 * 3 / 2,
        "the server's memory grew by {grew} bytes while it sent {bytes}: it held the export");
}
}
