//! The audit log: who ran, replayed, cancelled, queried unmasked data (and, later,
//! erased a subject), as append-only, hash-chained JSON lines in the lake.
//!
//! Each entry is one create-only object, `_state/<pipeline>/audit/<seq>.jsonl`
//! (`put_new`: an entry is never overwritten, two writers never share a number).
//! An entry carries `prev`, the hash of the entry before it, and `hash`, the
//! SHA-256 of its own content with `prev`: [`AuditLog::verify`] recomputes both,
//! so an edited, deleted (but the last) or reordered entry breaks the chain. What a
//! chain cannot show alone is the newest entries being cut off or rewritten
//! together: `verify` prints the head hash, to keep elsewhere and compare.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::lake::{layout, Lake, LakeError};

/// `prev` of the first entry.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Who did something: the OS user and host, and the `serve.tokens` name when the
/// request came through `sluice serve`'s API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub user: String,
    pub host: String,
    pub token: Option<String>,
}

impl Actor {
    /// This process's user and host.
    pub fn local() -> Actor {
        let user = ["USER", "LOGNAME", "USERNAME"]
            .iter()
            .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()))
            .unwrap_or_else(|| "unknown".into());
        let host = ["/proc/sys/kernel/hostname", "/etc/hostname"]
            .iter()
            .find_map(|p| std::fs::read_to_string(p).ok())
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "unknown".into());
        Actor {
            user,
            host,
            token: None,
        }
    }

    /// This process, acting for the API token `name`.
    pub fn with_token(name: &str) -> Actor {
        Actor {
            token: Some(name.to_string()),
            ..Actor::local()
        }
    }
}

/// What is hashed: everything but the entry's own hash, in this field order.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Content {
    seq: u64,
    at: String,
    action: String,
    #[serde(flatten)]
    actor: Actor,
    details: serde_json::Value,
    prev: String,
}

/// One entry as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    #[serde(flatten)]
    content: Content,
    pub hash: String,
}

impl Entry {
    pub fn seq(&self) -> u64 {
        self.content.seq
    }
    pub fn action(&self) -> &str {
        &self.content.action
    }
    pub fn actor(&self) -> &Actor {
        &self.content.actor
    }
    pub fn details(&self) -> &serde_json::Value {
        &self.content.details
    }
    pub fn at(&self) -> &str {
        &self.content.at
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Lake(#[from] LakeError),
    /// The chain is broken: `object` names where, `message` how.
    #[error("audit log broken at {object}: {message}")]
    Broken { object: String, message: String },
}

/// What [`AuditLog::verify`] found in an intact log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub entries: u64,
    /// The hash of the newest entry (the genesis value for an empty log).
    pub head: String,
}

/// A pipeline's audit log in the lake.
#[derive(Debug, Clone)]
pub struct AuditLog {
    lake: Lake,
    folder: String,
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn content_hash(content: &Content) -> String {
    sha256_hex(&serde_json::to_vec(content).expect("audit content serialises"))
}

impl AuditLog {
    pub fn new(lake: Lake, pipeline: &str) -> AuditLog {
        AuditLog {
            lake,
            folder: format!("{}/audit", layout::state(pipeline)),
        }
    }

    fn object(&self, seq: u64) -> String {
        format!("{}/{seq:012}.jsonl", self.folder)
    }

    /// Appends an entry after the newest one; retried when another writer took its number.
    pub async fn append(
        &self,
        action: &str,
        actor: &Actor,
        details: serde_json::Value,
    ) -> Result<Entry, AuditError> {
        loop {
            // Only the newest entry is read: appending stays cheap however long the log.
            let newest = self.lake.list(&format!("{}/", self.folder)).await?.pop();
            let (seq, prev) = match newest {
                None => (1, GENESIS.to_string()),
                Some(object) => {
                    let body = self.lake.get(&object.path).await?.unwrap_or_default();
                    match serde_json::from_slice::<Entry>(&body) {
                        Ok(entry) => (entry.seq() + 1, entry.hash),
                        Err(_) => {
                            return Err(AuditError::Broken {
                                object: object.path,
                                message: "the newest entry is not an audit entry".into(),
                            })
                        }
                    }
                }
            };
            let content = Content {
                seq,
                at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                action: action.to_string(),
                actor: actor.clone(),
                details: details.clone(),
                prev,
            };
            let entry = Entry {
                hash: content_hash(&content),
                content,
            };
            let mut line = serde_json::to_vec(&entry).expect("audit entry serialises");
            line.push(b'\n');
            if self
                .lake
                .put_new(&self.object(seq), Bytes::from(line))
                .await?
            {
                return Ok(entry);
            }
        }
    }

    /// Every stored object of the log, oldest first, parsed when it parses.
    async fn entries(&self) -> Result<Vec<(String, Result<Entry, String>)>, AuditError> {
        let mut out = Vec::new();
        for object in self.lake.list(&format!("{}/", self.folder)).await? {
            let Some(body) = self.lake.get(&object.path).await? else {
                continue;
            };
            let parsed = serde_json::from_slice::<Entry>(&body).map_err(|e| e.to_string());
            out.push((object.path, parsed));
        }
        Ok(out)
    }

    /// The entries, oldest first, once the chain is checked.
    pub async fn read(&self) -> Result<Vec<Entry>, AuditError> {
        let mut entries = Vec::new();
        let mut prev = GENESIS.to_string();
        for (expected, (object, parsed)) in (1u64..).zip(self.entries().await?) {
            let broken = |message: String| AuditError::Broken {
                object: object.clone(),
                message,
            };
            let entry = parsed.map_err(|e| broken(format!("not an audit entry ({e}): edited")))?;
            if object != self.object(entry.seq()) {
                return Err(broken(format!(
                    "it says it is entry {} (entries were renamed or reordered)",
                    entry.seq()
                )));
            }
            if entry.seq() != expected {
                return Err(broken(format!(
                    "entry {expected} is missing before it (deleted)"
                )));
            }
            if content_hash(&entry.content) != entry.hash {
                return Err(broken(format!(
                    "entry {expected} was edited: its content does not match its hash"
                )));
            }
            if entry.content.prev != prev {
                return Err(broken(format!(
                    "entry {expected} does not follow entry {} (an entry before it was \
                     replaced, reordered or deleted)",
                    expected - 1
                )));
            }
            prev = entry.hash.clone();
            entries.push(entry);
        }
        Ok(entries)
    }

    /// Checks the whole chain.
    pub async fn verify(&self) -> Result<Verified, AuditError> {
        let entries = self.read().await?;
        Ok(Verified {
            entries: entries.len() as u64,
            head: entries
                .last()
                .map_or_else(|| GENESIS.to_string(), |e| e.hash.clone()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn log_of_three() -> (tempfile::TempDir, Lake, AuditLog) {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open("lake", dir.path()).unwrap();
        let log = AuditLog::new(lake.clone(), "p");
        let actor = Actor::with_token("ops");
        for n in 1..=3 {
            let entry = log
                .append("run", &actor, serde_json::json!({ "n": n }))
                .await
                .unwrap();
            assert_eq!(entry.seq(), n);
        }
        (dir, lake, log)
    }

    #[tokio::test]
    async fn an_edit_with_a_recomputed_hash_breaks_the_next_link() {
        let (_dir, lake, log) = log_of_three().await;
        let intact = log.verify().await.unwrap();
        assert_eq!(intact.entries, 3);
        assert_eq!(
            log.read().await.unwrap()[0].actor().token.as_deref(),
            Some("ops")
        );

        // Entry 2 rewritten consistently (its own hash fits): entry 3 no longer follows.
        let path = log.object(2);
        let mut entry: Entry =
            serde_json::from_slice(&lake.get(&path).await.unwrap().unwrap()).unwrap();
        entry.content.details = serde_json::json!({ "n": 20 });
        entry.hash = content_hash(&entry.content);
        lake.put(&path, Bytes::from(serde_json::to_vec(&entry).unwrap()))
            .await
            .unwrap();
        let err = log.verify().await.unwrap_err().to_string();
        assert!(
            err.contains("000000000003.jsonl") && err.contains("does not follow entry 2"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn appending_after_a_broken_head_is_refused_and_the_head_is_the_last_hash() {
        let (_dir, lake, log) = log_of_three().await;
        let last = log.read().await.unwrap().pop().unwrap();
        assert_eq!(log.verify().await.unwrap().head, last.hash);
        lake.put(&log.object(4), Bytes::from_static(b"not json"))
            .await
            .unwrap();
        let err = log
            .append("run", &Actor::local(), serde_json::Value::Null)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("000000000004.jsonl"), "{err}");
    }
}
