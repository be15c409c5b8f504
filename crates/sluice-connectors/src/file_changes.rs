//! What happened to a `files` stream's file since the run that last read it.
//!
//! The cursor keeps, per file, its size and modification time (a cheap "nothing
//! happened" test) and the SHA-256 of its bytes with its line count. When size or
//! time differ, the file is read once and classified by content, never by time:
//!
//! - the same bytes (a `touch`, a copy): nothing to load;
//! - the old bytes followed by new complete lines (a log that grew): only the new
//!   lines load, numbered from where the old ones ended;
//! - anything else (rewritten, truncated, a last line extended): the stream's
//!   `on_changed_file` policy decides — never a silent second copy.

use std::sync::Arc;

use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use sluice_core::destination::WriteMode;
use sluice_core::source::SourceError;

/// Bytes hashed per read.
const READ_BYTES: u64 = 4 * 1024 * 1024;

/// What to do with a file that changed other than by growing (`on_changed_file`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnChangedFile {
    /// Load the whole file again: its rows replace what the write mode replaces
    /// (merge on the key, its partitions, the table). Not for `append`, which
    /// cannot take rows back.
    Reload,
    /// Fail the stream, naming the file (the default for `append`).
    Error,
    /// Load the whole file again on top of what it loaded before (you want both copies).
    AppendAll,
}

impl OnChangedFile {
    /// `error` for append (a reload would double rows), `reload` for write modes that replace.
    pub fn default_for(mode: WriteMode) -> Self {
        match mode {
            WriteMode::Append => OnChangedFile::Error,
            _ => OnChangedFile::Reload,
        }
    }
}

/// One file as the cursor remembers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenFile {
    pub size: u64,
    /// Modification time, microseconds since the epoch.
    pub modified: i64,
    pub sha256: String,
    /// Line ends in the file.
    pub lines: u64,
    /// Byte length of the first line including its end (a CSV header).
    pub first_line_bytes: u64,
    /// Empty or ending in a line end: lines added later start a new line.
    pub ends_with_line_end: bool,
}

impl SeenFile {
    /// The cursor entry; entries of older cursors (`"size@time"` strings) read as `None`.
    pub fn from_cursor(entry: Option<&Value>) -> Option<SeenFile> {
        entry.and_then(|e| serde_json::from_value(e.clone()).ok())
    }

    pub fn to_cursor(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// How a file compares with what the cursor remembers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileChange {
    /// Read, and its bytes are the ones loaded before.
    SameBytes,
    /// Never loaded.
    New,
    /// The old bytes, then new lines from byte `from` (after `lines_before` lines).
    Grown { from: u64, lines_before: u64 },
    /// Rewritten, truncated, or its last line extended.
    Changed,
}

/// A file's content summary, and the same for its first `prefix` bytes.
#[derive(Debug, Clone)]
pub struct Fingerprint {
    pub seen: SeenFile,
    /// SHA-256 and line ends of the first `prefix` bytes, when asked for.
    prefix: Option<(String, u64)>,
}

/// The cheap test: same size and modification time as remembered.
pub fn untouched(entry: Option<&Value>, size: u64, modified: i64) -> bool {
    match entry {
        Some(Value::String(version)) => *version == format!("{size}@{modified}"),
        entry => {
            SeenFile::from_cursor(entry).is_some_and(|s| s.size == size && s.modified == modified)
        }
    }
}

/// Running totals over a file's bytes.
#[derive(Default)]
struct Tally {
    sha: Sha256,
    lines: u64,
    first_line_bytes: u64,
    last_byte: Option<u8>,
}

impl Tally {
    /// Adds `part`, which starts at byte `at` of the file.
    fn feed(&mut self, at: u64, part: &[u8]) {
        if self.first_line_bytes == 0 {
            if let Some(i) = memchr::memchr(b'\n', part) {
                self.first_line_bytes = at + i as u64 + 1;
            }
        }
        self.sha.update(part);
        self.lines += memchr::memchr_iter(b'\n', part).count() as u64;
        self.last_byte = part.last().copied().or(self.last_byte);
    }

    fn summary(&self) -> (String, u64) {
        (hex::encode(self.sha.clone().finalize()), self.lines)
    }
}

/// Reads `location` once: SHA-256 and line ends of the whole file and of its first
/// `prefix` bytes.
pub async fn fingerprint(
    store: &Arc<dyn ObjectStore>,
    location: &StorePath,
    relative: &str,
    size: u64,
    modified: i64,
    prefix: Option<u64>,
) -> Result<Fingerprint, SourceError> {
    let mut tally = Tally::default();
    let mut prefix_summary = (prefix == Some(0)).then(|| tally.summary());
    let mut offset = 0u64;
    while offset < size {
        let to = (offset + READ_BYTES).min(size);
        let chunk = store
            .get_range(location, offset..to)
            .await
            .map_err(|e| SourceError::transient(format!("reading {relative}: {e}")))?;
        let (mut part, mut at): (&[u8], u64) = (&chunk[..], offset);
        // The prefix ends inside this chunk: note its summary on the way.
        if let Some(cut) = prefix.filter(|p| *p > offset && *p <= to) {
            let (head, tail) = part.split_at((cut - offset) as usize);
            tally.feed(at, head);
            prefix_summary = Some(tally.summary());
            (part, at) = (tail, cut);
        }
        tally.feed(at, part);
        offset = to;
    }
    let (sha256, lines) = tally.summary();
    Ok(Fingerprint {
        seen: SeenFile {
            size,
            modified,
            sha256,
            lines,
            first_line_bytes: tally.first_line_bytes,
            ends_with_line_end: size == 0 || tally.last_byte == Some(b'\n'),
        },
        prefix: prefix_summary,
    })
}

/// Classifies a file that was read; `can_grow`: its format is read line by line.
pub fn classify(
    previous: Option<&SeenFile>,
    had_entry: bool,
    now: &Fingerprint,
    can_grow: bool,
) -> FileChange {
    let Some(previous) = previous else {
        // An entry of an older cursor without a hash: it did change.
        return if had_entry {
            FileChange::Changed
        } else {
            FileChange::New
        };
    };
    if previous.sha256 == now.seen.sha256 {
        return FileChange::SameBytes;
    }
    let grew = can_grow
        && now.seen.size > previous.size
        && previous.ends_with_line_end
        && now
            .prefix
            .as_ref()
            .is_some_and(|(sha, lines)| *sha == previous.sha256 && *lines == previous.lines);
    if grew {
        FileChange::Grown {
            from: previous.size,
            lines_before: previous.lines,
        }
    } else {
        FileChange::Changed
    }
}
