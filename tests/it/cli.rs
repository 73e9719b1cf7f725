use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::StatusCode;

use crate::support::in_progress;

const BIN: &str = env!("CARGO_BIN_EXE_alohook");

struct Running {
    child: Child,
    lines: Vec<String>,
    base: String,
}

/// Starts `alohook serve` on an ephemeral port and reads stdout up to the listening line.
fn serve(data_dir: &std::path::Path) -> Running {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env_remove("ALOHOOK_WEBHOOK_KEYS")
        .env_remove("ALOHOOK_API_TOKEN")
        .env("ALOHOOK_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        let done = line.starts_with("alohook listening on http://");
        lines.push(line);
        if done {
            break;
        }
    }
    let last = lines.last().expect("alohook printed nothing");
    let base = last
        .strip_prefix("alohook listening on ")
        .unwrap_or_else(|| panic!("no listening line in {lines:?}"))
        .to_string();
    Running { child, lines, base }
}

fn value_after(lines: &[String], label: &str) -> Option<String> {
    lines
        .iter()
        .find_map(|l| l.trim().strip_prefix(label).map(|v| v.trim().to_string()))
}

async fn send_event(client: &reqwest::Client, base: &str, key: &str) -> reqwest::Response {
    client
        .post(format!("{base}/webhooks/alohub"))
        .header("authorization", key)
        .body(in_progress("cli-1").to_string())
        .send()
        .await
        .unwrap()
}

fn terminate(mut running: Running) -> std::process::ExitStatus {
    let status = Command::new("kill")
        .args(["-TERM", &running.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    for _ in 0..100 {
        if let Some(status) = running.child.try_wait().unwrap() {
            return status;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = running.child.kill();
    panic!("alohook did not exit within 5 s of SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_run_generates_credentials_that_work_and_later_runs_reuse_them() {
    let dir = tempfile::tempdir().unwrap();
    let running = serve(dir.path());
    let key = value_after(&running.lines, "Authorization key:").expect("the key is printed");
    let bearer =
        value_after(&running.lines, "Authorization: Bearer").expect("the token is printed");
    assert!(running.lines.iter().any(|l| l.contains("/webhooks/alohub")));
    assert!(key.len() >= 40 && bearer.len() >= 40);

    let client = reqwest::Client::new();
    let response = send_event(&client, &running.base, &key).await;
    assert_eq!(response.status(), StatusCode::OK);
    let response = client
        .get(format!("{}/api/calls/cli-1", running.base))
        .bearer_auth(&bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(terminate(running).success(), "SIGTERM exits 0");

    // Second run: nothing printed but the listening line; the same key still works.
    let running = serve(dir.path());
    assert_eq!(running.lines.len(), 1, "{:?}", running.lines);
    let response = send_event(&client, &running.base, &key).await;
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(answer["duplicate"], true);
    assert!(terminate(running).success());

    let shown = Command::new(BIN)
        .args(["keys", "show", "--data-dir"])
        .arg(dir.path())
        .env_remove("ALOHOOK_WEBHOOK_KEYS")
        .env_remove("ALOHOOK_API_TOKEN")
        .output()
        .unwrap();
    let text = String::from_utf8(shown.stdout).unwrap();
    assert!(text.contains(&key) && text.contains(&bearer), "{text}");
}

#[test]
fn bad_configuration_is_a_clear_error() {
    let output = Command::new(BIN)
        .args([
            "serve",
            "--timezone",
            "Mars/Olympus",
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("unknown time zone"), "{stderr}");
}

/// `alohook healthcheck` exits 0 against a running alohook and 1, saying why, when none answers.
#[test]
fn healthcheck_tells_ready_from_not() {
    let dir = tempfile::tempdir().unwrap();
    let running = serve(dir.path());
    let ready = Command::new(BIN)
        .args(["healthcheck", "--url", &running.base])
        .output()
        .unwrap();
    assert!(ready.status.success(), "{ready:?}");
    terminate(running);

    let port = crate::support::free_port();
    let down = Command::new(BIN)
        .args(["healthcheck", "--timeout", "2", "--url"])
        .arg(format!("http://127.0.0.1:{port}"))
        .output()
        .unwrap();
    assert_eq!(down.status.code(), Some(1));
    let said = String::from_utf8_lossy(&down.stderr);
    assert!(said.contains("/readyz did not answer"), "{said}");
}

/// A running alohook whose store refuses writes is not healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_fails_while_the_store_refuses_writes() {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    use crate::support::{Db, FlakyStore, TestServer, settings};

    let db = Db::sqlite();
    let settings = settings(&db);
    let inner = alohook::server::open_store(&settings.clone().resolve().unwrap())
        .await
        .unwrap();
    let flaky = Arc::new(FlakyStore {
        inner,
        failing: Default::default(),
    });
    let store: Arc<dyn alohook::store::Store> = flaky.clone();
    let server = TestServer::start_with(settings, Some(store)).await;
    let check = |base: String| async move {
        tokio::process::Command::new(BIN)
            .args(["healthcheck", "--url", &base])
            .output()
            .await
            .unwrap()
    };
    assert!(check(server.base.clone()).await.status.success());
    flaky.failing.store(true, Ordering::SeqCst);
    let sick = check(server.base.clone()).await;
    assert_eq!(sick.status.code(), Some(1));
    let said = String::from_utf8_lossy(&sick.stderr);
    assert!(said.contains("503"), "{said}");
    server.stop().await;
}
