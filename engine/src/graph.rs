//! The pipeline as a DAG: cycle detection, a stable topological order, and
//! drawings (`engine graph`) in DOT, Mermaid and plain text. Drawing is
//! deterministic: the same file always gives the same bytes, so drawings can
//! be snapshot-tested and diffed in review.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use operators::registry::Role;

use crate::config::{Component, Pipeline};

/// An edge: `from.port -> to`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Edge {
    pub from: String,
    pub port: String,
    pub to: String,
}

pub fn edges(components: &[Component]) -> Vec<Edge> {
    let mut out: Vec<Edge> = components
        .iter()
        .flat_map(|c| {
            c.inputs.iter().map(|i| Edge { from: i.from.clone(), port: i.port_name.to_string(), to: c.id.clone() })
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The first cycle found, as a path that ends where it starts.
pub fn find_cycle(components: &[Component]) -> Option<Vec<String>> {
    let ids: BTreeSet<&str> = components.iter().map(|c| c.id.as_str()).collect();
    let mut next: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for c in components {
        for i in &c.inputs {
            if ids.contains(i.from.as_str()) {
                next.entry(i.from.as_str()).or_default().push(c.id.as_str());
            }
        }
    }
    // 0 = unvisited, 1 = on the current path, 2 = done.
    let mut state: BTreeMap<&str, u8> = BTreeMap::new();
    let mut path: Vec<&str> = Vec::new();
    fn visit<'a>(
        n: &'a str,
        next: &BTreeMap<&'a str, Vec<&'a str>>,
        state: &mut BTreeMap<&'a str, u8>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        state.insert(n, 1);
        path.push(n);
        for &m in next.get(n).map(Vec::as_slice).unwrap_or(&[]) {
            match state.get(m).copied().unwrap_or(0) {
                1 => {
                    let start = path.iter().position(|x| *x == m).unwrap_or(0);
                    let mut cycle: Vec<String> = path[start..].iter().map(|s| s.to_string()).collect();
                    cycle.push(m.to_string());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(m, next, state, path) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        path.pop();
        state.insert(n, 2);
        None
    }
    for id in &ids {
        if state.get(id).copied().unwrap_or(0) == 0
            && let Some(c) = visit(id, &next, &mut state, &mut path)
        {
            return Some(c);
        }
    }
    None
}

/// Components in an order where every component comes after its inputs;
/// ties broken by role (sources first) then id, so the order is stable.
pub fn topo_order(components: &[Component]) -> Vec<&Component> {
    let rank = |c: &Component| match c.role {
        Role::Source => 0,
        Role::Transform => 1,
        Role::Sink => 2,
    };
    let mut pending: Vec<&Component> = components.iter().collect();
    pending.sort_by(|a, b| (rank(a), &a.id).cmp(&(rank(b), &b.id)));
    let mut done: BTreeSet<&str> = BTreeSet::new();
    let mut out = Vec::with_capacity(pending.len());
    while !pending.is_empty() {
        let pos = pending.iter().position(|c| c.inputs.iter().all(|i| done.contains(i.from.as_str()))).unwrap_or(0); // only reachable with a cycle, which validation refuses
        let c = pending.remove(pos);
        done.insert(c.id.as_str());
        out.push(c);
    }
    out
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Ascii,
    Dot,
    Mermaid,
    Json,
}

pub fn render(p: &Pipeline, format: Format) -> String {
    match format {
        Format::Ascii => ascii(p),
        Format::Dot => dot(p),
        Format::Mermaid => mermaid(p),
        Format::Json => format!("{:#}\n", json(p)),
    }
}

/// The DAG as JSON (the API's and the console's): nodes in topological
/// order, edges with the output port they leave by.
pub fn json(p: &Pipeline) -> serde_json::Value {
    let nodes: Vec<serde_json::Value> = topo_order(&p.components)
        .iter()
        .map(|c| serde_json::json!({ "id": c.id, "kind": c.kind.name, "role": role_name(c.role) }))
        .collect();
    let edges: Vec<serde_json::Value> = edges(&p.components)
        .iter()
        .map(|e| serde_json::json!({ "from": e.from, "to": e.to, "port": e.port }))
        .collect();
    serde_json::json!({ "pipeline": p.name, "nodes": nodes, "edges": edges })
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Source => "source",
        Role::Transform => "transform",
        Role::Sink => "sink",
    }
}

fn ascii(p: &Pipeline) -> String {
    let order = topo_order(&p.components);
    let all = edges(&p.components);
    let width = order.iter().map(|c| c.id.len()).max().unwrap_or(0);
    let mut out = format!("pipeline {}\n", p.name);
    for (n, c) in order.iter().enumerate() {
        let last_node = n + 1 == order.len();
        let (branch, stem) = if last_node { ("└─", "  ") } else { ("├─", "│ ") };
        let _ = writeln!(out, "{branch} {:<width$}  {} {}", c.id, c.kind.name, role_name(c.role));
        let outgoing: Vec<&Edge> = all.iter().filter(|e| e.from == c.id).collect();
        for (k, e) in outgoing.iter().enumerate() {
            let arm = if k + 1 == outgoing.len() { "└" } else { "├" };
            let label = if e.port == "out" { String::new() } else { format!("[{}]", e.port) };
            let _ = writeln!(out, "{stem}   {arm}─{label}─▶ {}", e.to);
        }
    }
    out
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

fn quote(s: &str) -> String {
    format!("\"{}\"", escape(s))
}

fn dot(p: &Pipeline) -> String {
    let mut out = format!("digraph {} {{\n  rankdir=LR;\n  node [fontname=\"Helvetica\"];\n", quote(&p.name));
    for c in topo_order(&p.components) {
        let shape = match c.role {
            Role::Source => "invhouse",
            Role::Transform => "box",
            Role::Sink => "house",
        };
        let _ = writeln!(
            out,
            "  {} [label={}, shape={shape}];",
            quote(&c.id),
            // `\n` is DOT's line break inside a label, so it is not escaped.
            format!("\"{}\\n{}\"", escape(&c.id), escape(c.kind.name))
        );
    }
    for e in edges(&p.components) {
        let label = if e.port == "out" { String::new() } else { format!(" [label={}, style=dashed]", quote(&e.port)) };
        let _ = writeln!(out, "  {} -> {}{label};", quote(&e.from), quote(&e.to));
    }
    out.push_str("}\n");
    out
}

/// Mermaid ids must be simple; component ids are mapped to n0, n1, … in
/// topological order and shown as labels.
fn mermaid(p: &Pipeline) -> String {
    let order = topo_order(&p.components);
    let ids: BTreeMap<&str, String> = order.iter().enumerate().map(|(i, c)| (c.id.as_str(), format!("n{i}"))).collect();
    let mut out = String::from("flowchart LR\n");
    for c in &order {
        let label = format!("{}<br/><i>{}</i>", c.id.replace('"', "#quot;"), c.kind.name);
        let (open, close) = match c.role {
            Role::Source => ("[/\"", "\"/]"),
            Role::Transform => ("[\"", "\"]"),
            Role::Sink => ("[(\"", "\")]"),
        };
        let _ = writeln!(out, "  {}{open}{label}{close}", ids[c.id.as_str()]);
    }
    for e in edges(&p.components) {
        let (Some(a), Some(b)) = (ids.get(e.from.as_str()), ids.get(e.to.as_str())) else { continue };
        if e.port == "out" {
            let _ = writeln!(out, "  {a} --> {b}");
        } else {
            let _ = writeln!(out, "  {a} -. {} .-> {b}", e.port);
        }
    }
    out
}
