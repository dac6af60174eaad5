//! A YAML tree that remembers where every node came from, so validation can say
//! `file:line:col` for each problem instead of stopping at the first one.

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A position in a policy file, 1-based like editors show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

/// One YAML node and where it starts.
#[derive(Debug, Clone)]
pub struct Node {
    pub pos: Pos,
    pub kind: Kind,
}

/// The shape of a node; keys of a mapping keep their own position.
#[derive(Debug, Clone)]
pub enum Kind {
    Map(Vec<(Node, Node)>),
    Seq(Vec<Node>),
    /// A scalar as written; `quoted` tells `"null"` from `null`.
    Scalar {
        text: String,
        quoted: bool,
    },
}

impl Node {
    /// The scalar's text, if this is a plain or quoted scalar.
    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            Kind::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    /// True for `null`, `~` or an empty value (`key:` with nothing after it).
    pub fn is_null(&self) -> bool {
        matches!(&self.kind, Kind::Scalar { text, quoted: false } if text.is_empty() || text == "~" || text == "null")
    }

    /// What kind of node this is, for error messages.
    pub fn describe(&self) -> &'static str {
        match &self.kind {
            Kind::Map(_) => "a mapping",
            Kind::Seq(_) => "a list",
            Kind::Scalar { .. } if self.is_null() => "nothing",
            Kind::Scalar { .. } => "a scalar",
        }
    }
}

/// A YAML syntax error with its position.
#[derive(Debug, Clone)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

/// Parses one YAML document into a positioned tree. An empty document is an empty mapping.
pub fn parse(text: &str) -> Result<Node, SyntaxError> {
    let mut builder = Builder::default();
    Parser::new_from_str(text)
        .load(&mut builder, false)
        .map_err(|e| SyntaxError {
            pos: pos_of(e.marker()),
            message: e.info().to_string(),
        })?;
    if let Some(pos) = builder.alias {
        return Err(SyntaxError {
            pos,
            message: "anchors and aliases are not supported in policies; write the value out"
                .into(),
        });
    }
    Ok(builder.root.unwrap_or(Node {
        pos: Pos { line: 1, col: 1 },
        kind: Kind::Map(Vec::new()),
    }))
}

fn pos_of(m: &Marker) -> Pos {
    Pos {
        line: m.line(),
        col: m.col() + 1,
    }
}

/// Collects parser events into nodes with a stack of open collections.
#[derive(Default)]
struct Builder {
    stack: Vec<Open>,
    root: Option<Node>,
    /// Where the first alias was seen; aliases are refused to keep errors pointing at real text.
    alias: Option<Pos>,
}

/// A collection still being filled.
struct Open {
    pos: Pos,
    items: Vec<Node>,
    is_map: bool,
}

impl Builder {
    fn push(&mut self, node: Node) {
        match self.stack.last_mut() {
            Some(open) => open.items.push(node),
            None => self.root = Some(node),
        }
    }

    fn close(&mut self) {
        let Some(open) = self.stack.pop() else { return };
        let kind = if open.is_map {
            let mut pairs = Vec::with_capacity(open.items.len() / 2);
            let mut items = open.items.into_iter();
            while let (Some(k), Some(v)) = (items.next(), items.next()) {
                pairs.push((k, v));
            }
            Kind::Map(pairs)
        } else {
            Kind::Seq(open.items)
        };
        self.push(Node {
            pos: open.pos,
            kind,
        });
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let pos = pos_of(&mark);
        match ev {
            Event::Scalar(text, style, _, _) => self.push(Node {
                pos,
                kind: Kind::Scalar {
                    text,
                    quoted: style != yaml_rust2::scanner::TScalarStyle::Plain,
                },
            }),
            Event::SequenceStart(..) => self.stack.push(Open {
                pos,
                items: Vec::new(),
                is_map: false,
            }),
            Event::MappingStart(..) => self.stack.push(Open {
                pos,
                items: Vec::new(),
                is_map: true,
            }),
            Event::SequenceEnd | Event::MappingEnd => self.close(),
            Event::Alias(_) => {
                self.alias.get_or_insert(pos);
                self.push(Node {
                    pos,
                    kind: Kind::Scalar {
                        text: String::new(),
                        quoted: false,
                    },
                });
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, path: &[&str], expected: (usize, usize)) {
        let mut node = parse(text).unwrap();
        for key in path {
            node = match node.kind {
                Kind::Map(pairs) => {
                    pairs
                        .into_iter()
                        .find(|(k, _)| k.as_str() == Some(key))
                        .unwrap()
                        .1
                }
                Kind::Seq(items) => items.into_iter().nth(key.parse().unwrap()).unwrap(),
                Kind::Scalar { .. } => panic!("scalar"),
            };
        }
        assert_eq!((node.pos.line, node.pos.col), expected, "{path:?}");
    }

    #[test]
    fn positions_are_one_based() {
        let text = "a: 1\nsteps:\n  - name: x\n    max_ttl: 2h\n";
        check(text, &["a"], (1, 4));
        check(text, &["steps", "0", "name"], (3, 11));
        check(text, &["steps", "0", "max_ttl"], (4, 14));
    }

    #[test]
    fn syntax_error_has_position() {
        let err = parse("a: [1, 2\nb: c\n").unwrap_err();
        assert!(err.pos.line >= 1, "{err:?}");
    }

    #[test]
    fn aliases_are_refused() {
        let err = parse("a: &x 1\nb: *x\n").unwrap_err();
        assert_eq!(err.pos.line, 2);
    }
}
