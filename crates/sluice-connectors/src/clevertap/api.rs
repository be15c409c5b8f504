//! CleverTap's REST conventions: headers, `{"status":"fail"}` errors, the
//! two-step cursor flow and the counts endpoint.

use std::time::Duration;

use serde_json::{json, Value};
use sluice_core::secret::Secret;
use sluice_core::source::{ErrorClass, SourceError};
use url::Url;

use crate::http::{generic_retry, join, ApiRequest, ApiResponse, HttpClient, Urgency, Verdict};

pub struct CleverTapApi {
    pub http: HttpClient,
    pub root: Url,
    account_id: String,
    passcode: Secret,
    pub key_prefix: String,
}

/// What a page GET can end in besides a page.
pub enum CursorPage {
    Page(Box<(ApiResponse, Value)>),
    /// The cursor expired: restart the window.
    Expired(String),
}

/// True for the error CleverTap gives for a cursor that is too old or unknown.
pub fn is_cursor_error(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("cursor")
        && (m.contains("expire") || m.contains("invalid") || m.contains("not found"))
}

pub fn judge(response: &ApiResponse, key_prefix: &str) -> Verdict {
    let body: Option<Value> = serde_json::from_slice(&response.body).ok();
    let status = body
        .as_ref()
        .and_then(|b| b.get("status"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let message = body
        .as_ref()
        .and_then(|b| b.get("error"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let key = |k: &str| format!("{key_prefix}.{k}");
    if response.is_success() && body.is_some() && status != "fail" {
        return Verdict::Accept;
    }
    if status == "fail" && is_cursor_error(&message) {
        // The caller restarts the window.
        return Verdict::Accept;
    }
    let text = format!(
        "{}: CleverTap answered HTTP {}: {}",
        response.label,
        response.status,
        if message.is_empty() {
            response.excerpt()
        } else {
            message.clone()
        }
    );
    let code = body
        .as_ref()
        .and_then(|b| b.get("code"))
        .and_then(Value::as_i64)
        .unwrap_or(response.status as i64);
    match (response.status, code) {
        (401, _) | (_, 401) => Verdict::Fail(SourceError::config(
            format!("CleverTap rejected the account id / passcode: check `account_id` and `passcode` ({text})"),
            key("passcode"),
        )),
        (403, _) | (_, 403) => Verdict::Fail(SourceError::config(
            format!("the passcode lacks access to this API ({text})"),
            key("passcode"),
        )),
        (429, _) | (_, 429) => Verdict::Retry {
            after: response.retry_after().or(Some(Duration::from_millis(500))),
            reason: text,
        },
        (s, _) if s >= 500 => Verdict::Retry { after: None, reason: text },
        (s, _) if (200..300).contains(&s) && body.is_none() => Verdict::Retry {
            after: None,
            reason: format!("{}: malformed JSON body", response.label),
        },
        (400, _) | (_, 400) => Verdict::Fail(SourceError::config(
            format!("CleverTap rejected the request: check the stream's event names and dates ({text})"),
            key("streams"),
        )),
        _ => generic_retry(response).unwrap_or(Verdict::Fail(SourceError::new(ErrorClass::Transient, text))),
    }
}

impl CleverTapApi {
    pub fn new(
        http: HttpClient,
        root: Url,
        account_id: String,
        passcode: Secret,
        key_prefix: String,
    ) -> Self {
        CleverTapApi {
            http,
            root,
            account_id,
            passcode,
            key_prefix,
        }
    }

    fn request(&self, request: ApiRequest) -> ApiRequest {
        request
            .header("x-clevertap-account-id", self.account_id.clone())
            .header("x-clevertap-passcode", self.passcode.expose())
            .paced(self.account_id.clone())
    }

    async fn send(&self, request: ApiRequest) -> Result<(ApiResponse, Value), SourceError> {
        let prefix = self.key_prefix.clone();
        let response = self
            .http
            .send(&self.request(request), &move |r| judge(r, &prefix))
            .await?;
        let body = serde_json::from_slice(&response.body).map_err(|e| {
            SourceError::transient(format!("{}: malformed JSON: {e}", response.label))
        })?;
        Ok((response, body))
    }

    /// Step 1 of the cursor flow: `POST /1/<what>.json` → the first cursor (`None` = no records).
    pub async fn open_cursor(
        &self,
        what: &str,
        event: &str,
        from: u32,
        to: u32,
        batch_size: u32,
    ) -> Result<Option<String>, SourceError> {
        let url = join(&self.root, &format!("1/{what}.json"))?;
        let request = ApiRequest::post(url)
            .query("batch_size", batch_size.to_string())
            .json(json!({"event_name": event, "from": from, "to": to}));
        let (_, body) = self.send(request).await?;
        if body.get("status").and_then(Value::as_str) == Some("fail") {
            let m = body
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("cursor error");
            return Err(SourceError::transient(format!("{what}: {m}")));
        }
        Ok(body.get("cursor").and_then(Value::as_str).map(String::from))
    }

    /// Step 2: one page for `cursor`. It takes a free in-flight slot before requests
    /// that open cursors: an open cursor expires if it is not read on.
    pub async fn page(&self, what: &str, cursor: &str) -> Result<CursorPage, SourceError> {
        let url = join(&self.root, &format!("1/{what}.json"))?;
        let (response, body) = self
            .send(
                ApiRequest::get(url)
                    .query("cursor", cursor)
                    .urgency(Urgency::Continues),
            )
            .await?;
        if body.get("status").and_then(Value::as_str) == Some("fail") {
            let m = body
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("cursor expired")
                .to_string();
            return Ok(CursorPage::Expired(m));
        }
        Ok(CursorPage::Page(Box::new((response, body))))
    }

    /// The event count for a window, polling while the answer is `partial`.
    pub async fn count(&self, event: &str, from: u32, to: u32) -> Result<Option<u64>, SourceError> {
        let url = join(&self.root, "1/counts/events.json")?;
        let (_, mut body) = self
            .send(
                ApiRequest::post(url.clone())
                    .json(json!({"event_name": event, "from": from, "to": to})),
            )
            .await?;
        let mut pause = Duration::from_millis(50);
        for _ in 0..30 {
            if let Some(n) = body.get("count").and_then(Value::as_u64) {
                return Ok(Some(n));
            }
            let Some(req_id) = body.get("req_id").map(|v| {
                v.as_str()
                    .map(String::from)
                    .unwrap_or_else(|| v.to_string())
            }) else {
                return Ok(None);
            };
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
            body = self
                .send(
                    ApiRequest::post(url.clone())
                        .query("req_id", req_id)
                        .urgency(Urgency::Continues),
                )
                .await?
                .1;
        }
        Ok(None)
    }
}
