//! Key paths and where they are in the file: `devices[2].link.port` ↔ line and column.

use std::fmt::Write;
use std::ops::Range;

use toml_edit::{ImDocument, Item, Value};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// `devices[2].link.port`
pub fn render(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => {
                let _ = write!(s, "[{i}]");
            }
        }
    }
    s
}

/// Convert a `serde_ignored` path to segments.
pub fn from_ignored(path: &serde_ignored::Path<'_>, out: &mut Vec<Seg>) {
    use serde_ignored::Path as P;
    match path {
        P::Root => {}
        P::Seq { parent, index } => {
            from_ignored(parent, out);
            out.push(Seg::Index(*index));
        }
        P::Map { parent, key } => {
            from_ignored(parent, out);
            out.push(Seg::Key(key.clone()));
        }
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            from_ignored(parent, out)
        }
    }
}

enum Node<'a> {
    Table(&'a toml_edit::Table),
    Item(&'a Item),
    Value(&'a Value),
}

/// Byte range of the key (or, for array elements, the value) that `path` names. When the path
/// goes deeper than the file (a missing key), the deepest existing ancestor is returned.
pub fn locate(doc: &ImDocument<String>, path: &[Seg]) -> Option<Range<usize>> {
    let mut node = Node::Table(doc.as_table());
    let mut best: Option<Range<usize>> = None;
    for seg in path {
        // Normalise: an item that is a table or a value is walked as such.
        let node_now = match node {
            Node::Item(Item::Table(t)) => Node::Table(t),
            Node::Item(Item::Value(v)) => Node::Value(v),
            other => other,
        };
        node = match (seg, node_now) {
            (Seg::Key(k), Node::Table(t)) => {
                let Some((key, item)) = t.get_key_value(k) else {
                    return best;
                };
                best = key.span().or_else(|| item.span()).or(best);
                Node::Item(item)
            }
            (Seg::Key(k), Node::Value(Value::InlineTable(t))) => {
                let Some((key, item)) = t.get_key_value(k) else {
                    return best;
                };
                best = key.span().or_else(|| item.span()).or(best);
                Node::Item(item)
            }
            (Seg::Index(i), Node::Item(Item::ArrayOfTables(a))) => {
                let Some(t) = a.get(*i) else { return best };
                best = t.span().or(best);
                Node::Table(t)
            }
            (Seg::Index(i), Node::Value(Value::Array(a))) => {
                let Some(v) = a.get(*i) else { return best };
                best = v.span().or(best);
                Node::Value(v)
            }
            _ => return best,
        };
    }
    best
}

/// The deepest key path whose span contains `offset` (for serde type errors, which carry a
/// span but no path).
pub fn path_at(doc: &ImDocument<String>, offset: usize) -> Vec<Seg> {
    let mut out = Vec::new();
    walk_table(doc.as_table(), offset, &mut out);
    out
}

fn contains(r: &Option<Range<usize>>, o: usize) -> bool {
    r.as_ref()
        .is_some_and(|r| r.start <= o && o < r.end.max(r.start + 1))
}

fn walk_table(t: &toml_edit::Table, offset: usize, out: &mut Vec<Seg>) -> bool {
    for (k, item) in t.iter() {
        let key_span = t.key(k).and_then(|key| key.span());
        match item {
            Item::Table(sub) => {
                out.push(Seg::Key(k.to_owned()));
                if contains(&key_span, offset) || walk_table(sub, offset, out) {
                    return true;
                }
                out.pop();
            }
            Item::ArrayOfTables(a) => {
                for (i, sub) in a.iter().enumerate() {
                    out.push(Seg::Key(k.to_owned()));
                    out.push(Seg::Index(i));
                    if walk_table(sub, offset, out) {
                        return true;
                    }
                    out.pop();
                    out.pop();
                }
            }
            Item::Value(v) => {
                out.push(Seg::Key(k.to_owned()));
                if contains(&key_span, offset) || walk_value(v, offset, out) {
                    return true;
                }
                out.pop();
            }
            Item::None => {}
        }
    }
    false
}

fn walk_value(v: &Value, offset: usize, out: &mut Vec<Seg>) -> bool {
    match v {
        Value::InlineTable(t) => {
            for (k, sub) in t.iter() {
                out.push(Seg::Key(k.to_owned()));
                if walk_value(sub, offset, out) {
                    return true;
                }
                out.pop();
            }
            contains(&v.span(), offset)
        }
        Value::Array(a) => {
            for (i, sub) in a.iter().enumerate() {
                out.push(Seg::Index(i));
                if walk_value(sub, offset, out) {
                    return true;
                }
                out.pop();
            }
            contains(&v.span(), offset)
        }
        _ => contains(&v.span(), offset),
    }
}

/// Remove what `path` names from a document, so that parsing can go on past a bad value.
/// Inside inline tables and arrays the whole top-level value goes (its other keys would be
/// reported later anyway); array-of-table indexes never shift, because only keys inside an
/// element are removed, never the element.
pub fn remove(doc: &mut toml_edit::DocumentMut, path: &[Seg]) -> bool {
    fn walk(table: &mut toml_edit::Table, path: &[Seg]) -> bool {
        match path {
            [Seg::Key(k)] => table.remove(k).is_some(),
            [Seg::Key(k), rest @ ..] => match table.get_mut(k) {
                Some(Item::Table(t)) => walk(t, rest),
                Some(Item::ArrayOfTables(a)) => match rest {
                    [Seg::Index(i), more @ ..] if !more.is_empty() => {
                        a.get_mut(*i).is_some_and(|t| walk(t, more))
                    }
                    _ => table.remove(k).is_some(),
                },
                // An inline table, an array or a scalar: drop the whole value.
                Some(_) => table.remove(k).is_some(),
                None => false,
            },
            _ => false,
        }
    }
    walk(doc.as_table_mut(), path)
}
