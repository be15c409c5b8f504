//! `type: generate`: deterministic synthetic rows, for benchmarks, load tests and
//! trying a pipeline without credentials.
//!
//! Row `i` (0-based) of a stream is a pure function of `i`, so any run, replay or
//! test can compute the truth it should load. Pages of `page_rows` rows are landed
//! as NDJSON and decoded like any other source's pages, so the whole data path
//! (lake, typing, D1, models, destinations) is exercised.
//!
//! ```yaml
//! sources:
//!   synthetic:
//!     type: generate
//!     streams:
//!       insights: { rows: 1000000, days: 30, start_date: 2026-01-01 }
//! ```
//!
//! Columns: `id` bigint (i), `day` date (`start_date + i % days`), `account` text
//! (`acct_<i % accounts>`), `clicks` bigint (`i * 7 % 1000`), `spend`
//! numeric(12,2) (`i * 13 % 100000` cents).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{Days, NaiveDate};
use serde::Deserialize;
use serde_json::{json, Value};
use sluice_core::destination::WriteMode;
use sluice_core::schema::{Field, FieldType, TableSchema};
use sluice_core::source::{
    DecodeState, DecodedPage, LandedPage, PageSink, RunWindow, Slice, Source, SourceError,
    StreamPlan, StreamSpec,
};
use sluice_core::typing::{decode_json_line, Origin};

/// `type: generate`.
pub const SOURCE_TYPES: &[crate::SourceType] = &[crate::SourceType {
        name: "generate",
        build: |doc, section, _ctx| {
            Ok(Arc::new(crate::build_from_config(
                doc,
                section,
                GenerateSource::new,
            )?))
        },
}];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateConfig {
    /// Stream name → how many rows and over which days.
    pub streams: BTreeMap<String, GeneratedStream>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeneratedStream {
    pub rows: u64,
    /// Rows per landed page (and per slice).
    #[serde(default = "default_page_rows")]
    pub page_rows: u64,
    /// Distinct `day` values, from `start_date`.
    #[serde(default = "default_days")]
    pub days: u64,
    #[serde(default = "default_start")]
    pub start_date: NaiveDate,
    /// Distinct `account` values.
    #[serde(default = "default_accounts")]
    pub accounts: u64,
    /// The D1 table (default `<source>_<stream>`).
    #[serde(default)]
    pub table: Option<String>,
}

fn default_page_rows() -> u64 {
    50_000
}
fn default_days() -> u64 {
    30
}
fn default_start() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 1, 1).expect("a valid date")
}
fn default_accounts() -> u64 {
    16
}

pub struct GenerateSource {
    name: String,
    streams: Vec<(StreamSpec, GeneratedStream)>,
}

impl GenerateSource {
    pub fn new(name: &str, config: GenerateConfig, key_prefix: &str) -> Result<Self, SourceError> {
        let mut streams = Vec::new();
        for (stream, options) in config.streams {
            for (key, value) in [
                ("page_rows", options.page_rows),
                ("days", options.days),
                ("accounts", options.accounts),
            ] {
                if value == 0 {
                    return Err(SourceError::config(
                        format!("`{key}` must be at least 1"),
                        format!("{key_prefix}.streams.{stream}.{key}"),
                    ));
                }
            }
            let spec = StreamSpec {
                table: options
                    .table
                    .clone()
                    .unwrap_or_else(|| format!("{name}_{stream}")),
                name: stream,
                schema: TableSchema::new(vec![
                    Field::new("id", FieldType::Bigint),
                    Field::new("day", FieldType::Date),
                    Field::new("account", FieldType::Text),
                    Field::new("clicks", FieldType::Bigint),
                    Field::new("spend", FieldType::Numeric {
                        precision: 12,
                        scale: 2,
                    }),
                ]),
                infer_columns: false,
                primary_key: vec!["id".into()],
                partition_column: None,
                write_mode: WriteMode::Replace,
                dedupe: Default::default(),
            };
            streams.push((spec, options));
        }
        Ok(GenerateSource {
            name: name.to_string(),
            streams,
        })
    }

    fn stream(&self, name: &str) -> Result<&GeneratedStream, SourceError> {
        self.streams
            .iter()
            .find(|(spec, _)| spec.name == name)
            .map(|(_, options)| options)
            .ok_or_else(|| SourceError::data(format!("no generated stream `{name}`")))
    }
}

/// The NDJSON lines of rows `first..first + count`.
fn page(options: &GeneratedStream, first: u64, count: u64) -> Vec<u8> {
    let mut out = String::with_capacity(count as usize * 96);
    for i in first..first + count {
        let day = options
            .start_date
            .checked_add_days(Days::new(i % options.days))
            .unwrap_or(options.start_date);
        let cents = i * 13 % 100_000;
        let _ = writeln!(
            out,
            r#"{{"id":{i},"day":"{day}","account":"acct_{}","clicks":{},"spend":"{}.{:02}"}}"#,
            i % options.accounts,
            i * 7 % 1000,
            cents / 100,
            cents % 100
        );
    }
    out.into_bytes()
}

fn decode(origin: &Arc<str>, body: &[u8]) -> DecodedPage {
    let mut decoded = DecodedPage::default();
    for (n, line) in body.split(|b| *b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let origin = Origin {
            page: origin.clone(),
            line: n as u64 + 1,
        };
        match decode_json_line(line, origin) {
            Ok(record) => decoded.records.push(record),
            Err(rejected) => decoded.rejected.push(rejected),
        }
    }
    decoded
}

#[async_trait]
impl Source for GenerateSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn streams(&self) -> Vec<StreamSpec> {
        self.streams.iter().map(|(spec, _)| spec.clone()).collect()
    }

    async fn check(&self) -> Result<(), SourceError> {
        Ok(())
    }

    async fn plan(
        &self,
        stream: &StreamSpec,
        _cursor: Option<&Value>,
        _window: &RunWindow,
    ) -> Result<StreamPlan, SourceError> {
        let options = self.stream(&stream.name)?;
        let mut slices = Vec::new();
        let mut first = 0;
        while first < options.rows {
            let count = options.page_rows.min(options.rows - first);
            slices.push(Slice {
                key: format!("{first:012}"),
                params: json!({"first": first, "count": count}),
            });
            first += count;
        }
        Ok(StreamPlan {
            slices,
            cursor_after: None,
        })
    }

    async fn read(
        &self,
        stream: &StreamSpec,
        slice: &Slice,
        sink: &mut dyn PageSink,
    ) -> Result<(), SourceError> {
        let options = self.stream(&stream.name)?;
        let first = slice.params["first"].as_u64().unwrap_or(0);
        let count = slice.params["count"].as_u64().unwrap_or(0);
        let body = Bytes::from(page(options, first, count));
        let dt = options.start_date.to_string();
        let landed = sink.land("p00001", "ndjson", &dt, &body).await?;
        let decoded = decode(&landed.path, &body);
        sink.records(decoded.records).await?;
        sink.rejected(decoded.rejected).await
    }

    fn decode(
        &self,
        _stream: &StreamSpec,
        _slice: &Slice,
        page: &LandedPage,
        body: &[u8],
        _state: &mut DecodeState,
    ) -> Option<Result<DecodedPage, SourceError>> {
        Some(Ok(decode(&page.path, body)))
    }

    fn max_concurrency(&self) -> usize {
        2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_a_function_of_their_index() {
        let options = GeneratedStream {
            rows: 3,
            page_rows: 2,
            days: 2,
            start_date: default_start(),
            accounts: 16,
            table: None,
        };
        let text = String::from_utf8(page(&options, 1, 2)).unwrap();
        assert_eq!(
            text,
            "{\"id\":1,\"day\":\"2026-01-02\",\"account\":\"acct_1\",\"clicks\":7,\"spend\":\"0.13\"}\n\
             {\"id\":2,\"day\":\"2026-01-01\",\"account\":\"acct_2\",\"clicks\":14,\"spend\":\"0.26\"}\n"
        );
        let decoded = decode(&Arc::from("p"), text.as_bytes());
        assert_eq!(decoded.records.len(), 2);
        assert_eq!(decoded.records[1].origin.line, 2);
    }
}
