//! Turning the configured sources into the tasks of one run, and `--select`.
//!
//! Today a task is one stream: extract → D1 → load. Models and checks join the
//! plan as later tasks that depend on the D1 tables they read.

use std::sync::Arc;

use globset::{Glob, GlobMatcher};

use crate::source::{Source, StreamSpec};

/// One extract → D1 → load task.
#[derive(Clone)]
pub struct StreamTask {
    pub source: Arc<dyn Source>,
    pub stream: StreamSpec,
}

impl StreamTask {
    /// `source.stream`, the name users select and read in run records.
    pub fn name(&self) -> String {
        format!("{}.{}", self.source.name(), self.stream.name)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("--select {pattern:?} matches no stream (streams: {available})")]
    NoMatch { pattern: String, available: String },
    #[error("--select {pattern:?} is not a valid pattern: {message}")]
    BadPattern { pattern: String, message: String },
}

/// The tasks of a run: every stream of every source, or those `select` matches.
///
/// A pattern matches a task name (`facebook.insights`), a whole source
/// (`facebook`), a D1 table (`facebook_insights`), or globs of those (`*.insights`).
pub fn plan_streams(
    sources: &[Arc<dyn Source>],
    select: &[String],
) -> Result<Vec<StreamTask>, PlanError> {
    let all: Vec<StreamTask> = sources
        .iter()
        .flat_map(|source| {
            source.streams().into_iter().map(move |stream| StreamTask {
                source: source.clone(),
                stream,
            })
        })
        .collect();
    if select.is_empty() {
        return Ok(all);
    }
    let matchers = select
        .iter()
        .map(|pattern| {
            Glob::new(pattern)
                .map(|g| (pattern.clone(), g.compile_matcher()))
                .map_err(|e| PlanError::BadPattern {
                    pattern: pattern.clone(),
                    message: e.to_string(),
                })
        })
        .collect::<Result<Vec<(String, GlobMatcher)>, _>>()?;
    let matches = |task: &StreamTask, m: &GlobMatcher| {
        m.is_match(task.name()) || m.is_match(task.source.name()) || m.is_match(&task.stream.table)
    };
    for (pattern, matcher) in &matchers {
        if !all.iter().any(|t| matches(t, matcher)) {
            return Err(PlanError::NoMatch {
                pattern: pattern.clone(),
                available: all
                    .iter()
                    .map(StreamTask::name)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
    }
    Ok(all
        .into_iter()
        .filter(|t| matchers.iter().any(|(_, m)| matches(t, m)))
        .collect())
}
