//! `type: facebook_ads` configuration: every key, its default and what it is for.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use serde::Deserialize;
use sluice_core::secret::Secret;

use crate::http::HttpSettings;

/// A Facebook (Meta) Marketing API source.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FacebookConfig {
    /// A long-lived (system user) access token with `ads_read`.
    pub access_token: Secret,
    /// Optional app secret: when set, every request carries `appsecret_proof`.
    #[serde(default)]
    pub app_secret: Option<Secret>,
    /// Graph API version, e.g. `v26.0`. A sunset version is reported as a config error.
    #[serde(default = "default_api_version")]
    pub api_version: String,
    /// The Graph API root (default `https://graph.facebook.com`); the sandbox serves it on localhost.
    #[serde(default = "default_base_url")]
    pub base_url: String,
    /// `all` (every account the token reaches, from `/me/adaccounts`) or a list of `act_<id>`.
    #[serde(default)]
    pub accounts: Accounts,
    /// First day read on the first run (default: 90 days before today).
    #[serde(default)]
    pub start_date: Option<NaiveDate>,
    /// Days re-fetched before the last loaded day on every run (insights keep changing ~28 days).
    #[serde(default = "default_lookback")]
    pub lookback_days: u64,
    /// Longest account × date window per slice (the unit that is retried and checkpointed).
    #[serde(default = "default_slice_days")]
    pub slice_days: u64,
    /// Windows up to this many days use the synchronous insights endpoint; longer ones an
    /// async report run (one that fails or stalls is read again at once as windows of this size).
    #[serde(default = "default_sync_max_days")]
    pub sync_max_days: u64,
    /// Requests in flight at once (per process: each shard has its own). Four times as
    /// many slices (accounts × windows) are open, so that a slice waiting on its async
    /// report run leaves the requests to the others.
    #[serde(default = "default_concurrency")]
    pub max_concurrency: usize,
    /// Longest time an async job may sit at the same completion percentage before it is split.
    #[serde(default = "default_stall_secs")]
    pub async_stall_secs: u64,
    /// Longest interval between two polls of an async job, from one poll's sending to
    /// the next's (intervals start at 50 ms and grow by half).
    #[serde(default = "default_max_poll_ms")]
    pub async_max_poll_ms: u64,
    /// Rows per page asked for (`limit`).
    #[serde(default = "default_page_size")]
    pub page_size: u32,
    /// Transport: timeouts, retries, request budget.
    #[serde(default)]
    pub http: HttpSettings,
    /// Streams to extract (default: insights at ad level, campaigns, adsets, ads, ad_accounts).
    #[serde(default)]
    pub streams: Option<FacebookStreams>,
}

/// Which ad accounts to read: the word `all` or a list.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Accounts {
    Keyword(AllKeyword),
    List(Vec<String>),
}

impl Default for Accounts {
    fn default() -> Self {
        Accounts::Keyword(AllKeyword::All)
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AllKeyword {
    All,
}

impl Accounts {
    /// The configured account ids normalised to `act_<digits>`, or `None` for all.
    pub fn list(&self) -> Option<Vec<String>> {
        match self {
            Accounts::Keyword(_) => None,
            Accounts::List(ids) => Some(ids.iter().map(|id| normalize_account(id)).collect()),
        }
    }
}

/// `123` and `act_123` both mean `act_123`.
pub fn normalize_account(id: &str) -> String {
    let id = id.trim();
    if id.starts_with("act_") {
        id.to_string()
    } else {
        format!("act_{id}")
    }
}

/// The streams section; a stream that is absent is not extracted.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FacebookStreams {
    #[serde(default)]
    pub insights: Option<InsightsConfig>,
    /// Each action of `insights.actions` as its own row (needs `actions` in the fields).
    #[serde(default)]
    pub insights_actions: Option<EntityConfig>,
    #[serde(default)]
    pub campaigns: Option<EntityConfig>,
    #[serde(default)]
    pub adsets: Option<EntityConfig>,
    #[serde(default)]
    pub ads: Option<EntityConfig>,
    #[serde(default)]
    pub ad_accounts: Option<EntityConfig>,
}

/// The insights stream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InsightsConfig {
    /// `account`, `campaign`, `adset` or `ad` (default `ad`).
    #[serde(default = "default_level")]
    pub level: Level,
    /// Metrics and attributes to read; ids, names, dates and currency are always added.
    #[serde(default = "default_fields")]
    pub fields: Vec<String>,
    /// Breakdowns such as `age`, `gender`, `country`, `publisher_platform` (default none).
    #[serde(default)]
    pub breakdowns: Vec<String>,
    /// Attribution windows, e.g. `1d_click`, `7d_click`, `1d_view`: each becomes its own column
    /// in `insights_actions` (default: the account's setting).
    #[serde(default)]
    pub action_attribution_windows: Vec<String>,
    /// Compare ad-level sums with account totals per day and warn on a mismatch (default true).
    #[serde(default = "yes")]
    pub reconcile: bool,
    /// D1 table (default `<source>_insights`).
    #[serde(default)]
    pub table: Option<String>,
}

impl Default for InsightsConfig {
    fn default() -> Self {
        InsightsConfig {
            level: default_level(),
            fields: default_fields(),
            breakdowns: Vec::new(),
            action_attribution_windows: Vec::new(),
            reconcile: true,
            table: None,
        }
    }
}

/// An entity stream (or the actions child stream).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntityConfig {
    /// Extra fields to request beyond the built-in ones.
    #[serde(default)]
    pub fields: Vec<String>,
    /// D1 table (default `<source>_<stream>`).
    #[serde(default)]
    pub table: Option<String>,
}

/// The aggregation level of insights rows.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Account,
    Campaign,
    Adset,
    Ad,
}

impl Level {
    pub fn as_str(&self) -> &'static str {
        match self {
            Level::Account => "account",
            Level::Campaign => "campaign",
            Level::Adset => "adset",
            Level::Ad => "ad",
        }
    }

    /// The id/name fields that identify a row at this level.
    pub fn id_fields(&self) -> &'static [&'static str] {
        match self {
            Level::Account => &["account_id", "account_name"],
            Level::Campaign => &["account_id", "account_name", "campaign_id", "campaign_name"],
            Level::Adset => &[
                "account_id",
                "account_name",
                "campaign_id",
                "campaign_name",
                "adset_id",
                "adset_name",
            ],
            Level::Ad => &[
                "account_id",
                "account_name",
                "campaign_id",
                "campaign_name",
                "adset_id",
                "adset_name",
                "ad_id",
                "ad_name",
            ],
        }
    }

    /// The id column that makes a row unique within an account and day.
    pub fn key_field(&self) -> &'static str {
        match self {
            Level::Account => "account_id",
            Level::Campaign => "campaign_id",
            Level::Adset => "adset_id",
            Level::Ad => "ad_id",
        }
    }
}

fn default_api_version() -> String {
    "v26.0".into()
}
fn default_base_url() -> String {
    "https://graph.facebook.com".into()
}
fn default_lookback() -> u64 {
    28
}
fn default_slice_days() -> u64 {
    31
}
fn default_sync_max_days() -> u64 {
    3
}
fn default_concurrency() -> usize {
    8
}
fn default_stall_secs() -> u64 {
    300
}
fn default_max_poll_ms() -> u64 {
    5_000
}
fn default_page_size() -> u32 {
    500
}
fn default_level() -> Level {
    Level::Ad
}
fn default_fields() -> Vec<String> {
    [
        "impressions",
        "clicks",
        "spend",
        "reach",
        "frequency",
        "ctr",
        "cpc",
        "cpm",
        "actions",
        "action_values",
    ]
    .map(String::from)
    .to_vec()
}
fn yes() -> bool {
    true
}

/// Lets tests and tools build a config without YAML.
impl FacebookConfig {
    pub fn new(access_token: Secret, base_url: &str) -> Self {
        FacebookConfig {
            access_token,
            app_secret: None,
            api_version: default_api_version(),
            base_url: base_url.to_string(),
            accounts: Accounts::default(),
            start_date: None,
            lookback_days: default_lookback(),
            slice_days: default_slice_days(),
            sync_max_days: default_sync_max_days(),
            max_concurrency: default_concurrency(),
            async_stall_secs: default_stall_secs(),
            async_max_poll_ms: default_max_poll_ms(),
            page_size: default_page_size(),
            http: HttpSettings::default(),
            streams: None,
        }
    }
}

/// Parsed streams with defaults applied, in a fixed order.
pub fn effective_streams(
    streams: &Option<FacebookStreams>,
) -> BTreeMap<&'static str, StreamChoice> {
    let mut out = BTreeMap::new();
    match streams {
        None => {
            out.insert(
                "insights",
                StreamChoice::Insights(InsightsConfig::default()),
            );
            out.insert(
                "insights_actions",
                StreamChoice::Entity(EntityConfig::default()),
            );
            for name in ["campaigns", "adsets", "ads", "ad_accounts"] {
                out.insert(name, StreamChoice::Entity(EntityConfig::default()));
            }
        }
        Some(s) => {
            if let Some(i) = &s.insights {
                out.insert("insights", StreamChoice::Insights(i.clone()));
            }
            for (name, e) in [
                ("insights_actions", &s.insights_actions),
                ("campaigns", &s.campaigns),
                ("adsets", &s.adsets),
                ("ads", &s.ads),
                ("ad_accounts", &s.ad_accounts),
            ] {
                if let Some(e) = e {
                    out.insert(name, StreamChoice::Entity(e.clone()));
                }
            }
        }
    }
    out
}

#[derive(Debug, Clone)]
pub enum StreamChoice {
    Insights(InsightsConfig),
    Entity(EntityConfig),
}
