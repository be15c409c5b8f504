//! Fault injection: which failures the sandbox injects and when.
//!
//! Faults are counted per API (Facebook, Google, CleverTap each have their
//! own request counter, starting at 1), so "every N" is deterministic for a
//! client that talks to one API, whatever the others do. Each API renders a
//! fault in its own error shape (see the API modules); this module only
//! decides *whether* a request is hit. Faults never change the data: a
//! retried or de-duplicated read returns exactly `truth`.

use std::sync::atomic::{AtomicU64, Ordering};

use chrono::NaiveDate;

/// Fault flags; all off by default.
#[derive(Default, Clone, Debug)]
pub struct Faults {
    /// Every Nth request of each API is rate limited (FB 17/80000, Google 429
    /// RESOURCE_TEMPORARILY_EXHAUSTED with `retryDelay`, CleverTap 429).
    pub rate_limit_every: Option<u64>,
    /// Every Nth request of each API fails with a 5xx (a Google searchStream
    /// fails after its first batch).
    pub server_error_every: Option<u64>,
    /// Delay added to responses, in milliseconds.
    pub slow_ms: Option<u64>,
    /// Delay only every Nth request (default: every request when `slow_ms` is set).
    pub slow_every: Option<u64>,
    /// Every Nth response of each API is cut off mid-body (HTTP 200, invalid JSON).
    pub malformed_every: Option<u64>,
    /// Every Nth Facebook async report run ends in "Job Failed".
    pub async_fail_every: Option<u64>,
    /// Every Nth Facebook async report run stalls at "Job Running" forever.
    pub async_stall_every: Option<u64>,
    /// Every Nth page of each API repeats its first record at the end.
    pub duplicate_every: Option<u64>,
    /// Facebook sync insights whose size (objects × time buckets × breakdown
    /// values) exceeds this answer code 1 "Please reduce the amount of data".
    pub reduce_data_above: Option<u64>,
    /// Facebook insights asking for more than this many `fields` are too much
    /// data: a sync request answers code 1 "Please reduce the amount of data", a
    /// report run ends "Job Failed" with that error (fewer fields per request pass).
    pub reduce_data_fields_above: Option<u64>,
    /// On this day, Facebook account/campaign/adset totals differ from the
    /// sum of ad rows (truth keeps the ad-level sums).
    pub inconsistent_day: Option<NaiveDate>,
    /// Facebook answers 190/463 on every call; Google access tokens are
    /// issued already expired (401 OAUTH_TOKEN_EXPIRED).
    pub expired_token: bool,
    /// Facebook answers 2635 for every version (not only below the minimum).
    pub deprecated_version: bool,
    /// From this data date on: CleverTap event props change (one added, one
    /// renamed, one number as string) and Facebook insights carry a new field.
    pub schema_change_after: Option<NaiveDate>,
    /// From this data date on, CleverTap `Charged` events change shape: `Amount`
    /// is renamed `amount_value`, `Items` (a number) arrives as a string, and a
    /// `Coupon` property appears. Amounts themselves are unchanged (see truth).
    pub charged_change_on: Option<NaiveDate>,
    /// Facebook and Google answers carry the standard deprecation headers for the
    /// version called: `Deprecation` (RFC 9745) and `Sunset` (RFC 8594) = this date.
    pub version_sunset: Option<NaiveDate>,
    /// Every Nth CleverTap cursor read answers "cursor expired" (a restarted
    /// window is then spared, so restarting converges).
    pub cursor_expire_every: Option<u64>,
    /// CleverTap pages answer `next_cursor` = the cursor just read, when there are
    /// more records: a broken API whose paging cycles forever.
    pub cursor_cycle: bool,
    /// Google operations per developer token per day (default 15,000).
    pub google_daily_quota: Option<u64>,
    /// Lifetime of Google access tokens in seconds (default 3599).
    pub google_token_ttl_secs: Option<u64>,
}

/// Which API a request belongs to, for per-API counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Facebook,
    Google,
    CleverTap,
}

/// Per-API request counters.
#[derive(Debug, Default)]
pub struct Counters {
    facebook: AtomicU64,
    google: AtomicU64,
    clevertap: AtomicU64,
    /// Async report runs created, for `async_*_every`.
    pub report_runs: AtomicU64,
    /// CleverTap cursor reads, for `cursor_expire_every`.
    pub cursor_reads: AtomicU64,
    /// API requests being answered now, and the most ever at once.
    pub in_flight: Gauge,
    /// Facebook report runs created whose results were not asked for yet, and the
    /// most ever at once.
    pub open_report_runs: Gauge,
    /// The shortest time between two requests about one report run (its creation
    /// and its polls, by arrival), in ms: how hard a client polls.
    pub shortest_poll_interval: Shortest,
}

/// The smallest of the values seen (none yet: `null` in the counters).
#[derive(Debug)]
pub struct Shortest(AtomicU64);

impl Default for Shortest {
    fn default() -> Self {
        Shortest(AtomicU64::new(u64::MAX))
    }
}

impl Shortest {
    pub fn see(&self, value: u64) {
        self.0.fetch_min(value, Ordering::SeqCst);
    }

    pub fn get(&self) -> Option<u64> {
        Some(self.0.load(Ordering::SeqCst)).filter(|v| *v != u64::MAX)
    }
}

/// A count of things going on now that remembers its highest value.
#[derive(Debug, Default)]
pub struct Gauge {
    now: AtomicU64,
    peak: AtomicU64,
}

impl Gauge {
    pub fn raise(&self) {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
    }

    pub fn lower(&self) {
        let _ = self
            .now
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    }

    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::SeqCst)
    }
}

impl Counters {
    /// Count one request of `api`; returns its 1-based sequence number.
    pub fn next(&self, api: Api) -> u64 {
        let c = match api {
            Api::Facebook => &self.facebook,
            Api::Google => &self.google,
            Api::CleverTap => &self.clevertap,
        };
        c.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Requests so far: `total` (every path, as [`crate::RunningSandbox::request_count`])
    /// and per API (Google's token endpoint is not counted as an API request).
    pub fn snapshot(&self, total: u64) -> serde_json::Value {
        serde_json::json!({
            "total": total,
            "facebook": self.facebook.load(Ordering::SeqCst),
            "google": self.google.load(Ordering::SeqCst),
            "clevertap": self.clevertap.load(Ordering::SeqCst),
            "facebook_report_runs": self.report_runs.load(Ordering::SeqCst),
            "peak_in_flight": self.in_flight.peak(),
            "facebook_peak_open_report_runs": self.open_report_runs.peak(),
            "facebook_shortest_poll_interval_ms": self.shortest_poll_interval.get(),
        })
    }
}

/// True when the `k`-th event is hit by a fault firing every `n`.
pub fn every(n: Option<u64>, k: u64) -> bool {
    matches!(n, Some(n) if n > 0 && k > 0 && k.is_multiple_of(n))
}

/// The fault, if any, that hits request number `k` of an API. Checked in
/// this order; one request suffers at most one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hit {
    RateLimit,
    ServerError,
    Malformed,
}

impl Faults {
    pub fn hit(&self, k: u64) -> Option<Hit> {
        if every(self.rate_limit_every, k) {
            Some(Hit::RateLimit)
        } else if every(self.server_error_every, k) {
            Some(Hit::ServerError)
        } else if every(self.malformed_every, k) {
            Some(Hit::Malformed)
        } else {
            None
        }
    }

    pub fn delay_ms(&self, k: u64) -> Option<u64> {
        let ms = self.slow_ms?;
        every(Some(self.slow_every.unwrap_or(1)), k).then_some(ms)
    }

    pub fn duplicate(&self, k: u64) -> bool {
        every(self.duplicate_every, k)
    }

    /// True when a Facebook insights request for `fields` fields is too much data.
    pub fn too_many_fields(&self, fields: usize) -> bool {
        matches!(self.reduce_data_fields_above, Some(n) if fields as u64 > n)
    }

    pub fn schema_changed(&self, day: NaiveDate) -> bool {
        matches!(self.schema_change_after, Some(d) if day >= d)
    }

    pub fn charged_changed(&self, day: NaiveDate) -> bool {
        matches!(self.charged_change_on, Some(d) if day >= d)
    }
}

/// Cut a body in half so it no longer parses (the malformed-body fault).
pub fn truncate(body: &mut Vec<u8>) {
    let keep = body.len() / 2;
    body.truncate(keep.max(1).min(body.len()));
    if serde_json::from_slice::<serde_json::Value>(body).is_ok() {
        body.clear();
        body.extend_from_slice(b"{\"data\":[");
    }
}
