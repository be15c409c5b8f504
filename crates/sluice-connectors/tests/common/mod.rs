//! A test harness standing in for the executor: plans a stream, reads every
//! slice (in parallel, each retried whole on transient errors, its partial
//! records discarded — as the executor does) into a collecting [`PageSink`].

#![allow(dead_code)]

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{Map, Value};
use sluice_core::source::{
    DecodeState, ErrorClass, LandedPage, PageSink, RunWindow, Slice, Source, SourceError,
    StreamSpec,
};
use sluice_core::typing::{Record, Rejected};

/// Everything one slice handed over.
#[derive(Default)]
pub struct CollectSink {
    pub pages: Vec<(String, Vec<u8>)>,
    pub records: Vec<Record>,
    pub rejected: Vec<Rejected>,
    pub warnings: Vec<String>,
    slice: String,
}

#[async_trait]
impl PageSink for CollectSink {
    async fn land(
        &mut self,
        name: &str,
        extension: &str,
        dt: &str,
        body: &Bytes,
    ) -> Result<LandedPage, SourceError> {
        let path = format!("raw/{}/dt={dt}/{name}.{extension}", self.slice);
        assert!(
            !self.pages.iter().any(|(p, _)| p == &path),
            "page name reused within a slice: {path}"
        );
        self.pages.push((path.clone(), body.to_vec()));
        Ok(LandedPage {
            path: Arc::from(path),
        })
    }
    async fn records(&mut self, records: Vec<Record>) -> Result<(), SourceError> {
        for r in &records {
            assert!(
                self.pages.iter().any(|(p, _)| **p == *r.origin.page),
                "record from a page that was not landed"
            );
        }
        self.records.extend(records);
        Ok(())
    }
    async fn rejected(&mut self, rejected: Vec<Rejected>) -> Result<(), SourceError> {
        self.rejected.extend(rejected);
        Ok(())
    }
    fn warn(&mut self, message: String) {
        self.warnings.push(message);
    }
    fn is_cancelled(&self) -> bool {
        false
    }
}

/// The outcome of one stream read.
#[derive(Default)]
pub struct Extract {
    pub rows: Vec<Map<String, Value>>,
    pub rejected: Vec<Rejected>,
    pub warnings: Vec<String>,
    pub pages: usize,
    /// The landed pages' bodies, as landed.
    pub landed: Vec<Vec<u8>>,
    pub slices: usize,
    pub cursor_after: Option<Value>,
}

pub fn spec(source: &dyn Source, name: &str) -> StreamSpec {
    source
        .streams()
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no stream {name}"))
}

/// plan() + read() of every slice, like the executor.
pub async fn extract(
    source: &dyn Source,
    stream: &str,
    cursor: Option<&Value>,
    window: &RunWindow,
) -> Result<Extract, SourceError> {
    let spec = spec(source, stream);
    let mut plan = source.plan(&spec, cursor, window).await?;
    plan.slices = source.prepare(&spec, plan.slices).await?;
    let slices = plan.slices.len();
    let results: Vec<Result<CollectSink, SourceError>> = futures::stream::iter(plan.slices.iter())
        .map(|slice| {
            let spec = &spec;
            async move {
                let mut last = None;
                for _attempt in 0..4 {
                    let mut sink = CollectSink {
                        slice: slice.key.replace('/', "_"),
                        ..Default::default()
                    };
                    match source.read(spec, slice, &mut sink).await {
                        Ok(()) => return Ok(sink),
                        Err(e) if e.class == ErrorClass::Transient => last = Some(e),
                        Err(e) => return Err(e),
                    }
                }
                Err(last.expect("at least one attempt"))
            }
        })
        .buffer_unordered(source.max_concurrency())
        .collect()
        .await;
    let mut out = Extract {
        slices,
        cursor_after: plan.cursor_after,
        ..Default::default()
    };
    for r in results {
        let sink = r?;
        out.pages += sink.pages.len();
        out.landed
            .extend(sink.pages.into_iter().map(|(_, body)| body));
        out.rows.extend(sink.records.into_iter().map(|r| r.fields));
        out.rejected.extend(sink.rejected);
        out.warnings.extend(sink.warnings);
    }
    Ok(out)
}

pub fn window(today: &str) -> RunWindow {
    RunWindow {
        since: None,
        until: None,
        today: today.parse().unwrap(),
        full_refresh: false,
    }
}

pub fn backfill(today: &str, since: &str, until: &str) -> RunWindow {
    RunWindow {
        since: Some(since.parse().unwrap()),
        until: Some(until.parse().unwrap()),
        today: today.parse().unwrap(),
        full_refresh: false,
    }
}

pub fn text(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

pub fn int(v: Option<&Value>) -> i64 {
    match v {
        Some(Value::String(s)) => s.parse().unwrap_or_else(|_| panic!("not an integer: {s}")),
        Some(Value::Number(n)) => n.as_i64().unwrap(),
        _ => 0,
    }
}

/// One read attempt of one slice: the pages it landed (in order, with their
/// bodies) and what it handed over. A retried slice starts a fresh attempt, as
/// the executor discards a failed attempt's pages.
pub struct AttemptSink {
    prefix: String,
    pages: Vec<(Arc<str>, Vec<u8>)>,
    records: Vec<Record>,
    rejected: Vec<Rejected>,
}

#[async_trait]
impl PageSink for AttemptSink {
    async fn land(
        &mut self,
        name: &str,
        extension: &str,
        dt: &str,
        body: &Bytes,
    ) -> Result<LandedPage, SourceError> {
        let path: Arc<str> = format!("{}/dt={dt}/{name}.{extension}", self.prefix).into();
        assert!(
            !self.pages.iter().any(|(p, _)| *p == path),
            "page name reused within an attempt: {path}"
        );
        self.pages.push((path.clone(), body.to_vec()));
        Ok(LandedPage { path })
    }
    async fn records(&mut self, records: Vec<Record>) -> Result<(), SourceError> {
        self.records.extend(records);
        Ok(())
    }
    async fn rejected(&mut self, rejected: Vec<Rejected>) -> Result<(), SourceError> {
        self.rejected.extend(rejected);
        Ok(())
    }
    fn warn(&mut self, _message: String) {}
    fn is_cancelled(&self) -> bool {
        false
    }
}

/// What reading and replaying one stream went through.
#[derive(Debug, Default)]
pub struct ReplayCounts {
    pub slices: usize,
    /// Read attempts that failed and were discarded.
    pub failed_attempts: usize,
    pub pages: usize,
    /// Records in the landed pages, repeats included.
    pub landed_rows: usize,
    pub records: usize,
}

/// Reads every slice of `stream` (each retried whole on transient errors, a new
/// attempt's pages replacing the failed one's), then decodes the last attempt's
/// pages in landing order, one `DecodeState` per slice, and asserts the decoded
/// records are exactly those `read` handed over: fields, origins, order, count.
/// `rows_in_page` counts the records a landed page carries, repeats included.
pub async fn read_then_decode(
    source: &dyn Source,
    stream: &str,
    run: &sluice_core::source::RunWindow,
    rows_in_page: fn(&[u8]) -> usize,
) -> ReplayCounts {
    let spec = spec(source, stream);
    let mut plan = source.plan(&spec, None, run).await.unwrap();
    plan.slices = source.prepare(&spec, plan.slices).await.unwrap();
    let reads: Vec<(Slice, AttemptSink, usize)> = futures::stream::iter(plan.slices)
        .map(|slice| {
            let spec = &spec;
            async move {
                let mut failed = 0;
                for attempt in 1..=30 {
                    let mut sink = AttemptSink {
                        prefix: format!("raw/{stream}/{}/a{attempt}", slice.key.replace('/', "_")),
                        pages: Vec::new(),
                        records: Vec::new(),
                        rejected: Vec::new(),
                    };
                    match source.read(spec, &slice, &mut sink).await {
                        Ok(()) => return (slice, sink, failed),
                        Err(e) if e.class == ErrorClass::Transient => failed += 1,
                        Err(e) => panic!("{stream} {}: {e:?}", slice.key),
                    }
                }
                panic!("{stream} {}: still failing after 30 attempts", slice.key)
            }
        })
        .buffer_unordered(source.max_concurrency())
        .collect()
        .await;
    let mut counts = ReplayCounts::default();
    for (slice, sink, failed) in reads {
        counts.slices += 1;
        counts.failed_attempts += failed;
        counts.pages += sink.pages.len();
        counts.records += sink.records.len();
        let mut state = DecodeState::default();
        let mut records = Vec::new();
        let mut rejected = Vec::new();
        for (path, body) in &sink.pages {
            counts.landed_rows += rows_in_page(body);
            let page = LandedPage { path: path.clone() };
            let decoded = source
                .decode(&spec, &slice, &page, body, &mut state)
                .expect("decode is supported")
                .unwrap_or_else(|e| panic!("{path}: {e:?}"));
            records.extend(decoded.records);
            rejected.extend(decoded.rejected);
        }
        let what = format!("{stream} {}", slice.key);
        assert_eq!(records.len(), sink.records.len(), "{what}: record count");
        for (i, (got, want)) in records.iter().zip(&sink.records).enumerate() {
            assert_eq!(got.origin, want.origin, "{what}: record {i}");
            assert_eq!(got.fields, want.fields, "{what}: record {i}");
        }
        assert_eq!(
            rejected.len(),
            sink.rejected.len(),
            "{what}: rejected count"
        );
        for (got, want) in rejected.iter().zip(&sink.rejected) {
            assert_eq!(
                (&got.origin, &got.reason, &got.raw),
                (&want.origin, &want.reason, &want.raw),
                "{what}"
            );
        }
    }
    counts
}

/// Decodes one page on its own (a fresh `DecodeState`), as a replay of `slice` would.
pub fn decode_page(
    source: &dyn Source,
    stream: &StreamSpec,
    slice: &Slice,
    body: &[u8],
) -> Result<sluice_core::source::DecodedPage, SourceError> {
    let page = LandedPage {
        path: "raw/x/p00001.json".into(),
    };
    source
        .decode(stream, slice, &page, body, &mut DecodeState::default())
        .expect("decode is supported")
}
