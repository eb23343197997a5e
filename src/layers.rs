//! Keeps the layout honest: reads every source file's references to `crate::…` and `super::…` and
//! fails on a layer violation or an import cycle, so the shape `lib.rs` describes holds.
//!
//! Rules:
//! - layers, bottom up: `core` < `runtime` < `hop` < the roles (`edge`, `user_hub`, `channel_hub`, `event_hub`);
//!   a module uses only its own layer and those below;
//! - the roles never use each other (they talk through `hop`);
//! - the pure modules (`core`, and `hop::wire`) use nothing of the runtime: no `worker`,
//!   `wasm_bindgen`, `js_sys` or `web_sys`, and no module above `core`;
//! - no cycle between modules (a module and the folder that contains it are one room: a split
//!   `impl` calls back into its parent, which is not a cycle of the design);
//! - a file over 500 lines says in its header (a `//! Why one file:` line) why it stays whole.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const ROLES: [&str; 4] = ["edge", "user_hub", "channel_hub", "event_hub"];
const RUNTIME_CRATES: [&str; 4] = ["worker", "wasm_bindgen", "js_sys", "web_sys"];

/// Every `.rs` file under `src/`, as (module path, text). `lib.rs` is the crate root `""`.
fn sources() -> BTreeMap<String, String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    files
        .into_iter()
        .map(|f| {
            let rel = f.strip_prefix(&src).unwrap().with_extension("");
            let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
            if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
                parts.pop();
            }
            (parts.join("::"), std::fs::read_to_string(&f).unwrap())
        })
        .collect()
}

/// The code of a file without comments and string literals (references in prose do not count).
fn code(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let mut in_str = false;
        let mut prev = ' ';
        let mut kept = String::new();
        for (i, c) in line.char_indices() {
            if !in_str && line[i..].starts_with("//") {
                break;
            }
            if c == '"' && prev != '\\' {
                in_str = !in_str;
            } else if !in_str {
                kept.push(c);
            }
            prev = c;
        }
        out.push_str(&kept);
        out.push('\n');
    }
    out
}

/// Module paths a file refers to: `crate::a::b…`, `super::a…` and `use crate::{a, b::c}` groups,
/// each resolved to the longest prefix that is a module of the crate.
fn references(module: &str, text: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    // A file's unit tests (at its end) may use anything; `super` there is the file itself.
    let text = text.split("#[cfg(test)]\nmod tests").next().unwrap_or(text);
    let code = code(text);
    let parent: Vec<&str> = if module.is_empty() { vec![] } else { module.split("::").collect() };
    let mut paths: Vec<Vec<String>> = Vec::new();
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut rest = code.as_str();
    while let Some(i) = rest.find(['c', 's']) {
        let tail = &rest[i..];
        let boundary = rest[..i].chars().last().is_none_or(|c| !ident(c) && c != ':');
        let (base, after): (Vec<String>, &str) = if boundary && tail.starts_with("crate::") {
            (vec![], &tail[7..])
        } else if boundary && tail.starts_with("super::") {
            // `super` of a file is its folder's module; of a `mod.rs`, the folder above.
            let mut base: Vec<String> = parent.iter().map(|s| s.to_string()).collect();
            let mut after = tail;
            while let Some(t) = after.strip_prefix("super::") {
                base.pop();
                after = t;
            }
            (base, after)
        } else {
            rest = &tail[1..];
            continue;
        };
        if let Some(group) = after.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let mut p = base.clone();
                p.extend(item.trim().split("::").map(|s| s.trim().to_string()).filter(|s| !s.is_empty()));
                paths.push(p);
            }
        } else {
            let end = after.find(|c: char| !(ident(c) || c == ':')).unwrap_or(after.len());
            let mut p = base.clone();
            p.extend(after[..end].split("::").filter(|s| !s.is_empty()).map(str::to_string));
            paths.push(p);
        }
        rest = &tail[1..];
    }
    paths
        .into_iter()
        .filter_map(|mut p| {
            while !p.is_empty() {
                let joined = p.join("::");
                if modules.contains(&joined) {
                    return Some(joined);
                }
                p.pop();
            }
            None
        })
        .filter(|m| m != module && !m.is_empty())
        .collect()
}

fn layer(module: &str) -> Option<usize> {
    match module.split("::").next()? {
        "core" => Some(0),
        "runtime" => Some(1),
        "hop" => Some(2),
        top if ROLES.contains(&top) => Some(3),
        _ => None,
    }
}

fn is_pure(module: &str) -> bool {
    module == "core" || module.starts_with("core::") || module == "hop::wire"
}

fn contains(outer: &str, inner: &str) -> bool {
    inner.starts_with(outer) && inner[outer.len()..].starts_with("::")
}

/// Every rule broken by the sources, as sentences.
fn violations(sources: &BTreeMap<String, String>) -> Vec<String> {
    let modules: BTreeSet<String> = sources.keys().cloned().collect();
    let mut problems = Vec::new();
    let mut graph: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for (module, text) in sources {
        if module.is_empty() || module == "layers" {
            continue;
        }
        let refs = references(module, text, &modules);
        let from = layer(module);
        for target in &refs {
            let to = layer(target);
            let (Some(from), Some(to)) = (from, to) else { continue };
            let (top_from, top_to) = (module.split("::").next(), target.split("::").next());
            if to > from {
                problems.push(format!("{module} (layer {from}) uses {target} (layer {to}), a layer above it"));
            } else if from == 3 && to == 3 && top_from != top_to {
                problems.push(format!("{module} uses {target}: the roles talk only through `hop`"));
            }
            if is_pure(module) && !is_pure(target) {
                problems.push(format!("{module} is pure but uses {target}"));
            }
        }
        if is_pure(module) {
            let code = code(text);
            for krate in RUNTIME_CRATES {
                if code.contains(&format!("{krate}::")) {
                    problems.push(format!("{module} is pure but uses the `{krate}` crate"));
                }
            }
        }
        let lines = text.lines().count();
        if lines > 500 && !text.lines().take_while(|l| l.starts_with("//!")).any(|l| l.contains("Why one file:")) {
            problems.push(format!("{module} has {lines} lines and no `//! Why one file:` in its header"));
        }
        let edges = refs.into_iter().filter(|t| !contains(t, module) && !contains(module, t)).collect();
        graph.insert(module.as_str(), edges);
    }
    if let Some(cycle) = find_cycle(&graph) {
        problems.push(format!("import cycle: {}", cycle.join(" -> ")));
    }
    problems
}

/// A cycle in the graph, if any, as the modules along it (the first repeated at the end).
fn find_cycle(graph: &BTreeMap<&str, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<&str, BTreeSet<String>>,
        done: &mut BTreeSet<String>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, done, stack) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|node| visit(node, graph, &mut done, &mut Vec::new()))
}

#[test]
fn the_layout_has_no_cycle_and_no_layer_violation() {
    let problems = violations(&sources());
    assert!(problems.is_empty(), "the layout is broken:\n- {}", problems.join("\n- "));
}

#[test]
fn the_check_sees_every_kind_of_violation() {
    let file = |m: &str, t: &str| (m.to_string(), t.to_string());
    let broken: BTreeMap<String, String> = [
        file("core", "pub mod a; pub mod b;"),
        file("core::a", "use crate::core::b::X; // crate::runtime::log in a comment does not count"),
        file("core::b", "use super::a::Y; fn f() { worker::Date::now(); }"),
        file("runtime", "pub mod log;"),
        file("runtime::log", "use crate::hop::wire;"),
        file("hop", "pub mod wire;"),
        file("hop::wire", "use crate::{core::a, runtime::log};"),
        file("edge", "use crate::user_hub::UserHub;"),
        file("user_hub", "mod state; use state::Conn;"),
        file("user_hub::state", "use super::UserHub; const S: &str = \"crate::edge\";"),
        file("channel_hub", "fn f() {}\n#[cfg(test)]\nmod tests { use super::*; use crate::edge::X; }"),
    ]
    .into_iter()
    .collect();
    let problems = violations(&broken);
    let has = |needle: &str| problems.iter().any(|p| p.contains(needle));
    assert!(has("import cycle: core::a -> core::b -> core::a"), "{problems:?}");
    assert!(has("core::b is pure but uses the `worker` crate"), "{problems:?}");
    assert!(has("runtime::log (layer 1) uses hop::wire (layer 2)"), "{problems:?}");
    assert!(has("hop::wire is pure but uses runtime::log"), "{problems:?}");
    assert!(has("edge uses user_hub: the roles talk only through `hop`"), "{problems:?}");
    assert!(!has("user_hub::state"), "a split impl calling its parent is no cycle, a string is no use: {problems:?}");
    assert!(!problems.iter().any(|p| p.contains("comment")), "{problems:?}");
    assert_eq!(problems.len(), 5, "{problems:?}");
}
