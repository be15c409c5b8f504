//! `--select`: picking the part of a [`RunPlan`] a run executes, the way dbt does.
//!
//! A selector is a name with optional graph operators around it:
//!
//! | selector | selects |
//! |---|---|
//! | `facebook` | every stream of the source `facebook` (and its D1 tables) |
//! | `facebook.insights` | one stream |
//! | `facebook_insights`, `d1.facebook_insights` | the stream writing that D1 table |
//! | `channel_spend_daily`, `d2b.channel_spend_daily` | one model (and its checks) |
//! | `*.insights`, `d2a.*` | globs of any of the names above |
//! | `tag:finance` | the models tagged `finance` in their YAML |
//! | `+x` / `x+` | `x` and everything upstream / downstream of it |
//! | `2+x` / `x+1` | the same, at most 2 / 1 steps away |
//!
//! Several selectors (repeated, or comma-separated) select the union. Nodes that
//! only run together are selected together (see [`super::PlanTask`]): selecting a
//! D1 table selects its stream, selecting a model selects its checks. A selector
//! that matches nothing is an error that lists what exists.

use std::collections::{BTreeMap, BTreeSet};

use globset::{Glob, GlobMatcher};

use super::{NodeKind, PlanError, RunPlan};

/// The ids of the selected nodes of a plan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    ids: BTreeSet<String>,
}

impl Selection {
    pub(super) fn all(plan: &RunPlan) -> Selection {
        Selection {
            ids: plan.nodes.iter().map(|n| n.id.clone()).collect(),
        }
    }

    pub fn contains(&self, id: &str) -> bool {
        self.ids.contains(id)
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The selected ids, sorted.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.ids.iter().map(String::as_str)
    }
}

/// How far a graph operator reaches: `+x` is unbounded, `2+x` two steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    None,
    Steps(usize),
    All,
}

/// One parsed selector.
#[derive(Debug)]
struct Selector {
    upstream: Reach,
    downstream: Reach,
    matcher: Matcher,
}

#[derive(Debug)]
enum Matcher {
    /// `tag:<glob>`.
    Tag(GlobMatcher),
    /// A glob over node ids and their aliases.
    Name(GlobMatcher),
}

fn parse(pattern: &str) -> Result<Selector, PlanError> {
    let bad = |message: &str| PlanError::BadPattern {
        pattern: pattern.to_string(),
        message: message.to_string(),
    };
    let mut rest = pattern.trim();
    let mut upstream = Reach::None;
    if let Some(plus) = rest.find('+') {
        let depth = &rest[..plus];
        if depth.chars().all(|c| c.is_ascii_digit()) && plus + 1 < rest.len() {
            upstream = if depth.is_empty() {
                Reach::All
            } else {
                Reach::Steps(depth.parse().map_err(|_| bad("the depth is too large"))?)
            };
            rest = &rest[plus + 1..];
        }
    }
    let mut downstream = Reach::None;
    if let Some(plus) = rest.rfind('+') {
        let depth = &rest[plus + 1..];
        if depth.chars().all(|c| c.is_ascii_digit()) && plus > 0 {
            downstream = if depth.is_empty() {
                Reach::All
            } else {
                Reach::Steps(depth.parse().map_err(|_| bad("the depth is too large"))?)
            };
            rest = &rest[..plus];
        }
    }
    if rest.is_empty() {
        return Err(bad("name a stream, a table, a model or `tag:<tag>`"));
    }
    if rest.contains('+') {
        return Err(bad(
            "`+` goes before or after a name: `+model`, `model+`, `2+model`, `model+1`",
        ));
    }
    let glob = |text: &str| {
        Glob::new(text)
            .map(|g| g.compile_matcher())
            .map_err(|e| bad(&e.to_string()))
    };
    let matcher = match rest.strip_prefix("tag:") {
        Some("") => return Err(bad("`tag:` needs a tag name")),
        Some(tag) => Matcher::Tag(glob(tag)?),
        None => Matcher::Name(glob(rest)?),
    };
    Ok(Selector {
        upstream,
        downstream,
        matcher,
    })
}

/// The nodes `patterns` select; no patterns select the whole plan.
pub fn select(plan: &RunPlan, patterns: &[String]) -> Result<Selection, PlanError> {
    let patterns: Vec<&String> = patterns.iter().filter(|p| !p.trim().is_empty()).collect();
    if patterns.is_empty() {
        return Ok(Selection::all(plan));
    }
    let downstream = downstream_edges(plan);
    let mut chosen: BTreeSet<String> = BTreeSet::new();
    for pattern in patterns {
        let selector = parse(pattern)?;
        let matched: Vec<&str> = plan
            .nodes
            .iter()
            .filter(|node| match &selector.matcher {
                Matcher::Tag(m) => node.tags.iter().any(|t| m.is_match(t)),
                Matcher::Name(m) => {
                    m.is_match(&node.id) || node.aliases.iter().any(|a| m.is_match(a))
                }
            })
            .map(|n| n.id.as_str())
            .collect();
        if matched.is_empty() {
            return Err(PlanError::NoMatch {
                pattern: pattern.clone(),
                available: available(plan),
            });
        }
        for id in matched {
            chosen.insert(id.to_string());
            walk(id, selector.upstream, &mut chosen, |n| {
                plan.node(n)
                    .map(|node| node.upstream.iter().map(String::as_str).collect())
                    .unwrap_or_default()
            });
            walk(id, selector.downstream, &mut chosen, |n| {
                downstream.get(n).cloned().unwrap_or_default()
            });
        }
    }
    // Nodes that run as one task are selected together.
    let tasks: BTreeSet<&str> = chosen
        .iter()
        .filter_map(|id| plan.node(id))
        .map(|n| n.task.as_str())
        .collect();
    Ok(Selection {
        ids: plan
            .nodes
            .iter()
            .filter(|n| tasks.contains(n.task.as_str()))
            .map(|n| n.id.clone())
            .collect(),
    })
}

/// Adds the nodes `next` reaches from `start` within `reach` steps.
fn walk<'a>(
    start: &'a str,
    reach: Reach,
    chosen: &mut BTreeSet<String>,
    next: impl Fn(&'a str) -> Vec<&'a str>,
) {
    let limit = match reach {
        Reach::None => return,
        Reach::Steps(n) => n,
        Reach::All => usize::MAX,
    };
    let mut frontier = vec![start];
    let mut seen: BTreeSet<&str> = BTreeSet::from([start]);
    let mut depth = 0;
    while !frontier.is_empty() && depth < limit {
        let mut following = Vec::new();
        for id in frontier {
            for n in next(id) {
                if seen.insert(n) {
                    chosen.insert(n.to_string());
                    following.push(n);
                }
            }
        }
        frontier = following;
        depth += 1;
    }
}

fn downstream_edges(plan: &RunPlan) -> BTreeMap<&str, Vec<&str>> {
    let mut edges: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for node in &plan.nodes {
        for up in &node.upstream {
            edges.entry(up.as_str()).or_default().push(node.id.as_str());
        }
    }
    edges
}

/// What a selector could have named, for the no-match error.
fn available(plan: &RunPlan) -> String {
    let of = |kind: NodeKind| {
        plan.nodes
            .iter()
            .filter(|n| n.kind == kind)
            .map(|n| n.id.as_str())
            .collect::<Vec<_>>()
    };
    let tags: BTreeSet<&str> = plan
        .nodes
        .iter()
        .flat_map(|n| n.tags.iter().map(String::as_str))
        .collect();
    let mut parts = Vec::new();
    for (label, names) in [
        ("streams", of(NodeKind::Stream)),
        ("models", of(NodeKind::Model)),
        ("tags", tags.into_iter().collect()),
    ] {
        if !names.is_empty() {
            parts.push(format!("{label}: {}", names.join(", ")));
        }
    }
    if parts.is_empty() {
        "the pipeline has no streams or models".into()
    } else {
        parts.join("; ")
    }
}
