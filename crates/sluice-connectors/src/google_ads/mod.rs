//! `type: google_ads` — the Google Ads API (REST) source.
//!
//! Owns: the config ([`config`]), OAuth, headers, errors and searchStream
//! ([`api`]), and the GAQL streams — built-in and user-defined — with their
//! flattening and column types ([`gaql`]). Customers are discovered at plan
//! time (managers expanded to their clients through `customer_client`), and
//! each dated stream is sliced `customer × day window`, one searchStream per
//! slice: a stream that fails midway is retried whole, never half-kept.

pub mod api;
pub mod config;
pub mod gaql;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{json, Value};
use sluice_core::destination::WriteMode;
use sluice_core::schema::{Field, FieldType, TableSchema};
use sluice_core::source::{
    DecodeState, DecodedPage, LandedPage, PageSink, RunWindow, Slice, Source, SourceError,
    StreamPlan, StreamSpec,
};
use sluice_core::typing::{Origin, Record};
use tokio::sync::Mutex;

use crate::incremental::{plan_window, DayWindow, Incremental};
use crate::http::HttpClient;
use api::GoogleApi;
use config::{normalize_customer, GoogleConfig, GoogleStreamConfig};

const CUSTOMER_CACHE_TTL: Duration = Duration::from_secs(600);
const CUSTOMER_QUERY: &str =
    "SELECT customer.id, customer.descriptive_name, customer.currency_code, customer.time_zone, customer.manager FROM customer";
const CLIENT_QUERY: &str = "SELECT customer_client.id, customer_client.manager, customer_client.level, \
    customer_client.descriptive_name, customer_client.currency_code, customer_client.time_zone, customer_client.status \
    FROM customer_client WHERE customer_client.level <= 1";

/// A customer whose metrics are read.
#[derive(Debug, Clone, PartialEq)]
pub struct Customer {
    pub id: String,
    /// The manager to send as `login-customer-id`, if any.
    pub login: Option<String>,
    pub currency: Option<String>,
    pub time_zone: Option<String>,
}

/// A stream as the reader needs it.
#[derive(Debug, Clone)]
struct GaqlStream {
    gaql: String,
    selected: Vec<String>,
    dated: bool,
    key: Vec<String>,
    /// `sources.<name>.streams.<stream>` (or `.gaql` for user queries): where a query error points.
    query_key: String,
}

pub struct GoogleSource {
    name: String,
    config: GoogleConfig,
    api: GoogleApi,
    specs: Vec<StreamSpec>,
    streams: Vec<(String, GaqlStream)>,
    customers: Mutex<Option<(Instant, Arc<Vec<Customer>>)>>,
    /// `api_version` sunsets within 90 days (see [`crate::api_versions`]).
    version_notice: Option<String>,
}

/// `type: google_ads`.
pub const SOURCE_TYPES: &[crate::SourceType] = &[crate::SourceType {
        name: "google_ads",
        build: |doc, section, _ctx| {
            Ok(std::sync::Arc::new(crate::build_from_config(
                doc,
                section,
                GoogleSource::new,
            )?))
        },
}];

impl GoogleSource {
    pub fn new(name: &str, config: GoogleConfig, key_prefix: &str) -> Result<Self, SourceError> {
        let version_notice = crate::api_versions::judge(
            crate::api_versions::Api::GoogleAds,
            &config.api_version,
            chrono::Utc::now().date_naive(),
        )
        .map_err(|m| SourceError::config(m, format!("{key_prefix}.api_version")))?;
        let http = HttpClient::new(config.http.clone(), None)?;
        let api = GoogleApi::new(http, &config, key_prefix)?;
        let chosen: Vec<(String, GoogleStreamConfig)> = match &config.streams {
            Some(s) => s.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            None => gaql::BUILTINS
                .iter()
                .map(|b| {
                    (
                        b.name.to_string(),
                        GoogleStreamConfig::Keyword(config::BuiltinKeyword::Builtin),
                    )
                })
                .collect(),
        };
        let mut specs = Vec::new();
        let mut streams = Vec::new();
        for (stream, choice) in chosen {
            let options = choice.options();
            let stream_key = format!("{key_prefix}.streams.{stream}");
            let (gaql_text, default_key, query_key) = match (&options.gaql, gaql::builtin(&stream))
            {
                (Some(q), _) => (q.clone(), None, format!("{stream_key}.gaql")),
                (None, Some(b)) => (
                    b.gaql.to_string(),
                    Some(b.key.iter().map(|s| s.to_string()).collect::<Vec<_>>()),
                    stream_key.clone(),
                ),
                (None, None) => {
                    return Err(SourceError::config(
                        format!(
                            "`{stream}` is not a built-in stream ({}): give it a `gaql` query",
                            gaql::BUILTINS
                                .iter()
                                .map(|b| b.name)
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                        stream_key,
                    ))
                }
            };
            let selected = gaql::selected_fields(&gaql_text);
            if selected.is_empty() {
                return Err(SourceError::config("the query selects nothing", query_key));
            }
            let dated = gaql::is_dated(&gaql_text);
            let mut fields: Vec<Field> = Vec::new();
            let mut push = |f: Field| {
                if !fields.iter().any(|x| x.name == f.name) {
                    fields.push(f);
                }
            };
            push(Field::new("customer_id", FieldType::Text).required());
            for path in &selected {
                push(Field::new(gaql::column_name(path), gaql::column_type(path)));
            }
            if selected
                .iter()
                .any(|p| gaql::column_name(p) == "cost_micros")
            {
                push(Field::new("cost", gaql::COST));
            }
            push(Field::new("customer_currency", FieldType::Text));
            push(Field::new("customer_time_zone", FieldType::Text));
            let key = options
                .primary_key
                .clone()
                .or(default_key)
                .unwrap_or_else(|| {
                    let mut k = vec!["customer_id".to_string()];
                    k.extend(
                        selected
                            .iter()
                            .filter(|p| !p.starts_with("metrics."))
                            .map(|p| gaql::column_name(p)),
                    );
                    k.dedup();
                    k
                });
            let write_mode = options.write_mode.unwrap_or(if dated {
                WriteMode::OverwritePartitions
            } else {
                WriteMode::Merge
            });
            specs.push(StreamSpec {
                name: stream.clone(),
                table: options
                    .table
                    .clone()
                    .unwrap_or_else(|| format!("{name}_{stream}")),
                schema: TableSchema::new(fields),
                infer_columns: true,
                primary_key: key.clone(),
                partition_column: dated.then(|| "date".to_string()),
                write_mode,
                dedupe: Default::default(),
            });
            streams.push((
                stream,
                GaqlStream {
                    gaql: gaql_text,
                    selected,
                    dated,
                    key,
                    query_key,
                },
            ));
        }
        Ok(GoogleSource {
            name: name.to_string(),
            config,
            api,
            specs,
            streams,
            customers: Mutex::new(None),
            version_notice,
        })
    }

    pub fn http(&self) -> &HttpClient {
        &self.api.http
    }

    fn login(&self) -> Option<String> {
        self.config
            .login_customer_id
            .as_deref()
            .map(normalize_customer)
    }

    /// The customers whose metrics are read: configured ones, managers expanded.
    pub async fn customers(&self) -> Result<Arc<Vec<Customer>>, SourceError> {
        let mut cache = self.customers.lock().await;
        if let Some((at, c)) = cache.as_ref() {
            if at.elapsed() < CUSTOMER_CACHE_TTL {
                return Ok(c.clone());
            }
        }
        let login = self.login();
        let roots: Vec<String> = match (&self.config.customer_ids, &login) {
            (Some(ids), _) => ids.iter().map(|i| normalize_customer(i)).collect(),
            (None, Some(l)) => vec![l.clone()],
            (None, None) => self.accessible_customers().await?,
        };
        let key = format!("{}.customer_ids", self.api.key_prefix);
        let mut out: Vec<Customer> = Vec::new();
        let login_key = format!("{}.login_customer_id", self.api.key_prefix);
        let configured = self.config.customer_ids.is_some();
        for id in roots {
            let (_, rows, _) = self
                .api
                .search_stream(&id, CUSTOMER_QUERY, login.as_deref(), &key)
                .await
                .map_err(|e| match (&login, configured) {
                    // Through a configured manager, an unreachable configured customer is most
                    // likely a wrong id (or one the manager does not link): name `customer_ids`.
                    (Some(l), true) if e.config_key.as_deref() == Some(login_key.as_str()) => {
                        SourceError::config(
                            format!(
                                "customer {id} in `customer_ids` cannot be read through the manager {l} \
                                 (`login_customer_id`): check the id, or that the manager links it ({})",
                                e.message
                            ),
                            key.clone(),
                        )
                    }
                    _ => e,
                })?;
            let Some(row) = rows.first() else { continue };
            let c = row.get("customer").cloned().unwrap_or(Value::Null);
            let manager = c.get("manager").and_then(Value::as_bool).unwrap_or(false);
            if !manager {
                out.push(Customer {
                    id: id.clone(),
                    login: login.clone(),
                    currency: c
                        .get("currencyCode")
                        .and_then(Value::as_str)
                        .map(String::from),
                    time_zone: c.get("timeZone").and_then(Value::as_str).map(String::from),
                });
                continue;
            }
            // A manager has no metrics of its own: read its direct clients through it.
            let via = login.clone().unwrap_or_else(|| id.clone());
            let (_, clients, _) = self
                .api
                .search_stream(&id, CLIENT_QUERY, Some(&via), &key)
                .await?;
            for row in clients {
                let cc = row.get("customerClient").cloned().unwrap_or(Value::Null);
                let level = cc
                    .get("level")
                    .and_then(|v| v.as_i64().or_else(|| v.as_str()?.parse().ok()))
                    .unwrap_or(0);
                let is_manager = cc.get("manager").and_then(Value::as_bool).unwrap_or(false);
                let Some(client_id) = cc.get("id").and_then(|v| {
                    v.as_str()
                        .map(String::from)
                        .or_else(|| v.as_i64().map(|n| n.to_string()))
                }) else {
                    continue;
                };
                if level == 0 || is_manager {
                    continue;
                }
                out.push(Customer {
                    id: client_id,
                    login: Some(via.clone()),
                    currency: cc
                        .get("currencyCode")
                        .and_then(Value::as_str)
                        .map(String::from),
                    time_zone: cc.get("timeZone").and_then(Value::as_str).map(String::from),
                });
            }
        }
        let mut seen = HashSet::new();
        out.retain(|c| seen.insert(c.id.clone()));
        out.sort_by(|a, b| a.id.cmp(&b.id));
        let out = Arc::new(out);
        *cache = Some((Instant::now(), out.clone()));
        Ok(out)
    }

    async fn accessible_customers(&self) -> Result<Vec<String>, SourceError> {
        let key = format!("{}.customer_ids", self.api.key_prefix);
        let response = self
            .api
            .call(
                "customers:listAccessibleCustomers",
                None,
                None,
                "list",
                &key,
            )
            .await?;
        let body: Value = serde_json::from_slice(&response.body)
            .map_err(|e| SourceError::transient(format!("listAccessibleCustomers: {e}")))?;
        Ok(body
            .get("resourceNames")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|r| r.as_str()?.strip_prefix("customers/").map(String::from))
            .collect())
    }

    fn stream(&self, name: &str) -> Result<&GaqlStream, SourceError> {
        self.streams
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s)
            .ok_or_else(|| SourceError::data(format!("unknown stream `{name}`")))
    }
}

/// The records of one searchStream answer for a slice with parameters `params`:
/// rows flattened, the slice's customer context added, repeated rows (a retried
/// batch, a duplicating proxy) dropped against `seen`. Shared by `read` and replay.
/// Each stream's selected GAQL fields (a user query's, or the built-in
/// stream's), for `sluice upgrade-check`: (stream, configured table, fields).
/// A stream that is neither is left out (building the source reports it).
pub fn selected_fields(config: &GoogleConfig) -> Vec<(String, Option<String>, Vec<String>)> {
    let chosen: Vec<(String, Option<String>, Option<String>)> = match &config.streams {
        Some(streams) => streams
            .iter()
            .map(|(name, choice)| {
                let options = choice.options();
                (name.clone(), options.gaql, options.table)
            })
            .collect(),
        None => gaql::BUILTINS
            .iter()
            .map(|b| (b.name.to_string(), None, None))
            .collect(),
    };
    chosen
        .into_iter()
        .filter_map(|(stream, query, table)| {
            let query = query.or_else(|| gaql::builtin(&stream).map(|b| b.gaql.to_string()))?;
            Some((stream, table, gaql::selected_fields(&query)))
        })
        .collect()
}

fn page_records(
    s: &GaqlStream,
    params: &Value,
    path: &Arc<str>,
    rows: &[Value],
    field_mask: Option<String>,
    seen: &mut HashSet<String>,
) -> Vec<Record> {
    let customer = params
        .get("customer_id")
        .and_then(Value::as_str)
        .unwrap_or_default();
    // The fieldMask names what was selected; fall back to the query's SELECT list.
    let selected: Vec<String> = field_mask
        .map(|m| m.split(',').map(|f| f.trim().to_string()).collect())
        .unwrap_or_else(|| s.selected.clone());
    let mut records = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        let mut fields = gaql::flatten_row(row, &selected);
        fields.entry("customer_id").or_insert(json!(customer));
        fields.insert(
            "customer_currency".into(),
            params.get("currency").cloned().unwrap_or(Value::Null),
        );
        fields.insert(
            "customer_time_zone".into(),
            params.get("time_zone").cloned().unwrap_or(Value::Null),
        );
        // JSON texts never contain a raw U+001F, so the joined key is unambiguous.
        let key = s
            .key
            .iter()
            .map(|k| fields.get(k).map(|v| v.to_string()).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\u{1f}");
        if !seen.insert(key) {
            continue;
        }
        records.push(Record {
            fields,
            origin: Origin {
                page: path.clone(),
                line: i as u64 + 1,
            },
        });
    }
    records
}

#[async_trait]
impl Source for GoogleSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn streams(&self) -> Vec<StreamSpec> {
        self.specs.clone()
    }

    fn derived_columns(&self) -> Vec<(String, String, Vec<String>)> {
        self.specs
            .iter()
            .filter(|s| s.schema.fields.iter().any(|f| f.name == "cost_micros"))
            .map(|s| (s.table.clone(), "cost".into(), vec!["cost_micros".into()]))
            .collect()
    }

    async fn check(&self) -> Result<(), SourceError> {
        let customers = self.customers().await?;
        if customers.is_empty() {
            return Err(SourceError::config(
                "the credentials reach no customer with metrics: check `customer_ids` / `login_customer_id`",
                format!("{}.customer_ids", self.api.key_prefix),
            ));
        }
        Ok(())
    }

    async fn plan(
        &self,
        stream: &StreamSpec,
        cursor: Option<&Value>,
        window: &RunWindow,
    ) -> Result<StreamPlan, SourceError> {
        let s = self.stream(&stream.name)?;
        let customers = self.customers().await?;
        let customer_params = |c: &Customer| json!({"customer_id": c.id, "login": c.login, "currency": c.currency, "time_zone": c.time_zone});
        if !s.dated {
            let slices = customers
                .iter()
                .map(|c| {
                    let mut params = customer_params(c);
                    params["dt"] = json!(window.today.to_string());
                    Slice {
                        key: c.id.clone(),
                        params,
                    }
                })
                .collect();
            return Ok(StreamPlan {
                slices,
                cursor_after: None,
            });
        }
        let incremental = Incremental {
            start_date: self.config.start_date,
            default_history_days: 90,
            lookback_days: self.config.lookback_days,
        };
        let (days, cursor_after) = plan_window(&incremental, cursor, window);
        let mut slices = Vec::new();
        if let Some(days) = days {
            for c in customers.iter() {
                for w in days.chunks(self.config.slice_days as i64) {
                    let mut params = customer_params(c);
                    params["window"] = w.to_json();
                    slices.push(Slice {
                        key: format!("{}/{}", c.id, w.key()),
                        params,
                    });
                }
            }
        }
        Ok(StreamPlan {
            slices,
            cursor_after: Some(cursor_after),
        })
    }

    async fn read(
        &self,
        stream: &StreamSpec,
        slice: &Slice,
        sink: &mut dyn PageSink,
    ) -> Result<(), SourceError> {
        let s = self.stream(&stream.name)?;
        let p = &slice.params;
        let customer = p
            .get("customer_id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let login = p.get("login").and_then(Value::as_str).map(String::from);
        let window = p.get("window").and_then(DayWindow::from_json);
        let (query, dt) = match (&window, s.dated) {
            (Some(w), true) => (
                gaql::with_date_range(&s.gaql, &w.since.to_string(), &w.until.to_string()),
                w.since.to_string(),
            ),
            _ => (
                s.gaql.clone(),
                p.get("dt")
                    .and_then(Value::as_str)
                    .unwrap_or("1970-01-01")
                    .to_string(),
            ),
        };
        let (response, rows, field_mask) = self
            .api
            .search_stream(&customer, &query, login.as_deref(), &s.query_key)
            .await?;
        let landed = sink.land("p00001", "json", &dt, &response.body).await?;
        let mut seen = HashSet::new();
        let records = page_records(s, p, &landed.path, &rows, field_mask, &mut seen);
        sink.records(records).await
    }

    fn decode(
        &self,
        stream: &StreamSpec,
        slice: &Slice,
        page: &LandedPage,
        body: &[u8],
        state: &mut DecodeState,
    ) -> Option<Result<DecodedPage, SourceError>> {
        Some(self.stream(&stream.name).and_then(|s| {
            let path = &page.path;
            // The customer's currency and time zone are not in the page: without the
            // slice as planned (runs landed before slice manifests) they would be lost.
            if slice
                .params
                .get("customer_id")
                .and_then(Value::as_str)
                .is_none()
            {
                return Err(SourceError::data(format!(
                    "slice `{}` has no `customer_id` parameter: its pages cannot be decoded",
                    slice.key
                )));
            }
            let parsed: Value = serde_json::from_slice(body)
                .map_err(|e| SourceError::data(format!("{path}: malformed JSON: {e}")))?;
            // Only searchStream answers are landed (one per slice); anything without
            // `results` (an error body, an empty stream) carries no records.
            let (rows, field_mask) = api::stream_rows(parsed);
            Ok(DecodedPage {
                records: page_records(s, &slice.params, path, &rows, field_mask, &mut state.seen),
                rejected: Vec::new(),
            })
        }))
    }

    fn max_concurrency(&self) -> usize {
        self.config.max_concurrency.max(1)
    }

    /// Shards divide the API's request budget (`http.requests_per_second`), not the
    /// slices each reads at once (see the trait).
    fn shards_share_concurrency(&self) -> bool {
        false
    }

    fn notices(&self) -> Vec<String> {
        let mut notices: Vec<String> = self.version_notice.iter().cloned().collect();
        notices.extend(self.api.http.notices());
        notices
    }

    fn api_usage(&self) -> Option<sluice_core::run::ApiUsage> {
        Some(self.api.http.stats().usage())
    }
}
