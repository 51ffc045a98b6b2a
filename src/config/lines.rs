//! Maps YAML paths such as `pools.sandboxes.backends[1].weight` to the line they start on, so
//! that validation errors can name the line. serde_yaml keeps no positions on deserialized
//! values, so this walks yaml-rust2's marked event stream once per load.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// YAML path -> 1-based line.
#[derive(Debug, Default)]
pub struct LineIndex {
    lines: HashMap<String, usize>,
}

impl LineIndex {
    /// Indexes `src`. A file that does not parse yields an empty index (serde reports the
    /// syntax error with its own position).
    pub fn build(src: &str) -> Self {
        let mut walker = Walker::default();
        let mut parser = Parser::new_from_str(src);
        if parser.load(&mut walker, false).is_err() {
            return Self::default();
        }
        Self {
            lines: walker.lines,
        }
    }

    /// The line of `path`, or of its nearest indexed ancestor.
    pub fn line_of(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(l) = self.lines.get(p) {
                return Some(*l);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

enum Frame {
    /// In a mapping: `key` is the key whose value comes next, if any.
    Map { path: String, key: Option<String> },
    /// In a sequence: `next` is the index of the next item.
    Seq { path: String, next: usize },
}

#[derive(Default)]
struct Walker {
    stack: Vec<Frame>,
    lines: HashMap<String, usize>,
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

impl Walker {
    /// Called when a value (scalar or container) starts; returns its path, or None when the
    /// event is a mapping key.
    fn value_path(&mut self, ev_scalar: Option<&str>, line: usize) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Seq { path, next }) => {
                let p = format!("{path}[{next}]");
                *next += 1;
                self.lines.entry(p.clone()).or_insert(line);
                Some(p)
            }
            Some(Frame::Map { path, key }) => match key.take() {
                Some(k) => Some(join(path, &k)),
                None => {
                    // This event is a key.
                    let k = ev_scalar.unwrap_or("?").to_owned();
                    self.lines.entry(join(path, &k)).or_insert(line);
                    *key = Some(k);
                    None
                }
            },
        }
    }
}

impl MarkedEventReceiver for Walker {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let line = mark.line();
        match ev {
            Event::Scalar(ref s, ..) => {
                let _ = self.value_path(Some(s), line);
            }
            Event::Alias(_) => {
                let _ = self.value_path(None, line);
            }
            Event::SequenceStart(..) => {
                let path = self.value_path(None, line).unwrap_or_default();
                self.stack.push(Frame::Seq { path, next: 0 });
            }
            Event::MappingStart(..) => {
                let path = self.value_path(None, line).unwrap_or_default();
                self.stack.push(Frame::Map { path, key: None });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_lines() {
        let src = "pools:\n  a:\n    backends:\n      - { address: x, weight: 0 }\n      - address: y\n        weight: 2\nroutes: []\n";
        let idx = LineIndex::build(src);
        assert_eq!(idx.line_of("pools"), Some(1));
        assert_eq!(idx.line_of("pools.a.backends[0].weight"), Some(4));
        assert_eq!(idx.line_of("pools.a.backends[1]"), Some(5));
        assert_eq!(idx.line_of("pools.a.backends[1].weight"), Some(6));
        assert_eq!(idx.line_of("pools.a.backends[1].missing"), Some(5));
        assert_eq!(idx.line_of("routes"), Some(7));
    }
}
