//! Eight instances on one database and one Redis (PostgreSQL, MariaDB),
//! each with its own plugin dir and one HTTP worker: every install, toggle
//! and uninstall on one reaches all the others, and an instance brings its
//! plugin dir to the cluster's set under its own lock alone: while another
//! instance holds the cluster's lock (an install waiting in a start hook
//! that never returns), a new instance still serves what the cluster has.
//! The instance that installs probes the library; the others, the same
//! build, take its word from the database.

use std::time::Duration;

use e2e::{Backend, DataDir, Host, TestDatabase, TestRedis, eventually, greeter, package};

const INSTANCES: usize = 8;
const WITHIN: Duration = Duration::from_secs(15);

fn status(host: &Host) -> u16 {
    host.get("/greeter/v1/version").status
}

fn eight_instances_follow_every_change(backend: Backend) {
    let database = TestDatabase::create(backend);
    let redis = TestRedis::start();
    let url = redis.url();
    let mut env: Vec<(&str, String)> = database.env();
    env.extend([
        (
            "PLUGHOST_JWT_SECRET",
            "a-shared-token-secret-of-at-least-32-chars".to_owned(),
        ),
        ("REDIS_URL", url),
        // Only the announcements carry a change in time.
        ("PLUGHOST_FLAG_RECONCILE", "60".to_owned()),
        ("PLUGHOST_HOOK_TIMEOUT", "120".to_owned()),
    ]);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let start = |data: &DataDir, extra: &[(&str, &str)]| {
        let mut all = env.clone();
        all.push(("PLUGHOST_WORKERS", "1"));
        all.extend_from_slice(extra);
        Host::start_with(data, &all)
    };
    let dirs: Vec<DataDir> = (0..INSTANCES).map(|_| DataDir::new()).collect();
    let logged = [("PLUGHOST_LOG", "info,host::plugin::lifecycle=debug")];
    let hosts: Vec<Host> = dirs.iter().map(|d| start(d, &logged)).collect();
    let shown = format!("{backend:?}");
    let (a, others) = hosts.split_first().unwrap();

    assert_eq!(a.upload(&greeter(1), "type=zip").status, 200);
    for host in others {
        assert!(
            eventually(WITHIN, || status(host) == 200),
            "{shown}: not served on {}:\n{}",
            host.base(),
            host.log()
        );
    }
    // Each brought it in itself (the line follows the routes going live),
    // opening the library without a probe process of its own: the first
    // instance, the same build, probed it and said so in the database.
    assert!(
        a.log().contains("checked_elsewhere=false"),
        "{shown}: {}",
        a.log()
    );
    for host in others {
        assert!(
            eventually(WITHIN, || host
                .log()
                .contains("now serving the cluster's package plugin=greeter")),
            "{shown}: {}",
            host.log()
        );
        let log = host.log();
        assert!(
            log.contains("library opened plugin=\"greeter\"")
                && log.contains("checked_elsewhere=true"),
            "{shown}: {log}"
        );
    }
    assert_eq!(a.put("/admin/v1/sys/plugins/greeter/status").status, 200);
    for host in others {
        assert!(eventually(WITHIN, || status(host) == 503), "{shown}");
    }
    assert_eq!(a.put("/admin/v1/sys/plugins/greeter/status").status, 200);
    for host in others {
        assert!(eventually(WITHIN, || status(host) == 200), "{shown}");
    }

    // One more instance holds the cluster's lock for good: its install
    // waits in the start hook. A new instance still fetches and serves
    // the cluster's set meanwhile, under its own lock.
    let holder_dir = DataDir::new();
    let holder = start(
        &holder_dir,
        &[
            ("TICKER_START", "hang"),
            ("PLUGHOST_LOG", "info,host::plugin::lifecycle::lock=debug"),
        ],
    );
    std::thread::scope(|scope| {
        scope.spawn(|| {
            // Killed under it, below: any outcome is fine here.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                holder.upload(&package("ticker", "ticker", "ticker"), "type=zip")
            }));
        });
        assert!(
            eventually(Duration::from_secs(30), || holder
                .log()
                .contains("lifecycle lock taken operation=\"install\"")),
            "{shown}: {}",
            holder.log()
        );
        let late_dir = DataDir::new();
        let late = start(&late_dir, &[("PLUGHOST_LOCK_WAIT", "1")]);
        assert!(
            eventually(WITHIN, || status(&late) == 200),
            "{shown}: a new instance did not serve the cluster's set while another held the cluster's lock:\n{}",
            late.log()
        );
        // Operations that need the cluster's lock wait for it.
        late.request("DELETE", "/admin/v1/sys/plugins/greeter", None)
            .assert_error(409, "another plugin operation is in progress");
        holder.kill();
    });

    // Uninstalled on one: gone from all (the dead holder's lock is free
    // within its lease).
    let reply = others[3].request("DELETE", "/admin/v1/sys/plugins/greeter", None);
    assert_eq!(reply.status, 200, "{shown}: {:?}", reply.json);
    for host in &hosts {
        assert!(eventually(WITHIN, || status(host) == 404), "{shown}");
    }
}

#[test]
fn eight_instances_on_postgresql_and_redis_follow_every_change() {
    eight_instances_follow_every_change(Backend::Postgresql);
}

#[test]
fn eight_instances_on_mariadb_and_redis_follow_every_change() {
    eight_instances_follow_every_change(Backend::Mysql);
}
