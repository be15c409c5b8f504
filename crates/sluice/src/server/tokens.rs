//! `serve:` options and API tokens.
//!
//! ```yaml
//! serve:
//!   tokens:
//!     - { name: grafana, role: viewer, sha256: 9f86d08…}   # sha256 of the token, in hex
//!     - { name: ops, role: operator, sha256: "${OPS_TOKEN_SHA256}" }
//!   protect_reads: true     # reads need a token too (default: only triggering does)
//! ```
//!
//! Only hashes are configured, so pipeline.yaml never holds a usable token. A
//! presented token is hashed and compared with every configured hash in constant
//! time (`subtle`), so timing tells nothing about how close a guess was.

use serde::Deserialize;
use sha2::{Digest, Sha256};
use sluice_core::config::{ConfigError, PipelineConfig};
use subtle::ConstantTimeEq;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Read the API and the dashboard.
    Viewer,
    /// Also trigger runs.
    Operator,
}

/// One configured token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Who holds it, for the log (`grafana`, `on-call`).
    pub name: String,
    pub role: Role,
    /// SHA-256 of the token, 64 hex digits (`printf %s "$TOKEN" | sha256sum`).
    pub sha256: String,
}

/// `serve:` in pipeline.yaml.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// Bearer tokens for the API; without any, nothing can be triggered over HTTP.
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
    /// Also require a token (any role) to read the API, the dashboard and
    /// `/metrics`; the probes stay open. Default `false`: reads are open to whoever
    /// reaches `--listen`.
    #[serde(default)]
    pub protect_reads: bool,
}

/// A configured token, decoded.
#[derive(Debug, Clone)]
pub struct Token {
    pub name: String,
    pub role: Role,
    digest: [u8; 32],
}

/// The configured tokens.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    tokens: Vec<Token>,
    /// Reads need a token too (`serve.protect_reads`).
    pub protect_reads: bool,
}

impl Tokens {
    /// Reads `serve.tokens`, pointing at a hash that is not 64 hex digits.
    pub fn from_config(config: &PipelineConfig) -> Result<Tokens, ConfigError> {
        let Some(section) = &config.serve else {
            return Ok(Tokens::default());
        };
        let parsed: ServeConfig = config.doc.parse_section(section)?;
        if parsed.protect_reads && parsed.tokens.is_empty() {
            let mut path = section.path.clone();
            path.push("protect_reads".into());
            return Err(config.doc.error_at(
                &path,
                "protect_reads needs at least one token in `serve.tokens`",
            ));
        }
        let mut tokens = Vec::new();
        for (i, token) in parsed.tokens.into_iter().enumerate() {
            let digest = decode_hex(&token.sha256).ok_or_else(|| {
                let mut path = section.path.clone();
                path.extend(["tokens".to_string(), format!("[{i}]"), "sha256".into()]);
                let mut e = config.doc.error_at(
                    &path,
                    "expected the token's SHA-256 as 64 hex digits, not the token itself",
                );
                e.help = Some("printf %s \"$TOKEN\" | sha256sum".into());
                e
            })?;
            tokens.push(Token {
                name: token.name,
                role: token.role,
                digest,
            });
        }
        Ok(Tokens {
            tokens,
            protect_reads: parsed.protect_reads,
        })
    }

    /// The token matching `presented`, if any. Every configured hash is compared,
    /// in constant time, whatever matches.
    pub fn find(&self, presented: &str) -> Option<&Token> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for token in &self.tokens {
            if bool::from(token.digest[..].ct_eq(&digest[..])) {
                found = Some(token);
            }
        }
        found
    }
}

fn decode_hex(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(token: &str) -> String {
        hex::encode(Sha256::digest(token.as_bytes()))
    }

    #[test]
    fn a_token_is_found_by_its_hash_and_nothing_else() {
        let tokens = Tokens {
            protect_reads: false,
            tokens: vec![
                Token {
                    name: "viewer".into(),
                    role: Role::Viewer,
                    digest: decode_hex(&hex("look")).unwrap(),
                },
                Token {
                    name: "ops".into(),
                    role: Role::Operator,
                    digest: decode_hex(&hex("touch")).unwrap(),
                },
            ],
        };
        assert_eq!(tokens.find("touch").map(|t| t.role), Some(Role::Operator));
        assert_eq!(tokens.find("look").map(|t| t.role), Some(Role::Viewer));
        assert!(tokens.find("touc").is_none());
        assert!(
            tokens.find(&hex("touch")).is_none(),
            "the hash is not a token"
        );
        assert!(decode_hex("abc").is_none());
    }
}
