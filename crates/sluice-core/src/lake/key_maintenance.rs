//! `sluice lake verify` and `sluice lake rotate-key` on an encrypted lake: walking
//! every stored object below the [`LakeStore`]'s view (sidecars included).

use std::collections::HashSet;

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutMode};

use super::envelope::{
    chunk_count, header_key_id, parse_sidecar_name, plain_len, sidecar_master_id, MasterKey,
    HEADER_LEN, SEALED_CHUNK_LEN,
};
use super::sealed_store::{lake_error, LakeStore, Marker, MARKER};

/// Objects checked at once by `verify`.
const VERIFY_CONCURRENCY: usize = 4;
/// Chunks read per request by `verify`: bounded memory for any object size.
const VERIFY_CHUNKS_PER_READ: u64 = 64;

/// What `sluice lake verify` found.
#[derive(Debug, Default)]
pub struct VerifyReport {
    /// Data objects that authenticated, and their stored bytes.
    pub verified: u64,
    pub bytes: u64,
    /// `(lake path, what is wrong)` for every object that did not.
    pub failures: Vec<(String, String)>,
    /// Wrapped keys whose object is gone (left by a crash between writes): harmless.
    pub orphaned_keys: Vec<String>,
}

/// What `sluice lake rotate-key` did.
#[derive(Debug, Default)]
pub struct RotateReport {
    pub rewrapped: u64,
    /// Already under the new key (a rotation run again after an interruption).
    pub already: u64,
}

impl LakeStore {
    async fn stored_objects(&self) -> object_store::Result<Vec<ObjectMeta>> {
        self.inner.list(Some(&self.shared.root)).try_collect().await
    }

    /// Authenticates every object of the lake: each chunk of each data object under
    /// its data key, each data key under the master key and the object's path.
    pub async fn verify(&self) -> object_store::Result<VerifyReport> {
        self.ready().await?;
        let objects = self.stored_objects().await?;
        let marker = self.marker_path();
        let mut sidecars = HashSet::new();
        let mut data = Vec::new();
        for meta in objects {
            if parse_sidecar_name(meta.location.as_ref()).is_some() {
                sidecars.insert(meta.location.to_string());
            } else if meta.location != marker {
                data.push(meta);
            }
        }
        let mut report = VerifyReport::default();
        let mut used = HashSet::new();
        let mut checks = futures::stream::iter(data)
            .map(|meta| async move {
                let result = self.verify_object(&meta).await;
                (meta, result)
            })
            .buffer_unordered(VERIFY_CONCURRENCY);
        while let Some((meta, result)) = checks.next().await {
            match result {
                Ok(sidecar) => {
                    report.verified += 1;
                    report.bytes += meta.size;
                    used.insert(sidecar);
                }
                Err(message) => {
                    if let Some(sidecar) = message.1 {
                        used.insert(sidecar);
                    }
                    report
                        .failures
                        .push((self.relative(&meta.location), message.0))
                }
            }
        }
        report.failures.sort();
        report.orphaned_keys = sidecars
            .difference(&used)
            .map(|s| self.relative(&Path::from(s.as_str())))
            .collect();
        report.orphaned_keys.sort();
        Ok(report)
    }

    /// Checks one data object; `Ok` is its sidecar's path. An `Err` carries what is
    /// wrong and the sidecar if one was found.
    async fn verify_object(&self, meta: &ObjectMeta) -> Result<String, (String, Option<String>)> {
        let location = &meta.location;
        let plain_size = plain_len(meta.size).ok_or_else(|| {
            (
                format!(
                    "{} bytes is no size an encrypted object can have (truncated or extended)",
                    meta.size
                ),
                None,
            )
        })?;
        let header = self
            .inner
            .get_range(location, 0..HEADER_LEN)
            .await
            .map_err(|e| (e.to_string(), None))?;
        let key_id = header_key_id(&header).map_err(|m| (m, None))?;
        let sidecar = self
            .sidecar_path(location, &key_id)
            .map_err(|e| (e.to_string(), None))?
            .to_string();
        let with_sidecar = |m: String| (m, Some(sidecar.clone()));
        let key = self
            .try_open_key(location, &key_id)
            .await
            .map_err(|e| with_sidecar(e.to_string()))?
            .map_err(with_sidecar)?;
        let chunks = chunk_count(plain_size);
        let mut chunk = 0;
        while chunk < chunks {
            let upto = (chunk + VERIFY_CHUNKS_PER_READ).min(chunks);
            let from = HEADER_LEN + chunk * SEALED_CHUNK_LEN;
            let to = (HEADER_LEN + upto * SEALED_CHUNK_LEN).min(meta.size);
            let mut sealed = self
                .inner
                .get_range(location, from..to)
                .await
                .map_err(|e| with_sidecar(e.to_string()))?
                .to_vec();
            for (n, piece) in sealed.chunks_mut(SEALED_CHUNK_LEN as usize).enumerate() {
                let index = chunk + n as u64;
                key.open_chunk(index, index + 1 == chunks, piece)
                    .map_err(with_sidecar)?;
            }
            chunk = upto;
        }
        Ok(sidecar)
    }

    /// Re-wraps every data key of the lake from the configured master key to `new`,
    /// rewriting only the sidecars. Safe to run again after an interruption: keys
    /// already under `new` are left alone.
    pub async fn rotate_master_key(&self, new: &MasterKey) -> object_store::Result<RotateReport> {
        let old = self
            .shared
            .master
            .as_ref()
            .ok_or_else(|| lake_error("the lake is not encrypted".into()))?;
        let location = &self.shared.location;
        let marker = self.read_marker().await.map_err(lake_error)?;
        let resumable = |m: &Marker| {
            m.master_key_id == old.id()
                || (m.master_key_id == new.id()
                    && m.rotating_from.as_deref() == Some(old.id().as_str()))
        };
        match &marker {
            Some(m) if resumable(m) => {}
            Some(m) => {
                return Err(lake_error(format!(
                    "lake {location} is encrypted under master key {}, not the configured key {}",
                    m.master_key_id,
                    old.id()
                )))
            }
            None => {
                return Err(lake_error(format!(
                    "lake {location} has no {MARKER}: it is not an encrypted lake"
                )))
            }
        }
        if old.id() == new.id() {
            return Err(lake_error(
                "the new master key is the configured one; nothing to rotate".into(),
            ));
        }
        // From here on, writers still holding the old key are refused at their next
        // start, and an interrupted rotation is resumed rather than mistaken.
        let marker = marker.expect("checked above");
        self.write_marker(
            &Marker {
                master_key_id: new.id(),
                rotating_from: Some(old.id()),
                ..marker.clone()
            },
            PutMode::Overwrite,
        )
        .await?;
        let mut report = RotateReport::default();
        for meta in self.stored_objects().await? {
            let Some((data, key_id)) = parse_sidecar_name(meta.location.as_ref()) else {
                continue;
            };
            let data = Path::parse(data).map_err(|e| lake_error(e.to_string()))?;
            let wrapped = self.inner.get(&meta.location).await?.bytes().await?;
            let wrapped_by = sidecar_master_id(&wrapped)
                .map_err(|m| lake_error(format!("{}: {m}", self.relative(&meta.location))))?;
            if wrapped_by == new.id() {
                report.already += 1;
                continue;
            }
            let key = old
                .unwrap(&wrapped, &self.relative(&data), &key_id)
                .map_err(|m| lake_error(format!("lake object {}: {m}", self.relative(&data))))?;
            self.inner
                .put(&meta.location, new.wrap(&key, &self.relative(&data)).into())
                .await?;
            report.rewrapped += 1;
        }
        let done = Marker {
            master_key_id: new.id(),
            rotating_from: None,
            ..marker
        };
        self.write_marker(&done, PutMode::Overwrite).await?;
        Ok(report)
    }
}
