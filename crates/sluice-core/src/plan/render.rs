//! Printing a (selected part of a) [`RunPlan`]: a table for people, JSON for tools,
//! Graphviz dot for a picture (`sluice plan --format dot | dot -Tsvg > plan.svg`).
//!
//! Only selected nodes are printed; their upstream lists still name unselected nodes,
//! which a run of the selection reads as the lake holds them.

use serde::Serialize;

use super::{Node, NodeKind, RunPlan, Selection};

/// One node as `sluice plan --format json` prints it.
#[derive(Debug, Serialize)]
pub struct NodeView<'a> {
    #[serde(flatten)]
    pub node: &'a Node,
    /// The nodes that read this one, sorted.
    pub downstream: Vec<&'a str>,
}

/// The JSON document of `sluice plan --format json`.
#[derive(Debug, Serialize)]
pub struct PlanView<'a> {
    pub nodes: Vec<NodeView<'a>>,
}

fn selected<'a>(plan: &'a RunPlan, selection: &'a Selection) -> impl Iterator<Item = &'a Node> {
    plan.nodes()
        .iter()
        .filter(move |n| selection.contains(&n.id))
}

/// The selected nodes with both edge directions, in dependency order.
pub fn view<'a>(plan: &'a RunPlan, selection: &'a Selection) -> PlanView<'a> {
    PlanView {
        nodes: selected(plan, selection)
            .map(|node| NodeView {
                node,
                downstream: plan.downstream(&node.id),
            })
            .collect(),
    }
}

/// A table: kind, id, what it reads; then a count per kind.
pub fn text(plan: &RunPlan, selection: &Selection) -> String {
    let nodes: Vec<&Node> = selected(plan, selection).collect();
    let width = nodes
        .iter()
        .map(|n| n.id.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for node in &nodes {
        let reads = if node.upstream.is_empty() {
            String::new()
        } else {
            format!("  ← {}", node.upstream.join(", "))
        };
        let engine = match node.engine {
            Some("destination") => "  [runs in the warehouse]",
            _ => "",
        };
        out.push_str(&format!(
            "{:<6}  {:<width$}{reads}{engine}\n",
            node.kind.as_str(),
            node.id
        ));
    }
    let count = |kind: NodeKind| nodes.iter().filter(|n| n.kind == kind).count();
    out.push_str(&format!(
        "\n{} streams, {} D1 tables, {} models, {} checks ({} of {} nodes selected)\n",
        count(NodeKind::Stream),
        count(NodeKind::D1),
        count(NodeKind::Model),
        count(NodeKind::Check),
        nodes.len(),
        plan.nodes().len()
    ));
    out
}

/// Graphviz dot, one shape per kind, edges in the direction data flows.
pub fn dot(plan: &RunPlan, selection: &Selection) -> String {
    let quote = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
    let mut out =
        String::from("digraph sluice {\n  rankdir=LR;\n  node [fontname=\"Helvetica\"];\n");
    for node in selected(plan, selection) {
        let shape = match node.kind {
            NodeKind::Stream => "cds",
            NodeKind::D1 => "cylinder",
            NodeKind::Model => "box",
            NodeKind::Check => "diamond",
        };
        out.push_str(&format!("  {} [shape={shape}];\n", quote(&node.id)));
    }
    for node in selected(plan, selection) {
        for up in &node.upstream {
            let style = if selection.contains(up) {
                ""
            } else {
                " [style=dashed]"
            };
            out.push_str(&format!("  {} -> {}{style};\n", quote(up), quote(&node.id)));
        }
    }
    out.push_str("}\n");
    out
}
