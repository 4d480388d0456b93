//! JSON request bodies as the API's contract reads them: an integral number such as `5.0` is the integer 5
//! (JSON Schema's `integer` admits it), and an optional member that is present must hold a value (`null` is
//! refused, not read as absent). Uses serde and serde_json only.

use serde::{Deserialize, Deserializer};
use serde_json::{Number, Value};

/// Rewrites every float with no fractional part (and within the integer range) as an integer, at any depth.
pub fn integral_floats_to_integers(value: &mut Value) {
    match value {
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            if f.fract() == 0.0 && f >= i64::MIN as f64 && f < u64::MAX as f64 {
                *n = if f < 0.0 { Number::from(f as i64) } else { Number::from(f as u64) };
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_floats_to_integers),
        Value::Object(members) => members.values_mut().for_each(integral_floats_to_integers),
        Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => {}
    }
}

/// Whether a text is blank: empty or only ASCII whitespace (space, tab, line feed, form feed, carriage return),
/// the definition `openapi.yaml` states as the pattern `[^ \t\n\f\r]`.
pub fn is_blank(text: &str) -> bool {
    text.bytes().all(|b| b.is_ascii_whitespace())
}

/// For `#[serde(default, deserialize_with = "non_null")]` on an `Option` member: absent is `None`, a value is
/// `Some`, and `null` is an error ("invalid type: null, expected …").
pub fn non_null<'de, D: Deserializer<'de>, T: Deserialize<'de>>(deserializer: D) -> Result<Option<T>, D::Error> {
    T::deserialize(deserializer).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Body {
        k: usize,
        #[serde(default, deserialize_with = "non_null")]
        model: Option<String>,
        #[serde(default)]
        ks: Vec<u32>,
        #[serde(default)]
        weight: f64,
    }

    fn read(mut v: Value) -> Result<Body, serde_json::Error> {
        integral_floats_to_integers(&mut v);
        serde_json::from_value(v)
    }

    #[test]
    fn integral_floats_are_integers_and_others_stay_floats() {
        let body = read(json!({"k": 5.0, "ks": [1.0, 2], "weight": 2.0})).unwrap();
        assert_eq!(body, Body { k: 5, model: None, ks: vec![1, 2], weight: 2.0 });
        assert!(read(json!({"k": 5.5})).is_err(), "a fraction is not an integer");
        assert!(read(json!({"k": -1.0})).is_err(), "negative stays negative");
        assert!(read(json!({"k": 1e300})).is_err(), "beyond the integer range stays a float");
        assert_eq!(read(json!({"k": 1, "weight": 0.25})).unwrap().weight, 0.25);
    }

    #[test]
    fn an_optional_member_may_be_absent_but_not_null() {
        assert_eq!(read(json!({"k": 1, "model": "m"})).unwrap().model.as_deref(), Some("m"));
        assert_eq!(read(json!({"k": 1})).unwrap().model, None);
        let err = read(json!({"k": 1, "model": null})).unwrap_err().to_string();
        assert!(err.contains("null"), "{err}");
    }
}
