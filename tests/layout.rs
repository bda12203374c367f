//! The architecture holds: the modules of `src/` depend on each other without a cycle (a
//! module may only use the ones below it in the README's Layout table). Cycles are allowed only
//! inside `src/write/`, where the outage mode is a mode of the write path.
//!
//! The graph is read from the source: every `crate::<module>` path in a top-level module's
//! files (outside unit-test modules) is an edge from that module to `<module>`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Top-level module -> the top-level modules its files name through `crate::`.
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(&src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = first.trim_end_matches(".rs").to_string();
        if module == "lib" || module == "main" || module == "cli" {
            continue; // the crate root and the binary sit on top of everything
        }
        let text = std::fs::read_to_string(&file).unwrap();
        // Unit-test modules (at the bottom of a file) may use anything, e.g. `tempdb`.
        let text = match text
            .find("#[cfg(test)]")
            .or_else(|| text.find("#[cfg(all(test"))
        {
            Some(i) => &text[..i],
            None => &text[..],
        };
        let deps = graph.entry(module.clone()).or_default();
        for (i, _) in text.match_indices("crate::") {
            let rest = &text[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty()
                && name != module
                && name.chars().next().is_some_and(char::is_lowercase)
            {
                deps.insert(name);
            }
        }
        // `use crate::{a, b::c}` groups.
        for (i, _) in text.match_indices("use crate::{") {
            let rest = &text[i + "use crate::{".len()..];
            let group = &rest[..rest.find("};").unwrap_or(rest.len())];
            for part in group.split(',') {
                let name = part
                    .trim()
                    .split("::")
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_string();
                if !name.is_empty()
                    && name != module
                    && name.chars().next().is_some_and(char::is_lowercase)
                {
                    deps.insert(name);
                }
            }
        }
    }
    graph
}

fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(pos) = stack.iter().position(|s| s == n) {
            let mut cycle = stack[pos..].to_vec();
            cycle.push(n.to_string());
            return Some(cycle);
        }
        if done.contains(n) {
            return None;
        }
        stack.push(n.to_string());
        for d in graph.get(n).into_iter().flatten() {
            if let Some(c) = visit(d, graph, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for n in graph.keys() {
        if let Some(c) = visit(n, graph, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

#[test]
fn the_module_graph_of_src_has_no_cycle() {
    let graph = module_graph();
    for (m, deps) in &graph {
        eprintln!(
            "{m} -> {}",
            deps.iter().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    assert!(
        graph.contains_key("write") && graph.contains_key("db"),
        "{graph:?}"
    );
    assert_eq!(
        find_cycle(&graph),
        None,
        "an import cycle between modules of src/"
    );
}

#[test]
fn the_database_layer_and_the_leaves_depend_on_nothing_above_them() {
    let graph = module_graph();
    let above = ["write", "health", "session", "store", "ops", "tempdb"];
    for low in [
        "db", "cache", "metrics", "company", "lease", "codec", "value", "validate", "config",
        "error",
    ] {
        let deps = graph.get(low).cloned().unwrap_or_default();
        for a in above {
            assert!(!deps.contains(a), "{low} depends on {a}: {deps:?}");
        }
    }
}

#[test]
fn the_cycle_check_can_fail() {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("a".into());
    assert_eq!(
        find_cycle(&g),
        Some(vec!["a".into(), "b".into(), "a".into()])
    );
}
