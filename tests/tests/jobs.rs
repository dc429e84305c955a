//! Scheduled jobs: a `once` job runs each tick on exactly one instance of
//! three sharing one database (claimed in the database without Redis, in
//! Redis with it), an `each` job on every instance; a disabled plugin's
//! job does not fire; the plugin list shows each job with its last run,
//! outcome and next run, and `/metrics` counts runs.

use std::{collections::BTreeMap, time::Duration};

use e2e::{Backend, DataDir, Host, TestDatabase, TestRedis, eventually};

const SECRET: &str = "a-shared-token-secret-of-at-least-32-chars";

/// The ticks `host` ran the ticker's `count` job for.
fn ticks(host: &Host) -> Vec<i64> {
    host.get("/ticker/v1/jobs").data()["ticks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_i64().unwrap())
        .collect()
}

/// Three instances on `database` (and `redis`), each serving the ticker
/// with its `count` job every 200 ms in `cluster` mode.
fn three(database: &TestDatabase, redis: Option<&str>, cluster: &str) -> Vec<(DataDir, Host)> {
    let url = database.env()[0].1.clone();
    (0..3)
        .map(|i| {
            let data = DataDir::new();
            data.install_dir("ticker");
            let id = format!("node-{i}");
            let mut env = vec![
                ("DATABASE_URL", url.as_str()),
                ("PLUGHOST_JWT_SECRET", SECRET),
                ("PLUGHOST_INSTANCE_ID", id.as_str()),
                ("TICKER_JOB_MS", "200"),
                ("TICKER_JOB_CLUSTER", cluster),
            ];
            if let Some(redis) = redis {
                env.push(("REDIS_URL", redis));
            }
            let host = Host::start_with(&data, &env);
            (data, host)
        })
        .collect()
}

/// How many instances ran each tick, once every instance ran at least `n`.
fn runs_per_tick(hosts: &[(DataDir, Host)], n: usize) -> BTreeMap<i64, usize> {
    assert!(
        eventually(Duration::from_secs(20), || hosts
            .iter()
            .map(|(_, h)| ticks(h).len())
            .sum::<usize>()
            >= n),
        "the job did not run {n} times"
    );
    let mut runs = BTreeMap::new();
    for (_, host) in hosts {
        for tick in ticks(host) {
            *runs.entry(tick).or_default() += 1;
        }
    }
    runs
}

fn a_once_job_runs_each_tick_on_exactly_one_of_three_instances(redis: bool) {
    let database = TestDatabase::create(Backend::Postgresql);
    let server = redis.then(TestRedis::start);
    let url = server.as_ref().map(TestRedis::url);
    let hosts = three(&database, url.as_deref(), "once");
    let runs = runs_per_tick(&hosts, 15);
    assert!(runs.values().all(|&n| n == 1), "a tick ran twice: {runs:?}");
    assert!(
        runs.keys().all(|t| t % 200 == 0),
        "ticks are aligned: {runs:?}"
    );
    let busy = hosts.iter().filter(|(_, h)| !ticks(h).is_empty()).count();
    assert!(busy >= 1, "{runs:?}");
}

#[test]
fn a_once_job_runs_each_tick_on_exactly_one_instance_claimed_in_the_database() {
    a_once_job_runs_each_tick_on_exactly_one_of_three_instances(false);
}

#[test]
fn a_once_job_runs_each_tick_on_exactly_one_instance_claimed_in_redis() {
    a_once_job_runs_each_tick_on_exactly_one_of_three_instances(true);
}

#[test]
fn an_each_job_runs_on_every_instance() {
    let database = TestDatabase::create(Backend::Postgresql);
    let hosts = three(&database, None, "each");
    let runs = runs_per_tick(&hosts, 30);
    assert!(
        runs.values().any(|&n| n == 3),
        "no tick ran on all three: {runs:?}"
    );
}

#[test]
fn a_disabled_plugins_job_does_not_fire_and_the_list_shows_its_runs() {
    let (_data, host) = e2e::serve_with(&["ticker"], &[("TICKER_JOB_MS", "100")]);
    assert!(eventually(Duration::from_secs(10), || ticks(&host).len() >= 3));

    let ticker = host.plugin("ticker");
    let job = &ticker["jobs"][0];
    assert_eq!(job["name"], "count", "{ticker}");
    assert_eq!(job["schedule"], "every 100ms");
    assert_eq!(job["cluster"], "once");
    assert_eq!(job["outcome"], "ok", "{job}");
    assert!(job["runs"].as_u64().unwrap() >= 3, "{job}");
    let last = job["last_run"].as_str().unwrap();
    let next = job["next_run"].as_str().unwrap();
    assert!(next > last, "{job}");

    let metrics = host.metrics();
    assert!(
        metrics.contains(
            "plughost_plugin_job_runs_total{plugin=\"ticker\",job=\"count\",outcome=\"ok\"}"
        ),
        "{metrics}"
    );

    // Disabled: its routes answer 503, so the job's runs are read from the list.
    let before = ticks(&host).len();
    assert_eq!(host.put("/admin/v1/sys/plugins/ticker/status").status, 200);
    assert_eq!(host.get("/ticker/v1/jobs").status, 503);
    std::thread::sleep(Duration::from_millis(800));
    let runs = host.plugin("ticker")["jobs"][0]["runs"].as_u64().unwrap() as usize;
    assert!(
        runs <= before + 1,
        "the job fired while disabled: {before} then {runs} runs"
    );
    assert_eq!(host.put("/admin/v1/sys/plugins/ticker/status").status, 200);
    let resumed = ticks(&host).len();
    assert!(
        resumed <= before + 1,
        "the job fired while disabled: {before} then {resumed}"
    );
    assert!(eventually(Duration::from_secs(10), || ticks(&host).len() > resumed + 2));
}
