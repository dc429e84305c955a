//! Panic lines that survive a flood: per plugin and panic site (the
//! `file:line` a plugin's panic hook reports), the first few in an interval
//! are logged as they come, the rest are counted and reported once per
//! interval, so a route panicking on every request cannot fill the disk.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

/// Lines logged per site and interval before the rest are counted.
const LINES_PER_INTERVAL: u32 = 5;
/// The interval.
const INTERVAL: Duration = Duration::from_secs(10);
/// Sites tracked at once; beyond, lines are logged as they come.
const MAX_SITES: usize = 4096;

struct Window {
    since: Instant,
    logged: u32,
    suppressed: u64,
}

static WINDOWS: Mutex<Option<HashMap<(String, String), Window>>> = Mutex::new(None);

/// The site of a panic line `panicked at FILE:LINE: payload` (the whole
/// line for other shapes).
fn site(message: &str) -> &str {
    message
        .strip_prefix("panicked")
        .and_then(|rest| rest.find(": ").map(|i| &message[..i + "panicked".len()]))
        .unwrap_or(message)
}

fn report(plugin: &str, site: &str, window: &Window) {
    if window.suppressed > 0 {
        tracing::error!(
            target: "plugin",
            plugin,
            "{site}: {} more times in the last {} s (not logged one by one)",
            window.suppressed,
            window.since.elapsed().as_secs()
        );
    }
}

/// Logs a panic `message` of `plugin`, or counts it when its site floods.
pub fn panicked(plugin: &str, message: &str) {
    match crate::observe::current_route().filter(|r| &*r.plugin == plugin) {
        Some(route) => route.panicked(),
        None => crate::observe::panicked_outside(plugin),
    }
    let now = Instant::now();
    let site = site(message);
    let mut windows = WINDOWS.lock().expect("panic log lock");
    let windows = windows.get_or_insert_with(HashMap::new);
    let key = (plugin.to_owned(), site.to_owned());
    if !windows.contains_key(&key) && windows.len() >= MAX_SITES {
        tracing::error!(target: "plugin", plugin, "{message}");
        return;
    }
    let window = windows.entry(key).or_insert(Window {
        since: now,
        logged: 0,
        suppressed: 0,
    });
    if now.duration_since(window.since) >= INTERVAL {
        report(plugin, site, window);
        *window = Window {
            since: now,
            logged: 0,
            suppressed: 0,
        };
    }
    if window.logged < LINES_PER_INTERVAL {
        window.logged += 1;
        tracing::error!(target: "plugin", plugin, "{message}");
        if window.logged == LINES_PER_INTERVAL {
            tracing::warn!(
                target: "plugin",
                plugin,
                "{site}: further panics here are counted and reported every {} s",
                INTERVAL.as_secs()
            );
        }
    } else {
        window.suppressed += 1;
    }
}

/// Reports the counts of intervals that ended, and forgets quiet sites.
pub fn flush() {
    let now = Instant::now();
    let mut windows = WINDOWS.lock().expect("panic log lock");
    let Some(windows) = windows.as_mut() else {
        return;
    };
    windows.retain(|(plugin, site), window| {
        if now.duration_since(window.since) < INTERVAL {
            return true;
        }
        report(plugin, site, window);
        false
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_sites_are_the_location_before_the_payload() {
        assert_eq!(
            site("panicked at src/lib.rs:10: index out of bounds: 3"),
            "panicked at src/lib.rs:10"
        );
        assert_eq!(site("panicked: no location"), "panicked");
        assert_eq!(site("something else"), "something else");
    }
}
