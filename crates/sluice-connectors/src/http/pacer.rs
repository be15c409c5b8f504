//! Proactive pacing per account: slow down *before* the API starts refusing.
//!
//! APIs report how much of an account's quota is used (Facebook's usage headers
//! on every response) or refuse with a wait time (429 / throttle codes). Each
//! account key gets a minimum spacing between requests that grows with the
//! reported usage, and a "blocked until" instant when the API asked to wait.
//! Requests for other accounts are not slowed down.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// Usage below this percentage costs nothing.
const FREE_USAGE_PCT: f64 = 60.0;
/// The spacing between requests when usage reaches 100 %.
const MAX_SPACING: Duration = Duration::from_secs(3);

#[derive(Debug, Default)]
struct KeyState {
    /// Earliest start of the next request.
    next_at: Option<Instant>,
    spacing: Duration,
    blocked_until: Option<Instant>,
    usage_pct: f64,
}

/// Per-account request spacing, shared by all requests of one source.
#[derive(Clone, Default)]
pub struct Pacer {
    keys: Arc<Mutex<HashMap<String, KeyState>>>,
}

impl Pacer {
    /// Waits until a request for `key` may start, and reserves its slot.
    pub async fn wait(&self, key: &str) {
        let start_at = {
            let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
            let state = keys.entry(key.to_string()).or_default();
            let now = Instant::now();
            let mut at = now;
            if let Some(b) = state.blocked_until {
                at = at.max(b);
            }
            if let Some(n) = state.next_at {
                at = at.max(n);
            }
            state.next_at = Some(at + state.spacing);
            at
        };
        tokio::time::sleep_until(start_at).await;
    }

    /// Records the usage an API reported for `key` (the highest of its signals, 0–100+).
    pub fn report_usage(&self, key: &str, usage_pct: f64) {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        let state = keys.entry(key.to_string()).or_default();
        state.usage_pct = usage_pct;
        state.spacing = spacing_for(usage_pct);
    }

    /// The API asked to wait `for_` before the next request for `key`.
    pub fn block(&self, key: &str, for_: Duration) {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        let state = keys.entry(key.to_string()).or_default();
        let now = Instant::now();
        let until = now
            .checked_add(for_.min(super::MAX_SERVER_WAIT))
            .unwrap_or(now);
        state.blocked_until = Some(state.blocked_until.map_or(until, |b| b.max(until)));
    }

    /// The last usage reported for `key`.
    pub fn usage(&self, key: &str) -> f64 {
        let keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        keys.get(key).map_or(0.0, |s| s.usage_pct)
    }
}

/// Quadratic in the usage above the free band: gentle at first, steep near 100 %.
fn spacing_for(usage_pct: f64) -> Duration {
    if !usage_pct.is_finite() || usage_pct <= FREE_USAGE_PCT {
        return Duration::ZERO;
    }
    let x = ((usage_pct - FREE_USAGE_PCT) / (100.0 - FREE_USAGE_PCT)).min(1.0);
    MAX_SPACING.mul_f64(x * x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spacing_grows_with_usage() {
        assert_eq!(spacing_for(10.0), Duration::ZERO);
        assert!(spacing_for(80.0) > Duration::ZERO);
        assert!(spacing_for(95.0) > spacing_for(80.0));
        assert_eq!(spacing_for(150.0), MAX_SPACING);
    }

    #[tokio::test]
    async fn blocked_keys_wait_and_others_do_not() {
        let pacer = Pacer::default();
        pacer.block("a", Duration::from_millis(150));
        let t = Instant::now();
        pacer.wait("b").await;
        assert!(t.elapsed() < Duration::from_millis(50));
        pacer.wait("a").await;
        assert!(t.elapsed() >= Duration::from_millis(150));
    }
}
