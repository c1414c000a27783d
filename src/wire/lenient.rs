//! Field readers exactly as forgiving as the `Value` accessors the typed
//! messages replace (`p["x"].as_str()`, `.as_u64()`, `.as_array()`): a field
//! of the wrong JSON type reads as absent instead of failing the whole
//! message, because the code that reads these messages today takes such a
//! message and falls back to its default. A stricter reader would silently
//! turn an accepted message into a dropped one.
//!
//! Use as `#[serde(default, deserialize_with = "opt", skip_serializing_if =
//! "absent")]`: `default` covers the missing key, the function covers the
//! key of the wrong type, and an absent field is not written.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// The value if it has the expected JSON shape, else `None` (as `as_str()`,
/// `as_u64()`, `as_bool()` do; a JSON `null` is `None` too).
pub fn opt<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    let v = Value::deserialize(d)?;
    Ok(T::deserialize(v).ok())
}

/// A JSON object read as the struct `T` (leniently, as `opt` does), else
/// `None`. Unlike `opt` it never reads an array as the struct's fields in
/// order (serde would): `p["x"]["field"]` finds nothing in an array, so an
/// array reads as absent.
pub fn object<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    Ok(match Value::deserialize(d)? {
        v @ Value::Object(_) => T::deserialize(v).ok(),
        _ => None,
    })
}

/// `skip_serializing_if` for the optional fields: an absent field is left
/// out of the JSON, never written as `null` (the peers' readers treat the
/// two alike, and the messages have always omitted it).
pub fn absent<T>(v: &Option<T>) -> bool {
    v.is_none()
}

/// Any JSON value, kept as it came; a present `null` stays `Some(Null)`
/// (plain `Option<Value>` would turn it into `None`, and today's readers
/// tell `"x": null` from a missing `x` with `get("x").is_some()`).
pub fn raw<'de, D>(d: D) -> Result<Option<Value>, D::Error>
where
    D: Deserializer<'de>,
{
    Value::deserialize(d).map(Some)
}

/// An array read element by element: the elements of the expected shape,
/// the others left out (`as_array().map(|a| a.iter().filter_map(..))`);
/// `None` when it is not an array.
pub fn each<'de, D, T>(d: D) -> Result<Option<Vec<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    Ok(match Value::deserialize(d)? {
        Value::Array(a) => Some(
            a.into_iter()
                .filter_map(|x| T::deserialize(x).ok())
                .collect(),
        ),
        _ => None,
    })
}

/// An array of strings in which a non-string element is kept as `None`, so
/// the reader can refuse it (the controller answers such a `files` list
/// with a refusal); anything but an array reads as empty, as
/// `as_array().cloned().unwrap_or_default()` does.
pub fn strings_each<'de, D>(d: D) -> Result<Vec<Option<String>>, D::Error>
where
    D: Deserializer<'de>,
{
    Ok(match Value::deserialize(d)? {
        Value::Array(a) => a
            .into_iter()
            .map(|x| match x {
                Value::String(s) => Some(s),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    })
}

/// The protocol version field `v`: written as `1`, and whatever a peer puts
/// there is accepted (the relay never checks it, agentmesh-wire.md §4.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct V1;

impl serde::Serialize for V1 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(1)
    }
}

impl<'de> Deserialize<'de> for V1 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(d).map(|_| V1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Deserialize, Debug, PartialEq, Default)]
    struct Pair {
        #[serde(default, deserialize_with = "opt")]
        a: Option<u64>,
        #[serde(default, deserialize_with = "opt")]
        b: Option<String>,
    }

    #[derive(Deserialize, Debug, PartialEq)]
    struct Nested {
        #[serde(default, deserialize_with = "object")]
        p: Option<Pair>,
    }

    #[test]
    fn an_array_is_not_read_as_a_structs_fields() {
        let read = |v: Value| serde_json::from_value::<Nested>(v).unwrap().p;
        assert_eq!(read(json!({"p": [5, "x"]})), None);
        assert_eq!(read(json!({"p": "x"})), None);
        assert_eq!(
            read(json!({"p": {"a": 5, "b": 7}})),
            Some(Pair {
                a: Some(5),
                b: None
            })
        );
        assert_eq!(read(json!({})), None);
    }

    #[derive(Deserialize, Debug, PartialEq)]
    struct Probe {
        #[serde(default, deserialize_with = "opt")]
        s: Option<String>,
        #[serde(default, deserialize_with = "opt")]
        n: Option<u64>,
        #[serde(default, deserialize_with = "raw")]
        r: Option<Value>,
        #[serde(default, deserialize_with = "each")]
        e: Option<Vec<u64>>,
        #[serde(default, deserialize_with = "strings_each")]
        f: Vec<Option<String>>,
        #[serde(default)]
        v: Option<V1>,
    }

    fn probe(v: Value) -> Probe {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn wrong_json_types_read_as_absent_like_the_value_accessors() {
        let v = json!({"s": 5, "n": -1, "r": null, "e": [1, "x", 2.5, 3], "f": ["a", 7], "v": "2"});
        assert_eq!(v["s"].as_str(), None);
        assert_eq!(v["n"].as_u64(), None);
        assert_eq!(
            probe(v),
            Probe {
                s: None,
                n: None,
                r: Some(Value::Null),
                e: Some(vec![1, 3]),
                f: vec![Some("a".into()), None],
                v: Some(V1),
            }
        );
        let empty = probe(json!({"e": "no", "f": {"a": 1}}));
        assert_eq!((empty.s, empty.r, empty.e), (None, None, None));
        assert!(empty.f.is_empty());
        assert_eq!(serde_json::to_value(V1).unwrap(), json!(1));
        // Floats are not integers, as `as_u64` says.
        assert_eq!(probe(json!({"n": 1.0})).n, None);
        assert_eq!(probe(json!({"n": 7})).n, Some(7));
    }
}
