//! Scheduled jobs of plugin runs: each declared job's schedule (an
//! interval aligned to the Unix epoch, or a cron expression in UTC), the
//! wait for its next tick (skipped while the plugin is disabled; a `once`
//! tick claimed by one instance of the cluster), and what its runs did,
//! for the plugin list and `/metrics`.
//!
//! *Invariant:* every instance numbers a job's ticks the same way (by
//! their scheduled time), and a `once` tick is run by the instance whose
//! claim moved the job's last claimed tick forward: one per tick.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use abi_stable::std_types::{ROption, RResult, RStr, RString};
use async_ffi::FfiFuture;
use croner::{
    Cron,
    parser::{CronParser, Seconds},
};
use futures_util::FutureExt as _;
use plugin_api::abi::job_outcome;
use serde::Deserialize;
use serde_json::{Value, json};

use super::lifespan::{Run, run_of};
use super::waker::IntoPluginFuture as _;

/// When a job runs.
enum Timing {
    Every(u64),
    Cron(Box<Cron>),
}

/// One declared job of a run.
pub struct Job {
    name: String,
    timing: Timing,
    schedule: String,
    once: bool,
    state: Mutex<JobState>,
}

#[derive(Default)]
struct JobState {
    next_run: Option<i64>,
    last_run: Option<i64>,
    outcome: Option<String>,
    error: Option<String>,
    runs: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    name: String,
    every_ms: Option<u64>,
    cron: Option<String>,
    cluster: String,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Job {
    /// A job from the plugin's spec, or what is wrong with it.
    fn parse(spec: &str) -> Result<Self, String> {
        let spec: Spec =
            serde_json::from_str(spec).map_err(|e| format!("the job is not understood: {e}"))?;
        let name = spec.name;
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !valid {
            return Err(format!(
                "job name '{name}' must be 1 to 64 letters, digits, '_', '-' or '.'"
            ));
        }
        let once = match spec.cluster.as_str() {
            "once" => true,
            "each" => false,
            other => {
                return Err(format!(
                    "job '{name}': cluster mode '{other}' is not once or each"
                ));
            }
        };
        let (timing, schedule) = match (spec.every_ms, spec.cron) {
            (Some(0), None) => return Err(format!("job '{name}': an interval of 0 ms")),
            (Some(ms), None) => (Timing::Every(ms), format!("every {}", shown(ms))),
            (None, Some(expression)) => {
                let cron = CronParser::builder()
                    .seconds(Seconds::Optional)
                    .build()
                    .parse(&expression)
                    .map_err(|e| {
                        format!("job '{name}': '{expression}' is not a cron expression: {e}")
                    })?;
                (Timing::Cron(Box::new(cron)), format!("cron {expression}"))
            }
            _ => {
                return Err(format!(
                    "job '{name}' needs either an interval or a cron expression"
                ));
            }
        };
        Ok(Self {
            name,
            timing,
            schedule,
            once,
            state: Mutex::default(),
        })
    }

    /// The first tick after `now` (ms since the epoch), if any.
    fn next_after(&self, now: i64) -> Option<i64> {
        match &self.timing {
            Timing::Every(ms) => {
                let ms = i64::try_from(*ms).ok()?;
                now.checked_div(ms)?.checked_add(1)?.checked_mul(ms)
            }
            Timing::Cron(cron) => {
                let at = chrono::DateTime::from_timestamp_millis(now)?;
                cron.find_next_occurrence(&at, false)
                    .ok()
                    .map(|t| t.timestamp_millis())
            }
        }
    }

    /// What the plugin list shows of the job.
    pub fn describe(&self) -> Value {
        let state = self.state.lock().expect("job lock");
        let at = |ms: Option<i64>| {
            ms.and_then(chrono::DateTime::from_timestamp_millis)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        };
        json!({
            "name": self.name,
            "schedule": self.schedule,
            "cluster": if self.once { "once" } else { "each" },
            "next_run": at(state.next_run),
            "last_run": at(state.last_run),
            "outcome": state.outcome,
            "error": state.error,
            "runs": state.runs,
        })
    }
}

/// An interval for people: `250ms`, `90s`, `5m`.
fn shown(ms: u64) -> String {
    match ms {
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1_000 == 0 => format!("{}s", ms / 1_000),
        ms => format!("{ms}ms"),
    }
}

fn job_of(run: &Run, name: &str) -> Result<Arc<Job>, RString> {
    run.jobs
        .lock()
        .expect("jobs lock")
        .get(name)
        .cloned()
        .ok_or_else(|| RString::from(format!("plugin '{}' has no job '{name}'", run.plugin)))
}

/// [`HostServices::job_add`](plugin_api::abi::HostServices::job_add).
pub(super) extern "C" fn job_add(
    plugin: RStr<'_>,
    owner: u64,
    spec: RStr<'_>,
) -> RResult<(), RString> {
    let plugin = plugin.as_str();
    let added = (|| {
        let run = run_of(plugin, owner).ok_or_else(|| {
            format!("plugin '{plugin}' cannot declare a job: it is not running (jobs may be declared from its start hook on)")
        })?;
        let job = Job::parse(spec.as_str()).map_err(|e| format!("plugin '{plugin}': {e}"))?;
        let mut jobs = run.jobs.lock().expect("jobs lock");
        if jobs.contains_key(&job.name) {
            return Err(format!(
                "plugin '{plugin}' declares job '{}' twice",
                job.name
            ));
        }
        job.state.lock().expect("job lock").next_run = job.next_after(now_ms());
        jobs.insert(job.name.clone(), Arc::new(job));
        Ok(())
    })();
    added.map_err(RString::from).into()
}

/// [`HostServices::job_wait`](plugin_api::abi::HostServices::job_wait).
pub(super) extern "C" fn job_wait(
    plugin: RStr<'_>,
    owner: u64,
    job: RStr<'_>,
) -> FfiFuture<RResult<i64, RString>> {
    let (plugin, name) = (plugin.as_str().to_owned(), job.as_str().to_owned());
    async move {
        let run = run_of(&plugin, owner)
            .ok_or_else(|| RString::from(format!("plugin '{plugin}' is not running")))?;
        let job = job_of(&run, &name)?;
        loop {
            let Some(tick) = job.next_after(now_ms()) else {
                return Err(RString::from(format!(
                    "job '{name}' of plugin '{plugin}' has no next run"
                )));
            };
            job.state.lock().expect("job lock").next_run = Some(tick);
            let wait = u64::try_from(tick - now_ms()).unwrap_or(0);
            tokio::select! {
                () = run.stopped() => {
                    return Err(RString::from(format!("plugin '{plugin}' stopped")));
                }
                () = tokio::time::sleep(Duration::from_millis(wait)) => {}
            }
            // The sleep may end a little early by the clock: never run a
            // tick before its time.
            while now_ms() < tick {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            if !run.enabled() {
                continue;
            }
            if job.once {
                match super::claim_tick(&format!("{plugin}:{name}"), tick).await {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(e) => {
                        tracing::warn!(plugin, job = name, "tick not claimed, skipped: {e}");
                        continue;
                    }
                }
            }
            job.state.lock().expect("job lock").last_run = Some(tick);
            return Ok(tick);
        }
    }
    .map(RResult::from)
    .into_plugin_ffi()
}

/// [`HostServices::job_done`](plugin_api::abi::HostServices::job_done).
pub(super) extern "C" fn job_done(
    plugin: RStr<'_>,
    owner: u64,
    job: RStr<'_>,
    outcome: u8,
    message: ROption<RString>,
) {
    let (plugin, name) = (plugin.as_str(), job.as_str());
    let label = match outcome {
        job_outcome::OK => "ok",
        job_outcome::PANICKED => "panicked",
        _ => "error",
    };
    let message = message.into_option().map(RString::into_string);
    if label != "ok" {
        tracing::warn!(target: "plugin", plugin, job = name, "job run failed: {}", message.as_deref().unwrap_or(label));
    }
    metrics::counter!("plughost_plugin_job_runs_total", "plugin" => plugin.to_owned(), "job" => name.to_owned(), "outcome" => label)
        .increment(1);
    let Some(job) = run_of(plugin, owner).and_then(|run| job_of(&run, name).ok()) else {
        return;
    };
    let mut state = job.state.lock().expect("job lock");
    state.runs += 1;
    state.outcome = Some(label.to_owned());
    state.error = message.filter(|_| label != "ok");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(spec: Value, expected: Result<&str, &str>) {
        match (Job::parse(&spec.to_string()), expected) {
            (Ok(job), Ok(schedule)) => assert_eq!(job.schedule, schedule),
            (Err(e), Err(needle)) => assert!(e.contains(needle), "{e}"),
            (Ok(job), Err(needle)) => {
                panic!("{spec}: accepted as {}, wanted '{needle}'", job.schedule)
            }
            (Err(e), Ok(_)) => panic!("{spec}: {e}"),
        }
    }

    #[test]
    fn job_specs_are_read_or_refused_naming_what_is_wrong() {
        check(
            json!({"name": "purge", "every_ms": 60_000, "cluster": "once"}),
            Ok("every 1m"),
        );
        check(
            json!({"name": "p", "every_ms": 1500, "cluster": "each"}),
            Ok("every 1500ms"),
        );
        check(
            json!({"name": "nightly", "cron": "0 3 * * *", "cluster": "once"}),
            Ok("cron 0 3 * * *"),
        );
        check(
            json!({"name": "s", "cron": "*/5 * * * * *", "cluster": "once"}),
            Ok("cron */5 * * * * *"),
        );
        check(
            json!({"name": "n", "cron": "61 * * * *", "cluster": "once"}),
            Err("'61 * * * *' is not a cron expression"),
        );
        check(
            json!({"name": "n", "every_ms": 0, "cluster": "once"}),
            Err("an interval of 0 ms"),
        );
        check(
            json!({"name": "n", "cluster": "once"}),
            Err("either an interval or a cron expression"),
        );
        check(
            json!({"name": "n", "every_ms": 1, "cluster": "twice"}),
            Err("'twice' is not once or each"),
        );
        check(
            json!({"name": "a b", "every_ms": 1, "cluster": "once"}),
            Err("job name 'a b'"),
        );
    }

    #[test]
    fn ticks_are_aligned_to_the_epoch_and_cron_times_follow_the_expression() {
        let every = Job::parse(r#"{"name":"e","every_ms":1000,"cluster":"once"}"#).unwrap();
        assert_eq!(every.next_after(12_345), Some(13_000));
        assert_eq!(every.next_after(13_000), Some(14_000));
        let cron = Job::parse(r#"{"name":"c","cron":"30 2 * * *","cluster":"once"}"#).unwrap();
        // 1970-01-01T00:00:00Z -> 02:30 that day.
        assert_eq!(cron.next_after(0), Some((2 * 3600 + 30 * 60) * 1000));
    }
}
