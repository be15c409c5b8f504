//! Sharded runs (issue #20): `sluice run --shard K/N` runs a deterministic share of
//! the plan's extraction slices; `sluice run --finalize` runs the models once every
//! shard of the round has published.
//!
//! - **Assignment**: the first shard of a round to plan a stream stores its slice keys
//!   (create-only, `<round>/plans/<source.stream>.json`); every shard takes the slices
//!   at positions `K, K+N, K+2N…` of that one list, so the shares differ by at most one
//!   slice (hashing each key alone gave 2, 3 and 11 of 16 Facebook accounts); the few
//!   left over after the last full round start at a shard that depends on the stream,
//!   so that they spread (see [`Shard::owns_position`]). A slice
//!   the stored list lacks (a shard planned differently: an account added meanwhile)
//!   belongs to shard `hash(source.stream/slice key) mod N` (SHA-256, so every process
//!   and version agrees): either way each key has exactly one owner.
//!   A stream whose write mode replaces the whole table (`replace`, any full refresh)
//!   goes whole to one shard (hash of `source.stream`): two shards replacing the same
//!   table would erase each other's rows. (`overwrite_partitions` is shared by slice:
//!   see **Shared partitions**.)
//! - **Round**: the shards and the finalize of one sharded run share a round id
//!   (`--round`, default: the run's `--today` date). Per round the lake records each
//!   shard's completion, `_state/<pipeline>/shards/<round>/<K>-of-<N>.json`, create-only:
//!   a shard already complete is not run again (a retried Indexed Job index converges).
//! - **Fencing**: before it extracts, a shard takes a lease, generation `g+1` of
//!   `…/<round>/leases/<K>-of-<N>/<g>.json`, with a create-only write: of two processes
//!   only one creates it. The owner writes a heartbeat beside it; a lease whose
//!   heartbeat is older than the lease time (kill -9), or released by its run's end,
//!   can be taken over (`--take-over` takes it at once). Before each publish the owner
//!   checks no later generation exists, and the destination checks the generation again
//!   as a fencing token inside the publish transaction ([`Fence`]): a process paused
//!   between the two checks (GC, SIGSTOP, a slow disk) still cannot publish.
//! - **Shared partitions**: a stream that overwrites date partitions is shared between
//!   the shards by slice like any other (accounts × windows: every shard has rows of the
//!   same dates). A shard's overwrite replaces, in the destination and in the lake, what
//!   earlier runs and its own earlier attempts left there, and keeps what the round's
//!   other shards published (rows by `_sluice_run_id`, files by run-id prefix).
//! - **Cursors**: a shard does not move cursors (the other shards plan from the same
//!   one); it proposes the cursor its share reached, and the finalize stores it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::destination::Fence;
use crate::lake::{layout, Lake, LakeError};
use crate::state::{StateError, StateStore};

/// One share of a sharded run: `index` of `count` (`K/N`, `0 ≤ K < N`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl std::str::FromStr for Shard {
    type Err = String;

    fn from_str(text: &str) -> Result<Shard, String> {
        let bad = || format!("--shard {text:?}: expected K/N with 0 ≤ K < N (e.g. 0/3)");
        let (k, n) = text.split_once('/').ok_or_else(bad)?;
        let index: u32 = k.trim().parse().map_err(|_| bad())?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Shard {
    /// Whether `key` (see [`slice_key`]) is this shard's to run.
    pub fn owns(&self, key: &str) -> bool {
        let digest = Sha256::digest(key.as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_be_bytes(first) % u64::from(self.count) == u64::from(self.index)
    }

    /// Whether the slice at `position` of a stream's stored slice list (`len` slices)
    /// is this shard's. Slices go round the shards from shard 0, so streams planned per
    /// account (Facebook's five) give each shard the same accounts, whose details only
    /// it looks up. The `len mod N` slices left over after the last full round start
    /// at shard `stream mod N` instead (`stream`: the stream's place among its source's
    /// streams): 16 accounts on 3 shards then split each stream 6/5/5 with the sixth
    /// account's streams on different shards, not every stream's on shard 0 (which made
    /// it the last to finish by a sixth of the work).
    pub fn owns_position(&self, position: usize, len: usize, stream: usize) -> bool {
        let count = self.count as usize;
        let full_rounds = len - len % count;
        let owner = if position < full_rounds {
            position % count
        } else {
            (position - full_rounds + stream) % count
        };
        owner == self.index as usize
    }

    /// `K-of-N`: the file name part of this shard's records.
    pub fn label(&self) -> String {
        format!("{}-of-{}", self.index, self.count)
    }
}

/// The key a slice is assigned by: `source.stream/slice key`; a stream assigned whole
/// (see the module doc) uses `source.stream`. A key's `@…` suffix says when the slice
/// was planned (`deletes@20240701T…`, `all@2024-07-01`), which differs between the
/// shards' plans, so it is left out: every shard agrees on who runs the slice.
pub fn slice_key(task: &str, slice: Option<&str>) -> String {
    match slice {
        Some(slice) => format!("{task}/{}", stable_slice_key(slice)),
        None => task.to_string(),
    }
}

/// A slice key without its `@…` planning-time suffix (see [`slice_key`]).
pub fn stable_slice_key(slice: &str) -> &str {
    slice.split_once('@').map_or(slice, |(what, _)| what)
}

/// The records of a round are kept per `--select` (an Airflow DAG shards each source
/// as its own task): `all`, or the patterns with anything but `[A-Za-z0-9._-]` as `_`.
pub fn scope_of(select: &[String]) -> String {
    if select.is_empty() {
        return "all".to_string();
    }
    let mut patterns = select.to_vec();
    patterns.sort();
    patterns
        .join(",")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Which part of the plan a run executes.
#[derive(Clone, Default)]
pub enum RunPart {
    /// Every selected node (an unsharded run).
    #[default]
    Whole,
    /// The shard's extraction slices; no models.
    Shard(ShardRun),
    /// The selected models and checks only.
    Finalize,
}

/// A running shard: its share, round and lease.
#[derive(Clone)]
pub struct ShardRun {
    pub shard: Shard,
    /// `<round>/<scope>`: where this shard's records are (see [`scope_of`]).
    pub round: String,
    pub lease: Arc<Lease>,
    pub ledger: ShardLedger,
}

impl ShardRun {
    /// The fencing token this shard's loads carry into the destination's transaction:
    /// its lease generation, per `<pipeline>/<round>/<scope>` and shard.
    pub fn fence(&self, pipeline: &str) -> Fence {
        Fence {
            round: format!("{pipeline}/{}", self.round),
            shard: self.shard.label(),
            token: self.lease.generation,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error(transparent)]
    Lake(#[from] LakeError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("shard {shard} of round {round} is held by run {owner} (heartbeat {age_s} s ago; the lease expires after {lease_s} s without one): not running it twice. Re-run after the lease expires, or with --take-over if that run is dead")]
    Held {
        shard: Shard,
        round: String,
        owner: String,
        age_s: i64,
        lease_s: u64,
    },
    #[error("shard {shard} of round {round} was taken over by run {by}: this run stops without publishing")]
    Fenced {
        shard: Shard,
        round: String,
        by: String,
    },
    #[error("state object {path} is corrupt: {message}")]
    Corrupt { path: String, message: String },
}

/// A lease generation: who took the shard, and when.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LeaseRecord {
    generation: u64,
    run_id: String,
    host: String,
    pid: u32,
    taken_at: DateTime<Utc>,
}

/// The owner's heartbeat, rewritten while it runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Heartbeat {
    at: DateTime<Utc>,
    /// The run ended (whatever its outcome): the shard is free at once.
    released: bool,
}

/// A shard's completion in a round.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardCompletion {
    pub round: String,
    pub shard: Shard,
    pub run_id: String,
    pub finished_at: DateTime<Utc>,
    /// Tasks the shard ran, with their slice counts.
    pub slices: BTreeMap<String, u64>,
}

/// The cursor a shard's share of one stream reached.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CursorProposal {
    /// The cursor version every shard planned from.
    pub from_version: Option<u64>,
    /// The plan's cursor after all slices (the same in every shard).
    pub planned: Option<Value>,
    /// A cursor learnt while reading: (the slice's index in the whole plan, value).
    pub reached: Option<(usize, Value)>,
}

/// Where a round stands, for `--finalize`.
#[derive(Debug, PartialEq)]
pub enum RoundStatus {
    NoShards,
    /// Shards of the round recorded different counts.
    Mixed(BTreeSet<u32>),
    /// The shards that have not published: `K/N (scope)`.
    Pending {
        missing: Vec<String>,
    },
    Complete {
        shards: u32,
    },
}

/// The shard records of one pipeline in the lake.
#[derive(Clone, Debug)]
pub struct ShardLedger {
    lake: Lake,
    prefix: String,
}

fn to_json<T: Serialize>(value: &T) -> Bytes {
    Bytes::from(serde_json::to_vec_pretty(value).expect("shard records serialize"))
}

impl ShardLedger {
    pub fn new(lake: Lake, pipeline: &str) -> ShardLedger {
        ShardLedger {
            prefix: format!("{}/shards", layout::state(pipeline)),
            lake,
        }
    }

    fn round_dir(&self, round: &str) -> String {
        format!("{}/{round}", self.prefix)
    }

    fn completion_path(&self, round: &str, shard: Shard) -> String {
        format!("{}/{}.json", self.round_dir(round), shard.label())
    }

    fn lease_dir(&self, round: &str, shard: Shard) -> String {
        format!("{}/leases/{}", self.round_dir(round), shard.label())
    }

    fn plan_path(&self, round: &str, task: &str) -> String {
        format!("{}/plans/{task}.json", self.round_dir(round))
    }

    fn proposal_path(&self, round: &str, task: &str, shard: Shard) -> String {
        format!(
            "{}/cursors/{task}/{}.json",
            self.round_dir(round),
            shard.label()
        )
    }

    async fn read<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<Option<T>, ShardError> {
        let Some(bytes) = self.lake.get(path).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ShardError::Corrupt {
                path: path.to_string(),
                message: e.to_string(),
            })
    }

    /// The shard's completion in `round` (`<round>/<scope>` here and in the shard's
    /// other records), if it has published.
    pub async fn completion(
        &self,
        round: &str,
        shard: Shard,
    ) -> Result<Option<ShardCompletion>, ShardError> {
        self.read(&self.completion_path(round, shard)).await
    }

    /// Records the shard's completion (create-only); `false` if it was already recorded.
    pub async fn complete(
        &self,
        round: &str,
        completion: &ShardCompletion,
    ) -> Result<bool, ShardError> {
        let path = self.completion_path(round, completion.shard);
        Ok(self.lake.put_new(&path, to_json(completion)).await?)
    }

    /// Which shards of `round` have published, per scope (see [`scope_of`]); the
    /// round is complete when every scope that any shard ran in is.
    /// `scopes`: only those (a finalize of some models waits only for their sources).
    pub async fn round_status(
        &self,
        round: &str,
        scopes: Option<&BTreeSet<String>>,
    ) -> Result<RoundStatus, ShardError> {
        let dir = format!("{}/", self.round_dir(round));
        let mut done: BTreeMap<String, BTreeMap<u32, BTreeSet<u32>>> = BTreeMap::new();
        for object in self.lake.list(&dir).await? {
            let Some((scope, name)) = object
                .path
                .strip_prefix(&dir)
                .and_then(|rest| rest.split_once('/'))
            else {
                continue;
            };
            let Some((k, n)) = name
                .strip_suffix(".json")
                .and_then(|label| label.split_once("-of-"))
            else {
                continue;
            };
            if scopes.is_some_and(|only| !only.contains(scope)) {
                continue;
            }
            if let (Ok(k), Ok(n)) = (k.parse::<u32>(), n.parse::<u32>()) {
                done.entry(scope.to_string())
                    .or_default()
                    .entry(n)
                    .or_default()
                    .insert(k);
            }
        }
        if done.is_empty() {
            return Ok(RoundStatus::NoShards);
        }
        let mut missing = Vec::new();
        // A scope the finalize waits for with no shard published yet (unless the
        // round was sharded as a whole).
        if let (Some(only), false) = (scopes, done.contains_key("all")) {
            missing.extend(
                only.iter()
                    .filter(|scope| *scope != "all" && !done.contains_key(*scope))
                    .map(|scope| format!("all ({scope})")),
            );
        }
        let mut total = 0;
        for (scope, counts) in &done {
            if counts.len() > 1 {
                return Ok(RoundStatus::Mixed(counts.keys().copied().collect()));
            }
            let (&count, published) = counts.iter().next().expect("one count");
            total += count;
            missing.extend(
                (0..count)
                    .filter(|k| !published.contains(k))
                    .map(|k| format!("{k}/{count} ({scope})")),
            );
        }
        Ok(if missing.is_empty() {
            RoundStatus::Complete { shards: total }
        } else {
            RoundStatus::Pending { missing }
        })
    }

    /// Takes the shard's lease for `run_id`: create-only, so of two processes one wins.
    /// A lease still alive (heartbeat within `lease`) is refused unless `take_over`.
    pub async fn acquire(
        &self,
        round: &str,
        shard: Shard,
        run_id: &str,
        lease: Duration,
        take_over: bool,
    ) -> Result<Lease, ShardError> {
        let dir = self.lease_dir(round, shard);
        let latest = self.latest_lease(&dir).await?;
        if let (Some(current), false) = (&latest, take_over) {
            let heartbeat: Option<Heartbeat> =
                self.read(&heartbeat_path(&dir, current.generation)).await?;
            let last_alive = heartbeat
                .as_ref()
                .map_or(current.taken_at, |h| h.at.max(current.taken_at));
            let released = heartbeat.is_some_and(|h| h.released);
            let age = Utc::now() - last_alive;
            if !released && age < chrono::Duration::from_std(lease).unwrap_or_default() {
                return Err(ShardError::Held {
                    shard,
                    round: round.to_string(),
                    owner: current.run_id.clone(),
                    age_s: age.num_seconds(),
                    lease_s: lease.as_secs(),
                });
            }
        }
        let generation = latest.as_ref().map_or(0, |l| l.generation) + 1;
        let record = LeaseRecord {
            generation,
            run_id: run_id.to_string(),
            host: hostname(),
            pid: std::process::id(),
            taken_at: Utc::now(),
        };
        let path = lease_path(&dir, generation);
        if !self.lake.put_new(&path, to_json(&record)).await? {
            // Another process took this generation first.
            let winner: Option<LeaseRecord> = self.read(&path).await?;
            return Err(ShardError::Held {
                shard,
                round: round.to_string(),
                owner: winner.map(|w| w.run_id).unwrap_or_default(),
                age_s: 0,
                lease_s: lease.as_secs(),
            });
        }
        let lease = Lease {
            ledger: self.clone(),
            dir,
            round: round.to_string(),
            shard,
            generation,
            heartbeat: std::sync::Mutex::new(None),
        };
        lease.beat(false).await?;
        Ok(lease)
    }

    /// The run ids that took a lease on another shard than `shard` in `round`: whose
    /// files a shard's partition overwrite in the lake keeps (each shard of a round
    /// owns some slices of the same partitions; see `Fence`).
    pub async fn other_shards_runs(
        &self,
        round: &str,
        shard: Shard,
    ) -> Result<BTreeSet<String>, ShardError> {
        let dir = format!("{}/leases/", self.round_dir(round));
        let own = format!("{dir}{}/", shard.label());
        let mut runs = BTreeSet::new();
        for object in self.lake.list(&dir).await? {
            if object.path.starts_with(&own)
                || !object.path.ends_with(".json")
                || object.path.ends_with(".alive.json")
            {
                continue;
            }
            if let Some(lease) = self.read::<LeaseRecord>(&object.path).await? {
                runs.insert(lease.run_id);
            }
        }
        Ok(runs)
    }

    async fn latest_lease(&self, dir: &str) -> Result<Option<LeaseRecord>, ShardError> {
        let objects = self.lake.list(&format!("{dir}/")).await?;
        let Some(last) = objects
            .iter()
            .rev()
            .find(|o| o.path.ends_with(".json") && !o.path.ends_with(".alive.json"))
        else {
            return Ok(None);
        };
        self.read(&last.path).await
    }

    /// The stable slice keys of `task` in `round` as the first shard to plan it stored
    /// them (create-only; `keys` themselves when this shard is the first): the list the
    /// shards assign slices by position in (see the module doc).
    pub async fn slice_order(
        &self,
        round: &str,
        task: &str,
        keys: Vec<String>,
    ) -> Result<Vec<String>, ShardError> {
        let path = self.plan_path(round, task);
        if self.lake.put_new(&path, to_json(&keys)).await? {
            return Ok(keys);
        }
        Ok(self.read(&path).await?.unwrap_or(keys))
    }

    /// Stores the cursor a shard's share of `task` reached (overwritten by a retry).
    pub async fn propose_cursor(
        &self,
        round: &str,
        task: &str,
        shard: Shard,
        proposal: &CursorProposal,
    ) -> Result<(), ShardError> {
        let path = self.proposal_path(round, task, shard);
        Ok(self.lake.put(&path, to_json(proposal)).await?)
    }

    /// Stores, per stream, the cursor the round's shards reached together: the learnt
    /// cursor of the last slice of the whole plan, else the planned one. Streams whose
    /// stored cursor moved since the shards planned are left (the save would conflict).
    /// Returns the streams whose cursor moved.
    pub async fn finalize_cursors(
        &self,
        round: &str,
        state: &StateStore,
        run_id: &str,
        scopes: Option<&BTreeSet<String>>,
    ) -> Result<Vec<String>, ShardError> {
        let dir = format!("{}/", self.round_dir(round));
        let mut by_task: BTreeMap<String, Vec<CursorProposal>> = BTreeMap::new();
        for object in self.lake.list(&dir).await? {
            let parts: Vec<&str> = object.path[dir.len()..].split('/').collect();
            let [scope, "cursors", task, _label] = parts.as_slice() else {
                continue;
            };
            if scopes.is_some_and(|only| !only.contains(*scope)) {
                continue;
            }
            if let Some(proposal) = self.read::<CursorProposal>(&object.path).await? {
                by_task.entry(task.to_string()).or_default().push(proposal);
            }
        }
        let mut moved = Vec::new();
        for (task, proposals) in by_task {
            let Some((source, stream)) = task.split_once('.') else {
                continue;
            };
            let from = proposals[0].from_version;
            if proposals.iter().any(|p| p.from_version != from) {
                tracing::warn!(%task, "shards planned from different cursors; not moving it");
                continue;
            }
            let reached = proposals
                .iter()
                .filter_map(|p| p.reached.clone())
                .max_by_key(|(index, _)| *index)
                .map(|(_, value)| value);
            let Some(value) = reached.or_else(|| proposals[0].planned.clone()) else {
                continue;
            };
            let current = state.cursor(source, stream).await?.map(|c| c.version);
            if current != from {
                // Already stored by an earlier finalize of this round, or moved by another run.
                continue;
            }
            state
                .save_cursor(source, stream, from, run_id, value)
                .await?;
            moved.push(task);
        }
        Ok(moved)
    }
}

fn lease_path(dir: &str, generation: u64) -> String {
    format!("{dir}/{generation:010}.json")
}

fn heartbeat_path(dir: &str, generation: u64) -> String {
    format!("{dir}/{generation:010}.alive.json")
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_default()
}

/// A held shard lease. [`Lease::keep_alive`] starts its heartbeat; [`Lease::release`]
/// frees it when the run ends.
pub struct Lease {
    ledger: ShardLedger,
    dir: String,
    round: String,
    shard: Shard,
    generation: u64,
    heartbeat: std::sync::Mutex<Option<tokio_util::task::AbortOnDropHandle<()>>>,
}

impl Lease {
    async fn beat(&self, released: bool) -> Result<(), ShardError> {
        let beat = Heartbeat {
            at: Utc::now(),
            released,
        };
        let path = heartbeat_path(&self.dir, self.generation);
        Ok(self.ledger.lake.put(&path, to_json(&beat)).await?)
    }

    /// Rewrites the heartbeat every `every` until the lease is released or dropped.
    pub fn keep_alive(self: &Arc<Self>, every: Duration) {
        let lease = Arc::downgrade(self);
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(lease) = lease.upgrade() else { return };
                if let Err(e) = lease.beat(false).await {
                    tracing::warn!("cannot renew the shard lease: {e}");
                }
            }
        });
        *self.heartbeat.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(tokio_util::task::AbortOnDropHandle::new(task));
    }

    /// `Err(Fenced)` if another process has taken the shard since: checked before
    /// every publish, so a process that lost its lease publishes nothing.
    pub async fn check(&self) -> Result<(), ShardError> {
        match self.ledger.latest_lease(&self.dir).await? {
            Some(latest) if latest.generation != self.generation => Err(ShardError::Fenced {
                shard: self.shard,
                round: self.round.clone(),
                by: latest.run_id,
            }),
            _ => Ok(()),
        }
    }

    /// Stops the heartbeat and marks the lease free: a retry need not wait for it.
    pub async fn release(&self) -> Result<(), ShardError> {
        self.heartbeat
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        self.beat(true).await
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("dir", &self.dir)
            .field("generation", &self.generation)
            .finish()
    }
}

#[cfg(test)]
mod tests;
