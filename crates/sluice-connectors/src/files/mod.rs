//! `type: files` — NDJSON, CSV and Parquet files from a local folder or the lake.
//!
//! Each stream is a glob. A run reads the files that are new or changed since the
//! cursor (path → size, time and content hash; see [`crate::file_changes`]): a
//! grown file only from where it ended, one slice per file. Files are read
//! in pages (line-aligned chunks for NDJSON) that are landed as received, then
//! decoded; a line that does not parse is quarantined with its file and line.
//!
//! Config, planning and reading are here (one file over 700 lines because the three
//! share `FileStream` and the `Source` impl); decoding a page of each format is in
//! `decode.rs`, change tracking in `crate::file_changes`.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use globset::{Glob, GlobMatcher};
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::Deserialize;
use serde_json::{Map, Value};

use sluice_core::config::{ConfigDocument, ConfigError, Section};
use sluice_core::destination::WriteMode;
use sluice_core::schema::TableSchema;
use sluice_core::source::{
    DecodeState, DecodedPage, LandedPage, PageSink, RunWindow, Slice, Source, SourceError,
    StreamPlan, StreamSpec,
};

use crate::file_changes::{self, FileChange, OnChangedFile, SeenFile};

mod decode;
use decode::*;
use crate::BuildContext;

/// Records handed to the executor at a time.
pub(super) const RECORDS_PER_CHUNK: usize = 8192;
/// The UTF-8 byte-order mark.
pub(super) const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";
/// NDJSON pages are cut at the first line end after this many bytes.
const PAGE_BYTES: usize = 4 * 1024 * 1024;
/// Files fingerprinted at once while planning (each reads 4 MiB at a time).
const FINGERPRINTS_AT_ONCE: usize = 4;

/// A `files` source.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesConfig {
    /// Read from the lake instead of the local file system (paths are then relative to the lake root).
    #[serde(default)]
    pub from_lake: bool,
    /// The streams: name → files and how to read them.
    pub streams: BTreeMap<String, FilesStreamConfig>,
    /// Files (or parts of a large file) read at once. Default 1: each slice in
    /// flight costs about 100 MiB on wide NDJSON; 2 is ~10 % faster on 2 cores.
    #[serde(default = "default_concurrency")]
    pub max_concurrency: usize,
}

fn default_concurrency() -> usize {
    1
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FileFormat {
    Ndjson,
    Csv,
    Parquet,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesStreamConfig {
    /// A glob relative to the pipeline folder (or the lake root): `data/orders/*.ndjson`.
    pub path: String,
    /// `ndjson`, `csv` or `parquet`; by default from the file extension.
    #[serde(default)]
    pub format: Option<FileFormat>,
    /// Declared column types (`id: bigint`, `amount: numeric(12,2)`); others are inferred.
    #[serde(default)]
    pub columns: crate::declared_columns::OrderedColumns,
    /// Add columns found in the data but not declared (default true).
    #[serde(default = "yes")]
    pub infer_columns: bool,
    #[serde(default)]
    pub primary_key: Vec<String>,
    /// A date column that partitions the table.
    #[serde(default)]
    pub partition_column: Option<String>,
    /// append (default), replace, merge (needs primary_key) or overwrite_partitions (needs partition_column).
    #[serde(default)]
    pub write_mode: WriteMode,
    /// The D1 table name (default `<source>_<stream>`).
    #[serde(default)]
    pub table: Option<String>,
    /// CSV field delimiter (default `,`).
    #[serde(default = "default_delimiter")]
    pub delimiter: char,
    /// NDJSON files larger than this many bytes are read as several slices in
    /// parallel, cut at line ends (default 64 MiB).
    #[serde(default = "default_split_bytes")]
    pub split_bytes: u64,
    /// A file that changed other than by new lines at its end: `reload`, `error` or
    /// `append_all` (default `error` for append, `reload` otherwise).
    #[serde(default)]
    pub on_changed_file: Option<OnChangedFile>,
    /// A glob that matches no file is normal (default false: a stream that never
    /// loaded anything and finds no input fails).
    #[serde(default)]
    pub allow_empty: bool,
    /// `merge` only: which row wins when one run's input repeats a key — `last`
    /// (default, by file name then line), `first`, or `error`.
    #[serde(default)]
    pub dedupe: sluice_core::dedupe::Dedupe,
}

fn default_split_bytes() -> u64 {
    64 * 1024 * 1024
}

fn yes() -> bool {
    true
}

fn default_delimiter() -> char {
    ','
}

struct FileStream {
    spec: StreamSpec,
    matcher: GlobMatcher,
    /// The fixed folder part of the glob, listed on every run.
    list_prefix: String,
    format: Option<FileFormat>,
    delimiter: u8,
    split_bytes: u64,
    on_changed_file: OnChangedFile,
    allow_empty: bool,
    /// The glob as written, for messages.
    glob: String,
}

pub struct FilesSource {
    name: String,
    store: Arc<dyn ObjectStore>,
    root: StorePath,
    streams: Vec<FileStream>,
    max_concurrency: usize,
}

/// `type: files`.
pub const SOURCE_TYPES: &[crate::SourceType] = &[crate::SourceType {
        name: "files",
        build: |doc, section, ctx| Ok(Arc::new(FilesSource::build(doc, section, ctx)?)),
}];

impl FilesSource {
    pub fn build(
        doc: &ConfigDocument,
        section: &Section,
        ctx: &BuildContext,
    ) -> Result<Self, ConfigError> {
        let config: FilesConfig = doc.parse_section(section)?;
        let at = |rest: &[&str]| {
            let mut p = section.path.clone();
            p.extend(rest.iter().map(|s| s.to_string()));
            p
        };
        let (store, root): (Arc<dyn ObjectStore>, StorePath) = if config.from_lake {
            (ctx.lake.store(), ctx.lake.object_path(""))
        } else {
            let fs = LocalFileSystem::new_with_prefix(&ctx.root).map_err(|e| {
                doc.error_at(
                    &section.path,
                    format!("cannot open {}: {e}", ctx.root.display()),
                )
            })?;
            (Arc::new(fs), StorePath::default())
        };
        let mut streams = Vec::new();
        for (name, s) in config.streams {
            if !sluice_core::config::is_identifier(&name) {
                return Err(doc.error_at(
                    &at(&["streams", &name]),
                    "stream names may use lowercase letters, digits and `_`",
                ));
            }
            let path = s.path.trim_start_matches("./").to_string();
            let matcher = Glob::new(&path)
                .map_err(|e| {
                    doc.error_at(
                        &at(&["streams", &name, "path"]),
                        format!("invalid glob: {e}"),
                    )
                })?
                .compile_matcher();
            let list_prefix = path
                .split('/')
                .take_while(|part| !part.contains(['*', '?', '[', '{']))
                .collect::<Vec<_>>();
            // The last part is a file name unless the glob continues below it.
            let list_prefix = if list_prefix.len() == path.split('/').count() {
                list_prefix[..list_prefix.len().saturating_sub(1)].join("/")
            } else {
                list_prefix.join("/")
            };
            let fields = s
                .columns
                .fields(&s.primary_key, s.partition_column.as_deref(), s.write_mode)
                .map_err(|(key, message)| {
                    let mut path = at(&["streams", &name]);
                    path.extend(key);
                    doc.error_at(&path, message)
                })?;
            let on_changed_file = s
                .on_changed_file
                .unwrap_or(OnChangedFile::default_for(s.write_mode));
            if on_changed_file == OnChangedFile::Reload && s.write_mode == WriteMode::Append {
                return Err(doc.error_at(
                    &at(&["streams", &name, "on_changed_file"]),
                    "on_changed_file: reload cannot take back the rows an append stream loaded; use `error`, `append_all`, or a write_mode that replaces (merge, overwrite_partitions, replace)",
                ));
            }
            let table = s
                .table
                .clone()
                .unwrap_or_else(|| format!("{}_{}", section.name, name));
            let delimiter = u8::try_from(s.delimiter).map_err(|_| {
                doc.error_at(
                    &at(&["streams", &name, "delimiter"]),
                    "the delimiter must be one ASCII character",
                )
            })?;
            streams.push(FileStream {
                spec: StreamSpec {
                    name: name.clone(),
                    table,
                    schema: TableSchema::new(fields),
                    infer_columns: s.infer_columns,
                    primary_key: s.primary_key,
                    partition_column: s.partition_column,
                    write_mode: s.write_mode,
                    dedupe: s.dedupe,
                },
                matcher,
                list_prefix,
                format: s.format,
                delimiter,
                split_bytes: s.split_bytes.max(1),
                on_changed_file,
                allow_empty: s.allow_empty,
                glob: s.path.clone(),
            });
        }
        Ok(FilesSource {
            name: section.name.clone(),
            store,
            root,
            streams,
            max_concurrency: config.max_concurrency.max(1),
        })
    }

    fn stream(&self, name: &str) -> Result<&FileStream, SourceError> {
        self.streams
            .iter()
            .find(|s| s.spec.name == name)
            .ok_or_else(|| SourceError::data(format!("unknown stream {name}")))
    }

    fn full_path(&self, relative: &str) -> StorePath {
        let mut path = self.root.clone();
        for part in relative.split('/').filter(|p| !p.is_empty()) {
            path = path.join(part);
        }
        path
    }

    /// The fingerprint of a file whose size or time differ from the remembered
    /// `entry` (with its remembered length's prefix, to tell a grown file); `None`
    /// when it is untouched.
    async fn fingerprint_if_moved(
        &self,
        entry: Option<&Value>,
        relative: &str,
        meta: &object_store::ObjectMeta,
    ) -> Result<Option<file_changes::Fingerprint>, SourceError> {
        let modified = meta.last_modified.timestamp_micros();
        if file_changes::untouched(entry, meta.size, modified) {
            return Ok(None);
        }
        let previous_size = SeenFile::from_cursor(entry)
            .map(|p| p.size)
            .filter(|p| *p <= meta.size);
        file_changes::fingerprint(
            &self.store,
            &meta.location,
            relative,
            meta.size,
            modified,
            previous_size,
        )
        .await
        .map(Some)
    }

    fn relative(&self, path: &StorePath) -> String {
        path.as_ref()
            .strip_prefix(self.root.as_ref())
            .unwrap_or(path.as_ref())
            .trim_start_matches('/')
            .to_string()
    }
}

/// The part of one file a run reads: all of it, or the lines added since the last run.
#[derive(Debug, Clone)]
struct FileSlices {
    relative: String,
    version: String,
    from: u64,
    size: u64,
    lines_before: u64,
    /// CSV read from the middle: the header line's length, read from the file's start.
    header_bytes: u64,
}

impl FilesSource {
    /// A glob that matches nothing, on a stream that never loaded anything.
    fn no_input(&self, fs: &FileStream) -> Result<(), SourceError> {
        if fs.allow_empty {
            tracing::info!(stream = %fs.spec.name, glob = %fs.glob, "no file matches yet (allow_empty)");
            return Ok(());
        }
        Err(SourceError::config(
            format!(
                "no file matches `{}` (under {}); fix the path, or set `allow_empty: true` if files arrive later",
                fs.glob,
                if fs.list_prefix.is_empty() { "the pipeline folder" } else { fs.list_prefix.as_str() },
            ),
            format!("sources.{}.streams.{}.path", self.name, fs.spec.name),
        ))
    }

    /// Slices for one file: one, or several line-aligned parts of a big NDJSON file.
    async fn plan_file(
        &self,
        fs: &FileStream,
        file: FileSlices,
        out: &mut Vec<Slice>,
    ) -> Result<(), SourceError> {
        let FileSlices {
            relative,
            version,
            from,
            size,
            lines_before,
            header_bytes,
        } = file;
        let splits =
            size - from > fs.split_bytes && format_of(&relative, fs.format)? == FileFormat::Ndjson;
        if splits {
            let location = self.full_path(&relative);
            for part in self
                .line_ranges(&location, from..size, lines_before, fs.split_bytes)
                .await?
            {
                out.push(Slice {
                    key: format!("{relative}#{version}#{}", part.start),
                    params: serde_json::json!({
                        "path": relative, "start": part.start, "end": part.end,
                        "lines_before": part.lines_before,
                    }),
                });
            }
        } else if from > 0 {
            let header = if header_bytes > 0 {
                let location = self.full_path(&relative);
                let bytes = self
                    .store
                    .get_range(&location, 0..header_bytes)
                    .await
                    .map_err(|e| SourceError::transient(format!("reading {relative}: {e}")))?;
                String::from_utf8_lossy(&bytes).into_owned()
            } else {
                String::new()
            };
            out.push(Slice {
                key: format!("{relative}#{version}#{from}"),
                params: serde_json::json!({
                    "path": relative, "start": from, "end": size,
                    "lines_before": lines_before, "header": header,
                }),
            });
        } else {
            out.push(Slice {
                key: format!("{relative}#{version}"),
                params: serde_json::json!({ "path": relative }),
            });
        }
        Ok(())
    }
}

fn format_of(path: &str, declared: Option<FileFormat>) -> Result<FileFormat, SourceError> {
    if let Some(f) = declared {
        return Ok(f);
    }
    let lower = path.to_ascii_lowercase();
    if lower.ends_with(".ndjson") || lower.ends_with(".jsonl") || lower.ends_with(".json") {
        Ok(FileFormat::Ndjson)
    } else if lower.ends_with(".csv") || lower.ends_with(".tsv") {
        Ok(FileFormat::Csv)
    } else if lower.ends_with(".parquet") {
        Ok(FileFormat::Parquet)
    } else {
        Err(SourceError::data(format!(
            "{path}: cannot tell the format from the extension; set `format:` on the stream"
        )))
    }
}

/// A part of an NDJSON file that starts and ends at a line boundary.
struct LineRange {
    start: u64,
    end: u64,
    /// Lines before `start`, so records keep their line numbers in the whole file.
    lines_before: u64,
}

impl FilesSource {
    /// Cuts a file into parts of about `target` bytes at line ends, counting lines
    /// on the way (one streaming pass).
    async fn line_ranges(
        &self,
        location: &StorePath,
        range: std::ops::Range<u64>,
        lines_before: u64,
        target: u64,
    ) -> Result<Vec<LineRange>, SourceError> {
        let mut body = self.chunks(location, range.clone());
        let mut parts = Vec::new();
        let (mut start, mut lines_before) = (range.start, lines_before);
        let (mut offset, mut lines) = (range.start, lines_before);
        while let Some(chunk) = body.next().await {
            let chunk = chunk?;
            for i in memchr::memchr_iter(b'\n', &chunk) {
                lines += 1;
                let end = offset + i as u64 + 1;
                if end - start >= target {
                    parts.push(LineRange {
                        start,
                        end,
                        lines_before,
                    });
                    (start, lines_before) = (end, lines);
                }
            }
            offset += chunk.len() as u64;
        }
        if offset > start {
            parts.push(LineRange {
                start,
                end: offset,
                lines_before,
            });
        }
        Ok(parts)
    }

    /// `range` of a file in `PAGE_BYTES` reads. (A streaming `get` reads local files
    /// 8 KiB per blocking task: on a big file the thread hand-offs cost more than parsing.)
    fn chunks<'a>(
        &'a self,
        location: &'a StorePath,
        range: std::ops::Range<u64>,
    ) -> futures::stream::BoxStream<'a, Result<Bytes, SourceError>> {
        let starts = (range.start..range.end).step_by(PAGE_BYTES);
        futures::stream::iter(starts)
            .map(move |from| async move {
                let to = (from + PAGE_BYTES as u64).min(range.end);
                self.store
                    .get_range(location, from..to)
                    .await
                    .map_err(|e| SourceError::transient(format!("reading {location}: {e}")))
            })
            // The next read is under way while this one is processed.
            .buffered(2)
            .boxed()
    }

    async fn read_whole(&self, location: &StorePath, relative: &str) -> Result<Bytes, SourceError> {
        let read_error =
            |e: object_store::Error| SourceError::transient(format!("reading {relative}: {e}"));
        self.store
            .get(location)
            .await
            .map_err(read_error)?
            .bytes()
            .await
            .map_err(read_error)
    }
}

#[async_trait]
impl Source for FilesSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn streams(&self) -> Vec<StreamSpec> {
        self.streams.iter().map(|s| s.spec.clone()).collect()
    }

    async fn check(&self) -> Result<(), SourceError> {
        for stream in &self.streams {
            let prefix = self.full_path(&stream.list_prefix);
            let mut listing = self.store.list(Some(&prefix));
            let mut matched = false;
            while let Some(meta) = listing.next().await {
                let meta = meta.map_err(|e| {
                    SourceError::config(
                        format!("cannot list {}: {e}", stream.list_prefix),
                        format!("sources.{}.streams.{}.path", self.name, stream.spec.name),
                    )
                })?;
                if stream.matcher.is_match(self.relative(&meta.location)) {
                    matched = true;
                    break;
                }
            }
            if !matched {
                self.no_input(stream)?;
            }
        }
        Ok(())
    }

    async fn plan(
        &self,
        stream: &StreamSpec,
        cursor: Option<&Value>,
        _window: &RunWindow,
    ) -> Result<StreamPlan, SourceError> {
        let fs = self.stream(&stream.name)?;
        let seen: Map<String, Value> = cursor
            .and_then(|c| c.get("files"))
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let prefix = self.full_path(&fs.list_prefix);
        let mut listing = self.store.list(Some(&prefix));
        let mut current = Map::new();
        let mut files = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = meta
                .map_err(|e| SourceError::transient(format!("listing {}: {e}", fs.list_prefix)))?;
            let relative = self.relative(&meta.location);
            if fs.matcher.is_match(&relative) {
                files.push((relative, meta));
            }
        }
        files.sort_by(|a, b| a.0.cmp(&b.0));
        if files.is_empty() && seen.is_empty() {
            return self.no_input(fs).map(|()| StreamPlan {
                slices: Vec::new(),
                cursor_after: None,
            });
        }
        // Files whose size or time moved are read for their fingerprint, a few at once:
        // one after the other, a first load of a folder waits for each whole file.
        let reads: Vec<_> = files
            .iter()
            .map(|(relative, meta)| self.fingerprint_if_moved(seen.get(relative), relative, meta))
            .collect();
        let prints: Vec<Option<file_changes::Fingerprint>> = futures::stream::iter(reads)
            .buffered(FINGERPRINTS_AT_ONCE)
            .try_collect()
            .await?;
        // A replaced table is rebuilt from every file whenever any of them changed.
        let replaces = stream.write_mode == WriteMode::Replace;
        let mut slices = Vec::new();
        let mut all = Vec::new();
        for ((relative, meta), print) in files.into_iter().zip(prints) {
            let modified = meta.last_modified.timestamp_micros();
            let version = format!("{}@{modified}", meta.size);
            let entry = seen.get(&relative);
            let format = format_of(&relative, fs.format)?;
            let whole = FileSlices {
                relative: relative.clone(),
                version: version.clone(),
                from: 0,
                size: meta.size,
                lines_before: 0,
                header_bytes: 0,
            };
            let Some(print) = print else {
                // Untouched: same size and time as remembered.
                current.insert(relative, entry.cloned().unwrap_or(Value::Null));
                all.push(whole);
                continue;
            };
            let previous = SeenFile::from_cursor(entry);
            let can_grow = format != FileFormat::Parquet && !replaces;
            let change =
                file_changes::classify(previous.as_ref(), entry.is_some(), &print, can_grow);
            current.insert(relative.clone(), print.seen.to_cursor());
            let header_bytes = print.seen.first_line_bytes;
            match change {
                FileChange::SameBytes => {}
                FileChange::New => slices.push(whole.clone()),
                FileChange::Grown { from, lines_before } => slices.push(FileSlices {
                    from,
                    lines_before,
                    header_bytes: if format == FileFormat::Csv { header_bytes } else { 0 },
                    ..whole.clone()
                }),
                FileChange::Changed => match fs.on_changed_file {
                    OnChangedFile::Error => {
                        return Err(SourceError::config(
                            format!(
                                "{relative} changed since it was loaded (not only new lines at its end); \
                                 loading it again would repeat its rows. Set `on_changed_file: append_all` \
                                 to load it again anyway, or move the changed data to a new file"
                            ),
                            format!("sources.{}.streams.{}.on_changed_file", self.name, stream.name),
                        ))
                    }
                    OnChangedFile::Reload | OnChangedFile::AppendAll => slices.push(whole.clone()),
                },
            }
            all.push(whole);
        }
        let file_set_changed = seen.keys().any(|k| !current.contains_key(k));
        if replaces && (!slices.is_empty() || file_set_changed) {
            slices = all;
        }
        let mut planned = Vec::new();
        for file in slices {
            self.plan_file(fs, file, &mut planned).await?;
        }
        planned.sort_by(|a, b| a.key.cmp(&b.key));
        let cursor_after = (current != seen).then(|| serde_json::json!({ "files": current }));
        Ok(StreamPlan {
            slices: planned,
            cursor_after,
        })
    }

    async fn read(
        &self,
        stream: &StreamSpec,
        slice: &Slice,
        sink: &mut dyn PageSink,
    ) -> Result<(), SourceError> {
        let fs = self.stream(&stream.name)?;
        let relative = slice.params["path"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let format = format_of(&relative, fs.format)?;
        let location = self.full_path(&relative);
        let origin_page: Arc<str> = relative.clone().into();
        let dt = chrono::Utc::now().date_naive().to_string();
        let range = match (slice.params["start"].as_u64(), slice.params["end"].as_u64()) {
            (Some(start), Some(end)) => Some(start..end),
            _ => None,
        };
        let mut page_name = relative.replace(['/', '\\'], "_");
        if let Some(range) = &range {
            page_name = format!("{page_name}-o{}", range.start);
        }
        match format {
            FileFormat::Ndjson => {
                let range = match range {
                    Some(range) => range,
                    None => {
                        let meta = self.store.head(&location).await.map_err(|e| {
                            SourceError::transient(format!("reading {relative}: {e}"))
                        })?;
                        0..meta.size
                    }
                };
                let mut body = self.chunks(&location, range);
                let mut carry: Vec<u8> = Vec::new();
                let mut next_line: u64 = slice.params["lines_before"].as_u64().unwrap_or(0);
                let mut page_no = 0u32;
                // One page decodes on a blocking thread while the previous one is
                // typed and staged here: two cores busy on one file.
                let mut decoding: Option<tokio::task::JoinHandle<Vec<NdjsonPart>>> = None;
                loop {
                    let chunk = body.next().await.transpose()?;
                    let done = chunk.is_none();
                    // Cut after the last complete line; the rest starts the next page.
                    let page = match chunk {
                        Some(chunk) => match memchr::memrchr(b'\n', &chunk) {
                            Some(i) => {
                                let mut page = std::mem::take(&mut carry);
                                page.extend_from_slice(&chunk[..=i]);
                                carry.extend_from_slice(&chunk[i + 1..]);
                                page
                            }
                            None => {
                                carry.extend_from_slice(&chunk);
                                continue;
                            }
                        },
                        None => std::mem::take(&mut carry),
                    };
                    if !page.is_empty() {
                        page_no += 1;
                        let page = Bytes::from(page);
                        sink.land(&format!("{page_name}-p{page_no:05}"), "ndjson", &dt, &page)
                            .await?;
                        let (origin, first_line) = (origin_page.clone(), next_line);
                        next_line += ndjson_lines(&page);
                        let typer = sink.line_typer();
                        let next = tokio::task::spawn_blocking(move || {
                            let mut lines = first_line;
                            decode_ndjson(&page, &origin, &mut lines, typer.as_ref())
                        });
                        if let Some(previous) = decoding.replace(next) {
                            hand_over_parts(joined(previous, &relative).await?, sink).await?;
                        }
                    }
                    if done {
                        break;
                    }
                    if sink.is_cancelled() {
                        return Err(SourceError::transient("cancelled"));
                    }
                }
                if let Some(last) = decoding {
                    hand_over_parts(joined(last, &relative).await?, sink).await?;
                }
            }
            FileFormat::Csv => {
                let Some(range) = range else {
                    let bytes = self.read_whole(&location, &relative).await?;
                    sink.land(&format!("{page_name}-p00001"), "csv", &dt, &bytes)
                        .await?;
                    let decoded = decode_csv(&bytes, fs.delimiter, &origin_page, 0)?;
                    return hand_over(decoded, sink).await;
                };
                // New lines of a grown file: landed as read, decoded under the
                // file's header (which the slice carries, for replays too).
                let tail = self
                    .store
                    .get_range(&location, range)
                    .await
                    .map_err(|e| SourceError::transient(format!("reading {relative}: {e}")))?;
                let header = slice.params["header"].as_str().unwrap_or_default();
                sink.land(&format!("{page_name}-p00001"), "csv", &dt, &tail)
                    .await?;
                let lines_before = slice.params["lines_before"].as_u64().unwrap_or(0);
                let decoded = decode_csv(
                    &[header.as_bytes(), &tail[..]].concat(),
                    fs.delimiter,
                    &origin_page,
                    lines_before.saturating_sub(1),
                )?;
                hand_over(decoded, sink).await?;
            }
            FileFormat::Parquet => {
                let bytes = self.read_whole(&location, &relative).await?;
                sink.land(&format!("{page_name}-p00001"), "parquet", &dt, &bytes)
                    .await?;
                decode_parquet(bytes, &origin_page, sink).await?;
            }
        }
        Ok(())
    }

    fn decode(
        &self,
        stream: &StreamSpec,
        slice: &Slice,
        page: &LandedPage,
        body: &[u8],
        state: &mut DecodeState,
    ) -> Option<Result<DecodedPage, SourceError>> {
        let fs = self.stream(&stream.name).ok()?;
        let origin: Arc<str> = page.path.clone();
        if page.path.ends_with(".ndjson.zst") {
            let lines = state
                .lines
                .get_or_insert_with(|| slice.params["lines_before"].as_u64().unwrap_or(0));
            Some(Ok(decode_ndjson_records(body, &origin, lines)))
        } else if page.path.ends_with(".csv.zst") {
            // A grown file's new lines were landed without the header the slice names.
            let header = slice.params["header"].as_str().unwrap_or_default();
            let skipped = slice.params["lines_before"].as_u64().unwrap_or(0);
            let body = [header.as_bytes(), body].concat();
            Some(decode_csv(
                &body,
                fs.delimiter,
                &origin,
                skipped.saturating_sub(1),
            ))
        } else {
            None
        }
    }

    fn max_concurrency(&self) -> usize {
        self.max_concurrency
    }
}

