//! Test hooks: pausing a process at a named point, so tests can act in the gap (take
//! a shard over, kill a warehouse session). Each does nothing unless its environment
//! variable is set.

use std::collections::BTreeMap;
use std::time::Duration;

/// Test hook: with `SLUICE_TEST_HOLD_BEFORE_PUBLISH=<file>`, the first publish of a
/// shard (its lease just checked) waits (see [`hold`]). How tests pause a process
/// between its lease check and its publish (the gap the destination's fence closes).
pub async fn hold_before_publish() {
    hold("SLUICE_TEST_HOLD_BEFORE_PUBLISH").await
}

/// Test hook: when the environment variable `var` names a file, the first caller
/// creates the file and waits until it is removed (at most 10 minutes); callers
/// reaching the hook meanwhile wait with it, later ones pass. Unset: returns at once.
pub async fn hold(var: &'static str) {
    const HOLDING: u8 = 1;
    const RELEASED: u8 = 2;
    static HOLDS: std::sync::Mutex<BTreeMap<&'static str, u8>> =
        std::sync::Mutex::new(BTreeMap::new());
    let Some(path) = std::env::var_os(var) else {
        return;
    };
    let path = std::path::PathBuf::from(path);
    let started = std::time::Instant::now();
    let state = || HOLDS.lock().expect("holds lock").get(var).copied();
    let set = |value| HOLDS.lock().expect("holds lock").insert(var, value);
    let first = {
        let mut holds = HOLDS.lock().expect("holds lock");
        !holds.contains_key(var) && holds.insert(var, HOLDING).is_none()
    };
    if first {
        if std::fs::write(&path, format!("held at {var}\n")).is_err() {
            set(RELEASED);
            return;
        }
        tracing::warn!(file = %path.display(), "test hook {var}: holding until the file is removed");
        while path.exists() && started.elapsed() < Duration::from_secs(600) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        set(RELEASED);
    }
    while state() != Some(RELEASED) && started.elapsed() < Duration::from_secs(600) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
