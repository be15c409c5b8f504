//! How a `type: rest` source authenticates: a fixed credential put on every
//! request, or an OAuth2 client-credentials token kept fresh.
//!
//! Every credential is a [`Secret`]: registered for redaction, so it never reaches a
//! log, an error or the run record; tokens an endpoint hands out are registered too.

use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::header::HeaderName;
use serde_json::Value;
use sluice_core::secret::Secret;
use sluice_core::source::SourceError;
use tokio::sync::Mutex;
use url::Url;

use super::config::{AuthConfig, ClientAuth, KeyLocation};
use crate::http::{
    generic_retry, parse_base_url, require_json, ApiRequest, ApiResponse, HttpClient, Verdict,
};

/// A token is fetched again this long before its stated expiry (or a fifth of its
/// lifetime, when shorter), so a request never leaves with a token about to lapse.
const EXPIRY_MARGIN: Duration = Duration::from_secs(30);

pub enum Auth {
    None,
    /// A header set on every request (bearer, basic, API key in a header).
    Header(HeaderName, Secret),
    /// A query parameter added to every request.
    Query(String, Secret),
    /// Boxed: one per source, and much bigger than the other variants.
    OAuth2(Box<ClientCredentials>),
}

/// An OAuth2 client-credentials grant and the token it last gave.
pub struct ClientCredentials {
    token_url: Url,
    client_id: String,
    client_secret: Secret,
    scopes: Vec<String>,
    client_auth: ClientAuth,
    /// The config key errors point at (`sources.api.auth`).
    key: String,
    cached: Mutex<Option<(Secret, Instant)>>,
}

impl Auth {
    pub fn new(config: Option<AuthConfig>, key: &str) -> Result<Auth, SourceError> {
        let header = |name: &str, key: String| {
            HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| SourceError::config(format!("`{name}` is not a header name"), key))
        };
        Ok(match config {
            None => Auth::None,
            Some(AuthConfig::Bearer { token }) => Auth::Header(
                reqwest::header::AUTHORIZATION,
                Secret::new(format!("Bearer {}", token.expose())),
            ),
            Some(AuthConfig::Basic { username, password }) => Auth::Header(
                reqwest::header::AUTHORIZATION,
                Secret::new(basic(&username, password.expose())),
            ),
            Some(AuthConfig::ApiKey {
                name,
                value,
                location: KeyLocation::Header,
            }) => Auth::Header(header(&name, format!("{key}.name"))?, value),
            Some(AuthConfig::ApiKey {
                name,
                value,
                location: KeyLocation::Query,
            }) => Auth::Query(name, value),
            Some(AuthConfig::Oauth2 {
                token_url,
                client_id,
                client_secret,
                scopes,
                client_auth,
            }) => {
                let token_url = parse_base_url(&token_url, &format!("{key}.token_url"))?;
                // parse_base_url ends the path with `/`; a token endpoint is a resource.
                let mut token_url = token_url;
                let path = token_url.path().trim_end_matches('/').to_string();
                token_url.set_path(&path);
                Auth::OAuth2(Box::new(ClientCredentials {
                    token_url,
                    client_id,
                    client_secret,
                    scopes,
                    client_auth,
                    key: key.to_string(),
                    cached: Mutex::new(None),
                }))
            }
        })
    }

    /// Puts the credential on `request`; with OAuth2, returns the token used, so a
    /// 401 can retire exactly that one.
    pub async fn apply(
        &self,
        http: &HttpClient,
        request: &mut ApiRequest,
    ) -> Result<Option<Secret>, SourceError> {
        match self {
            Auth::None => Ok(None),
            Auth::Header(name, value) => {
                request
                    .headers
                    .push((name.clone(), value.expose().to_string()));
                Ok(None)
            }
            Auth::Query(name, value) => {
                request
                    .query
                    .push((name.clone(), value.expose().to_string()));
                Ok(None)
            }
            Auth::OAuth2(grant) => {
                let token = grant.token(http).await?;
                request.headers.push((
                    reqwest::header::AUTHORIZATION,
                    format!("Bearer {}", token.expose()),
                ));
                Ok(Some(token))
            }
        }
    }
}

fn basic(user: &str, password: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

impl ClientCredentials {
    /// The cached token while it is fresh, else a new one from the token endpoint.
    async fn token(&self, http: &HttpClient) -> Result<Secret, SourceError> {
        let mut cached = self.cached.lock().await;
        if let Some((token, expires)) = cached.as_ref() {
            if Instant::now() < *expires {
                return Ok(token.clone());
            }
        }
        let mut form = vec![("grant_type".to_string(), "client_credentials".to_string())];
        if !self.scopes.is_empty() {
            form.push(("scope".into(), self.scopes.join(" ")));
        }
        let mut request = ApiRequest::post(self.token_url.clone());
        match self.client_auth {
            ClientAuth::Basic => request.headers.push((
                reqwest::header::AUTHORIZATION,
                basic(&self.client_id, self.client_secret.expose()),
            )),
            ClientAuth::Body => {
                form.push(("client_id".into(), self.client_id.clone()));
                form.push((
                    "client_secret".into(),
                    self.client_secret.expose().to_string(),
                ));
            }
        }
        let request = request.form(form);
        let key = self.key.clone();
        let response = http
            .send(&request, &move |r| judge_token(r, &key))
            .await?;
        let body: Value = serde_json::from_slice(&response.body)
            .map_err(|e| SourceError::transient(format!("token endpoint: malformed JSON: {e}")))?;
        let Some(token) = body.get("access_token").and_then(Value::as_str) else {
            return Err(SourceError::config(
                "the token endpoint answered without an `access_token`",
                format!("{}.token_url", self.key),
            ));
        };
        // Registered at once, so the token never reaches a log line or an error.
        let token = Secret::new(token);
        // No `expires_in`: kept until the API answers 401. A longer claim than an
        // hour is capped, not trusted.
        let lifetime = body
            .get("expires_in")
            .and_then(Value::as_f64)
            .and_then(|secs| crate::http::clamped_secs(secs, crate::http::MAX_SERVER_WAIT))
            .unwrap_or(crate::http::MAX_SERVER_WAIT);
        let margin = EXPIRY_MARGIN.min(lifetime / 5);
        *cached = Some((token.clone(), Instant::now() + lifetime - margin));
        Ok(token)
    }

    /// True when `token` is no longer the cached one or has passed its (early)
    /// expiry: a 401 for it is a plain expiry, not a rejection of the credentials.
    pub async fn outlived(&self, token: &Secret) -> bool {
        match self.cached.lock().await.as_ref() {
            Some((cached, expires)) => cached != token || Instant::now() >= *expires,
            None => true,
        }
    }

    /// The API refused `token` (401): forget it, unless another request already
    /// replaced it, so the next request fetches a new one.
    pub async fn retire(&self, token: &Secret) {
        let mut cached = self.cached.lock().await;
        if cached.as_ref().is_some_and(|(t, _)| t == token) {
            *cached = None;
        }
    }
}

fn judge_token(response: &ApiResponse, key: &str) -> Verdict {
    if let Some(verdict) = generic_retry(response) {
        return verdict;
    }
    if response.is_success() {
        return require_json(response);
    }
    Verdict::Fail(SourceError::config(
        format!(
            "the token endpoint refused the client credentials (HTTP {}): {}",
            response.status,
            response.excerpt()
        ),
        key,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_base64_of_user_colon_password() {
        // RFC 7617's example.
        assert_eq!(
            basic("Aladdin", "open sesame"),
            "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
    }
}
