//! The canonical encoding of args (PROTOCOL.md, "Client conventions").
//!
//! The daemon keys items by the raw `args` bytes, so a reader in Rust and a worker in
//! Python share an item only if both encode the arguments to the *same bytes*. The
//! convention is Python's `json.dumps(list(args), separators=(",", ":"), sort_keys=True)`:
//! a compact JSON array of the positional arguments, object keys sorted, and (Python's
//! default `ensure_ascii`) every character outside printable ASCII escaped as `\uXXXX`.
//! serde_json alone differs on the last point and on the exponent form of floats, so
//! the array is written here from a `serde_json::Value`.

use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;

/// Encodes `args` as the canonical JSON array of positional arguments.
///
/// A tuple is the list of positional arguments: `("bob", 3)` encodes as `["bob",3]` and
/// `()` as `[]`. Any other value that does not serialize to a JSON array (a `String`, a
/// number, a struct) is the one positional argument: `"bob"` encodes as `["bob"]`. To
/// pass a single list argument, wrap it in a 1-tuple: `(vec![1, 2],)` encodes as `[[1,2]]`.
///
/// ```
/// use std::collections::BTreeMap;
/// assert_eq!(cachebackd_proto::args::encode_args(&"bob").unwrap(), br#"["bob"]"#);
/// assert_eq!(cachebackd_proto::args::encode_args(&("bob", 3)).unwrap(), br#"["bob",3]"#);
/// assert_eq!(cachebackd_proto::args::encode_args(&()).unwrap(), b"[]");
/// assert_eq!(cachebackd_proto::args::encode_args(&("café",)).unwrap(), br#"["caf\u00e9"]"#);
/// let opts = BTreeMap::from([("z", 1), ("a", 2)]);
/// assert_eq!(cachebackd_proto::args::encode_args(&(opts,)).unwrap(), br#"[{"a":2,"z":1}]"#);
/// ```
pub fn encode_args<A: Serialize + ?Sized>(args: &A) -> Result<Vec<u8>, serde_json::Error> {
    let positional = match serde_json::to_value(args)? {
        Value::Array(items) => items,
        Value::Null => Vec::new(),
        single => vec![single],
    };
    let mut out = String::new();
    write_value(&Value::Array(positional), &mut out);
    Ok(out.into_bytes())
}

/// Decodes the canonical args bytes back into `A`, the inverse of [`encode_args`]
/// (a worker uses it on every `FetchRequest.args`).
///
/// ```
/// let (user, page): (String, u32) = cachebackd_proto::args::decode_args(br#"["bob",3]"#).unwrap();
/// assert_eq!((user.as_str(), page), ("bob", 3));
/// let user: String = cachebackd_proto::args::decode_args(br#"["bob"]"#).unwrap();
/// assert_eq!(user, "bob");
/// ```
pub fn decode_args<A: DeserializeOwned>(bytes: &[u8]) -> Result<A, serde_json::Error> {
    let value: Value = serde_json::from_slice(bytes)?;
    let direct_error = match A::deserialize(&value) {
        Ok(args) => return Ok(args),
        Err(e) => e,
    };
    // Not a tuple: the one positional argument, or `()` for an empty array.
    match value {
        Value::Array(mut items) if items.len() == 1 => {
            A::deserialize(items.pop().unwrap_or_default()).map_err(|_| direct_error)
        }
        Value::Array(items) if items.is_empty() => {
            A::deserialize(Value::Null).map_err(|_| direct_error)
        }
        _ => Err(direct_error),
    }
}

fn write_value(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => write_float(f, out),
            _ => out.push_str(&n.to_string()),
        },
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            // Sorted here, whatever order the map keeps (serde_json's `preserve_order`
            // feature, if anything in the build enables it, keeps insertion order).
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(key, out);
                out.push(':');
                write_value(item, out);
            }
            out.push('}');
        }
    }
}

/// Python's `json.dumps` string form with `ensure_ascii=True`.
fn write_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }
    out.push('"');
}

/// Python's `repr(float)`: the shortest round-trip digits, in fixed notation when the
/// decimal exponent is in [-4, 16), otherwise as `1e+16` / `1.5e-05`.
fn write_float(f: f64, out: &mut String) {
    if f.is_sign_negative() {
        out.push('-');
    }
    // `{:e}` gives the shortest round-trip digits: "1.5e16", "1e-5", "0e0".
    let sci = format!("{:e}", f.abs());
    let (mantissa, exponent) = sci.split_once('e').unwrap_or((&sci, "0"));
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let point = exponent + 1; // the decimal point sits after `point` digits
    let len = digits.len() as i32;
    if !(-4 < point && point <= 16) {
        out.push_str(&digits[..1]);
        if len > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let sign = if exponent < 0 { '-' } else { '+' };
        out.push_str(&format!("e{sign}{:02}", exponent.abs()));
    } else if point <= 0 {
        out.push_str("0.");
        out.push_str(&"0".repeat((-point) as usize));
        out.push_str(&digits);
    } else if point < len {
        out.push_str(&digits[..point as usize]);
        out.push('.');
        out.push_str(&digits[point as usize..]);
    } else {
        out.push_str(&digits);
        out.push_str(&"0".repeat((point - len) as usize));
        out.push_str(".0");
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use super::*;

    fn encoded<A: Serialize + ?Sized>(args: &A) -> String {
        String::from_utf8(encode_args(args).unwrap()).unwrap()
    }

    #[test]
    fn a_single_argument_is_wrapped_in_the_positional_array() {
        assert_eq!(encoded(&"bob"), r#"["bob"]"#);
        assert_eq!(encoded(&("bob".to_string(),)), r#"["bob"]"#);
        assert_eq!(encoded(&42u32), "[42]");
    }

    #[test]
    fn a_tuple_is_the_positional_array_and_unit_is_empty() {
        assert_eq!(
            encoded(&("bob", 3, true, None::<u8>)),
            r#"["bob",3,true,null]"#
        );
        assert_eq!(encoded(&()), "[]");
        assert_eq!(encoded(&(vec![1, 2],)), "[[1,2]]");
    }

    #[test]
    fn object_keys_are_sorted_at_every_depth() {
        let inner = HashMap::from([("b", 1), ("a", 2), ("c", 3)]);
        let outer = HashMap::from([("z", inner.clone()), ("m", inner)]);
        assert_eq!(
            encoded(&(outer,)),
            r#"[{"m":{"a":2,"b":1,"c":3},"z":{"a":2,"b":1,"c":3}}]"#
        );
    }

    #[test]
    fn strings_are_escaped_like_python_ensure_ascii() {
        // json.dumps(["a\"b\\c\n\t\x01\x7fé€😀"], separators=(",", ":"))
        assert_eq!(
            encoded(&("a\"b\\c\n\t\u{1}\u{7f}é€😀",)),
            r#"["a\"b\\c\n\t\u0001\u007f\u00e9\u20ac\ud83d\ude00"]"#
        );
        assert_eq!(encoded(&("\u{8}\u{c}\r/",)), r#"["\b\f\r/"]"#);
    }

    #[test]
    fn floats_are_written_like_python_repr() {
        let cases = [
            (1.5, "1.5"),
            (3.0, "3.0"),
            (-0.0, "-0.0"),
            (0.0, "0.0"),
            (0.1, "0.1"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.2345e22, "1.2345e+22"),
            (123456.789, "123456.789"),
            (-2.5e100, "-2.5e+100"),
        ];
        for (f, python) in cases {
            assert_eq!(encoded(&(f,)), format!("[{python}]"), "repr({f:?})");
        }
    }

    #[test]
    fn decoding_inverts_encoding() {
        let args = (
            "bob".to_string(),
            3u32,
            BTreeMap::from([("k".to_string(), 1.5)]),
        );
        let back: (String, u32, BTreeMap<String, f64>) =
            decode_args(&encode_args(&args).unwrap()).unwrap();
        assert_eq!(back, args);

        let single: String = decode_args(&encode_args("café").unwrap()).unwrap();
        assert_eq!(single, "café");
        decode_args::<()>(b"[]").unwrap();
        let list: (Vec<u8>,) = decode_args(b"[[1,2]]").unwrap();
        assert_eq!(list, (vec![1, 2],));
    }

    #[test]
    fn decoding_the_wrong_shape_fails() {
        assert!(decode_args::<(String, u32)>(br#"["bob"]"#).is_err());
        assert!(decode_args::<String>(br#"["bob","alice"]"#).is_err());
        assert!(decode_args::<String>(b"not json").is_err());
    }
}
