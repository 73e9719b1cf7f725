//! `GET /api/openapi.json`: the OpenAPI 3.1 document of every route, generated from the handlers'
//! `#[utoipa::path]` annotations as the router is built (`utoipa_axum::routes!` registers a
//! handler and its description together, so a route cannot be served without being described).
//!
//! The query parameters are parsed by hand (`calls::Params`, which refuses unknown names); the
//! structs here describe them, and a test checks that each operation documents exactly the
//! parameters its handler accepts.

use std::collections::BTreeMap;

use serde::Serialize;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{OpenApi, Response, ResponseBuilder, SecurityRequirement};
use utoipa::{IntoParams, Modify, ToSchema};

use super::calls::CallView;

/// The title, version and the shapes every operation shares.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "alohook",
        description = "Receives Alohub's call-status webhooks, keeps every event, rebuilds one \
                       record per call, and serves calls, the change feed, forwarding, call-centre \
                       figures and the missed-call callback worklist. Every /api route but this \
                       document takes `Authorization: Bearer <api token>`. Errors are \
                       `{\"error\": code, \"parameter\"?: name, \"detail\"?: text}`."
    ),
    components(schemas(ErrorBody)),
    modifiers(&Shared),
    tags(
        (name = "webhook", description = "What Alohub sends"),
        (name = "calls", description = "Call records, their events, the quarantine"),
        (name = "figures", description = "Call-centre figures, the callback worklist, exports"),
        (name = "feed", description = "The change feed: a page at a time, or live"),
        (name = "forwarding", description = "Destinations, deliveries, replays"),
        (name = "operations", description = "Health, readiness, metrics, this document"),
    )
)]
pub struct ApiDoc;

/// The error shape of every non-2xx answer.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// `unauthorized`, `not_found`, `method_not_allowed`, `payload_too_large`,
    /// `request_timeout`, `invalid_json`, `invalid_event`, `invalid_parameter`, `unavailable`.
    #[schema(example = "invalid_parameter")]
    pub error: &'static str,
    /// The parameter or field at fault (`invalid_parameter`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameter: Option<String>,
    /// What is wrong, for people.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

fn error(description: &str) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            utoipa::openapi::ContentBuilder::new()
                .schema(Some(utoipa::openapi::Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build()
}

/// What every operation shares, added to each rather than repeated on each: the security
/// schemes, and the errors any `/api` request may meet (401 without the token, 408 past the time
/// limit, 503 when the store cannot answer or a limit is reached).
struct Shared;

impl Modify for Shared {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("--api-token (or ALOHOOK_API_TOKEN)"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "webhook_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Authorization",
                "--webhook-key: the key given to Alohub, as the whole header or after `Bearer `",
            ))),
        );
    }
}

/// Adds [`Shared`]'s errors and security to every operation of `openapi` (called once the paths
/// are all in: `Modify` runs before them).
pub fn finish(mut openapi: OpenApi) -> OpenApi {
    for (path, item) in openapi.paths.paths.iter_mut() {
        let api = path.starts_with("/api/") && path != "/api/openapi.json";
        let webhook = path == "/webhooks/alohub";
        for operation in [
            &mut item.get,
            &mut item.post,
            &mut item.patch,
            &mut item.delete,
            &mut item.put,
        ]
        .into_iter()
        .flatten()
        {
            let responses = &mut operation.responses.responses;
            for response in responses.values_mut() {
                if let utoipa::openapi::RefOr::T(response) = response
                    && response.description.is_empty()
                {
                    response.description = "OK".to_string();
                }
            }
            let mut add = |status: &str, response: Response| {
                responses
                    .entry(status.to_string())
                    .or_insert_with(|| response.into());
            };
            add("405", error("The path exists but not with this method"));
            if api || webhook {
                add("401", error("No valid key or token in `Authorization`"));
            }
            if api {
                add(
                    "403",
                    error(
                        "The viewer role, or a dashboard session without its CSRF token, may not change this",
                    ),
                );
                add("408", error("Not answered within 30 s"));
                add(
                    "503",
                    error("The store cannot answer now, or a limit is reached; `Retry-After: 1`"),
                );
                operation.security = Some(vec![SecurityRequirement::new(
                    "api_token",
                    Vec::<String>::new(),
                )]);
            }
            if webhook {
                operation.security = Some(vec![SecurityRequirement::new(
                    "webhook_key",
                    Vec::<String>::new(),
                )]);
            }
        }
    }
    openapi
}

/// The document as served, built once.
static DOCUMENT: std::sync::LazyLock<bytes::Bytes> = std::sync::LazyLock::new(|| {
    super::openapi()
        .to_json()
        .expect("the OpenAPI document serialises")
        .into()
});

/// `GET /api/openapi.json`: this document (no token needed: it holds no data).
#[utoipa::path(get, path = "/api/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json")))]
pub async fn document() -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        DOCUMENT.clone(),
    )
        .into_response()
}

/// Where a destination starts: `now`, `beginning`, or a position (`seq`).
pub fn start_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, SchemaType, Type};
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(SchemaType::Type(Type::String))
                .enum_values(Some(["now", "beginning"])),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(SchemaType::Type(Type::Integer))
                .minimum(Some(0)),
        )
        .build()
        .into()
}

// ---- Parameters. Every field is optional; an empty value counts as absent. ----

/// The call filters of `/api/calls`, which `/api/stats` and `/api/export/calls` take too.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct CallFilters {
    /// `call_status` as Alohub sent it (any case), e.g. `answered`, `missed`.
    status: Option<String>,
    /// `ringing`, `in_progress` or `ended`.
    phase: Option<String>,
    /// `inbound` or `outbound`.
    direction: Option<String>,
    /// The hotline, as sent.
    hotline: Option<String>,
    /// `user_name`, as sent.
    user_name: Option<String>,
    /// `destination_number`, in any usual form.
    destination_number: Option<String>,
    /// `transaction_id`.
    transaction_id: Option<String>,
    /// A number in any usual form (`090…`, `+8490…`, `8490…`): calls with it as caller or
    /// destination.
    phone: Option<String>,
    /// The agent: `user_name`, or the `destination_number` extension of calls with no user name.
    agent: Option<String>,
    /// Calls that started at or after: RFC 3339, or a day `YYYY-MM-DD` in the configured zone.
    from: Option<String>,
    /// Calls that started at or before: RFC 3339, or a day (the whole day).
    to: Option<String>,
}

/// A page: `limit` (1–1000) and the `cursor` a previous page returned as `next_cursor`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct Paging {
    /// Items per page, 1 to 1000 (default 50; 100 for events and changes).
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// `group_by` of `/api/stats`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct StatsQuery {
    /// `none` (default), `agent`, `hotline`, `direction`, `status`, `day`, `hour`,
    /// `hour_of_day` or `weekday`.
    group_by: Option<String>,
}

/// The filters of the callback worklist.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct CallbackFilters {
    /// `open` (default), `closed` or `all`.
    state: Option<String>,
    /// Items with a miss on this hotline.
    hotline: Option<String>,
    /// The customer's number in any usual form.
    phone: Option<String>,
    /// Items first missed at or after: RFC 3339, or a day in the configured zone.
    from: Option<String>,
    /// Items first missed at or before: RFC 3339, or a day (the whole day).
    to: Option<String>,
    /// By `first_missed_at`: `oldest` (default) or `newest` first.
    sort: Option<String>,
}

/// How an export is written.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct ExportFormat {
    /// `csv` (default) or `jsonl`.
    format: Option<String>,
    /// `true` puts a UTF-8 byte order mark before a CSV (for Excel).
    bom: Option<bool>,
}

/// The filters of the change feed (as in `/api/calls`, plus the change types and a call id).
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct ChangeFilters {
    /// The position after which to start (a change's `seq`); default 0 (everything).
    since: Option<i64>,
    /// Comma-separated change types: `call.created`, `call.updated`, `call.ended`,
    /// `event.received`.
    types: Option<String>,
    /// One call.
    call_id: Option<String>,
    /// `call_status`, any case.
    status: Option<String>,
    /// `ringing`, `in_progress` or `ended`.
    phase: Option<String>,
    /// `inbound` or `outbound`.
    direction: Option<String>,
    /// The hotline.
    hotline: Option<String>,
    /// `user_name`.
    user_name: Option<String>,
    /// `transaction_id`.
    transaction_id: Option<String>,
    /// `destination_number`, in any usual form.
    destination_number: Option<String>,
    /// Caller or destination, in any usual form.
    phone: Option<String>,
}

/// Changes per page of `/api/changes`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct ChangesLimit {
    /// 1 to 1000 (default 100).
    limit: Option<u32>,
}

/// The filters of `/api/deliveries`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct DeliveryFilters {
    /// A destination id.
    destination: Option<String>,
    /// `pending`, `delivered` or `dead`.
    state: Option<String>,
    /// The call the change is about.
    call_id: Option<String>,
}

// ---- Bodies the handlers write as JSON values. ----

/// `GET /api/destinations`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct DestinationList {
    items: Vec<super::destinations::DestinationView>,
}

/// A destination's signing secret (`whsec_…`).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct SecretView {
    secret: String,
}

/// What came of a `test.ping`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct PingView {
    delivered: bool,
    webhook_id: String,
    /// The receiver's HTTP status, when it answered.
    status: Option<u16>,
    error: Option<String>,
    duration_ms: u64,
    /// The start of the receiver's answer.
    response: Option<String>,
}

/// A replay started.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ReplayStarted {
    job_id: String,
    /// Changes the filter matched.
    matched: i64,
}

/// A background job.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct JobView {
    id: String,
    /// `replay`.
    kind: String,
    destination_id: String,
    /// `running`, `done` or `failed`.
    state: String,
    matched: i64,
    queued: i64,
    error: Option<String>,
    created_at: String,
    updated_at: String,
}

/// One change of the feed: a call's new record, or an event as received.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ChangeView {
    seq: i64,
    /// `call.created`, `call.updated`, `call.ended` (the call as it is after the event), or
    /// `event.received` (an event that is not a call's).
    #[schema(rename = "type")]
    kind: String,
    event_id: i64,
    received_at: String,
    /// `call.*`: the call as it is after the event.
    call: Option<CallView>,
    /// `event.received`: the event's payload as sent.
    event: Option<BTreeMap<String, serde_json::Value>>,
}

/// `GET /api/changes`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ChangePage {
    items: Vec<ChangeView>,
    /// The `since` of the next page (the last change's `seq`).
    next_since: i64,
}

/// `/healthz` and `/readyz`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Health {
    /// `ok` or `ready`.
    status: String,
}

/// `POST /api/callbacks/{id}/close`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct CloseRequest {
    /// At most 2000 characters.
    note: Option<String>,
}

/// `POST /api/destinations` (and `PATCH`, where every field is optional and `enabled` too).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct DestinationInput {
    /// `http://`/`https://` URL, or `nats://host:port`.
    url: String,
    /// NATS only: the subject template (default `alohook.{type}`).
    subject: Option<String>,
    /// Change types (default: all).
    types: Option<Vec<String>>,
    /// Stream filters by name (as the feed's).
    filter: Option<BTreeMap<String, String>>,
    /// Headers sent with every delivery.
    headers: Option<BTreeMap<String, String>>,
    /// `per_call` (default) or `none`.
    ordering: Option<String>,
    /// `now` (default), `beginning`, or a `seq` (a non-negative integer) after which to start.
    #[schema(schema_with = start_schema)]
    start: Option<serde_json::Value>,
    /// 1–120 (default 15).
    timeout_seconds: Option<u64>,
    /// 1–256 (default 8).
    max_in_flight: Option<u64>,
    description: Option<String>,
    /// `PATCH` only: `false` pauses, `true` resumes.
    enabled: Option<bool>,
}

/// `POST /api/destinations/{id}/replay`: which changes to queue again, of those the destination
/// receives (all of them when the body is empty). The feed's filters (`call_id`, `status`,
/// `phase`, `direction`, `hotline`, `user_name`, `transaction_id`, `destination_number`, `phone`)
/// may be given too.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ReplayRequest {
    /// Changes received at or after (RFC 3339, or a day in the configured zone).
    from: Option<String>,
    /// Changes received at or before (RFC 3339, or a day: the whole day).
    to: Option<String>,
    /// Change types, as a list or comma-separated.
    types: Option<Vec<String>>,
    /// `dead`: only changes whose delivery is dead.
    state: Option<String>,
    call_id: Option<String>,
    status: Option<String>,
    phase: Option<String>,
    direction: Option<String>,
    hotline: Option<String>,
    user_name: Option<String>,
    transaction_id: Option<String>,
    destination_number: Option<String>,
    phone: Option<String>,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::super::{callbacks, calls, deliveries, export, feed};

    fn with(base: &[&'static str], extra: &[&'static str]) -> Vec<&'static str> {
        [base, extra].concat()
    }

    /// Each operation documents exactly the query parameters its handler accepts (the handlers
    /// refuse any other with a 400, so a parameter missing from the document could not be found,
    /// and one documented but refused would mislead).
    #[test]
    fn each_operation_documents_the_parameters_its_handler_takes() {
        let doc = super::super::openapi();
        let accepted: Vec<(&str, Vec<&str>)> = vec![
            (
                "/api/calls",
                with(calls::CALL_FILTERS, &["limit", "cursor"]),
            ),
            ("/api/calls/{call_id}/events", vec!["limit", "cursor"]),
            ("/api/rejected", vec!["limit", "cursor"]),
            ("/api/stats", with(calls::CALL_FILTERS, &["group_by"])),
            ("/api/callbacks", callbacks::LIST_PARAMS.to_vec()),
            (
                "/api/export/calls",
                with(calls::CALL_FILTERS, &["format", "bom"]),
            ),
            ("/api/export/callbacks", export::CALLBACK_PARAMS.to_vec()),
            ("/api/changes", feed::feed_params(&["limit"])),
            ("/api/stream", feed::feed_params(&[])),
            ("/api/deliveries", deliveries::PARAMS.to_vec()),
            ("/reports", crate::web::reports::PARAMS.to_vec()),
        ];
        let mut checked = 0;
        for (path, item) in &doc.paths.paths {
            let Some(get) = &item.get else { continue };
            let documented: BTreeSet<&str> = get
                .parameters
                .iter()
                .flatten()
                .filter(|p| p.parameter_in == utoipa::openapi::path::ParameterIn::Query)
                .map(|p| p.name.as_str())
                .collect();
            let expected: BTreeSet<&str> = accepted
                .iter()
                .find(|(p, _)| p == path)
                .map(|(_, names)| names.iter().copied().collect())
                .unwrap_or_default();
            assert_eq!(documented, expected, "GET {path}");
            checked += 1;
        }
        assert!(checked >= accepted.len());
    }
}
