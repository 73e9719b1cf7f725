//! The dashboard over HTTP (the browser tests in `browser.rs` drive it in Chromium): sign-in and
//! out, roles against the pages and the API, CSRF, security headers, escaping, languages.

use std::collections::HashMap;

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, SET_COOKIE};
use serde_json::Value;

use crate::on_every_backend;
use crate::support::*;

pub const VIEWER: &str = "viewer-token-for-tests";

/// `GET` with a Bearer token.
async fn get_as(server: &TestServer, path: &str, token: &str) -> (StatusCode, Value) {
    server
        .get_with_auth(path, Some(&format!("Bearer {token}")))
        .await
}

/// Test settings with a viewer token.
pub fn dashboard_settings(db: &Db, viewer_can_close: bool) -> alohook::config::Settings {
    let mut s = settings(db);
    s.dashboard.viewer_token = Some(VIEWER.to_string());
    s.dashboard.viewer_can_close = viewer_can_close;
    s
}

/// A browser without a browser: keeps cookies, follows no redirect.
pub struct Visitor {
    base: String,
    client: reqwest::Client,
    cookies: HashMap<String, String>,
    pub lang: Option<&'static str>,
}

impl Visitor {
    pub fn new(server: &TestServer) -> Self {
        Visitor {
            base: server.url(""),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(std::time::Duration::from_secs(30))
                .build()
                .unwrap(),
            cookies: HashMap::new(),
            lang: None,
        }
    }

    fn keep(&mut self, headers: &HeaderMap) {
        for value in headers.get_all(SET_COOKIE) {
            let text = value.to_str().unwrap();
            let (pair, attributes) = text.split_once(';').unwrap_or((text, ""));
            let (name, value) = pair.split_once('=').unwrap();
            if attributes.contains("Max-Age=0") {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_string(), value.to_string());
            }
        }
    }

    pub fn cookie(&self, name: &str) -> Option<&String> {
        self.cookies.get(name)
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self
            .client
            .request(method, format!("{}{path}", self.base))
            .header("cookie", self.cookie_header());
        if let Some(lang) = self.lang {
            r = r.header("accept-language", lang);
        }
        r
    }

    /// Sends, keeps the cookies: status, headers, body.
    async fn send(&mut self, request: reqwest::RequestBuilder) -> (StatusCode, HeaderMap, String) {
        let r = request.send().await.unwrap();
        self.keep(r.headers());
        let (status, headers) = (r.status(), r.headers().clone());
        (status, headers, r.text().await.unwrap())
    }

    /// GET: status, headers, body.
    pub async fn get(&mut self, path: &str) -> (StatusCode, HeaderMap, String) {
        self.send(self.request(reqwest::Method::GET, path)).await
    }

    /// POSTs a form.
    pub async fn post_form(
        &mut self,
        path: &str,
        form: &[(&str, &str)],
    ) -> (StatusCode, HeaderMap, String) {
        self.send(self.request(reqwest::Method::POST, path).form(form))
            .await
    }

    /// A JSON API request with the session cookie (and `csrf` in X-CSRF-Token when given).
    pub async fn api(
        &mut self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        csrf: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut r = self.request(method, path);
        if let Some(csrf) = csrf {
            r = r.header("x-csrf-token", csrf);
        }
        if let Some(body) = body {
            r = r.json(&body);
        }
        let r = r.send().await.unwrap();
        self.keep(r.headers());
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Signs in with `token`: the answer's status.
    pub async fn sign_in(&mut self, token: &str) -> StatusCode {
        let (_, _, page) = self.get("/login").await;
        let csrf = hidden(&page, "_csrf");
        let (status, headers, _) = self
            .post_form("/login", &[("token", token), ("_csrf", &csrf)])
            .await;
        if status == StatusCode::SEE_OTHER {
            assert_eq!(headers["location"], "/");
        }
        status
    }
}

/// The value of the first hidden input `name` of a page.
pub fn hidden(page: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = page
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} in {page}"))
        + marker.len();
    page[start..].split('"').next().unwrap().to_string()
}

/// The page's CSRF token (its meta tag).
pub fn csrf_of(page: &str) -> String {
    let marker = "name=\"csrf-token\" content=\"";
    let start = page.find(marker).expect("a csrf-token meta") + marker.len();
    page[start..].split('"').next().unwrap().to_string()
}

on_every_backend! {
    async fn signing_in_and_out(db) {
        let server = TestServer::start_with(dashboard_settings(&db, false), None).await;
        let mut v = Visitor::new(&server);
        let (status, headers, _) = v.get("/").await;
        assert_eq!(status, StatusCode::SEE_OTHER, "a page without a session goes to sign-in");
        assert_eq!(headers["location"], "/login");
        // A wrong token: refused, no session.
        assert_eq!(v.sign_in("not-the-token").await, StatusCode::UNAUTHORIZED);
        assert!(v.cookie("alohook_session").is_none());
        // The form's CSRF token is needed.
        let (status, _, _) = v.post_form("/login", &[("token", TOKEN), ("_csrf", "forged")]).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(v.cookie("alohook_session").is_none());
        assert_eq!(v.sign_in(TOKEN).await, StatusCode::SEE_OTHER);
        let (status, headers, page) = v.get("/").await;
        assert_eq!(status, StatusCode::OK);
        assert!(page.contains("Administrator"), "{page}");
        let csp = headers["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"), "{csp}");
        // The session cookie's attributes, and the token is nowhere in it.
        let session = v.cookie("alohook_session").unwrap().clone();
        assert!(!session.contains(TOKEN));
        // Sign-out needs the session's CSRF token.
        let (status, _, _) = v.post_form("/logout", &[("_csrf", "forged")]).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, headers, _) = v.post_form("/logout", &[("_csrf", &csrf_of(&page))]).await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        assert_eq!(headers["location"], "/login");
        assert!(v.cookie("alohook_session").is_none(), "sign-out removes the cookie");
        let (status, _, _) = v.get("/").await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        // The cookie, kept by someone, opens nothing after the sign-out: not a page, not the API.
        v.cookies.insert("alohook_session".to_string(), session);
        let (status, _, _) = v.get("/").await;
        assert_eq!(status, StatusCode::SEE_OTHER, "a signed-out session opens no page");
        let (status, _) = v.api(reqwest::Method::GET, "/api/calls", None, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "a signed-out session opens no API");
        server.stop().await;
    }

    async fn the_session_cookie_is_http_only_strict_and_secure_behind_https(db) {
        let server = TestServer::start_with(dashboard_settings(&db, false), None).await;
        let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        let login = client.get(server.url("/login")).header("x-forwarded-proto", "https").send().await.unwrap();
        let form_cookie = login.headers()[SET_COOKIE].to_str().unwrap().to_string();
        let page = login.text().await.unwrap();
        let csrf = hidden(&page, "_csrf");
        let cookie = form_cookie.split(';').next().unwrap().to_string();
        let r = client
            .post(server.url("/login"))
            .header("x-forwarded-proto", "https")
            .header("cookie", cookie)
            .form(&[("token", TOKEN), ("_csrf", &csrf)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        let set = r.headers()[SET_COOKIE].to_str().unwrap();
        assert!(set.starts_with("alohook_session="), "{set}");
        for attribute in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/"] {
            assert!(set.contains(attribute), "{attribute} in {set}");
        }
        server.stop().await;
    }

    async fn the_viewer_sees_everything_and_changes_nothing(db) {
        let server = TestServer::start_with(dashboard_settings(&db, false), None).await;
        // A missed call makes a callback item.
        let missed = call_event("V1", "missed", "inbound", "0901234567", "", "19001234", "",
            ["2024-01-13 09:00:00", "", "2024-01-13 09:00:30"], "");
        assert_eq!(server.post(missed.to_string()).await.0, StatusCode::OK);
        let admin = Some(TOKEN);
        let (_, created) = post_json(&server, "/api/destinations", admin,
            serde_json::json!({"url": "http://crm:pass@127.0.0.1:9/hook?key=k3y",
                "headers": {"X-Api-Key": "crm-api-key"}})).await;
        let destination = created["id"].as_str().unwrap().to_string();
        let viewer = Some(VIEWER);
        // Reads: all of them.
        for path in ["/api/calls", "/api/calls/V1", "/api/stats", "/api/callbacks", "/api/destinations",
                     &format!("/api/destinations/{destination}"), "/api/deliveries", "/api/changes"] {
            let (status, _) = get_as(&server, path, VIEWER).await;
            assert_eq!(status, StatusCode::OK, "{path}");
        }
        // Changes: none.
        let (_, items) = get_as(&server, "/api/callbacks?state=open", VIEWER).await;
        let item = items["items"][0]["id"].as_str().unwrap().to_string();
        for (method, path, body) in [
            ("POST", "/api/destinations".to_string(), serde_json::json!({"url": "http://127.0.0.1:9/x"})),
            ("PATCH", format!("/api/destinations/{destination}"), serde_json::json!({"enabled": false})),
            ("DELETE", format!("/api/destinations/{destination}"), Value::Null),
            ("POST", format!("/api/destinations/{destination}/rotate-secret"), Value::Null),
            ("POST", format!("/api/destinations/{destination}/ping"), Value::Null),
            ("POST", format!("/api/destinations/{destination}/replay"), serde_json::json!({})),
            ("POST", format!("/api/callbacks/{item}/close"), serde_json::json!({"note": "x"})),
        ] {
            let (status, body) = send(&server, method, &path, viewer, body).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {body}");
            assert_eq!(body["error"], "forbidden");
        }
        // Nothing changed.
        let (_, d) = get_as(&server, &format!("/api/destinations/{destination}"), TOKEN).await;
        assert_eq!(d["enabled"], true);
        let (_, items) = get_as(&server, "/api/callbacks?state=open", TOKEN).await;
        assert_eq!(items["items"].as_array().unwrap().len(), 1);
        // The viewer sees a destination without its credentials; the admin sees them.
        for path in ["/api/destinations".to_string(), format!("/api/destinations/{destination}")] {
            let (_, seen) = get_as(&server, &path, VIEWER).await;
            let text = seen.to_string();
            assert!(!text.contains("crm-api-key") && !text.contains("pass@") && !text.contains("k3y"), "{text}");
            assert!(text.contains("X-Api-Key"), "the header's name is shown: {text}");
        }
        let (_, seen) = get_as(&server, &format!("/api/destinations/{destination}"), TOKEN).await;
        assert_eq!(seen["headers"]["X-Api-Key"], "crm-api-key");
        // The secret is a read, but it signs: the viewer does not get it.
        let (status, _) = get_as(&server, &format!("/api/destinations/{destination}/secret"), VIEWER).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        // Signed in as the viewer: the same, through the session.
        let mut v = Visitor::new(&server);
        assert_eq!(v.sign_in(VIEWER).await, StatusCode::SEE_OTHER);
        let (_, _, page) = v.get("/").await;
        assert!(page.contains("Viewer (read-only)"), "{page}");
        let (_, _, forwarding) = v.get("/forwarding").await;
        assert!(forwarding.contains(&destination) && !forwarding.contains("crm-api-key") && !forwarding.contains("k3y"));
        let csrf = csrf_of(&page);
        let (status, _) = v.api(reqwest::Method::GET, "/api/calls", None, None).await;
        assert_eq!(status, StatusCode::OK);
        let (status, _) = v.api(reqwest::Method::POST, &format!("/api/callbacks/{item}/close"),
            Some(serde_json::json!({})), Some(&csrf)).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, _) = v.api(reqwest::Method::DELETE, &format!("/api/destinations/{destination}"),
            None, Some(&csrf)).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        server.stop().await;
    }

    async fn the_viewer_may_close_callbacks_when_allowed(db) {
        let server = TestServer::start_with(dashboard_settings(&db, true), None).await;
        let missed = call_event("V2", "missed", "inbound", "0901234567", "", "19001234", "",
            ["2024-01-13 09:00:00", "", "2024-01-13 09:00:30"], "");
        assert_eq!(server.post(missed.to_string()).await.0, StatusCode::OK);
        let (_, items) = get_as(&server, "/api/callbacks?state=open", VIEWER).await;
        let item = items["items"][0]["id"].as_str().unwrap().to_string();
        let (status, _) = send(&server, "DELETE", "/api/destinations/dst_x", Some(VIEWER), Value::Null).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "closing is all the viewer may do");
        let (status, body) = send(&server, "POST", &format!("/api/callbacks/{item}/close"), Some(VIEWER),
            serde_json::json!({"note": "called back from a mobile"})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["state"], "closed");
        assert_eq!(body["closed_by"], "viewer");
        // A close through the API with the API token says so too; a close by a call says none.
        let (_, open) = get_as(&server, "/api/callbacks?state=open", TOKEN).await;
        assert!(open["items"].as_array().unwrap().is_empty());
        server.stop().await;
    }

    async fn a_session_changes_things_only_with_its_csrf_token(db) {
        let server = TestServer::start_with(dashboard_settings(&db, false), None).await;
        let mut v = Visitor::new(&server);
        assert_eq!(v.sign_in(TOKEN).await, StatusCode::SEE_OTHER);
        let (_, _, page) = v.get("/").await;
        let body = serde_json::json!({"url": "http://127.0.0.1:9/hook"});
        let (status, answer) = v.api(reqwest::Method::POST, "/api/destinations", Some(body.clone()), None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
        let (status, _) = v.api(reqwest::Method::POST, "/api/destinations", Some(body.clone()), Some("forged")).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, answer) = v.api(reqwest::Method::POST, "/api/destinations", Some(body), Some(&csrf_of(&page))).await;
        assert_eq!(status, StatusCode::CREATED, "{answer}");
        // Another session's token is not this one's.
        let mut other = Visitor::new(&server);
        assert_eq!(other.sign_in(TOKEN).await, StatusCode::SEE_OTHER);
        let (status, _) = other.api(reqwest::Method::POST, "/api/destinations",
            Some(serde_json::json!({"url": "http://127.0.0.1:9/x"})), Some(&csrf_of(&page))).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        // The search form too.
        let (status, _, _) = v.post_form("/calls", &[("phone", "0901"), ("_csrf", "forged")]).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        server.stop().await;
    }

    async fn every_answer_has_the_security_headers(db) {
        let server = TestServer::start_with(dashboard_settings(&db, false), None).await;
        let mut v = Visitor::new(&server);
        assert_eq!(v.sign_in(TOKEN).await, StatusCode::SEE_OTHER);
        for path in ["/login", "/", "/calls", "/calls/nope", "/api/calls", "/healthz", "/nowhere"] {
            let (_, headers, _) = v.get(path).await;
            let csp = headers.get("content-security-policy").unwrap_or_else(|| panic!("CSP on {path}"));
            let csp = csp.to_str().unwrap();
            assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
            assert!(csp.contains("script-src 'self'") && !csp.contains("'unsafe-inline'") && !csp.contains("'unsafe-eval'"), "{path}: {csp}");
            assert_eq!(headers["x-frame-options"], "DENY", "{path}");
            assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        }
        // No inline script on any page: scripts come from /assets only.
        let (_, _, page) = v.get("/").await;
        for (i, _) in page.match_indices("<script") {
            assert!(page[i..].starts_with("<script src=\"/assets/"), "{}", &page[i..i + 60]);
        }
        server.stop().await;
    }

    async fn values_from_alohub_are_shown_as_text(db) {
        let server = TestServer::start_with(dashboard_settings(&db, false), None).await;
        let xss = "<img src=x onerror=alert(1)>";
        let event = call_event("X<1>", "answered", "inbound", "0901234567", "\"><script>alert(2)</script>", "1900<b>",
            xss, ["2024-01-13 09:00:00", "2024-01-13 09:00:05", "2024-01-13 09:03:00"], "");
        assert_eq!(server.post(event.to_string()).await.0, StatusCode::OK);
        // A missed call from the same line (a callback item), and a body the webhook rejects.
        let missed = call_event("X<2>", "missed", "inbound", "0901234567", "", "1900<b>",
            xss, ["2024-01-13 10:00:00", "", "2024-01-13 10:00:30"], "");
        assert_eq!(server.post(missed.to_string()).await.0, StatusCode::OK);
        let (status, _) = server.post("{\"call_id\": \"<img src=x onerror=alert(1)>\"".to_string()).await;
        assert!(status.is_client_error(), "quarantined: {status}");
        let mut v = Visitor::new(&server);
        assert_eq!(v.sign_in(TOKEN).await, StatusCode::SEE_OTHER);
        for path in ["/", "/calls", "/calls/X%3C1%3E", "/callbacks", "/reports?from=2024-01-10&to=2024-01-16", "/forwarding"] {
            let (status, _, page) = v.get(path).await;
            assert_eq!(status, StatusCode::OK, "{path}");
            assert!(page.contains("&lt;img src=x onerror=alert(1)&gt;") || path == "/callbacks",
                "{path}: the name as text");
            assert!(!page.contains("<img"), "{path}: no image element");
            assert!(!page.contains("<script>alert"), "{path}");
            assert!(!page.contains("<b>"), "{path}");
        }
        server.stop().await;
    }

    async fn a_phone_in_another_form_finds_the_call(db) {
        let server = TestServer::start_with(dashboard_settings(&db, false), None).await;
        for (id, caller) in [("P1", "0901234567"), ("P2", "0988888888")] {
            let e = call_event(id, "answered", "inbound", caller, "101", "19001234", "lan",
                ["2024-01-13 09:00:00", "2024-01-13 09:00:05", "2024-01-13 09:03:00"], "");
            assert_eq!(server.post(e.to_string()).await.0, StatusCode::OK);
        }
        let mut v = Visitor::new(&server);
        assert_eq!(v.sign_in(TOKEN).await, StatusCode::SEE_OTHER);
        let (_, _, page) = v.get("/calls").await;
        let csrf = csrf_of(&page);
        for form in ["+84901234567", "84 901 234 567", "0901-234-567"] {
            let (status, _, page) = v.post_form("/calls", &[("phone", form), ("_csrf", &csrf)]).await;
            assert_eq!(status, StatusCode::OK);
            assert!(page.contains("/calls/P1"), "{form}");
            assert!(!page.contains("/calls/P2"), "{form}");
        }
        // A wrong filter is said on the page.
        let (status, _, page) = v.post_form("/calls", &[("from", "yesterday-ish"), ("_csrf", &csrf)]).await;
        assert_eq!(status, StatusCode::OK);
        assert!(page.contains("class=\"error\""), "{page}");
        // The call page: record, events with their payloads.
        let (status, _, page) = v.get("/calls/P1").await;
        assert_eq!(status, StatusCode::OK);
        assert!(page.contains("0901234567") && page.contains("id=\"events\""));
        assert!(page.contains("&quot;call_id&quot;: &quot;P1&quot;"), "the payload as received");
        let (status, _, _) = v.get("/calls/nope").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        server.stop().await;
    }

    async fn the_language_follows_the_browser_and_the_switch(db) {
        let server = TestServer::start_with(dashboard_settings(&db, false), None).await;
        let mut v = Visitor::new(&server);
        v.lang = Some("vi-VN,vi;q=0.9,en;q=0.5");
        let (_, _, page) = v.get("/login").await;
        assert!(page.contains("Đăng nhập") && page.contains("lang=\"vi\""));
        assert_eq!(v.sign_in(TOKEN).await, StatusCode::SEE_OTHER);
        let (_, _, page) = v.get("/").await;
        assert!(page.contains("Trực tiếp") && page.contains("Tỷ lệ trả lời"), "{page}");
        let (status, headers, _) = v.post_form("/language", &[("lang", "en"), ("back", "/calls"), ("_csrf", &csrf_of(&page))]).await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        assert_eq!(headers["location"], "/calls");
        let (_, _, page) = v.get("/").await;
        assert!(page.contains(">Live<") && page.contains("Answer rate"), "{page}");
        // Only a path of this site to go back to.
        let (_, headers, _) = v.post_form("/language", &[("lang", "vi"), ("back", "//evil.example/"), ("_csrf", &csrf_of(&page))]).await;
        assert_eq!(headers["location"], "/");
        server.stop().await;
    }
}

on_every_backend! {
    async fn the_callback_list_closes_by_hand_with_a_note(db) {
        let server = TestServer::start_with(dashboard_settings(&db, false), None).await;
        let missed = call_event("CB1", "missed", "inbound", "0901234567", "", "19001234", "",
            ["2024-01-13 09:00:00", "", "2024-01-13 09:00:30"], "");
        assert_eq!(server.post(missed.to_string()).await.0, StatusCode::OK);
        let masked = call_event("CB2", "missed", "inbound", "09012xxx", "", "19001234", "",
            ["2024-01-13 09:10:00", "", "2024-01-13 09:10:30"], "");
        assert_eq!(server.post(masked.to_string()).await.0, StatusCode::OK);
        // The viewer sees the list, without a close form, and cannot close.
        let mut viewer = Visitor::new(&server);
        assert_eq!(viewer.sign_in(VIEWER).await, StatusCode::SEE_OTHER);
        let (status, _, page) = viewer.get("/callbacks").await;
        assert_eq!(status, StatusCode::OK);
        assert!(page.contains("href=\"tel:+84901234567\""), "a tel: link: {page}");
        assert!(!page.contains("tel:09012xxx"), "no link for a masked number");
        assert!(page.contains("age red"), "a miss of 2024 is long past the red target");
        assert!(!page.contains("/close\""), "no close form for the viewer");
        let (_, items) = get_as(&server, "/api/callbacks?state=open&phone=0901234567", TOKEN).await;
        let item = items["items"][0]["id"].as_str().unwrap().to_string();
        let (status, _, _) = viewer.post_form(&format!("/callbacks/{item}/close"),
            &[("note", "x"), ("_csrf", &csrf_of(&page))]).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        // The admin closes it with a note.
        let mut admin = Visitor::new(&server);
        assert_eq!(admin.sign_in(TOKEN).await, StatusCode::SEE_OTHER);
        let (_, _, page) = admin.get("/callbacks").await;
        assert!(page.contains(&format!("action=\"/callbacks/{item}/close\"")), "{page}");
        let (status, headers, _) = admin.post_form(&format!("/callbacks/{item}/close"),
            &[("note", "called back from a mobile <b>"), ("_csrf", &csrf_of(&page))]).await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        assert_eq!(headers["location"], "/callbacks");
        let (_, closed) = get_as(&server, "/api/callbacks?state=closed&phone=0901234567", TOKEN).await;
        assert_eq!(closed["items"][0]["closed_reason"], "manual");
        assert_eq!(closed["items"][0]["note"], "called back from a mobile <b>");
        assert_eq!(closed["items"][0]["closed_by"], "admin", "who closed it");
        let (_, _, page) = admin.get("/callbacks").await;
        let open_part = page.split("id=\"closed-items\"").next().unwrap();
        assert!(!open_part.contains(&item), "closed: out of the open list");
        let closed_part = page.split("id=\"closed-items\"").nth(1).unwrap();
        assert!(closed_part.contains("By hand (Administrator)") && closed_part.contains("called back from a mobile &lt;b&gt;"), "{closed_part}");
        server.stop().await;
    }

    async fn the_forwarding_page_creates_disables_and_shows_health(db) {
        let server = TestServer::start_with(dashboard_settings(&db, false), None).await;
        let mut admin = Visitor::new(&server);
        assert_eq!(admin.sign_in(TOKEN).await, StatusCode::SEE_OTHER);
        let (status, _, page) = admin.get("/forwarding").await;
        assert_eq!(status, StatusCode::OK);
        let csrf = csrf_of(&page);
        // A wrong URL: said on the page.
        let (status, _, page) = admin.post_form("/forwarding", &[("url", "ftp://x"), ("_csrf", &csrf)]).await;
        assert_eq!(status, StatusCode::OK);
        assert!(page.contains("class=\"error\"") && page.contains("url"), "{page}");
        assert!(page.contains("value=\"ftp://x\""), "the form keeps what was sent: {page}");
        let (status, _, page) = admin.post_form("/forwarding", &[("url", "http://127.0.0.1:9/hook"),
            ("description", "CRM <script>"), ("status", "missed"), ("_csrf", &csrf)]).await;
        assert_eq!(status, StatusCode::OK);
        assert!(page.contains("id=\"secret\">whsec_"), "the secret shown once: {page}");
        assert!(page.contains("CRM &lt;script&gt;"));
        let (_, list) = get_as(&server, "/api/destinations", TOKEN).await;
        let d = &list["items"][0];
        let id = d["id"].as_str().unwrap().to_string();
        assert_eq!(d["filter"]["status"], "missed");
        let (status, _, _) = admin.post_form(&format!("/forwarding/{id}/disable"), &[("_csrf", &csrf)]).await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        let (_, d) = get_as(&server, &format!("/api/destinations/{id}"), TOKEN).await;
        assert_eq!(d["enabled"], false);
        let (status, _, _) = admin.post_form(&format!("/forwarding/{id}/edit"),
            &[("url", "http://127.0.0.1:9/other"), ("description", "CRM"), ("_csrf", &csrf)]).await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        let (_, d) = get_as(&server, &format!("/api/destinations/{id}"), TOKEN).await;
        assert_eq!(d["url"], "http://127.0.0.1:9/other");
        let (_, _, page) = admin.get("/forwarding").await;
        assert!(page.contains("Disabled") && page.contains(&id));
        // The viewer sees it all and changes nothing.
        let mut viewer = Visitor::new(&server);
        assert_eq!(viewer.sign_in(VIEWER).await, StatusCode::SEE_OTHER);
        let (_, _, page) = viewer.get("/forwarding").await;
        assert!(page.contains(&id) && !page.contains("id=\"new-destination\""));
        let vcsrf = csrf_of(&page);
        for path in [format!("/forwarding/{id}/enable"), "/forwarding".to_string()] {
            let (status, _, _) = viewer.post_form(&path, &[("url", "http://127.0.0.1:9/x"), ("_csrf", &vcsrf)]).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        }
        let (_, d) = get_as(&server, &format!("/api/destinations/{id}"), TOKEN).await;
        assert_eq!(d["enabled"], false);
        server.stop().await;
    }

    async fn the_reports_page_shows_the_figures_of_the_range(db) {
        let server = TestServer::start_with(dashboard_settings(&db, false), None).await;
        for (i, status) in ["answered", "answered", "missed", "answered"].iter().enumerate() {
            let answer = if *status == "answered" { "2024-01-13 09:00:10" } else { "" };
            let e = call_event(&format!("R{i}"), status, "inbound", &format!("090123456{i}"), "101",
                "19001234", "lan", ["2024-01-13 09:00:00", answer, "2024-01-13 09:02:00"], "");
            assert_eq!(server.post(e.to_string()).await.0, StatusCode::OK);
        }
        let mut v = Visitor::new(&server);
        assert_eq!(v.sign_in(TOKEN).await, StatusCode::SEE_OTHER);
        let (status, _, page) = v.get("/reports?from=2024-01-10&to=2024-01-16").await;
        assert_eq!(status, StatusCode::OK);
        let tile = |name: &str| {
            let marker = format!("data-figure=\"{name}\">");
            let rest = page.split(&marker).nth(1).unwrap_or_else(|| panic!("{name}"));
            rest.split("<span class=\"value\">").nth(1).unwrap().split('<').next().unwrap().to_string()
        };
        assert_eq!(tile("calls"), "4");
        assert_eq!(tile("answered"), "3");
        assert_eq!(tile("unanswered"), "1");
        assert_eq!(tile("answer_rate"), "75.0%");
        assert!(page.contains("id=\"chart\"") && page.contains("id=\"heatmap\""));
        assert!(page.contains("id=\"agents\"") && page.contains(">lan<"));
        assert!(page.contains("/api/export/calls?format=csv"), "a CSV download");
        // A wrong date: said, not a crash.
        let (status, _, page) = v.get("/reports?from=soon").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{page}");
        server.stop().await;
    }
}

on_every_backend! {
    async fn a_live_stream_of_a_session_ends_when_it_signs_out(db) {
        let server = TestServer::start_with(dashboard_settings(&db, false), None).await;
        let mut v = Visitor::new(&server);
        assert_eq!(v.sign_in(TOKEN).await, StatusCode::SEE_OTHER);
        let (_, _, page) = v.get("/").await;
        let stream = v.request(reqwest::Method::GET, "/api/stream").send().await.unwrap();
        assert_eq!(stream.status(), StatusCode::OK);
        let (status, _, _) = v.post_form("/logout", &[("_csrf", &csrf_of(&page))]).await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        // Within the check's interval (10 s) and a margin, the server ends it.
        let ended = tokio::time::timeout(std::time::Duration::from_secs(30), async {
            let mut stream = stream;
            while let Ok(Some(_)) = stream.chunk().await {}
        })
        .await;
        assert!(ended.is_ok(), "the stream went on after its session signed out");
        server.stop().await;
    }
}

async fn post_json(
    server: &TestServer,
    path: &str,
    auth: Option<&str>,
    body: Value,
) -> (StatusCode, Value) {
    send(server, "POST", path, auth, body).await
}

/// A JSON request with a Bearer token.
pub async fn send(
    server: &TestServer,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: Value,
) -> (StatusCode, Value) {
    let client = reqwest::Client::new();
    let mut r = client.request(method.parse().unwrap(), server.url(path));
    if let Some(auth) = auth {
        r = r.bearer_auth(auth);
    }
    if !body.is_null() {
        r = r.json(&body);
    }
    let r = r.send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[test]
fn the_embedded_assets_stay_small() {
    let size = alohook::web::assets_size();
    assert!(size <= 300 * 1024, "{size} bytes of assets, over 300 KiB");
}
