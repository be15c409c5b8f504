//! `type: rest` — a REST API described in YAML, for the vendor sluice does not ship.
//!
//! Each stream is an endpoint under `base_url`: its records are found in every
//! response by a dotted path (`records: data.items`), pages follow one of the
//! usual styles (cursor, offset/limit, page number, `Link` header, next-URL field;
//! see [`paging`]), and a run fetches everything, what changed since the largest
//! value of a response field (stored after the publish, like every cursor), or a
//! date window. Requests go through the shared [`HttpClient`]: 429 with
//! `Retry-After`, 5xx back-off, same-origin redirects and secret redaction come
//! from there. Every response is landed exactly as received before it is decoded,
//! so `sluice replay` decodes the same records without calling the API.
//!
//! ```yaml
//! sources:
//!   shop:
//!     type: rest
//!     base_url: https://api.example.com/v1/
//!     auth: { type: bearer, token: "${SHOP_TOKEN}" }
//!     streams:
//!       orders:
//!         path: orders
//!         records: data
//!         paginate: { type: cursor, cursor_path: meta.next, cursor_param: after }
//!         incremental: { type: field, field: updated_at, param: updated_since }
//!         primary_key: [id]
//!         write_mode: merge
//! ```

mod auth;
pub mod config;
pub mod paging;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::format::{Item, StrftimeItems};
use chrono::NaiveDate;
use reqwest::header::HeaderName;
use serde_json::{json, Value};
use sluice_core::config::{ConfigDocument, ConfigError, Section};
use sluice_core::schema::TableSchema;
use sluice_core::source::{
    DecodeState, DecodedPage, ErrorClass, LandedPage, PageSink, RunWindow, Slice, Source,
    SourceError, StreamPlan, StreamSpec,
};
use sluice_core::typing::{Origin, Record, Rejected};
use url::Url;

use self::auth::Auth;
use self::config::{IncrementalConfig, PaginateConfig, RestConfig, RestStreamConfig};
use self::paging::{first_page, next_page, select_records, JsonPath, NextPage, Received};
use crate::http::{generic_retry, require_json, ApiRequest, ApiResponse, HttpClient, Verdict};
use crate::incremental::{plan_window, DayWindow, Incremental};

/// `type: rest`.
pub const SOURCE_TYPES: &[crate::SourceType] = &[crate::SourceType {
    name: "rest",
    build: |doc, section, _ctx| Ok(Arc::new(RestSource::build(doc, section)?)),
}];

/// New OAuth2 tokens one request may fetch after 401s before it gives up.
const MAX_TOKEN_REFRESHES: usize = 5;

/// First-run history of a date-window stream without `start_date`.
const DEFAULT_HISTORY_DAYS: u64 = 30;

pub struct RestSource {
    name: String,
    base: Url,
    auth: Auth,
    headers: Vec<(HeaderName, String)>,
    http: HttpClient,
    streams: Vec<RestStream>,
    max_concurrency: usize,
    /// `sources.<name>`: where errors about the source's keys point.
    key: String,
}

struct RestStream {
    spec: StreamSpec,
    url: Url,
    params: Vec<(String, String)>,
    records: Option<JsonPath>,
    paginate: Option<PaginateConfig>,
    incremental: Option<StreamIncremental>,
    /// `sources.<name>.streams.<stream>`.
    key: String,
}

enum StreamIncremental {
    Field {
        field: JsonPath,
        param: String,
        initial_value: Option<String>,
    },
    DateWindow {
        since_param: String,
        until_param: String,
        window: Incremental,
        window_days: u64,
        date_format: String,
    },
}

impl RestSource {
    #[allow(clippy::result_large_err)] // ConfigError's size is the config module's choice.
    pub fn build(doc: &ConfigDocument, section: &Section) -> Result<Self, ConfigError> {
        let config: RestConfig = doc.parse_section(section)?;
        let at = |rest: &[&str]| {
            let mut p = section.path.clone();
            p.extend(rest.iter().map(|s| s.to_string()));
            p
        };
        let key = section.path.join(".");
        let base = crate::http::parse_base_url(&config.base_url, &format!("{key}.base_url"))
            .map_err(|e| crate::error_at_key(doc, section, e))?;
        let auth = Auth::new(config.auth, &format!("{key}.auth"))
            .map_err(|e| crate::error_at_key(doc, section, e))?;
        let mut headers = Vec::new();
        for (name, value) in &config.headers {
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| doc.error_at(&at(&["headers", name]), "not a valid header name"))?;
            headers.push((header, value.clone()));
        }
        let http = HttpClient::new(config.http, None).map_err(|e| doc.error_at(&at(&["http"]), e.message))?;
        let mut streams = Vec::new();
        for (name, stream) in config.streams {
            if !sluice_core::config::is_identifier(&name) {
                return Err(doc.error_at(
                    &at(&["streams", &name]),
                    "stream names may use lowercase letters, digits and `_`",
                ));
            }
            let stream_at = |rest: &[&str]| {
                let mut p = at(&["streams", &name]);
                p.extend(rest.iter().map(|s| s.to_string()));
                p
            };
            streams.push(
                RestStream::build(&section.name, &name, stream, &base, &key).map_err(
                    |(rest, message)| {
                        let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
                        doc.error_at(&stream_at(&rest), message)
                    },
                )?,
            );
        }
        if streams.is_empty() {
            return Err(doc.error_at(&at(&["streams"]), "declare at least one stream"));
        }
        Ok(RestSource {
            name: section.name.clone(),
            base,
            auth,
            headers,
            http,
            streams,
            max_concurrency: config.max_concurrency.max(1),
            key,
        })
    }

    fn stream(&self, name: &str) -> Result<&RestStream, SourceError> {
        self.streams
            .iter()
            .find(|s| s.spec.name == name)
            .ok_or_else(|| SourceError::data(format!("unknown stream {name}")))
    }

    /// Sends one GET with the credential. A 401 for an OAuth2 token retires the
    /// token and tries again with a new one: always when the token had merely
    /// outlived its lifetime (it waited out a Retry-After, or another request
    /// replaced it), once when it was fresh (revoked early). A second 401 for a fresh
    /// token, or any 401/403 for a fixed credential, is a configuration error.
    async fn get(&self, url: &Url, query: &[(String, String)]) -> Result<ApiResponse, SourceError> {
        let mut refreshed_fresh = false;
        for _ in 0..MAX_TOKEN_REFRESHES {
            let mut request = ApiRequest::get(url.clone());
            request.query = query.to_vec();
            request.headers = self.headers.clone();
            let token = self.auth.apply(&self.http, &mut request).await?;
            let response = self.http.send(&request, &judge).await?;
            if !matches!(response.status, 401 | 403) {
                return Ok(response);
            }
            if let (Auth::OAuth2(grant), Some(token), 401) = (&self.auth, &token, response.status) {
                let outlived = grant.outlived(token).await;
                if outlived || !refreshed_fresh {
                    refreshed_fresh |= !outlived;
                    grant.retire(token).await;
                    continue;
                }
            }
            return Err(self.refused(&response));
        }
        Err(SourceError::config(
            format!("{url}: every new token was refused (HTTP 401)"),
            format!("{}.auth", self.key),
        ))
    }

    fn refused(&self, response: &ApiResponse) -> SourceError {
        SourceError::config(
            format!(
                "{} answered HTTP {}: the API refused the credentials: {}",
                response.label,
                response.status,
                response.excerpt()
            ),
            format!("{}.auth", self.key),
        )
    }
}

impl RestStream {
    /// Builds a stream; an error names the key under the stream and says what is wrong.
    fn build(
        source: &str,
        name: &str,
        config: RestStreamConfig,
        base: &Url,
        source_key: &str,
    ) -> Result<RestStream, (Vec<String>, String)> {
        let keys = |keys: &[&str]| keys.iter().map(|k| k.to_string()).collect::<Vec<_>>();
        let url =
            crate::http::join(base, &config.path).map_err(|e| (keys(&["path"]), e.message))?;
        let path = |text: &str, key: &[&str]| {
            JsonPath::parse(text).map_err(|message| (keys(key), message))
        };
        let records = config
            .records
            .as_deref()
            .map(|text| path(text, &["records"]))
            .transpose()?;
        match &config.paginate {
            Some(PaginateConfig::Cursor { cursor_path, .. }) => {
                path(cursor_path, &["paginate", "cursor_path"])?;
            }
            Some(PaginateConfig::NextUrl { next_url_path }) => {
                path(next_url_path, &["paginate", "next_url_path"])?;
            }
            Some(PaginateConfig::Offset { limit: 0, .. }) => {
                return Err((
                    keys(&["paginate", "limit"]),
                    "`limit` must be at least 1".into(),
                ))
            }
            Some(PaginateConfig::Page {
                page_size: Some(0), ..
            }) => {
                return Err((
                    keys(&["paginate", "page_size"]),
                    "`page_size` must be at least 1".into(),
                ))
            }
            _ => {}
        }
        let incremental = match config.incremental {
            None => None,
            Some(IncrementalConfig::Field {
                field,
                param,
                initial_value,
            }) => Some(StreamIncremental::Field {
                field: path(&field, &["incremental", "field"])?,
                param,
                initial_value,
            }),
            Some(IncrementalConfig::DateWindow {
                since_param,
                until_param,
                start_date,
                lookback_days,
                window_days,
                date_format,
            }) => {
                if StrftimeItems::new(&date_format).any(|item| matches!(item, Item::Error)) {
                    return Err((
                        keys(&["incremental", "date_format"]),
                        format!("`{date_format}` is not a strftime format (`%Y-%m-%d`)"),
                    ));
                }
                if window_days == 0 {
                    return Err((
                        keys(&["incremental", "window_days"]),
                        "`window_days` must be at least 1".into(),
                    ));
                }
                Some(StreamIncremental::DateWindow {
                    since_param,
                    until_param,
                    window: Incremental {
                        start_date,
                        default_history_days: DEFAULT_HISTORY_DAYS,
                        lookback_days,
                    },
                    window_days,
                    date_format,
                })
            }
        };
        let fields = config.columns.fields(
            &config.primary_key,
            config.partition_column.as_deref(),
            config.write_mode,
        )?;
        Ok(RestStream {
            spec: StreamSpec {
                name: name.to_string(),
                table: config
                    .table
                    .unwrap_or_else(|| format!("{source}_{name}")),
                schema: TableSchema::new(fields),
                infer_columns: config.infer_columns,
                primary_key: config.primary_key,
                partition_column: config.partition_column,
                write_mode: config.write_mode,
                dedupe: config.dedupe,
            },
            url,
            params: config
                .params
                .iter()
                .map(|(k, v)| (k.clone(), v.as_query()))
                .collect(),
            records,
            paginate: config.paginate,
            incremental,
            key: format!("{source_key}.streams.{name}"),
        })
    }

    /// The records of a landed response, numbered from 1 within it.
    fn decode(&self, origin: &Arc<str>, body: &Value) -> Result<DecodedPage, SourceError> {
        let mut decoded = DecodedPage::default();
        for (i, item) in select_records(body, self.records.as_ref())?.iter().enumerate() {
            let origin = Origin {
                page: origin.clone(),
                line: i as u64 + 1,
            };
            match item {
                Value::Object(fields) => decoded.records.push(Record {
                    fields: fields.clone(),
                    origin,
                }),
                other => decoded.rejected.push(Rejected {
                    origin,
                    reason: "expected a JSON object as a record".into(),
                    raw: other.to_string(),
                }),
            }
        }
        Ok(decoded)
    }
}

/// 2xx must be complete JSON; 429 and 5xx are retried by the shared layer; 401/403
/// go back to [`RestSource::get`]; any other answer is a mistake to fix in config.
fn judge(response: &ApiResponse) -> Verdict {
    if let Some(verdict) = generic_retry(response) {
        return verdict;
    }
    match response.status {
        200..=299 => require_json(response),
        401 | 403 => Verdict::Accept,
        status => Verdict::Fail(SourceError::new(
            ErrorClass::Configuration,
            format!(
                "{} answered HTTP {status}: {}",
                response.label,
                response.excerpt()
            ),
        )),
    }
}

/// Which of two cursor values is later: numbers as numbers, anything else as text.
fn later(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) if a.is_number() && b.is_number() => x > y,
        _ => as_text(a) > as_text(b),
    }
}

fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn format_day(day: NaiveDate, format: &str) -> String {
    day.format(format).to_string()
}

#[async_trait]
impl Source for RestSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn streams(&self) -> Vec<StreamSpec> {
        self.streams.iter().map(|s| s.spec.clone()).collect()
    }

    /// Fetches a token (OAuth2) and the first page of the first stream.
    async fn check(&self) -> Result<(), SourceError> {
        let stream = &self.streams[0];
        let mut query = stream.params.clone();
        query.extend(first_page(stream.paginate.as_ref()));
        self.get(&stream.url, &query).await.map(drop)
    }

    async fn plan(
        &self,
        stream: &StreamSpec,
        cursor: Option<&Value>,
        window: &RunWindow,
    ) -> Result<StreamPlan, SourceError> {
        let rest = self.stream(&stream.name)?;
        let today = window.today.to_string();
        let slice = |key: String, query: Vec<(String, String)>, dt: String| Slice {
            key,
            params: json!({"dt": dt, "query": query}),
        };
        Ok(match &rest.incremental {
            // Everything, once a day: a crashed run's finished slice is reused only
            // on the same day.
            None => StreamPlan {
                slices: vec![slice(format!("all@{today}"), Vec::new(), today.clone())],
                cursor_after: None,
            },
            Some(StreamIncremental::Field {
                field,
                param,
                initial_value,
            }) => {
                // A cursor of another field (the config changed) starts over.
                let stored = cursor
                    .filter(|c| {
                        c.get("field").and_then(Value::as_str) == Some(field.to_string().as_str())
                    })
                    .and_then(|c| c.get("value"))
                    .map(as_text);
                let from = stored.or_else(|| initial_value.clone());
                let query = from.iter().map(|v| (param.clone(), v.clone())).collect();
                let key = match &from {
                    Some(v) => format!("{param}={v}"),
                    None => "all".to_string(),
                };
                StreamPlan {
                    slices: vec![slice(key, query, today)],
                    // The largest value read is reported by `read` and stored after the publish.
                    cursor_after: None,
                }
            }
            Some(StreamIncremental::DateWindow {
                since_param,
                until_param,
                window: incremental,
                window_days,
                date_format,
            }) => {
                let (days, cursor_after) = plan_window(incremental, cursor, window);
                let slices = days
                    .map(|days| days.chunks(*window_days as i64))
                    .unwrap_or_default()
                    .into_iter()
                    .map(|chunk: DayWindow| {
                        let query = vec![
                            (since_param.clone(), format_day(chunk.since, date_format)),
                            (until_param.clone(), format_day(chunk.until, date_format)),
                        ];
                        slice(chunk.key(), query, chunk.since.to_string())
                    })
                    .collect();
                StreamPlan {
                    slices,
                    cursor_after: Some(cursor_after),
                }
            }
        })
    }

    async fn read(
        &self,
        stream: &StreamSpec,
        slice: &Slice,
        sink: &mut dyn PageSink,
    ) -> Result<(), SourceError> {
        let rest = self.stream(&stream.name)?;
        let dt = slice.params["dt"].as_str().unwrap_or("unknown").to_string();
        let slice_query: Vec<(String, String)> =
            serde_json::from_value(slice.params["query"].clone()).unwrap_or_default();
        let mut paging = NextPage::Params(first_page(rest.paginate.as_ref()));
        let mut largest: Option<Value> = None;
        for number in 1.. {
            if sink.is_cancelled() {
                return Err(SourceError::transient("cancelled"));
            }
            let (url, query) = match &paging {
                NextPage::Params(params) => {
                    let mut query = rest.params.clone();
                    query.extend(slice_query.iter().cloned());
                    query.extend(params.iter().cloned());
                    (rest.url.clone(), query)
                }
                NextPage::Url(url) => (url.clone(), Vec::new()),
            };
            let response = self.get(&url, &query).await.map_err(|mut e| {
                // A 404 or 400 is fixed in the stream's path or params.
                if e.class == ErrorClass::Configuration && e.config_key.is_none() {
                    e.config_key = Some(rest.key.clone());
                }
                e
            })?;
            let landed = sink
                .land(&format!("p{number:05}"), "json", &dt, &response.body)
                .await?;
            let body: Value = serde_json::from_slice(&response.body)
                .map_err(|e| SourceError::transient(format!("malformed JSON: {e}")))?;
            let decoded = rest
                .decode(&landed.path, &body)
                .map_err(|e| located(e, &response.label, number))?;
            if let Some(StreamIncremental::Field { field, .. }) = &rest.incremental {
                for record in &decoded.records {
                    let value = field.find_in(&record.fields);
                    if let Some(value) = value.filter(|v| !v.is_null()) {
                        if largest.as_ref().is_none_or(|l| later(value, l)) {
                            largest = Some(value.clone());
                        }
                    }
                }
            }
            let count = decoded.records.len() + decoded.rejected.len();
            sink.records(decoded.records).await?;
            sink.rejected(decoded.rejected).await?;
            let received = Received {
                body: &body,
                headers: &response.headers,
                records: count,
                url: &url,
            };
            match next_page(rest.paginate.as_ref(), &paging, &received, &self.base)
                .map_err(|e| located(e, &response.label, number))?
            {
                Some(next) => paging = next,
                None => break,
            }
        }
        if let (Some(StreamIncremental::Field { field, .. }), Some(value)) =
            (&rest.incremental, largest)
        {
            sink.cursor_reached(json!({"field": field.to_string(), "value": value}));
        }
        Ok(())
    }

    fn decode(
        &self,
        stream: &StreamSpec,
        _slice: &Slice,
        page: &LandedPage,
        body: &[u8],
        _state: &mut DecodeState,
    ) -> Option<Result<DecodedPage, SourceError>> {
        let result = self.stream(&stream.name).and_then(|rest| {
            let body: Value = serde_json::from_slice(body)
                .map_err(|e| SourceError::data(format!("{}: malformed JSON: {e}", page.path)))?;
            rest.decode(&page.path, &body)
        });
        Some(result)
    }

    fn max_concurrency(&self) -> usize {
        self.max_concurrency
    }
}

/// Says which request and page an error came from.
fn located(e: SourceError, label: &str, page: usize) -> SourceError {
    SourceError {
        message: format!("{label} (page {page}): {}", e.message),
        ..e
    }
}
