//! Destinations: where forwarded changes go, and which ones. What a partner sends to
//! `POST /api/destinations` (or `alohook destinations add`) is checked here, field by field, so
//! that a bad field is answered 400 naming it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::model::Phase;
use crate::model::change::{ChangeFilter, ChangeType};
use crate::model::phone::normalize_phone;

/// The keys a destination's `filter` takes: the stream's filters.
pub const FILTER_KEYS: &[&str] = &[
    "call_id",
    "status",
    "phase",
    "direction",
    "hotline",
    "user_name",
    "transaction_id",
    "destination_number",
    "phone",
];

/// The subject a NATS destination publishes to when none is given; `{type}` is the change type.
pub const DEFAULT_SUBJECT: &str = "alohook.{type}";
pub const DEFAULT_TIMEOUT_SECONDS: u64 = 15;
pub const DEFAULT_MAX_IN_FLIGHT: u64 = 8;
/// Limits on what a destination may ask for.
const MAX_TIMEOUT_SECONDS: u64 = 120;
const MAX_IN_FLIGHT: u64 = 256;

/// In what order a destination receives the changes of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Ordering {
    /// A call's later change is not sent while an earlier one of the same call is pending.
    PerCall,
    /// No waiting.
    None,
}

/// Where a new destination starts in the feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// With the changes that come from now on.
    Now,
    /// With the first change alohook holds: the whole history.
    Beginning,
    /// With the changes after this position.
    After(i64),
}

impl Serialize for Start {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Start::Now => s.serialize_str("now"),
            Start::Beginning => s.serialize_str("beginning"),
            Start::After(seq) => s.serialize_i64(*seq),
        }
    }
}

impl<'de> Deserialize<'de> for Start {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(d)?;
        parse_start(&value).map_err(serde::de::Error::custom)
    }
}

/// What a destination is, as created (and changed since): everything but its id, its secret and
/// its state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DestinationSpec {
    pub url: String,
    /// NATS only: the subject template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The change types it receives.
    pub types: Vec<String>,
    /// Stream filters, by name.
    pub filter: BTreeMap<String, String>,
    /// Headers sent with every delivery.
    pub headers: BTreeMap<String, String>,
    pub ordering: Ordering,
    /// `now`, `beginning`, or the `seq` after which it started.
    #[schema(schema_with = crate::api::openapi::start_schema)]
    pub start: Start,
    pub timeout_seconds: u64,
    pub max_in_flight: u64,
    #[serde(default)]
    pub description: Option<String>,
}

/// A field that is not what it should be: its name and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub detail: String,
}

fn bad(field: &str, detail: impl Into<String>) -> FieldError {
    FieldError {
        field: field.to_string(),
        detail: detail.into(),
    }
}

/// The fields `POST /api/destinations` takes.
const CREATE_FIELDS: &[&str] = &[
    "url",
    "subject",
    "types",
    "filter",
    "headers",
    "ordering",
    "start",
    "timeout_seconds",
    "max_in_flight",
    "description",
];
/// The fields `PATCH /api/destinations/{id}` takes.
const PATCH_FIELDS: &[&str] = &[
    "url",
    "subject",
    "types",
    "filter",
    "headers",
    "ordering",
    "timeout_seconds",
    "max_in_flight",
    "description",
    "enabled",
];

impl DestinationSpec {
    /// A destination from the body of `POST /api/destinations`: only `url` is required.
    pub fn from_json(body: &Value) -> Result<DestinationSpec, FieldError> {
        let object = body
            .as_object()
            .ok_or_else(|| bad("body", "must be a JSON object"))?;
        check_fields(object, CREATE_FIELDS)?;
        let url = parse_url(object.get("url"))?;
        let mut spec = DestinationSpec {
            subject: None,
            types: ChangeType::ALL
                .iter()
                .map(|t| t.as_str().to_string())
                .collect(),
            filter: BTreeMap::new(),
            headers: BTreeMap::new(),
            ordering: Ordering::PerCall,
            start: Start::Now,
            timeout_seconds: DEFAULT_TIMEOUT_SECONDS,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            description: None,
            url,
        };
        if let Some(start) = object.get("start") {
            spec.start = parse_start(start).map_err(|detail| bad("start", detail))?;
        }
        spec.apply(object)?;
        Ok(spec)
    }

    /// Applies the body of `PATCH /api/destinations/{id}`; answers its `enabled`, if given.
    pub fn patch(&mut self, body: &Value) -> Result<Option<bool>, FieldError> {
        let object = body
            .as_object()
            .ok_or_else(|| bad("body", "must be a JSON object"))?;
        check_fields(object, PATCH_FIELDS)?;
        if object.contains_key("url") {
            self.url = parse_url(object.get("url"))?;
        }
        self.apply(object)?;
        object
            .get("enabled")
            .map(|v| {
                v.as_bool()
                    .ok_or_else(|| bad("enabled", "must be true or false"))
            })
            .transpose()
    }

    /// The fields both create and patch take (all but `url`, `start` and `enabled`).
    fn apply(&mut self, object: &Map<String, Value>) -> Result<(), FieldError> {
        if let Some(types) = object.get("types") {
            self.types = parse_types(types)?;
        }
        if let Some(filter) = object.get("filter") {
            self.filter = parse_filter(filter)?;
        }
        if let Some(headers) = object.get("headers") {
            self.headers = parse_headers(headers)?;
        }
        if let Some(ordering) = object.get("ordering") {
            self.ordering = match ordering.as_str() {
                Some("per_call") => Ordering::PerCall,
                Some("none") => Ordering::None,
                _ => return Err(bad("ordering", "must be \"per_call\" or \"none\"")),
            };
        }
        if let Some(timeout) = object.get("timeout_seconds") {
            self.timeout_seconds = parse_bounded(timeout, "timeout_seconds", MAX_TIMEOUT_SECONDS)?;
        }
        if let Some(in_flight) = object.get("max_in_flight") {
            self.max_in_flight = parse_bounded(in_flight, "max_in_flight", MAX_IN_FLIGHT)?;
        }
        if let Some(description) = object.get("description") {
            self.description = match description {
                Value::Null => None,
                Value::String(s) => Some(s.clone()),
                _ => return Err(bad("description", "must be a string")),
            };
        }
        if let Some(subject) = object.get("subject") {
            self.subject = match subject {
                Value::Null => None,
                Value::String(s) if super::nats::valid_subject(s.trim()) => {
                    Some(s.trim().to_string())
                }
                _ => {
                    return Err(bad(
                        "subject",
                        "must be a NATS subject (dot-separated tokens, no spaces or wildcards; \
                         {type} is replaced by the change type)",
                    ));
                }
            };
        }
        if self.is_nats() {
            self.subject
                .get_or_insert_with(|| DEFAULT_SUBJECT.to_string());
        } else if self.subject.is_some() && !object.contains_key("subject") {
            // Moved from nats:// to http(s)://: the subject went with it.
            self.subject = None;
        } else if self.subject.is_some() {
            return Err(bad("subject", "is for nats:// destinations only"));
        }
        Ok(())
    }

    /// Whether deliveries go to NATS JetStream rather than over HTTP.
    pub fn is_nats(&self) -> bool {
        self.url.starts_with("nats://")
    }

    /// The changes this destination receives, as a feed filter.
    pub fn change_filter(&self) -> ChangeFilter {
        let get = |name: &str| self.filter.get(name).cloned();
        ChangeFilter {
            types: Some(
                self.types
                    .iter()
                    .filter_map(|t| ChangeType::parse(t))
                    .collect(),
            ),
            call_id: get("call_id"),
            status: get("status").map(|s| s.to_lowercase()),
            phase: get("phase").and_then(|p| Phase::parse(&p)),
            direction: get("direction").map(|d| d.to_lowercase()),
            hotline: get("hotline"),
            user_name: get("user_name"),
            transaction_id: get("transaction_id"),
            destination_number: get("destination_number").map(|n| normalize_phone(&n)),
            phone: get("phone").map(|n| normalize_phone(&n)),
        }
    }
}

fn check_fields(object: &Map<String, Value>, known: &[&str]) -> Result<(), FieldError> {
    match object.keys().find(|k| !known.contains(&k.as_str())) {
        Some(unknown) => Err(bad(
            unknown,
            format!("unknown field; known: {}", known.join(", ")),
        )),
        None => Ok(()),
    }
}

/// `http(s)://…` or `nats://host:port`.
fn parse_url(value: Option<&Value>) -> Result<String, FieldError> {
    let text = value
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| bad("url", "required: an http(s):// URL, or nats://host:port"))?;
    let url = reqwest::Url::parse(text).map_err(|e| {
        bad(
            "url",
            format!("not a URL ({e}): give http(s)://… or nats://host:port"),
        )
    })?;
    match url.scheme() {
        "http" | "https" if url.host_str().is_some() => Ok(text.to_string()),
        "nats" if url.host_str().is_some() && url.port().is_some() => Ok(text.to_string()),
        "nats" => Err(bad("url", "a NATS URL is nats://host:port")),
        other => Err(bad(
            "url",
            format!("scheme {other:?}: give http(s)://… or nats://host:port"),
        )),
    }
}

fn parse_start(value: &Value) -> Result<Start, String> {
    match value {
        Value::String(s) if s == "now" => Ok(Start::Now),
        Value::String(s) if s == "beginning" => Ok(Start::Beginning),
        Value::Number(n) => n
            .as_i64()
            .filter(|n| *n >= 0)
            .map(Start::After)
            .ok_or_else(|| "a position must be a non-negative integer".to_string()),
        _ => Err("must be \"now\", \"beginning\" or a position (a seq)".to_string()),
    }
}

pub(crate) fn parse_types(value: &Value) -> Result<Vec<String>, FieldError> {
    let items = value
        .as_array()
        .ok_or_else(|| bad("types", "must be a list of change types"))?;
    let mut types = Vec::new();
    for item in items {
        let t = item.as_str().and_then(ChangeType::parse).ok_or_else(|| {
            bad(
                "types",
                format!(
                    "unknown type {item}; known: {}",
                    ChangeType::ALL.map(ChangeType::as_str).join(", ")
                ),
            )
        })?;
        if !types.contains(&t.as_str().to_string()) {
            types.push(t.as_str().to_string());
        }
    }
    if types.is_empty() {
        return Err(bad(
            "types",
            "must name at least one type (leave it out for all)",
        ));
    }
    Ok(types)
}

pub(crate) fn parse_filter(value: &Value) -> Result<BTreeMap<String, String>, FieldError> {
    let object = match value {
        Value::Null => return Ok(BTreeMap::new()),
        Value::Object(o) => o,
        _ => return Err(bad("filter", "must be an object of stream filters")),
    };
    let mut filter = BTreeMap::new();
    for (key, value) in object {
        if !FILTER_KEYS.contains(&key.as_str()) {
            return Err(bad(
                "filter",
                format!("unknown filter {key:?}; known: {}", FILTER_KEYS.join(", ")),
            ));
        }
        let text = value
            .as_str()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| bad("filter", format!("{key} must be a non-empty string")))?;
        match key.as_str() {
            "phase" if Phase::parse(text).is_none() => {
                return Err(bad(
                    "filter",
                    "phase must be one of ringing, in_progress, ended",
                ));
            }
            "direction" if !matches!(text.to_lowercase().as_str(), "inbound" | "outbound") => {
                return Err(bad("filter", "direction must be inbound or outbound"));
            }
            _ => {}
        }
        filter.insert(key.clone(), text.to_string());
    }
    Ok(filter)
}

fn parse_headers(value: &Value) -> Result<BTreeMap<String, String>, FieldError> {
    let object = match value {
        Value::Null => return Ok(BTreeMap::new()),
        Value::Object(o) => o,
        _ => {
            return Err(bad(
                "headers",
                "must be an object of header names and values",
            ));
        }
    };
    let mut headers = BTreeMap::new();
    for (name, value) in object {
        let value = value
            .as_str()
            .ok_or_else(|| bad("headers", format!("the value of {name} must be a string")))?;
        axum::http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| bad("headers", format!("{name:?} is not a header name")))?;
        axum::http::HeaderValue::from_str(value).map_err(|_| {
            bad(
                "headers",
                format!("the value of {name} is not a header value"),
            )
        })?;
        let lower = name.to_ascii_lowercase();
        if lower.starts_with("webhook-")
            || [
                "content-type",
                "content-length",
                "user-agent",
                "nats-msg-id",
            ]
            .contains(&lower.as_str())
        {
            return Err(bad(
                "headers",
                format!("{name} is set by alohook on every delivery"),
            ));
        }
        headers.insert(name.clone(), value.to_string());
    }
    Ok(headers)
}

fn parse_bounded(value: &Value, field: &str, max: u64) -> Result<u64, FieldError> {
    value
        .as_u64()
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| bad(field, format!("must be an integer from 1 to {max}")))
}

/// A destination's URL as logs and error messages show it: without credentials or query (either
/// may carry a secret).
pub fn shown_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) => {
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.set_query(None);
            parsed.set_fragment(None);
            parsed.to_string()
        }
        Err(_) => "(not a URL)".to_string(),
    }
}

/// A new destination's id: `dst_` and 20 random hex digits.
pub fn new_id() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 10];
    getrandom::fill(&mut bytes)?;
    Ok(format!(
        "dst_{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_url_is_required_and_the_rest_defaults() {
        let spec =
            DestinationSpec::from_json(&json!({"url": "https://crm.example.com/hook"})).unwrap();
        assert_eq!(spec.types.len(), 4);
        assert!(spec.filter.is_empty() && spec.headers.is_empty());
        assert_eq!(spec.ordering, Ordering::PerCall);
        assert_eq!(spec.start, Start::Now);
        assert_eq!(
            (spec.timeout_seconds, spec.max_in_flight),
            (DEFAULT_TIMEOUT_SECONDS, DEFAULT_MAX_IN_FLIGHT)
        );
        assert_eq!(spec.change_filter().types.unwrap().len(), 4);
    }

    #[test]
    fn the_issues_example_reads_as_written() {
        let spec = DestinationSpec::from_json(&json!({
            "url": "https://crm.example.com/hooks/alohub", "types": ["call.ended"],
            "filter": {"hotline": "19001234", "direction": "inbound", "status": "missed"},
            "headers": {"X-Api-Key": "k"}, "ordering": "per_call", "start": "now",
            "timeout_seconds": 15, "max_in_flight": 8, "description": "CRM"}))
        .unwrap();
        let filter = spec.change_filter();
        assert_eq!(filter.types, Some(vec![ChangeType::CallEnded]));
        assert_eq!(filter.status.as_deref(), Some("missed"));
        assert_eq!(filter.hotline.as_deref(), Some("19001234"));
        assert_eq!(spec.description.as_deref(), Some("CRM"));
        let back: DestinationSpec =
            serde_json::from_value(serde_json::to_value(&spec).unwrap()).unwrap();
        assert_eq!(back, spec);
        for start in [json!("beginning"), json!(42)] {
            let spec =
                DestinationSpec::from_json(&json!({"url": "http://h/x", "start": start})).unwrap();
            let back: DestinationSpec =
                serde_json::from_value(serde_json::to_value(&spec).unwrap()).unwrap();
            assert_eq!(back.start, spec.start);
        }
    }

    #[test]
    fn a_bad_field_is_named() {
        for (body, field) in [
            (json!({}), "url"),
            (json!({"url": "ftp://x/y"}), "url"),
            (json!({"url": "not a url"}), "url"),
            (json!({"url": "nats://host"}), "url"),
            (
                json!({"url": "http://h/x", "types": ["call.bogus"]}),
                "types",
            ),
            (json!({"url": "http://h/x", "types": []}), "types"),
            (
                json!({"url": "http://h/x", "filter": {"color": "red"}}),
                "filter",
            ),
            (
                json!({"url": "http://h/x", "filter": {"phase": "over"}}),
                "filter",
            ),
            (
                json!({"url": "http://h/x", "headers": {"webhook-id": "x"}}),
                "headers",
            ),
            (
                json!({"url": "http://h/x", "headers": {"bad name": "x"}}),
                "headers",
            ),
            (
                json!({"url": "http://h/x", "ordering": "random"}),
                "ordering",
            ),
            (json!({"url": "http://h/x", "start": "yesterday"}), "start"),
            (json!({"url": "http://h/x", "start": -1}), "start"),
            (
                json!({"url": "http://h/x", "timeout_seconds": 0}),
                "timeout_seconds",
            ),
            (
                json!({"url": "http://h/x", "max_in_flight": 100000}),
                "max_in_flight",
            ),
            (json!({"url": "http://h/x", "subject": "a.b"}), "subject"),
            (json!({"url": "http://h/x", "secret": "mine"}), "secret"),
            (json!(["url"]), "body"),
        ] {
            let error = DestinationSpec::from_json(&body).unwrap_err();
            assert_eq!(error.field, field, "{body}: {error:?}");
        }
    }

    #[test]
    fn nats_destinations_get_a_subject_template() {
        let spec = DestinationSpec::from_json(&json!({"url": "nats://127.0.0.1:4222"})).unwrap();
        assert!(spec.is_nats());
        assert_eq!(spec.subject.as_deref(), Some(DEFAULT_SUBJECT));
    }

    #[test]
    fn a_patch_changes_only_what_it_names() {
        let mut spec = DestinationSpec::from_json(&json!({"url": "http://h/x",
            "description": "CRM", "filter": {"status": "missed"}}))
        .unwrap();
        let enabled = spec
            .patch(&json!({"enabled": false, "max_in_flight": 2}))
            .unwrap();
        assert_eq!(enabled, Some(false));
        assert_eq!(spec.max_in_flight, 2);
        assert_eq!(spec.description.as_deref(), Some("CRM"));
        assert_eq!(
            spec.filter.get("status").map(String::as_str),
            Some("missed")
        );
        assert_eq!(
            spec.patch(&json!({"start": "beginning"}))
                .unwrap_err()
                .field,
            "start"
        );
        assert_eq!(
            spec.patch(&json!({"enabled": "yes"})).unwrap_err().field,
            "enabled"
        );
    }

    #[test]
    fn ids_are_dst_and_random() {
        let (a, b) = (new_id().unwrap(), new_id().unwrap());
        assert!(a.starts_with("dst_") && a.len() == 24);
        assert_ne!(a, b);
    }

    #[test]
    fn urls_are_shown_without_credentials_or_query() {
        assert_eq!(
            shown_url("https://user:pw@crm.example.com/hook?token=s3cret#x"),
            "https://crm.example.com/hook"
        );
        assert_eq!(
            shown_url("nats://u:p@127.0.0.1:4222"),
            "nats://127.0.0.1:4222"
        );
    }

    #[test]
    fn a_nats_destination_moved_to_http_drops_its_subject() {
        let mut spec =
            DestinationSpec::from_json(&json!({"url": "nats://127.0.0.1:4222"})).unwrap();
        assert_eq!(spec.subject.as_deref(), Some(DEFAULT_SUBJECT));
        spec.patch(&json!({"url": "https://crm.example.com/hook"}))
            .unwrap();
        assert_eq!(spec.subject, None);
        let error = spec.patch(&json!({"subject": "a.b"})).unwrap_err();
        assert_eq!(error.field, "subject");
        for reserved in ["Nats-Msg-Id", "User-Agent", "webhook-id"] {
            let error = DestinationSpec::from_json(
                &json!({"url": "https://h/x", "headers": {reserved: "x"}}),
            )
            .unwrap_err();
            assert_eq!(error.field, "headers", "{reserved}");
        }
    }
}
