//! `type: facebook_ads` — the Facebook (Meta) Marketing API source.
//!
//! Owns: the config ([`config`]), Graph API errors, usage headers and paging
//! ([`api`]), the D1 tables of each stream ([`streams`]), reading insights
//! with sync/async report runs, splitting and reconciliation ([`insights`]) and
//! the entity streams ([`entities`]). Transport (retries, pacing, budgets) is
//! the shared [`crate::http`] client's job.
//!
//! Slices are `account × day window` (at most `slice_days` long): accounts are
//! read in parallel, each window as ONE request/job with `time_increment=1`, and
//! a slice is self-contained so the executor can retry it whole.

pub mod api;
pub mod config;
pub mod entities;
pub mod insights;
pub mod streams;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{json, Value};
use sluice_core::source::{
    DecodeState, DecodedPage, LandedPage, PageSink, RunWindow, Slice, Source, SourceError,
    StreamPlan, StreamSpec,
};
use tokio::sync::{Mutex, OnceCell};

use crate::incremental::{plan_window, Incremental};
use crate::http::{parse_base_url, HttpClient};
use api::GraphApi;
use config::{effective_streams, FacebookConfig, InsightsConfig, StreamChoice};

/// Fields read for every ad account (also the `ad_accounts` stream).
pub const ACCOUNT_FIELDS: &str =
    "id,account_id,name,currency,timezone_name,timezone_offset_hours_utc,account_status";
/// Account details are looked up again at most this often (new accounts are picked up
/// by the next run).
const ACCOUNT_CACHE_TTL: Duration = Duration::from_secs(600);
/// Slices open at once per request in flight: an insights slice spends most of its
/// time waiting on its report run (polls with pauses), using no request.
const OPEN_SLICES_PER_REQUEST: usize = 4;

/// An ad account as the streams need it.
#[derive(Debug, Clone, PartialEq)]
pub struct Account {
    /// `act_<digits>`
    pub id: String,
    pub currency: Option<String>,
    pub timezone: Option<String>,
    /// The account as the API sent it (a lookup's answer or a listing's item): an
    /// insights slice lands it as the page its rows take these details from.
    pub raw: Value,
}

impl Account {
    fn from_json(v: &Value) -> Option<Account> {
        let id = v.get("id").and_then(Value::as_str)?;
        // Account ids become URL paths: one that is not an id is not an account.
        crate::http::id_segment(id, "account id").ok()?;
        Some(Account {
            id: config::normalize_account(id),
            currency: v.get("currency").and_then(Value::as_str).map(String::from),
            timezone: v
                .get("timezone_name")
                .and_then(Value::as_str)
                .map(String::from),
            raw: v.clone(),
        })
    }
}

/// Ad account details this process has looked up, by `act_<digits>` id.
#[derive(Default)]
struct AccountCache {
    /// When every account the token reaches was last listed (`accounts` not configured).
    listed: Option<(Instant, Vec<String>)>,
    /// Each account's details, or its lookup under way: streams preparing at once
    /// share one lookup per account, and look up different accounts at once.
    details: HashMap<String, (Instant, Arc<OnceCell<Account>>)>,
}

impl AccountCache {
    /// The account's entry: the cached one while fresh, else a new, empty one.
    fn entry(&mut self, id: &str) -> Arc<OnceCell<Account>> {
        match self.details.get(id) {
            Some((at, cell)) if at.elapsed() < ACCOUNT_CACHE_TTL => cell.clone(),
            _ => {
                let cell = Arc::new(OnceCell::new());
                self.details
                    .insert(id.to_string(), (Instant::now(), cell.clone()));
                cell
            }
        }
    }

    fn fresh(&self, id: &str) -> Option<&Account> {
        self.details
            .get(id)
            .filter(|(at, _)| at.elapsed() < ACCOUNT_CACHE_TTL)
            .and_then(|(_, cell)| cell.get())
    }

    fn keep(&mut self, account: Account) {
        let id = account.id.clone();
        let cell = Arc::new(OnceCell::new_with(Some(account)));
        self.details.insert(id, (Instant::now(), cell));
    }
}

pub struct FacebookSource {
    name: String,
    config: FacebookConfig,
    api: GraphApi,
    specs: Vec<StreamSpec>,
    insights: Option<InsightsConfig>,
    accounts: Mutex<AccountCache>,
    /// `api_version` sunsets within 90 days (see [`crate::api_versions`]).
    version_notice: Option<String>,
}

/// `type: facebook_ads`.
pub const SOURCE_TYPES: &[crate::SourceType] = &[crate::SourceType {
        name: "facebook_ads",
        build: |doc, section, _ctx| {
            Ok(std::sync::Arc::new(crate::build_from_config(
                doc,
                section,
                FacebookSource::new,
            )?))
        },
}];

impl FacebookSource {
    /// Builds from a typed config; `key_prefix` is where the section sits (`sources.facebook`).
    pub fn new(name: &str, config: FacebookConfig, key_prefix: &str) -> Result<Self, SourceError> {
        let version_notice = crate::api_versions::judge(
            crate::api_versions::Api::FacebookMarketing,
            &config.api_version,
            chrono::Utc::now().date_naive(),
        )
        .map_err(|m| SourceError::config(m, format!("{key_prefix}.api_version")))?;
        let base = parse_base_url(&config.base_url, &format!("{key_prefix}.base_url"))?;
        let root = crate::http::join(&base, &format!("{}/", config.api_version.trim_matches('/')))?;
        let http = HttpClient::new(config.http.clone(), None)?
            .with_requests_in_flight(config.max_concurrency);
        let api = GraphApi::new(
            http,
            root,
            config.access_token.clone(),
            config.app_secret.as_ref(),
            key_prefix.to_string(),
        );
        let chosen = effective_streams(&config.streams);
        let insights = chosen.get("insights").and_then(|c| match c {
            StreamChoice::Insights(i) => Some(i.clone()),
            _ => None,
        });
        let mut specs = Vec::new();
        for (stream, choice) in &chosen {
            match choice {
                StreamChoice::Insights(i) => specs.push(streams::insights_spec(name, i)),
                StreamChoice::Entity(e) if *stream == "insights_actions" => {
                    let base = insights.clone().unwrap_or_default();
                    specs.push(streams::insights_actions_spec(name, &base, e));
                }
                StreamChoice::Entity(e) => specs.push(streams::entity_spec(name, stream, e)),
            }
        }
        // The insights streams first: the executor starts streams in this order, and
        // their report runs are the run's long pole.
        specs.sort_by_key(|spec| !spec.name.starts_with("insights"));
        Ok(FacebookSource {
            name: name.to_string(),
            config,
            api,
            specs,
            insights,
            accounts: Mutex::new(AccountCache::default()),
            version_notice,
        })
    }

    /// The HTTP client (its stats are the benchmark's request counters).
    pub fn http(&self) -> &HttpClient {
        &self.api.http
    }

    pub(crate) fn insights_config(&self) -> InsightsConfig {
        self.insights.clone().unwrap_or_default()
    }

    /// The ids of the ad accounts to read, sorted: the listed ones as configured (no
    /// request: their details are looked up only for the slices a process reads, see
    /// [`Source::prepare`]), else every account the token reaches (one listing).
    pub async fn account_ids(&self) -> Result<Vec<String>, SourceError> {
        if let Some(listed) = self.config.accounts.list() {
            let mut ids = BTreeSet::new();
            for id in listed {
                // Ids become URL paths: refuse one that is not an id before any request.
                if crate::http::id_segment(&id, "account id").is_err() {
                    return Err(SourceError::config(
                        format!("`{id}` is not an ad account id (act_<digits> or <digits>)"),
                        format!("{}.accounts", self.api.key_prefix),
                    ));
                }
                ids.insert(id);
            }
            return Ok(ids.into_iter().collect());
        }
        let mut cache = self.accounts.lock().await;
        if let Some((at, ids)) = &cache.listed {
            if at.elapsed() < ACCOUNT_CACHE_TTL {
                return Ok(ids.clone());
            }
        }
        self.list_all(&mut cache).await
    }

    /// Lists every account the token reaches into `cache`; returns their ids, sorted.
    async fn list_all(&self, cache: &mut AccountCache) -> Result<Vec<String>, SourceError> {
        let mut ids = BTreeSet::new();
        for v in entities::list_all_accounts(&self.api, &self.config).await? {
            if let Some(account) = Account::from_json(&v) {
                ids.insert(account.id.clone());
                cache.keep(account);
            }
        }
        let ids: Vec<String> = ids.into_iter().collect();
        cache.listed = Some((Instant::now(), ids.clone()));
        Ok(ids)
    }

    /// The details (currency, time zone) of the accounts `ids`, each looked up once per
    /// process (and again after [`ACCOUNT_CACHE_TTL`]), `max_concurrency` at once.
    pub async fn accounts(&self, ids: &[String]) -> Result<Vec<Account>, SourceError> {
        use futures::{StreamExt, TryStreamExt};
        if self.config.accounts.list().is_none() {
            // Every account the token reaches: one listing gives them all.
            let mut cache = self.accounts.lock().await;
            if ids.iter().any(|id| cache.fresh(id).is_none()) {
                self.list_all(&mut cache).await?;
            }
            return ids
                .iter()
                .map(|id| {
                    cache.fresh(id).cloned().ok_or_else(|| {
                        SourceError::data(format!(
                            "ad account {id} is no longer among the accounts the access token reaches"
                        ))
                    })
                })
                .collect();
        }
        // Not held across the lookups: a stream waits only for its own accounts.
        let entries: Vec<(String, Arc<OnceCell<Account>>)> = {
            let mut cache = self.accounts.lock().await;
            ids.iter().map(|id| (id.clone(), cache.entry(id))).collect()
        };
        futures::stream::iter(entries)
            .map(|(id, entry)| async move {
                let account = entry
                    .get_or_try_init(|| async {
                        let v = entities::lookup_account(&self.api, &id).await?;
                        // Kept under the id asked for: that is the id the slices carry.
                        let account = Account::from_json(&v).ok_or_else(|| {
                            SourceError::data(format!(
                                "ad account {id}: the API's answer has no valid `id`"
                            ))
                        })?;
                        Ok::<_, SourceError>(Account { id: id.clone(), ..account })
                    })
                    .await?;
                Ok::<_, SourceError>(account.clone())
            })
            .buffered(self.config.max_concurrency.max(1))
            .try_collect()
            .await
    }

    /// The details of one account (see [`FacebookSource::accounts`]).
    pub async fn account(&self, id: &str) -> Result<Account, SourceError> {
        let mut found = self.accounts(&[id.to_string()]).await?;
        found.pop().ok_or_else(|| {
            SourceError::data(format!("ad account {id}: no details were found"))
        })
    }

    fn incremental(&self) -> Incremental {
        Incremental {
            start_date: self.config.start_date,
            default_history_days: 90,
            lookback_days: self.config.lookback_days,
        }
    }
}

#[async_trait]
impl Source for FacebookSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn streams(&self) -> Vec<StreamSpec> {
        self.specs.clone()
    }

    async fn check(&self) -> Result<(), SourceError> {
        let accounts = self.accounts(&self.account_ids().await?).await?;
        if accounts.is_empty() {
            return Err(SourceError::config(
                "the access token reaches no ad account: grant it `ads_read` on the accounts or list them in `accounts`",
                format!("{}.accounts", self.api.key_prefix),
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
        // An entity slice's currency is filled in by `prepare`; an insights slice lands
        // its account's details as it reads.
        let accounts = self.account_ids().await?;
        match stream.name.as_str() {
            "insights" | "insights_actions" => {
                let (days, cursor_after) = plan_window(&self.incremental(), cursor, window);
                let mut slices = Vec::new();
                if let Some(days) = days {
                    for account in &accounts {
                        for w in days.chunks(self.config.slice_days as i64) {
                            slices.push(Slice {
                                key: format!("{account}/{}", w.key()),
                                params: json!({
                                    "account": account,
                                    "window": w.to_json(),
                                }),
                            });
                        }
                    }
                }
                Ok(StreamPlan {
                    slices,
                    cursor_after: Some(cursor_after),
                })
            }
            "ad_accounts" => Ok(StreamPlan {
                slices: vec![Slice {
                    key: "accounts".into(),
                    params: json!({"dt": window.today.to_string()}),
                }],
                cursor_after: None,
            }),
            _ => {
                // Entities: everything changed since the previous run's "today" (minus a day of margin).
                let since = if window.full_refresh || window.is_backfill() {
                    None
                } else {
                    cursor
                        .and_then(|c| c.get("updated_since"))
                        .and_then(Value::as_i64)
                };
                let next = window
                    .today
                    .pred_opt()
                    .and_then(|d| d.and_hms_opt(0, 0, 0))
                    .map(|t| t.and_utc().timestamp());
                let slices = accounts
                    .iter()
                    .map(|a| Slice {
                        key: a.clone(),
                        params: json!({
                            "account": a,
                            "currency": null,
                            "updated_since": since,
                            "dt": window.today.to_string(),
                        }),
                    })
                    .collect();
                Ok(StreamPlan {
                    slices,
                    cursor_after: next.map(|n| json!({"updated_since": n})),
                })
            }
        }
    }

    /// Fills in each entity slice's account currency. Insights slices are left as
    /// planned: they look their account up alongside their first request and land its
    /// details as a page of the slice (see [`insights::read`]), so a report run is not
    /// held up by the lookup.
    async fn prepare(
        &self,
        stream: &StreamSpec,
        mut slices: Vec<Slice>,
    ) -> Result<Vec<Slice>, SourceError> {
        if stream.name.starts_with("insights") {
            return Ok(slices);
        }
        let account_of = |slice: &Slice| {
            slice.params.get("account").and_then(Value::as_str).map(String::from)
        };
        let ids: BTreeSet<String> = slices.iter().filter_map(account_of).collect();
        if ids.is_empty() {
            return Ok(slices); // ad_accounts: one slice, no account
        }
        let ids: Vec<String> = ids.into_iter().collect();
        let details: HashMap<String, Account> = self
            .accounts(&ids)
            .await?
            .into_iter()
            .map(|a| (a.id.clone(), a))
            .collect();
        for slice in &mut slices {
            let account = account_of(slice).and_then(|id| details.get(&id));
            if let (Some(account), Some(params)) = (account, slice.params.as_object_mut()) {
                params.insert("currency".into(), json!(account.currency));
            }
        }
        Ok(slices)
    }

    async fn read(
        &self,
        stream: &StreamSpec,
        slice: &Slice,
        sink: &mut dyn PageSink,
    ) -> Result<(), SourceError> {
        match stream.name.as_str() {
            "insights" => insights::read(self, &self.insights_config(), false, slice, sink).await,
            "insights_actions" => {
                insights::read(self, &self.insights_config(), true, slice, sink).await
            }
            "ad_accounts" => entities::read_accounts(&self.api, &self.config, slice, sink).await,
            other => entities::read_entities(&self.api, &self.config, other, slice, sink).await,
        }
    }

    fn decode(
        &self,
        stream: &StreamSpec,
        slice: &Slice,
        page: &LandedPage,
        body: &[u8],
        state: &mut DecodeState,
    ) -> Option<Result<DecodedPage, SourceError>> {
        let path = &page.path;
        let json = || {
            serde_json::from_slice::<Value>(body)
                .map_err(|e| SourceError::data(format!("{path}: malformed JSON: {e}")))
        };
        Some(match stream.name.as_str() {
            "insights" | "insights_actions" => insights::decode(
                &self.insights_config(),
                stream.name == "insights_actions",
                slice,
                path,
                body,
                state,
            ),
            "ad_accounts" => json().map(|page| DecodedPage {
                records: entities::account_records(&page, path.clone(), &mut state.seen),
                rejected: Vec::new(),
            }),
            _ => json().map(|page| {
                let currency = slice.params.get("currency").cloned().unwrap_or(Value::Null);
                DecodedPage {
                    records: entities::entity_records(&page, path, &currency, &mut state.seen),
                    rejected: Vec::new(),
                }
            }),
        })
    }

    /// Slices open at once: more than requests in flight (`max_concurrency`), so
    /// that slices waiting on their async report runs leave the requests to others.
    fn max_concurrency(&self) -> usize {
        self.config.max_concurrency.max(1) * OPEN_SLICES_PER_REQUEST
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
