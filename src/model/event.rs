//! Turning one Alohub request body into a typed event and its identity.
//!
//! Alohub sends no event id, so identity comes from content: the body is normalised and hashed.
//! Key order, whitespace between tokens and around string values do not count; `null`, `""`, a
//! blank string and a missing field are the same; a JSON number is written in one exact decimal
//! form and equals the string holding exactly that text (`300`, `300.0`, `3e2` and `"300"` are
//! one value). A string is never read as a number: `"1.10"` and `"1.1"` are two values. Typing is
//! forgiving: a value that cannot be parsed leaves its field absent and adds a warning; it never
//! rejects the event.

use jiff::tz::TimeZone;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::json::{JsonError, from_str_strict};
use super::merge::{FinalStatuses, SourceKey};
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
    /// JSON that cannot be taken as one event: an object repeats a key, so which value is meant
    /// is ambiguous.
    #[error("{0}")]
    Refused(String),
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
    /// How far the call had got when this event was sent, on the chain
    /// `0 nothing known < 1 ringing (a start time) < 2 answered (an answer time) < 3 ended`.
    /// An event is an end when it has an end time or a total duration, or a final status such as
    /// `missed` (final statuses rarely come with an end time).
    pub fn rank(&self, finals: &FinalStatuses) -> u8 {
        let final_status = self
            .call_status
            .as_deref()
            .is_some_and(|s| finals.contains(s));
        if self.end_time.is_some() || self.total_duration.is_some() || final_status {
            3
        } else if self.answer_time.is_some() {
            2
        } else if self.start_time.is_some() {
            1
        } else {
            0
        }
    }

    /// How many of the merged fields (all but `call_id`) this event fills.
    pub fn known_fields(&self) -> u8 {
        let f = self;
        [
            f.call_status.is_some(),
            f.direction.is_some(),
            f.caller_number.is_some(),
            f.destination_number.is_some(),
            f.hotline.is_some(),
            f.user_name.is_some(),
            f.transaction_id.is_some(),
            f.object_id.is_some(),
            f.start_time.is_some(),
            f.answer_time.is_some(),
            f.end_time.is_some(),
            f.hangup_by.is_some(),
            f.total_duration.is_some(),
            f.holding_duration.is_some(),
            f.recording_url.is_some(),
        ]
        .iter()
        .filter(|known| **known)
        .count() as u8
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

    /// Where this event stands among the events of its call (see [`SourceKey`]).
    pub fn source_key(&self, finals: &FinalStatuses) -> SourceKey {
        SourceKey::new(&self.fields, &self.dedupe_key, finals)
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
    let value = from_str_strict(text).map_err(|e| match e {
        JsonError::Syntax(detail) => BodyError::InvalidJson(detail),
        JsonError::Refused(detail) => BodyError::Refused(detail),
    })?;
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

/// A field as trimmed text: strings as they are, numbers in their canonical form (so that the call
/// id `300.0` is the call `300`, as its identity says), booleans as `true`/`false`.
/// Absent, `null`, empty and whitespace-only are `None`; objects and arrays are `None` with a warning.
fn text_field(
    object: &Map<String, Value>,
    name: &str,
    warnings: &mut Vec<String>,
) -> Option<String> {
    let text = match object.get(name)? {
        Value::Null => return None,
        Value::String(s) => s.trim().to_string(),
        Value::Number(n) => number_text(n),
        Value::Bool(b) => b.to_string(),
        v @ (Value::Array(_) | Value::Object(_)) => {
            warnings.push(format!("{name}: expected a string, got {}", json_kind(v)));
            return None;
        }
    };
    (!text.is_empty()).then_some(text)
}

/// Seconds from `300`, `"300"`, `300.4` (rounded) or `H:MM:SS` / `M:SS` (minutes and seconds
/// below 60, digits only). Negative is invalid.
pub fn parse_seconds(text: &str) -> Option<i64> {
    if let Ok(n) = text.parse::<i64>() {
        return (n >= 0 && !text.starts_with('+')).then_some(n);
    }
    if text.contains(':') {
        let parts: Vec<&str> = text.split(':').collect();
        if parts.len() > 3 {
            return None;
        }
        let mut total: i64 = 0;
        for (i, part) in parts.iter().enumerate() {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let n: i64 = part.parse().ok()?;
            if i > 0 && n >= 60 {
                return None;
            }
            total = total.checked_mul(60)?.checked_add(n)?;
        }
        return Some(total);
    }
    // A plain decimal such as 300.4; no sign, no exponent, no NaN or inf.
    if !text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
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
/// values dropped, strings trimmed, numbers in their exact canonical text, written as strings).
pub fn dedupe_key(object: &Map<String, Value>) -> DedupeKey {
    let mut canonical = Vec::with_capacity(1024);
    write_canonical_object(&mut canonical, object);
    Sha256::digest(&canonical).into()
}

/// `null`, `""` and a blank string carry no information: they are left out, like a missing field.
fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::String(s) => s.trim().is_empty(),
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
        // A string is never reinterpreted: "1.10" stays "1.10".
        Value::String(s) => write_json_string(out, s.trim()),
        // A number is its canonical text, as a string: 300, 300.0 and "300" are one value.
        Value::Number(n) => write_json_string(out, &number_text(n)),
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

/// A JSON number's canonical text (see [`canonical_number`]), or the text as written when it is
/// too far out of range to normalise.
fn number_text(n: &serde_json::Number) -> String {
    let text = n.to_string();
    canonical_number(&text).unwrap_or(text)
}

/// Longest run of zeros written out in full before switching to exponent form.
const MAX_PLAIN_ZEROS: i64 = 40;

/// One exact spelling for the value of a JSON number, by decimal text alone (no float round trip,
/// so 20-digit ids keep every digit): `300`, `300.0`, `3e2` and `3.00E+2` are all `300`; `0.10` is
/// `0.1`; `-0` is `0`. Very large or small magnitudes are written `d.ddde±N`. `None` for text
/// that is not a JSON number, or an exponent too large to handle.
pub fn canonical_number(text: &str) -> Option<String> {
    let (negative, rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent) = match rest.find(['e', 'E']) {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let (int, frac) = match mantissa.split_once('.') {
        Some((int, frac)) => (int, Some(frac)),
        None => (mantissa, None),
    };
    let digits_only = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits_only(int) || (int.len() > 1 && int.starts_with('0')) {
        return None;
    }
    if frac.is_some_and(|f| !digits_only(f)) {
        return None;
    }
    let mut exp10: i64 = match exponent {
        None => 0,
        Some(e) => {
            let unsigned = e.strip_prefix(['+', '-']).unwrap_or(e);
            if !digits_only(unsigned) || unsigned.len() > 15 {
                return None;
            }
            e.parse().ok()?
        }
    };
    let frac = frac.unwrap_or("");
    exp10 -= frac.len() as i64;
    let all: String = [int, frac].concat();
    let significant = all.trim_start_matches('0');
    let digits = significant.trim_end_matches('0');
    if digits.is_empty() {
        return Some("0".to_string());
    }
    exp10 += (significant.len() - digits.len()) as i64;
    // value = digits × 10^exp10, digits without leading or trailing zeros.
    let len = digits.len() as i64;
    let mut out = String::with_capacity(digits.len() + 8);
    if negative {
        out.push('-');
    }
    if (0..=MAX_PLAIN_ZEROS).contains(&exp10) {
        out.push_str(digits);
        out.extend(std::iter::repeat_n('0', exp10 as usize));
    } else if exp10 < 0 && -exp10 <= len + MAX_PLAIN_ZEROS {
        let point = len + exp10;
        if point > 0 {
            out.push_str(&digits[..point as usize]);
            out.push('.');
            out.push_str(&digits[point as usize..]);
        } else {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-point) as usize));
            out.push_str(digits);
        }
    } else {
        out.push_str(&digits[..1]);
        if len > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push_str(&format!("e{}", exp10 + len - 1));
    }
    Some(out)
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
        assert_eq!(f.rank(&FinalStatuses::default()), 2);
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
    fn numbers_are_canonicalised_exactly() {
        let a = parse(r#"{"call_id":"c1","call_status":"x","objectId":20240113150030123456.0}"#)
            .unwrap();
        let b = parse(r#"{"call_id":"c1","call_status":"x","objectId":20240113150030123457.0}"#)
            .unwrap();
        assert_ne!(a.dedupe_key, b.dedupe_key, "no float round trip");
        let c = parse(r#"{"call_id":"c1","call_status":"x","objectId":"20240113150030123456"}"#)
            .unwrap();
        assert_eq!(a.dedupe_key, c.dedupe_key);
        for (x, y) in [
            ("0.1", "0.10"),
            ("1e3", "1000"),
            ("-0", "0"),
            ("1.5e-3", "0.0015"),
        ] {
            let x = parse(&format!(r#"{{"call_id":"c1","call_status":"x","v":{x}}}"#)).unwrap();
            let y = parse(&format!(r#"{{"call_id":"c1","call_status":"x","v":{y}}}"#)).unwrap();
            assert_eq!(x.dedupe_key, y.dedupe_key);
        }
        for (x, y) in [
            ("0.1", "0.11"),
            ("1e3", "1001"),
            ("123456789012345678901", "123456789012345678902"),
        ] {
            let x = parse(&format!(r#"{{"call_id":"c1","call_status":"x","v":{x}}}"#)).unwrap();
            let y = parse(&format!(r#"{{"call_id":"c1","call_status":"x","v":{y}}}"#)).unwrap();
            assert_ne!(x.dedupe_key, y.dedupe_key);
        }
    }

    proptest::proptest! {
        /// Any spelling of a number (the point moved, zeros added, any exponent form) has the
        /// same canonical text, and two different numbers never share one.
        #[test]
        fn canonical_numbers_are_exact(
            digits in "[1-9][0-9]{0,24}",
            exp in -60i64..60,
            shift in 0usize..30,
            zeros in 0usize..4,
            other in "[1-9][0-9]{0,24}",
            other_exp in -60i64..60,
        ) {
            let plain = format!("{digits}e{exp}");
            // The same value with the decimal point `shift` places left, extra zeros, and E+/e-.
            let padded = format!("{}{digits}", "0".repeat(shift));
            let (int, frac) = padded.split_at(padded.len() - shift.min(padded.len() - 1));
            let fraction = format!("{frac}{}", "0".repeat(zeros));
            let point = if fraction.is_empty() { "" } else { "." };
            let respelled = format!("{int}{point}{fraction}E{:+}", exp + frac.len() as i64);
            let respelled = respelled.trim_start_matches('0');
            let respelled = if respelled.starts_with('.') { format!("0{respelled}") } else { respelled.to_string() };
            let canonical = canonical_number(&plain).unwrap();
            proptest::prop_assert_eq!(&canonical, &canonical_number(&respelled).unwrap(), "{} vs {}", plain, respelled);
            let norm = |d: &str, e: i64| {
                let t = d.trim_end_matches('0');
                (t.to_string(), e + (d.len() - t.len()) as i64)
            };
            let same_value = norm(&digits, exp) == norm(&other, other_exp);
            let other_text = canonical_number(&format!("{other}e{other_exp}")).unwrap();
            proptest::prop_assert_eq!(canonical == other_text, same_value);
        }
    }

    #[test]
    fn canonical_number_spellings() {
        for (text, canonical) in [
            ("300", "300"),
            ("300.0", "300"),
            ("3e2", "300"),
            ("3.00E+2", "300"),
            ("-0", "0"),
            ("0.000", "0"),
            ("0.10", "0.1"),
            ("1.5e-3", "0.0015"),
            ("-12.50", "-12.5"),
            ("20240113150030123456", "20240113150030123456"),
            ("1e400", "1e400"),
            ("1.25e-400", "1.25e-400"),
        ] {
            assert_eq!(canonical_number(text).as_deref(), Some(canonical), "{text}");
        }
        for not_a_number in [
            "", "-", "01", "1.", ".5", "1e", "1e+", "0x10", "1_000", " 1", "NaN",
        ] {
            assert_eq!(canonical_number(not_a_number), None, "{not_a_number:?}");
        }
    }

    #[test]
    fn number_like_strings_are_never_read_as_numbers() {
        for (x, y) in [
            ("1.10", "1.1"),
            ("1e3", "1000"),
            ("1.50", "1.5"),
            ("300.0", "300"),
        ] {
            let a = parse(&format!(
                r#"{{"call_id":"c1","call_status":"x","transactionID":"{x}"}}"#
            ))
            .unwrap();
            let b = parse(&format!(
                r#"{{"call_id":"c1","call_status":"x","transactionID":"{y}"}}"#
            ))
            .unwrap();
            assert_ne!(a.dedupe_key, b.dedupe_key, "{x} vs {y}");
        }
        // Only a number and the string that is exactly its canonical text are one.
        let n = parse(r#"{"call_id":"c1","call_status":"x","transactionID":300.0}"#).unwrap();
        let s = parse(r#"{"call_id":"c1","call_status":"x","transactionID":"300"}"#).unwrap();
        assert_eq!(n.dedupe_key, s.dedupe_key);
        assert_eq!(n.fields.transaction_id.as_deref(), Some("300"));
    }

    #[test]
    fn identity_and_call_id_agree() {
        let number = parse(r#"{"call_id":300.0,"call_status":"x"}"#).unwrap();
        let exponent = parse(r#"{"call_id":3e2,"call_status":"x"}"#).unwrap();
        let text = parse(r#"{"call_id":"300","call_status":"x"}"#).unwrap();
        assert_eq!(number.dedupe_key, text.dedupe_key);
        assert_eq!(exponent.dedupe_key, text.dedupe_key);
        assert_eq!(number.fields.call_id.as_deref(), Some("300"));
        assert_eq!(exponent.fields.call_id.as_deref(), Some("300"));
        assert_eq!(number.scope(), text.scope());
    }

    #[test]
    fn surrounding_whitespace_is_not_significant() {
        let a = parse(r#"{"call_id":"c1","call_status":"answered","hotline":"1900"}"#).unwrap();
        let b =
            parse(r#"{"call_id":" c1 ","call_status":"answered\n","hotline":" 1900"}"#).unwrap();
        assert_eq!(a.dedupe_key, b.dedupe_key);
        assert_eq!(a.fields, b.fields);
        // Whitespace only is empty, like "" and null.
        let c =
            parse(r#"{"call_id":"c1","call_status":"answered","hotline":"1900","endtime":"  "}"#)
                .unwrap();
        assert_eq!(a.dedupe_key, c.dedupe_key);
        // Inner whitespace is part of the value.
        let d = parse(r#"{"call_id":"c1","call_status":"answ ered","hotline":"1900"}"#).unwrap();
        assert_ne!(a.dedupe_key, d.dedupe_key);
    }

    #[test]
    fn a_repeated_key_is_ambiguous() {
        let error = parse(r#"{"call_id":"c1","call_status":"x","call_id":"c2"}"#).unwrap_err();
        assert_eq!(error.reason(), "invalid_event");
        assert!(error.to_string().contains("call_id"), "{error}");
        let nested = parse(r#"{"call_id":"c1","call_status":"x","extra":{"a":1,"a":2}}"#);
        assert_eq!(nested.unwrap_err().reason(), "invalid_event");
        // Numbers, big ones included, still parse as numbers.
        let ok = parse(r#"{"call_id":"c1","call_status":"x","extra":{"a":1e400,"b":[1,2.50]}}"#)
            .unwrap();
        assert!(ok.warnings.is_empty());
        assert_eq!(parse("123").unwrap_err(), BodyError::NotObject);
    }

    #[test]
    fn bad_durations_are_absent() {
        for bad in [
            "0:99", "-1:00", "00:-5", "1:60", "1:2:3:4", ":30", "1:", "+5", "1e3", "NaN", "-0.5",
        ] {
            assert_eq!(parse_seconds(bad), None, "{bad}");
        }
        assert_eq!(parse_seconds("1:00:00"), Some(3600));
        assert_eq!(parse_seconds("90:00"), Some(5400));
        assert_eq!(parse_seconds("0:59"), Some(59));
        let ev = parse(r#"{"call_id":"c1","call_status":"x","total_duration":"0:99","holding_duration":"-1:00"}"#)
            .unwrap();
        assert_eq!(ev.fields.total_duration, None);
        assert_eq!(ev.fields.holding_duration, None);
        let joined = ev.warnings.join("\n");
        assert!(
            joined.contains("total_duration") && joined.contains("holding_duration"),
            "{joined}"
        );
    }

    #[test]
    fn times_outside_the_accepted_years_are_absent_with_a_warning() {
        let ev = parse(
            r#"{"call_id":"c1","call_status":"x","starttime":"0001-01-01 00:00:00",
                "answertime":"1900-05-01 10:00:00","endtime":"-0001-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(ev.fields.start_time, None);
        assert_eq!(ev.fields.answer_time, None);
        assert_eq!(ev.fields.end_time, None);
        let joined = ev.warnings.join("\n");
        for field in ["starttime", "answertime", "endtime"] {
            assert!(joined.contains(field), "no warning for {field}: {joined}");
        }
    }

    #[test]
    fn other_event_types_need_no_call_fields() {
        let ev = parse(r#"{"eventType":"Agent_Status","userName":"a1"}"#).unwrap();
        assert_eq!(ev.event_type, "agent_status");
        assert!(!ev.is_call());
    }
}
