//! One run as a DAG: stream extraction → D1 publish → models (D2A, D2B) → checks.
//!
//! [`RunPlan::build`] derives the graph from the configured sources (their streams
//! and D1 tables) and from [`ModelDescription`]s. The models' dependencies come from
//! their SQL, which this crate cannot read (DataFusion lives in sluice-transform
//! only), so the transform crate describes each model and this module wires the
//! edges. An edge points from what a node reads to the node:
//!
//! ```text
//! facebook.insights ─► d1.facebook_insights ─► d2a.ad_performance_daily ─► d2b.channel_spend_daily
//!   (extract)            (D1 publish)            (model)  └─► checks         (model) └─► checks
//! ```
//!
//! Some nodes only run together, as one [`PlanTask`]: a stream's extraction and its
//! D1 publish (a publish has nothing to publish without the extraction), and a model
//! and its checks (checks run on the output before it is published).
//!
//! - [`select`]: `--select` with dbt's graph operators, picking a subgraph;
//! - [`execute`]: running a selected subgraph (streams, then models in order);
//! - [`render`]: printing a plan as text, JSON or Graphviz dot.

pub mod execute;
pub mod render;
pub mod select;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::Serialize;

use crate::source::{Source, StreamSpec};

pub use select::Selection;

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
    #[error("--select {pattern:?} matches no stream, model or check ({available})")]
    NoMatch { pattern: String, available: String },
    #[error("--select {pattern:?} is not a valid pattern: {message}")]
    BadPattern { pattern: String, message: String },
    #[error("two parts of the pipeline are both named `{id}`: rename the source or the model")]
    DuplicateNode { id: String },
}

/// What a node of the plan is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeKind {
    /// Reading a source stream into the lake (`facebook.insights`).
    Stream,
    /// Publishing a stream's typed rows as a D1 table (`d1.facebook_insights`).
    D1,
    /// A SQL model of the D2A or D2B layer (`d2a.ad_performance_daily`).
    Model,
    /// A data-quality check on a model's output (`d2a.ad_performance_daily:unique(id)`).
    Check,
}

impl NodeKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            NodeKind::Stream => "stream",
            NodeKind::D1 => "d1",
            NodeKind::Model => "model",
            NodeKind::Check => "check",
        }
    }
}

/// One step of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Node {
    /// Unique in the plan: `facebook.insights`, `d1.facebook_insights`,
    /// `d2b.channel_spend_daily`, `d2b.channel_spend_daily:unique(date,platform)`.
    pub id: String,
    pub kind: NodeKind,
    /// The nodes whose output this one reads, by id, sorted.
    pub upstream: Vec<String>,
    /// Selectable with `tag:<tag>` (a model's `tags:` in its YAML).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Other names `--select` accepts for this node: a stream's source and D1 table,
    /// a model's bare name, a check's own name.
    #[serde(skip)]
    aliases: Vec<String>,
    /// The task this node runs in (a stream's or a model's id).
    pub task: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Where a model runs: `local` (DataFusion in sluice) or `destination` (SQL in
    /// the warehouse); `None` for other nodes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine: Option<&'static str>,
}

/// What the transform crate tells the plan about one SQL model.
#[derive(Debug, Clone, Default)]
pub struct ModelDescription {
    /// `d2a` or `d2b`.
    pub layer: String,
    /// The model's file name without `.sql`.
    pub name: String,
    /// Tables its SQL reads: `d1.facebook_insights`, `d2a.ad_performance_daily`.
    pub reads: Vec<String>,
    /// The display names of its checks, in declaration order.
    pub checks: Vec<String>,
    pub tags: Vec<String>,
    pub description: Option<String>,
    /// `local` or `destination` (see [`Node::engine`]).
    pub engine: Option<&'static str>,
}

impl ModelDescription {
    /// `d2a.ad_performance_daily`: the model's node id and task name.
    pub fn id(&self) -> String {
        format!("{}.{}", self.layer, self.name)
    }
}

/// A unit the executor runs: one stream (extract + D1 publish) or one model (+ checks).
#[derive(Clone)]
pub enum PlanTask {
    /// Boxed: a stream task carries its whole schema (registry knowledge included).
    Stream(Box<StreamTask>),
    Model(String),
}

/// The whole run as a DAG, nodes in a dependency order (every node after its upstreams).
#[derive(Clone)]
pub struct RunPlan {
    nodes: Vec<Node>,
    index: BTreeMap<String, usize>,
    /// The streams by task id, for execution.
    streams: BTreeMap<String, StreamTask>,
}

impl std::fmt::Debug for RunPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunPlan")
            .field("nodes", &self.nodes)
            .finish()
    }
}

impl RunPlan {
    /// The plan of every stream of `sources` and every model of `models` (given in
    /// the transform crate's dependency order). A model reading a D1 table that no
    /// configured stream writes gets no edge for it: it reads what the lake holds.
    pub fn build(
        sources: &[Arc<dyn Source>],
        models: &[ModelDescription],
    ) -> Result<RunPlan, PlanError> {
        let mut plan = RunPlan {
            nodes: Vec::new(),
            index: BTreeMap::new(),
            streams: BTreeMap::new(),
        };
        for source in sources {
            for stream in source.streams() {
                let task = StreamTask {
                    source: source.clone(),
                    stream,
                };
                let id = task.name();
                let table = format!("d1.{}", task.stream.table);
                plan.push(Node {
                    id: id.clone(),
                    kind: NodeKind::Stream,
                    upstream: Vec::new(),
                    tags: Vec::new(),
                    aliases: vec![source.name().to_string(), task.stream.table.clone()],
                    task: id.clone(),
                    description: None,
                    engine: None,
                })?;
                plan.push(Node {
                    id: table,
                    kind: NodeKind::D1,
                    upstream: vec![id.clone()],
                    tags: Vec::new(),
                    aliases: vec![source.name().to_string(), task.stream.table.clone()],
                    task: id.clone(),
                    description: None,
                    engine: None,
                })?;
                plan.streams.insert(id, task);
            }
        }
        // Model ids first, so a model may be wired to one described after it.
        let model_ids: BTreeSet<String> = models.iter().map(ModelDescription::id).collect();
        for model in models {
            let id = model.id();
            let mut upstream: Vec<String> = model
                .reads
                .iter()
                .filter(|table| plan.index.contains_key(*table) || model_ids.contains(*table))
                .cloned()
                .collect();
            upstream.sort();
            upstream.dedup();
            plan.push(Node {
                id: id.clone(),
                kind: NodeKind::Model,
                upstream,
                tags: model.tags.clone(),
                aliases: vec![model.name.clone()],
                task: id.clone(),
                description: model.description.clone(),
                engine: model.engine,
            })?;
            for check in &model.checks {
                plan.push(Node {
                    id: format!("{id}:{check}"),
                    kind: NodeKind::Check,
                    upstream: vec![id.clone()],
                    tags: model.tags.clone(),
                    aliases: vec![check.clone()],
                    task: id.clone(),
                    description: None,
                    engine: None,
                })?;
            }
        }
        plan.sort_topologically();
        Ok(plan)
    }

    fn push(&mut self, node: Node) -> Result<(), PlanError> {
        if self.index.contains_key(&node.id) {
            return Err(PlanError::DuplicateNode { id: node.id });
        }
        self.index.insert(node.id.clone(), self.nodes.len());
        self.nodes.push(node);
        Ok(())
    }

    /// Reorders the nodes so each comes after its upstreams (stable otherwise). The
    /// transform crate has already rejected cycles between models, so every node is
    /// placed; a node left over would be a bug, and it is kept at the end rather than lost.
    fn sort_topologically(&mut self) {
        let mut placed: BTreeSet<String> = BTreeSet::new();
        let mut remaining: Vec<Node> = std::mem::take(&mut self.nodes);
        let mut ordered = Vec::with_capacity(remaining.len());
        loop {
            let before = remaining.len();
            let mut still = Vec::new();
            for node in remaining {
                if node.upstream.iter().all(|u| placed.contains(u)) {
                    placed.insert(node.id.clone());
                    ordered.push(node);
                } else {
                    still.push(node);
                }
            }
            remaining = still;
            if remaining.is_empty() || remaining.len() == before {
                break;
            }
        }
        ordered.extend(remaining);
        self.index = ordered
            .iter()
            .enumerate()
            .map(|(i, n)| (n.id.clone(), i))
            .collect();
        self.nodes = ordered;
    }

    /// Every node, each after the nodes it reads.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn node(&self, id: &str) -> Option<&Node> {
        self.index.get(id).map(|&i| &self.nodes[i])
    }

    /// The nodes that read `id`, sorted.
    pub fn downstream(&self, id: &str) -> Vec<&str> {
        let mut out: Vec<&str> = self
            .nodes
            .iter()
            .filter(|n| n.upstream.iter().any(|u| u == id))
            .map(|n| n.id.as_str())
            .collect();
        out.sort_unstable();
        out
    }

    /// The plan with every node selected.
    pub fn select_all(&self) -> Selection {
        Selection::all(self)
    }

    /// The nodes `patterns` select (see [`select`]); no patterns select everything.
    pub fn select(&self, patterns: &[String]) -> Result<Selection, PlanError> {
        select::select(self, patterns)
    }

    /// The tasks covering `selection`, each after the tasks it reads.
    pub fn tasks(&self, selection: &Selection) -> Vec<PlanTask> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for node in &self.nodes {
            if !selection.contains(&node.id) || !seen.insert(node.task.clone()) {
                continue;
            }
            match self.streams.get(&node.task) {
                Some(stream) => out.push(PlanTask::Stream(Box::new(stream.clone()))),
                None => out.push(PlanTask::Model(node.task.clone())),
            }
        }
        out
    }
}

/// The stream tasks of a run: every stream of every source, or those `select` matches
/// (with the graph operators of [`select`]). Models are not part of this answer.
pub fn plan_streams(
    sources: &[Arc<dyn Source>],
    select: &[String],
) -> Result<Vec<StreamTask>, PlanError> {
    let plan = RunPlan::build(sources, &[])?;
    let selection = plan.select(select)?;
    Ok(plan
        .tasks(&selection)
        .into_iter()
        .filter_map(|task| match task {
            PlanTask::Stream(s) => Some(*s),
            PlanTask::Model(_) => None,
        })
        .collect())
}
