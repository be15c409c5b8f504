//! Secrets: values that must never reach logs, the lake or run history.
//!
//! A [`Secret`] prints as `***` through `Debug` and `Display`, so it cannot leak by
//! being formatted by accident. Every secret that is deserialised is also
//! registered with the process-wide [`redact`] list: the log writer and the run
//! record pass their text through [`redact`], which catches secrets that end up
//! inside a URL or a third-party error message.

use std::fmt;
use std::sync::{OnceLock, RwLock};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A string that is a credential (token, password, key, connection URL with a password).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value and registers it for redaction.
    pub fn new(value: impl Into<String>) -> Self {
        let value = value.into();
        register(&value);
        Secret(value)
    }

    /// The clear value, for the one place that must send it (an HTTP header, a connect call).
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret::new)
    }
}

/// Serialises as `***`: a config echoed back (docs, `validate --print`) never carries the value.
impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("***")
    }
}

/// The bytes of a configured key (`pii.key`, the lake's master key): 64 hex digits
/// (or any even number of them) and base64 of 32+ bytes are decoded; other text is
/// used as is. Callers refuse fewer bytes than they need.
pub fn key_bytes(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    let t = text.trim();
    let decoded =
        if t.len().is_multiple_of(2) && !t.is_empty() && t.chars().all(|c| c.is_ascii_hexdigit()) {
            hex::decode(t).ok()
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(t)
                .ok()
                .filter(|b| b.len() >= 32)
        };
    decoded.unwrap_or_else(|| t.as_bytes().to_vec())
}

fn registry() -> &'static RwLock<Vec<String>> {
    static SECRETS: OnceLock<RwLock<Vec<String>>> = OnceLock::new();
    SECRETS.get_or_init(|| RwLock::new(Vec::new()))
}

/// Registers a value to be scrubbed from every log line and run record.
/// Very short values are ignored: redacting "a" would mangle every message.
/// The value is registered as written and as it appears inside JSON text (`\"`, `\\`)
/// and in a URL (`%2F`, `+` or `%20`): an error quoting a request body or URL
/// carries those forms, not the plain one.
pub fn register(value: &str) {
    if value.len() < 4 {
        return;
    }
    let json = serde_json::to_string(value).unwrap_or_default();
    let json = json
        .strip_prefix('"')
        .and_then(|j| j.strip_suffix('"'))
        .unwrap_or(value)
        .to_string();
    let form: String = url::form_urlencoded::byte_serialize(value.as_bytes()).collect();
    // In form encoding a literal `+` is `%2B`, so every `+` left is a space.
    let percent = form.replace('+', "%20");
    let mut secrets = registry().write().unwrap_or_else(|e| e.into_inner());
    for form in [value.to_string(), json, form, percent] {
        if !secrets.contains(&form) {
            secrets.push(form);
        }
    }
    // Longest first, so a secret that contains another is replaced whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
}

/// Replaces every registered secret in `text` with `***`.
pub fn redact(text: &str) -> String {
    let secrets = registry().read().unwrap_or_else(|e| e.into_inner());
    let mut out = text.to_string();
    for secret in secrets.iter() {
        if out.contains(secret.as_str()) {
            out = out.replace(secret.as_str(), "***");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_formats_its_value() {
        let s = Secret::new("hunter2-very-secret");
        assert_eq!(format!("{s}"), "***");
        assert_eq!(format!("{s:?}"), "***");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"***\"");
        assert_eq!(s.expose(), "hunter2-very-secret");
    }

    #[test]
    fn redact_scrubs_json_escaped_and_url_encoded_forms() {
        let _ = Secret::new("pa\"ss/wo&rd s\\ecret+1");
        let json = r#"{"password":"pa\"ss/wo&rd s\\ecret+1"}"#;
        assert_eq!(redact(json), r#"{"password":"***"}"#);
        let query = "GET /x?token=pa%22ss%2Fwo%26rd+s%5Cecret%2B1&a=1";
        assert_eq!(redact(query), "GET /x?token=***&a=1");
        let path = "GET /x/pa%22ss%2Fwo%26rd%20s%5Cecret%2B1/y";
        assert_eq!(redact(path), "GET /x/***/y");
    }

    #[test]
    fn redact_scrubs_registered_values_inside_other_text() {
        let _ = Secret::new("tok-abcdef-123");
        let line = "GET https://x/y?access_token=tok-abcdef-123&a=1 failed";
        assert_eq!(redact(line), "GET https://x/y?access_token=***&a=1 failed");
    }
}
