//! Maps a path inside the YAML document (`sources.facebook.streams[0].level`) to the
//! line and column where it is written, so every config error can say file:line:col.
//!
//! serde's typed deserialisation knows *which* field failed but not *where* it is;
//! `yaml-rust2`'s marked events know where every node is. We join the two by path.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A place in the source text: 1-based line and column, and the byte offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub line: u32,
    pub column: u32,
    pub offset: u32,
}

/// Positions of every key and value in a YAML document, by path.
#[derive(Debug, Default)]
pub struct SpanMap {
    positions: HashMap<String, Position>,
}

impl SpanMap {
    /// Parses `text`; a document that does not parse yields an empty map (the
    /// serde_yaml error for it carries its own location).
    pub fn build(text: &str) -> SpanMap {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(text);
        let _ = parser.load(&mut builder, false);
        // The parser's index counts characters and points at its token's end;
        // renderers want the byte offset of the line and column it reports.
        let mut positions = builder.positions;
        for position in positions.values_mut() {
            position.offset = byte_offset(text, position.line, position.column) as u32;
        }
        SpanMap { positions }
    }

    /// The position of `path`, or of its nearest ancestor that exists in the document
    /// (a missing field is reported at the mapping that should contain it).
    pub fn locate(&self, path: &[String]) -> Option<Position> {
        (0..=path.len())
            .rev()
            .find_map(|n| self.positions.get(&join_path(&path[..n])).copied())
    }
}

/// The byte offset of a 1-based line and (character) column in `text`.
pub fn byte_offset(text: &str, line: u32, column: u32) -> usize {
    let mut start = 0;
    for (n, content) in text.split_inclusive('\n').enumerate() {
        if n as u32 + 1 == line {
            let within = content
                .char_indices()
                .nth(column.saturating_sub(1) as usize)
                .map_or(content.trim_end_matches('\n').len(), |(i, _)| i);
            return start + within;
        }
        start += content.len();
    }
    text.len()
}

/// Joins path segments the way users read them: `a.b[2].c`.
pub fn join_path(segments: &[String]) -> String {
    let mut out = String::new();
    for segment in segments {
        if !segment.starts_with('[') && !out.is_empty() {
            out.push('.');
        }
        out.push_str(segment);
    }
    out
}

enum Frame {
    /// In a mapping: `Some(key)` once the key was read and its value is pending.
    Mapping(Option<String>),
    Sequence(usize),
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    path: Vec<String>,
    positions: HashMap<String, Position>,
}

impl Builder {
    fn record(&mut self, mark: Marker) {
        let key = join_path(&self.path);
        self.positions.entry(key).or_insert(Position {
            line: mark.line() as u32,
            column: mark.col() as u32 + 1,
            offset: mark.index() as u32,
        });
    }

    /// Called before a value node (scalar or collection start): pushes its path segment.
    fn enter_value(&mut self, mark: Marker) -> bool {
        match self.stack.last_mut() {
            Some(Frame::Mapping(Some(_))) => {
                self.record_value(mark);
                true
            }
            Some(Frame::Sequence(index)) => {
                let segment = format!("[{index}]");
                *index += 1;
                self.path.push(segment);
                self.record(mark);
                true
            }
            _ => false,
        }
    }

    fn record_value(&mut self, _mark: Marker) {
        // The key's position was recorded when the key was read; keys are where
        // users look ("unknown key `levle`"), so the value does not overwrite it.
    }

    /// Called after a value node completes: pops its path segment.
    fn leave_value(&mut self) {
        match self.stack.last_mut() {
            Some(Frame::Mapping(pending)) if pending.is_some() => {
                *pending = None;
                self.path.pop();
            }
            Some(Frame::Sequence(_)) => {
                self.path.pop();
            }
            _ => {}
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        match event {
            Event::Scalar(value, ..) => {
                if let Some(Frame::Mapping(pending @ None)) = self.stack.last_mut() {
                    // A key.
                    *pending = Some(value.clone());
                    self.path.push(value);
                    self.record(mark);
                } else if self.enter_value(mark) {
                    self.leave_value();
                }
            }
            Event::Alias(_) if self.enter_value(mark) => self.leave_value(),
            Event::MappingStart(..) => {
                if self.stack.is_empty() {
                    self.record(mark);
                } else {
                    self.enter_value(mark);
                }
                self.stack.push(Frame::Mapping(None));
            }
            Event::SequenceStart(..) => {
                if self.stack.is_empty() {
                    self.record(mark);
                } else {
                    self.enter_value(mark);
                }
                self.stack.push(Frame::Sequence(0));
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                self.leave_value();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: &[&str]) -> Vec<String> {
        p.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn locates_keys_in_nested_mappings_and_sequences() {
        let text = "name: x\nsources:\n  fb:\n    type: facebook_ads\n    streams:\n      - a: 1\n        levle: ad\n";
        let map = SpanMap::build(text);
        assert_eq!(map.locate(&path(&["name"])).unwrap().line, 1);
        let p = map.locate(&path(&["sources", "fb", "type"])).unwrap();
        assert_eq!((p.line, p.column), (4, 5));
        let p = map
            .locate(&path(&["sources", "fb", "streams", "[0]", "levle"]))
            .unwrap();
        assert_eq!((p.line, p.column), (7, 9));
        // A path that does not exist falls back to its nearest ancestor.
        let p = map
            .locate(&path(&["sources", "fb", "missing", "deeper"]))
            .unwrap();
        assert_eq!(p.line, 3);
    }
}
