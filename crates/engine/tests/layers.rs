//! The engine's modules form layers that read top to bottom: a module uses
//! only modules of its own layer or below, and no two modules use each
//! other, directly or through others. README's code map is this table.

use std::collections::{BTreeMap, BTreeSet};

/// Layers from the bottom; `lib` (the orchestrator) is above them all.
const LAYERS: [&[&str]; 5] = [
    &["error", "sys", "vars", "virtualisers"],
    &["stat", "names", "path", "report", "logline", "writers", "seen", "special", "meta", "durable", "copy", "pool"],
    &["walk", "tree"],
    &["check", "install", "source"],
    &["node", "dir", "links", "file"],
];

fn layer(module: &str) -> usize {
    LAYERS.iter().position(|l| l.contains(&module)).unwrap_or_else(|| panic!("module {module} is in no layer"))
}

/// The source with comments and string literals blanked out.
fn code_only(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            i += 2;
            while i < b.len() && !b[i..].starts_with(b"*/") {
                i += 1;
            }
            i += 2;
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// The first path segments of a `use` tree body (`a, b::C, c::{d, e}`),
/// nested braces included.
fn heads(tree: &str, out: &mut Vec<String>) {
    let mut depth = 0;
    let mut start = 0;
    let bytes = tree.as_bytes();
    for (i, &c) in bytes.iter().enumerate() {
        match c {
            b'{' => depth += 1,
            b'}' => depth -= 1,
            b',' if depth == 0 => {
                out.push(first_segment(&tree[start..i]));
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(first_segment(&tree[start..]));
}

fn first_segment(item: &str) -> String {
    item.trim().split(|c: char| !(c.is_alphanumeric() || c == '_')).next().unwrap_or("").to_owned()
}

/// The engine modules a source file uses: every `super::m`, `crate::m` and
/// `xrename_engine::m` path, in `use` lists (over several lines, nested)
/// and in expressions.
fn uses(text: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let code = code_only(text);
    let mut names = Vec::new();
    for prefix in ["super::", "crate::", "xrename_engine::"] {
        for (i, _) in code.match_indices(prefix) {
            let rest = code[i + prefix.len()..].trim_start();
            if let Some(list) = rest.strip_prefix('{') {
                let mut depth = 1;
                let end = list
                    .char_indices()
                    .find(|&(_, c)| {
                        depth += match c {
                            '{' => 1,
                            '}' => -1,
                            _ => 0,
                        };
                        depth == 0
                    })
                    .map_or(list.len(), |(j, _)| j);
                heads(&list[..end], &mut names);
            } else {
                names.push(first_segment(rest));
            }
        }
    }
    names.into_iter().filter(|n| modules.contains(n)).collect()
}

#[test]
fn the_import_scanner_sees_multi_line_and_nested_lists() {
    let modules: BTreeSet<String> = ["dir", "file", "report", "stat"].iter().map(|s| s.to_string()).collect();
    let text = "use super::{\n    dir,\n};\nuse super::{report::{self}, file};\n// use super::stat;\nfn f() { crate::stat::x() }";
    let found = uses(text, &modules);
    assert_eq!(found, ["dir", "file", "report", "stat"].iter().map(|s| s.to_string()).collect());
    assert!(uses("let s = \"super::dir\";", &modules).is_empty(), "a string is not an import");
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

/// README's code map: for each layer of its engine table, the modules of
/// its rows (`| 2 facts | `stat.rs` | ... |`, then `| | `names.rs` | ... |`).
fn readme_layers() -> Vec<Vec<String>> {
    let readme = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
    let text = std::fs::read_to_string(readme).unwrap();
    let map = &text[text.find("\n## Code map").expect("README has a code map")..];
    let table = &map[map.find("| layer | module | what |").expect("the layer table")..];
    let mut layers: Vec<Vec<String>> = Vec::new();
    for row in table.lines().skip(2).take_while(|l| l.starts_with('|')) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let (layer, module) = (cells[1], cells[2]);
        assert!(
            module.starts_with('`') && module.ends_with(".rs`") && module.matches('`').count() == 2,
            "one module a line in README's layer table: {row}"
        );
        if !layer.is_empty() {
            layers.push(Vec::new());
        }
        layers
            .last_mut()
            .expect("a row with its layer first")
            .push(module.trim_matches('`').trim_end_matches(".rs").to_owned());
    }
    layers
}

#[test]
fn readme_layer_table_is_this_table() {
    let mut readme = readme_layers();
    assert_eq!(readme.pop(), Some(vec!["lib".to_owned()]), "the orchestrator is README's last layer");
    let ours: Vec<Vec<String>> = LAYERS.iter().map(|l| l.iter().map(|m| m.to_string()).collect()).collect();
    let sorted = |v: Vec<Vec<String>>| -> Vec<Vec<String>> {
        v.into_iter()
            .map(|mut l| {
                l.sort();
                l
            })
            .collect()
    };
    assert_eq!(sorted(readme), sorted(ours), "README's layer table and LAYERS differ");
}
