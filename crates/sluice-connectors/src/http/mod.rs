//! The one HTTP client every API source uses (Facebook, Google Ads, CleverTap, `rest`).
//!
//! It owns the transport concerns no connector should re-implement: timeouts,
//! HTTPS-only (loopback excepted, for the sandbox), bounded response sizes,
//! retries with jittered exponential back-off (honouring server-specified waits
//! such as `Retry-After`), proactive pacing per account from usage signals
//! ([`Pacer`]), an optional request budget (requests per second) and an optional
//! cap on requests in flight. It knows nothing about any API's error format:
//! each connector passes a *judge* that looks at a response and says whether to
//! accept it, retry it (and after how long) or fail with a classified
//! [`SourceError`]. URLs are logged without their query string and every error
//! message goes through the secret redactor, so tokens sent as query parameters
//! (Facebook's `access_token`) never reach a log or a run record.
//!
//! Why one file of ~730 lines: everything here is the one request path (send, judge,
//! retry, pace) and the URL rules it enforces on every request (HTTPS, same-origin
//! joins and redirects, ids validated before they enter a path). Pacing, the in-flight
//! cap and the tests live apart (`pacer.rs`, `in_flight.rs`, `tests.rs`); the next
//! cut, if it grows, is the URL rules into `http/urls.rs`.

mod in_flight;
mod pacer;

pub use in_flight::{InFlight, Urgency};
pub use pacer::Pacer;

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use reqwest::Method;
use serde::Deserialize;
use sluice_core::source::{ErrorClass, SourceError};
use url::Url;

/// Transport settings shared by the API sources; every field has a default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    /// Seconds before a request (connect + response body) is abandoned and retried.
    pub timeout_secs: u64,
    /// Seconds allowed to open a connection.
    pub connect_timeout_secs: u64,
    /// Largest response body accepted, in bytes; bigger responses are split requests.
    pub max_response_bytes: usize,
    /// Attempts after the first for a request that failed transiently.
    pub max_retries: usize,
    /// Longest first back-off wait in milliseconds; the limit doubles per retry up to
    /// `max_backoff_ms`, and each wait is a random fraction of it ("full jitter").
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// The longest server-requested wait (Retry-After, regain time) honoured inside a
    /// request, in seconds; a longer one fails the request as transient so the run
    /// can move on and retry later.
    pub max_wait_secs: u64,
    /// Request budget: at most this many requests per second for the whole source (0 = unlimited).
    pub requests_per_second: f64,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            timeout_secs: 120,
            connect_timeout_secs: 10,
            max_response_bytes: 256 * 1024 * 1024,
            max_retries: 8,
            initial_backoff_ms: 200,
            max_backoff_ms: 30_000,
            max_wait_secs: 600,
            requests_per_second: 50.0,
        }
    }
}

/// The longest wait a server can make us record (Retry-After, a regain time, a
/// token lifetime). Servers send absurd values too (`Retry-After: 1e20`): clamped,
/// they neither overflow a `Duration`/`Instant` (a panic that would kill the run)
/// nor park a run for years; a wait above `max_wait_secs` still fails the request
/// as transient, so the run moves on.
pub const MAX_SERVER_WAIT: Duration = Duration::from_secs(3600);

/// A server-given number of seconds as a wait, at most `max`; `None` if not a number
/// or negative.
pub fn clamped_secs(secs: f64, max: Duration) -> Option<Duration> {
    if secs.is_nan() || secs < 0.0 {
        return None;
    }
    Duration::try_from_secs_f64(secs.min(max.as_secs_f64())).ok()
}

/// What a connector decides about one response.
#[derive(Debug)]
pub enum Verdict {
    Accept,
    /// Retry the same request, after `after` if the server said how long to wait.
    Retry {
        after: Option<Duration>,
        reason: String,
    },
    Fail(SourceError),
}

/// A request body.
#[derive(Debug, Clone)]
pub enum Body {
    None,
    Json(serde_json::Value),
    Form(Vec<(String, String)>),
}

/// One request, rebuilt for every attempt.
#[derive(Debug, Clone)]
pub struct ApiRequest {
    pub method: Method,
    pub url: Url,
    pub query: Vec<(String, String)>,
    pub headers: Vec<(HeaderName, String)>,
    pub body: Body,
    /// The account whose budget this request spends (pacing and in-flight caps).
    pub pace_key: Option<String>,
    /// Which requests waiting for an in-flight slot go first ([`InFlight`]).
    pub urgency: Urgency,
}

impl ApiRequest {
    pub fn new(method: Method, url: Url) -> Self {
        ApiRequest {
            method,
            url,
            query: Vec::new(),
            headers: Vec::new(),
            body: Body::None,
            pace_key: None,
            urgency: Urgency::Other,
        }
    }
    pub fn get(url: Url) -> Self {
        Self::new(Method::GET, url)
    }
    pub fn post(url: Url) -> Self {
        Self::new(Method::POST, url)
    }
    pub fn query(mut self, key: &str, value: impl Into<String>) -> Self {
        self.query.push((key.to_string(), value.into()));
        self
    }
    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers
            .push((HeaderName::from_static(name), value.into()));
        self
    }
    pub fn json(mut self, body: serde_json::Value) -> Self {
        self.body = Body::Json(body);
        self
    }
    pub fn form(mut self, fields: Vec<(String, String)>) -> Self {
        self.body = Body::Form(fields);
        self
    }
    pub fn paced(mut self, key: impl Into<String>) -> Self {
        self.pace_key = Some(key.into());
        self
    }
    /// How soon the request takes a free in-flight slot (see [`InFlight`]).
    pub fn urgency(mut self, urgency: Urgency) -> Self {
        self.urgency = urgency;
        self
    }
    /// `GET /v26.0/act_1/insights`: what logs and errors show (never the query string).
    pub fn label(&self) -> String {
        format!("{} {}", self.method, self.url.path())
    }
}

/// A response as received, with its body fully read.
#[derive(Debug, Clone)]
pub struct ApiResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub label: String,
    /// When the request went out (once it had a slot and its budget).
    pub sent: Instant,
}

impl ApiResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    /// `Retry-After` in seconds (the HTTP-date form is rare for APIs and ignored).
    pub fn retry_after(&self) -> Option<Duration> {
        self.headers
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .and_then(|secs| clamped_secs(secs, MAX_SERVER_WAIT))
    }
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
    /// A short, redacted excerpt of the body for error messages.
    pub fn excerpt(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        let text: String = text.chars().take(300).collect();
        sluice_core::secret::redact(&text)
    }
}

/// Counters for the benchmark and the run record.
#[derive(Debug, Default)]
pub struct HttpStats {
    pub requests: AtomicU64,
    pub retries: AtomicU64,
    pub bytes: AtomicU64,
    pub latency_micros: AtomicU64,
    /// Waiting for a pacing slot, the request budget or an in-flight permit.
    pub waited_micros: AtomicU64,
    /// Retries the API asked for with a time to come back (it was throttling us).
    pub throttled: AtomicU64,
    /// Sleeping before retries.
    pub retry_wait_micros: AtomicU64,
}

/// A point-in-time copy of [`HttpStats`].
#[derive(Debug, Clone, Copy, Default)]
pub struct StatsSnapshot {
    pub requests: u64,
    pub retries: u64,
    pub bytes: u64,
    pub latency: Duration,
    pub waited: Duration,
}

impl HttpStats {
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            requests: self.requests.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            latency: Duration::from_micros(self.latency_micros.load(Ordering::Relaxed)),
            waited: Duration::from_micros(self.waited_micros.load(Ordering::Relaxed)),
        }
    }

    /// The counters as a run records them.
    pub fn usage(&self) -> sluice_core::run::ApiUsage {
        let millis = |micros: &AtomicU64| micros.load(Ordering::Relaxed) / 1000;
        sluice_core::run::ApiUsage {
            requests: self.requests.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            throttled: self.throttled.load(Ordering::Relaxed),
            paced_ms: millis(&self.waited_micros),
            retry_wait_ms: millis(&self.retry_wait_micros),
        }
    }
}

/// How many processes share each source's API limits (`sluice run --shard K/N`: N).
static BUDGET_SHARE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);

/// Divides every client built afterwards's request budget and in-flight cap by
/// `processes`, so that many sharded workers together stay within one account's limits.
pub fn divide_budgets(processes: u32) {
    BUDGET_SHARE.store(processes.max(1), std::sync::atomic::Ordering::Relaxed);
}

/// The divisor set by [`divide_budgets`] (1: this process has the whole budget).
pub fn budget_share() -> u32 {
    BUDGET_SHARE.load(std::sync::atomic::Ordering::Relaxed)
}

/// The shared client. Cheap to clone.
#[derive(Clone)]
pub struct HttpClient {
    inner: reqwest::Client,
    settings: Arc<HttpSettings>,
    budget: Option<Arc<DefaultDirectRateLimiter>>,
    pacer: Pacer,
    in_flight: Option<InFlight>,
    stats: Arc<HttpStats>,
    /// Deprecation notices answers carried, once each (see [`deprecation_notice`]).
    notices: Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
}

impl HttpClient {
    /// `max_in_flight` caps concurrent requests across the source (CleverTap allows only a few).
    pub fn new(
        mut settings: HttpSettings,
        max_in_flight: Option<usize>,
    ) -> Result<Self, SourceError> {
        let share = budget_share();
        settings.requests_per_second /= f64::from(share);
        let max_in_flight = max_in_flight.map(|n| n.div_ceil(share as usize).max(1));
        let inner = reqwest::Client::builder()
            .timeout(Duration::from_secs(settings.timeout_secs.max(1)))
            .connect_timeout(Duration::from_secs(settings.connect_timeout_secs.max(1)))
            .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
            .redirect(redirect_policy())
            .referer(false)
            .gzip(true)
            .build()
            .map_err(|e| {
                SourceError::new(
                    ErrorClass::Configuration,
                    format!("cannot build the HTTP client: {e}"),
                )
            })?;
        let budget = (settings.requests_per_second > 0.0).then(|| {
            let period = Duration::from_secs_f64(1.0 / settings.requests_per_second);
            // A small burst keeps parallel accounts from queueing behind each other at start.
            let burst = NonZeroU32::new((settings.requests_per_second.ceil() as u32).clamp(1, 10))
                .expect("clamped to >= 1");
            let quota = Quota::with_period(period.max(Duration::from_micros(1)))
                .expect("non-zero period")
                .allow_burst(burst);
            Arc::new(RateLimiter::direct(quota))
        });
        Ok(HttpClient {
            inner,
            settings: Arc::new(settings),
            budget,
            pacer: Pacer::default(),
            in_flight: max_in_flight.map(InFlight::new),
            stats: Arc::new(HttpStats::default()),
            notices: Arc::default(),
        })
    }

    /// Caps this process's requests in flight at `n`, whatever the shard count: a cap
    /// that only hides latency (the API's limits are its request budget), so each shard
    /// keeps it, unlike `max_in_flight` of [`HttpClient::new`].
    pub fn with_requests_in_flight(mut self, n: usize) -> Self {
        self.in_flight = Some(InFlight::new(n));
        self
    }

    pub fn pacer(&self) -> &Pacer {
        &self.pacer
    }

    pub fn stats(&self) -> &HttpStats {
        &self.stats
    }

    pub fn settings(&self) -> &HttpSettings {
        &self.settings
    }

    /// The distinct deprecation notices the API's answers carried so far.
    pub fn notices(&self) -> Vec<String> {
        self.notices
            .lock()
            .map(|n| n.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Sends `request`, retrying as `judge` says, until it is accepted or fails.
    pub async fn send(
        &self,
        request: &ApiRequest,
        judge: &(dyn Fn(&ApiResponse) -> Verdict + Sync),
    ) -> Result<ApiResponse, SourceError> {
        require_secure(&request.url).map_err(|m| SourceError::new(ErrorClass::Configuration, m))?;
        let label = request.label();
        let mut backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(self.settings.initial_backoff_ms))
            .with_max_delay(Duration::from_millis(
                self.settings
                    .max_backoff_ms
                    .max(self.settings.initial_backoff_ms),
            ))
            .with_max_times(self.settings.max_retries)
            .build();
        let max_wait = Duration::from_secs(self.settings.max_wait_secs);
        loop {
            let (reason, after) = match self.attempt(request, &label).await {
                Ok(response) => match judge(&response) {
                    Verdict::Accept => return Ok(response),
                    Verdict::Fail(e) => return Err(e),
                    Verdict::Retry { after, reason } => (reason, after),
                },
                Err(Attempt::Retry(reason)) => (reason, None),
                Err(Attempt::Fail(e)) => return Err(e),
            };
            // Full jitter: a random wait up to the exponential limit. Parallel retries
            // spread out, and a request hit by a few 5xx in a row is not left sleeping
            // for the sum of the limits (AWS, "Exponential Backoff and Jitter").
            let Some(delay) = backoff
                .next()
                .map(|limit| limit.mul_f64(rand::random::<f64>()))
            else {
                return Err(SourceError::transient(format!(
                    "{label}: giving up after {} retries: {reason}",
                    self.settings.max_retries
                )));
            };
            if let Some(after) = after.filter(|a| *a > max_wait) {
                let message = format!(
                    "{label}: the API asks to wait {}s (more than max_wait_secs = {}): {reason}",
                    after.as_secs(),
                    self.settings.max_wait_secs
                );
                return Err(SourceError::transient(message));
            }
            // The server's wait plus a little random jitter, so parallel accounts do not
            // return in lock-step. The wait is the server's, not our escalating back-off:
            // a throttle the server says is already over (wait 0) costs a moment, even
            // after earlier 5xx retries of the same request.
            let delay = after.map_or(delay, |after| {
                after.saturating_add(delay.min(Duration::from_millis(250)))
            });
            self.stats.retries.fetch_add(1, Ordering::Relaxed);
            if after.is_some() {
                self.stats.throttled.fetch_add(1, Ordering::Relaxed);
            }
            self.stats
                .retry_wait_micros
                .fetch_add(delay.as_micros() as u64, Ordering::Relaxed);
            tracing::info!(request = %label, reason = %sluice_core::secret::redact(&reason), ?delay, "retrying");
            tokio::time::sleep(delay).await;
        }
    }

    async fn attempt(&self, request: &ApiRequest, label: &str) -> Result<ApiResponse, Attempt> {
        let wait_start = Instant::now();
        let _slot = match &self.in_flight {
            Some(limit) => Some(
                limit
                    .acquire(request.urgency)
                    .await
                    .map_err(|_| Attempt::Retry("client closed".into()))?,
            ),
            None => None,
        };
        if let Some(key) = &request.pace_key {
            self.pacer.wait(key).await;
        }
        if let Some(budget) = &self.budget {
            budget.until_ready().await;
        }
        self.stats
            .waited_micros
            .fetch_add(wait_start.elapsed().as_micros() as u64, Ordering::Relaxed);

        let mut builder = self
            .inner
            .request(request.method.clone(), request.url.clone());
        if !request.query.is_empty() {
            builder = builder.query(&request.query);
        }
        let mut headers = HeaderMap::new();
        for (name, value) in &request.headers {
            let value = HeaderValue::from_str(value).map_err(|_| {
                Attempt::Fail(SourceError::new(
                    ErrorClass::Configuration,
                    format!("{label}: header `{name}` has an invalid value"),
                ))
            })?;
            headers.insert(name.clone(), value);
        }
        builder = builder.headers(headers);
        builder = match &request.body {
            Body::None => builder,
            Body::Json(v) => builder.json(v),
            Body::Form(fields) => builder.form(fields),
        };
        let started = Instant::now();
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let result = self.receive(builder, label, started).await;
        self.stats
            .latency_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        if let Ok(r) = &result {
            tracing::debug!(request = %label, status = r.status, bytes = r.body.len(), elapsed_ms = started.elapsed().as_millis() as u64, "response");
        }
        result
    }

    async fn receive(
        &self,
        builder: reqwest::RequestBuilder,
        label: &str,
        sent: Instant,
    ) -> Result<ApiResponse, Attempt> {
        // `without_url` keeps the query string (and its token) out of the message.
        let response = builder
            .send()
            .await
            .map_err(|e| Attempt::Retry(format!("{label}: {}", e.without_url())))?;
        let status = response.status().as_u16();
        if response.status().is_redirection() {
            let to = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| response.url().join(v).ok())
                .map(|u| format!("{}://{}", u.scheme(), u.authority()))
                .unwrap_or_else(|| "an unknown place".into());
            return Err(Attempt::Fail(SourceError::new(
                ErrorClass::Configuration,
                format!(
                    "{label}: the API redirected to {to}; refused (credentials are sent only to the configured host, over the configured scheme)"
                ),
            )));
        }
        let headers = response.headers().clone();
        if let Some(notice) = deprecation_notice(&headers) {
            if let Ok(mut notices) = self.notices.lock() {
                notices.insert(notice);
            }
        }
        let limit = self.settings.max_response_bytes;
        if response
            .content_length()
            .is_some_and(|n| n as usize > limit)
        {
            return Err(Attempt::Fail(too_large(label, limit)));
        }
        let mut body = BytesMut::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                Attempt::Retry(format!("{label}: body interrupted: {}", e.without_url()))
            })?;
            if body.len() + chunk.len() > limit {
                return Err(Attempt::Fail(too_large(label, limit)));
            }
            body.extend_from_slice(&chunk);
        }
        self.stats
            .bytes
            .fetch_add(body.len() as u64, Ordering::Relaxed);
        Ok(ApiResponse {
            status,
            headers,
            body: body.freeze(),
            label: label.to_string(),
            sent,
        })
    }
}

enum Attempt {
    Retry(String),
    Fail(SourceError),
}

/// What an answer's standard deprecation headers say, if any: `Deprecation`
/// (RFC 9745), `Sunset` (RFC 8594) and a `Warning` (RFC 7234, code 299). APIs
/// announce a version's end on the calls that use it, long before it fails.
fn deprecation_notice(headers: &HeaderMap) -> Option<String> {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.chars().take(200).collect::<String>())
    };
    let mut parts = Vec::new();
    if let Some(d) = get("deprecation") {
        let since = d
            .strip_prefix('@')
            .and_then(|secs| secs.parse::<i64>().ok())
            .and_then(|secs| chrono::DateTime::from_timestamp(secs, 0))
            .map(|at| format!(" since {}", at.date_naive()))
            .unwrap_or_default();
        parts.push(format!("the API marks this version deprecated{since}"));
    }
    if let Some(s) = get("sunset") {
        let day = chrono::DateTime::parse_from_rfc2822(&s)
            .map(|at| at.date_naive().to_string())
            .unwrap_or(s);
        parts.push(format!("it stops answering on {day} (Sunset header)"));
    }
    if let Some(w) = get("warning").filter(|w| w.starts_with("299")) {
        parts.push(format!("warning: {w}"));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

fn too_large(label: &str, limit: usize) -> SourceError {
    SourceError::new(
        ErrorClass::NeedsSplitting,
        format!("{label}: response larger than max_response_bytes ({limit})"),
    )
}

/// HTTPS only, except for loopback hosts (the sandbox, a local proxy).
pub fn require_secure(url: &Url) -> Result<(), String> {
    match url.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(url) => Ok(()),
        scheme => Err(format!(
            "`{}://{}` is not allowed: use https (plain http is accepted only for localhost)",
            scheme,
            url.host_str().unwrap_or("")
        )),
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Parses a configured base URL, checking the scheme; the error names the key.
pub fn parse_base_url(text: &str, key: &str) -> Result<Url, SourceError> {
    let mut url = Url::parse(text.trim())
        .map_err(|e| SourceError::config(format!("`{key}` is not a URL: {e}"), key))?;
    require_secure(&url).map_err(|m| SourceError::config(m, key))?;
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

/// Joins path segments onto a base URL that ends with `/`. The result must stay under
/// `base` (same scheme, host, port and path prefix): a path built from an id an API
/// returned (`https://evil.example/x`, `//evil.example`, `../../`) can never send the
/// request, and the token it carries, anywhere else.
pub fn join(base: &Url, path: &str) -> Result<Url, SourceError> {
    let bad = |why: String| SourceError::new(ErrorClass::Configuration, why);
    let url = base
        .join(path.trim_start_matches('/'))
        .map_err(|e| bad(format!("bad URL path `{path}`: {e}")))?;
    if !same_origin(base, &url) || !url.path().starts_with(base.path()) {
        return Err(bad(format!(
            "refused URL path `{path}`: it leaves the API's base URL `{}`",
            base.as_str()
        )));
    }
    Ok(url)
}

/// Resolves a URL an API handed back for the next page (a `Link: <…>; rel="next"`
/// target, a `next` field), relative to the request that returned it. Like [`join`],
/// the result must stay under `base`: a next link can never send the request, and
/// the credential it carries, to another host or outside the API's path.
pub fn follow(base: &Url, current: &Url, next: &str) -> Result<Url, SourceError> {
    let url = current.join(next.trim()).map_err(|e| {
        SourceError::data(format!("the API returned a malformed next-page URL: {e}"))
    })?;
    if !same_origin(base, &url) || !url.path().starts_with(base.path()) {
        return Err(SourceError::data(format!(
            "refused the next-page URL `{}`: it leaves the API's base URL `{}`",
            url.path(),
            base.as_str()
        )));
    }
    Ok(url)
}

/// Same scheme, host and port: where a credential may be sent.
fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str().map(str::to_ascii_lowercase) == b.host_str().map(str::to_ascii_lowercase)
        && a.port_or_known_default() == b.port_or_known_default()
}

/// An id an API returned (report run, account, customer), checked before it becomes
/// part of a URL path: letters, digits, `_` and `-` only, at most 128 characters.
pub fn id_segment<'a>(id: &'a str, what: &str) -> Result<&'a str, SourceError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(id)
    } else {
        let shown: String = id.chars().take(40).collect();
        Err(SourceError::new(
            ErrorClass::Data,
            format!("the API returned a malformed {what} `{shown}`: refused to put it in a URL"),
        ))
    }
}

/// Follows a redirect only within the origin of the request (same scheme, host and
/// port, so never https → http): the credentials a request carries in headers
/// (`x-clevertap-passcode`, `developer-token`, a bearer token) or in its query go
/// only where they were configured to go. A refused redirect comes back as the 3xx
/// it is, and [`HttpClient::send`] fails the request on it.
fn redirect_policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let allowed = attempt
            .previous()
            .first()
            .is_some_and(|first| same_origin(first, attempt.url()));
        if !allowed || attempt.previous().len() > 5 {
            attempt.stop()
        } else {
            attempt.follow()
        }
    })
}

/// The generic judgement for 5xx / 429 / timeouts that every API shares.
pub fn generic_retry(response: &ApiResponse) -> Option<Verdict> {
    match response.status {
        429 | 500..=599 => Some(Verdict::Retry {
            after: response.retry_after(),
            reason: format!(
                "{} answered HTTP {}: {}",
                response.label,
                response.status,
                response.excerpt()
            ),
        }),
        _ => None,
    }
}

/// Accepts a 2xx body only if it is complete JSON; a truncated body is retried.
pub fn require_json(response: &ApiResponse) -> Verdict {
    match serde_json::from_slice::<serde::de::IgnoredAny>(&response.body) {
        Ok(_) => Verdict::Accept,
        Err(e) => Verdict::Retry {
            after: None,
            reason: format!("{}: malformed JSON body ({e})", response.label),
        },
    }
}

#[cfg(test)]
mod tests;
