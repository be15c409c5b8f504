//! Personal data: the `pii:` policy and the functions that hash, mask, redact and encrypt.
//!
//! The policy is applied when data leaves D1: every D1 table a model reads is seen
//! through a view in which each personal column is already transformed (see
//! [`crate::catalog`]), so clear text cannot reach D2 because someone forgot a
//! function call. A column is personal when a `columns:` rule matches
//! `<table>.<column>` (or just `<column>` for patterns without a dot), or when its
//! connector marked it `pii` — then `default` applies (hash, unless there is no key).
//!
//! Keys: `key` (and `encryption_key`, `old_keys`) must hold at least 32 bytes (64 hex
//! digits, base64 of 32+ bytes, or 32+ characters of text). The hash key and each
//! encryption key are derived from them with HKDF-SHA-256 under a distinct label per
//! purpose, so no value a model can hash ever equals a key. Encrypted values are
//! `enc:v3:<key id>:<base64url(iv ‖ ciphertext ‖ tag)>` (AES-256-CBC with HMAC-SHA-512,
//! the RFC 7518 AEAD that PostgreSQL can compute too; see [`cipher`]) and bound to the
//! `table.column` they were encrypted from: `decrypt(value, 'table.column')` fails for
//! a value copied from another column.
//!
//! ```yaml
//! pii:
//!   key: ${PII_HMAC_KEY}          # 32+ bytes, stable across runs, so hashes still join
//!   key_id: k1                    # part of encrypted values; keys rotate by adding an id
//!   encryption_key: ${PII_ENC}    # optional; default: derived from `key` and `key_id`
//!   old_keys: { k0: ${OLD} }      # optional; decrypt-only keys of earlier ids
//!   default: hash                 # action for connector-marked columns no rule matches
//!   columns:
//!     "*.email": hash
//!     "*.phone": mask_last4
//!     "*.address": encrypt
//!     "*.gender": keep
//! ```
//!
//! (Over 700 lines with its tests, which are ~190 of them: the policy, the keys and
//! the functions share the derived keys, and the tests check them against each
//! other; the code itself is ~600 lines.)

mod cipher;

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, StringArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::Result as DfResult;
use datafusion::logical_expr::{create_udf, ColumnarValue, ScalarUDF, Volatility};
use globset::{GlobBuilder, GlobMatcher};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;
use sluice_core::config::{ConfigError, PipelineConfig, Section};
use sluice_core::secret::Secret;

pub(crate) use cipher::{CipherKey, V3 as ENCRYPTED_PREFIX};

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
    /// Encrypted with the active key id, bound to `table.column`: reversible with
    /// `decrypt(value, 'table.column')` in a model.
    Encrypt,
    /// The column is not visible to models at all.
    Drop,
    /// Explicitly allowed in clear (a marked column that is not personal in this pipeline).
    Keep,
}

impl PiiAction {
    /// The action as `pii:` rules write it (`mask_last4`).
    pub fn name(self) -> &'static str {
        match self {
            PiiAction::Hash => "hash",
            PiiAction::MaskLast4 => "mask_last4",
            PiiAction::Redact => "redact",
            PiiAction::Encrypt => "encrypt",
            PiiAction::Drop => "drop",
            PiiAction::Keep => "keep",
        }
    }

    /// The SQL expression that transforms `column` (quoted) of `table`, or `None` to drop it.
    pub fn apply(&self, table: &str, column: &str) -> Option<String> {
        let quoted_column = format!("\"{}\"", column.replace('"', "\"\""));
        let text = format!("CAST({quoted_column} AS VARCHAR)");
        Some(match self {
            PiiAction::Hash => format!("hmac_sha256({text})"),
            PiiAction::MaskLast4 => format!("mask_last4({text})"),
            PiiAction::Redact => format!("redact({text})"),
            PiiAction::Encrypt => {
                let context = format!("{table}.{column}").replace('\'', "''");
                format!("encrypt({text}, '{context}')")
            }
            PiiAction::Drop => return None,
            PiiAction::Keep => return Some(quoted_column),
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

/// The shortest key material accepted: 256 bits, the strength of the keys derived from it.
pub const MIN_KEY_BYTES: usize = 32;
/// HKDF salt: fixed, so the same `pii.key` gives the same hashes on every machine.
const HKDF_SALT: &[u8] = b"sluice/pii";
/// HKDF label of the HMAC key behind `hash` / `hmac_sha256()`.
const HASH_LABEL: &str = "sluice/pii/hash/hmac-sha256";

/// A key that cannot be used, in words that name what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(String);

/// The keys behind the PII functions. Never printed.
#[derive(Clone, Default)]
pub struct PiiKeys {
    /// HMAC-SHA-256 key of `hash`, derived from `pii.key`.
    hmac: Option<[u8; 32]>,
    active_id: String,
    /// Encryption keys by id; `active_id` encrypts, all of them decrypt.
    encryption: BTreeMap<String, CipherKey>,
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
    /// Keys from one secret of 32+ bytes (tests and tools); encryption key derived from it.
    pub fn new(key: &str) -> Result<PiiKeys, KeyError> {
        let material = key_material("key", key)?;
        let active_id = default_key_id();
        let mut encryption = BTreeMap::new();
        encryption.insert(active_id.clone(), CipherKey::derive(&material, &active_id));
        Ok(PiiKeys {
            hmac: Some(derive(&material, HASH_LABEL)),
            active_id,
            encryption,
        })
    }

    /// The HMAC-SHA-256 key of `hash` as its inner and outer padded blocks
    /// (`K ⊕ ipad`, `K ⊕ opad`, 64 bytes each, RFC 2104), so a warehouse with only
    /// SHA-256 computes the same hash: `H(opad ‖ H(ipad ‖ message))`. Secret.
    pub(crate) fn hmac_pads(&self) -> Option<([u8; 64], [u8; 64])> {
        let key = self.hmac.as_ref()?;
        let (mut inner, mut outer) = ([0x36u8; 64], [0x5cu8; 64]);
        for (i, byte) in key.iter().enumerate() {
            inner[i] ^= byte;
            outer[i] ^= byte;
        }
        Some((inner, outer))
    }

    pub fn hmac_hex(&self, value: &str) -> Option<String> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.hmac.as_ref()?).ok()?;
        mac.update(value.as_bytes());
        Some(hex(&mac.finalize().into_bytes()))
    }

    /// `value` encrypted with the active key id, bound to `context` (`table.column`).
    pub fn encrypt(&self, value: &str, context: &str) -> Option<String> {
        let key = self.encryption.get(&self.active_id)?;
        Some(cipher::encrypt(key, &self.active_id, value, context))
    }

    /// The clear text of an `encrypt` value of `context`; `None` if the key id is unknown,
    /// the value was tampered with or it was encrypted from another column.
    pub fn decrypt(&self, value: &str, context: &str) -> Option<String> {
        cipher::decrypt(&self.encryption, value, context)
    }

    /// The encryption keys by id, and whether each is the one that encrypts. Secret.
    pub(crate) fn cipher_keys(&self) -> impl Iterator<Item = (&str, bool, &CipherKey)> {
        self.encryption
            .iter()
            .map(|(id, key)| (id.as_str(), *id == self.active_id, key))
    }
}

/// 32 bytes of `label`'s key from `material` (HKDF-SHA-256).
fn derive(material: &[u8], label: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    hkdf(material, label, &mut out);
    out
}

/// Fills `out` with `label`'s key from `material` (HKDF-SHA-256, the fixed salt).
fn hkdf(material: &[u8], label: &str, out: &mut [u8]) {
    Hkdf::<Sha256>::new(Some(HKDF_SALT), material)
        .expand(label.as_bytes(), out)
        .expect("at most 64 bytes is a valid HKDF-SHA-256 output length");
}

/// The bytes of a configured key: 64 hex digits and base64 are decoded, other text is
/// used as is. Fewer than [`MIN_KEY_BYTES`] is refused: a short key is guessable, and
/// an empty one (`PII_HMAC_KEY=`) would make every hash a public function.
fn key_material(name: &str, text: &str) -> Result<Vec<u8>, KeyError> {
    let bytes = sluice_core::secret::key_bytes(text);
    if bytes.len() < MIN_KEY_BYTES {
        return Err(KeyError(format!(
            "`{name}` is {} bytes; at least {MIN_KEY_BYTES} are required (generate one with `openssl rand -hex 32`)",
            bytes.len()
        )));
    }
    Ok(bytes)
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
            keys: key
                .map(|k| PiiKeys::new(k).expect("a test key of 32+ bytes"))
                .unwrap_or_default(),
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
        if !raw
            .key_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            || raw.key_id.is_empty()
        {
            return Err(doc.error_at(
                &at("key_id"),
                "`pii.key_id` may use letters, digits, `_` and `-` (it is part of every encrypted value)",
            ));
        }
        // `keys`: where the secret is under `pii:`, e.g. ["old_keys", "k0"].
        let material = |keys: &[&str], secret: &Secret| {
            let mut path = section.path.clone();
            path.extend(keys.iter().map(|k| k.to_string()));
            key_material(&format!("pii.{}", keys.join(".")), secret.expose())
                .map_err(|e| doc.error_at(&path, e.to_string()))
        };
        let key = raw
            .key
            .as_ref()
            .map(|k| material(&["key"], k))
            .transpose()?;
        let mut keys = PiiKeys {
            hmac: key.as_deref().map(|m| derive(m, HASH_LABEL)),
            active_id: raw.key_id.clone(),
            encryption: BTreeMap::new(),
        };
        let actions: Vec<PiiAction> = rules.iter().map(|r| r.2).chain(raw.default).collect();
        let needs_hmac = actions.contains(&PiiAction::Hash);
        let needs_cipher = actions.contains(&PiiAction::Encrypt);
        if keys.hmac.is_none() && (needs_hmac || needs_cipher && raw.encryption_key.is_none()) {
            return Err(doc.error_at(
                &at("key"),
                "`pii.key` is required to hash or encrypt (e.g. key: ${PII_HMAC_KEY}, 32+ bytes)",
            ));
        }
        if let Some(k) = &raw.encryption_key {
            let m = material(&["encryption_key"], k)?;
            keys.encryption
                .insert(raw.key_id.clone(), CipherKey::derive(&m, &raw.key_id));
        } else if let Some(m) = &key {
            keys.encryption
                .insert(raw.key_id.clone(), CipherKey::derive(m, &raw.key_id));
        }
        for (id, k) in &raw.old_keys {
            let m = material(&["old_keys", id.as_str()], k)?;
            keys.encryption
                .insert(id.clone(), CipherKey::derive(&m, id));
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

    /// A quarantined record of D1 `table` (its `raw` text) as the policy shows it: in a
    /// JSON record every field a rule or a mark (`marked`) makes personal is transformed
    /// like its column, at any depth (CleverTap nests `profileData`); text that is not
    /// JSON is redacted whole when the table may hold personal data, as nothing in it
    /// can be told apart.
    pub fn apply_to_raw(&self, table: &str, marked: &[String], raw: &str) -> String {
        match serde_json::from_str::<serde_json::Value>(raw) {
            Ok(mut value @ (serde_json::Value::Object(_) | serde_json::Value::Array(_))) => {
                self.apply_to_value(table, marked, &mut value);
                value.to_string()
            }
            _ if self.rules.is_empty() && marked.is_empty() => raw.to_string(),
            _ => redact(raw),
        }
    }

    fn apply_to_value(&self, table: &str, marked: &[String], value: &mut serde_json::Value) {
        use serde_json::Value;
        match value {
            Value::Object(fields) => {
                let names: Vec<String> = fields.keys().cloned().collect();
                for name in names {
                    let personal = marked.iter().any(|m| m.eq_ignore_ascii_case(&name));
                    let Some(action) = self.action(table, &name, personal) else {
                        if let Some(inner) = fields.get_mut(&name) {
                            self.apply_to_value(table, marked, inner);
                        }
                        continue;
                    };
                    let Some(field) = fields.get_mut(&name) else {
                        continue;
                    };
                    let text = match &*field {
                        Value::Null => continue,
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    let shown = match action {
                        PiiAction::Keep => continue,
                        PiiAction::Drop => {
                            fields.remove(&name);
                            continue;
                        }
                        PiiAction::Hash => self.keys.hmac_hex(&text),
                        PiiAction::MaskLast4 => Some(mask_last4(&text)),
                        PiiAction::Redact => Some(redact(&text)),
                        PiiAction::Encrypt => self.keys.encrypt(&text, &format!("{table}.{name}")),
                    };
                    *field = shown.map_or(Value::Null, Value::String);
                }
            }
            Value::Array(items) => {
                for item in items {
                    self.apply_to_value(table, marked, item);
                }
            }
            _ => {}
        }
    }

    /// The functions of this module, bound to the policy's keys.
    pub fn functions(&self) -> Vec<ScalarUDF> {
        let keys = Arc::new(self.keys.clone());
        let (k1, k2, k3) = (keys.clone(), keys.clone(), keys);
        vec![
            text_udf("hmac_sha256", Volatility::Immutable, move |v| {
                k1.hmac_hex(v)
            }),
            text2_udf("encrypt", Volatility::Volatile, move |v, context| {
                k2.encrypt(v, context)
            }),
            text2_udf("decrypt", Volatility::Immutable, move |v, context| {
                k3.decrypt(v, context)
            }),
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

/// Case-insensitive: `*.email` must catch a column a source spells `Email`.
fn glob(pattern: &str) -> Result<GlobMatcher, String> {
    GlobBuilder::new(pattern)
        .case_insensitive(true)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| format!("invalid pattern `{pattern}`: {e}"))
}

fn hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
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

/// A (text, text) → text function; NULL in either, NULL out; `None` from `f` is NULL.
pub(crate) fn text2_udf(
    name: &str,
    volatility: Volatility,
    f: impl Fn(&str, &str) -> Option<String> + Send + Sync + 'static,
) -> ScalarUDF {
    create_udf(
        name,
        vec![DataType::Utf8, DataType::Utf8],
        DataType::Utf8,
        volatility,
        Arc::new(move |args: &[ColumnarValue]| -> DfResult<ColumnarValue> {
            let values = utf8_arg(args, 0)?;
            let contexts = utf8_arg(args, 1)?;
            let out: StringArray = values
                .iter()
                .zip(contexts.iter())
                .map(|(v, c)| f(v?, c?))
                .collect();
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

    const KEY_ONE: &str = "test-key-one-0123456789abcdef-0123456789";
    const KEY_TWO: &str = "test-key-two-0123456789abcdef-0123456789";

    #[test]
    fn hashing_is_stable_and_keyed_and_encryption_round_trips() {
        let a = PiiKeys::new(KEY_ONE).unwrap();
        let b = PiiKeys::new(KEY_TWO).unwrap();
        assert_eq!(a.hmac_hex("x@y.z"), a.hmac_hex("x@y.z"));
        assert_ne!(a.hmac_hex("x@y.z"), b.hmac_hex("x@y.z"));
        let enc = a.encrypt("12 Main St", "profiles.address").unwrap();
        assert!(enc.starts_with("enc:v3:k1:"), "{enc}");
        assert!(!enc.contains("Main"));
        assert_eq!(
            a.decrypt(&enc, "profiles.address").as_deref(),
            Some("12 Main St")
        );
        assert_eq!(b.decrypt(&enc, "profiles.address"), None);
    }

    #[test]
    fn the_padded_key_blocks_give_the_same_hmac_through_plain_sha256() {
        use sha2::Digest;
        let keys = PiiKeys::new(KEY_ONE).unwrap();
        let (inner, outer) = keys.hmac_pads().unwrap();
        for message in ["", "x@y.z", "ünïcode@example.com"] {
            let first = Sha256::digest([&inner[..], message.as_bytes()].concat());
            let second = Sha256::digest([&outer[..], &first[..]].concat());
            assert_eq!(Some(hex(&second)), keys.hmac_hex(message), "{message}");
        }
        assert!(PiiKeys::default().hmac_pads().is_none());
    }

    #[test]
    fn a_ciphertext_decrypts_only_for_the_column_it_was_encrypted_from() {
        let keys = PiiKeys::new(KEY_ONE).unwrap();
        let enc = keys.encrypt("12 Main St", "profiles.address").unwrap();
        assert_eq!(keys.decrypt(&enc, "profiles.notes"), None);
        assert_eq!(keys.decrypt(&enc, "orders.address"), None);
        // Same bytes under another version or key id: refused, not misread.
        for relabelled in [
            enc.replacen("enc:v3:k1:", "enc:v3:k0:", 1),
            enc.replacen("enc:v3:k1:", "enc:v2:k1:", 1),
        ] {
            assert_eq!(keys.decrypt(&relabelled, "profiles.address"), None);
        }
    }

    /// An AES-256-GCM value as earlier versions wrote it, made independently (Python's
    /// `cryptography`: HKDF-SHA-256 of KEY_ONE, AES-GCM, nonce 0..11): still readable.
    #[test]
    fn values_encrypted_by_earlier_versions_still_decrypt() {
        let v2 = "enc:v2:k1:AAECAwQFBgcICQoLNHY7GjEog_SH_ubC0BY40b8uKwWu3vcCBTg";
        let keys = PiiKeys::new(KEY_ONE).unwrap();
        assert_eq!(
            keys.decrypt(v2, "profiles.address").as_deref(),
            Some("12 Main St")
        );
        assert_eq!(keys.decrypt(v2, "orders.address"), None);
        assert_eq!(
            PiiKeys::new(KEY_TWO)
                .unwrap()
                .decrypt(v2, "profiles.address"),
            None
        );
    }

    #[test]
    fn no_hashable_value_yields_a_key() {
        // The old scheme made the AES key = HMAC(pii.key, "sluice/aes-256-gcm/k1"): hashing
        // that label in a model published the key. Keys now come from HKDF labels and the
        // hash key is itself derived, so neither the labels nor the raw key hash to a key.
        let keys = PiiKeys::new(KEY_ONE).unwrap();
        // Every 32-byte key: AES-GCM, and the MAC and AES halves of AES-CBC-HMAC.
        let cipher_keys: Vec<String> = keys.encryption["k1"]
            .bytes()
            .iter()
            .flat_map(|k| k.chunks(32))
            .map(hex)
            .collect();
        assert_eq!(cipher_keys.len(), 3);
        let hash_key = hex(keys.hmac.as_ref().unwrap());
        for label in [
            "sluice/aes-256-gcm/k1",
            "sluice/pii/encrypt/aes-256-gcm/k1",
            "sluice/pii/encrypt/aes-256-cbc-hmac-sha-512/k1",
            HASH_LABEL,
            KEY_ONE,
        ] {
            let hashed = keys.hmac_hex(label).unwrap();
            assert!(
                !cipher_keys.contains(&hashed),
                "hash of {label:?} is an encryption key"
            );
            assert_ne!(hashed, hash_key, "hash of {label:?} is the hash key");
        }
        assert!(!cipher_keys.contains(&hash_key));
        let mut raw = <Hmac<Sha256> as Mac>::new_from_slice(KEY_ONE.as_bytes()).unwrap();
        raw.update(b"x@y.z");
        assert_ne!(
            keys.hmac_hex("x@y.z").unwrap(),
            hex(&raw.finalize().into_bytes()),
            "the hash key must be derived, not the configured text"
        );
    }

    fn parse(yaml: &str) -> Result<PiiPolicy, ConfigError> {
        struct NoEnv;
        impl sluice_core::config::Lookup for NoEnv {
            fn var(&self, _: &str) -> Option<String> {
                None
            }
        }
        let text = format!("name: t\nlake: ./lake\n{yaml}");
        let config = PipelineConfig::parse(
            "pipeline.yaml".into(),
            text,
            std::path::Path::new("."),
            &NoEnv,
        )?;
        PiiPolicy::parse(&config, config.pii.as_ref().expect("a pii section"))
    }

    #[test]
    fn short_or_empty_keys_are_refused_naming_the_key() {
        for key in [
            "\"\"",
            "demo-only-pii-key",
            "0123456789abcdef0123456789abcdef",
        ] {
            let err = parse(&format!(
                "pii:\n  key: {key}\n  columns: {{ \"*.email\": hash }}\n"
            ))
            .err()
            .unwrap_or_else(|| panic!("key {key} accepted"));
            let text = err.to_string();
            assert!(text.contains("pii.key"), "{text}");
            assert!(text.contains("at least 32"), "{text}");
        }
        let err = parse(&format!(
            "pii:\n  key: {KEY_ONE}\n  old_keys: {{ k0: short }}\n  columns: {{ \"*.a\": encrypt }}\n"
        ))
        .expect_err("a short old key is refused");
        assert!(err.to_string().contains("pii.old_keys.k0"), "{err}");
        // 64 hex digits are 32 bytes: accepted.
        parse(&format!(
            "pii:\n  key: \"{}\"\n  columns: {{ \"*.email\": hash }}\n",
            "ab".repeat(32)
        ))
        .unwrap();
        parse(&format!(
            "pii:\n  key: {KEY_ONE}\n  columns: {{ \"*.email\": hash }}\n"
        ))
        .unwrap();
    }

    #[test]
    fn quarantined_records_show_personal_fields_through_the_policy() {
        let p = PiiPolicy::new(Some(KEY_ONE), &[("*.phone", PiiAction::MaskLast4)]);
        let marked = vec!["email".to_string(), "address".to_string()];
        let raw = r#"{"identity":"C-1","email":"jane@example.com","phone":"+15551234567","profileData":{"Address":"12 Main St"},"n":3}"#;
        let shown: serde_json::Value =
            serde_json::from_str(&p.apply_to_raw("app_profiles", &marked, raw)).unwrap();
        assert_eq!(shown["identity"], "C-1");
        assert_eq!(shown["n"], 3);
        assert_eq!(
            shown["email"].as_str(),
            p.keys.hmac_hex("jane@example.com").as_deref()
        );
        assert_eq!(shown["phone"], "********4567");
        assert_eq!(
            shown["profileData"]["Address"].as_str(),
            p.keys.hmac_hex("12 Main St").as_deref()
        );
        // Not JSON: nothing can be told apart, so all of it is redacted.
        assert_eq!(
            p.apply_to_raw("app_profiles", &marked, "jane@example.com,12 Main St"),
            "****@*******.***,** **** **"
        );
        let none = PiiPolicy::new(Some(KEY_ONE), &[]);
        assert_eq!(none.apply_to_raw("orders", &[], "a,b"), "a,b");
    }

    #[test]
    fn rule_globs_ignore_case() {
        let p = PiiPolicy::new(Some(KEY_ONE), &[("*.email", PiiAction::Hash)]);
        assert_eq!(p.action("Profiles", "Email", false), Some(PiiAction::Hash));
        assert_eq!(p.action("profiles", "EMAIL", false), Some(PiiAction::Hash));
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
            Some(KEY_ONE),
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
