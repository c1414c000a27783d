//! Tool argument reading. OpenClaw does not validate arguments against the
//! schemas, so every tool checks its own: a wrong type or an oversized value
//! is refused with a text that says what to pass instead, before anything
//! changes. Numbers and booleans also accept their string forms ("5",
//! "true"), which models often send.

use serde_json::Value;

/// What is wrong with one argument. The texts never echo the value (it may
/// be a secret the caller put in the wrong field).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgError {
    #[error("`{0}` must be a string.")]
    NotString(&'static str),
    #[error("`{0}` must be a number.")]
    NotNumber(&'static str),
    #[error("`{0}` must be true or false.")]
    NotBool(&'static str),
    #[error("`{0}` must not be negative.")]
    Negative(&'static str),
    #[error("`{name}` is too long ({len} characters; at most {max}).")]
    TooLong {
        name: &'static str,
        len: usize,
        max: usize,
    },
    #[error("`{0}` must be an array of strings.")]
    NotStringArray(&'static str),
    #[error("`{name}` has too many entries ({len}; at most {max}).")]
    TooMany {
        name: &'static str,
        len: usize,
        max: usize,
    },
    #[error("`{a}` and `{b}` contradict each other; pass only one of them.")]
    Conflict { a: &'static str, b: &'static str },
}

/// The first present (non-null) alias, with the name it was given under.
pub fn first<'a>(args: &'a Value, names: &[&'static str]) -> Option<(&'static str, &'a Value)> {
    names
        .iter()
        .find_map(|n| args.get(*n).filter(|v| !v.is_null()).map(|v| (*n, v)))
}

/// A string under one of `names`, trimmed; `max` characters at most.
pub fn string<'a>(
    args: &'a Value,
    names: &[&'static str],
    max: usize,
) -> Result<Option<&'a str>, ArgError> {
    let Some((name, v)) = first(args, names) else {
        return Ok(None);
    };
    let s = v.as_str().ok_or(ArgError::NotString(name))?.trim();
    let len = s.chars().count();
    if len > max {
        return Err(ArgError::TooLong { name, len, max });
    }
    Ok(Some(s))
}

/// A finite, non-negative number (or its string form).
pub fn number(args: &Value, name: &'static str) -> Result<Option<f64>, ArgError> {
    let Some((_, v)) = first(args, &[name]) else {
        return Ok(None);
    };
    let n = match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
    .filter(|n| n.is_finite())
    .ok_or(ArgError::NotNumber(name))?;
    if n < 0.0 {
        return Err(ArgError::Negative(name));
    }
    Ok(Some(n))
}

pub fn boolean(args: &Value, name: &'static str) -> Result<Option<bool>, ArgError> {
    let Some((_, v)) = first(args, &[name]) else {
        return Ok(None);
    };
    match v {
        Value::Bool(b) => Ok(Some(*b)),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Ok(Some(true)),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Ok(Some(false)),
        _ => Err(ArgError::NotBool(name)),
    }
}

/// An array of strings, each at most `max_len` characters, at most
/// `max_items` of them.
pub fn strings(
    args: &Value,
    name: &'static str,
    max_items: usize,
    max_len: usize,
) -> Result<Option<Vec<String>>, ArgError> {
    let Some((_, v)) = first(args, &[name]) else {
        return Ok(None);
    };
    let items = v.as_array().ok_or(ArgError::NotStringArray(name))?;
    if items.len() > max_items {
        return Err(ArgError::TooMany {
            name,
            len: items.len(),
            max: max_items,
        });
    }
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let s = item.as_str().ok_or(ArgError::NotStringArray(name))?;
        let len = s.chars().count();
        if len > max_len {
            return Err(ArgError::TooLong {
                name,
                len,
                max: max_len,
            });
        }
        out.push(s.to_string());
    }
    Ok(Some(out))
}

/// The first `max` characters of `s` (never splits a character).
pub fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn readers() {
        let a = json!({"n": "5", "b": "TRUE", "s": "  x ", "l": ["a", "b"], "z": null});
        assert_eq!(number(&a, "n").unwrap(), Some(5.0));
        assert_eq!(boolean(&a, "b").unwrap(), Some(true));
        assert_eq!(string(&a, &["z", "s"], 5).unwrap(), Some("x"));
        assert_eq!(
            strings(&a, "l", 5, 5).unwrap(),
            Some(vec!["a".to_string(), "b".to_string()])
        );
        assert_eq!(number(&a, "b"), Err(ArgError::NotNumber("b")));
        assert_eq!(number(&json!({"n": -1}), "n"), Err(ArgError::Negative("n")));
        assert_eq!(boolean(&a, "n"), Err(ArgError::NotBool("n")));
        assert!(matches!(
            string(&json!({"s": "abcdef"}), &["s"], 5),
            Err(ArgError::TooLong { len: 6, .. })
        ));
        assert_eq!(clip("héllo", 2), "hé…");
        assert_eq!(clip("hé", 2), "hé");
    }
}
