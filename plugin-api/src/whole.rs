//! Whole numbers as JSON Schema counts them: `2`, `2.0` and `0.2e1` alike
//! (what the routes' schemas say `"type": "integer"` means). The number's
//! text is read exactly: past 2^53 a float cannot tell `-9223372036854775808.0`
//! (in range) from `-9223372036854775809` (out of it).
//!
//! Helpers for `#[serde(deserialize_with = "…")]` on `i64` fields of a
//! request body:
//!
//! ```
//! #[derive(serde::Deserialize)]
//! struct Delete {
//!     #[serde(deserialize_with = "plugin_api::whole::list")]
//!     pks: Vec<i64>,
//! }
//! let body: Delete = serde_json::from_str(r#"{"pks": [1, 2.0, 3e0]}"#).unwrap();
//! assert_eq!(body.pks, [1, 2, 3]);
//! ```

use serde::{Deserialize, Deserializer, de::Error};
use serde_json::value::RawValue;

fn whole<E: Error>(raw: &RawValue) -> Result<i64, E> {
    let text = raw.get();
    exact(text).ok_or_else(|| E::custom(format!("{text} is not a 64-bit whole number")))
}

/// The value of a JSON number's text, if it is a whole number that
/// fits an `i64`.
fn exact(text: &str) -> Option<i64> {
    if let Ok(i) = text.parse::<i64>() {
        return Some(i);
    }
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent) = unsigned.split_once(['e', 'E']).unwrap_or((unsigned, "0"));
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits: Vec<u8> = int.bytes().chain(frac.bytes()).collect();
    if int.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let digits = match digits.iter().position(|d| *d != b'0') {
        Some(first) => &digits[first..],
        None => return Some(0),
    };
    // The value is `digits` times 10^scale.
    let exponent: i64 = exponent
        .strip_prefix('+')
        .unwrap_or(exponent)
        .parse()
        .ok()?;
    let scale = exponent.checked_sub(i64::try_from(frac.len()).ok()?)?;
    let kept = i64::try_from(digits.len()).ok()? + scale.min(0);
    let (kept, dropped) = digits.split_at(usize::try_from(kept).ok()?);
    if dropped.iter().any(|d| *d != b'0') || kept.len() as i64 + scale.max(0) > 19 {
        return None;
    }
    let mut value: i128 = 0;
    for d in kept {
        value = value * 10 + i128::from(d - b'0');
    }
    value *= 10i128.pow(u32::try_from(scale.max(0)).ok()?);
    i64::try_from(if negative { -value } else { value }).ok()
}

/// A required whole number.
pub fn required<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    whole(&Box::<RawValue>::deserialize(d)?)
}

/// An optional whole number (`null` or absent: `None`; with `#[serde(default)]`).
pub fn optional<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    Option::<Box<RawValue>>::deserialize(d)?
        .as_deref()
        .map(whole)
        .transpose()
}

/// A list of whole numbers.
pub fn list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<i64>, D::Error> {
    Vec::<Box<RawValue>>::deserialize(d)?
        .iter()
        .map(|raw| whole(raw))
        .collect()
}
