//! The dashboard: server-rendered pages (maud: every value escaped by the template itself), one
//! small stylesheet and one small script embedded in the binary, no inline script.
//!
//! The pages read through the JSON API's own handlers, so a figure on a page is the API's figure.
//! The script only enhances: it follows the live stream on the Live page. Every response carries
//! a Content-Security-Policy that allows no inline script and no framing.

mod forwarding;
pub mod i18n;
mod pages;
pub mod reports;
pub mod session;

use axum::extract::{Form, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::AppState;
use i18n::Lang;
use session::{Role, Session, set_cookie};

/// The content security policy of every response: scripts and styles from alohook only, no
/// inline script, no framing; recordings may play from Alohub's servers.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; media-src http: https:; form-action 'self'; frame-ancestors 'none'; \
     base-uri 'none'";

/// The cookie that carries the sign-in form's CSRF token (there is no session yet).
const FORM_COOKIE: &str = "alohook_form";

const APP_CSS: &str = include_str!("assets/app.css");
const APP_JS: &str = include_str!("assets/app.js");

/// The dashboard's routes (described in the OpenAPI document too, under the `dashboard` tag):
/// the signed-in pages behind a session, and the reads' limits.
pub fn routes(state: Option<AppState>) -> OpenApiRouter<AppState> {
    let mut signed_in = OpenApiRouter::new()
        .routes(routes!(pages::live))
        .routes(routes!(pages::calls, pages::calls_search))
        .routes(routes!(pages::call))
        .routes(routes!(pages::callbacks))
        .routes(routes!(pages::close_callback))
        .routes(routes!(reports::reports))
        .routes(routes!(forwarding::forwarding, forwarding::create))
        .routes(routes!(forwarding::act))
        .routes(routes!(logout));
    if let Some(state) = state {
        signed_in = signed_in
            .route_layer(axum::middleware::from_fn_with_state(
                state.clone(),
                crate::api::auth::limit_reads,
            ))
            .route_layer(axum::middleware::from_fn_with_state(state, require_session));
    }
    OpenApiRouter::new()
        .routes(routes!(login_page, login))
        .routes(routes!(language))
        .routes(routes!(css))
        .routes(routes!(js))
        .merge(signed_in)
}

/// Middleware: the security headers of every response, the API's included.
pub async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// What a signed-in page knows of its request.
#[derive(Clone)]
pub struct Ctx {
    pub session: Session,
    pub lang: Lang,
    /// The path asked for (the language switch comes back to it).
    pub path: String,
}

impl Ctx {
    pub fn t(&self, key: &'static str) -> &'static str {
        self.lang.t(key)
    }

    pub fn csrf(&self) -> String {
        self.session.csrf()
    }

    pub fn admin(&self) -> bool {
        self.session.role == Role::Admin
    }
}

fn now() -> i64 {
    crate::model::time::now_micros() / 1_000_000
}

/// Middleware in front of the signed-in pages: a valid session, or the sign-in page. A session
/// in use is kept alive.
async fn require_session(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let now = now();
    let session =
        match session::signed_in(&state.access, state.store.as_ref(), request.headers(), now).await
        {
            Ok(Some(session)) => session,
            Ok(None) => return Redirect::to("/login").into_response(),
            Err(error) => return unavailable(error),
        };
    let refreshed = session
        .touched(now)
        .map(|s| s.set_cookie(request.headers()));
    let ctx = Ctx {
        lang: Lang::of(request.headers()),
        path: request
            .uri()
            .path_and_query()
            .map_or_else(|| "/".to_string(), |p| p.to_string()),
        session,
    };
    request.extensions_mut().insert(ctx);
    let mut response = next.run(request).await;
    if let Some(cookie) = refreshed {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    // Call data, and a new destination's secret, stay out of the browser's cache (a shared
    // computer's Back button after sign-out).
    no_store(&mut response);
    response
}

/// 503 when the database cannot say whether a session was signed out.
fn unavailable(error: crate::store::StoreError) -> Response {
    tracing::error!(%error, "cannot check a dashboard session");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "5")],
        "The database does not answer; try again in a moment.",
    )
        .into_response()
}

/// The answer to a form without its CSRF token (a page made elsewhere, or left open too long).
pub(crate) fn csrf_refused() -> Response {
    (
        StatusCode::FORBIDDEN,
        "the form's CSRF token is missing or wrong",
    )
        .into_response()
}

/// Whether a form's `_csrf` is the session's token, or, without a session, the sign-in form's.
async fn form_csrf_ok(state: &AppState, headers: &HeaderMap, presented: &str) -> bool {
    match session::signed_in(&state.access, state.store.as_ref(), headers, now())
        .await
        .ok()
        .flatten()
    {
        Some(session) => session.csrf_matches(presented),
        None => session::cookie(headers, FORM_COOKIE).is_some_and(|expected| {
            use subtle::ConstantTimeEq;
            !expected.is_empty()
                && expected.len() == presented.len()
                && bool::from(expected.as_bytes().ct_eq(presented.as_bytes()))
        }),
    }
}

/// The page around every page's content.
pub fn layout(ctx: &Ctx, title: &str, active: &str, content: Markup) -> Markup {
    let nav = [
        ("/", "nav.live"),
        ("/calls", "nav.calls"),
        ("/callbacks", "nav.callbacks"),
        ("/reports", "nav.reports"),
        ("/forwarding", "nav.forwarding"),
    ];
    html! {
        (DOCTYPE)
        html lang=(ctx.lang.code()) {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="csrf-token" content=(ctx.csrf());
                title { (title) " · alohook" }
                link rel="stylesheet" href="/assets/app.css";
                script src="/assets/app.js" defer {}
            }
            body {
                header.top {
                    a.brand href="/" { "alohook" }
                    nav {
                        @for (href, key) in nav {
                            a href=(href) aria-current=[(active == key).then_some("page")] { (ctx.t(key)) }
                        }
                    }
                    div.who {
                        span.role { (ctx.t(if ctx.admin() { "role.admin" } else { "role.viewer" })) }
                        (language_form(ctx.lang, &ctx.csrf(), &ctx.path))
                        form method="post" action="/logout" {
                            input type="hidden" name="_csrf" value=(ctx.csrf());
                            button type="submit" id="sign-out" { (ctx.t("sign_out")) }
                        }
                    }
                }
                main id="main" { (content) }
            }
        }
    }
}

fn language_form(lang: Lang, csrf: &str, back: &str) -> Markup {
    html! {
        form.language method="post" action="/language" {
            input type="hidden" name="_csrf" value=(csrf);
            input type="hidden" name="lang" value=(lang.other().code());
            input type="hidden" name="back" value=(back);
            button type="submit" id="language" lang=(lang.other().code()) { (lang.t("language")) }
        }
    }
}

#[utoipa::path(get, path = "/assets/app.css", tag = "dashboard",
    responses((status = 200, description = "The dashboard's stylesheet", content_type = "text/css", body = String)))]
async fn css() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

#[utoipa::path(get, path = "/assets/app.js", tag = "dashboard",
    responses((status = 200, description = "The dashboard's script", content_type = "text/javascript", body = String)))]
async fn js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}

/// Whether `target` is a path of this site (with its query), safe to redirect to: `/…`, not
/// `//host` or `/\host`, no whitespace or control character (which browsers drop, making
/// `/<tab>/host` into `//host`).
fn local_path(target: &str) -> bool {
    target.starts_with('/')
        && !target.starts_with("//")
        && !target.contains('\\')
        && !target.chars().any(|c| c.is_whitespace() || c.is_control())
        && target
            .parse::<axum::http::Uri>()
            .is_ok_and(|u| u.scheme().is_none() && u.authority().is_none())
}

/// Text as one segment of a path or a query value: everything but letters, digits and `-._~`
/// percent-encoded.
pub fn urlencode(text: &str) -> String {
    const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(text, SEGMENT).to_string()
}

/// The bytes of the embedded assets (the issue bounds them).
pub fn assets_size() -> usize {
    APP_CSS.len() + APP_JS.len()
}

fn login_markup(lang: Lang, form_token: &str, problem: Option<&'static str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang=(lang.code()) {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (lang.t("sign_in")) " · alohook" }
                link rel="stylesheet" href="/assets/app.css";
            }
            body.login {
                main id="main" {
                    h1 { "alohook" }
                    form method="post" action="/login" {
                        input type="hidden" name="_csrf" value=(form_token);
                        p { (lang.t("sign_in.help")) }
                        @if let Some(problem) = problem {
                            p.error role="alert" { (lang.t(problem)) }
                        }
                        label for="token" { (lang.t("token")) }
                        input id="token" name="token" type="password" autocomplete="current-password" required autofocus;
                        button type="submit" id="sign-in" { (lang.t("sign_in")) }
                    }
                    (language_form(lang, form_token, "/login"))
                }
            }
        }
    }
}

/// The sign-in page (a signed-in visitor goes on to the Live page).
#[utoipa::path(get, path = "/login", tag = "dashboard",
    responses((status = 200, description = "The sign-in page", content_type = "text/html", body = String),
        (status = 303, description = "Signed in already: to the Live page")))]
async fn login_page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Ok(Some(_)) =
        session::signed_in(&state.access, state.store.as_ref(), &headers, now()).await
    {
        return Redirect::to("/").into_response();
    }
    login_form(&headers, StatusCode::OK, None)
}

fn login_form(headers: &HeaderMap, status: StatusCode, problem: Option<&'static str>) -> Response {
    let token = session::cookie(headers, FORM_COOKIE)
        .filter(|t| t.len() == 43)
        .unwrap_or_else(|| {
            use base64::Engine;
            let mut bytes = [0u8; 32];
            getrandom::fill(&mut bytes).expect("the operating system's random source");
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        });
    let mut response = (status, login_markup(Lang::of(headers), &token, problem)).into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(FORM_COOKIE, &token, headers, Some(3600)),
    );
    no_store(&mut response);
    response
}

fn no_store(response: &mut Response) {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_a_path_of_this_site_is_gone_back_to() {
        for good in [
            "/",
            "/calls",
            "/reports?from=2024-01-01&to=2024-01-07",
            "/calls/cb_1",
        ] {
            assert!(super::local_path(good), "{good}");
        }
        for bad in [
            "",
            "//evil.example/",
            "/\\evil.example",
            "/\t/evil.example",
            "https://evil.example/",
            "/ /evil",
            "evil",
        ] {
            assert!(!super::local_path(bad), "{bad:?}");
        }
    }
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    _csrf: String,
}

/// Signs in with a token: the API token is the admin, the viewer token the viewer.
#[utoipa::path(post, path = "/login", tag = "dashboard",
    request_body(content = String, content_type = "application/x-www-form-urlencoded", description = "`token` and the form's `_csrf`"),
    responses((status = 303, description = "Signed in: the session cookie, and on to the Live page"),
        (status = 401, description = "Not a token of this server", content_type = "text/html", body = String),
        (status = 403, description = "The form's CSRF token is missing or wrong", content_type = "text/html", body = String)))]
async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    if !form_csrf_ok(&state, &headers, &form._csrf).await {
        return login_form(&headers, StatusCode::FORBIDDEN, Some("sign_in.expired"));
    }
    let token = form.token.trim().as_bytes();
    let session = state
        .access
        .role_of_token(token)
        .and_then(|role| state.access.start(role, token, now()));
    let Some(session) = session else {
        tracing::warn!("dashboard sign-in refused: not a token of this server");
        // A wrong token costs its sender a second.
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        return login_form(&headers, StatusCode::UNAUTHORIZED, Some("sign_in.wrong"));
    };
    tracing::info!(role = session.role.as_str(), "dashboard sign-in");
    let mut response = Redirect::to("/").into_response();
    response
        .headers_mut()
        .append(header::SET_COOKIE, session.set_cookie(&headers));
    response
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    _csrf: String,
}

/// Signs out: the browser forgets the session.
#[utoipa::path(post, path = "/logout", tag = "dashboard",
    request_body(content = String, content_type = "application/x-www-form-urlencoded", description = "The session's `_csrf`"),
    responses((status = 303, description = "Signed out: the cookie removed, on to the sign-in page"),
        (status = 403, description = "The form's CSRF token is missing or wrong", body = String)))]
async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    if !form_csrf_ok(&state, &headers, &form._csrf).await {
        return csrf_refused();
    }
    // Remembered until the cookie would have expired anyway, so that the cookie, if it was
    // copied, opens nothing any more.
    if let Some(session) = state.access.session(&headers, now()) {
        let idle = i64::try_from(state.access.idle.as_secs()).unwrap_or(i64::MAX / 2);
        let forget_before = now() - idle - 120;
        if let Err(error) = state
            .store
            .end_session(&session.id(), now(), forget_before)
            .await
        {
            tracing::error!(%error, "cannot remember a sign-out");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot sign out now: the database does not answer; try again",
            )
                .into_response();
        }
        tracing::info!(role = session.role.as_str(), "dashboard sign-out");
    }
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(session::COOKIE, "", &headers, Some(0)),
    );
    response
}

#[derive(Deserialize)]
struct LanguageForm {
    #[serde(default)]
    lang: String,
    #[serde(default)]
    back: String,
    #[serde(default)]
    _csrf: String,
}

/// Switches the language (kept in a cookie for a year) and goes back to the page.
#[utoipa::path(post, path = "/language", tag = "dashboard",
    request_body(content = String, content_type = "application/x-www-form-urlencoded", description = "`lang` (`vi` or `en`), `back` (a path of this site) and `_csrf`"),
    responses((status = 303, description = "The language kept in a cookie; back to the page"),
        (status = 400, description = "`lang` is not vi or en", body = String),
        (status = 403, description = "The form's CSRF token is missing or wrong", body = String)))]
async fn language(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<LanguageForm>,
) -> Response {
    if !form_csrf_ok(&state, &headers, &form._csrf).await {
        return csrf_refused();
    }
    let Some(lang) = Lang::parse(&form.lang) else {
        return (StatusCode::BAD_REQUEST, "lang is vi or en").into_response();
    };
    let back = if local_path(&form.back) {
        form.back
    } else {
        "/".to_string()
    };
    let mut response = Redirect::to(&back).into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(i18n::COOKIE, lang.code(), &headers, Some(365 * 24 * 3600)),
    );
    response
}
