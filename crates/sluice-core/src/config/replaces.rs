//! `replaces:` on a stream: this stream takes over from another one (a vendor feed
//! swapped for an in-house system) without any model changing.
//!
//! ```yaml
//! sources:
//!   crm:
//!     type: postgres
//!     streams:
//!       customers:
//!         table: public.customers
//!         replaces:
//!           stream: vendor.customers      # the stream being replaced (`source.stream`)
//!           columns:                      # this stream's column: the replaced stream's name for it
//!             customer_id: id
//!             email_address: email
//!           switch: false                 # true: d1.vendor_customers now reads this stream
//! ```
//!
//! The key is taken out of the stream's YAML here, before the connector parses its
//! streams, so every source type accepts it and no connector knows about it. What it
//! names is checked against the built sources by [`crate::replace`].

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_yaml::Value;

use super::{ConfigDocument, ConfigError, Section};

/// A `source.stream` reference.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct StreamRef {
    pub source: String,
    pub stream: String,
}

impl StreamRef {
    /// `vendor.customers` → (`vendor`, `customers`); `None` unless exactly one `.` splits two names.
    pub fn parse(text: &str) -> Option<StreamRef> {
        let (source, stream) = text.trim().split_once('.')?;
        if source.is_empty() || stream.is_empty() || stream.contains('.') {
            return None;
        }
        Some(StreamRef {
            source: source.to_string(),
            stream: stream.to_string(),
        })
    }
}

impl std::fmt::Display for StreamRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.source, self.stream)
    }
}

/// One stream's `replaces:`, with where it is written (for errors found later).
#[derive(Debug, Clone)]
pub struct Replacement {
    /// The stream that declares `replaces:` (the new one).
    pub by: StreamRef,
    /// The stream it replaces (the old one).
    pub replaced: StreamRef,
    /// `(new column, old column)`: the replacing stream's column and the name the
    /// replaced stream (and so every model reading it) knows it by. Columns not
    /// listed keep their names.
    pub columns: Vec<(String, String)>,
    /// Whether the switch is made: the replaced stream's D1 name reads this stream.
    pub switch: bool,
    /// YAML path of the `replaces` key.
    pub path: Vec<String>,
}

impl Replacement {
    /// The path of `columns.<new>` (or of `replaces` itself when it has no `columns`).
    pub fn column_path(&self, new: &str) -> Vec<String> {
        let mut path = self.path.clone();
        if !self.columns.is_empty() {
            path.extend(["columns".to_string(), new.to_string()]);
        }
        path
    }

    /// The path of `stream` (or of `replaces` in its short form).
    pub fn stream_path(&self) -> Vec<String> {
        let mut path = self.path.clone();
        path.push("stream".into());
        path
    }
}

/// `replaces:` in its long form; the short form is the bare `source.stream` string.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplacesConfig {
    /// The replaced stream, `source.stream`.
    stream: String,
    /// This stream's column → the replaced stream's name for it.
    #[serde(default)]
    columns: BTreeMap<String, String>,
    /// `true` once the switch is made (default false: both streams land side by side
    /// and `sluice compare` reports how they differ).
    #[serde(default)]
    switch: bool,
}

/// Takes every `replaces:` out of the streams of `sources` (streams given as a
/// mapping `streams: { name: {...} }`), checking what can be checked from the file alone.
pub(super) fn extract(
    doc: &ConfigDocument,
    sources: &mut [Section],
) -> Result<Vec<Replacement>, ConfigError> {
    let mut out: Vec<Replacement> = Vec::new();
    for section in sources.iter_mut() {
        let Some(Value::Mapping(streams)) = section.body.get_mut("streams") else {
            continue;
        };
        for (name, body) in streams.iter_mut() {
            let (Some(name), Value::Mapping(body)) = (name.as_str(), body) else {
                continue;
            };
            let Some(value) = body.remove("replaces") else {
                continue;
            };
            let mut path = section.path.clone();
            path.extend(["streams".to_string(), name.to_string(), "replaces".into()]);
            let by = StreamRef {
                source: section.name.clone(),
                stream: name.to_string(),
            };
            out.push(parse_one(doc, by, value, path)?);
        }
    }
    for (i, r) in out.iter().enumerate() {
        if let Some(first) = out[..i].iter().find(|o| o.replaced == r.replaced) {
            return Err(doc.error_at(
                &r.stream_path(),
                format!(
                    "{} is already replaced by {}; one stream replaces another",
                    r.replaced, first.by
                ),
            ));
        }
    }
    Ok(out)
}

fn parse_one(
    doc: &ConfigDocument,
    by: StreamRef,
    value: Value,
    path: Vec<String>,
) -> Result<Replacement, ConfigError> {
    let (config, stream_path) = match value {
        Value::String(stream) => (
            ReplacesConfig {
                stream,
                columns: BTreeMap::new(),
                switch: false,
            },
            path.clone(),
        ),
        other => {
            let config: ReplacesConfig = doc.deserialize_at(other, &path)?;
            let mut stream_path = path.clone();
            stream_path.push("stream".into());
            (config, stream_path)
        }
    };
    let Some(replaced) = StreamRef::parse(&config.stream) else {
        let mut error = doc.error_at(
            &stream_path,
            format!(
                "`{}` is not a stream reference: write `<source>.<stream>`",
                config.stream
            ),
        );
        error.help = Some("e.g. `replaces: { stream: vendor.customers }`".into());
        return Err(error);
    };
    if replaced == by {
        return Err(doc.error_at(&stream_path, "a stream cannot replace itself"));
    }
    let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
    for (new, old) in &config.columns {
        let mut at = path.clone();
        at.extend(["columns".to_string(), new.clone()]);
        if new.trim().is_empty() || old.trim().is_empty() {
            return Err(doc.error_at(
                &at,
                "a column mapping needs both names: `new_name: old_name`",
            ));
        }
        if let Some(other) = seen.insert(old, new) {
            return Err(doc.error_at(
                &at,
                format!("`{other}` and `{new}` both map to `{old}` of {replaced}"),
            ));
        }
    }
    Ok(Replacement {
        by,
        replaced,
        columns: config.columns.into_iter().collect(),
        switch: config.switch,
        path,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::{Lookup, PipelineConfig};

    struct NoEnv;
    impl Lookup for NoEnv {
        fn var(&self, _: &str) -> Option<String> {
            None
        }
    }

    fn parse(text: &str) -> Result<PipelineConfig, super::ConfigError> {
        PipelineConfig::parse("pipeline.yaml".into(), text.into(), Path::new("."), &NoEnv)
    }

    const HEAD: &str = "name: m\nsources:\n  vendor:\n    type: files\n    streams:\n      customers: { path: a.csv }\n  crm:\n    type: files\n    streams:\n      customers:\n        path: b.csv\n";

    #[test]
    fn replaces_is_taken_out_of_the_stream_with_its_mapping() {
        let text = format!(
            "{HEAD}        replaces:\n          stream: vendor.customers\n          columns: {{ customer_id: id }}\n          switch: true\n"
        );
        let config = parse(&text).unwrap();
        let r = &config.replacements[0];
        assert_eq!(r.by.to_string(), "crm.customers");
        assert_eq!(r.replaced.to_string(), "vendor.customers");
        assert_eq!(r.columns, vec![("customer_id".into(), "id".into())]);
        assert!(r.switch);
        let stream = &config.source("crm").unwrap().body["streams"]["customers"];
        assert!(
            stream.get("replaces").is_none(),
            "the connector never sees it"
        );
        let at = config.doc.error_at(&r.column_path("customer_id"), "x");
        assert_eq!(at.position.map(|p| p.line), Some(14));
    }

    #[test]
    fn short_form_and_bad_references_are_located() {
        let config = parse(&format!("{HEAD}        replaces: vendor.customers\n")).unwrap();
        assert!(!config.replacements[0].switch);
        assert!(config.replacements[0].columns.is_empty());

        let err = parse(&format!("{HEAD}        replaces: vendor_customers\n")).unwrap_err();
        assert_eq!(err.position.map(|p| p.line), Some(12), "{err}");
        assert!(err.message.contains("<source>.<stream>"), "{err}");

        let err = parse(&format!(
            "{HEAD}        replaces: {{ stream: vendor.customers, swich: true }}\n"
        ))
        .unwrap_err();
        assert!(err.to_string().contains("unknown key `swich`"), "{err}");
        assert_eq!(err.help.as_deref(), Some("did you mean `switch`?"));

        let err = parse(&format!(
            "{HEAD}        replaces:\n          stream: vendor.customers\n          columns: {{ a: id, b: id }}\n"
        ))
        .unwrap_err();
        assert!(err.message.contains("both map to `id`"), "{err}");
        assert_eq!(err.position.map(|p| p.line), Some(14), "{err}");
    }
}
