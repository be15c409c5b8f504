//! `lake_encryption:` in pipeline.yaml: where the lake's master key comes from.
//!
//! ```yaml
//! lake_encryption:
//!   master_key: ${file:/run/secrets/lake.key}     # or ${LAKE_MASTER_KEY}
//! # or, for Vault / a cloud KMS CLI (run without a shell; its stdout is the key):
//! lake_encryption:
//!   key_command: [vault, kv, get, -field=key, secret/sluice/lake]
//! ```
//!
//! The key is 32+ bytes: 64 hex digits (`openssl rand -hex 32`), base64, or text.
//! It is held as a [`Secret`], so it never prints and is scrubbed from logs.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::envelope::MasterKey;
use crate::config::{unset_variable, ConfigError, PipelineConfig};
use crate::secret::{key_bytes, redact, Secret};

/// How long a `key_command` may take before it is killed.
const KEY_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// The `lake_encryption:` section.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LakeEncryptionConfig {
    /// The master key itself, interpolated: `${file:/run/secrets/lake.key}` or
    /// `${LAKE_MASTER_KEY}` (never the key written into the file).
    #[serde(default)]
    pub master_key: Option<Secret>,
    /// A program and its arguments (no shell) that print the master key on stdout,
    /// e.g. a Vault or KMS command line; run each time sluice opens the lake.
    #[serde(default)]
    pub key_command: Option<Vec<String>>,
}

/// The master key `lake_encryption:` names, or `None` for a plain lake. Errors point
/// at the setting that failed (file:line).
pub fn configured_master_key(config: &PipelineConfig) -> Result<Option<MasterKey>, ConfigError> {
    let Some(section) = &config.lake_encryption else {
        return Ok(None);
    };
    let parsed: LakeEncryptionConfig = config.doc.parse_section(section)?;
    let at = |key: &str| {
        let mut path = section.path.clone();
        path.push(key.to_string());
        path
    };
    // Commands that only inspect the lake load the file leniently; the key they still need.
    let unset = parsed
        .master_key
        .iter()
        .map(|k| ("master_key", k.expose().to_string()))
        .chain(
            parsed
                .key_command
                .iter()
                .flatten()
                .map(|a| ("key_command", a.clone())),
        )
        .find_map(|(key, value)| unset_variable(&value).map(|name| (key, name)));
    if let Some((key, name)) = unset {
        return Err(config.doc.error_at(
            &at(key),
            format!("environment variable {name} is not set (the lake's master key needs it)"),
        ));
    }
    let (text, key) = match (parsed.master_key, parsed.key_command) {
        (Some(_), Some(_)) => {
            return Err(config.doc.error_at(
                &section.path,
                "give either `master_key` or `key_command`, not both",
            ))
        }
        (None, None) => {
            return Err(config.doc.error_at(
                &section.path,
                "needs `master_key: ${file:/path/to/key}` (or ${VAR}) or `key_command: [program, args…]`",
            ))
        }
        (Some(key), None) => (key, "master_key"),
        (None, Some(command)) => (
            run_key_command(&command).map_err(|m| config.doc.error_at(&at("key_command"), m))?,
            "key_command",
        ),
    };
    MasterKey::from_material(&key_bytes(text.expose()))
        .map(Some)
        .map_err(|m| config.doc.error_at(&at(key), m))
}

/// A master key from a file's content or a variable's value (`sluice lake rotate-key`).
pub fn master_key_from_text(text: &str) -> Result<MasterKey, String> {
    let secret = Secret::new(text.trim());
    MasterKey::from_material(&key_bytes(secret.expose()))
}

/// Runs `command` and returns what it printed, as a secret.
pub fn run_key_command(command: &[String]) -> Result<Secret, String> {
    let Some((program, args)) = command.split_first() else {
        return Err("is empty; give the program and its arguments".into());
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run `{program}`: {e}"))?;
    // A key is a few bytes, so the pipes cannot fill while the child runs.
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if started.elapsed() > KEY_COMMAND_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "`{program}` did not finish within {}s",
                KEY_COMMAND_TIMEOUT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut out) = child.stdout.take() {
        out.read_to_string(&mut stdout)
            .map_err(|e| format!("`{program}` printed no text: {e}"))?;
    }
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut stderr);
    }
    let key = Secret::new(stdout.trim());
    if !status.success() {
        let said = redact(stderr.lines().next().unwrap_or("").trim());
        return Err(format!("`{program}` failed ({status}): {said}"));
    }
    if key.is_empty() {
        return Err(format!("`{program}` printed nothing on stdout"));
    }
    Ok(key)
}
