//! A panic inside a run (a connector bug, a model-engine bug) ends as a failed run
//! record, stored in the lake, never as a record left `running` by a dead process.
//! Real lake, real state store and a real SQLite warehouse; the sources and the
//! model stage here panic on purpose, standing in for a bug.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;
use sluice_core::config::ExecutionConfig;
use sluice_core::executor::{Executor, Quiet, RunOptions};
use sluice_core::lake::Lake;
use sluice_core::plan::execute::{ModelRunError, ModelRunner};
use sluice_core::plan::{ModelDescription, RunPlan};
use sluice_core::run::{RunRecord, RunStatus, TaskStatus};
use sluice_core::source::{
    PageSink, RunWindow, Slice, Source, SourceError, StreamPlan, StreamSpec,
};
use sluice_core::state::StateStore;
use sluice_destinations::sqlite::{SqliteConfig, SqliteDestination};
use tokio_util::sync::CancellationToken;

/// Reads one slice, and panics while reading it.
struct PanicsWhileReading;

#[async_trait]
impl Source for PanicsWhileReading {
    fn name(&self) -> &str {
        "buggy"
    }

    fn streams(&self) -> Vec<StreamSpec> {
        vec![StreamSpec {
            name: "things".into(),
            table: "buggy_things".into(),
            schema: Default::default(),
            infer_columns: true,
            primary_key: Vec::new(),
            partition_column: None,
            write_mode: Default::default(),
            dedupe: Default::default(),
        }]
    }

    async fn check(&self) -> Result<(), SourceError> {
        Ok(())
    }

    async fn plan(
        &self,
        _: &StreamSpec,
        _: Option<&Value>,
        _: &RunWindow,
    ) -> Result<StreamPlan, SourceError> {
        Ok(StreamPlan {
            slices: vec![Slice {
                key: "only".into(),
                params: Value::Null,
            }],
            cursor_after: None,
        })
    }

    async fn read(
        &self,
        _: &StreamSpec,
        _: &Slice,
        _: &mut dyn PageSink,
    ) -> Result<(), SourceError> {
        let huge: f64 = "1e20".parse().unwrap();
        // What `Duration::from_secs_f64(Retry-After)` did before it was clamped.
        let _ = std::time::Duration::from_secs_f64(huge);
        Ok(())
    }
}

/// A model stage that panics (an engine bug).
struct PanickingModels;

#[async_trait]
impl ModelRunner for PanickingModels {
    async fn run_models(
        &self,
        _: &[String],
        _: &mut RunRecord,
        _: &CancellationToken,
    ) -> Result<(), ModelRunError> {
        panic!("engine bug");
    }
}

fn executor(dir: &std::path::Path) -> Executor {
    let lake = Lake::open("lake", dir).unwrap();
    Executor {
        pipeline: "panics".into(),
        lake: lake.clone(),
        state: StateStore::new(lake, "panics"),
        destination: Arc::new(SqliteDestination::new(SqliteConfig::default(), dir)),
        execution: ExecutionConfig::default(),
        schema_policy: Default::default(),
        observer: Arc::new(Quiet),
    }
}

fn options(run_id: &str) -> RunOptions {
    RunOptions {
        run_id: run_id.into(),
        select: Vec::new(),
        window: RunWindow {
            since: None,
            until: None,
            today: chrono::NaiveDate::from_ymd_opt(2024, 7, 2).unwrap(),
            full_refresh: false,
        },
        cancel: CancellationToken::new(),
        part: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_source_fails_its_task_and_the_stored_run() {
    let dir = tempfile::tempdir().unwrap();
    let executor = executor(dir.path());
    let source: Arc<dyn Source> = Arc::new(PanicsWhileReading);
    let plan = RunPlan::build(std::slice::from_ref(&source), &[]).unwrap();
    let record = sluice_core::plan::execute::run(
        &plan,
        &plan.select_all(),
        &executor,
        options("r-source-panic"),
        &PanickingModels,
    )
    .await
    .unwrap();
    assert_eq!(record.status, RunStatus::Failed);
    let task = &record.tasks[0];
    assert_eq!(task.status, TaskStatus::Failed);
    let message = &task.error.as_ref().unwrap().message;
    assert!(
        message.contains("internal error in stream buggy.things"),
        "{message}"
    );
    let stored = executor.state.run("r-source-panic").await.unwrap().unwrap();
    assert_eq!(stored.status, RunStatus::Failed);
    assert!(stored.finished_at.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_model_stage_fails_the_stored_run() {
    let dir = tempfile::tempdir().unwrap();
    let executor = executor(dir.path());
    let model = ModelDescription {
        layer: "d2a".into(),
        name: "m".into(),
        ..Default::default()
    };
    let plan = RunPlan::build(&[], &[model]).unwrap();
    let record = sluice_core::plan::execute::run(
        &plan,
        &plan.select_all(),
        &executor,
        options("r-model-panic"),
        &PanickingModels,
    )
    .await
    .unwrap();
    assert_eq!(record.status, RunStatus::Failed);
    let error = record.error.as_deref().unwrap();
    assert!(
        error.contains("internal error in the model stage"),
        "{error}"
    );
    assert!(error.contains("engine bug"), "{error}");
    let stored = executor.state.run("r-model-panic").await.unwrap().unwrap();
    assert_eq!(stored.status, RunStatus::Failed);
}
