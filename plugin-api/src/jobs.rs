//! Scheduled jobs (contract 1.4): a plugin's work on an interval or a cron
//! expression, once per tick across the cluster or on each instance.

use std::{future::Future, panic, time::Duration};

use abi_stable::std_types::{ROption, RResult, RStr, RString};
use futures_util::FutureExt as _;

use crate::{Host, TaskError, abi::job_outcome as outcome, lifespan};

/// When a job runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    /// Every so often, on ticks aligned to the Unix epoch (so every
    /// instance of a cluster counts the same ticks).
    Every(Duration),
    /// At the times a cron expression names, in UTC: five fields
    /// (minute to weekday), or six with seconds first, or an alias such
    /// as `@hourly`.
    Cron(String),
}

impl Schedule {
    /// Every `interval` (at least 1 ms).
    pub fn every(interval: Duration) -> Self {
        Self::Every(interval)
    }

    /// At the times of the cron expression `expression` (the host checks
    /// it when the job is declared).
    pub fn cron(expression: &str) -> Self {
        Self::Cron(expression.to_owned())
    }
}

/// Where a job runs when several instances serve the plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cluster {
    /// On one instance per tick, whichever takes the tick first.
    Once,
    /// On every instance, each tick.
    Each,
}

impl Host {
    /// Declares job `name` of this plugin and runs `body` on each of its
    /// ticks, from now until the plugin stops: `body` gets the tick's
    /// scheduled time in milliseconds since the Unix epoch. A job does not
    /// fire while the plugin is disabled, and with [`Cluster::Once`] one
    /// instance of the cluster runs each tick. A run that answers an error
    /// or panics is recorded as such (the plugin list shows each job's last
    /// run, outcome and next run; `/metrics` counts runs by outcome) and
    /// the job goes on.
    ///
    /// Like [`spawn`](Host::spawn), this works from the start hook on; a
    /// bad name or cron expression is an error saying what is wrong.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use plugin_api::{Cluster, Schedule, host};
    ///
    /// async fn start() -> Result<(), String> {
    ///     host()
    ///         .job("purge", Schedule::every(Duration::from_secs(60)), Cluster::Once, |_tick| async {
    ///             host().execute("DELETE FROM my_note WHERE expires_at < ?", &[]).await
    ///                 .map(|_| ()).map_err(|e| e.to_string())
    ///         })
    ///         .map_err(|e| e.to_string())
    /// }
    /// ```
    pub fn job<F, Fut>(
        &self,
        name: &str,
        schedule: Schedule,
        cluster: Cluster,
        body: F,
    ) -> Result<(), TaskError>
    where
        F: Fn(i64) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let services = self.services();
        let (Some(add), Some(wait), Some(done)) =
            (services.job_add(), services.job_wait(), services.job_done())
        else {
            return Err(TaskError::new(
                "this host runs no plugin jobs: it needs a host built with plugin-api 1.4 or later",
            ));
        };
        let spec = match &schedule {
            Schedule::Every(interval) => serde_json::json!({
                "name": name,
                "every_ms": u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
                "cluster": cluster_name(cluster),
            }),
            Schedule::Cron(expression) => serde_json::json!({
                "name": name,
                "cron": expression,
                "cluster": cluster_name(cluster),
            }),
        };
        let owner = lifespan::owner();
        let plugin = self.plugin();
        if let RResult::RErr(e) = add(
            RStr::from(plugin),
            owner,
            RStr::from(spec.to_string().as_str()),
        ) {
            return Err(TaskError::new(e.into_string()));
        }
        let job = name.to_owned();
        self.spawn(&format!("job:{name}"), async move {
            loop {
                let tick = match wait(RStr::from(plugin), owner, RStr::from(job.as_str())).await {
                    RResult::ROk(tick) => tick,
                    // The run stopped: so does the job.
                    RResult::RErr(_) => return,
                };
                let ran = match panic::catch_unwind(panic::AssertUnwindSafe(|| body(tick))) {
                    Ok(future) => panic::AssertUnwindSafe(future).catch_unwind().await,
                    Err(payload) => Err(payload),
                };
                let (code, message) = match ran {
                    Ok(Ok(())) => (outcome::OK, ROption::RNone),
                    Ok(Err(message)) => (outcome::ERROR, ROption::RSome(RString::from(message))),
                    Err(_) => (
                        outcome::PANICKED,
                        ROption::RSome(RString::from("it panicked")),
                    ),
                };
                done(
                    RStr::from(plugin),
                    owner,
                    RStr::from(job.as_str()),
                    code,
                    message,
                );
            }
        })
    }
}

fn cluster_name(cluster: Cluster) -> &'static str {
    match cluster {
        Cluster::Once => "once",
        Cluster::Each => "each",
    }
}
