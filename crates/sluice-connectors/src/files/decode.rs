//! Decoding a landed page of a `files` stream: NDJSON (typed straight into cells
//! where the line typer can), CSV and Parquet, each rejected line or row quarantined
//! with its file and line.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Map, Value};
use sluice_core::line_typer::LineTyper;
use sluice_core::line_typer::TypedLines;
use sluice_core::source::{DecodedPage, PageSink, SourceError};
use sluice_core::typing::{decode_json_line, Origin, Record, Rejected};

use super::{RECORDS_PER_CHUNK, UTF8_BOM};

/// Lines in an NDJSON page: its line ends, plus a last line without one.
pub(super) fn ndjson_lines(page: &[u8]) -> u64 {
    let ends = memchr::memchr_iter(b'\n', page).count() as u64;
    ends + u64::from(!page.is_empty() && !page.ends_with(b"\n"))
}

/// A decoded NDJSON page: runs of typed lines and of records, in file order.
pub(super) enum NdjsonPart {
    Typed(Box<TypedLines>),
    Decoded(DecodedPage),
}

/// Decodes NDJSON lines — typed straight into cells where `typer` can, as records
/// otherwise; a line that is not a JSON object is rejected with its line number.
/// `line_no` counts the lines before the page and is advanced past it.
pub(super) fn decode_ndjson(
    page: &Bytes,
    origin: &Arc<str>,
    line_no: &mut u64,
    typer: Option<&LineTyper>,
) -> Vec<NdjsonPart> {
    let new_run = |t: &LineTyper| TypedLines::new(t, origin.clone(), page.clone());
    let mut parts = Vec::new();
    let mut typed = typer.map(new_run);
    let mut decoded = DecodedPage::default();
    if page.is_empty() {
        return parts;
    }
    let body = page.strip_suffix(b"\n").unwrap_or(page);
    let mut start = 0;
    for line in body.split(|&b| b == b'\n') {
        *line_no += 1;
        let mut range = start..start + line.len() - usize::from(line.ends_with(b"\r"));
        start += line.len() + 1;
        // A byte-order mark some editors write is not part of the first record.
        if *line_no == 1 && line.starts_with(UTF8_BOM) {
            range.start += UTF8_BOM.len();
        }
        let line = &page[range.clone()];
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if let (Some(typer), Some(run)) = (typer, typed.as_mut()) {
            if run.push(typer, *line_no, range) {
                if !decoded.records.is_empty() || !decoded.rejected.is_empty() {
                    parts.push(NdjsonPart::Decoded(std::mem::take(&mut decoded)));
                }
                continue;
            }
            if !run.is_empty() {
                let done = std::mem::replace(run, new_run(typer));
                parts.push(NdjsonPart::Typed(Box::new(done.seal())));
            }
        }
        let origin = Origin {
            page: origin.clone(),
            line: *line_no,
        };
        match decode_json_line(line, origin) {
            Ok(record) => decoded.records.push(record),
            Err(rejected) => decoded.rejected.push(rejected),
        }
    }
    if let Some(run) = typed.filter(|run| !run.is_empty()) {
        parts.push(NdjsonPart::Typed(Box::new(run.seal())));
    }
    if !decoded.records.is_empty() || !decoded.rejected.is_empty() {
        parts.push(NdjsonPart::Decoded(decoded));
    }
    parts
}

/// The general path only (replays): every line as a record.
pub(super) fn decode_ndjson_records(page: &[u8], origin: &Arc<str>, line_no: &mut u64) -> DecodedPage {
    let mut all = DecodedPage::default();
    for part in decode_ndjson(&Bytes::copy_from_slice(page), origin, line_no, None) {
        if let NdjsonPart::Decoded(mut decoded) = part {
            all.records.append(&mut decoded.records);
            all.rejected.append(&mut decoded.rejected);
        }
    }
    all
}

pub(super) async fn joined(
    decoding: tokio::task::JoinHandle<Vec<NdjsonPart>>,
    relative: &str,
) -> Result<Vec<NdjsonPart>, SourceError> {
    decoding
        .await
        .map_err(|e| SourceError::transient(format!("decoding {relative}: {e}")))
}

/// Hands the parts of an NDJSON page to the executor, in order.
pub(super) async fn hand_over_parts(
    parts: Vec<NdjsonPart>,
    sink: &mut dyn PageSink,
) -> Result<(), SourceError> {
    for part in parts {
        match part {
            NdjsonPart::Typed(lines) => sink.typed_lines(*lines).await?,
            NdjsonPart::Decoded(decoded) => hand_over(decoded, sink).await?,
        }
    }
    Ok(())
}

/// Hands a decoded page to the executor in bounded chunks.
pub(super) async fn hand_over(decoded: DecodedPage, sink: &mut dyn PageSink) -> Result<(), SourceError> {
    let mut records = decoded.records;
    while records.len() > RECORDS_PER_CHUNK {
        let rest = records.split_off(RECORDS_PER_CHUNK);
        sink.records(std::mem::replace(&mut records, rest)).await?;
    }
    if !records.is_empty() {
        sink.records(records).await?;
    }
    if !decoded.rejected.is_empty() {
        sink.rejected(decoded.rejected).await?;
    }
    Ok(())
}

/// Decodes CSV with a header row; a row with the wrong number of fields is rejected with its line.
/// `skipped_lines`: lines of the file between the header and `bytes`' first row.
pub(super) fn decode_csv(
    bytes: &[u8],
    delimiter: u8,
    origin: &Arc<str>,
    skipped_lines: u64,
) -> Result<DecodedPage, SourceError> {
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .flexible(true)
        .from_reader(bytes);
    let headers: Vec<String> = reader
        .headers()
        .map_err(|e| SourceError::data(format!("{origin}: cannot read the CSV header: {e}")))?
        .iter()
        .map(str::to_string)
        .collect();
    let mut records = Vec::new();
    let mut rejected = Vec::new();
    let mut row = csv::StringRecord::new();
    let mut lines = LineCounter::default();
    loop {
        let line = reader.position().line();
        match reader.read_record(&mut row) {
            Ok(false) => break,
            Ok(true) => {
                let origin = Origin {
                    page: origin.clone(),
                    line: row
                        .position()
                        .map_or(line, |p| lines.line_at(bytes, p.byte() as usize))
                        + skipped_lines,
                };
                if row.len() != headers.len() {
                    rejected.push(Rejected {
                        origin,
                        reason: format!(
                            "ragged row: {} fields, the header has {}",
                            row.len(),
                            headers.len()
                        ),
                        raw: row
                            .iter()
                            .collect::<Vec<_>>()
                            .join(&(delimiter as char).to_string()),
                    });
                    continue;
                }
                // Empty CSV cells are NULL: CSV cannot tell them apart.
                let fields: Map<String, Value> = headers
                    .iter()
                    .zip(row.iter())
                    .map(|(h, v)| {
                        (
                            h.clone(),
                            if v.is_empty() {
                                Value::Null
                            } else {
                                Value::String(v.to_string())
                            },
                        )
                    })
                    .collect();
                records.push(Record { fields, origin });
            }
            Err(e) => {
                let line = e
                    .position()
                    .map_or(line, |p| lines.line_at(bytes, p.byte() as usize))
                    + skipped_lines;
                rejected.push(Rejected {
                    origin: Origin {
                        page: origin.clone(),
                        line,
                    },
                    reason: format!("unreadable CSV row: {e}"),
                    raw: String::new(),
                });
                if !matches!(
                    e.kind(),
                    csv::ErrorKind::Utf8 { .. } | csv::ErrorKind::UnequalLengths { .. }
                ) {
                    break;
                }
            }
        }
    }
    Ok(DecodedPage { records, rejected })
}

/// Line numbers of CSV records from their byte offsets. (The reader's own line
/// count lags by one after a CRLF line end: a record's start is recorded before
/// the `\n` of the line before it is consumed.)
#[derive(Default)]
pub(super) struct LineCounter {
    /// A byte offset already counted, and the (1-based) line it is on.
    byte: usize,
    line: u64,
}

impl LineCounter {
    /// The line a record starting at `byte` is on; offsets come in increasing order.
    fn line_at(&mut self, bytes: &[u8], byte: usize) -> u64 {
        let mut at = byte.min(bytes.len()).max(self.byte);
        // A record "starting" on the line end before it (CRLF, blank lines) starts after it.
        while at < bytes.len() && matches!(bytes[at], b'\n' | b'\r') {
            at += 1;
        }
        self.line =
            self.line.max(1) + memchr::memchr_iter(b'\n', &bytes[self.byte..at]).count() as u64;
        self.byte = at;
        self.line
    }
}

/// Decodes Parquet row by row into records (types are re-checked against the stream's schema).
pub(super) async fn decode_parquet(
    bytes: Bytes,
    origin: &Arc<str>,
    sink: &mut dyn PageSink,
) -> Result<(), SourceError> {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .and_then(|b| b.with_batch_size(RECORDS_PER_CHUNK).build())
        .map_err(|e| SourceError::data(format!("{origin}: not a readable Parquet file: {e}")))?;
    let mut row_no = 0u64;
    for batch in reader {
        let batch = batch.map_err(|e| SourceError::data(format!("{origin}: {e}")))?;
        let mut out = Vec::new();
        {
            let mut writer = arrow::json::LineDelimitedWriter::new(&mut out);
            writer
                .write(&batch)
                .and_then(|_| writer.finish())
                .map_err(|e| SourceError::data(format!("{origin}: {e}")))?;
        }
        let mut records = Vec::with_capacity(batch.num_rows());
        for line in out.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            row_no += 1;
            let fields: Map<String, Value> = serde_json::from_slice(line)
                .map_err(|e| SourceError::data(format!("{origin}: {e}")))?;
            records.push(Record {
                fields,
                origin: Origin {
                    page: origin.clone(),
                    line: row_no,
                },
            });
        }
        sink.records(records).await?;
    }
    Ok(())
}
