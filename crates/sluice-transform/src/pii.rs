//! Personal data: the `pii:` policy and the functions that hash, mask, redact and encrypt.
//!
//! The policy is applied when data leaves D1: every D1 table a model reads is seen
//! through a view in which each personal column is already transformed (see
//! [`crate::catalog`]), so clear text cannot reach D2 because someone forgot a
//! function call. A column is personal when a `columns:` rule matches
//! `<table>.<column>` (or just `<column>` for patterns without a dot), or when its
//! connector marked it `pii` — then `default` applies (hash, unless there is no key).
//!
//! ```yaml
//! pii:
//!   key: ${PII_HMAC_KEY}          # HMAC-SHA-256 key: stable across runs, so hashes still join
//!   key_id: k1                    # prefix of encrypted values; keys rotate by adding an id
//!   encryption_key: ${PII_ENC}    # optional; default: derived from `key` and `key_id`
//!   old_keys: { k0: ${OLD} }      # optional; decrypt-only keys of earlier ids
//!   default: hash                 # action for connector-marked columns no rule matches
//!   columns:
//!     "*.email": hash
//!     "*.phone": mask_last4
//!     "*.address": encrypt
//!     "*.gender": keep
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use datafusion::arrow::array::{Array, ArrayRef, StringArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::Result as DfResult;
use datafusion::logical_expr::{create_udf, ColumnarValue, ScalarUDF, Volatility};
use globset::{Glob, GlobMatcher};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use sluice_core::config::{ConfigError, PipelineConfig, Section};
use sluice_core::secret::Secret;

/// What happens to a personal column when it leaves D1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PiiAction {
    /// HMAC-SHA-256 with `pii.key`, hex: stable, joinable, not reversible.
    Hash,
    /// Everything but the last 4 characters replaced by `*`.
    #[serde(alias = "mask")]
    MaskLast4,
    /// Format-preserving redaction (`j***@e******.com`, `+* ***-***-4567`).
    Redact,
    /// AES-256-GCM with the active key id: reversible with `decrypt()` in a model.
    Encrypt,
    /// The column is not visible to models at all.
    Drop,
    /// Explicitly allowed in clear (a marked column that is not personal in this pipeline).
    Keep,
}

impl PiiAction {
    /// The SQL expression that transforms `column` (quoted), or `None` to drop it.
    pub fn apply(&self, quoted_column: &str) -> Option<String> {
        let text = format!("CAST({quoted_column} AS VARCHAR)");
        Some(match self {
            PiiAction::Hash => format!("hmac_sha256({text})"),
            PiiAction::MaskLast4 => format!("mask_last4({text})"),
            PiiAction::Redact => format!("redact({text})"),
            PiiAction::Encrypt => format!("encrypt({text})"),
            PiiAction::Drop => return None,
            PiiAction::Keep => return Some(quoted_column.to_string()),
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    key: Option<Secret>,
    #[serde(default = "default_key_id")]
    key_id: String,
    #[serde(default)]
    encryption_key: Option<Secret>,
    #[serde(default)]
    old_keys: BTreeMap<String, Secret>,
    #[serde(default)]
    default: Option<PiiAction>,
    #[serde(default)]
    columns: serde_yaml::Mapping,
}

fn default_key_id() -> String {
    "k1".into()
}

/// The keys behind the PII functions. Never printed.
#[derive(Clone, Default)]
pub struct PiiKeys {
    hmac: Option<Vec<u8>>,
    active_id: String,
    /// Encryption keys by id; `active_id` encrypts, all of them decrypt.
    encryption: BTreeMap<String, [u8; 32]>,
}

impl std::fmt::Debug for PiiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PiiKeys")
            .field("hmac", &self.hmac.as_ref().map(|_| "***"))
            .field("active_id", &self.active_id)
            .field("encryption", &self.encryption.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl PiiKeys {
    /// Keys from a secret (tests and tools); encryption key derived from it.
    pub fn new(key: &str) -> PiiKeys {
        let mut keys = PiiKeys {
            hmac: Some(key.as_bytes().to_vec()),
            active_id: default_key_id(),
            encryption: BTreeMap::new(),
        };
        let derived = keys.derive(&keys.active_id.clone());
        keys.encryption.insert(keys.active_id.clone(), derived);
        keys
    }

    fn derive(&self, id: &str) -> [u8; 32] {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(self.hmac.as_deref().unwrap_or_default())
                .expect("HMAC takes any key length");
        mac.update(format!("sluice/aes-256-gcm/{id}").as_bytes());
        mac.finalize().into_bytes().into()
    }

    pub fn hmac_hex(&self, value: &str) -> Option<String> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.hmac.as_deref()?).ok()?;
        mac.update(value.as_bytes());
        Some(hex(&mac.finalize().into_bytes()))
    }

    /// `enc:<key id>:<base64url(nonce ‖ ciphertext)>`.
    pub fn encrypt(&self, value: &str) -> Option<String> {
        let key = self.encryption.get(&self.active_id)?;
        let cipher = Aes256Gcm::new_from_slice(key).ok()?;
        let nonce_bytes: [u8; 12] = rand::random();
        let mut out = nonce_bytes.to_vec();
        out.extend(
            cipher
                .encrypt(Nonce::from_slice(&nonce_bytes), value.as_bytes())
                .ok()?,
        );
        Some(format!(
            "enc:{}:{}",
            self.active_id,
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(out)
        ))
    }

    /// The clear text of an `encrypt` value; `None` if the key id is unknown or it was tampered with.
    pub fn decrypt(&self, value: &str) -> Option<String> {
        let rest = value.strip_prefix("enc:")?;
        let (id, data) = rest.split_once(':')?;
        let key = self.encryption.get(id)?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(data)
            .ok()?;
        if bytes.len() < 12 {
            return None;
        }
        let (nonce, ciphertext) = bytes.split_at(12);
        let cipher = Aes256Gcm::new_from_slice(key).ok()?;
        let clear = cipher.decrypt(Nonce::from_slice(nonce), ciphertext).ok()?;
        String::from_utf8(clear).ok()
    }
}

/// The `pii:` section, parsed.
#[derive(Debug, Clone, Default)]
pub struct PiiPolicy {
    /// `(pattern, matcher, action)` in the order written; the first match wins.
    rules: Vec<(String, GlobMatcher, PiiAction)>,
    /// For connector-marked columns no rule matches.
    default: Option<PiiAction>,
    pub keys: PiiKeys,
}

impl PiiPolicy {
    /// A policy from code (tests, tools).
    pub fn new(key: Option<&str>, rules: &[(&str, PiiAction)]) -> PiiPolicy {
        PiiPolicy {
            rules: rules
                .iter()
                .map(|(p, a)| (p.to_string(), glob(p).expect("valid test glob"), *a))
                .collect(),
            default: None,
            keys: key.map(PiiKeys::new).unwrap_or_default(),
        }
    }

    pub fn parse(config: &PipelineConfig, section: &Section) -> Result<PiiPolicy, ConfigError> {
        let doc = &config.doc;
        let raw: RawPolicy = doc.parse_section(section)?;
        let at = |key: &str| {
            let mut p = section.path.clone();
            p.push(key.to_string());
            p
        };
        let mut rules = Vec::new();
        for (pattern, action) in raw.columns {
            let Some(pattern) = pattern.as_str().map(str::to_string) else {
                return Err(doc.error_at(&at("columns"), "column patterns are strings"));
            };
            let mut path = at("columns");
            path.push(pattern.clone());
            let action: PiiAction = doc.deserialize_at(action, &path)?;
            let matcher = glob(&pattern).map_err(|e| doc.error_at(&path, e))?;
            rules.push((pattern, matcher, action));
        }
        let mut keys = PiiKeys {
            hmac: raw.key.as_ref().map(|k| k.expose().as_bytes().to_vec()),
            active_id: raw.key_id.clone(),
            encryption: BTreeMap::new(),
        };
        let actions: Vec<PiiAction> = rules.iter().map(|r| r.2).chain(raw.default).collect();
        let needs_hmac = actions.contains(&PiiAction::Hash);
        let needs_cipher = actions.contains(&PiiAction::Encrypt);
        if keys.hmac.is_none() && (needs_hmac || needs_cipher && raw.encryption_key.is_none()) {
            return Err(doc.error_at(
                &at("key"),
                "`pii.key` is required to hash or encrypt (e.g. key: ${PII_HMAC_KEY})",
            ));
        }
        if let Some(k) = &raw.encryption_key {
            keys.encryption
                .insert(raw.key_id.clone(), key_bytes(k.expose()));
        } else if keys.hmac.is_some() {
            let derived = keys.derive(&raw.key_id);
            keys.encryption.insert(raw.key_id.clone(), derived);
        }
        for (id, k) in &raw.old_keys {
            keys.encryption.insert(id.clone(), key_bytes(k.expose()));
        }
        Ok(PiiPolicy {
            rules,
            default: raw.default,
            keys,
        })
    }

    /// What to do with `table.column`; `None` when it is not personal.
    pub fn action(&self, table: &str, column: &str, marked_pii: bool) -> Option<PiiAction> {
        let qualified = format!("{table}.{column}");
        for (pattern, matcher, action) in &self.rules {
            let subject = if pattern.contains('.') {
                qualified.as_str()
            } else {
                column
            };
            if matcher.is_match(subject) {
                return Some(*action);
            }
        }
        if marked_pii {
            // Without a key nothing can be hashed: a marked column is then not shown at all.
            return Some(self.default.unwrap_or(if self.keys.hmac.is_some() {
                PiiAction::Hash
            } else {
                PiiAction::Drop
            }));
        }
        None
    }

    /// The functions of this module, bound to the policy's keys.
    pub fn functions(&self) -> Vec<ScalarUDF> {
        let keys = Arc::new(self.keys.clone());
        let (k1, k2, k3) = (keys.clone(), keys.clone(), keys);
        vec![
            text_udf("hmac_sha256", Volatility::Immutable, move |v| {
                k1.hmac_hex(v)
            }),
            text_udf("encrypt", Volatility::Volatile, move |v| k2.encrypt(v)),
            text_udf("decrypt", Volatility::Immutable, move |v| k3.decrypt(v)),
            text_udf("mask_last4", Volatility::Immutable, |v| Some(mask_last4(v))),
            text_udf("redact_email", Volatility::Immutable, |v| {
                Some(redact_email(v))
            }),
            text_udf("redact_phone", Volatility::Immutable, |v| {
                Some(redact_phone(v))
            }),
            text_udf("redact", Volatility::Immutable, |v| Some(redact(v))),
        ]
    }
}

fn glob(pattern: &str) -> Result<GlobMatcher, String> {
    Glob::new(pattern)
        .map(|g| g.compile_matcher())
        .map_err(|e| format!("invalid pattern `{pattern}`: {e}"))
}

/// 64 hex digits or base64 of 32 bytes are used as is; anything else is a passphrase (SHA-256).
fn key_bytes(text: &str) -> [u8; 32] {
    let t = text.trim();
    if t.len() == 64 && t.chars().all(|c| c.is_ascii_hexdigit()) {
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&t[2 * i..2 * i + 2], 16).unwrap_or(0);
        }
        return out;
    }
    if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(t) {
        if let Ok(key) = <[u8; 32]>::try_from(bytes.as_slice()) {
            return key;
        }
    }
    Sha256::digest(t.as_bytes()).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `4111111111111111` → `************1111`.
pub fn mask_last4(value: &str) -> String {
    let n = value.chars().count();
    value
        .chars()
        .enumerate()
        .map(|(i, c)| if i + 4 < n { '*' } else { c })
        .collect()
}

/// `jane.doe@example.com` → `j*******@e******.com`: shape kept, identity gone.
pub fn redact_email(value: &str) -> String {
    let Some((local, domain)) = value.rsplit_once('@') else {
        return redact(value);
    };
    let (host, tld) = domain.rsplit_once('.').unwrap_or((domain, ""));
    let keep_first = |s: &str| -> String {
        s.chars()
            .enumerate()
            .map(|(i, c)| if i == 0 { c } else { '*' })
            .collect()
    };
    let tld = if tld.is_empty() {
        String::new()
    } else {
        format!(".{tld}")
    };
    format!("{}@{}{tld}", keep_first(local), keep_first(host))
}

/// `+1 (555) 123-4567` → `+* (***) ***-4567`: separators kept, digits but the last 4 hidden.
pub fn redact_phone(value: &str) -> String {
    let digits = value.chars().filter(char::is_ascii_digit).count();
    let mut seen = 0;
    value
        .chars()
        .map(|c| {
            if c.is_ascii_digit() {
                seen += 1;
                if seen + 4 <= digits {
                    '*'
                } else {
                    c
                }
            } else {
                c
            }
        })
        .collect()
}

/// Letters and digits become `*`; emails and phones keep their shape.
pub fn redact(value: &str) -> String {
    if value.contains('@') && !value.contains(' ') {
        return redact_email(value);
    }
    let digits = value.chars().filter(char::is_ascii_digit).count();
    if digits >= 7
        && value
            .chars()
            .all(|c| c.is_ascii_digit() || " +-().".contains(c))
    {
        return redact_phone(value);
    }
    value
        .chars()
        .map(|c| if c.is_alphanumeric() { '*' } else { c })
        .collect()
}

/// A text → text function; NULL in, NULL out; `None` from `f` is NULL.
pub(crate) fn text_udf(
    name: &str,
    volatility: Volatility,
    f: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
) -> ScalarUDF {
    create_udf(
        name,
        vec![DataType::Utf8],
        DataType::Utf8,
        volatility,
        Arc::new(move |args: &[ColumnarValue]| -> DfResult<ColumnarValue> {
            let input = utf8_arg(args, 0)?;
            let out: StringArray = input.iter().map(|v| v.and_then(&f)).collect();
            Ok(ColumnarValue::Array(Arc::new(out) as ArrayRef))
        }),
    )
}

/// Argument `i` as a Utf8 array (scalars expanded, other string types cast).
pub(crate) fn utf8_arg(args: &[ColumnarValue], i: usize) -> DfResult<StringArray> {
    let arrays = ColumnarValue::values_to_arrays(args)?;
    let array = datafusion::arrow::compute::cast(&arrays[i], &DataType::Utf8)?;
    Ok(array
        .as_any()
        .downcast_ref::<StringArray>()
        .expect("cast to Utf8")
        .clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashing_is_stable_and_keyed_and_encryption_round_trips() {
        let a = PiiKeys::new("key-one");
        let b = PiiKeys::new("key-two");
        assert_eq!(a.hmac_hex("x@y.z"), a.hmac_hex("x@y.z"));
        assert_ne!(a.hmac_hex("x@y.z"), b.hmac_hex("x@y.z"));
        let enc = a.encrypt("12 Main St").unwrap();
        assert!(enc.starts_with("enc:k1:"), "{enc}");
        assert!(!enc.contains("Main"));
        assert_eq!(a.decrypt(&enc).as_deref(), Some("12 Main St"));
        assert_eq!(b.decrypt(&enc), None);
    }

    #[test]
    fn masks_and_redactions_keep_shape_only() {
        assert_eq!(mask_last4("5551234567"), "******4567");
        assert_eq!(mask_last4("12"), "12");
        assert_eq!(redact_email("jane.doe@example.com"), "j*******@e******.com");
        assert_eq!(redact_phone("+1 (555) 123-4567"), "+* (***) ***-4567");
        assert_eq!(redact("12 Main St"), "** **** **");
    }

    #[test]
    fn rules_match_in_order_and_marked_columns_default_to_hash() {
        let p = PiiPolicy::new(
            Some("k"),
            &[
                ("*.email", PiiAction::Hash),
                ("phone", PiiAction::MaskLast4),
            ],
        );
        assert_eq!(
            p.action("app_profiles", "email", false),
            Some(PiiAction::Hash)
        );
        assert_eq!(p.action("x", "phone", false), Some(PiiAction::MaskLast4));
        assert_eq!(p.action("x", "name", true), Some(PiiAction::Hash));
        assert_eq!(p.action("x", "clicks", false), None);
        let keyless = PiiPolicy::new(None, &[]);
        assert_eq!(keyless.action("x", "name", true), Some(PiiAction::Drop));
    }
}
