//! The engine's modules form layers that read top to bottom: a module uses
//! only modules of its own layer or below, and no two modules use each
//! other, directly or through others. README's code map is this table.

use std::collections::{BTreeMap, BTreeSet};

/// Layers from the bottom; `lib` (the orchestrator) is above them all.
const LAYERS: [&[&str]; 5] = [
    &["error", "sys"],
    &["stat", "names", "path", "report", "writers", "seen", "special", "meta", "durable", "copy"],
    &["walk", "tree"],
    &["check", "install", "source"],
    &["node", "dir", "links", "file"],
];

fn layer(module: &str) -> usize {
    LAYERS.iter().position(|l| l.contains(&module)).unwrap_or_else(|| panic!("module {module} is in no layer"))
}

/// The engine modules a source file uses (`super::m` or `crate::m`),
/// comments left out.
fn uses(text: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        for prefix in ["super::", "crate::"] {
            for (i, _) in code.match_indices(prefix) {
                let rest = &code[i + prefix.len()..];
                let mut names: Vec<&str> = Vec::new();
                if let Some(list) = rest.strip_prefix('{') {
                    // `use super::{a, b::C, c};`
                    let list = &list[..list.find('}').unwrap_or(list.len())];
                    names.extend(list.split(',').map(|p| p.trim().split("::").next().unwrap_or("")));
                } else {
                    names.push(rest.split(|c: char| !(c.is_alphanumeric() || c == '_')).next().unwrap_or(""));
                }
                out.extend(names.into_iter().filter(|n| modules.contains(*n)).map(str::to_owned));
            }
        }
    }
    out
}

#[test]
fn engine_modules_import_only_downward_and_never_in_a_loop() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let modules: BTreeSet<String> = std::fs::read_dir(&src)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "rs"))
        .map(|p| p.file_stem().unwrap().to_str().unwrap().to_owned())
        .filter(|m| m != "lib")
        .collect();
    for m in &modules {
        let text = std::fs::read_to_string(src.join(format!("{m}.rs"))).unwrap();
        let mut used = uses(&text, &modules);
        used.remove(m);
        for u in &used {
            assert!(layer(u) <= layer(m), "{m} (layer {}) imports {u} from the higher layer {}", layer(m), layer(u));
        }
        graph.insert(m.clone(), used);
    }
    // No loop: repeatedly remove modules that import nothing left.
    let mut left = graph.clone();
    while !left.is_empty() {
        let free: Vec<String> =
            left.iter().filter(|(_, d)| d.iter().all(|x| !left.contains_key(x))).map(|(m, _)| m.clone()).collect();
        assert!(!free.is_empty(), "import loop among {:?}", left.keys().collect::<Vec<_>>());
        for m in free {
            left.remove(&m);
        }
    }
    // Every module is in the table, and the table names no module that is gone.
    for l in LAYERS {
        for m in l {
            assert!(modules.contains(*m), "the layer table names {m}, which does not exist");
        }
    }
}
