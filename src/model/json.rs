//! Reading a body as JSON, refusing what serde_json would silently accept.
//!
//! serde_json keeps the last of two equal keys in an object, so `{"call_id":"a","call_id":"b"}`
//! would quietly become call `b` while the stored body also says `a`. Such a body is ambiguous:
//! it is refused (and quarantined) instead.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// What serde_json's `arbitrary_precision` hands a visitor instead of a number: a one-entry map
/// from this key to the number's text.
const NUMBER_TOKEN: &str = "$serde_json::private::Number";

/// Why a body could not be read as JSON.
#[derive(Debug)]
pub enum JsonError {
    /// Not JSON at all.
    Syntax(String),
    /// JSON, but not acceptable: an object repeats a key (which value is meant is ambiguous).
    Refused(String),
}

/// Parses `text` as one JSON value; an object that repeats a key is an error.
pub fn from_str_strict(text: &str) -> Result<Value, JsonError> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let value = Strict
        .deserialize(&mut deserializer)
        .and_then(|v| deserializer.end().map(|()| v));
    value.map_err(|e| match e.classify() {
        serde_json::error::Category::Data => JsonError::Refused(e.to_string()),
        _ => JsonError::Syntax(e.to_string()),
    })
}

struct Strict;

impl<'de> DeserializeSeed<'de> for Strict {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Value, E> {
        Ok(Value::Number(n.into()))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Value, E> {
        Ok(Value::Number(n.into()))
    }

    fn visit_f64<E>(self, f: f64) -> Result<Value, E> {
        Ok(Number::from_f64(f).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_owned()))
    }

    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::String(s))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        Strict.deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(Strict)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        let Some(first) = map.next_key::<String>()? else {
            return Ok(Value::Object(object));
        };
        if first == NUMBER_TOKEN {
            let text: String = map.next_value()?;
            return Number::from_str(&text)
                .map(Value::Number)
                .map_err(|e| de::Error::custom(format!("bad number {text:?}: {e}")));
        }
        let value = map.next_value_seed(Strict)?;
        object.insert(first, value);
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(de::Error::custom(format!(
                    "the key {key:?} appears more than once"
                )));
            }
            let value = map.next_value_seed(Strict)?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_values_as_serde_json() {
        for text in [
            r#"{"a":1,"b":[true,null,"x",{"c":1.50}],"d":20240113150030123456,"e":-0.0}"#,
            "[]",
            "\"s\"",
            "1e400",
            "{}",
        ] {
            let strict = from_str_strict(text).unwrap();
            let plain: Value = serde_json::from_str(text).unwrap();
            assert_eq!(strict, plain, "{text}");
        }
    }

    #[test]
    fn repeated_keys_at_any_depth_are_refused() {
        for text in [r#"{"a":1,"a":1}"#, r#"{"x":[{"b":1,"c":2,"b":3}]}"#] {
            assert!(
                matches!(from_str_strict(text), Err(JsonError::Refused(_))),
                "{text}"
            );
        }
        assert!(matches!(from_str_strict("{"), Err(JsonError::Syntax(_))));
        assert!(matches!(from_str_strict("{} x"), Err(JsonError::Syntax(_))));
    }
}
