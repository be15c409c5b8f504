//! Run records as the server reads them: from the lake, cached by object version.
//!
//! Every page and `/metrics` scrape needs all records, and a pipeline that runs every
//! five minutes has ~10,000 of them after a month. Reading and parsing each one per
//! request would cost seconds; listing the folder is cheap, so a record is read again
//! only when its object changed (size, time or e-tag) — a running run's record is
//! rewritten when it ends, and picked up then. Listing 10,000 objects still takes
//! ~0.1 s, so a listing is reused for [`LISTING_TTL`]; this server's own runs
//! invalidate it when they end, so only runs made elsewhere (`sluice run`, an Airflow
//! task) show up that much later.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_core::lake::{Lake, LakeObject};
use sluice_core::run::RunRecord;
use tokio::sync::Mutex;

/// How long a listing of the records is reused.
pub const LISTING_TTL: Duration = Duration::from_secs(2);

/// What identifies one version of a record object.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Version {
    size: u64,
    modified: chrono::DateTime<chrono::Utc>,
    e_tag: Option<String>,
}

impl Version {
    fn of(object: &LakeObject) -> Self {
        Version {
            size: object.size,
            modified: object.last_modified,
            e_tag: object.e_tag.clone(),
        }
    }
}

/// The run records of one pipeline, refreshed from the lake on each read.
pub struct RecordCache {
    lake: Lake,
    dir: String,
    cached: Mutex<Cached>,
}

#[derive(Default)]
struct Cached {
    by_path: HashMap<String, (Version, Arc<RunRecord>)>,
    /// The last answer and when it was listed; `None` after [`RecordCache::invalidate`].
    listed: Option<(Instant, Vec<Arc<RunRecord>>)>,
}

impl RecordCache {
    pub fn new(lake: Lake, pipeline: &str) -> Self {
        RecordCache {
            lake,
            dir: format!("{}/runs", sluice_core::lake::layout::state(pipeline)),
            cached: Mutex::new(Cached::default()),
        }
    }

    /// All records, oldest first (run ids sort by start time). An unreadable record
    /// is an error naming it, as in `sluice runs`.
    pub async fn all(&self) -> Result<Vec<Arc<RunRecord>>, String> {
        // One reader at a time: concurrent scrapes wait for one refresh, not N.
        let mut cached = self.cached.lock().await;
        if let Some((at, records)) = &cached.listed {
            if at.elapsed() < LISTING_TTL {
                return Ok(records.clone());
            }
        }
        let mut objects = self.lake.list(&self.dir).await.map_err(|e| e.to_string())?;
        objects.sort_by(|a, b| a.path.cmp(&b.path));
        let mut out = Vec::with_capacity(objects.len());
        let mut seen = HashMap::with_capacity(objects.len());
        for object in objects.iter().filter(|o| o.path.ends_with(".json")) {
            let version = Version::of(object);
            let record = match cached.by_path.get(&object.path) {
                Some((v, record)) if *v == version => record.clone(),
                _ => {
                    let Some(bytes) = self
                        .lake
                        .get(&object.path)
                        .await
                        .map_err(|e| e.to_string())?
                    else {
                        continue; // removed since it was listed
                    };
                    let record: RunRecord = serde_json::from_slice(&bytes)
                        .map_err(|e| format!("run record {} is corrupt: {e}", object.path))?;
                    Arc::new(record)
                }
            };
            seen.insert(object.path.clone(), (version, record.clone()));
            out.push(record);
        }
        cached.by_path = seen;
        cached.listed = Some((Instant::now(), out.clone()));
        Ok(out)
    }

    /// Forgets the last listing (a run of this server just wrote its record).
    pub async fn invalidate(&self) {
        self.cached.lock().await.listed = None;
    }
}
