//! The shape of `src/`, as a newcomer relies on it: imports between the
//! proxy library's top-level modules run one way (no cycle), and the leaves
//! that parse and compare — config, path, router, diff — know nothing of
//! sockets. Read from the sources, so a new arrow that breaks the shape
//! fails here with the modules it joins.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::support::repo_root;

/// Modules that open, accept or drive connections.
const SOCKET_AWARE: &[&str] = &["admin", "client", "health", "proxy", "reload", "server", "shadow", "tls", "upstream"];
/// Leaves that must stay free of them (pure parsing and comparison).
const PURE_LEAVES: &[&str] = &["clock", "config", "path", "router", "split", "headers", "wire"];

/// Each top-level module of `src/` and the top-level modules it names.
fn module_imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = repo_root().join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut files = Vec::new();
    collect_rs(&src, &mut files);
    for file in files {
        let relative = file.strip_prefix(&src).unwrap();
        let top = relative.iter().next().unwrap().to_string_lossy().trim_end_matches(".rs").to_string();
        if top == "lib" || top == "main" {
            continue;
        }
        let code = without_tests_and_comments(&std::fs::read_to_string(&file).unwrap());
        let names = graph.entry(top.clone()).or_default();
        names.extend(crate_paths(&code).into_iter().filter(|m| *m != top));
    }
    let known: BTreeSet<String> = graph.keys().cloned().collect();
    for names in graph.values_mut() {
        names.retain(|m| known.contains(m));
    }
    graph
}

fn collect_rs(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect_rs(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code without `//` comments and without `#[cfg(test)]` modules
/// (tests may reach anywhere).
fn without_tests_and_comments(text: &str) -> String {
    let code: String = text.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n");
    match code.find("#[cfg(test)]\nmod tests") {
        Some(at) => code[..at].to_string(),
        None => code,
    }
}

/// Top-level module names after `crate::`, including those in `use crate::{a, b::c}`.
fn crate_paths(code: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let ident = |s: &str| s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            names.extend(group.split(',').map(|part| ident(part.trim())).filter(|n| !n.is_empty()));
        } else {
            names.insert(ident(rest));
        }
    }
    names
}

/// A cycle in `graph`, if there is one, as the modules along it.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_library_modules_import_each_other_one_way_only() {
    let graph = module_imports();
    assert!(graph.len() > 10, "found too few modules: {graph:?}");
    if let Some(cycle) = find_cycle(&graph) {
        panic!("import cycle: {}", cycle.join(" -> "));
    }
}

#[test]
fn the_parsing_and_comparing_leaves_know_nothing_of_sockets() {
    let graph = module_imports();
    for leaf in PURE_LEAVES {
        let imports = graph.get(*leaf).unwrap_or_else(|| panic!("no module {leaf}"));
        let bad: Vec<_> = imports.iter().filter(|m| SOCKET_AWARE.contains(&m.as_str())).collect();
        assert!(bad.is_empty(), "{leaf} imports {bad:?}");
    }
}

#[test]
fn the_cycle_finder_finds_a_cycle() {
    let mut graph = BTreeMap::new();
    graph.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    graph.insert("b".to_string(), BTreeSet::from(["c".to_string()]));
    graph.insert("c".to_string(), BTreeSet::from(["a".to_string()]));
    assert_eq!(find_cycle(&graph).unwrap(), ["a", "b", "c", "a"]);
    graph.get_mut("c").unwrap().clear();
    assert_eq!(find_cycle(&graph), None);
}

#[test]
fn the_evidence_crate_depends_on_nothing_that_does_networking() {
    let manifest = std::fs::read_to_string(repo_root().join("crates/evidence/Cargo.toml")).unwrap();
    let dependencies = manifest.split("[dependencies]").nth(1).unwrap_or("");
    let dependencies = dependencies.split("\n[").next().unwrap_or("");
    for networking in ["tokio", "hyper", "socket2", "rustls", "strangler ="] {
        assert!(!dependencies.contains(networking), "crates/evidence depends on {networking}");
    }
}
