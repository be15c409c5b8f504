//! Talking to the Graph API: authentication, usage headers, error classification
//! and cursor paging. Everything the streams need, nothing about any stream.

use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use sluice_core::secret::Secret;
use sluice_core::source::{ErrorClass, SourceError};
use url::Url;

use crate::http::{
    generic_retry, join, require_json, ApiRequest, ApiResponse, HttpClient, Pacer, Verdict,
};

/// The Graph API as one source sees it.
#[derive(Clone)]
pub struct GraphApi {
    pub http: HttpClient,
    /// `<base_url>/<api_version>/`
    pub root: Url,
    token: Secret,
    appsecret_proof: Option<Secret>,
    /// `sources.<name>`: config errors name keys below it.
    pub key_prefix: String,
}

/// An error object from the Graph API.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GraphError {
    pub code: i64,
    pub subcode: i64,
    pub message: String,
    pub user_message: String,
    pub is_transient: bool,
}

impl GraphError {
    pub fn parse(body: &[u8]) -> Option<GraphError> {
        Self::in_object(body).flatten()
    }

    /// For a well-formed JSON object `body`, its error object if it has one; `None`
    /// for any other body. Only the error is built: a page of rows (hundreds of KB) is
    /// scanned, not turned into values, so checking every answer costs little.
    fn in_object(body: &[u8]) -> Option<Option<GraphError>> {
        #[derive(serde::Deserialize)]
        struct Envelope {
            error: Option<Value>,
        }
        // serde would also read a struct from an array (`[error]`).
        if body.trim_ascii_start().first() != Some(&b'{') {
            return None;
        }
        let Envelope { error } = serde_json::from_slice(body).ok()?;
        Some(error.map(|e| GraphError {
            code: e.get("code").and_then(Value::as_i64).unwrap_or(0),
            subcode: e.get("error_subcode").and_then(Value::as_i64).unwrap_or(0),
            message: e
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            user_message: e
                .get("error_user_msg")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            is_transient: e
                .get("is_transient")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        }))
    }

    /// "Please reduce the amount of data you're asking for, then retry your request".
    pub fn asks_to_reduce_data(&self) -> bool {
        self.code == 1
            && self
                .message
                .to_ascii_lowercase()
                .contains("reduce the amount of data")
    }

    pub fn is_throttle(&self) -> bool {
        matches!(self.code, 4 | 17 | 32 | 613) || (80000..=80099).contains(&self.code)
    }
}

/// What a Graph error means for sluice.
pub fn classify(
    error: &GraphError,
    status: u16,
    regain: Option<Duration>,
    key_prefix: &str,
    label: &str,
) -> Verdict {
    let key = |k: &str| format!("{key_prefix}.{k}");
    let text = format!(
        "{label}: Facebook error {} ({}): {}",
        error.code, error.subcode, error.message
    );
    match error.code {
        _ if error.asks_to_reduce_data() => Verdict::Fail(SourceError::new(ErrorClass::NeedsSplitting, text)),
        190 => {
            let what = match error.subcode {
                463 => "the access token has expired",
                467 => "the access token is invalid",
                460 => "the access token was invalidated by a password change",
                _ => "the access token was rejected",
            };
            Verdict::Fail(SourceError::config(
                format!("{what}: create a new long-lived (system user) token and update `access_token` ({text})"),
                key("access_token"),
            ))
        }
        2635 => Verdict::Fail(SourceError::config(
            format!("the Graph API version is deprecated or sunset: set `api_version` to a supported version, e.g. v26.0 ({text})"),
            key("api_version"),
        )),
        10 | 200..=299 => Verdict::Fail(SourceError::config(
            format!("the access token lacks a permission (`ads_read` on every configured ad account is needed): {text}"),
            key("access_token"),
        )),
        100 if error.subcode == 33 => Verdict::Fail(SourceError::config(
            format!("an object does not exist or the token cannot see it: check `accounts` ({text})"),
            key("accounts"),
        )),
        100 if error.subcode == 3018 || error.message.contains("37 months") => Verdict::Fail(SourceError::config(
            format!("insights go back at most 37 months: move `start_date` or --since later ({text})"),
            key("start_date"),
        )),
        // Waited out as the usage headers say: a minute when the budget is spent, a
        // moment when they report no wait (a momentary throttle), our back-off when silent.
        _ if error.is_throttle() => Verdict::Retry {
            after: regain,
            reason: text,
        },
        1 | 2 => Verdict::Retry { after: None, reason: text },
        _ if error.is_transient || status >= 500 => Verdict::Retry { after: None, reason: text },
        100 => Verdict::Fail(SourceError::config(
            format!("a request parameter was rejected: check the stream's `fields`, `breakdowns` and `action_attribution_windows` ({text})"),
            key("streams"),
        )),
        _ => Verdict::Fail(SourceError::config(text, key_prefix.to_string())),
    }
}

/// Reads the usage headers: the highest percentage any of them reports, and the
/// longest "regain access" time (minutes in the headers) — `Some(0)` when the
/// headers say access is not blocked, `None` when none of them says.
pub fn usage_from_headers(response: &ApiResponse) -> (f64, Option<Duration>) {
    let mut pct: f64 = 0.0;
    let mut regain_minutes: Option<f64> = None;
    let mut take = |v: &Value, keys: &[&str]| {
        for k in keys {
            if let Some(x) = v.get(*k).and_then(number) {
                pct = pct.max(x);
            }
        }
        if let Some(x) = v.get("estimated_time_to_regain_access").and_then(number) {
            regain_minutes = Some(regain_minutes.unwrap_or(0.0).max(x.max(0.0)));
        }
    };
    if let Some(v) = json_header(response, "x-business-use-case-usage") {
        if let Some(map) = v.as_object() {
            for entries in map.values() {
                for e in entries.as_array().into_iter().flatten() {
                    take(e, &["call_count", "total_cputime", "total_time"]);
                }
            }
        }
    }
    if let Some(v) = json_header(response, "x-ad-account-usage") {
        take(&v, &["acc_id_util_pct"]);
    }
    if let Some(v) = json_header(response, "x-fb-ads-insights-throttle") {
        take(&v, &["app_id_util_pct", "acc_id_util_pct"]);
    }
    if let Some(v) = json_header(response, "x-app-usage") {
        take(&v, &["call_count", "total_cputime", "total_time"]);
    }
    let regain = regain_minutes
        .and_then(|m| crate::http::clamped_secs(m * 60.0, crate::http::MAX_SERVER_WAIT));
    (pct, regain)
}

fn json_header(response: &ApiResponse, name: &str) -> Option<Value> {
    serde_json::from_str(response.header(name)?).ok()
}

fn number(v: &Value) -> Option<f64> {
    v.as_f64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

/// The full judgement of one Graph response, feeding the pacer on the way.
pub fn judge(response: &ApiResponse, pacer: &Pacer, pace_key: &str, key_prefix: &str) -> Verdict {
    let (usage, regain) = usage_from_headers(response);
    pacer.report_usage(pace_key, usage);
    let blocked_for = regain.filter(|r| !r.is_zero());
    if let Some(regain) = blocked_for {
        pacer.block(pace_key, regain);
    }
    if response.is_success() {
        // A 200 can still carry an error object (batch calls, some proxies). The one
        // pass over the body that finds it also shows an object is well-formed JSON.
        return match GraphError::in_object(&response.body) {
            Some(Some(error)) => {
                classify(&error, response.status, regain, key_prefix, &response.label)
            }
            Some(None) => Verdict::Accept,
            None => require_json(response),
        };
    }
    match GraphError::parse(&response.body) {
        Some(error) => classify(
            &error,
            response.status,
            // A real regain time first, then Retry-After, then "not blocked" (a momentary throttle).
            blocked_for.or_else(|| response.retry_after()).or(regain),
            key_prefix,
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

impl GraphApi {
    pub fn new(
        http: HttpClient,
        root: Url,
        token: Secret,
        app_secret: Option<&Secret>,
        key_prefix: String,
    ) -> Self {
        let appsecret_proof =
            app_secret.map(|s| Secret::new(hmac_sha256_hex(s.expose(), token.expose())));
        GraphApi {
            http,
            root,
            token,
            appsecret_proof,
            key_prefix,
        }
    }

    /// A request to `<root>/<path>` with the token (as a header, so it is never part of a URL).
    pub fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        pace_key: &str,
    ) -> Result<ApiRequest, SourceError> {
        let mut r = ApiRequest::new(method, join(&self.root, path)?)
            .header("authorization", format!("Bearer {}", self.token.expose()))
            .paced(pace_key);
        if let Some(proof) = &self.appsecret_proof {
            r = r.query("appsecret_proof", proof.expose());
        }
        Ok(r)
    }

    /// Sends and judges; returns the raw response (to land) once accepted.
    pub async fn send(&self, request: &ApiRequest) -> Result<ApiResponse, SourceError> {
        let pacer = self.http.pacer().clone();
        let key = request.pace_key.clone().unwrap_or_default();
        let prefix = self.key_prefix.clone();
        let mut response = self
            .http
            .send(request, &move |r| judge(r, &pacer, &key, &prefix))
            .await?;
        // Graph echoes the query into `paging.next` (`appsecret_proof`, and
        // `access_token` where a proxy moves it there): pages are landed without
        // our credentials. Replay reads `after` from the cursors, which stay.
        let credentials = [Some(&self.token), self.appsecret_proof.as_ref()];
        response.body = without_credentials(
            response.body,
            credentials.iter().flatten().map(|s| s.expose()),
        );
        Ok(response)
    }

    /// Sends and parses the body as JSON.
    pub async fn send_json(
        &self,
        request: &ApiRequest,
    ) -> Result<(ApiResponse, Value), SourceError> {
        let response = self.send(request).await?;
        let value = serde_json::from_slice(&response.body).map_err(|e| {
            SourceError::transient(format!("{}: malformed JSON: {e}", response.label))
        })?;
        Ok((response, value))
    }
}

/// The `after` cursor of a paged response, if there is a next page.
pub fn next_after(page: &Value) -> Option<String> {
    let paging = page.get("paging")?;
    let next = paging.get("next").and_then(Value::as_str)?;
    if let Some(after) = paging.pointer("/cursors/after").and_then(Value::as_str) {
        return Some(after.to_string());
    }
    Url::parse(next)
        .ok()?
        .query_pairs()
        .find(|(k, _)| k == "after")
        .map(|(_, v)| v.into_owned())
}

/// `body` with every occurrence of each credential replaced by `***`. The values are
/// URL-safe tokens and hex digests, so the result is still the same JSON.
fn without_credentials<'a>(body: Bytes, credentials: impl Iterator<Item = &'a str>) -> Bytes {
    let mut body = body;
    for credential in credentials.filter(|c| c.len() >= 8) {
        let finder = memchr::memmem::Finder::new(credential.as_bytes());
        if finder.find(&body).is_none() {
            continue;
        }
        let mut out = Vec::with_capacity(body.len());
        let mut rest: &[u8] = &body;
        while let Some(at) = finder.find(rest) {
            out.extend_from_slice(&rest[..at]);
            out.extend_from_slice(b"***");
            rest = &rest[at + credential.len()..];
        }
        out.extend_from_slice(rest);
        body = Bytes::from(out);
    }
    body
}

fn hmac_sha256_hex(key: &str, message: &str) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(message.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use reqwest::header::{HeaderMap, HeaderValue};

    fn response(status: u16, body: &str, headers: &[(&'static str, &str)]) -> ApiResponse {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        ApiResponse {
            status,
            headers: map,
            body: Bytes::from(body.to_string()),
            label: "GET /v26.0/act_1/insights".into(),
            sent: std::time::Instant::now(),
        }
    }

    fn fail_class(v: Verdict) -> (ErrorClass, Option<String>) {
        match v {
            Verdict::Fail(e) => (e.class, e.config_key),
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn classifies_the_documented_errors() {
        let p = Pacer::default();
        let err = |code: i64, sub: i64, msg: &str| {
            format!(
                r#"{{"error":{{"message":"{msg}","type":"OAuthException","code":{code},"error_subcode":{sub},"fbtrace_id":"x"}}}}"#
            )
        };
        let j =
            |status, body: String| judge(&response(status, &body, &[]), &p, "act_1", "sources.fb");
        assert_eq!(
            fail_class(j(400, err(190, 463, "Session has expired"))),
            (
                ErrorClass::Configuration,
                Some("sources.fb.access_token".into())
            )
        );
        assert_eq!(
            fail_class(j(
                400,
                err(
                    2635,
                    0,
                    "You are calling a deprecated version of the Ads API"
                )
            )),
            (
                ErrorClass::Configuration,
                Some("sources.fb.api_version".into())
            )
        );
        assert_eq!(
            fail_class(j(403, err(200, 0, "Permissions error"))).0,
            ErrorClass::Configuration
        );
        assert_eq!(
            fail_class(j(
                400,
                err(
                    1,
                    0,
                    "Please reduce the amount of data you're asking for, then retry your request"
                )
            ))
            .0,
            ErrorClass::NeedsSplitting
        );
        assert!(matches!(
            j(400, err(17, 2446079, "User request limit reached")),
            Verdict::Retry { .. }
        ));
        assert!(matches!(
            j(400, err(80000, 0, "too many calls")),
            Verdict::Retry { .. }
        ));
        assert!(matches!(
            j(500, err(2, 0, "Service temporarily unavailable")),
            Verdict::Retry { .. }
        ));
        assert!(matches!(j(503, "<html>".into()), Verdict::Retry { .. }));
        assert!(matches!(
            j(200, r#"{"data":[{"a":"#.into()),
            Verdict::Retry { .. }
        ));
    }

    /// A 200 is judged by its error object alone: a page of rows is accepted, an error
    /// in a 200 is classified like one in a 4xx, JSON that is not an object is still
    /// JSON, and a cut-off body is retried.
    #[test]
    fn a_200_is_judged_by_its_error_object() {
        let p = Pacer::default();
        let j = |body: &str| judge(&response(200, body, &[]), &p, "act_1", "sources.fb");
        let page = r#"{"data":[{"error":"a field named error","spend":"1.5"}],"paging":{"cursors":{"after":"x"}}}"#;
        assert!(matches!(j(page), Verdict::Accept));
        assert!(matches!(j(r#"{"error":null,"data":[]}"#), Verdict::Accept));
        assert_eq!(
            fail_class(j(
                r#"{"data":[],"error":{"code":190,"error_subcode":463,"message":"Session has expired"}}"#
            )),
            (
                ErrorClass::Configuration,
                Some("sources.fb.access_token".into())
            )
        );
        assert!(matches!(j(r#"[{"code":200}]"#), Verdict::Accept));
        assert!(matches!(j(r#"{"data":[{"a":"#), Verdict::Retry { .. }));
        assert_eq!(
            GraphError::parse(br#"{"error":{"code":"17","message":7}}"#),
            Some(GraphError::default()),
            "fields of unexpected types read as absent, as before"
        );
    }

    #[test]
    fn usage_headers_feed_the_pacer() {
        let r = response(
            200,
            "{}",
            &[
                (
                    "x-business-use-case-usage",
                    r#"{"123":[{"type":"ads_insights","call_count":28,"total_cputime":95,"total_time":25,"estimated_time_to_regain_access":2}]}"#,
                ),
                (
                    "x-ad-account-usage",
                    r#"{"acc_id_util_pct":9.67,"reset_time_duration":100}"#,
                ),
            ],
        );
        let (pct, regain) = usage_from_headers(&r);
        assert_eq!(pct, 95.0);
        assert_eq!(regain, Some(Duration::from_secs(120)));
    }

    #[test]
    fn a_throttle_waits_as_long_as_the_headers_say() {
        let p = Pacer::default();
        let throttle = r#"{"error":{"message":"(#80000) There have been too many calls from this ad-account.","code":80000,"error_subcode":2446079,"is_transient":true}}"#;
        let usage = |minutes: u32| {
            format!(
                r#"{{"act_1":[{{"type":"ads_insights","call_count":40,"total_cputime":10,"total_time":10,"estimated_time_to_regain_access":{minutes}}}]}}"#
            )
        };
        let wait = |headers: &[(&'static str, &str)]| match judge(
            &response(400, throttle, headers),
            &p,
            "act_1",
            "sources.fb",
        ) {
            Verdict::Retry { after, .. } => after,
            other => panic!("expected a retry, got {other:?}"),
        };
        // Regain 0: momentary, retried at once (plus jitter), not after our back-off.
        assert_eq!(
            wait(&[("x-business-use-case-usage", &usage(0))]),
            Some(Duration::ZERO)
        );
        assert_eq!(
            wait(&[("x-business-use-case-usage", &usage(1))]),
            Some(Duration::from_secs(60))
        );
        // No usage header at all: the client's own back-off.
        assert_eq!(wait(&[]), None);
    }

    #[test]
    fn an_absurd_regain_time_is_capped_not_a_panic() {
        let p = Pacer::default();
        let throttle = r#"{"error":{"message":"(#80000) Too many calls.","code":80000,"error_subcode":2446079,"is_transient":true}}"#;
        for minutes in ["1e20", "1e300", "18446744073709551615"] {
            let usage = format!(
                r#"{{"act_1":[{{"type":"ads_insights","call_count":100,"estimated_time_to_regain_access":{minutes}}}]}}"#
            );
            let r = response(400, throttle, &[("x-business-use-case-usage", &usage)]);
            assert_eq!(usage_from_headers(&r).1, Some(crate::http::MAX_SERVER_WAIT));
            match judge(&r, &p, "act_1", "sources.fb") {
                Verdict::Retry { after, .. } => {
                    assert_eq!(after, Some(crate::http::MAX_SERVER_WAIT))
                }
                other => panic!("expected a retry, got {other:?}"),
            }
        }
    }

    #[test]
    fn paging_uses_the_after_cursor() {
        let page: Value = serde_json::from_str(r#"{"data":[],"paging":{"cursors":{"after":"MjQZD"},"next":"https://x/v1/act_1/insights?after=MjQZD"}}"#).unwrap();
        assert_eq!(next_after(&page).as_deref(), Some("MjQZD"));
        let last: Value =
            serde_json::from_str(r#"{"data":[],"paging":{"cursors":{"after":"MjQZD"}}}"#).unwrap();
        assert_eq!(next_after(&last), None);
    }
}
