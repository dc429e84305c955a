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
