//! `type: clevertap` configuration: every key, its default and what it is for.

use chrono::NaiveDate;
use serde::Deserialize;
use sluice_core::secret::Secret;

use crate::http::HttpSettings;

/// A CleverTap account.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CleverTapConfig {
    /// The project's account id (`X-CleverTap-Account-Id`).
    pub account_id: String,
    /// The project's passcode (`X-CleverTap-Passcode`).
    pub passcode: Secret,
    /// The account's region (`eu1`, `in1`, `us1`, `sg1`, `aps3`, `mec1`); default `eu1`.
    #[serde(default)]
    pub region: Option<String>,
    /// Overrides the regional URL (the sandbox, a proxy).
    #[serde(default)]
    pub base_url: Option<String>,
    /// First day read on the first run (default: 30 days before today).
    #[serde(default)]
    pub start_date: Option<NaiveDate>,
    /// Days re-read before the last loaded day (late-arriving events).
    #[serde(default = "default_lookback")]
    pub lookback_days: u64,
    /// Longest date window per slice (event name × window).
    #[serde(default = "default_slice_days")]
    pub slice_days: u64,
    /// Records per cursor page (`batch_size`, at most 5000).
    #[serde(default = "default_batch_size")]
    pub batch_size: u32,
    /// Slices read at once.
    #[serde(default = "default_concurrency")]
    pub max_concurrency: usize,
    /// Requests in flight at once for the account (CleverTap allows only a few).
    #[serde(default = "default_in_flight")]
    pub max_in_flight: usize,
    /// Compare event counts with the counts endpoint and warn on a mismatch (default true).
    #[serde(default = "yes")]
    pub reconcile: bool,
    /// Transport: timeouts, retries (default 4: a window that keeps failing is split by day), budget.
    #[serde(default = "default_http")]
    pub http: HttpSettings,
    pub streams: CleverTapStreams,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CleverTapStreams {
    #[serde(default)]
    pub events: Option<EventsConfig>,
    #[serde(default)]
    pub profiles: Option<ProfilesConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    /// Event names to extract, e.g. `App Launched`, `Charged`.
    pub names: Vec<String>,
    /// D1 table (default `<source>_events`).
    #[serde(default)]
    pub table: Option<String>,
    /// Events (among `names`) that also get a typed table, stream `events_<event>`
    /// into `<source>_events_<event>` (`Charged` → `app_events_charged`): one column
    /// per property, named as sent, each discovered, typed and versioned in the
    /// schema registry, with the drift policies and renames of that stream. These
    /// events are read once more for it.
    #[serde(default)]
    pub typed: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfilesConfig {
    /// Profiles are listed by an event they did in the window (default `App Launched`).
    #[serde(default = "default_profile_event")]
    pub event_name: String,
    /// Columns holding personal data, marked PII so the pipeline's `pii:` policy applies
    /// (default: email, phone, name, address, zip, profile_data).
    #[serde(default = "default_pii")]
    pub pii: Vec<String>,
    /// D1 table (default `<source>_profiles`).
    #[serde(default)]
    pub table: Option<String>,
}

impl Default for ProfilesConfig {
    fn default() -> Self {
        ProfilesConfig {
            event_name: default_profile_event(),
            pii: default_pii(),
            table: None,
        }
    }
}

fn default_lookback() -> u64 {
    3
}
fn default_slice_days() -> u64 {
    7
}
fn default_batch_size() -> u32 {
    5000
}
fn default_concurrency() -> usize {
    3
}
fn default_in_flight() -> usize {
    3
}
fn yes() -> bool {
    true
}
fn default_http() -> HttpSettings {
    HttpSettings {
        max_retries: 4,
        requests_per_second: 10.0,
        ..HttpSettings::default()
    }
}
fn default_profile_event() -> String {
    "App Launched".into()
}
fn default_pii() -> Vec<String> {
    ["email", "phone", "name", "address", "zip", "profile_data"]
        .map(String::from)
        .to_vec()
}

impl CleverTapConfig {
    /// A config for tests and tools, without YAML.
    pub fn new(
        account_id: &str,
        passcode: Secret,
        base_url: &str,
        streams: CleverTapStreams,
    ) -> Self {
        CleverTapConfig {
            account_id: account_id.to_string(),
            passcode,
            region: None,
            base_url: Some(base_url.to_string()),
            start_date: None,
            lookback_days: default_lookback(),
            slice_days: default_slice_days(),
            batch_size: default_batch_size(),
            max_concurrency: default_concurrency(),
            max_in_flight: default_in_flight(),
            reconcile: true,
            http: default_http(),
            streams,
        }
    }

    /// The API root: `base_url`, else the region's host.
    pub fn root(&self) -> String {
        match (&self.base_url, &self.region) {
            (Some(url), _) => url.clone(),
            (None, Some(region)) => format!("https://{}.api.clevertap.com", region.trim()),
            (None, None) => "https://eu1.api.clevertap.com".into(),
        }
    }
}
