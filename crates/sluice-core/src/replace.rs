//! Replacing a source: the pipeline's `replaces:` (see [`crate::config::Replacement`])
//! checked against the built sources and turned into D1 aliases.
//!
//! Before the switch both streams land side by side under their own D1 names and
//! `sluice compare` reads both. Once `switch: true`, the replaced stream's D1 name is
//! an alias: models reading `d1.<old>` read the replacing stream's table with its
//! columns renamed to the old names (the transform catalog registers the view).
//! The replaced stream must then be gone from its source, so two streams never
//! publish one name; its landed data stays in the lake for `sluice compare`.

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

    /// The replaced stream's name for the replacing stream's column `new`.
    pub fn old_name<'a>(&'a self, new: &'a str) -> &'a str {
        self.replacement
            .columns
            .iter()
            .find(|(n, _)| n == new)
            .map_or(new, |(_, old)| old.as_str())
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
