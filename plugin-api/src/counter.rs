//! Atomic counters in the key-value store (contract 1.2).

use std::time::Duration;

use abi_stable::std_types::{RResult, RStr, RString};

use crate::{
    DbError, Host,
    db::{decode_error, other, ttl_millis},
};

impl Host {
    /// Adds `delta` to the whole number stored at `key` in one atomic step
    /// (a missing or expired key counts as 0) and answers the sum: a
    /// counter that every instance of a cluster shares.
    ///
    /// `ttl` sets the key's expiry when it has none, so the first increment
    /// of a window starts it: a rate limit of 10 calls a minute is
    /// `host.kv_incr(&key, 1, Some(Duration::from_secs(60))).await? > 10`.
    ///
    /// A key holding something other than a whole number, or a sum that
    /// does not fit an `i64`, is an error and leaves the key unchanged. On
    /// a host older than plugin-api 1.2 this is an error naming the
    /// version it needs.
    pub async fn kv_incr(
        &self,
        key: &str,
        delta: i64,
        ttl: Option<Duration>,
    ) -> Result<i64, DbError> {
        let Some(incr) = self.services().kv_incr() else {
            return Err(other(
                "this host has no atomic increment: it needs a host built with plugin-api 1.2 or later"
                    .to_owned(),
            ));
        };
        match incr(
            RStr::from(self.plugin()),
            RString::from(key),
            delta,
            ttl_millis(ttl),
        )
        .await
        {
            RResult::ROk(sum) => Ok(sum),
            RResult::RErr(e) => Err(decode_error(e)),
        }
    }
}

/// A counter after an increment: what [`count`] answers.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counted {
    /// The new value.
    pub sum: i64,
    /// When the key expires, in milliseconds since the Unix epoch.
    pub expires_at_ms: Option<i64>,
}

/// One increment, as every store of a host applies it: `stored` is the
/// key's text and expiry (milliseconds since the Unix epoch), if it has
/// one; a missing or expired key counts as 0, and `ttl_ms` > 0 sets the
/// expiry when there is none. The error is the message the plugin gets.
#[doc(hidden)]
pub fn count(
    key: &str,
    stored: Option<(&str, Option<i64>)>,
    now_ms: i64,
    delta: i64,
    ttl_ms: u64,
) -> Result<Counted, String> {
    let (current, expires_at_ms) = match stored {
        Some((_, Some(at))) if at <= now_ms => (0, None),
        Some((text, expires)) => (text.parse::<i64>().map_err(|_| not_whole(key))?, expires),
        None => (0, None),
    };
    let sum = current
        .checked_add(delta)
        .ok_or_else(|| overflows(key, delta))?;
    let expires_at_ms = expires_at_ms.or_else(|| {
        (ttl_ms > 0).then(|| now_ms.saturating_add(i64::try_from(ttl_ms).unwrap_or(i64::MAX)))
    });
    Ok(Counted { sum, expires_at_ms })
}

/// The refusal of a key that holds something other than a whole number.
#[doc(hidden)]
pub fn not_whole(key: &str) -> String {
    format!(
        "key '{key}' does not hold a whole number; kv_incr only counts (set it with kv_set to start over)"
    )
}

/// The refusal of a sum past `i64`.
#[doc(hidden)]
pub fn overflows(key: &str, delta: i64) -> String {
    format!("adding {delta} to key '{key}' would not fit a 64-bit whole number")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_expired_key_counts_from_zero_and_the_first_increment_sets_the_window() {
        let fresh = count("k", None, 1_000, 5, 60).unwrap();
        assert_eq!(
            fresh,
            Counted {
                sum: 5,
                expires_at_ms: Some(1_060)
            }
        );
        let expired = count("k", Some(("41", Some(1_000))), 1_000, 1, 0).unwrap();
        assert_eq!(
            expired,
            Counted {
                sum: 1,
                expires_at_ms: None
            }
        );
        let running = count("k", Some(("41", Some(2_000))), 1_000, 1, 60).unwrap();
        assert_eq!(
            running,
            Counted {
                sum: 42,
                expires_at_ms: Some(2_000)
            }
        );
        let forever = count("k", Some(("-3", None)), 1_000, -4, 0).unwrap();
        assert_eq!(
            forever,
            Counted {
                sum: -7,
                expires_at_ms: None
            }
        );
    }

    #[test]
    fn text_and_overflow_are_refused_naming_the_key() {
        assert_eq!(
            count("k", Some(("abc", None)), 0, 1, 0),
            Err(not_whole("k"))
        );
        assert_eq!(count("k", Some((" 1", None)), 0, 1, 0), Err(not_whole("k")));
        let max = i64::MAX.to_string();
        assert_eq!(
            count("k", Some((&max, None)), 0, 1, 0),
            Err(overflows("k", 1))
        );
        // An expired key is not read, whatever it held.
        assert_eq!(count("k", Some(("abc", Some(0))), 0, 1, 0).unwrap().sum, 1);
    }
}
