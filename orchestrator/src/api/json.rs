//! The JSON checks every request body goes through once it is read (steps 3–5 of
//! [`super::extract`]): parsing, the NUL and 64-bit integer scans, reading the typed request, and
//! turning where a problem is into a JSON pointer (RFC 6901). Pure.

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::problem::ApiError;
use crate::definition::Violation;

/// Steps 3 and 4.
pub fn parse(bytes: &[u8]) -> Result<Value, ApiError> {
    let value = parse_value(bytes)?;
    let violations = scan(&value, bytes);
    if violations.is_empty() {
        Ok(value)
    } else {
        Err(ApiError::validation(violations))
    }
}

/// Step 4 on `value`, parsed from `bytes`: strings and member names holding NUL, integers
/// outside `i64`.
pub fn scan(value: &Value, bytes: &[u8]) -> Vec<Violation> {
    let mut violations = Vec::new();
    scan_nul(value, &mut String::new(), &mut violations);
    violations.extend(out_of_range_integers(bytes));
    violations
}

/// Step 3.
pub fn parse_value(bytes: &[u8]) -> Result<Value, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: Value = match serde_path_to_error::deserialize(&mut de) {
        Ok(v) => v,
        Err(e) => {
            let message = e.inner().to_string();
            if message.starts_with("number out of range") {
                return Err(ApiError::validation(vec![Violation::new(
                    to_pointer(e.path()),
                    "the number is out of range (integers must fit in a signed 64-bit integer)",
                )]));
            }
            if message.starts_with("recursion limit exceeded") {
                return Err(ApiError::BadRequest(
                    "the request body is nested too deeply (at most 128 levels)".into(),
                ));
            }
            return Err(ApiError::BadRequest(format!(
                "the request body is not valid JSON: {message}"
            )));
        }
    };
    de.end()
        .map_err(|e| ApiError::BadRequest(format!("the request body is not valid JSON: {e}")))?;
    Ok(value)
}

/// Step 5.
pub fn typed<T: DeserializeOwned>(value: &Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let mut pointer = to_pointer(e.path());
        let message = e.inner().to_string();
        // serde reports a missing member at its parent; the contract points at the member.
        if let Some(field) = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.strip_suffix('`'))
        {
            push_key(&mut pointer, field);
        }
        ApiError::validation(vec![Violation::new(pointer, message)])
    })
}

/// A JSON pointer (RFC 6901) for a serde path.
pub fn to_pointer(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut pointer = String::new();
    for segment in path {
        match segment {
            Segment::Seq { index } => push_index(&mut pointer, *index),
            Segment::Map { key } => push_key(&mut pointer, key),
            Segment::Enum { .. } => {}
            Segment::Unknown => break,
        }
    }
    pointer
}

/// Appends a member name, escaped per RFC 6901 (`~` → `~0`, `/` → `~1`).
pub fn push_key(pointer: &mut String, key: &str) {
    pointer.push('/');
    for c in key.chars() {
        match c {
            '~' => pointer.push_str("~0"),
            '/' => pointer.push_str("~1"),
            c => pointer.push(c),
        }
    }
}

fn push_index(pointer: &mut String, index: usize) {
    pointer.push('/');
    pointer.push_str(&index.to_string());
}

/// Every string and member name holding a NUL character.
fn scan_nul(v: &Value, at: &mut String, out: &mut Vec<Violation>) {
    match v {
        Value::String(s) if s.contains('\0') => out.push(Violation::new(
            at.clone(),
            "must not contain a NUL character (U+0000)",
        )),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let len = at.len();
                push_index(at, i);
                scan_nul(item, at, out);
                at.truncate(len);
            }
        }
        Value::Object(members) => {
            for (key, item) in members {
                let len = at.len();
                push_key(at, key);
                if key.contains('\0') {
                    out.push(Violation::new(
                        at.clone(),
                        "a member name must not contain a NUL character (U+0000)",
                    ));
                }
                scan_nul(item, at, out);
                at.truncate(len);
            }
        }
        _ => {}
    }
}

/// Integer literals (no fraction, no exponent) outside the signed 64-bit range, by pointer.
///
/// serde_json (without `arbitrary_precision`) turns such a literal into a `u64` or, rounded, an
/// `f64`: the parsed value no longer says what was written, so this reads the text. `text` must
/// be valid JSON (it is scanned after parsing succeeded).
pub fn out_of_range_integers(text: &[u8]) -> Vec<Violation> {
    enum Frame {
        Array {
            index: usize,
        },
        /// The current member's name as the byte range of its JSON string (quotes included).
        Object {
            key: Option<(usize, usize)>,
        },
    }
    let mut stack: Vec<Frame> = Vec::new();
    let mut out = Vec::new();
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'[' => stack.push(Frame::Array { index: 0 }),
            b'{' => stack.push(Frame::Object { key: None }),
            b']' | b'}' => {
                stack.pop();
            }
            b',' => match stack.last_mut() {
                Some(Frame::Array { index }) => *index += 1,
                Some(Frame::Object { key }) => *key = None,
                None => {}
            },
            b'"' => {
                let start = i;
                i += 1;
                while i < text.len() && text[i] != b'"' {
                    i += if text[i] == b'\\' { 2 } else { 1 };
                }
                if let Some(Frame::Object { key }) = stack.last_mut()
                    && key.is_none()
                {
                    *key = Some((start, i));
                }
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i + 1 < text.len()
                    && matches!(text[i + 1], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
                {
                    i += 1;
                }
                let literal = &text[start..=i];
                let integer = !literal.iter().any(|b| matches!(b, b'.' | b'e' | b'E'));
                let fits = std::str::from_utf8(literal).is_ok_and(|s| s.parse::<i64>().is_ok());
                if integer && !fits {
                    let mut pointer = String::new();
                    for frame in &stack {
                        match frame {
                            Frame::Array { index } => push_index(&mut pointer, *index),
                            Frame::Object { key: Some((s, e)) } => {
                                let name: String =
                                    serde_json::from_slice(&text[*s..=*e]).unwrap_or_default();
                                push_key(&mut pointer, &name);
                            }
                            Frame::Object { key: None } => {}
                        }
                    }
                    out.push(Violation::new(
                        pointer,
                        "the integer is outside the signed 64-bit range",
                    ));
                }
            }
            _ => {}
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::json;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        name: String,
        #[serde(default)]
        count: Option<i64>,
        #[serde(default)]
        tags: Vec<String>,
    }

    fn ptrs(e: ApiError) -> Vec<String> {
        match e {
            ApiError::Validation { errors, .. } => errors.into_iter().map(|v| v.pointer).collect(),
            other => panic!("not a validation error: {other:?}"),
        }
    }

    #[test]
    fn pointers_escape_tilde_and_slash() {
        let mut p = String::new();
        push_key(&mut p, "a/b~c");
        push_index(&mut p, 3);
        push_key(&mut p, "");
        assert_eq!(p, "/a~1b~0c/3/");
    }

    #[test]
    fn not_json_and_too_deep_are_400() {
        for bad in [&b"{\"a\":"[..], b"", b"[1,]", b"{} {}", b"\"\\ud800\""] {
            assert!(
                matches!(parse(bad), Err(ApiError::BadRequest(_))),
                "{bad:?}"
            );
        }
        let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
        match parse(deep.as_bytes()) {
            Err(ApiError::BadRequest(d)) => assert!(d.contains("nested"), "{d}"),
            other => panic!("{other:?}"),
        }
        let ok = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert!(parse(ok.as_bytes()).is_ok());
    }

    #[test]
    fn nul_is_422_at_the_value() {
        let e = parse(br#"{"a":{"b/c":["x","y\u0000"]},"k\u0000":1}"#).expect_err("nul");
        assert_eq!(ptrs(e), ["/a/b~1c/1", "/k\u{0}"]);
    }

    #[test]
    fn integers_outside_i64_are_422_at_the_value() {
        let e = parse(br#"{"n":9223372036854775808,"m":[1,-9223372036854775809],"o":{"p~":99999999999999999999999}}"#)
            .expect_err("range");
        assert_eq!(ptrs(e), ["/n", "/m/1", "/o/p~0"]);
        // Edges and non-integers are fine.
        let ok = parse(br#"{"a":9223372036854775807,"b":-9223372036854775808,"c":1e30,"d":1.5,"e":"123456789012345678901234"}"#);
        assert!(ok.is_ok(), "{ok:?}");
        // A number beyond even f64 is still JSON: 422 with its pointer.
        let huge = format!(r#"{{"x":[{}]}}"#, "9".repeat(400));
        assert_eq!(ptrs(parse(huge.as_bytes()).expect_err("huge")), ["/x/0"]);
        // Keys with escapes are decoded before they are escaped as a pointer.
        let e = parse(br#"{"a\"b\\":[{"\u002f":18446744073709551616}]}"#).expect_err("range");
        assert_eq!(ptrs(e), ["/a\"b\\/0/~1"]);
        assert_eq!(
            ptrs(parse(b"18446744073709551616").expect_err("root")),
            [""]
        );
    }

    #[test]
    fn shape_errors_point_at_the_member() {
        let wrong_type = typed::<Sample>(&json!({"name": 5})).expect_err("type");
        assert_eq!(ptrs(wrong_type), ["/name"]);
        let unknown = typed::<Sample>(&json!({"name": "x", "why": 1})).expect_err("unknown");
        assert_eq!(ptrs(unknown), ["/why"]);
        let missing = typed::<Sample>(&json!({})).expect_err("missing");
        assert_eq!(ptrs(missing), ["/name"]);
        let nested = typed::<Sample>(&json!({"name": "x", "tags": ["a", 2]})).expect_err("nested");
        assert_eq!(ptrs(nested), ["/tags/1"]);
        let not_object = typed::<Sample>(&json!([])).expect_err("array");
        assert_eq!(ptrs(not_object), [""]);
        let ok =
            typed::<Sample>(&json!({"name": "x", "count": null, "tags": ["t"]})).expect("valid");
        assert_eq!((ok.name.as_str(), ok.count, ok.tags.len()), ("x", None, 1));
    }
}
