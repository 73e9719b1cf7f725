//! Turning one Alohub request body into a typed event and its identity.
//!
//! Alohub sends no event id, so identity comes from content: the body is normalised (key order
//! and whitespace ignored; `null`, `""` and a missing field are the same; `300` and `"300"` are the
//! same) and hashed. Typing is forgiving: a value that cannot be parsed leaves its field absent
//! and adds a warning; it never rejects the event.

use jiff::tz::TimeZone;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::time::parse_call_time;

/// SHA-256 of the canonical form of a body: equal for resends of one event.
pub type DedupeKey = [u8; 32];

/// Why a body cannot be stored as an event. The body then goes to the quarantine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("body is not valid UTF-8 (byte {valid_up_to})")]
    NotUtf8 { valid_up_to: usize },
    #[error("{0}")]
    InvalidJson(String),
    #[error("body is JSON but not an object")]
    NotObject,
    #[error("a call event needs a non-empty {0}")]
    MissingField(&'static str),
    #[error("{field} must be a string, not {found}")]
    WrongType {
        field: &'static str,
        found: &'static str,
    },
}

impl BodyError {
    /// The machine-readable reason: `invalid_json` (not UTF-8 JSON, answered 400) or
    /// `invalid_event` (JSON, but not an event alohook can keep, answered 422).
    pub fn reason(&self) -> &'static str {
        match self {
            BodyError::NotUtf8 { .. } | BodyError::InvalidJson(_) => "invalid_json",
            _ => "invalid_event",
        }
    }
}

/// The typed fields of one call event. `None` means absent (missing, `null`, `""` or unparsable).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFields {
    pub call_id: Option<String>,
    pub call_status: Option<String>,
    pub direction: Option<String>,
    pub caller_number: Option<String>,
    pub destination_number: Option<String>,
    pub hotline: Option<String>,
    pub user_name: Option<String>,
    pub transaction_id: Option<String>,
    pub object_id: Option<i64>,
    /// Unix seconds.
    pub start_time: Option<i64>,
    pub answer_time: Option<i64>,
    pub end_time: Option<i64>,
    pub hangup_by: Option<String>,
    /// Seconds.
    pub total_duration: Option<i64>,
    pub holding_duration: Option<i64>,
    pub recording_url: Option<String>,
}

impl EventFields {
    /// How far the call had got when this event was sent: 3 ended (end time or total duration),
    /// 2 answered, 1 started, 0 nothing known.
    pub fn rank(&self) -> u8 {
        if self.end_time.is_some() || self.total_duration.is_some() {
            3
        } else if self.answer_time.is_some() {
            2
        } else if self.start_time.is_some() {
            1
        } else {
            0
        }
    }
}

/// A body that is a valid event, ready to store.
#[derive(Debug, Clone)]
pub struct ParsedEvent {
    pub dedupe_key: DedupeKey,
    /// `eventType` as sent, lower-cased; `call` when absent or empty.
    pub event_type: String,
    pub fields: EventFields,
    /// One line per field that could not be typed; the raw body keeps the value.
    pub warnings: Vec<String>,
    /// The body exactly as received.
    pub raw: String,
}

impl ParsedEvent {
    /// Whether this event describes a call and is merged into a call record.
    pub fn is_call(&self) -> bool {
        self.event_type == "call"
    }

    /// The call this event is merged into: its `call_id`, for call events only.
    pub fn merged_call_id(&self) -> Option<&str> {
        if self.is_call() {
            self.fields.call_id.as_deref()
        } else {
            None
        }
    }

    /// The warnings as a JSON array, or `None` when there are none.
    pub fn warnings_json(&self) -> Option<String> {
        (!self.warnings.is_empty())
            .then(|| serde_json::to_string(&self.warnings).unwrap_or_default())
    }

    /// Where the identity is unique: the body's `call_id` (of any event type), or `""`.
    /// Equal dedupe keys imply equal call ids, so this narrows nothing; stores use it to keep
    /// the keys of one call together.
    pub fn scope(&self) -> &str {
        self.fields.call_id.as_deref().unwrap_or("")
    }
}

/// Parses and validates one request body.
pub fn parse_body(body: &[u8], tz: &TimeZone) -> Result<ParsedEvent, BodyError> {
    let text = std::str::from_utf8(body).map_err(|e| BodyError::NotUtf8 {
        valid_up_to: e.valid_up_to(),
    })?;
    let value: Value =
        serde_json::from_str(text).map_err(|e| BodyError::InvalidJson(e.to_string()))?;
    let Value::Object(object) = value else {
        return Err(BodyError::NotObject);
    };

    let mut warnings = Vec::new();
    let event_type = match text_field(&object, "eventType", &mut warnings) {
        Some(t) => t.to_lowercase(),
        None => "call".to_string(),
    };
    let mut fields = type_fields(&object, tz, &mut warnings);
    if event_type == "call" {
        for (name, value) in [
            ("call_id", &fields.call_id),
            ("call_status", &fields.call_status),
        ] {
            if value.is_none() {
                return Err(match object.get(name) {
                    Some(v @ (Value::Object(_) | Value::Array(_))) => BodyError::WrongType {
                        field: name,
                        found: json_kind(v),
                    },
                    _ => BodyError::MissingField(name),
                });
            }
        }
    }
    fields.direction = fields.direction.map(|d| d.to_lowercase());

    Ok(ParsedEvent {
        dedupe_key: dedupe_key(&object),
        event_type,
        fields,
        warnings,
        raw: text.to_string(),
    })
}

fn type_fields(
    object: &Map<String, Value>,
    tz: &TimeZone,
    warnings: &mut Vec<String>,
) -> EventFields {
    let mut text = |name| text_field(object, name, warnings);
    let call_id = text("call_id");
    let call_status = text("call_status");
    let direction = text("direction");
    let caller_number = text("caller_number");
    let destination_number = text("destination_number");
    let hotline = text("hotline");
    let user_name = text("userName");
    let transaction_id = text("transactionID");
    let hangup_by = text("hangup_by");
    let recording_url = text("recording_url");
    let start = text("starttime");
    let answer = text("answertime");
    let end = text("endtime");
    let total = text("total_duration");
    let holding = text("holding_duration");
    let object_id = text("objectId");

    let mut typed =
        |name: &str, raw: Option<String>, parse: &dyn Fn(&str) -> Option<i64>, what: &str| {
            let raw = raw?;
            let parsed = parse(&raw);
            if parsed.is_none() {
                warnings.push(format!("{name}: cannot read {} as {what}", quote(&raw)));
            }
            parsed
        };
    let time = |s: &str| parse_call_time(s, tz);
    EventFields {
        start_time: typed("starttime", start, &time, "a time"),
        answer_time: typed("answertime", answer, &time, "a time"),
        end_time: typed("endtime", end, &time, "a time"),
        total_duration: typed(
            "total_duration",
            total,
            &parse_seconds,
            "a duration in seconds",
        ),
        holding_duration: typed(
            "holding_duration",
            holding,
            &parse_seconds,
            "a duration in seconds",
        ),
        object_id: typed("objectId", object_id, &|s| s.parse().ok(), "an integer"),
        call_id,
        call_status,
        direction,
        caller_number,
        destination_number,
        hotline,
        user_name,
        transaction_id,
        hangup_by,
        recording_url,
    }
}

/// A field as trimmed text: strings as they are, numbers as written, booleans as `true`/`false`.
/// Absent, `null`, empty and whitespace-only are `None`; objects and arrays are `None` with a warning.
fn text_field(
    object: &Map<String, Value>,
    name: &str,
    warnings: &mut Vec<String>,
) -> Option<String> {
    let text = match object.get(name)? {
        Value::Null => return None,
        Value::String(s) => s.trim().to_string(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        v @ (Value::Array(_) | Value::Object(_)) => {
            warnings.push(format!("{name}: expected a string, got {}", json_kind(v)));
            return None;
        }
    };
    (!text.is_empty()).then_some(text)
}

/// Seconds from `300`, `"300"`, `300.4` (rounded) or `HH:MM:SS` / `MM:SS`. Negative is invalid.
pub fn parse_seconds(text: &str) -> Option<i64> {
    if let Ok(n) = text.parse::<i64>() {
        return (n >= 0).then_some(n);
    }
    if text.contains(':') {
        let mut total: i64 = 0;
        let parts: Vec<&str> = text.split(':').collect();
        if parts.len() > 3 {
            return None;
        }
        for part in parts {
            let n: i64 = part
                .parse()
                .ok()
                .filter(|n| (0..60).contains(n) || total == 0)?;
            total = total.checked_mul(60)?.checked_add(n)?;
        }
        return Some(total);
    }
    let f: f64 = text.parse().ok()?;
    (f.is_finite() && (0.0..1e15).contains(&f)).then(|| f.round() as i64)
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn quote(raw: &str) -> String {
    const MAX: usize = 64;
    if raw.chars().count() <= MAX {
        format!("{raw:?}")
    } else {
        let cut: String = raw.chars().take(MAX).collect();
        format!("{cut:?}…")
    }
}

/// The identity of an event: SHA-256 of its canonical JSON (sorted keys, no whitespace, empty
/// values dropped, numbers and numeric strings written one way).
pub fn dedupe_key(object: &Map<String, Value>) -> DedupeKey {
    let mut canonical = Vec::with_capacity(1024);
    write_canonical_object(&mut canonical, object);
    Sha256::digest(&canonical).into()
}

/// `null` and `""` carry no information: they are left out, like a missing field.
fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        _ => false,
    }
}

fn write_canonical_object(out: &mut Vec<u8>, object: &Map<String, Value>) {
    // serde_json's Map is ordered by key (no `preserve_order`): iteration is sorted.
    out.push(b'{');
    let mut first = true;
    for (key, value) in object.iter().filter(|(_, v)| !is_empty(v)) {
        if !first {
            out.push(b',');
        }
        first = false;
        write_json_string(out, key);
        out.push(b':');
        write_canonical_value(out, value);
    }
    out.push(b'}');
}

fn write_canonical_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::String(s) => match canonical_number(s) {
            Some(number) => write_json_string(out, &number),
            None => write_json_string(out, s),
        },
        Value::Number(n) => {
            let text = n.to_string();
            write_json_string(out, canonical_number(&text).as_deref().unwrap_or(&text));
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                if is_empty(item) {
                    out.extend_from_slice(b"null");
                } else {
                    write_canonical_value(out, item);
                }
            }
            out.push(b']');
        }
        Value::Object(map) => write_canonical_object(out, map),
    }
}

fn write_json_string(out: &mut Vec<u8>, text: &str) {
    // Writing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, text);
}

/// One spelling for one number: `300`, `"300"`, `300.0` and `3e2` all become `300`. Only text in
/// JSON number syntax counts as a number, so `"0389123456"` (a phone number) stays a string.
fn canonical_number(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    if !bytes
        .first()
        .is_some_and(|b| *b == b'-' || b.is_ascii_digit())
    {
        return None;
    }
    let mut i = 0;
    if bytes.first() == Some(&b'-') {
        i += 1;
    }
    let int_start = i;
    while i < bytes.len() && bytes[i].is_ascii_digit() {
        i += 1;
    }
    let int_len = i - int_start;
    if int_len == 0 || (int_len > 1 && bytes[int_start] == b'0') {
        return None;
    }
    if i == bytes.len() {
        return Some(if text == "-0" {
            "0".to_string()
        } else {
            text.to_string()
        });
    }
    if bytes[i] == b'.' {
        i += 1;
        let frac_start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if i == frac_start {
            return None;
        }
    }
    if i < bytes.len() && (bytes[i] == b'e' || bytes[i] == b'E') {
        i += 1;
        if i < bytes.len() && (bytes[i] == b'+' || bytes[i] == b'-') {
            i += 1;
        }
        let exp_start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if i == exp_start {
            return None;
        }
    }
    if i != bytes.len() {
        return None;
    }
    let f: f64 = text.parse().ok().filter(|f: &f64| f.is_finite())?;
    if f.fract() == 0.0 && f.abs() < 9.0e15 {
        Some(format!("{}", f as i64))
    } else {
        Some(format!("{f}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tz() -> TimeZone {
        TimeZone::get("Asia/Ho_Chi_Minh").unwrap()
    }

    fn parse(body: &str) -> Result<ParsedEvent, BodyError> {
        parse_body(body.as_bytes(), &tz())
    }

    const IN_PROGRESS: &str = r#"{"call_id":"20240113150030xxxxxx","call_status":"answered","direction":"outbound",
 "caller_number":"03899xxx","destination_number":"888","starttime":"2024-01-13 15:00:30",
 "answertime":"2024-01-13 15:00:35","endtime":"","hangup_by":"","hotline":"",
 "total_duration":"","holding_duration":"","recording_url":"","objectId":1,
 "transactionID":"TRANSID_1111","userName":"adminxxx","eventType":"call"}"#;

    #[test]
    fn spec_example_is_typed() {
        let ev = parse(IN_PROGRESS).unwrap();
        assert!(ev.is_call());
        assert!(ev.warnings.is_empty(), "{:?}", ev.warnings);
        let f = &ev.fields;
        assert_eq!(f.call_id.as_deref(), Some("20240113150030xxxxxx"));
        assert_eq!(f.start_time, Some(1705132830));
        assert_eq!(f.answer_time, Some(1705132835));
        assert_eq!(f.end_time, None);
        assert_eq!(f.hotline, None);
        assert_eq!(f.object_id, Some(1));
        assert_eq!(f.transaction_id.as_deref(), Some("TRANSID_1111"));
        assert_eq!(f.user_name.as_deref(), Some("adminxxx"));
        assert_eq!(f.rank(), 2);
    }

    #[test]
    fn key_order_and_whitespace_do_not_change_identity() {
        let a =
            parse(r#"{"call_id":"c1","call_status":"answered","total_duration":"300"}"#).unwrap();
        let b = parse(
            "{ \"total_duration\" : \"300\",\n\t\"call_status\":\"answered\", \"call_id\":\"c1\" }",
        )
        .unwrap();
        assert_eq!(a.dedupe_key, b.dedupe_key);
    }

    #[test]
    fn null_empty_and_missing_are_the_same() {
        let a = parse(r#"{"call_id":"c1","call_status":"missed"}"#).unwrap();
        let b = parse(r#"{"call_id":"c1","call_status":"missed","endtime":"","hotline":null}"#)
            .unwrap();
        assert_eq!(a.dedupe_key, b.dedupe_key);
    }

    #[test]
    fn a_number_and_its_decimal_string_are_the_same() {
        let a =
            parse(r#"{"call_id":"c1","call_status":"answered","total_duration":300,"objectId":1}"#)
                .unwrap();
        let b = parse(
            r#"{"call_id":"c1","call_status":"answered","total_duration":"300","objectId":"1"}"#,
        )
        .unwrap();
        let c = parse(
            r#"{"call_id":"c1","call_status":"answered","total_duration":300.0,"objectId":1}"#,
        )
        .unwrap();
        assert_eq!(a.dedupe_key, b.dedupe_key);
        assert_eq!(a.dedupe_key, c.dedupe_key);
    }

    #[test]
    fn different_content_is_a_different_event() {
        let a = parse(r#"{"call_id":"c1","call_status":"answered"}"#).unwrap();
        let b = parse(r#"{"call_id":"c1","call_status":"missed"}"#).unwrap();
        let c = parse(r#"{"call_id":"c1","call_status":"answered","caller_number":"0389123456"}"#)
            .unwrap();
        let d = parse(r#"{"call_id":"c1","call_status":"answered","caller_number":"389123456"}"#)
            .unwrap();
        assert_ne!(a.dedupe_key, b.dedupe_key);
        assert_ne!(
            c.dedupe_key, d.dedupe_key,
            "a leading zero is part of a phone number"
        );
    }

    #[test]
    fn long_numeric_call_ids_keep_every_digit() {
        let a = parse(r#"{"call_id":20240113150030123456,"call_status":"answered"}"#).unwrap();
        let b = parse(r#"{"call_id":20240113150030123457,"call_status":"answered"}"#).unwrap();
        assert_eq!(a.fields.call_id.as_deref(), Some("20240113150030123456"));
        assert_ne!(a.dedupe_key, b.dedupe_key);
        let c = parse(r#"{"call_id":"20240113150030123456","call_status":"answered"}"#).unwrap();
        assert_eq!(a.dedupe_key, c.dedupe_key);
    }

    #[test]
    fn loose_types_are_accepted() {
        let ev = parse(
            r#"{"call_id":12345,"call_status":"answered","total_duration":"  42 ","holding_duration":7,
                "objectId":"3","direction":"INBOUND","endtime":"2024-01-13T15:05:30+07:00"}"#,
        )
        .unwrap();
        assert_eq!(ev.fields.call_id.as_deref(), Some("12345"));
        assert_eq!(ev.fields.total_duration, Some(42));
        assert_eq!(ev.fields.holding_duration, Some(7));
        assert_eq!(ev.fields.object_id, Some(3));
        assert_eq!(ev.fields.direction.as_deref(), Some("inbound"));
        assert_eq!(ev.fields.end_time, Some(1705133130));
        assert!(ev.warnings.is_empty(), "{:?}", ev.warnings);
    }

    #[test]
    fn unparsable_values_warn_but_do_not_reject() {
        let ev = parse(
            r#"{"call_id":"c1","call_status":"answered","starttime":"yesterday","total_duration":"abc",
                "objectId":"x","hotline":{"n":1}}"#,
        )
        .unwrap();
        assert_eq!(ev.fields.start_time, None);
        assert_eq!(ev.fields.total_duration, None);
        assert_eq!(ev.fields.object_id, None);
        assert_eq!(ev.fields.hotline, None);
        let joined = ev.warnings.join("\n");
        for field in ["starttime", "total_duration", "objectId", "hotline"] {
            assert!(joined.contains(field), "no warning for {field}: {joined}");
        }
        assert!(ev.raw.contains("yesterday"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_seconds("300"), Some(300));
        assert_eq!(parse_seconds("300.4"), Some(300));
        assert_eq!(parse_seconds("00:05:00"), Some(300));
        assert_eq!(parse_seconds("05:00"), Some(300));
        assert_eq!(parse_seconds("-1"), None);
        assert_eq!(parse_seconds("1:99"), None);
        assert_eq!(parse_seconds("five"), None);
    }

    #[test]
    fn invalid_bodies() {
        assert_eq!(parse("{").unwrap_err().reason(), "invalid_json");
        assert_eq!(
            parse_body(b"{\"a\":\"\xff\"}", &tz()).unwrap_err(),
            BodyError::NotUtf8 { valid_up_to: 6 }
        );
        assert_eq!(parse("[1,2]").unwrap_err(), BodyError::NotObject);
        assert_eq!(parse("\"x\"").unwrap_err().reason(), "invalid_event");
        assert_eq!(
            parse(r#"{"call_status":"answered"}"#).unwrap_err(),
            BodyError::MissingField("call_id")
        );
        assert_eq!(
            parse(r#"{"call_id":"c","call_status":""}"#).unwrap_err(),
            BodyError::MissingField("call_status")
        );
        assert_eq!(
            parse(r#"{"call_id":"c","call_status":"x","eventType":""}"#)
                .unwrap()
                .event_type,
            "call"
        );
        assert!(matches!(
            parse(r#"{"call_id":["c"],"call_status":"x"}"#).unwrap_err(),
            BodyError::WrongType {
                field: "call_id",
                ..
            }
        ));
    }

    #[test]
    fn other_event_types_need_no_call_fields() {
        let ev = parse(r#"{"eventType":"Agent_Status","userName":"a1"}"#).unwrap();
        assert_eq!(ev.event_type, "agent_status");
        assert!(!ev.is_call());
    }
}
