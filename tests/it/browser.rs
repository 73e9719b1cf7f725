//! The dashboard in a real headless Chromium (Debian's `chromium` and `chromium-driver`, which
//! `.ci/run` installs), against the real server with simulated traffic. Each test saves a
//! screenshot of the pages it visits in `target/screenshots/`; with
//! `ALOHOOK_SCREENSHOTS=docs/screenshots` it refreshes the README's.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::dashboard::{VIEWER, dashboard_settings};
use crate::support::*;

/// A chromedriver of its own, and a Chromium session through it.
struct Browser {
    client: Client,
    driver: std::process::Child,
}

impl Browser {
    /// `None` (with a notice) where Chromium is not installed; CI sets ALOHOOK_TEST_STRICT,
    /// which turns that into a failure.
    async fn start(lang: &str) -> Option<Browser> {
        let driver_path = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists());
        let Some(driver_path) = driver_path else {
            let why = "no chromedriver: install Debian's chromium and chromium-driver packages";
            assert!(std::env::var_os("ALOHOOK_TEST_STRICT").is_none(), "{why}");
            eprintln!("NOTICE: skipped: {why}");
            return None;
        };
        let port = free_port();
        let driver = std::process::Command::new(driver_path)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".to_string(),
            json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                "--disable-dev-shm-usage", "--window-size=1280,900", format!("--lang={lang}")],
                "prefs": {"intl.accept_languages": lang}}),
        );
        let started = Instant::now();
        loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            let connected = ClientBuilder::new(connector)
                .capabilities(caps.clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await;
            match connected {
                Ok(client) => return Some(Browser { client, driver }),
                Err(e) if started.elapsed() > Duration::from_secs(30) => {
                    panic!("cannot start Chromium through chromedriver: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    async fn close(mut self) {
        let _ = self.client.close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }

    /// The text of the first element matching `css`.
    async fn text(&self, css: &str) -> String {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .text()
            .await
            .unwrap()
    }

    /// Waits up to `limit` for `check` to hold on the page's source.
    async fn wait_until(&self, limit: Duration, what: &str, check: impl Fn(&str) -> bool) {
        let started = Instant::now();
        loop {
            let source = self.client.source().await.unwrap();
            if check(&source) {
                return;
            }
            assert!(
                started.elapsed() < limit,
                "not within {limit:?}: {what}\n{source}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Types `text` into the element with id `id`.
    async fn fill(&self, id: &str, text: &str) {
        self.client
            .find(Locator::Id(id))
            .await
            .unwrap_or_else(|e| panic!("#{id}: {e}"))
            .send_keys(text)
            .await
            .unwrap();
    }

    /// Clicks the element with id `id`.
    async fn click(&self, id: &str) {
        self.client
            .find(Locator::Id(id))
            .await
            .unwrap_or_else(|e| panic!("#{id}: {e}"))
            .click()
            .await
            .unwrap();
    }

    async fn sign_in(&self, server: &TestServer, token: &str) {
        self.client.goto(&server.url("/login")).await.unwrap();
        let field = self
            .client
            .wait()
            .for_element(Locator::Id("token"))
            .await
            .unwrap();
        field.send_keys(token).await.unwrap();
        self.click("sign-in").await;
        self.client
            .wait()
            .for_element(Locator::Id("live"))
            .await
            .unwrap();
    }

    /// Saves a screenshot of the page as `name.png`.
    async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        let mut dirs = vec![PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/screenshots")];
        if let Some(dir) = std::env::var_os("ALOHOOK_SCREENSHOTS") {
            dirs.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(dir));
        }
        for dir in dirs {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("{name}.png")), &png).unwrap();
        }
    }
}

/// Today in the server's zone, as Alohub writes a time: `2024-01-13 09:00:00`.
fn today_at(hms: &str) -> String {
    let tz = jiff::tz::TimeZone::get("Asia/Ho_Chi_Minh").unwrap();
    format!("{} {hms}", jiff::Timestamp::now().to_zoned(tz).date())
}

/// A day's simulated traffic: answered and missed calls on two hotlines, several agents.
async fn traffic(server: &TestServer) {
    let agents = ["lan.nguyen", "minh.tran", "hoa.le"];
    for i in 0..12 {
        let (status, answer, end) = if i % 4 == 3 {
            (
                "missed",
                "".to_string(),
                today_at(&format!("0{}:00:40", i % 9)),
            )
        } else {
            (
                "answered",
                today_at(&format!("0{}:00:12", i % 9)),
                today_at(&format!("0{}:04:30", i % 9)),
            )
        };
        let e = call_event(
            &format!("T{i:02}"),
            status,
            if i % 5 == 4 { "outbound" } else { "inbound" },
            &format!("09{:08}", 12_345_000 + i),
            &format!("10{}", i % 3),
            if i % 2 == 0 { "19001234" } else { "19005678" },
            agents[i % 3],
            [&today_at(&format!("0{}:00:00", i % 9)), &answer, &end],
            "0",
        );
        assert_eq!(server.post(e.to_string()).await.0, StatusCode::OK);
    }
}

/// A test server with the dashboard's settings (and a day's traffic when asked), and a
/// browser signed in with `token` (none when it is `None`); `None` where Chromium is missing.
async fn set_up(
    lang: &str,
    with_traffic: bool,
    token: Option<&str>,
) -> Option<(Db, TestServer, Browser)> {
    let db = Db::sqlite();
    let server = TestServer::start_with(dashboard_settings(&db, false), None).await;
    if with_traffic {
        traffic(&server).await;
    }
    let browser = Browser::start(lang).await?;
    if let Some(token) = token {
        browser.sign_in(&server, token).await;
    }
    Some((db, server, browser))
}

fn live_event(id: &str, status: &str, times: [&str; 3]) -> Value {
    call_event(
        id,
        status,
        "inbound",
        "0912345678",
        "101",
        "19001234",
        "lan.nguyen",
        times,
        "",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_in_and_out_in_a_browser() {
    let Some((_db, server, browser)) = set_up("en-US", false, None).await else {
        return;
    };
    let c = &browser.client;
    c.goto(&server.url("/")).await.unwrap();
    c.wait().for_element(Locator::Id("token")).await.unwrap();
    assert!(c.current_url().await.unwrap().path().ends_with("/login"));
    browser.screenshot("sign-in").await;
    // A wrong token: still the sign-in page, saying so.
    browser.fill("token", "wrong").await;
    browser.click("sign-in").await;
    c.wait().for_element(Locator::Css("p.error")).await.unwrap();
    // The token never goes into a URL.
    assert!(!c.current_url().await.unwrap().as_str().contains("wrong"));
    browser.sign_in(&server, TOKEN).await;
    assert_eq!(browser.text(".role").await, "Administrator");
    let cookies = c.get_all_cookies().await.unwrap();
    let session = cookies
        .iter()
        .find(|k| k.name() == "alohook_session")
        .expect("a session cookie");
    assert_eq!(session.http_only(), Some(true));
    browser.click("sign-out").await;
    c.wait().for_element(Locator::Id("token")).await.unwrap();
    c.goto(&server.url("/calls")).await.unwrap();
    c.wait().for_element(Locator::Id("token")).await.unwrap();
    assert!(
        c.current_url().await.unwrap().path().ends_with("/login"),
        "signed out"
    );
    browser.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_appears_on_live_within_two_seconds_and_moves_to_ended() {
    let Some((_db, server, browser)) = set_up("en-US", true, Some(TOKEN)).await else {
        return;
    };
    let calls_before = browser.text("#kpi-calls .value").await;
    // Ringing: on the page, without a reload, within 2 s.
    let posted = Instant::now();
    let ringing = live_event("LIVE1", "ringing", [&today_at("10:00:00"), "", ""]);
    assert_eq!(server.post(ringing.to_string()).await.0, StatusCode::OK);
    browser
        .wait_until(Duration::from_secs(2), "the ringing call on Live", |s| {
            s.contains(r#"data-call="LIVE1" data-phase="ringing""#)
        })
        .await;
    eprintln!("ringing call shown {:?} after its event", posted.elapsed());
    let row = browser
        .client
        .find(Locator::Css(r#"#active tr[data-call="LIVE1"] td.phase"#))
        .await
        .unwrap();
    assert_eq!(row.text().await.unwrap(), "Ringing");
    // Answered: in progress.
    let answered = live_event(
        "LIVE1",
        "answered",
        [&today_at("10:00:00"), &today_at("10:00:07"), ""],
    );
    assert_eq!(server.post(answered.to_string()).await.0, StatusCode::OK);
    browser
        .wait_until(Duration::from_secs(2), "the call in progress", |s| {
            s.contains(r#"data-call="LIVE1" data-phase="in_progress""#)
        })
        .await;
    browser.screenshot("live").await;
    // Ended: out of the calls now, first of the last ended, and counted today.
    let ended = live_event(
        "LIVE1",
        "answered",
        [
            &today_at("10:00:00"),
            &today_at("10:00:07"),
            &today_at("10:03:00"),
        ],
    );
    assert_eq!(server.post(ended.to_string()).await.0, StatusCode::OK);
    browser
        .wait_until(Duration::from_secs(2), "the call ended", |s| {
            let active = s
                .split("id=\"active\"")
                .nth(1)
                .unwrap_or("")
                .split("</table>")
                .next()
                .unwrap_or("");
            let recent = s.split("id=\"recent\"").nth(1).unwrap_or("");
            !active.contains("LIVE1") && recent.contains(r#"data-call="LIVE1""#)
        })
        .await;
    let expected = (calls_before.parse::<i64>().unwrap() + 1).to_string();
    browser
        .wait_until(Duration::from_secs(5), "today's calls counted again", |s| {
            s.contains(&format!(r#"<span class="value">{expected}</span>"#))
        })
        .await;
    browser.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_in_another_form_finds_the_call_and_its_page_shows_the_events() {
    let Some((_db, server, browser)) = set_up("en-US", true, Some(TOKEN)).await else {
        return;
    };
    let c = &browser.client;
    c.goto(&server.url("/calls")).await.unwrap();
    browser.screenshot("calls").await;
    // T05 is 0912345005: searched as +84 912 345 005.
    browser.fill("phone", "+84 912 345 005").await;
    browser.click("search-button").await;
    c.wait()
        .for_element(Locator::Css("#results"))
        .await
        .unwrap();
    let links = c.find_all(Locator::Css("#results tbody tr")).await.unwrap();
    assert_eq!(links.len(), 1, "one call of that number");
    assert!(
        !c.current_url().await.unwrap().as_str().contains("912"),
        "no phone number in the URL"
    );
    c.find(Locator::Css("#results tbody a"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    c.wait().for_element(Locator::Id("events")).await.unwrap();
    assert!(
        c.current_url()
            .await
            .unwrap()
            .path()
            .ends_with("/calls/T05")
    );
    let events = c.find_all(Locator::Css("#events li.event")).await.unwrap();
    assert_eq!(events.len(), 1);
    // The payload as received, opened.
    c.find(Locator::Css("#events summary"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let payload = browser.text("#events pre.payload").await;
    assert!(payload.contains("\"call_id\": \"T05\""), "{payload}");
    browser.screenshot("call").await;
    browser.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_in_a_name_is_shown_as_text() {
    let db = Db::sqlite();
    let server = TestServer::start_with(dashboard_settings(&db, false), None).await;
    let xss = "<img src=x onerror=alert(1)>";
    let e = call_event(
        "XSS1",
        "answered",
        "inbound",
        "0912345678",
        "101",
        "19001234",
        xss,
        [
            &today_at("08:00:00"),
            &today_at("08:00:05"),
            &today_at("08:01:00"),
        ],
        "",
    );
    assert_eq!(server.post(e.to_string()).await.0, StatusCode::OK);
    let Some(browser) = Browser::start("en-US").await else {
        return;
    };
    browser.sign_in(&server, TOKEN).await;
    let c = &browser.client;
    for path in ["/", "/calls", "/calls/XSS1"] {
        c.goto(&server.url(path)).await.unwrap();
        c.wait().for_element(Locator::Id("main")).await.unwrap();
        let images = c.find_all(Locator::Css("main img")).await.unwrap();
        assert!(images.is_empty(), "{path}: the name made an element");
        let main = browser.text("main").await;
        assert!(
            main.contains(xss),
            "{path}: the name is shown as text: {main}"
        );
        assert!(c.get_alert_text().await.is_err(), "{path}: an alert opened");
    }
    // The policy that would stop an injected script anyway.
    let r = reqwest::get(server.url("/login")).await.unwrap();
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    browser.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_language_switch_changes_the_labels() {
    let db = Db::sqlite();
    let server = TestServer::start_with(dashboard_settings(&db, false), None).await;
    traffic(&server).await;
    // A Vietnamese browser gets Vietnamese.
    let Some(browser) = Browser::start("vi-VN").await else {
        return;
    };
    browser.client.goto(&server.url("/login")).await.unwrap();
    browser
        .client
        .wait()
        .for_element(Locator::Id("sign-in"))
        .await
        .unwrap();
    assert_eq!(browser.text("#sign-in").await, "Đăng nhập");
    browser.sign_in(&server, VIEWER).await;
    assert_eq!(browser.text("nav a[aria-current=page]").await, "Trực tiếp");
    assert_eq!(browser.text(".role").await, "Người xem (chỉ xem)");
    browser.screenshot("live-vi").await;
    // Switched to English, and it stays so.
    browser
        .client
        .find(Locator::Id("language"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser
        .wait_until(Duration::from_secs(5), "English labels", |s| {
            s.contains(">Live<")
        })
        .await;
    browser.client.goto(&server.url("/calls")).await.unwrap();
    browser
        .client
        .wait()
        .for_element(Locator::Id("search"))
        .await
        .unwrap();
    assert_eq!(browser.text("nav a[aria-current=page]").await, "Calls");
    browser.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missed_call_is_on_callbacks_until_the_number_is_called_back() {
    let Some((_db, server, browser)) = set_up("en-US", true, Some(TOKEN)).await else {
        return;
    };
    let c = &browser.client;
    let missed = call_event(
        "MISS1",
        "missed",
        "inbound",
        "0977111222",
        "",
        "19001234",
        "",
        [&today_at("09:30:00"), "", &today_at("09:30:40")],
        "",
    );
    assert_eq!(server.post(missed.to_string()).await.0, StatusCode::OK);
    c.goto(&server.url("/callbacks")).await.unwrap();
    c.wait()
        .for_element(Locator::Id("open-items"))
        .await
        .unwrap();
    let row = c
        .find(Locator::XPath(
            "//table[@id='open-items']//a[@href='tel:+84977111222']",
        ))
        .await;
    assert!(
        row.is_ok(),
        "the missed caller is on the list with a tel: link"
    );
    browser.screenshot("callbacks").await;
    // An agent calls the number back and they talk: the item closes.
    let back = call_event(
        "BACK1",
        "answered",
        "outbound",
        "0977111222",
        "101",
        "19001234",
        "lan.nguyen",
        [
            &today_at("09:40:00"),
            &today_at("09:40:05"),
            &today_at("09:42:00"),
        ],
        "",
    );
    assert_eq!(server.post(back.to_string()).await.0, StatusCode::OK);
    c.refresh().await.unwrap();
    c.wait()
        .for_element(Locator::Id("closed-items"))
        .await
        .unwrap();
    let open = c
        .find_all(Locator::XPath(
            "//table[@id='open-items']//a[@href='tel:+84977111222']",
        ))
        .await
        .unwrap();
    assert!(open.is_empty(), "called back: off the open list");
    let closed = browser.text("#closed-items").await;
    assert!(closed.contains("Called back: BACK1"), "{closed}");
    browser.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reports_numbers_are_those_of_the_stats_api() {
    let Some((_db, server, browser)) = set_up("en-US", true, Some(TOKEN)).await else {
        return;
    };
    let c = &browser.client;
    c.goto(&server.url("/reports")).await.unwrap();
    c.wait().for_element(Locator::Id("tiles")).await.unwrap();
    let from = c
        .find(Locator::Id("from"))
        .await
        .unwrap()
        .prop("value")
        .await
        .unwrap()
        .unwrap();
    let to = c
        .find(Locator::Id("to"))
        .await
        .unwrap()
        .prop("value")
        .await
        .unwrap()
        .unwrap();
    let (status, stats) = server.get(&format!("/api/stats?from={from}&to={to}")).await;
    assert_eq!(status, StatusCode::OK);
    let g = &stats["groups"][0];
    let rate = |v: &Value| format!("{:.1}%", v.as_f64().unwrap() * 100.0);
    for (name, expected) in [
        ("calls", g["calls"].to_string()),
        ("answered", g["answered"].to_string()),
        ("unanswered", g["unanswered"].to_string()),
        ("answer_rate", rate(&g["answer_rate"])),
        ("service_level", rate(&g["service_level"])),
    ] {
        let shown = browser
            .text(&format!("[data-figure='{name}'] .value"))
            .await;
        assert_eq!(shown, expected, "{name}");
    }
    // Per agent: the same rows as group_by=agent.
    let (_, agents) = server
        .get(&format!("/api/stats?from={from}&to={to}&group_by=agent"))
        .await;
    let rows = c.find_all(Locator::Css("#agents tbody tr")).await.unwrap();
    assert_eq!(rows.len(), agents["groups"].as_array().unwrap().len());
    for (row, group) in rows.iter().zip(agents["groups"].as_array().unwrap()) {
        let text = row.text().await.unwrap();
        assert!(text.starts_with(group["key"].as_str().unwrap()), "{text}");
        assert!(
            text.contains(&format!(" {} ", group["calls"])),
            "{text} vs {group}"
        );
    }
    browser.screenshot("reports").await;
    // Forwarding, for the README's pictures.
    let created = serde_json::json!({"url": "http://127.0.0.1:9/hook", "description": "CRM"});
    let r = reqwest::Client::new()
        .post(server.url("/api/destinations"))
        .bearer_auth(TOKEN)
        .json(&created)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    c.goto(&server.url("/forwarding")).await.unwrap();
    c.wait()
        .for_element(Locator::Id("destinations"))
        .await
        .unwrap();
    browser.screenshot("forwarding").await;
    browser.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_viewer_cannot_change_anything_in_the_browser() {
    let db = Db::sqlite();
    let server = TestServer::start_with(dashboard_settings(&db, false), None).await;
    traffic(&server).await;
    let r = reqwest::Client::new()
        .post(server.url("/api/destinations"))
        .bearer_auth(TOKEN)
        .json(&json!({"url": "http://127.0.0.1:9/hook", "headers": {"X-Api-Key": "crm-api-key"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let Some(browser) = Browser::start("en-US").await else {
        return;
    };
    browser.sign_in(&server, VIEWER).await;
    let c = &browser.client;
    // No control that changes something.
    c.goto(&server.url("/callbacks")).await.unwrap();
    c.wait()
        .for_element(Locator::Id("open-items"))
        .await
        .unwrap();
    assert!(
        c.find_all(Locator::Css("form.close"))
            .await
            .unwrap()
            .is_empty(),
        "no close form"
    );
    c.goto(&server.url("/forwarding")).await.unwrap();
    c.wait()
        .for_element(Locator::Id("destinations"))
        .await
        .unwrap();
    assert!(
        c.find_all(Locator::Css(
            "#new-destination, button[data-action], form.edit"
        ))
        .await
        .unwrap()
        .is_empty()
    );
    assert!(!c.source().await.unwrap().contains("crm-api-key"));
    browser.screenshot("forwarding-viewer").await;
    // Changes made by hand from the page, with its CSRF token: refused.
    let statuses = c
        .execute_async(
            r#"const done = arguments[arguments.length - 1];
               const csrf = document.querySelector('meta[name="csrf-token"]').content;
               const id = document.querySelector('[data-destination]').dataset.destination;
               const api = (method, path, body) => fetch(path, {method, headers: {'x-csrf-token': csrf,
                   'content-type': 'application/json'}, body: body && JSON.stringify(body)}).then(r => r.status);
               const form = (path, fields) => fetch(path, {method: 'POST', body: new URLSearchParams({_csrf: csrf, ...fields})})
                   .then(r => r.status);
               Promise.all([
                 api('POST', '/api/destinations', {url: 'http://127.0.0.1:9/x'}),
                 api('PATCH', '/api/destinations/' + id, {enabled: false}),
                 api('DELETE', '/api/destinations/' + id),
                 form('/forwarding/' + id + '/disable', {}),
                 form('/forwarding', {url: 'http://127.0.0.1:9/y'}),
               ]).then(done);"#,
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        statuses,
        json!([403, 403, 403, 403, 403]),
        "every change refused"
    );
    let (_, list) = server.get("/api/destinations").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert_eq!(list["items"][0]["enabled"], true);
    browser.close().await;
    server.stop().await;
}
