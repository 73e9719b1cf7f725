use std::time::Duration;

use serde_json::Value;

use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_alohook");

/// Runs `alohook simulate` with `args` (plus a JSON report) and returns its exit success and report.
pub async fn simulate(args: Vec<String>) -> (bool, Value) {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    // Killed if the test gives up on it, so that a failing test cannot hang on its simulator.
    let output = tokio::process::Command::new(BIN)
        .arg("simulate")
        .args(&args)
        .arg("--report")
        .arg(&report)
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let text = std::fs::read_to_string(&report).unwrap_or_else(|_| {
        panic!(
            "no report; stderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (
        output.status.success(),
        serde_json::from_str(&text).unwrap(),
    )
}

pub fn sim_args(server: &str, calls: usize, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--url",
        &format!("{server}/webhooks/alohub"),
        "--key",
        KEY,
        "--api-token",
        TOKEN,
        "--calls",
        &calls.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

crate::on_every_backend! {
async fn a_thousand_calls_with_duplicates_and_reordering_verify_clean(db) {
    let server = TestServer::start(&db).await;
    let (ok, report) = simulate(sim_args(
        &server.base,
        1000,
        &[
            "--duplicates",
            "0.1",
            "--reorder",
            "0.1",
            "--concurrency",
            "16",
            "--verify",
        ],
    ))
    .await;
    assert!(ok, "{report:#}");
    assert_eq!(report["calls"], 1000);
    assert_eq!(report["unacknowledged"], 0);
    assert_eq!(report["verify"]["checked"], 1000);
    assert_eq!(report["verify"]["mismatches"], 0);
    let dups = report["duplicates_sent"].as_u64().unwrap();
    assert!(dups > 50, "{report:#}");
    assert_eq!(report["duplicates_answered"].as_u64().unwrap(), dups);
    assert_eq!(report["acknowledged"], report["events_sent"]);
    // The server agrees: every duplicate counted as such, every distinct event once.
    let metrics = server.metrics().await;
    assert!(
        metrics.contains(&format!(
            "alohook_events_accepted_total {}",
            report["events_sent"]
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("alohook_duplicates_total {dups}")),
        "{metrics}"
    );
    server.stop().await;
}
}

crate::on_every_backend! {
async fn verify_reports_a_wrong_record(db) {
    // The server reads local times as UTC while the simulated account writes Vietnam time:
    // every stored time is seven hours off, and --verify must say so.
    let mut settings = settings(&db);
    settings.timezone = Some("UTC".into());
    let server = TestServer::start_with(settings, None).await;
    let (ok, report) = simulate(sim_args(&server.base, 20, &["--verify"])).await;
    assert!(!ok, "a wrong record must fail the run");
    assert!(
        report["verify"]["mismatches"].as_u64().unwrap() >= 20,
        "{report:#}"
    );
    assert!(
        report["verify"]["examples"][0]
            .as_str()
            .unwrap()
            .contains("start_time"),
        "{report:#}"
    );
    server.stop().await;
}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_means_unacknowledged_and_failure() {
    let port = free_port();
    let (ok, report) = simulate(vec![
        "--url".into(),
        format!("http://127.0.0.1:{port}/webhooks/alohub"),
        "--key".into(),
        KEY.into(),
        "--calls".into(),
        "3".into(),
        "--max-retries".into(),
        "2".into(),
        "--max-backoff".into(),
        "20".into(),
    ])
    .await;
    assert!(!ok);
    assert_eq!(report["acknowledged"], 0);
    assert_eq!(report["unacknowledged"], report["events_sent"]);
    assert_eq!(
        report["resends"],
        report["events_sent"].as_u64().unwrap() * 2
    );
    assert_eq!(
        report["outcomes"]["connection failed"],
        report["events_sent"].as_u64().unwrap() * 3,
        "{report:#}"
    );
}

/// A wrong key or API token is named as such, and the run stops at once rather than resending
/// into a 401 or counting every call as a mismatch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_are_named() {
    let db = Db::sqlite();
    let server = TestServer::start(&db).await;
    let run = |args: Vec<String>| async move {
        let started = std::time::Instant::now();
        let output = tokio::process::Command::new(BIN)
            .arg("simulate")
            .args(&args)
            .kill_on_drop(true)
            .output()
            .await
            .unwrap();
        (output, started.elapsed())
    };
    let mut wrong_key = sim_args(&server.base, 500, &["--max-retries", "5"]);
    wrong_key[3] = "not-the-key".into();
    let (output, took) = run(wrong_key).await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("401") && stderr.contains("--key"),
        "{stderr}"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");

    let mut wrong_token = sim_args(&server.base, 5, &["--verify"]);
    wrong_token[5] = "not-the-token".into();
    let (output, _) = run(wrong_token).await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("401") && stderr.contains("--api-token"),
        "{stderr}"
    );
    assert!(!stderr.contains("mismatch"), "{stderr}");

    // A good run shows its answers by status.
    let (ok, report) = simulate(sim_args(&server.base, 5, &[])).await;
    assert!(ok);
    assert_eq!(
        report["outcomes"]["200"], report["requests_ok"],
        "{report:#}"
    );
    server.stop().await;
}

/// Waits until the server at `base` has stored `n` new events since it started.
async fn accepted_at_least(base: &str, n: u64) {
    let client = reqwest::Client::new();
    let started = std::time::Instant::now();
    loop {
        let accepted = match client.get(format!("{base}/metrics")).send().await {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
        .lines()
        .find_map(|line| line.strip_prefix("alohook_events_accepted_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
        if accepted >= n as f64 {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the server took in {accepted} events in 90 s, waiting for {n}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

crate::on_every_backend! {
/// Kill -9 the server twice mid-load and restart it on the same data: every acknowledged event
/// must be there, every call right, nothing stored twice. On PostgreSQL the kills also drop the
/// transactions in flight and the writer's cache of calls.
async fn crash_test_sigkill_twice_loses_nothing(db) {
    let port = free_port();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    println!("crash test seed {seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let database = db.database();
    let extra: Vec<&str> = match &database {
        Some(url) => vec!["--database", url],
        None => vec![],
    };

    let mut server = serve_process(db.path(), port, &extra);
    let base = format!("http://127.0.0.1:{port}");
    // A stream reader that resumes from the last change it got whenever the server comes back.
    let mut reader = crate::feed::follow(base.clone());
    let sim = tokio::spawn(simulate(sim_args(
        &base,
        12_000,
        &[
            "--seed",
            &seed.to_string(),
            "--duplicates",
            "0.05",
            "--reorder",
            "0.2",
            "--concurrency",
            "32",
            "--max-retries",
            "200",
            "--max-backoff",
            "200",
            "--timeout",
            "2000",
            "--verify",
        ],
    )));
    for _ in 0..2 {
        // Kill mid-load: once this server has taken in a random number of events (on a busy CI
        // machine the simulator can take seconds to start, and a kill on a clock alone can come
        // before its first request).
        accepted_at_least(&base, rng.u64(200..2000)).await;
        server.kill().unwrap();
        server.wait().unwrap();
        tokio::time::sleep(Duration::from_millis(rng.u64(50..400))).await;
        server = serve_process(db.path(), port, &extra);
    }
    // A bound on a hang, not a speed test: the test build is unoptimised, and on a loaded 2-core
    // CI machine 12 000 calls on PostgreSQL took over 120 s once.
    let (ok, report) = tokio::time::timeout(Duration::from_secs(360), sim)
        .await
        .expect("the simulation finishes")
        .unwrap();
    // Every acknowledged event has its change, and the reader got each once, in order.
    let changes: Vec<i64> = crate::feed::changes_of(&base, 0, "")
        .await
        .iter()
        .map(|c| c["seq"].as_i64().unwrap())
        .collect();
    let seen = crate::feed::received_until(&mut reader, *changes.last().unwrap()).await;
    server.kill().unwrap();
    server.wait().unwrap();
    assert!(ok, "seed {seed}: {report:#}");
    assert_eq!(changes.len() as u64, report["acknowledged"].as_u64().unwrap(), "seed {seed}");
    let seen: Vec<i64> = seen.iter().map(|s| s.seq).collect();
    assert_eq!(seen.len(), changes.len(), "seed {seed}: the reader got every change once");
    assert_eq!(seen, changes, "seed {seed}: in order");
    assert!(
        report["events_sent"].as_u64().unwrap() >= 19_000,
        "{report:#}"
    );
    assert_eq!(report["unacknowledged"], 0, "{report:#}");
    assert_eq!(report["verify"]["mismatches"], 0, "{report:#}");
    assert!(
        report["failures"].as_u64().unwrap() > 0,
        "the kills were felt: {report:#}"
    );
}
}
