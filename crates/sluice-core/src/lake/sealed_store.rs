//! [`LakeStore`]: the object store every part of sluice reaches the lake through
//! (the [`Lake`](super::Lake) methods, DataFusion's registered store, the staging
//! writers, `files` sources reading `from_lake`), so encryption needs no caller to
//! change.
//!
//! With a master key it encrypts every object on the way in and authenticates it on
//! the way out (format: [`super::envelope`]): puts and multipart uploads seal 64 KiB
//! chunks, range reads fetch and open only the chunks they cover, `head` and listings
//! report plaintext sizes and hide the key sidecars. Renames and copies re-wrap the
//! data key for the new path (76 bytes) and move the data as is.
//!
//! Without one it passes everything through, as before encryption existed. Either
//! way it first reads the lake's marker `_encryption.json` (once per process): a lake
//! encrypted by another key, or encrypted while no key is configured, or holding
//! plain objects when a key is configured, is refused with a message saying which,
//! before anything is read or written.
//!
//! Why one file over 700 lines: it is one `ObjectStore` implementation, and every
//! trait method must seal or open the same way (put, multipart, get, range, head,
//! list, copy, rename, delete); the byte format already lives in `envelope.rs`. About
//! 180 lines are its tests.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, ObjectStoreExt, PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult,
    RenameOptions, UploadPart,
};
use serde::{Deserialize, Serialize};

use super::envelope::{
    chunk_count, header_key_id, parse_sidecar_name, plain_len, sidecar_name, DataKey, MasterKey,
    CHUNK_LEN, HEADER_LEN, KEY_ID_LEN, SEALED_CHUNK_LEN,
};

/// The lake's encryption marker, at its root. Clear text: it holds no secret, and
/// must be readable to say *which* key a lake needs.
pub const MARKER: &str = "_encryption.json";
/// Chunks fetched per request when reading: 4 MiB, few requests and bounded memory.
const CHUNKS_PER_READ: u64 = 64;
/// Ciphertext collected before it is sent as one multipart part (S3 wants 5 MiB+).
const PART_BYTES: usize = 8 * 1024 * 1024;
/// Data keys kept unwrapped in memory, so range reads of one file unwrap it once.
const CACHED_KEYS: usize = 4096;

/// What the marker says.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Marker {
    pub format: String,
    pub cipher: String,
    pub chunk_bytes: u64,
    /// The master key every data key is (or, mid-rotation, is being) wrapped under.
    pub master_key_id: String,
    /// Set while `sluice lake rotate-key` re-wraps keys from this master key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotating_from: Option<String>,
}

impl Marker {
    fn new(master_key_id: String, rotating_from: Option<String>) -> Marker {
        Marker {
            format: "sluice-lake-envelope/1".into(),
            cipher: "AES-256-GCM, a data key per object wrapped by the master key".into(),
            chunk_bytes: CHUNK_LEN,
            master_key_id,
            rotating_from,
        }
    }
}

/// The lake's object store: encrypting with a master key, passing through without.
#[derive(Clone)]
pub struct LakeStore {
    pub(super) inner: Arc<dyn ObjectStore>,
    pub(super) shared: Arc<Shared>,
}

pub(super) struct Shared {
    pub(super) root: Path,
    pub(super) location: String,
    pub(super) master: Option<MasterKey>,
    ready: tokio::sync::OnceCell<Result<(), String>>,
    keys: Mutex<HashMap<Path, (String, Arc<DataKey>)>>,
}

impl std::fmt::Debug for LakeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LakeStore")
            .field("inner", &self.inner)
            .field("master", &self.shared.master)
            .finish()
    }
}

impl std::fmt::Display for LakeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.shared.master {
            Some(key) => write!(f, "EncryptedLake({}, key {})", self.inner, key.id()),
            None => write!(f, "Lake({})", self.inner),
        }
    }
}

/// The `store` of the errors this store makes.
pub(super) const STORE_NAME: &str = "sluice lake";

/// An error of the lake's encryption (a message naming the object or the lake).
pub(super) fn lake_error(message: String) -> object_store::Error {
    object_store::Error::Generic {
        store: STORE_NAME,
        source: message.into(),
    }
}

impl LakeStore {
    pub fn new(
        inner: Arc<dyn ObjectStore>,
        root: Path,
        location: String,
        master: Option<MasterKey>,
    ) -> LakeStore {
        LakeStore {
            inner,
            shared: Arc::new(Shared {
                root,
                location,
                master,
                ready: Default::default(),
                keys: Default::default(),
            }),
        }
    }

    pub fn is_encrypted(&self) -> bool {
        self.shared.master.is_some()
    }

    /// The lake path of a store path (what keys are bound to: the lake can move).
    pub(super) fn relative(&self, location: &Path) -> String {
        let full = location.as_ref();
        full.strip_prefix(self.shared.root.as_ref())
            .unwrap_or(full)
            .trim_start_matches('/')
            .to_string()
    }

    pub(super) fn marker_path(&self) -> Path {
        self.shared.root.clone().join(MARKER)
    }

    fn corrupt(&self, location: &Path, message: impl std::fmt::Display) -> object_store::Error {
        lake_error(format!(
            "lake object {}: {message}",
            self.relative(location)
        ))
    }

    pub(super) fn sidecar_path(
        &self,
        location: &Path,
        key_id: &[u8; KEY_ID_LEN],
    ) -> object_store::Result<Path> {
        Path::parse(sidecar_name(location.as_ref(), key_id)).map_err(|e| lake_error(e.to_string()))
    }

    /// Checks, once, that the lake's marker agrees with the configured key.
    pub(super) async fn ready(&self) -> object_store::Result<()> {
        self.shared
            .ready
            .get_or_init(|| self.check_marker())
            .await
            .clone()
            .map_err(lake_error)
    }

    pub(super) async fn read_marker(&self) -> Result<Option<Marker>, String> {
        let location = &self.shared.location;
        match self.inner.get(&self.marker_path()).await {
            Ok(result) => {
                let bytes = result
                    .bytes()
                    .await
                    .map_err(|e| format!("lake {location}: cannot read {MARKER}: {e}"))?;
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| format!("lake {location}: {MARKER} is unreadable: {e}"))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(format!("lake {location}: cannot read {MARKER}: {e}")),
        }
    }

    pub(super) async fn write_marker(
        &self,
        marker: &Marker,
        mode: PutMode,
    ) -> object_store::Result<()> {
        let body = serde_json::to_vec_pretty(marker).expect("the marker serialises");
        let options = PutOptions {
            mode,
            ..Default::default()
        };
        self.inner
            .put_opts(&self.marker_path(), body.into(), options)
            .await
            .map(|_| ())
    }

    async fn check_marker(&self) -> Result<(), String> {
        let location = &self.shared.location;
        loop {
            let marker = self.read_marker().await?;
            return match (&self.shared.master, marker) {
                (None, None) => Ok(()),
                (None, Some(marker)) => Err(format!(
                    "lake {location} is encrypted (master key {}); set `lake_encryption` in pipeline.yaml to open it",
                    marker.master_key_id
                )),
                (Some(key), Some(marker)) if marker.master_key_id == key.id() => Ok(()),
                (Some(key), Some(marker)) if marker.rotating_from.as_deref() == Some(key.id().as_str()) => {
                    Err(format!(
                        "lake {location} is being re-keyed from master key {} to {} (or a rotation was interrupted): finish it with `sluice lake rotate-key`, then configure the new key",
                        key.id(),
                        marker.master_key_id
                    ))
                }
                (Some(key), Some(marker)) => Err(format!(
                    "lake {location} is encrypted under master key {}, but the configured master key is {}: wrong key, or the key was rotated",
                    marker.master_key_id,
                    key.id()
                )),
                (Some(key), None) => {
                    let first = self
                        .inner
                        .list(Some(&self.shared.root))
                        .try_next()
                        .await
                        .map_err(|e| format!("lake {location}: cannot list: {e}"))?;
                    if let Some(object) = first {
                        return Err(format!(
                            "lake {location} holds unencrypted objects (e.g. {}); `lake_encryption` can only be turned on for a new, empty lake",
                            self.relative(&object.location)
                        ));
                    }
                    match self
                        .write_marker(&Marker::new(key.id(), None), PutMode::Create)
                        .await
                    {
                        Ok(()) => Ok(()),
                        // Another process made it first: check what it wrote.
                        Err(object_store::Error::AlreadyExists { .. }) => continue,
                        Err(e) => Err(format!("lake {location}: cannot write {MARKER}: {e}")),
                    }
                }
            };
        }
    }

    /// A listed object as callers see it: `None` for sidecars and the marker; the
    /// plaintext size for data (a size no plaintext seals to lists as 0 and fails
    /// when read).
    fn visible(&self, mut meta: ObjectMeta) -> Option<ObjectMeta> {
        if self.shared.master.is_none() {
            return Some(meta);
        }
        if parse_sidecar_name(meta.location.as_ref()).is_some()
            || meta.location == self.marker_path()
        {
            return None;
        }
        meta.size = plain_len(meta.size).unwrap_or(0);
        Some(meta)
    }

    fn master(&self) -> &MasterKey {
        self.shared
            .master
            .as_ref()
            .expect("called on an encrypted lake only")
    }

    /// Unwraps the data key of the object at `location` from its sidecar.
    pub(super) async fn open_key(
        &self,
        location: &Path,
        key_id: &[u8; KEY_ID_LEN],
    ) -> object_store::Result<DataKey> {
        self.try_open_key(location, key_id)
            .await?
            .map_err(|m| self.corrupt(location, m))
    }

    /// As [`Self::open_key`]; the outer error is the store failing, the inner what is
    /// wrong with the key (missing, altered, another master key's).
    pub(super) async fn try_open_key(
        &self,
        location: &Path,
        key_id: &[u8; KEY_ID_LEN],
    ) -> object_store::Result<Result<DataKey, String>> {
        let sidecar = self.sidecar_path(location, key_id)?;
        let wrapped = match self.inner.get(&sidecar).await {
            Ok(result) => result.bytes().await?,
            Err(object_store::Error::NotFound { .. }) => {
                return Ok(Err("its data key object is missing".into()))
            }
            Err(e) => return Err(e),
        };
        Ok(self
            .master()
            .unwrap(&wrapped, &self.relative(location), key_id))
    }

    /// The data key of the stored object described by `meta`, from the cache when the
    /// object is unchanged (same e-tag).
    async fn data_key(
        &self,
        location: &Path,
        meta: &ObjectMeta,
    ) -> object_store::Result<Arc<DataKey>> {
        if let Some(e_tag) = &meta.e_tag {
            let keys = self.shared.keys.lock().expect("key cache lock");
            if let Some((cached_tag, key)) = keys.get(location) {
                if cached_tag == e_tag {
                    return Ok(key.clone());
                }
            }
        }
        let header = self
            .inner
            .get_range(location, 0..HEADER_LEN.min(meta.size))
            .await?;
        let key_id = header_key_id(&header).map_err(|m| self.corrupt(location, m))?;
        let key = Arc::new(self.open_key(location, &key_id).await?);
        if let Some(e_tag) = &meta.e_tag {
            let mut keys = self.shared.keys.lock().expect("key cache lock");
            if keys.len() >= CACHED_KEYS {
                keys.clear();
            }
            keys.insert(location.clone(), (e_tag.clone(), key.clone()));
        }
        Ok(key)
    }

    fn forget_key(&self, location: &Path) {
        self.shared
            .keys
            .lock()
            .expect("key cache lock")
            .remove(location);
    }

    /// The key id of what is stored at `location` now, if it is a sealed object: its
    /// sidecar is removed once the object is replaced or deleted. Best effort, so any
    /// failure is `None` (an orphaned sidecar holds a key to nothing).
    pub(super) async fn stored_key_id(&self, location: &Path) -> Option<[u8; KEY_ID_LEN]> {
        let header = self.inner.get_range(location, 0..HEADER_LEN).await.ok()?;
        header_key_id(&header).ok()
    }

    async fn delete_quietly(&self, location: &Path) {
        let _ = self.inner.delete(location).await;
    }

    /// Wraps the data key of `from` for `to`; returns the key id and the id `to` held.
    async fn rewrap_for(
        &self,
        from: &Path,
        to: &Path,
    ) -> object_store::Result<([u8; KEY_ID_LEN], Option<[u8; KEY_ID_LEN]>)> {
        let header = self.inner.get_range(from, 0..HEADER_LEN).await?;
        let key_id = header_key_id(&header).map_err(|m| self.corrupt(from, m))?;
        let key = self.open_key(from, &key_id).await?;
        let replaced = self.stored_key_id(to).await;
        let wrapped = self.master().wrap(&key, &self.relative(to));
        self.inner
            .put(&self.sidecar_path(to, &key_id)?, wrapped.into())
            .await?;
        Ok((key_id, replaced))
    }

    /// Decrypts `range` of the plaintext of the object at `location`, chunk groups
    /// fetched as the stream is read.
    fn open_range(
        &self,
        location: Path,
        key: Arc<DataKey>,
        sealed_size: u64,
        plain_size: u64,
        range: Range<u64>,
    ) -> BoxStream<'static, object_store::Result<Bytes>> {
        let this = self.clone();
        let chunks = chunk_count(plain_size);
        let first = range.start / CHUNK_LEN;
        let end = if range.is_empty() {
            first
        } else {
            (range.end - 1) / CHUNK_LEN + 1
        };
        futures::stream::try_unfold(first, move |chunk| {
            let (this, location, key, range) =
                (this.clone(), location.clone(), key.clone(), range.clone());
            async move {
                if chunk >= end {
                    return Ok(None);
                }
                let upto = (chunk + CHUNKS_PER_READ).min(end);
                let from = HEADER_LEN + chunk * SEALED_CHUNK_LEN;
                let to = (HEADER_LEN + upto * SEALED_CHUNK_LEN).min(sealed_size);
                let mut sealed = this.inner.get_range(&location, from..to).await?.to_vec();
                let mut plain = Vec::with_capacity(sealed.len());
                for (n, piece) in sealed.chunks_mut(SEALED_CHUNK_LEN as usize).enumerate() {
                    let index = chunk + n as u64;
                    let len = key
                        .open_chunk(index, index + 1 == chunks, piece)
                        .map_err(|m| this.corrupt(&location, m))?;
                    plain.extend_from_slice(&piece[..len]);
                }
                if upto - chunk != (to - from).div_ceil(SEALED_CHUNK_LEN) {
                    return Err(this.corrupt(&location, "it is shorter than its chunks"));
                }
                let start = chunk * CHUNK_LEN;
                let lo = (range.start.max(start) - start) as usize;
                let hi = ((range.end.min(start + plain.len() as u64)) - start) as usize;
                Ok(Some((Bytes::from(plain).slice(lo..hi), upto)))
            }
        })
        .boxed()
    }
}

#[async_trait::async_trait]
impl ObjectStore for LakeStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.ready().await?;
        let Some(master) = &self.shared.master else {
            return self.inner.put_opts(location, payload, opts).await;
        };
        let key = DataKey::random();
        let mut plain = Vec::with_capacity(payload.content_length());
        for part in &payload {
            plain.extend_from_slice(part);
        }
        let sealed = key.seal(&plain);
        drop(plain);
        let replaced = match opts.mode {
            PutMode::Create => None,
            _ => self.stored_key_id(location).await,
        };
        let sidecar = self.sidecar_path(location, key.id())?;
        self.inner
            .put(&sidecar, master.wrap(&key, &self.relative(location)).into())
            .await?;
        match self.inner.put_opts(location, sealed.into(), opts).await {
            Ok(result) => {
                self.forget_key(location);
                if let Some(old) = replaced.filter(|old| old != key.id()) {
                    self.delete_quietly(&self.sidecar_path(location, &old)?)
                        .await;
                }
                Ok(result)
            }
            Err(e) => {
                self.delete_quietly(&sidecar).await;
                Err(e)
            }
        }
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.ready().await?;
        let Some(master) = &self.shared.master else {
            return self.inner.put_multipart_opts(location, opts).await;
        };
        let key = DataKey::random();
        let replaced = self.stored_key_id(location).await;
        let sidecar = self.sidecar_path(location, key.id())?;
        self.inner
            .put(&sidecar, master.wrap(&key, &self.relative(location)).into())
            .await?;
        let upload = match self.inner.put_multipart_opts(location, opts).await {
            Ok(upload) => upload,
            Err(e) => {
                self.delete_quietly(&sidecar).await;
                return Err(e);
            }
        };
        let sealed = key.header().to_vec();
        Ok(Box::new(SealingUpload {
            store: self.clone(),
            location: location.clone(),
            upload,
            key,
            next_chunk: 0,
            pending: Vec::with_capacity(CHUNK_LEN as usize),
            sealed,
            sidecar,
            replaced,
        }))
    }

    async fn get_opts(
        &self,
        location: &Path,
        mut options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.ready().await?;
        if self.shared.master.is_none() {
            return self.inner.get_opts(location, options).await;
        }
        let range = options.range.take();
        let head_only = options.head;
        options.head = true;
        // The head applies the caller's preconditions (if-match, …) and gives the size.
        let sealed_meta = self.inner.get_opts(location, options).await?.meta;
        let plain_size = plain_len(sealed_meta.size).ok_or_else(|| {
            self.corrupt(
                location,
                format!(
                    "{} bytes is no size an encrypted object can have (truncated?)",
                    sealed_meta.size
                ),
            )
        })?;
        let meta = ObjectMeta {
            size: plain_size,
            ..sealed_meta.clone()
        };
        let range = match range {
            None => 0..plain_size,
            Some(range) => range
                .as_range(plain_size)
                .map_err(|e| self.corrupt(location, e))?,
        };
        let payload = if head_only {
            futures::stream::empty().boxed()
        } else {
            let key = self.data_key(location, &sealed_meta).await?;
            self.open_range(
                location.clone(),
                key,
                sealed_meta.size,
                plain_size,
                range.clone(),
            )
        };
        Ok(GetResult {
            payload: GetResultPayload::Stream(payload),
            meta,
            range,
            attributes: Default::default(),
        })
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let this = self.clone();
        locations
            .then(move |location| {
                let this = this.clone();
                async move {
                    let location = location?;
                    this.ready().await?;
                    if this.shared.master.is_none() {
                        this.inner.delete(&location).await?;
                        return Ok(location);
                    }
                    let key_id = this.stored_key_id(&location).await;
                    this.inner.delete(&location).await?;
                    this.forget_key(&location);
                    if let Some(key_id) = key_id {
                        this.delete_quietly(&this.sidecar_path(&location, &key_id)?)
                            .await;
                    }
                    Ok(location)
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let listing = self.inner.list(prefix);
        self.visible_listing(listing)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let listing = self.inner.list_with_offset(prefix, offset);
        self.visible_listing(listing)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.ready().await?;
        let listed = self.inner.list_with_delimiter(prefix).await?;
        Ok(ListResult {
            common_prefixes: listed.common_prefixes,
            objects: listed
                .objects
                .into_iter()
                .filter_map(|meta| self.visible(meta))
                .collect(),
        })
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.ready().await?;
        if self.shared.master.is_none() {
            return self.inner.copy_opts(from, to, options).await;
        }
        let (key_id, replaced) = self.rewrap_for(from, to).await?;
        let copied = self.inner.copy_opts(from, to, options).await;
        self.after_move(to, key_id, replaced, copied.is_ok())
            .await?;
        copied
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        self.ready().await?;
        if self.shared.master.is_none() {
            return self.inner.rename_opts(from, to, options).await;
        }
        let (key_id, replaced) = self.rewrap_for(from, to).await?;
        let renamed = self.inner.rename_opts(from, to, options).await;
        self.after_move(to, key_id, replaced, renamed.is_ok())
            .await?;
        if renamed.is_ok() {
            self.forget_key(from);
            self.delete_quietly(&self.sidecar_path(from, &key_id)?)
                .await;
        }
        renamed
    }
}

impl LakeStore {
    fn visible_listing(
        &self,
        listing: BoxStream<'static, object_store::Result<ObjectMeta>>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let (check, filter) = (self.clone(), self.clone());
        futures::stream::once(async move { check.ready().await.map(|()| listing) })
            .try_flatten()
            .try_filter_map(move |meta| futures::future::ready(Ok(filter.visible(meta))))
            .boxed()
    }

    /// After data moved (or failed to) onto `to` with `key_id`: drop the sidecar of
    /// what `to` held before, or the new one if nothing moved.
    async fn after_move(
        &self,
        to: &Path,
        key_id: [u8; KEY_ID_LEN],
        replaced: Option<[u8; KEY_ID_LEN]>,
        moved: bool,
    ) -> object_store::Result<()> {
        self.forget_key(to);
        if replaced == Some(key_id) {
            return Ok(());
        }
        let stale = match (moved, replaced) {
            (true, Some(old)) => self.sidecar_path(to, &old)?,
            (true, None) => return Ok(()),
            (false, _) => self.sidecar_path(to, &key_id)?,
        };
        self.delete_quietly(&stale).await;
        Ok(())
    }
}

/// A multipart upload that seals 64 KiB chunks as the bytes arrive and sends the
/// ciphertext on in parts of [`PART_BYTES`].
struct SealingUpload {
    store: LakeStore,
    location: Path,
    upload: Box<dyn MultipartUpload>,
    key: DataKey,
    next_chunk: u64,
    /// Plaintext not sealed yet: at most one chunk, held back until more arrives,
    /// since the last chunk is sealed differently.
    pending: Vec<u8>,
    sealed: Vec<u8>,
    sidecar: Path,
    replaced: Option<[u8; KEY_ID_LEN]>,
}

impl std::fmt::Debug for SealingUpload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealingUpload")
            .field("location", &self.location)
            .finish()
    }
}

#[async_trait::async_trait]
impl MultipartUpload for SealingUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        for part in &data {
            let mut rest: &[u8] = part;
            while !rest.is_empty() {
                if self.pending.len() == CHUNK_LEN as usize {
                    self.key
                        .seal_chunk(self.next_chunk, false, &self.pending, &mut self.sealed);
                    self.next_chunk += 1;
                    self.pending.clear();
                }
                let take = (CHUNK_LEN as usize - self.pending.len()).min(rest.len());
                self.pending.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
            }
        }
        if self.sealed.len() >= PART_BYTES {
            let part = std::mem::take(&mut self.sealed);
            return self.upload.put_part(part.into());
        }
        Box::pin(futures::future::ready(Ok(())))
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        self.key
            .seal_chunk(self.next_chunk, true, &self.pending, &mut self.sealed);
        self.pending.clear();
        let last = std::mem::take(&mut self.sealed);
        self.upload.put_part(last.into()).await?;
        let result = self.upload.complete().await?;
        self.store.forget_key(&self.location);
        if let Some(old) = self.replaced.filter(|old| old != self.key.id()) {
            self.store
                .delete_quietly(&self.store.sidecar_path(&self.location, &old)?)
                .await;
        }
        Ok(result)
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        let aborted = self.upload.abort().await;
        self.store.delete_quietly(&self.sidecar).await;
        aborted
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Lake, MasterKey};
    use super::*;

    fn key(byte: u8) -> MasterKey {
        MasterKey::from_material(&[byte; 32]).unwrap()
    }

    fn open(dir: &std::path::Path, master: Option<MasterKey>) -> Lake {
        Lake::open_with("lake", dir, master).unwrap()
    }

    fn bytes(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[tokio::test]
    async fn objects_round_trip_whole_and_by_range_and_list_at_plaintext_size() {
        let dir = tempfile::tempdir().unwrap();
        let lake = open(dir.path(), Some(key(1)));
        let data = bytes(3 * CHUNK_LEN as usize + 123);
        lake.put("d1/t/a.bin", data.clone().into()).await.unwrap();
        assert_eq!(lake.get("d1/t/a.bin").await.unwrap().unwrap(), data);
        let store = lake.store();
        let path = lake.object_path("d1/t/a.bin");
        for range in [
            0..10,
            65_530..65_550,
            100..3 * CHUNK_LEN + 123,
            3 * CHUNK_LEN..3 * CHUNK_LEN + 123,
        ] {
            let got = store.get_range(&path, range.clone()).await.unwrap();
            assert_eq!(
                got.as_ref(),
                &data[range.start as usize..range.end as usize]
            );
        }
        assert_eq!(store.head(&path).await.unwrap().size, data.len() as u64);
        let listed = lake.list("d1").await.unwrap();
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(listed[0].size, data.len() as u64);
        // On disk: ciphertext and one wrapped key, no plaintext.
        let on_disk = std::fs::read(dir.path().join("lake/d1/t/a.bin")).unwrap();
        assert!(!on_disk.windows(64).any(|w| w == &data[1000..1064]));
        let names: Vec<_> = std::fs::read_dir(dir.path().join("lake/d1/t"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");

        // Empty objects too.
        lake.put("e", Vec::new().into()).await.unwrap();
        assert_eq!(lake.get("e").await.unwrap().unwrap().len(), 0);
    }

    #[tokio::test]
    async fn renames_overwrites_and_deletes_carry_or_drop_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let lake = open(dir.path(), Some(key(1)));
        lake.put("_staging/r/a", bytes(10).into()).await.unwrap();
        lake.put("d1/t/a", bytes(20).into()).await.unwrap();
        lake.rename("_staging/r/a", "d1/t/a").await.unwrap();
        assert_eq!(lake.get("d1/t/a").await.unwrap().unwrap(), bytes(10));
        lake.put("d1/t/a", bytes(30).into()).await.unwrap();
        assert_eq!(lake.get("d1/t/a").await.unwrap().unwrap(), bytes(30));
        let keys = |dir: &std::path::Path| {
            walk(dir)
                .into_iter()
                .filter(|p| p.ends_with(".dek"))
                .collect::<Vec<_>>()
        };
        assert_eq!(keys(dir.path()).len(), 1, "{:?}", keys(dir.path()));
        lake.delete("d1/t/a").await.unwrap();
        assert!(keys(dir.path()).is_empty());
        assert!(lake.put_new("_state/p/1", bytes(5).into()).await.unwrap());
        assert!(!lake.put_new("_state/p/1", bytes(6).into()).await.unwrap());
        assert_eq!(lake.get("_state/p/1").await.unwrap().unwrap(), bytes(5));
    }

    fn walk(dir: &std::path::Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.push(p.display().to_string());
                }
            }
        }
        out
    }

    #[tokio::test]
    async fn multipart_uploads_seal_as_they_stream() {
        let dir = tempfile::tempdir().unwrap();
        let lake = open(dir.path(), Some(key(1)));
        let data = bytes(PART_BYTES + 3 * CHUNK_LEN as usize + 5);
        let store = lake.store();
        let path = lake.object_path("big");
        let mut upload = store.put_multipart(&path).await.unwrap();
        for piece in data.chunks(1_000_003) {
            upload.put_part(piece.to_vec().into()).await.unwrap();
        }
        upload.complete().await.unwrap();
        assert_eq!(lake.get("big").await.unwrap().unwrap(), data);
        assert_eq!(lake.verify().await.unwrap().failures, Vec::new());
    }

    #[tokio::test]
    async fn the_wrong_key_or_none_is_refused_and_tampering_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let lake = open(dir.path(), Some(key(1)));
        lake.put("raw/p1", bytes(100).into()).await.unwrap();
        lake.put("raw/p2", bytes(200).into()).await.unwrap();

        let err = open(dir.path(), None)
            .get("raw/p1")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("is encrypted"), "{err}");
        let err = open(dir.path(), Some(key(2)))
            .get("raw/p1")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("configured master key is"), "{err}");
        // A plain lake with data is not encrypted in place.
        let plain_dir = tempfile::tempdir().unwrap();
        open(plain_dir.path(), None)
            .put("x", bytes(1).into())
            .await
            .unwrap();
        let err = open(plain_dir.path(), Some(key(1)))
            .get("x")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("holds unencrypted objects"), "{err}");

        let file = dir.path().join("lake/raw/p2");
        let mut stored = std::fs::read(&file).unwrap();
        stored[40] ^= 1;
        std::fs::write(&file, &stored).unwrap();
        let report = lake.verify().await.unwrap();
        assert_eq!(report.verified, 1);
        assert_eq!(report.failures.len(), 1);
        assert_eq!(report.failures[0].0, "raw/p2");
        let err = lake.get("raw/p2").await.unwrap_err().to_string();
        assert!(
            err.contains("raw/p2") && err.contains("does not authenticate"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn rotation_rewraps_keys_only_and_retires_the_old_key() {
        let dir = tempfile::tempdir().unwrap();
        let lake = open(dir.path(), Some(key(1)));
        lake.put("raw/p1", bytes(100).into()).await.unwrap();
        let data_before = std::fs::read(dir.path().join("lake/raw/p1")).unwrap();
        let report = lake.rotate_master_key(&key(2)).await.unwrap();
        assert_eq!((report.rewrapped, report.already), (1, 0));
        assert_eq!(
            std::fs::read(dir.path().join("lake/raw/p1")).unwrap(),
            data_before
        );
        let err = open(dir.path(), Some(key(1)))
            .get("raw/p1")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("configured master key is"), "{err}");
        let rotated = open(dir.path(), Some(key(2)));
        assert_eq!(rotated.get("raw/p1").await.unwrap().unwrap(), bytes(100));
        assert!(rotated.verify().await.unwrap().failures.is_empty());
    }
}
