//! The lake: every byte sluice ever received, and the typed tables made from it.
//!
//! Layout (relative to the lake root, which is a local folder or an object-store URL):
//!
//! ```text
//! raw/<source>/<stream>/dt=<date>/<run>/<page>.json.zst   pages exactly as received, zstd
//! d1/<table>/dt=<date>/<run>-<n>.parquet                 typed D1 tables
//! d2a|d2b/<model>/[dt=<date>/]<run>.parquet               model tables
//! quarantine/<layer>/<table>/<run>.ndjson                 records that did not fit, with reasons
//! _staging/<run>/…                                        files of a run not yet published
//! _state/<pipeline>/…                                     cursors, schema versions, run records
//! ```
//!
//! Every path is spelled in [`layout`] alone; the rest of sluice asks it.
//!
//! The lake owns object storage access; it does not know what a source or a run is.
//! Every access goes through [`LakeStore`], which encrypts every object when the
//! pipeline sets `lake_encryption:` ([`envelope`] has the format and why).
//! State objects are written with create-only puts (see [`Lake::put_new`]) so two
//! writers cannot silently overwrite each other.

mod envelope;
mod key_maintenance;
mod key_source;
mod sealed_store;
mod table_file;

pub use envelope::MasterKey;
pub use key_maintenance::{RotateReport, VerifyReport};
pub use key_source::{configured_master_key, master_key_from_text, LakeEncryptionConfig};
pub use sealed_store::{LakeStore, MARKER as ENCRYPTION_MARKER};
pub use table_file::TableFileWriter;

use std::path::Path as FsPath;
use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::buffered::BufWriter;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

/// Raw pages are written on every extraction's path and rarely read. Measured on
/// 64 MiB of insights NDJSON (`zstd -b`): level 1 660 MB/s at 11.0×; level 3 half
/// the speed for a few percent of size; `--fast=1` only 10 % faster at 8.8×.
const RAW_PAGE_ZSTD_LEVEL: i32 = 1;

/// The lake's layout: the one place its paths are spelled.
pub mod layout {
    /// Landed pages of a stream: `raw/<source>/<stream>`.
    pub fn raw_stream(source: &str, stream: &str) -> String {
        format!("raw/{source}/{stream}")
    }

    /// A table of a layer (`d1`, `d2a`, `d2b`): `<layer>/<table>`.
    pub fn table(layer: &str, table: &str) -> String {
        format!("{layer}/{table}")
    }

    /// One date partition of a table: `<layer>/<table>/dt=<date>/`.
    pub fn table_partition(layer: &str, table: &str, dt: &str) -> String {
        format!("{layer}/{table}/dt={dt}/")
    }

    /// Everything a run has staged and not yet published: `_staging/<run>`.
    pub fn staging(run_id: &str) -> String {
        format!("_staging/{run_id}")
    }

    /// Where a model's output is staged before it is published.
    pub fn model_staging(run_id: &str, layer: &str, model: &str) -> String {
        format!("{}/models/{layer}/{model}", staging(run_id))
    }

    /// The folder of pipeline state: `_state/<pipeline>`.
    pub fn state(pipeline: &str) -> String {
        format!("_state/{pipeline}")
    }

    /// The quarantine of a table: `quarantine/<layer>/<table>`.
    pub fn quarantine(layer: &str, table: &str) -> String {
        format!("quarantine/{layer}/{table}")
    }
}

/// A lake operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LakeError {
    #[error("lake {location}: {message}")]
    Open { location: String, message: String },
    #[error("{}", store_message(path, source))]
    Store {
        path: String,
        #[source]
        source: object_store::Error,
    },
    #[error("lake object {path}: {message}")]
    Data { path: String, message: String },
}

/// An object store error about `path`; the lake's encryption errors already name
/// the object and say what is wrong, so they are shown as they are.
fn store_message(path: &str, source: &object_store::Error) -> String {
    match source {
        object_store::Error::Generic {
            store: sealed_store::STORE_NAME,
            source,
        } => {
            let message = source.to_string();
            if message.starts_with("lake ") {
                message
            } else {
                format!("lake object {path}: {message}")
            }
        }
        other => format!("lake object {path}: {other}"),
    }
}

/// Opening the pipeline's lake failed: its encryption settings, or the lake itself.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Lake(#[from] LakeError),
}

/// One object under a prefix.
#[derive(Debug, Clone)]
pub struct LakeObject {
    /// Path relative to the lake root.
    pub path: String,
    pub size: u64,
    pub e_tag: Option<String>,
    pub last_modified: chrono::DateTime<chrono::Utc>,
}

/// Handle on the lake; cheap to clone.
#[derive(Clone, Debug)]
pub struct Lake {
    /// `sealed`, as the trait object every caller is handed.
    store: Arc<dyn ObjectStore>,
    sealed: LakeStore,
    root: Path,
    location: String,
    /// Bytes a file writer buffers before it sends a part (see [`Lake::parquet_writer`]).
    write_part_bytes: usize,
}

/// A writer's part size on object stores: S3's smallest multipart part (5 MiB).
const REMOTE_PART_BYTES: usize = 5 * 1024 * 1024;
/// A writer's part size on a local folder: no minimum, so little is held in memory.
const LOCAL_PART_BYTES: usize = 1024 * 1024;
/// Parts of one file in flight at once (object_store's default is 8).
const PARTS_IN_FLIGHT: usize = 2;

impl Lake {
    /// Opens `location`: a local path (relative to `base_dir`) or a URL such as
    /// `s3://bucket/prefix`, `gs://…`, `az://…`, `file:///…`. Cloud credentials come
    /// from the usual environment variables (`AWS_*`, `GOOGLE_*`, `AZURE_*`).
    pub fn open(location: &str, base_dir: &FsPath) -> Result<Lake, LakeError> {
        Self::open_with(location, base_dir, None)
    }

    /// Opens the pipeline's lake, encrypted if it sets `lake_encryption:` (running
    /// its `key_command` if it has one).
    pub fn open_for(config: &crate::config::PipelineConfig) -> Result<Lake, OpenError> {
        let master = configured_master_key(config)?;
        Ok(Self::open_with(&config.lake, &config.root, master)?)
    }

    /// As [`Lake::open`]; with a master key every object is encrypted (and must be).
    pub fn open_with(
        location: &str,
        base_dir: &FsPath,
        master: Option<MasterKey>,
    ) -> Result<Lake, LakeError> {
        let open_err = |message: String| LakeError::Open {
            location: location.to_string(),
            message,
        };
        let remote = location.contains("://") && !location.starts_with("file://");
        let (inner, root, shown): (Arc<dyn ObjectStore>, Path, String) = if remote {
            let url = url::Url::parse(location).map_err(|e| open_err(e.to_string()))?;
            let env: Vec<(String, String)> = std::env::vars()
                .filter(|(k, _)| {
                    k.starts_with("AWS_") || k.starts_with("GOOGLE_") || k.starts_with("AZURE_")
                })
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect();
            let (store, root) =
                object_store::parse_url_opts(&url, env).map_err(|e| open_err(e.to_string()))?;
            (Arc::from(store), root, location.to_string())
        } else {
            let local = location.strip_prefix("file://").unwrap_or(location);
            let dir = base_dir.join(local);
            std::fs::create_dir_all(&dir).map_err(|e| open_err(e.to_string()))?;
            let store =
                LocalFileSystem::new_with_prefix(&dir).map_err(|e| open_err(e.to_string()))?;
            (Arc::new(store), Path::default(), dir.display().to_string())
        };
        let sealed = LakeStore::new(inner, root.clone(), shown.clone(), master);
        Ok(Lake {
            store: Arc::new(sealed.clone()),
            sealed,
            root,
            location: shown,
            write_part_bytes: if remote {
                REMOTE_PART_BYTES
            } else {
                LOCAL_PART_BYTES
            },
        })
    }

    /// Whether objects are encrypted (`lake_encryption:`).
    pub fn is_encrypted(&self) -> bool {
        self.sealed.is_encrypted()
    }

    /// Authenticates every object of an encrypted lake (`sluice lake verify`).
    pub async fn verify(&self) -> Result<VerifyReport, LakeError> {
        self.sealed.verify().await.map_err(Self::store_err(""))
    }

    /// Re-wraps every data key under `new` (`sluice lake rotate-key`); data is not rewritten.
    pub async fn rotate_master_key(&self, new: &MasterKey) -> Result<RotateReport, LakeError> {
        self.sealed
            .rotate_master_key(new)
            .await
            .map_err(Self::store_err(""))
    }

    /// Where the lake is, for messages.
    pub fn location(&self) -> &str {
        &self.location
    }

    pub fn store(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }

    /// The object-store path of a lake-relative path.
    pub fn object_path(&self, relative: &str) -> Path {
        let mut path = self.root.clone();
        for part in relative.split('/').filter(|p| !p.is_empty()) {
            path = path.join(part);
        }
        path
    }

    fn relative(&self, path: &Path) -> String {
        let full = path.as_ref();
        let root = self.root.as_ref();
        full.strip_prefix(root)
            .unwrap_or(full)
            .trim_start_matches('/')
            .to_string()
    }

    fn store_err(path: &str) -> impl FnOnce(object_store::Error) -> LakeError + '_ {
        move |source| LakeError::Store {
            path: path.to_string(),
            source,
        }
    }

    /// Writes (or replaces) an object.
    pub async fn put(&self, relative: &str, bytes: Bytes) -> Result<(), LakeError> {
        self.store
            .put(&self.object_path(relative), PutPayload::from(bytes))
            .await
            .map(|_| ())
            .map_err(Self::store_err(relative))
    }

    /// Creates an object only if it does not exist yet; `Ok(false)` if it already did.
    /// This is the primitive behind state that two runs must not both write.
    pub async fn put_new(&self, relative: &str, bytes: Bytes) -> Result<bool, LakeError> {
        let options = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .store
            .put_opts(
                &self.object_path(relative),
                PutPayload::from(bytes),
                options,
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(source) => Err(LakeError::Store {
                path: relative.to_string(),
                source,
            }),
        }
    }

    /// Reads an object; `Ok(None)` if it does not exist.
    pub async fn get(&self, relative: &str) -> Result<Option<Bytes>, LakeError> {
        match self.store.get(&self.object_path(relative)).await {
            Ok(result) => {
                let bytes = result.bytes().await.map_err(Self::store_err(relative))?;
                // A plain lake whose marker was removed must not hand out ciphertext.
                if !self.is_encrypted() && bytes.starts_with(envelope::DATA_MAGIC) {
                    return Err(LakeError::Data {
                        path: relative.to_string(),
                        message: "the object is encrypted; set `lake_encryption` in pipeline.yaml"
                            .into(),
                    });
                }
                Ok(Some(bytes))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(source) => Err(LakeError::Store {
                path: relative.to_string(),
                source,
            }),
        }
    }

    /// Lists every object under `prefix` (recursively), sorted by path.
    pub async fn list(&self, prefix: &str) -> Result<Vec<LakeObject>, LakeError> {
        let prefix_path = self.object_path(prefix);
        let mut objects: Vec<LakeObject> = self
            .store
            .list(Some(&prefix_path))
            .map_ok(|meta| LakeObject {
                path: self.relative(&meta.location),
                size: meta.size,
                e_tag: meta.e_tag,
                last_modified: meta.last_modified,
            })
            .try_collect()
            .await
            .map_err(Self::store_err(prefix))?;
        objects.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(objects)
    }

    /// The names of the folders directly under `prefix` (one level, not their contents).
    pub async fn folders(&self, prefix: &str) -> Result<Vec<String>, LakeError> {
        let listed = self
            .store
            .list_with_delimiter(Some(&self.object_path(prefix)))
            .await
            .map_err(Self::store_err(prefix))?;
        let mut names: Vec<String> = listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(String::from))
            .collect();
        names.sort();
        Ok(names)
    }

    /// Moves an object (a staged file into its table), replacing what is at `to`.
    pub async fn rename(&self, from: &str, to: &str) -> Result<(), LakeError> {
        self.store
            .rename(&self.object_path(from), &self.object_path(to))
            .await
            .map_err(|source| LakeError::Store {
                path: to.to_string(),
                source,
            })
    }

    pub async fn delete(&self, relative: &str) -> Result<(), LakeError> {
        match self.store.delete(&self.object_path(relative)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(LakeError::Store {
                path: relative.to_string(),
                source,
            }),
        }
    }

    /// Lands one page exactly as received, zstd-compressed. Returns its lake path.
    pub async fn land_page(&self, page: &PagePath<'_>, body: Bytes) -> Result<String, LakeError> {
        let path = page.to_string();
        // Compression is CPU work: off the async thread, so slices compress in parallel.
        let compressed =
            tokio::task::spawn_blocking(move || zstd::bulk::compress(&body, RAW_PAGE_ZSTD_LEVEL))
                .await
                .map_err(|e| e.to_string())
                .and_then(|compressed| compressed.map_err(|e| e.to_string()))
                .map_err(|e| LakeError::Data {
                    path: path.clone(),
                    message: format!("compress: {e}"),
                })?;
        self.put(&path, Bytes::from(compressed)).await?;
        Ok(path)
    }

    /// Replaces a landed page with `body`, compressed as landed: only `sluice forget`
    /// rewrites what was received.
    pub async fn replace_page(&self, relative: &str, body: Bytes) -> Result<(), LakeError> {
        let compressed =
            zstd::bulk::compress(&body, RAW_PAGE_ZSTD_LEVEL).map_err(|e| LakeError::Data {
                path: relative.to_string(),
                message: format!("compress: {e}"),
            })?;
        self.put(relative, Bytes::from(compressed)).await
    }

    /// Reads a landed page back to the exact bytes that were received.
    pub async fn read_page(&self, relative: &str) -> Result<Bytes, LakeError> {
        let compressed = self.get(relative).await?.ok_or_else(|| LakeError::Data {
            path: relative.to_string(),
            message: "page not found".into(),
        })?;
        zstd::stream::decode_all(compressed.as_ref())
            .map(Bytes::from)
            .map_err(|e| LakeError::Data {
                path: relative.to_string(),
                message: format!("decompress: {e}"),
            })
    }

    /// Opens a Parquet writer at a lake-relative path; batches stream to storage.
    pub fn parquet_writer(
        &self,
        relative: &str,
        schema: arrow::datatypes::SchemaRef,
    ) -> Result<TableFileWriter, LakeError> {
        // object_store's default buffers a whole file up to 10 MiB, then 8 parts of 10 MiB
        // in flight: a model partitioned by day keeps a file open per date, and 30 open
        // files held ~300 MiB. Small parts, two in flight, bound each writer to a few MiB.
        let object = BufWriter::with_capacity(
            self.store.clone(),
            self.object_path(relative),
            self.write_part_bytes,
        )
        .with_max_concurrency(PARTS_IN_FLIGHT);
        Ok(TableFileWriter::new(object, schema, relative))
    }
}

/// Where a raw page lands: `raw/<source>/<stream>/dt=<date>/<run>/<page>.json.zst`.
pub struct PagePath<'a> {
    pub source: &'a str,
    pub stream: &'a str,
    pub dt: &'a str,
    pub run_id: &'a str,
    /// Unique within the run and stream, e.g. `act_1-2024-07-01-p00003`.
    pub page: &'a str,
    /// `json`, `ndjson`, `csv`, `parquet`…
    pub extension: &'a str,
}

impl std::fmt::Display for PagePath<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/dt={}/{}/{}.{}.zst",
            layout::raw_stream(self.source, self.stream),
            self.dt,
            self.run_id,
            self.page,
            self.extension
        )
    }
}

/// A batch's rows by the date in its partition column (the lake's `dt=` folders).
#[derive(Debug)]
pub struct DateParts {
    /// ISO date → rows, in order of each date's first appearance.
    pub parts: Vec<(String, RecordBatch)>,
    /// Rows whose partition value is NULL: they belong to no folder. The caller
    /// quarantines them (a NULL partition value is never published as `dt=none`).
    pub nulls: Option<RecordBatch>,
}

/// Splits `batch` by the date in column `column` (a date, or anything Arrow casts to
/// one: timestamps, ISO date text). The one partitioning rule of D1 and models alike.
pub fn split_by_date(
    batch: &RecordBatch,
    column: usize,
) -> Result<DateParts, arrow::error::ArrowError> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{DataType, Date32Type};
    let values = batch.column(column);
    let days = if values.data_type() == &DataType::Date32 {
        values.clone()
    } else {
        // Not `safe`: text that is no date is an error, not a NULL.
        let options = arrow::compute::CastOptions {
            safe: false,
            ..Default::default()
        };
        arrow::compute::cast_with_options(values, &DataType::Date32, &options)?
    };
    let days = days.as_primitive::<Date32Type>();
    // Groups in order of first appearance; the index keeps a row's lookup O(1) however
    // many dates a batch spans.
    let mut groups: Vec<(Option<i32>, Vec<u32>)> = Vec::new();
    let mut index: std::collections::HashMap<Option<i32>, usize> = Default::default();
    for (row, day) in days.iter().enumerate() {
        let group = *index.entry(day).or_insert_with(|| {
            groups.push((day, Vec::new()));
            groups.len() - 1
        });
        groups[group].1.push(row as u32);
    }
    let mut out = DateParts {
        parts: Vec::with_capacity(groups.len()),
        nulls: None,
    };
    let whole = groups.len() == 1;
    for (day, rows) in groups {
        let part = if whole {
            batch.clone()
        } else {
            arrow::compute::take_record_batch(batch, &arrow::array::UInt32Array::from(rows))?
        };
        match day {
            Some(day) => out.parts.push((date_folder(day), part)),
            None => out.nulls = Some(part),
        }
    }
    Ok(out)
}

/// The ISO date of days since the epoch (Arrow's `Date32`), as `dt=` folders name it.
pub fn date_folder(days_since_epoch: i32) -> String {
    (chrono::NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch")
        + chrono::Duration::days(days_since_epoch as i64))
    .to_string()
}

/// Where a run records what one slice asked the source for (`{key, params}`), so a
/// replay can decode the slice's pages with the context they were fetched in.
pub fn slice_manifest_path(source: &str, stream: &str, run_id: &str, slice: usize) -> String {
    format!(
        "{}/_slices/{run_id}/s{slice:05}.json",
        layout::raw_stream(source, stream)
    )
}

/// Reads every batch of a Parquet object in the lake.
pub async fn read_parquet(lake: &Lake, relative: &str) -> Result<Vec<RecordBatch>, LakeError> {
    parquet_batches(lake, relative)
        .await?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| LakeError::Data {
            path: relative.to_string(),
            message: e.to_string(),
        })
}

/// Opens a Parquet object for reading batch by batch: only the compressed object and
/// one decoded batch are in memory at a time.
pub async fn parquet_batches(
    lake: &Lake,
    relative: &str,
) -> Result<parquet::arrow::arrow_reader::ParquetRecordBatchReader, LakeError> {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let err = |message: String| LakeError::Data {
        path: relative.to_string(),
        message,
    };
    let bytes = lake
        .get(relative)
        .await?
        .ok_or_else(|| err("not found".into()))?;
    ParquetRecordBatchReaderBuilder::try_new(bytes)
        .map_err(|e| err(e.to_string()))?
        .with_batch_size(8192)
        .build()
        .map_err(|e| err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_by_date_groups_in_order_of_first_appearance_and_sets_nulls_apart() {
        use arrow::array::{Date32Array, Int64Array, StringArray};
        use arrow::datatypes::{DataType, Field, Schema};
        let schema = Arc::new(Schema::new(vec![
            Field::new("day", DataType::Date32, true),
            Field::new("n", DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Date32Array::from(vec![
                    Some(19906),
                    None,
                    Some(19905),
                    Some(19906),
                ])),
                Arc::new(Int64Array::from(vec![1, 2, 3, 4])),
            ],
        )
        .unwrap();
        let split = split_by_date(&batch, 0).unwrap();
        let shape: Vec<(&str, usize)> = split
            .parts
            .iter()
            .map(|(d, b)| (d.as_str(), b.num_rows()))
            .collect();
        assert_eq!(shape, [("2024-07-02", 2), ("2024-07-01", 1)]);
        assert_eq!(split.nulls.map(|b| b.num_rows()), Some(1));

        // ISO text partitions the same way; text that is no date is an error.
        let text = |values: Vec<&str>| {
            let schema = Arc::new(Schema::new(vec![Field::new("day", DataType::Utf8, true)]));
            RecordBatch::try_new(schema, vec![Arc::new(StringArray::from(values))]).unwrap()
        };
        let split = split_by_date(&text(vec!["2024-07-01", "2024-07-01"]), 0).unwrap();
        assert_eq!(split.parts.len(), 1);
        assert_eq!(split.parts[0].0, "2024-07-01");
        assert!(split_by_date(&text(vec!["soon"]), 0).is_err());
    }

    #[tokio::test]
    async fn pages_round_trip_and_put_new_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open("lake", dir.path()).unwrap();
        let page = PagePath {
            source: "fb",
            stream: "insights",
            dt: "2024-07-01",
            run_id: "r1",
            page: "p00001",
            extension: "json",
        };
        let path = lake
            .land_page(&page, Bytes::from_static(b"{\"data\":[]}"))
            .await
            .unwrap();
        assert_eq!(path, "raw/fb/insights/dt=2024-07-01/r1/p00001.json.zst");
        assert_eq!(
            lake.read_page(&path).await.unwrap().as_ref(),
            b"{\"data\":[]}"
        );
        assert!(dir.path().join("lake").join(&path).exists());

        assert!(lake
            .put_new("_state/x/0001.json", Bytes::from("a"))
            .await
            .unwrap());
        assert!(!lake
            .put_new("_state/x/0001.json", Bytes::from("b"))
            .await
            .unwrap());
        assert_eq!(
            lake.get("_state/x/0001.json").await.unwrap().unwrap(),
            Bytes::from("a")
        );
        assert_eq!(lake.list("_state").await.unwrap().len(), 1);
        assert!(lake.get("nope").await.unwrap().is_none());
    }
}
