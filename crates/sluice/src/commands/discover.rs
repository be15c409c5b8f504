//! `sluice discover <source> [TABLE…] [--write]`: the tables of a database source,
//! their columns, types, primary keys and a suggested sync; `--write` adds the named
//! tables as streams to pipeline.yaml by inserting text, so comments and layout stay.

use std::path::Path;

use sluice_connectors::sql::discover::{discover, DiscoveredTable, Suggestion};
use sluice_core::config::PipelineConfig;

use crate::exit;

#[derive(clap::Args, Debug)]
pub struct DiscoverArgs {
    /// The source (`sources.<name>`, of `type: postgres`, `mysql` or `sqlite`).
    pub source: String,
    /// Only these tables (`schema.table` or `table`); with `--write`, the ones to add.
    pub tables: Vec<String>,
    /// Add the named tables as streams of the source in the pipeline file.
    #[arg(long)]
    pub write: bool,
}

pub async fn run(pipeline: &Path, args: DiscoverArgs) -> u8 {
    let config = match crate::project::load_config(pipeline) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Some(section) = crate::project::source_section(&config, pipeline, &args.source) else {
        return exit::CONFIG;
    };
    if !matches!(section.kind.as_str(), "postgres" | "mysql" | "sqlite") {
        crate::logging::print_error!(
            "source `{}` is `type: {}`; discover reads databases (postgres, mysql, sqlite)",
            args.source,
            section.kind
        );
        return exit::CONFIG;
    }
    if args.write && args.tables.is_empty() {
        crate::logging::print_error!(
            "name the tables to add, e.g. `sluice discover {} public.orders --write`",
            args.source
        );
        return exit::CONFIG;
    }
    let tables = match discover(&config.doc, section, &args.tables).await {
        Err(e) => {
            crate::project::print_config_error(&e);
            return exit::CONFIG;
        }
        Ok(Err(e)) => {
            crate::logging::print_error!("source `{}`: {e}", args.source);
            return exit::CONNECTION;
        }
        Ok(Ok(tables)) => tables,
    };
    for table in &tables {
        print_table(table);
    }
    if !args.write {
        return exit::OK;
    }
    let original = match std::fs::read_to_string(pipeline) {
        Ok(text) => text,
        Err(e) => {
            crate::logging::print_error!("cannot read {}: {e}", pipeline.display());
            return exit::INTERNAL;
        }
    };
    let mut text = original.clone();
    for table in &tables {
        let unsupported = table.unsupported();
        if !unsupported.is_empty() {
            eprintln!(
                "not added: {} has columns without a D1 type ({}); read it with a `query:` or declare them under `columns:`",
                table.qualified(),
                unsupported.join("; ")
            );
            continue;
        }
        let name = stream_name(&table.name);
        match add_stream(&text, &args.source, &name, table) {
            Ok(Some(updated)) => {
                println!(
                    "added stream {}.{name} ({})",
                    args.source,
                    table.qualified()
                );
                text = updated;
            }
            Ok(None) => println!("kept stream {}.{name}: it exists already", args.source),
            Err(e) => {
                crate::logging::print_error!("{}: {e}", pipeline.display());
                return exit::CONFIG;
            }
        }
    }
    if text == original {
        return exit::OK;
    }
    if let Err(e) = std::fs::write(pipeline, &text) {
        crate::logging::print_error!("cannot write {}: {e}", pipeline.display());
        return exit::INTERNAL;
    }
    // The edit must leave a file that loads; otherwise put the original back.
    if let Err(e) = PipelineConfig::load(pipeline) {
        let _ = std::fs::write(pipeline, &original);
        crate::project::print_config_error(&e);
        crate::logging::print_error!(
            "the edit did not validate; {} is unchanged",
            pipeline.display()
        );
        return exit::CONFIG;
    }
    exit::OK
}

fn print_table(table: &DiscoveredTable) {
    let key = if table.primary_key.is_empty() {
        "none".to_string()
    } else {
        table.primary_key.join(", ")
    };
    let suggestion = match &table.suggestion {
        Suggestion::Cursor(c) => format!("sync: incremental, cursor: {c}"),
        Suggestion::AppendKey(k) => format!("sync: incremental, append_key: {k}"),
        Suggestion::Full => "sync: full".into(),
    };
    println!(
        "{}  (primary key: {key}; suggested {suggestion})",
        table.qualified()
    );
    let mut rows = vec![vec!["column".to_string(), "type".into(), "D1 type".into()]];
    for c in &table.columns {
        rows.push(vec![
            c.name.clone(),
            c.source_type.clone(),
            match &c.mapped {
                Ok((ty, _)) => ty.name(),
                Err(reason) => format!("unsupported: {reason}"),
            },
        ]);
    }
    super::print_table(&rows);
    println!();
}

/// A stream name from a table name: lowercase letters, digits and `_`.
fn stream_name(table: &str) -> String {
    let name: String = table
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        format!("t_{name}")
    } else {
        name
    }
}

/// Indentation of a line; `None` for a blank or comment-only line.
pub(crate) fn indent_of(line: &str) -> Option<usize> {
    let trimmed = line.trim_start();
    (!trimmed.is_empty() && !trimmed.starts_with('#')).then(|| line.len() - trimmed.len())
}

/// The end (exclusive line index) of the block of lines more indented than `indent`
/// that starts after `start`; trailing blank and comment lines stay outside.
pub(crate) fn block_end(lines: &[&str], start: usize, indent: usize) -> usize {
    let mut end = start + 1;
    for (i, line) in lines.iter().enumerate().skip(start + 1) {
        match indent_of(line) {
            Some(n) if n <= indent => break,
            Some(_) => end = i + 1,
            // A comment indented under the block belongs to it.
            None if line.trim_start().starts_with('#')
                && line.len() - line.trim_start().len() > indent =>
            {
                end = i + 1
            }
            None => {}
        }
    }
    end
}

/// Finds `key:` as a direct child of the block starting at `parent` (indent `parent_indent`).
pub(crate) fn child(
    lines: &[&str],
    parent: usize,
    parent_indent: Option<usize>,
    key: &str,
) -> Option<usize> {
    let end = match parent_indent {
        Some(indent) => block_end(lines, parent, indent),
        None => lines.len(),
    };
    let from = if parent_indent.is_some() {
        parent + 1
    } else {
        0
    };
    let mut child_indent = None;
    for (i, line) in lines.iter().enumerate().take(end).skip(from) {
        let Some(n) = indent_of(line) else { continue };
        let expected = *child_indent.get_or_insert(n);
        let name = line
            .split_once(':')
            .map(|(k, _)| k.trim().trim_matches(['"', '\'']));
        if n == expected && name == Some(key) {
            return Some(i);
        }
    }
    None
}

/// Adds stream `name` reading `table` under `sources.<source>.streams` by inserting
/// lines; `None` when the stream exists. Everything else in the file is kept as is.
fn add_stream(
    text: &str,
    source: &str,
    name: &str,
    table: &DiscoveredTable,
) -> Result<Option<String>, String> {
    let lines: Vec<&str> = text.lines().collect();
    let sources = child(&lines, 0, None, "sources").ok_or("no `sources:` block")?;
    let sources_indent = indent_of(lines[sources]).unwrap_or(0);
    let source_line = child(&lines, sources, Some(sources_indent), source)
        .ok_or_else(|| format!("no `sources.{source}` block"))?;
    let source_indent = indent_of(lines[source_line]).unwrap_or(0);
    let step = lines
        .get(source_line + 1..)
        .and_then(|rest| rest.iter().find_map(|l| indent_of(l)))
        .filter(|n| *n > source_indent)
        .map(|n| n - source_indent)
        .unwrap_or(2);
    let (insert_at, stream_indent, mut block) = match child(
        &lines,
        source_line,
        Some(source_indent),
        "streams",
    ) {
        Some(streams) => {
            let streams_indent = indent_of(lines[streams]).unwrap_or(0);
            let inline = lines[streams]
                .split_once(':')
                .map(|x| x.1.trim())
                .unwrap_or("");
            if inline == "{}" {
                return Err(format!(
                        "`sources.{source}.streams: {{}}` is written inline; replace it by `streams:` and run again"
                    ));
            }
            if child(&lines, streams, Some(streams_indent), name).is_some() {
                return Ok(None);
            }
            (
                block_end(&lines, streams, streams_indent),
                streams_indent + step,
                String::new(),
            )
        }
        None => {
            let at = block_end(&lines, source_line, source_indent);
            let streams_indent = source_indent + step;
            (
                at,
                streams_indent + step,
                format!("{}streams:\n", " ".repeat(streams_indent)),
            )
        }
    };
    block.push_str(&format!("{}{name}:\n", " ".repeat(stream_indent)));
    block.push_str(&table.stream_yaml(stream_indent + step));
    let mut out = String::with_capacity(text.len() + block.len());
    for line in &lines[..insert_at] {
        out.push_str(line);
        out.push('\n');
    }
    out.push_str(&block);
    for line in &lines[insert_at..] {
        out.push_str(line);
        out.push('\n');
    }
    if !text.ends_with('\n') && insert_at < lines.len() {
        out.pop();
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_connectors::sql::ReadAs;
    use sluice_core::schema::FieldType;

    fn orders() -> DiscoveredTable {
        DiscoveredTable {
            schema: "public".into(),
            name: "orders".into(),
            columns: vec![sluice_connectors::sql::DescribedColumn {
                name: "id".into(),
                source_type: "int8".into(),
                mapped: Ok((FieldType::Bigint, ReadAs::Text)),
            }],
            primary_key: vec!["id".into()],
            suggestion: Suggestion::Cursor("updated_at".into()),
        }
    }

    #[test]
    fn a_stream_is_inserted_and_comments_stay() {
        let yaml = "name: shop # the shop\nsources:\n  db:   # our RDS\n    type: postgres\n    url: ${DB_URL}\n    streams:\n      # customers first\n      customers:\n        table: public.customers\n\n  # files next\n  files:\n    type: files\n";
        let out = add_stream(yaml, "db", "orders", &orders())
            .unwrap()
            .unwrap();
        assert_eq!(
            out,
            "name: shop # the shop\nsources:\n  db:   # our RDS\n    type: postgres\n    url: ${DB_URL}\n    streams:\n      # customers first\n      customers:\n        table: public.customers\n      orders:\n        table: public.orders\n        sync: incremental\n        cursor: updated_at\n\n  # files next\n  files:\n    type: files\n"
        );
        assert_eq!(add_stream(&out, "db", "orders", &orders()).unwrap(), None);
    }

    #[test]
    fn a_streams_block_is_created_when_missing() {
        let yaml = "sources:\n  db:\n    type: mysql\n    url: x\n";
        let out = add_stream(yaml, "db", "orders", &orders())
            .unwrap()
            .unwrap();
        assert_eq!(
            out,
            "sources:\n  db:\n    type: mysql\n    url: x\n    streams:\n      orders:\n        table: public.orders\n        sync: incremental\n        cursor: updated_at\n"
        );
        assert!(add_stream(yaml, "other", "orders", &orders()).is_err());
    }
}
