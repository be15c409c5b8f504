//! Talking to the Google Ads REST API: OAuth2 access tokens (cached, refreshed
//! before expiry and once on a 401), the required headers, `google.rpc.Status`
//! error classification and `searchStream`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice_core::secret::Secret;
use sluice_core::source::{ErrorClass, SourceError};
use tokio::sync::Mutex;
use url::Url;

use super::config::GoogleConfig;
use crate::http::{
    generic_retry, join, require_json, ApiRequest, ApiResponse, HttpClient, Verdict,
};

/// Refresh this long before the token's stated expiry.
const EXPIRY_MARGIN: Duration = Duration::from_secs(60);
/// How long an exhausted daily quota is remembered before the API is asked again.
const QUOTA_MEMORY: Duration = Duration::from_secs(15 * 60);
/// Access tokens tried for one call: refreshes of tokens that merely outlived
/// their lifetime while the request waited (a rate-limit pause) do not count as
/// rejections, but the total is bounded.
const MAX_TOKEN_ATTEMPTS: usize = 4;

pub struct GoogleApi {
    pub http: HttpClient,
    /// `<base_url>/<version>/`
    pub root: Url,
    token_url: Url,
    client_id: String,
    client_secret: Secret,
    refresh_token: Secret,
    developer_token: Secret,
    token: Mutex<Option<(Secret, Instant)>>,
    /// The daily-quota error and when it was seen: later calls fail at once
    /// instead of spending requests on an answer that will not change today.
    quota_exhausted: std::sync::Mutex<Option<(Instant, SourceError)>>,
    /// `sources.<name>`
    pub key_prefix: String,
}

/// A `google.rpc.Status` error with the Google Ads failure details flattened.
#[derive(Debug, Clone, Default)]
pub struct RpcError {
    pub code: i64,
    pub status: String,
    pub message: String,
    /// `authenticationError: OAUTH_TOKEN_EXPIRED`, …
    pub error_codes: Vec<(String, String)>,
    pub detail_messages: Vec<String>,
    pub retry_delay: Option<Duration>,
}

impl RpcError {
    pub fn from_value(v: &Value) -> Option<RpcError> {
        let e = v.get("error")?;
        if !e.is_object() {
            return None;
        }
        let mut out = RpcError {
            code: e.get("code").and_then(Value::as_i64).unwrap_or(0),
            status: e
                .get("status")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            message: e
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            ..Default::default()
        };
        for detail in e
            .get("details")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            for err in detail
                .get("errors")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(codes) = err.get("errorCode").and_then(Value::as_object) {
                    for (k, v) in codes {
                        out.error_codes
                            .push((k.clone(), v.as_str().unwrap_or("").to_string()));
                    }
                }
                if let Some(m) = err.get("message").and_then(Value::as_str) {
                    out.detail_messages.push(m.to_string());
                }
            }
        }
        out.retry_delay =
            find_key(e, "retryDelay").and_then(|v| v.as_str().and_then(parse_duration));
        Some(out)
    }

    pub fn has_code(&self, value: &str) -> bool {
        self.error_codes.iter().any(|(_, v)| v == value)
    }

    fn describe(&self) -> String {
        let codes: Vec<String> = self
            .error_codes
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        let mut text = format!("{} {}", self.code, self.status);
        if !codes.is_empty() {
            text.push_str(&format!(" [{}]", codes.join(", ")));
        }
        let detail = self.detail_messages.first().unwrap_or(&self.message);
        text.push_str(&format!(": {detail}"));
        text
    }
}

fn find_key<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    match v {
        Value::Object(map) => map
            .get(key)
            .or_else(|| map.values().find_map(|x| find_key(x, key))),
        Value::Array(items) => items.iter().find_map(|x| find_key(x, key)),
        _ => None,
    }
}

/// `"30s"`, `"1.5s"` → a duration, at most a day: a daily quota says "retry tomorrow",
/// longer (`"1e20s"`) is a broken or hostile server and must not overflow.
fn parse_duration(text: &str) -> Option<Duration> {
    let secs: f64 = text.trim().strip_suffix('s')?.parse().ok()?;
    crate::http::clamped_secs(secs, MAX_RETRY_DELAY)
}

/// The longest `retryDelay` recorded (see [`parse_duration`]).
const MAX_RETRY_DELAY: Duration = Duration::from_secs(24 * 3600);

/// True for the developer token's exhausted daily operations quota (as opposed
/// to a momentary rate limit, `RESOURCE_TEMPORARILY_EXHAUSTED`, retried after its delay).
pub fn is_daily_quota(error: &RpcError) -> bool {
    error.status == "RESOURCE_EXHAUSTED"
        && error.has_code("RESOURCE_EXHAUSTED")
        && error
            .retry_delay
            .is_none_or(|d| d > Duration::from_secs(3600))
}

/// An invalid or unapproved developer token: no token refresh helps.
fn is_developer_token_error(error: &RpcError) -> bool {
    error
        .error_codes
        .iter()
        .any(|(_, v)| v.starts_with("DEVELOPER_TOKEN"))
}

/// What an error means. `query_key` names the GAQL of the stream being read.
pub fn classify(error: &RpcError, key_prefix: &str, query_key: &str, label: &str) -> Verdict {
    let key = |k: &str| format!("{key_prefix}.{k}");
    let text = format!("{label}: Google Ads error {}", error.describe());
    match error.status.as_str() {
        "RESOURCE_EXHAUSTED" => {
            if is_daily_quota(error) {
                // The developer token's daily operations are used up: nothing to do until tomorrow.
                return Verdict::Fail(SourceError::transient(format!(
                    "the developer token's daily operations quota is exhausted; the source resumes when it resets ({text})"
                )));
            }
            Verdict::Retry {
                after: error.retry_delay,
                reason: text,
            }
        }
        "INTERNAL" | "UNAVAILABLE" | "DEADLINE_EXCEEDED" | "ABORTED" => Verdict::Retry { after: error.retry_delay, reason: text },
        "PERMISSION_DENIED" => {
            let (k, hint) = if is_developer_token_error(error) {
                ("developer_token", "the developer token is not approved for this use")
            } else if error.has_code("CUSTOMER_NOT_ENABLED") {
                ("customer_ids", "the customer account is not enabled (cancelled or suspended): remove it from `customer_ids`")
            } else {
                (
                    "login_customer_id",
                    "the credentials cannot read this customer: set `login_customer_id` to the manager that links it, or grant access",
                )
            };
            Verdict::Fail(SourceError::config(format!("{hint} ({text})"), key(k)))
        }
        "UNAUTHENTICATED" => Verdict::Fail(SourceError::config(
            format!("Google rejected the OAuth credentials even after a token refresh: create a new refresh token ({text})"),
            key("oauth.refresh_token"),
        )),
        "INVALID_ARGUMENT" => Verdict::Fail(SourceError::config(format!("the query was rejected ({text})"), query_key.to_string())),
        "NOT_FOUND" | "UNIMPLEMENTED" => Verdict::Fail(SourceError::config(
            format!("the API does not answer this path: is `api_version` still supported? ({text})"),
            key("api_version"),
        )),
        _ if error.code == 429 || error.code >= 500 => Verdict::Retry { after: error.retry_delay, reason: text },
        _ => Verdict::Fail(SourceError::config(text, key_prefix.to_string())),
    }
}

/// Judges an API response. 401s are accepted here: the caller refreshes the token once.
pub fn judge(response: &ApiResponse, key_prefix: &str, query_key: &str) -> Verdict {
    if response.status == 401 {
        return Verdict::Accept;
    }
    let parsed: Option<Value> = serde_json::from_slice(&response.body).ok();
    if response.is_success() {
        // A searchStream that fails midway ends its array with an error object: retry it whole.
        if let Some(Value::Array(items)) = &parsed {
            if let Some(error) = items.iter().find_map(RpcError::from_value) {
                return classify(&error, key_prefix, query_key, &response.label);
            }
        }
        return require_json(response);
    }
    let error = parsed.as_ref().and_then(|v| match v {
        Value::Array(items) => items.iter().find_map(RpcError::from_value),
        other => RpcError::from_value(other),
    });
    match error {
        Some(mut e) => {
            if e.retry_delay.is_none() {
                e.retry_delay = response.retry_after();
            }
            classify(&e, key_prefix, query_key, &response.label)
        }
        None if response.status == 404 => classify(
            &RpcError {
                code: 404,
                status: "NOT_FOUND".into(),
                message: response.excerpt(),
                ..Default::default()
            },
            key_prefix,
            query_key,
            &response.label,
        ),
        None => generic_retry(response).unwrap_or_else(|| {
            Verdict::Fail(SourceError::new(
                ErrorClass::Transient,
                format!(
                    "{} answered HTTP {}: {}",
                    response.label,
                    response.status,
                    response.excerpt()
                ),
            ))
        }),
    }
}

impl GoogleApi {
    pub fn new(
        http: HttpClient,
        config: &GoogleConfig,
        key_prefix: &str,
    ) -> Result<Self, SourceError> {
        let base =
            crate::http::parse_base_url(&config.base_url, &format!("{key_prefix}.base_url"))?;
        let root = join(&base, &format!("{}/", config.api_version.trim_matches('/')))?;
        let token_url = Url::parse(&config.token_url).map_err(|e| {
            SourceError::config(
                format!("`token_url` is not a URL: {e}"),
                format!("{key_prefix}.token_url"),
            )
        })?;
        crate::http::require_secure(&token_url)
            .map_err(|m| SourceError::config(m, format!("{key_prefix}.token_url")))?;
        Ok(GoogleApi {
            http,
            root,
            token_url,
            client_id: config.oauth.client_id.clone(),
            client_secret: config.oauth.client_secret.clone(),
            refresh_token: config.oauth.refresh_token.clone(),
            developer_token: config.developer_token.clone(),
            token: Mutex::new(None),
            quota_exhausted: std::sync::Mutex::new(None),
            key_prefix: key_prefix.to_string(),
        })
    }

    /// A cached access token, refreshed shortly before expiry or when `stale` is the one that failed.
    async fn access_token(&self, stale: Option<&Secret>) -> Result<Secret, SourceError> {
        let mut cached = self.token.lock().await;
        if let Some((token, expires)) = cached.as_ref() {
            let is_stale = stale.is_some_and(|s| s == token);
            if !is_stale && Instant::now() < *expires {
                return Ok(token.clone());
            }
        }
        let request = ApiRequest::post(self.token_url.clone()).form(vec![
            ("grant_type".into(), "refresh_token".into()),
            ("client_id".into(), self.client_id.clone()),
            (
                "client_secret".into(),
                self.client_secret.expose().to_string(),
            ),
            (
                "refresh_token".into(),
                self.refresh_token.expose().to_string(),
            ),
        ]);
        let prefix = self.key_prefix.clone();
        let response = self
            .http
            .send(&request, &move |r| judge_token(r, &prefix))
            .await?;
        let body: Value = serde_json::from_slice(&response.body)
            .map_err(|e| SourceError::transient(format!("token endpoint: malformed JSON: {e}")))?;
        let Some(token) = body.get("access_token").and_then(Value::as_str) else {
            return Err(SourceError::transient(
                "token endpoint answered without an access_token",
            ));
        };
        let expires_in = body
            .get("expires_in")
            .and_then(Value::as_u64)
            .unwrap_or(3600);
        // Registering it keeps the access token out of every log line and error.
        let token = Secret::new(token);
        // Refresh a little before the stated expiry (a fifth of short lifetimes). Google's
        // tokens live an hour; a longer claim (`expires_in: 2^64-1`) is capped, not trusted.
        let lifetime = Duration::from_secs(expires_in).min(crate::http::MAX_SERVER_WAIT);
        let margin = EXPIRY_MARGIN.min(lifetime / 5);
        *cached = Some((token.clone(), Instant::now() + lifetime - margin));
        Ok(token)
    }

    /// True when `token` is no longer the cached one or has passed its (early) expiry:
    /// a 401 for it is a plain expiry, not a rejection of the credentials.
    async fn outlived(&self, token: &Secret) -> bool {
        match self.token.lock().await.as_ref() {
            Some((cached, expires)) => cached != token || Instant::now() >= *expires,
            None => true,
        }
    }

    /// POSTs `body` to `customers/<id>/<method>` (or GETs when `body` is `None`).
    /// A 401 refreshes the token: once if the token was still within its lifetime
    /// (a second rejection means the credentials are bad), or whenever the token
    /// merely expired while the request waited for retries.
    pub async fn call(
        &self,
        path: &str,
        body: Option<Value>,
        login_customer_id: Option<&str>,
        pace_key: &str,
        query_key: &str,
    ) -> Result<ApiResponse, SourceError> {
        if let Ok(guard) = self.quota_exhausted.lock() {
            if let Some((at, e)) = guard.as_ref() {
                if at.elapsed() < QUOTA_MEMORY {
                    return Err(e.clone());
                }
            }
        }
        let url = join(&self.root, path)?;
        let mut stale: Option<Secret> = None;
        let mut rejected_once = false;
        let mut last_error = RpcError::default();
        for _ in 0..MAX_TOKEN_ATTEMPTS {
            let token = self.access_token(stale.as_ref()).await?;
            let mut request = match &body {
                Some(b) => ApiRequest::post(url.clone()).json(b.clone()),
                None => ApiRequest::get(url.clone()),
            }
            .header("authorization", format!("Bearer {}", token.expose()))
            .header("developer-token", self.developer_token.expose())
            .paced(pace_key);
            if let Some(login) = login_customer_id {
                request = request.header("login-customer-id", login);
            }
            let prefix = self.key_prefix.clone();
            let qk = query_key.to_string();
            let daily_quota = AtomicBool::new(false);
            let result = self
                .http
                .send(&request, &|r| {
                    let verdict = judge(r, &prefix, &qk);
                    if matches!(verdict, Verdict::Fail(_))
                        && response_error(r).is_some_and(|e| is_daily_quota(&e))
                    {
                        daily_quota.store(true, Ordering::Relaxed);
                    }
                    verdict
                })
                .await;
            let response = match result {
                Err(e) if daily_quota.load(Ordering::Relaxed) => {
                    if let Ok(mut guard) = self.quota_exhausted.lock() {
                        *guard = Some((Instant::now(), e.clone()));
                    }
                    return Err(e);
                }
                other => other?,
            };
            if response.status != 401 {
                return Ok(response);
            }
            last_error = response_error(&response).unwrap_or_default();
            if is_developer_token_error(&last_error) {
                return Err(SourceError::config(
                    format!(
                        "Google rejected the developer token ({}): check `developer_token` in the API Center of the manager account",
                        last_error.describe()
                    ),
                    format!("{}.developer_token", self.key_prefix),
                ));
            }
            if !self.outlived(&token).await {
                if rejected_once {
                    break;
                }
                rejected_once = true;
            }
            stale = Some(token);
        }
        Err(SourceError::config(
            format!(
                "Google rejected the OAuth credentials even after a token refresh ({}): create a new refresh token",
                last_error.describe()
            ),
            format!("{}.oauth.refresh_token", self.key_prefix),
        ))
    }

    /// Runs a GAQL query through searchStream; returns the raw response and its rows.
    pub async fn search_stream(
        &self,
        customer_id: &str,
        query: &str,
        login_customer_id: Option<&str>,
        query_key: &str,
    ) -> Result<(ApiResponse, Vec<Value>, Option<String>), SourceError> {
        crate::http::id_segment(customer_id, "customer id")?;
        let response = self
            .call(
                &format!("customers/{customer_id}/googleAds:searchStream"),
                Some(json!({"query": query})),
                login_customer_id,
                customer_id,
                query_key,
            )
            .await?;
        let parsed: Value = serde_json::from_slice(&response.body).map_err(|e| {
            SourceError::transient(format!("{}: malformed JSON: {e}", response.label))
        })?;
        let (rows, field_mask) = stream_rows(parsed);
        Ok((response, rows, field_mask))
    }
}

/// The result rows of a searchStream answer and its first `fieldMask`
/// (an answer without `results` — an error, an empty stream — has no rows).
pub fn stream_rows(parsed: Value) -> (Vec<Value>, Option<String>) {
    let batches = match parsed {
        Value::Array(items) => items,
        // Some proxies unwrap a single batch.
        other => vec![other],
    };
    let mut rows = Vec::new();
    let mut field_mask = None;
    for batch in batches {
        if field_mask.is_none() {
            field_mask = batch
                .get("fieldMask")
                .and_then(Value::as_str)
                .map(String::from);
        }
        if let Some(Value::Array(results)) = batch.get("results") {
            rows.extend(results.iter().cloned());
        }
    }
    (rows, field_mask)
}

/// The `google.rpc.Status` of an error response, if it carries one.
fn response_error(response: &ApiResponse) -> Option<RpcError> {
    let parsed: Value = serde_json::from_slice(&response.body).ok()?;
    match &parsed {
        Value::Array(items) => items.iter().find_map(RpcError::from_value),
        other => RpcError::from_value(other),
    }
}

fn judge_token(response: &ApiResponse, key_prefix: &str) -> Verdict {
    if response.is_success() {
        return require_json(response);
    }
    let body: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
    let code = body.get("error").and_then(Value::as_str).unwrap_or("");
    let description = body
        .get("error_description")
        .and_then(Value::as_str)
        .unwrap_or("");
    match code {
        "invalid_grant" => Verdict::Fail(SourceError::config(
            format!("the OAuth refresh token is expired or revoked ({description}): create a new one"),
            format!("{key_prefix}.oauth.refresh_token"),
        )),
        "invalid_client" | "unauthorized_client" => Verdict::Fail(SourceError::config(
            format!("the OAuth client was rejected ({description}): check `oauth.client_id` and `oauth.client_secret`"),
            format!("{key_prefix}.oauth.client_id"),
        )),
        _ => generic_retry(response).unwrap_or_else(|| {
            Verdict::Fail(SourceError::config(
                format!("token endpoint answered HTTP {}: {}", response.status, response.excerpt()),
                format!("{key_prefix}.token_url"),
            ))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use reqwest::header::HeaderMap;

    fn response(status: u16, body: &str) -> ApiResponse {
        ApiResponse {
            status,
            headers: HeaderMap::new(),
            body: Bytes::from(body.to_string()),
            label: "POST /v26/customers/1/googleAds:searchStream".into(),
            sent: std::time::Instant::now(),
        }
    }

    #[test]
    fn an_absurd_retry_delay_is_capped_and_still_reads_as_daily_quota() {
        assert_eq!(parse_duration("1e20s"), Some(MAX_RETRY_DELAY));
        assert_eq!(parse_duration("infs"), Some(MAX_RETRY_DELAY));
        assert_eq!(parse_duration("NaNs"), None);
        assert_eq!(parse_duration("-1s"), None);
        assert_eq!(parse_duration("2s"), Some(Duration::from_secs(2)));
        let body = r#"{"error":{"code":429,"message":"Resource has been exhausted","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.ads.googleads.v26.errors.GoogleAdsFailure","errors":[{"errorCode":{"quotaError":"RESOURCE_EXHAUSTED"},"message":"Too many requests","details":{"quotaErrorDetails":{"retryDelay":"1e20s"}}}],"requestId":"r"}]}}"#;
        let error =
            RpcError::from_value(&serde_json::from_str(body).unwrap()).expect("an RPC error");
        assert_eq!(error.retry_delay, Some(MAX_RETRY_DELAY));
        assert!(is_daily_quota(&error));
    }

    #[test]
    fn classifies_google_errors() {
        let quota = r#"{"error":{"code":429,"message":"Resource has been exhausted","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.ads.googleads.v26.errors.GoogleAdsFailure","errors":[{"errorCode":{"quotaError":"RESOURCE_TEMPORARILY_EXHAUSTED"},"message":"Too many requests","details":{"quotaErrorDetails":{"rateScope":"ACCOUNT","rateName":"Requests per minute","retryDelay":"2s"}}}],"requestId":"r"}]}}"#;
        match judge(
            &response(429, quota),
            "sources.g",
            "sources.g.streams.x.gaql",
        ) {
            Verdict::Retry { after, .. } => assert_eq!(after, Some(Duration::from_secs(2))),
            other => panic!("{other:?}"),
        }
        let bad = r#"{"error":{"code":400,"message":"Request contains an invalid argument.","status":"INVALID_ARGUMENT","details":[{"@type":"x","errors":[{"errorCode":{"queryError":"UNRECOGNIZED_FIELD"},"message":"Unrecognized field in the query: 'campaign.nme'."}]}]}}"#;
        match judge(&response(400, bad), "sources.g", "sources.g.streams.x.gaql") {
            Verdict::Fail(e) => {
                assert_eq!(e.config_key.as_deref(), Some("sources.g.streams.x.gaql"));
                assert!(e.message.contains("campaign.nme"), "{}", e.message);
            }
            other => panic!("{other:?}"),
        }
        let denied = r#"{"error":{"code":403,"status":"PERMISSION_DENIED","message":"x","details":[{"errors":[{"errorCode":{"authorizationError":"USER_PERMISSION_DENIED"}}]}]}}"#;
        match judge(&response(403, denied), "sources.g", "q") {
            Verdict::Fail(e) => {
                assert_eq!(e.config_key.as_deref(), Some("sources.g.login_customer_id"))
            }
            other => panic!("{other:?}"),
        }
        let midstream = r#"[{"results":[],"fieldMask":"campaign.id"},{"error":{"code":503,"status":"UNAVAILABLE","message":"x"}}]"#;
        assert!(matches!(
            judge(&response(200, midstream), "s", "q"),
            Verdict::Retry { .. }
        ));
        assert!(matches!(
            judge(&response(401, "{}"), "s", "q"),
            Verdict::Accept
        ));
        match judge_token(
            &response(
                400,
                r#"{"error":"invalid_grant","error_description":"Token has been expired or revoked."}"#,
            ),
            "sources.g",
        ) {
            Verdict::Fail(e) => assert_eq!(
                e.config_key.as_deref(),
                Some("sources.g.oauth.refresh_token")
            ),
            other => panic!("{other:?}"),
        }
    }
}
