//! Replacing a source: the pipeline's `replaces:` (see [`crate::config::Replacement`])
//! checked against the built sources and turned into D1 aliases.
//!
//! Before the switch both streams land side by side under their own D1 names and
//! `sluice compare` reads both. Once `switch: true`, the replaced stream's D1 name is
//! an alias: models reading `d1.<old>` read the replacing stream's table with its
//! columns renamed to the old names (the transform catalog registers the view).
//! The replaced stream must then be gone from its source, so two streams never
//! publish one name; its landed data stays in the lake for `sluice compare`.
//!
//! The warehouse follows: each publish of the replacing table also makes the old
//! name a view over it ([`D1Alias::view_columns`], in the destination's load
//! transaction), so SQL and BI reports reading `d1.<old>` keep working. The old
//! table's last data is kept, renamed `<old>__replaced_<YYYYMMDD>`.

use std::sync::Arc;

use crate::config::{suggest, ConfigDocument, ConfigError, PipelineConfig, Replacement};
use crate::source::{Source, StreamSpec};

/// One resolved `replaces:`: which D1 tables it joins and how their columns correspond.
#[derive(Debug, Clone)]
pub struct D1Alias {
    /// The replaced stream's D1 table (`vendor_customers`).
    pub replaced_table: String,
    /// The replacing stream's D1 table (`crm_customers`).
    pub table: String,
    pub replacement: Replacement,
    /// The pipeline file, for errors about the mapping found once data is seen.
    pub doc: ConfigDocument,
}

impl D1Alias {
    /// An error at the mapping of `new` (or at `replaces` itself).
    pub fn column_error(&self, new: &str, message: impl Into<String>) -> ConfigError {
        self.doc
            .error_at(&self.replacement.column_path(new), message)
    }

    /// An error at the replaced stream's name.
    pub fn stream_error(&self, message: impl Into<String>) -> ConfigError {
        self.doc.error_at(&self.replacement.stream_path(), message)
    }

    /// The columns of the view that publishes the old name in the warehouse, given
    /// the replacing table's columns (`new_columns`, in order) and the replaced table's
    /// (`old_columns`, in order; empty when it never reached the warehouse).
    ///
    /// The replaced table's columns come first, in its order: from the replacing
    /// column the mapping (or the same name) gives, else as a typed NULL, so a query
    /// naming a column the new stream lacks still runs. The replacing table's other
    /// columns follow under their mapped names. The order is stable as the replacing
    /// table gains columns (they append), so `CREATE OR REPLACE VIEW` keeps working.
    pub fn view_columns(&self, new_columns: &[&str], old_columns: &[&str]) -> Vec<ViewColumn> {
        // An unmapped new column whose name a mapped one takes is left out (as in
        // the transform catalog's view: the mapping says which one it is).
        let taken: Vec<&str> = self
            .replacement
            .columns
            .iter()
            .filter(|(new, old)| new != old)
            .map(|(_, old)| old.as_str())
            .collect();
        let kept: Vec<&str> = new_columns
            .iter()
            .copied()
            .filter(|n| {
                !taken.contains(n) || self.replacement.columns.iter().any(|(new, _)| new == n)
            })
            .collect();
        let mut out = Vec::new();
        let mut used: Vec<&str> = Vec::new();
        for old in old_columns {
            match kept.iter().find(|n| self.old_name(n) == *old) {
                Some(new) => {
                    used.push(new);
                    out.push(ViewColumn::Mapped {
                        new: new.to_string(),
                        old: old.to_string(),
                    });
                }
                None => out.push(ViewColumn::Null {
                    old: old.to_string(),
                }),
            }
        }
        for new in kept {
            let old = self.old_name(new);
            if used.contains(&new) || out.iter().any(|c| c.name() == old) {
                continue;
            }
            out.push(ViewColumn::Mapped {
                new: new.to_string(),
                old: old.to_string(),
            });
        }
        out
    }

    /// The name the replaced table's last data is kept under after the switch:
    /// `<old>__replaced_<YYYYMMDD>`.
    pub fn retired_name(&self, date: chrono::NaiveDate) -> String {
        format!(
            "{}__replaced_{}",
            self.replaced_table,
            date.format("%Y%m%d")
        )
    }

    /// The prefix of every [`D1Alias::retired_name`] of this alias.
    pub fn retired_prefix(&self) -> String {
        format!("{}__replaced_", self.replaced_table)
    }

    /// The replaced stream's name for the replacing stream's column `new`.
    pub fn old_name<'a>(&'a self, new: &'a str) -> &'a str {
        self.replacement
            .columns
            .iter()
            .find(|(n, _)| n == new)
            .map_or(new, |(_, old)| old.as_str())
    }
}

/// One column of the view publishing a switched replacement's old name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ViewColumn {
    /// The replacing table's column `new`, under the old name `old`.
    Mapped { new: String, old: String },
    /// A column of the replaced table the replacing one lacks: a NULL of its type.
    Null { old: String },
}

impl ViewColumn {
    /// The column's name in the view (the old name).
    pub fn name(&self) -> &str {
        match self {
            ViewColumn::Mapped { old, .. } | ViewColumn::Null { old } => old,
        }
    }
}

/// Resolves every `replaces:` of `config` against the built `sources`: the replaced
/// stream must exist (or, once switched, may be gone from the pipeline: its D1 name
/// is then `<source>_<stream>`), a switched stream must be gone, and a mapping may
/// only name columns a stream declares, when it declares all of them.
pub fn resolve(
    config: &PipelineConfig,
    sources: &[Arc<dyn Source>],
) -> Result<Vec<D1Alias>, ConfigError> {
    let doc = &config.doc;
    let spec_of = |source: &str, stream: &str| -> Option<StreamSpec> {
        sources
            .iter()
            .find(|s| s.name() == source)
            .and_then(|s| s.streams().into_iter().find(|spec| spec.name == stream))
    };
    let mut out = Vec::new();
    for r in &config.replacements {
        let at_stream = || doc.error_at(&r.stream_path(), "");
        let Some(new) = spec_of(&r.by.source, &r.by.stream) else {
            // The connector names its streams otherwise (or not by mapping key).
            return Err(doc.error_at(
                &r.path,
                format!("source {} has no stream `{}`", r.by.source, r.by.stream),
            ));
        };
        let replaced_source = sources.iter().find(|s| s.name() == r.replaced.source);
        let replaced_table = match replaced_source {
            Some(source) => {
                let streams = source.streams();
                let Some(old) = streams.iter().find(|s| s.name == r.replaced.stream) else {
                    let mut e = at_stream();
                    e.message = format!(
                        "source {} has no stream `{}`",
                        r.replaced.source, r.replaced.stream
                    );
                    e.help = suggest(&r.replaced.stream, streams.iter().map(|s| s.name.as_str()))
                        .map(|s| format!("did you mean `{}.{s}`?", r.replaced.source))
                        .or_else(|| {
                            Some(format!(
                                "its streams: {}",
                                streams
                                    .iter()
                                    .map(|s| s.name.as_str())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ))
                        });
                    return Err(e);
                };
                if r.switch {
                    let mut e = at_stream();
                    e.message = format!(
                        "{} is switched to {}, so d1.{} now reads {}; remove stream `{}` from sources.{} (its landed data stays in the lake for `sluice compare`)",
                        r.replaced, r.by, old.table, r.by, r.replaced.stream, r.replaced.source
                    );
                    return Err(e);
                }
                check_declared(doc, r, old, true)?;
                old.table.clone()
            }
            None if r.switch => format!("{}_{}", r.replaced.source, r.replaced.stream),
            None => {
                let mut e = at_stream();
                e.message = format!(
                    "unknown source `{}` (replaces names a stream of this pipeline until the switch is made)",
                    r.replaced.source
                );
                e.help = suggest(
                    &r.replaced.source,
                    config.sources.iter().map(|s| s.name.as_str()),
                )
                .map(|s| format!("did you mean `{s}.{}`?", r.replaced.stream));
                return Err(e);
            }
        };
        check_declared(doc, r, &new, false)?;
        if replaced_table == new.table {
            let mut e = at_stream();
            e.message = format!("{} and {} both publish d1.{}", r.replaced, r.by, new.table);
            return Err(e);
        }
        out.push(D1Alias {
            replaced_table,
            table: new.table.clone(),
            replacement: r.clone(),
            doc: doc.clone(),
        });
    }
    Ok(out)
}

/// A mapped column a stream that declares all its columns does not have is an error
/// now; streams with inferred columns are checked against their data later.
fn check_declared(
    doc: &ConfigDocument,
    r: &Replacement,
    spec: &StreamSpec,
    old_side: bool,
) -> Result<(), ConfigError> {
    if spec.infer_columns || spec.schema.fields.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = spec.schema.fields.iter().map(|f| f.name.as_str()).collect();
    for (new, old) in &r.columns {
        let (column, stream) = if old_side {
            (old, &r.replaced)
        } else {
            (new, &r.by)
        };
        if !names.contains(&column.as_str()) {
            let mut e = doc.error_at(
                &r.column_path(new),
                format!("{stream} has no column `{column}`"),
            );
            e.help = suggest(column, names.iter().copied())
                .map(|s| format!("did you mean `{s}`?"))
                .or_else(|| Some(format!("its columns: {}", names.join(", "))));
            return Err(e);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StreamRef;

    fn alias(columns: &[(&str, &str)]) -> D1Alias {
        let r = |s: &str| StreamRef::parse(s).unwrap();
        D1Alias {
            replaced_table: "vendor_customers".into(),
            table: "crm_customers".into(),
            replacement: Replacement {
                by: r("crm.customers"),
                replaced: r("vendor.customers"),
                columns: columns
                    .iter()
                    .map(|(n, o)| (n.to_string(), o.to_string()))
                    .collect(),
                switch: true,
                path: vec![],
            },
            doc: ConfigDocument::new("pipeline.yaml".into(), String::new()),
        }
    }

    fn names(columns: &[ViewColumn]) -> Vec<String> {
        columns
            .iter()
            .map(|c| match c {
                ViewColumn::Mapped { new, old } if new == old => old.clone(),
                ViewColumn::Mapped { new, old } => format!("{new}->{old}"),
                ViewColumn::Null { old } => format!("null:{old}"),
            })
            .collect()
    }

    #[test]
    fn view_columns_follow_the_old_table_then_add_the_new_ones() {
        let a = alias(&[("customer_id", "id"), ("email_address", "email")]);
        let view = a.view_columns(
            &["customer_id", "email_address", "id", "tier", "dt"],
            &["id", "email", "phone", "dt"],
        );
        // `id` of the new table is left out: `customer_id` is the old `id`.
        assert_eq!(
            names(&view),
            [
                "customer_id->id",
                "email_address->email",
                "null:phone",
                "dt",
                "tier"
            ]
        );
        // Never in the warehouse before: just the renamed new columns.
        let view = a.view_columns(&["customer_id", "tier"], &[]);
        assert_eq!(names(&view), ["customer_id->id", "tier"]);
        // A new column later appended keeps every earlier position.
        let later = a.view_columns(
            &["customer_id", "email_address", "id", "tier", "dt", "score"],
            &["id", "email", "phone", "dt"],
        );
        assert_eq!(
            names(&later)[..5],
            names(&a.view_columns(
                &["customer_id", "email_address", "id", "tier", "dt"],
                &["id", "email", "phone", "dt"],
            ))[..]
        );
        assert_eq!(
            a.retired_name(chrono::NaiveDate::from_ymd_opt(2026, 12, 5).unwrap()),
            "vendor_customers__replaced_20261205"
        );
    }
}
