//! `type: google_ads` configuration: every key, its default and what it is for.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use serde::Deserialize;
use sluice_core::destination::WriteMode;
use sluice_core::secret::Secret;

use crate::http::HttpSettings;

/// A Google Ads API (REST) source.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoogleConfig {
    /// The developer token of the Google Ads API Center.
    pub developer_token: Secret,
    /// OAuth2 client and refresh token (the `adwords` scope).
    pub oauth: OAuthConfig,
    /// The manager (MCC) account the credentials log in through, digits or `123-456-7890`;
    /// its client accounts are expanded.
    #[serde(default, deserialize_with = "customer_id::optional")]
    pub login_customer_id: Option<String>,
    /// Customers to read; managers among them are expanded to their clients
    /// (default: `login_customer_id`, else every customer the credentials reach).
    /// Bare YAML integers (`1234567890`) are accepted as well as strings.
    #[serde(default, deserialize_with = "customer_id::optional_list")]
    pub customer_ids: Option<Vec<String>>,
    /// API version, e.g. `v26`.
    #[serde(default = "default_api_version")]
    pub api_version: String,
    /// API root (default `https://googleads.googleapis.com`).
    #[serde(default = "default_base_url")]
    pub base_url: String,
    /// OAuth2 token endpoint (default `https://oauth2.googleapis.com/token`).
    #[serde(default = "default_token_url")]
    pub token_url: String,
    /// First day read on the first run (default: 90 days before today).
    #[serde(default)]
    pub start_date: Option<NaiveDate>,
    /// Days re-read before the last loaded day (conversions arrive late).
    #[serde(default = "default_lookback")]
    pub lookback_days: u64,
    /// Longest customer × date window per slice.
    #[serde(default = "default_slice_days")]
    pub slice_days: u64,
    /// Slices read at once.
    #[serde(default = "default_concurrency")]
    pub max_concurrency: usize,
    /// Transport: timeouts, retries, request budget.
    #[serde(default)]
    pub http: HttpSettings,
    /// Streams: a built-in name (`campaign_daily`, `ad_group_daily`, `ad_daily`, `customers`)
    /// with `builtin` or `{}`, or any name with a `gaql` query
    /// (default: the four built-in streams).
    #[serde(default)]
    pub streams: Option<BTreeMap<String, GoogleStreamConfig>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthConfig {
    pub client_id: String,
    pub client_secret: Secret,
    pub refresh_token: Secret,
}

/// One stream: the word `builtin`, or options.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum GoogleStreamConfig {
    Keyword(BuiltinKeyword),
    Options(GoogleStreamOptions),
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BuiltinKeyword {
    Builtin,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoogleStreamOptions {
    /// A GAQL query without a date condition: sluice adds `segments.date BETWEEN …`
    /// when the query selects `segments.date` (absent = the built-in stream of this name).
    #[serde(default)]
    pub gaql: Option<String>,
    /// Primary key columns (default: every selected column that is not a metric).
    #[serde(default)]
    pub primary_key: Option<Vec<String>>,
    /// Write mode (default: overwrite_partitions by `date` when dated, else merge).
    #[serde(default)]
    pub write_mode: Option<WriteMode>,
    /// D1 table (default `<source>_<stream>`).
    #[serde(default)]
    pub table: Option<String>,
}

impl GoogleStreamConfig {
    pub fn options(&self) -> GoogleStreamOptions {
        match self {
            GoogleStreamConfig::Keyword(_) => GoogleStreamOptions::default(),
            GoogleStreamConfig::Options(o) => o.clone(),
        }
    }
}

fn default_api_version() -> String {
    "v26".into()
}
fn default_base_url() -> String {
    "https://googleads.googleapis.com".into()
}
fn default_token_url() -> String {
    "https://oauth2.googleapis.com/token".into()
}
fn default_lookback() -> u64 {
    30
}
fn default_slice_days() -> u64 {
    31
}
fn default_concurrency() -> usize {
    8
}

/// Customer ids as users type them: `"123-456-7890"`, `"1234567890"` or a bare
/// YAML integer `1234567890` (which YAML reads as a number, not a string).
mod customer_id {
    use serde::de::{Deserializer, Error};
    use serde::Deserialize;

    /// Customer ids have 10 digits; a shorter integer is a typo (or lost a digit).
    const DIGITS: usize = 10;

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Written {
        Text(String),
        Number(u64),
    }

    impl Written {
        fn into_id<E: Error>(self) -> Result<String, E> {
            match self {
                Written::Text(s) => Ok(s),
                Written::Number(n) => {
                    let text = n.to_string();
                    if text.len() == DIGITS {
                        Ok(text)
                    } else {
                        Err(E::custom(format!(
                            "customer id {n} has {} digits, not {DIGITS}",
                            text.len()
                        )))
                    }
                }
            }
        }
    }

    pub fn optional<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        Option::<Written>::deserialize(d)?
            .map(Written::into_id)
            .transpose()
    }

    pub fn optional_list<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
        Option::<Vec<Written>>::deserialize(d)?
            .map(|ids| ids.into_iter().map(Written::into_id).collect())
            .transpose()
    }
}

/// Digits only: `123-456-7890` → `1234567890`.
pub fn normalize_customer(id: &str) -> String {
    id.chars().filter(char::is_ascii_digit).collect()
}

impl GoogleConfig {
    /// A config for tests and tools, without YAML.
    pub fn new(developer_token: Secret, oauth: OAuthConfig, base_url: &str) -> Self {
        GoogleConfig {
            developer_token,
            oauth,
            login_customer_id: None,
            customer_ids: None,
            api_version: default_api_version(),
            base_url: base_url.to_string(),
            token_url: format!("{}/token", base_url.trim_end_matches('/')),
            start_date: None,
            lookback_days: default_lookback(),
            slice_days: default_slice_days(),
            max_concurrency: default_concurrency(),
            http: HttpSettings::default(),
            streams: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use sluice_core::config::{Lookup, PipelineConfig};

    use super::GoogleConfig;

    struct NoEnv;
    impl Lookup for NoEnv {
        fn var(&self, _name: &str) -> Option<String> {
            None
        }
    }

    fn parse(ids: &str) -> Result<GoogleConfig, String> {
        let text = format!(
            "name: t\nsources:\n  google:\n    type: google_ads\n    developer_token: d\n    \
             oauth: {{ client_id: c, client_secret: s, refresh_token: r }}\n    \
             login_customer_id: 9876543210\n    customer_ids: {ids}\n"
        );
        let config = PipelineConfig::parse("pipeline.yaml".into(), text, Path::new("."), &NoEnv)
            .map_err(|e| e.to_string())?;
        let section = config.source("google").expect("google section");
        config
            .doc
            .parse_section::<GoogleConfig>(section)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn customer_ids_may_be_bare_integers() {
        let config = parse("[1234567890, \"111-222-3333\"]").unwrap();
        assert_eq!(
            config.customer_ids,
            Some(vec!["1234567890".to_string(), "111-222-3333".to_string()])
        );
        assert_eq!(config.login_customer_id.as_deref(), Some("9876543210"));
    }

    #[test]
    fn an_integer_that_is_not_ten_digits_is_an_error_at_the_key() {
        // YAML keeps `0123456789` a string (a leading zero is not an integer): no loss there.
        assert_eq!(
            parse("[0123456789]").unwrap().customer_ids,
            Some(vec!["0123456789".to_string()])
        );
        let error = parse("[123456789]").unwrap_err();
        assert!(
            error.contains("customer_ids") && error.contains("has 9 digits"),
            "{error}"
        );
    }
}
