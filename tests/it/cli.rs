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
    let stderr = tempfile::NamedTempFile::new().unwrap();
    serve_with(
        &[
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data_dir.to_str().unwrap(),
        ],
        &[],
        stderr.path(),
    )
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
    let flaky = Arc::new(FlakyStore::slow(inner, std::time::Duration::ZERO));
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

/// `alohook` with `args`, `ALOHOOK_*` credentials cleared, and `env` set.
fn alohook(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env_remove("ALOHOOK_WEBHOOK_KEYS")
        .env_remove("ALOHOOK_API_TOKEN")
        .env_remove("ALOHOOK_LISTEN")
        .env_remove("PORT");
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().unwrap()
}

/// `alohook serve` on an ephemeral port with the data dir `<dir>/d`, key `k`, token `t`, and
/// `extra`; its stderr in `<dir>/stderr`.
fn serve_in(dir: &std::path::Path, extra: &[&str], env: &[(&str, &str)]) -> Running {
    let data = dir.join("d");
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
        "--webhook-key",
        "k",
        "--api-token",
        "t",
    ];
    args.extend(extra);
    serve_with(&args, env, &dir.join("stderr"))
}

/// `alohook serve` with `args`, its stderr kept in `stderr`, up to its listening line.
fn serve_with(args: &[&str], env: &[(&str, &str)], stderr: &std::path::Path) -> Running {
    let mut command = Command::new(BIN);
    command
        .arg("serve")
        .args(args)
        .env_remove("ALOHOOK_WEBHOOK_KEYS")
        .env_remove("ALOHOOK_API_TOKEN")
        .env_remove("ALOHOOK_LISTEN")
        .env_remove("PORT")
        .env("ALOHOOK_LOG", "warn");
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(stderr).unwrap())
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
    let base = lines
        .last()
        .and_then(|l| l.strip_prefix("alohook listening on "))
        .unwrap_or_else(|| {
            panic!(
                "no listening line in {lines:?}; stderr: {}",
                std::fs::read_to_string(stderr).unwrap_or_default()
            )
        })
        .to_string();
    Running { child, lines, base }
}

/// A second alohook on a running one's SQLite database exits 1 with the reason, and never
/// says it is listening.
#[test]
fn a_second_process_on_one_sqlite_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let first = serve(dir.path());
    let second = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&second.stdout);
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!stdout.contains("listening"), "{stdout}");
    assert!(stderr.contains("another alohook"), "{stderr}");
    assert!(terminate(first).success());
}

/// Nothing is announced before the store is open: an unreachable database is an error, not a
/// listening line.
#[test]
fn no_listening_line_before_the_store_is_open() {
    let port = crate::support::free_port();
    let output = alohook(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--webhook-key",
            "k",
            "--api-token",
            "t",
            "--database",
            &format!("postgres://nobody@127.0.0.1:{port}/nothing?connect_timeout=2"),
        ],
        &[],
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(!String::from_utf8_lossy(&output.stdout).contains("listening"));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot open the database"));

    // A first start that fails there generates no keys: the next start generates them and
    // prints them with what to give Alohub (a user never misses them).
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let output = alohook(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--database",
            &format!("postgres://nobody@127.0.0.1:{port}/nothing?connect_timeout=2"),
        ],
        &[],
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(!data_dir.join("credentials.toml").exists());
    assert!(!String::from_utf8_lossy(&output.stdout).contains("Authorization key"));
}

/// SIGTERM with requests in flight (their headers read, their bodies still arriving): every one
/// of them is answered 200 and committed, and the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_and_commits_every_request_in_flight() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = tempfile::tempdir().unwrap();
    let running = serve_in(dir.path(), &[], &[]);
    let addr = running.base.trim_start_matches("http://").to_string();
    const REQUESTS: usize = 200;
    let written = std::sync::Arc::new(tokio::sync::Barrier::new(REQUESTS + 1));
    let mut tasks = Vec::new();
    for i in 0..REQUESTS {
        let (addr, written) = (addr.clone(), written.clone());
        tasks.push(tokio::spawn(async move {
            let body = in_progress(&format!("term-{i}")).to_string();
            let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
            let headers = format!(
                "POST /webhooks/alohub HTTP/1.1\r\nHost: x\r\nAuthorization: k\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let (first, rest) = body.split_at(body.len() / 2);
            stream
                .write_all(format!("{headers}{first}").as_bytes())
                .await
                .unwrap();
            written.wait().await;
            // SIGTERM goes out now; the rest of the body follows it.
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            stream.write_all(rest.as_bytes()).await.unwrap();
            let mut answer = String::new();
            let _ = stream.read_to_string(&mut answer).await;
            answer
        }));
    }
    written.wait().await;
    // Long enough for the server to have read every request's headers.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let status = terminate(running);
    for task in tasks {
        let answer = task.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "an answer: {answer:?}");
    }
    assert!(status.success(), "exit status {status:?}");

    let running = serve_in(dir.path(), &[], &[]);
    let client = reqwest::Client::new();
    let page: serde_json::Value = client
        .get(format!("{}/api/calls?limit=1000", running.base))
        .bearer_auth("t")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), REQUESTS);
    assert!(terminate(running).success());
}

/// `alohook migrate` brings a new SQLite database to the current schema (and records the merge
/// settings); the PostgreSQL half is in `postgres.rs`.
#[test]
fn migrate_creates_the_current_schema() {
    let dir = tempfile::tempdir().unwrap();
    let output = alohook(
        &["migrate", "--data-dir", dir.path().to_str().unwrap()],
        &[],
    );
    assert!(output.status.success(), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("current schema"));
    let conn = rusqlite::Connection::open(dir.path().join("alohook.db")).unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 10);
    let settings: String = conn
        .query_row(
            "SELECT value FROM alohook_meta WHERE key = 'merge_settings'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(settings.contains("missed"), "{settings}");
}

#[test]
fn unknown_alohook_variables_are_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let output = alohook(
        &["migrate", "--data-dir", dir.path().to_str().unwrap()],
        &[("ALOHOOK_WEBHOOK_KEY", "typo")],
    );
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("unknown environment variable ALOHOOK_WEBHOOK_KEY is ignored"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("typo"),
        "the value is not logged: {stderr}"
    );
}

/// `keys show` never creates anything and never prints keys the server would not use.
#[test]
fn keys_show_creates_nothing_and_says_where_it_looked() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let shown = alohook(&["keys", "show", "--data-dir", data.to_str().unwrap()], &[]);
    assert_eq!(shown.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&shown.stderr);
    assert!(stderr.contains("credentials.toml"), "{stderr}");
    assert!(
        stderr.contains("environment") && stderr.contains("flags"),
        "{stderr}"
    );
    assert!(!data.exists(), "keys show created {}", data.display());

    // Keys in the environment are the ones a server with that environment uses.
    let shown = alohook(
        &["keys", "show", "--data-dir", data.to_str().unwrap()],
        &[
            ("ALOHOOK_WEBHOOK_KEYS", "env-key"),
            ("ALOHOOK_API_TOKEN", "env-token"),
        ],
    );
    assert!(shown.status.success());
    let stdout = String::from_utf8_lossy(&shown.stdout);
    assert!(
        stdout.contains("env-key") && stdout.contains("env-token"),
        "{stdout}"
    );
    assert!(!data.exists());

    // Generated explicitly, then shown; generating again changes nothing.
    let generated = alohook(
        &["keys", "generate", "--data-dir", data.to_str().unwrap()],
        &[],
    );
    assert!(generated.status.success(), "{generated:?}");
    let first = String::from_utf8_lossy(&generated.stdout).to_string();
    let key = value_after(
        &first.lines().map(str::to_string).collect::<Vec<_>>(),
        "Authorization key:",
    )
    .unwrap();
    let shown = alohook(&["keys", "show", "--data-dir", data.to_str().unwrap()], &[]);
    assert!(String::from_utf8_lossy(&shown.stdout).contains(&key));
    let again = alohook(
        &["keys", "generate", "--data-dir", data.to_str().unwrap()],
        &[],
    );
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already"));
}

/// Data files are readable by their owner only: they hold customers' phone numbers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let running = serve(&data);
    let key = value_after(&running.lines, "Authorization key:").unwrap();
    let response = send_event(&reqwest::Client::new(), &running.base, &key).await;
    assert_eq!(response.status(), StatusCode::OK);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700, "the data dir");
    for file in [
        "alohook.db",
        "alohook.db-wal",
        "alohook.db-shm",
        "alohook.db.lock",
        "credentials.toml",
    ] {
        assert_eq!(mode(&data.join(file)), 0o600, "{file}");
    }
    assert!(terminate(running).success());
}

/// What an operator sees in the logs while connecting Alohub: refused keys (with where they came
/// from and how they were sent, never the key), rejected bodies, and at debug every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_logged_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let stderr = dir.path().join("stderr");
    let running = serve_with(
        &[
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            dir.path().join("d").to_str().unwrap(),
            "--webhook-key",
            "right-key",
            "--api-token",
            "right-token",
            "--log-format",
            "json",
        ],
        &[("ALOHOOK_LOG", "debug")],
        &stderr,
    );
    let client = reqwest::Client::new();
    let url = format!("{}/webhooks/alohub", running.base);
    let post = |auth: Option<&'static str>, body: String| {
        let mut request = client.post(&url).body(body);
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        request.send()
    };
    assert_eq!(
        post(Some("Bearer wrong-secret-1"), "{}".into())
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        post(Some("wrong-secret-2"), "{}".into())
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(post(None, "{}".into()).await.unwrap().status(), 401);
    assert_eq!(
        post(Some("right-key"), "{not json".into())
            .await
            .unwrap()
            .status(),
        400
    );
    assert_eq!(
        post(Some("right-key"), in_progress("logged-call").to_string())
            .await
            .unwrap()
            .status(),
        200
    );
    let api = client
        .get(format!("{}/api/calls", running.base))
        .bearer_auth("wrong-token-3")
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 401);
    assert!(terminate(running).success());

    let text = std::fs::read_to_string(&stderr).unwrap();
    for secret in [
        "wrong-secret-1",
        "wrong-secret-2",
        "wrong-token-3",
        "right-key",
        "right-token",
    ] {
        assert!(!text.contains(secret), "{secret} in the logs:\n{text}");
    }
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let find = |message: &str| -> Vec<&serde_json::Value> {
        lines
            .iter()
            .filter(|l| l["message"].as_str().is_some_and(|m| m.contains(message)))
            .collect()
    };
    let refused = find("webhook request refused (401)");
    assert_eq!(refused.len(), 3, "{text}");
    assert!(
        refused
            .iter()
            .all(|l| l["source"].as_str().unwrap().starts_with("127.0.0.1:"))
    );
    let forms: Vec<&str> = refused
        .iter()
        .map(|l| l["authorization"].as_str().unwrap())
        .collect();
    assert!(forms.iter().any(|f| f.contains("Bearer")), "{forms:?}");
    assert!(forms.contains(&"missing"), "{forms:?}");
    let rejected = find("rejected and kept in the quarantine");
    assert_eq!(rejected.len(), 1, "{text}");
    assert_eq!(rejected[0]["reason"], "invalid_json");
    assert_eq!(rejected[0]["size"], 9);
    let accepted = find("event accepted");
    assert_eq!(accepted.len(), 1, "{text}");
    assert_eq!(accepted[0]["call_id"], "logged-call");
    assert_eq!(accepted[0]["call_status"], "answered");
    assert_eq!(accepted[0]["duplicate"], false);
    assert!(accepted[0]["event_id"].is_number());
    let api = find("API request refused (401)");
    assert_eq!(api.len(), 1, "{text}");
    assert_eq!(api[0]["path"], "/api/calls");
}

/// `--listen` takes `:port` and a bare port; `PORT` stands in when no address is given; and
/// `healthcheck` finds the server from the same settings, or from `--url` in any form.
#[test]
fn listen_forms_port_and_healthcheck_settings() {
    let dir = tempfile::tempdir().unwrap();
    let stderr = dir.path().join("stderr");
    let data = dir.path().join("d");
    let common = [
        "--data-dir",
        data.to_str().unwrap(),
        "--webhook-key",
        "k",
        "--api-token",
        "t",
    ];
    let port = crate::support::free_port().to_string();

    let listen = format!(":{port}");
    let mut args = vec!["--listen", listen.as_str()];
    args.extend(common);
    let running = serve_with(&args, &[], &stderr);
    assert_eq!(running.base, format!("http://0.0.0.0:{port}"));
    let check = |args: &[&str], env: &[(&str, &str)]| {
        let mut all = vec!["healthcheck"];
        all.extend(args);
        alohook(&all, env)
    };
    let readyz = format!("http://127.0.0.1:{port}/readyz");
    let host_port = format!("127.0.0.1:{port}");
    for (args, env) in [
        (vec!["--listen", listen.as_str()], vec![]),
        (vec![], vec![("ALOHOOK_LISTEN", listen.as_str())]),
        (vec![], vec![("PORT", port.as_str())]),
        (vec!["--url", readyz.as_str()], vec![]),
        (vec!["--url", host_port.as_str()], vec![]),
        (vec!["--url", port.as_str()], vec![]),
    ] {
        let output = check(&args, &env);
        assert!(output.status.success(), "{args:?} {env:?}: {output:?}");
    }
    assert!(terminate(running).success());

    let running = serve_with(&common, &[("PORT", port.as_str())], &stderr);
    assert_eq!(running.base, format!("http://0.0.0.0:{port}"));
    assert!(terminate(running).success());
    let bare = port.clone();
    let mut args = vec!["--listen", bare.as_str()];
    args.extend(common);
    let running = serve_with(&args, &[], &stderr);
    assert_eq!(running.base, format!("http://0.0.0.0:{port}"));
    assert!(terminate(running).success());
}

/// Each command's help lists only the settings it uses.
#[test]
fn help_lists_only_what_a_command_uses() {
    let help = |args: &[&str]| String::from_utf8(alohook(args, &[]).stdout).unwrap();
    let migrate = help(&["migrate", "--help"]);
    assert!(migrate.contains("--database") && migrate.contains("--final-statuses"));
    for serve_only in [
        "--webhook-key",
        "--api-token",
        "--listen",
        "--max-body",
        "--client-timeout",
    ] {
        assert!(
            !migrate.contains(serve_only),
            "migrate --help lists {serve_only}"
        );
    }
    let keys = help(&["keys", "show", "--help"]);
    assert!(keys.contains("--data-dir") && keys.contains("--webhook-key"));
    for other in [
        "--database",
        "--max-body",
        "--final-statuses",
        "--timezone",
        "--client-timeout",
    ] {
        assert!(!keys.contains(other), "keys show --help lists {other}");
    }
    let serve = help(&["serve", "--help"]);
    for flag in [
        "--listen",
        "--max-inflight",
        "--client-timeout",
        "--final-statuses",
        "--log-format",
    ] {
        assert!(serve.contains(flag), "serve --help lacks {flag}");
    }
}

/// SIGTERM while live streams are open (one idle, one replaying): they end, and the process
/// exits 0 promptly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_open_streams_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let running = serve_in(dir.path(), &[], &[]);
    let client = reqwest::Client::new();
    let response = send_event(&client, &running.base, "k").await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut streams = Vec::new();
    for query in ["", "?since=0"] {
        let mut stream = client
            .get(format!("{}/api/stream{query}", running.base))
            .bearer_auth("t")
            .send()
            .await
            .unwrap();
        assert_eq!(stream.status(), StatusCode::OK);
        // The stream is open: its first bytes have come.
        assert!(stream.chunk().await.unwrap().is_some());
        streams.push(stream);
    }
    let status = tokio::task::spawn_blocking(move || terminate(running))
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    for mut stream in streams {
        // Whatever was still on its way, then the end.
        while let Ok(Some(_)) = stream.chunk().await {}
    }
}
