//! `sluice replay`: re-run a past run's extraction from the pages it landed,
//! without calling any source.
//!
//! [`ReplaySource`] wraps a configured source: its slices are the slices of the
//! past run (one per landed slice, last attempt only — earlier attempts failed and
//! were discarded), and reading a slice decodes its landed pages with the source's
//! own [`Source::decode`]. Everything after that — typing, schema policies,
//! quarantine, the load — is the normal executor path, so a run frozen by a schema
//! policy can be replayed after the policy changed.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

use crate::lake::Lake;
use crate::source::{
    DecodeState, LandedPage, PageSink, RunWindow, Slice, Source, SourceError, StreamPlan,
    StreamSpec,
};

pub struct ReplaySource {
    inner: Arc<dyn Source>,
    lake: Lake,
    run_id: String,
}

impl ReplaySource {
    pub fn new(inner: Arc<dyn Source>, lake: Lake, run_id: impl Into<String>) -> Self {
        ReplaySource {
            inner,
            lake,
            run_id: run_id.into(),
        }
    }
}

/// Splits a landed page's file name `s00003-a1-p00002.json.zst` into (slice, attempt).
fn slice_and_attempt(file: &str) -> Option<(&str, u32)> {
    let mut parts = file.splitn(3, '-');
    let slice = parts.next()?;
    let attempt = parts.next()?.strip_prefix('a')?.parse().ok()?;
    Some((slice, attempt))
}

#[async_trait]
impl Source for ReplaySource {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn streams(&self) -> Vec<StreamSpec> {
        self.inner.streams()
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
        let prefix = crate::lake::layout::raw_stream(self.inner.name(), &stream.name);
        let objects = self
            .lake
            .list(&prefix)
            .await
            .map_err(|e| SourceError::transient(e.to_string()))?;
        // slice → (last attempt, its pages in order)
        let mut slices: BTreeMap<String, (u32, Vec<String>)> = BTreeMap::new();
        let manifests = format!("{prefix}/_slices/{}/", self.run_id);
        let mut planned: BTreeMap<String, Value> = BTreeMap::new();
        for object in objects {
            if let Some(file) = object.path.strip_prefix(manifests.as_str()) {
                // What the slice asked the source for (absent in runs before manifests).
                let slice = file.trim_end_matches(".json").to_string();
                if let Ok(Some(body)) = self.lake.get(&object.path).await {
                    if let Ok(value) = serde_json::from_slice::<Value>(&body) {
                        planned.insert(slice, value);
                    }
                }
                continue;
            }
            let mut parts = object.path.rsplitn(3, '/');
            let (Some(file), Some(run)) = (parts.next(), parts.next()) else {
                continue;
            };
            if run != self.run_id {
                continue;
            }
            let Some((slice, attempt)) = slice_and_attempt(file) else {
                continue;
            };
            let entry = slices
                .entry(slice.to_string())
                .or_insert((attempt, Vec::new()));
            if attempt > entry.0 {
                *entry = (attempt, Vec::new());
            }
            if attempt == entry.0 {
                entry.1.push(object.path.clone());
            }
        }
        let slices = slices
            .into_iter()
            .map(|(slice, (_, mut pages))| {
                pages.sort();
                let original = planned.remove(&slice).unwrap_or(Value::Null);
                Slice {
                    key: format!("replay/{}/{slice}", self.run_id),
                    params: serde_json::json!({ "pages": pages, "original": original }),
                }
            })
            .collect();
        // A replay never moves the cursor.
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
        let pages: Vec<String> = slice.params["pages"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| p.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let original = &slice.params["original"];
        let original = Slice {
            key: original["key"]
                .as_str()
                .map_or_else(|| slice.key.clone(), str::to_string),
            params: original["params"].clone(),
        };
        let mut state = DecodeState::default();
        for path in pages {
            let body = self
                .lake
                .read_page(&path)
                .await
                .map_err(|e| SourceError::transient(e.to_string()))?;
            let page = LandedPage {
                path: path.clone().into(),
            };
            let decoded = self
                .inner
                .decode(stream, &original, &page, &body, &mut state)
                .ok_or_else(|| {
                    SourceError::config(
                        format!(
                            "source `{}` cannot decode landed pages, so it cannot be replayed",
                            self.inner.name()
                        ),
                        format!("sources.{}", self.inner.name()),
                    )
                })??;
            sink.records(decoded.records).await?;
            if !decoded.rejected.is_empty() {
                sink.rejected(decoded.rejected).await?;
            }
        }
        Ok(())
    }

    fn max_concurrency(&self) -> usize {
        self.inner.max_concurrency()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn page_names_carry_slice_and_attempt() {
        assert_eq!(
            super::slice_and_attempt("s00003-a1-p00002.json.zst"),
            Some(("s00003", 1))
        );
        assert_eq!(super::slice_and_attempt("junk"), None);
    }
}
