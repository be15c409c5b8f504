//! `type: rest` configuration: every key, its default and what it is for.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use serde::Deserialize;
use sluice_core::destination::WriteMode;
use sluice_core::secret::Secret;

use crate::declared_columns::OrderedColumns;
use crate::http::HttpSettings;

/// A REST API described in YAML.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestConfig {
    /// The API's root (`https://api.example.com/v1/`); stream paths are joined under it,
    /// and next-page links must stay under it. Plain http only on localhost.
    pub base_url: String,
    /// How requests are authenticated (none by default).
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// Headers sent with every request (`Accept`, an API version header).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Slices (streams, date windows) read at once. Default 2.
    #[serde(default = "default_concurrency")]
    pub max_concurrency: usize,
    /// Transport: timeouts, retries on 429 / 5xx, the request budget.
    #[serde(default)]
    pub http: HttpSettings,
    /// The streams: name → endpoint and how to page through it.
    pub streams: BTreeMap<String, RestStreamConfig>,
}

fn default_concurrency() -> usize {
    2
}

/// How requests carry the credential.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AuthConfig {
    /// `Authorization: Bearer <token>`.
    Bearer { token: Secret },
    /// `Authorization: Basic base64(username:password)`.
    Basic { username: String, password: Secret },
    /// A key in a header (`X-Api-Key: …`) or a query parameter (`?api_key=…`).
    ApiKey {
        /// The header or parameter name.
        name: String,
        value: Secret,
        /// `header` (default) or `query`.
        #[serde(default, rename = "in")]
        location: KeyLocation,
    },
    /// OAuth2 client credentials: a token from `token_url`, sent as a bearer token,
    /// fetched again shortly before it expires and when the API answers 401.
    Oauth2 {
        token_url: String,
        client_id: String,
        client_secret: Secret,
        /// Scopes asked for (space-joined in the `scope` parameter); none by default.
        #[serde(default)]
        scopes: Vec<String>,
        /// How the client authenticates to the token endpoint: `basic` (default, an
        /// `Authorization: Basic` header, as RFC 6749 requires servers to accept) or
        /// `body` (`client_id` and `client_secret` form fields).
        #[serde(default)]
        client_auth: ClientAuth,
    },
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum KeyLocation {
    #[default]
    Header,
    Query,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    #[default]
    Basic,
    Body,
}

/// One endpoint and the D1 table it feeds.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestStreamConfig {
    /// The endpoint, relative to `base_url` (`orders`, `reports/daily`).
    pub path: String,
    /// Query parameters sent with every request of the stream.
    #[serde(default)]
    pub params: BTreeMap<String, ParamValue>,
    /// Where the records are in a response: a dotted path (`data.items`); by
    /// default the response itself, which must then be an array.
    #[serde(default)]
    pub records: Option<String>,
    /// How to get the next page (default: one request, no paging).
    #[serde(default)]
    pub paginate: Option<PaginateConfig>,
    /// What a run fetches: everything (default), records past a response field's
    /// stored value, or a date window.
    #[serde(default)]
    pub incremental: Option<IncrementalConfig>,
    /// Declared column types (`id: bigint`, `amount: numeric(12,2)`); others are inferred.
    #[serde(default)]
    pub columns: OrderedColumns,
    /// Add columns found in the data but not declared (default true).
    #[serde(default = "yes")]
    pub infer_columns: bool,
    #[serde(default)]
    pub primary_key: Vec<String>,
    /// A date column that partitions the table.
    #[serde(default)]
    pub partition_column: Option<String>,
    /// append (default), replace, merge (needs primary_key) or overwrite_partitions
    /// (needs partition_column).
    #[serde(default)]
    pub write_mode: WriteMode,
    /// The D1 table name (default `<source>_<stream>`).
    #[serde(default)]
    pub table: Option<String>,
    /// `merge` only: which row wins when one run's input repeats a key.
    #[serde(default)]
    pub dedupe: sluice_core::dedupe::Dedupe,
}

fn yes() -> bool {
    true
}

/// A query parameter's value as written in YAML (`limit: 100`, `status: open`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ParamValue {
    Text(String),
    Integer(i64),
    Float(f64),
    Bool(bool),
}

impl ParamValue {
    pub fn as_query(&self) -> String {
        match self {
            ParamValue::Text(s) => s.clone(),
            ParamValue::Integer(n) => n.to_string(),
            ParamValue::Float(x) => x.to_string(),
            ParamValue::Bool(b) => b.to_string(),
        }
    }
}

/// The pagination styles REST APIs use.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum PaginateConfig {
    /// An opaque cursor from a response field, sent back as a parameter; stops when
    /// the field is absent, null or empty, or a page has no records.
    Cursor {
        /// Dotted path of the cursor in the response (`meta.next_cursor`).
        cursor_path: String,
        /// The query parameter it is sent in (`cursor`).
        cursor_param: String,
    },
    /// `offset` / `limit` parameters; stops at the first page shorter than `limit`.
    Offset {
        #[serde(default = "default_offset_param")]
        offset_param: String,
        #[serde(default = "default_limit_param")]
        limit_param: String,
        /// Records per page (default 100).
        #[serde(default = "default_limit")]
        limit: u64,
    },
    /// A page number; stops at an empty page, or one shorter than `page_size` when set.
    Page {
        #[serde(default = "default_page_param")]
        page_param: String,
        /// The first page's number (default 1).
        #[serde(default = "default_first_page")]
        first_page: u64,
        /// The parameter the page size is sent in (`per_page`), if any.
        #[serde(default)]
        size_param: Option<String>,
        #[serde(default)]
        page_size: Option<u64>,
    },
    /// The `Link: <…>; rel="next"` response header (RFC 8288), as GitHub sends.
    LinkHeader,
    /// A response field holding the next page's URL (absolute or relative).
    NextUrl {
        /// Dotted path of the URL in the response (`links.next`).
        next_url_path: String,
    },
}

fn default_offset_param() -> String {
    "offset".into()
}
fn default_limit_param() -> String {
    "limit".into()
}
fn default_limit() -> u64 {
    100
}
fn default_page_param() -> String {
    "page".into()
}
fn default_first_page() -> u64 {
    1
}

/// What a run fetches.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum IncrementalConfig {
    /// By a response field that grows on every change (`updated_at`, a sequence
    /// number): the largest value seen is stored after the publish and sent back in
    /// `param` on the next run. Values compare as numbers when both are numbers,
    /// else as text (ISO-8601 timestamps in one format and zone compare correctly).
    Field {
        /// Dotted path of the field inside each record.
        field: String,
        /// The query parameter the stored value is sent in (`updated_since`).
        param: String,
        /// Sent on the first run (and a full refresh); none by default.
        #[serde(default)]
        initial_value: Option<String>,
    },
    /// A date window per run: from the last loaded day minus `lookback_days` to
    /// today, in slices of at most `window_days`, sent as two parameters.
    DateWindow {
        /// The parameter for the window's first day (`start_date`).
        since_param: String,
        /// The parameter for its last day (`end_date`), inclusive.
        until_param: String,
        /// The first run's first day (default: 30 days before today).
        #[serde(default)]
        start_date: Option<NaiveDate>,
        /// Days re-read before the last loaded day, for data that still changes.
        #[serde(default)]
        lookback_days: u64,
        /// Longest window per request sequence (default 30 days).
        #[serde(default = "default_window_days")]
        window_days: u64,
        /// How the dates are written (chrono's strftime; default `%Y-%m-%d`).
        #[serde(default = "default_date_format")]
        date_format: String,
    },
}

fn default_window_days() -> u64 {
    30
}
fn default_date_format() -> String {
    "%Y-%m-%d".into()
}
