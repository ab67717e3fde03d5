//! The module graph of `enforcer-agent/src`: which top-level module (`model`, `compile`, ...,
//! `lab` as one node, the binary's `main.rs` as `main`) uses which, from the `crate::<module>`
//! paths of production code (`use` items and paths alike; comments, strings and `#[cfg(test)]`
//! items, `tests` modules included, left out). `cargo xtask test` and `cargo xtask lint` fail
//! when an edge is not in [`ALLOWED`] or the graph has a cycle; `cargo xtask modgraph` prints
//! the edges. docs/design.md section 3 explains the direction.
//!
//! The modules are found as rustc finds them: from `lib.rs` (and `main.rs`) through the
//! `mod` items, so a file no `mod` item names is not read.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

mod lex;
mod scan;

use scan::scan;

/// Which module may use which (lowest first). `*`: any module but `main`. A module of the
/// crate missing here, or a name here that is no module, is an error: a new module states
/// its place.
pub const ALLOWED: &[(&str, &[&str])] = &[
    ("model", &[]),
    ("netns", &[]),
    ("source", &["model"]),
    ("compile", &["model"]),
    ("dataplane", &["model", "compile"]),
    ("flows", &["model", "compile"]),
    ("alerts", &["model", "compile", "flows"]),
    ("metrics", &["model", "compile", "flows"]),
    ("explain", &["model", "compile"]),
    (
        "agent",
        &[
            "model",
            "source",
            "compile",
            "dataplane",
            "flows",
            "alerts",
            "metrics",
            "netns",
        ],
    ),
];
// The lab (`enforcer-lab`) and the binary (`enforcer/`) are crates of their own on top of
// this library, which cannot use them.

/// The node of the binary crate.
const MAIN: &str = "main";

/// One use of a module by another: where it is written.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Site {
    pub file: PathBuf,
    pub line: usize,
}

/// The edges between top-level modules, each with the first place that makes it.
#[derive(Debug, Default)]
pub struct Graph {
    /// The modules `lib.rs` declares, and `main` when there is a `main.rs`.
    pub modules: BTreeSet<String>,
    pub edges: BTreeMap<(String, String), Site>,
}

impl Graph {
    /// The modules `from` uses.
    pub fn uses(&self, from: &str) -> Vec<&str> {
        self.edges
            .keys()
            .filter(|(f, _)| f == from)
            .map(|(_, t)| t.as_str())
            .collect()
    }
}

/// May `from` use `to`?
pub fn allowed(table: &[(&str, &[&str])], from: &str, to: &str) -> bool {
    table
        .iter()
        .any(|(m, uses)| *m == from && uses.iter().any(|u| *u == to || (*u == "*" && to != MAIN)))
}

/// The graph of the crate whose `lib.rs` (and `main.rs`) are in `src`, reading files with
/// `read` (so that tests can hand it files that exist nowhere).
pub fn graph(src: &Path, read: &dyn Fn(&Path) -> Option<String>) -> Result<Graph, String> {
    let mut g = Graph::default();
    // (file, module path below the crate root, node, the name of the crate in paths)
    let mut queue: Vec<(PathBuf, Vec<String>, Option<String>, &str)> =
        vec![(src.join("lib.rs"), Vec::new(), None, "crate")];
    if read(&src.join("main.rs")).is_some() {
        g.modules.insert(MAIN.into());
        queue.push((
            src.join("main.rs"),
            Vec::new(),
            Some(MAIN.into()),
            "enforcer_agent",
        ));
    }
    let mut seen = BTreeSet::new();
    let mut found = Vec::new();
    while let Some((file, path, node, root)) = queue.pop() {
        if !seen.insert(file.clone()) {
            continue;
        }
        let text = read(&file).ok_or_else(|| format!("cannot read {}", file.display()))?;
        let depth = if node.as_deref() == Some(MAIN) {
            usize::MAX
        } else {
            path.len()
        };
        let s = scan(&text, root, depth);
        let dir = file.parent().unwrap_or(Path::new("")).to_path_buf();
        let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        let children_dir = if matches!(stem, "lib" | "main" | "mod") {
            dir.clone()
        } else {
            dir.join(stem)
        };
        for (name, at, within) in s.children {
            let base = within.iter().fold(children_dir.clone(), |d, m| d.join(m));
            let candidates = match &at {
                Some(p) if within.is_empty() => vec![dir.join(p)],
                Some(p) => vec![base.join(p)],
                None => vec![
                    base.join(format!("{name}.rs")),
                    base.join(&name).join("mod.rs"),
                ],
            };
            let child = candidates
                .iter()
                .find(|c| read(c).is_some())
                .ok_or_else(|| {
                    format!(
                        "{}: `mod {name};` but neither {} exists",
                        file.display(),
                        candidates
                            .iter()
                            .map(|c| c.display().to_string())
                            .collect::<Vec<_>>()
                            .join(" nor ")
                    )
                })?
                .clone();
            let mut child_path = path.clone();
            child_path.extend(within);
            child_path.push(name.clone());
            let child_node = match &node {
                Some(n) => n.clone(),
                None => {
                    g.modules.insert(child_path[0].clone());
                    child_path[0].clone()
                }
            };
            queue.push((child, child_path, Some(child_node), root));
        }
        if let Some(from) = node {
            for (to, line) in s.refs {
                found.push((from.clone(), to, file.clone(), line));
            }
        }
    }
    for (from, to, file, line) in found {
        if from != to && g.modules.contains(&to) && to != MAIN {
            let site = Site {
                file: file.strip_prefix(src).unwrap_or(&file).to_path_buf(),
                line,
            };
            // The first use in file order, whatever order the files were read in.
            let first = g.edges.entry((from, to)).or_insert_with(|| site.clone());
            if site < *first {
                *first = site;
            }
        }
    }
    Ok(g)
}

/// The cycles of the graph, each as the modules along it (the first repeated at the end).
pub fn cycles(g: &Graph) -> Vec<Vec<String>> {
    fn visit(
        g: &Graph,
        m: &str,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        out: &mut Vec<Vec<String>>,
    ) {
        if let Some(at) = stack.iter().position(|s| s == m) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(m.to_owned());
            out.push(cycle);
            return;
        }
        if done.contains(m) {
            return;
        }
        stack.push(m.to_owned());
        for next in g.uses(m) {
            visit(g, next, stack, done, out);
        }
        stack.pop();
        done.insert(m.to_owned());
    }
    let mut out = Vec::new();
    let mut done = BTreeSet::new();
    for m in &g.modules {
        visit(g, m, &mut Vec::new(), &mut done, &mut out);
    }
    out
}

/// Everything wrong with the graph under `table`, one line each.
pub fn problems(g: &Graph, table: &[(&str, &[&str])]) -> Vec<String> {
    let mut out = Vec::new();
    for m in &g.modules {
        if !table.iter().any(|(t, _)| t == m) {
            out.push(format!(
                "module `{m}` is not in the table of xtask/src/modgraph/mod.rs (ALLOWED): say which modules it may use"
            ));
        }
    }
    for (t, _) in table {
        if !g.modules.contains(*t) {
            out.push(format!(
                "the table of xtask/src/modgraph/mod.rs names `{t}`, which is no module of the crate: remove it"
            ));
        }
    }
    for ((from, to), site) in &g.edges {
        if !allowed(table, from, to) {
            out.push(format!(
                "`{from}` uses `{to}` ({}:{}), against the direction of xtask/src/modgraph/mod.rs (ALLOWED; docs/design.md section 3)",
                site.file.display(),
                site.line
            ));
        }
    }
    for c in cycles(g) {
        let sites: Vec<String> = c
            .windows(2)
            .map(|w| {
                let s = &g.edges[&(w[0].clone(), w[1].clone())];
                format!("{} -> {} at {}:{}", w[0], w[1], s.file.display(), s.line)
            })
            .collect();
        out.push(format!("cycle {}: {}", c.join(" -> "), sites.join(", ")));
    }
    out
}

fn read_file(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok()
}

/// The graph of the agent's crate in the workspace `ws`.
pub fn agent_graph(ws: &Path) -> Result<Graph, String> {
    graph(&ws.join("enforcer-agent/src"), &read_file)
}

/// The check: fails listing every edge against the table and every cycle.
pub fn check(ws: &Path) -> anyhow::Result<()> {
    let g = agent_graph(ws).map_err(anyhow::Error::msg)?;
    let p = problems(&g, ALLOWED);
    if p.is_empty() {
        eprintln!(
            "module graph of enforcer-agent/src: {} modules, {} edges, every edge allowed, no cycle",
            g.modules.len(),
            g.edges.len()
        );
        return Ok(());
    }
    anyhow::bail!(
        "the module graph of enforcer-agent/src:\n  {}",
        p.join("\n  ")
    )
}

/// The edges, as a table: each module and the modules it uses, with where the first use of
/// each is.
pub fn print(ws: &Path) -> anyhow::Result<()> {
    let g = agent_graph(ws).map_err(anyhow::Error::msg)?;
    for m in &g.modules {
        let uses: Vec<String> = g
            .uses(m)
            .iter()
            .map(|u| {
                let s = &g.edges[&(m.clone(), (*u).to_owned())];
                format!("{u} ({}:{})", s.file.display(), s.line)
            })
            .collect();
        println!(
            "{m}: {}",
            if uses.is_empty() {
                "-".to_owned()
            } else {
                uses.join(", ")
            }
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(list: &[(&str, &str)]) -> impl Fn(&Path) -> Option<String> {
        let map: BTreeMap<PathBuf, String> = list
            .iter()
            .map(|(p, s)| (Path::new("src").join(p), s.to_string()))
            .collect();
        move |p: &Path| map.get(p).cloned()
    }

    fn edges(g: &Graph) -> Vec<String> {
        g.edges.keys().map(|(f, t)| format!("{f}->{t}")).collect()
    }

    const TABLE: &[(&str, &[&str])] = &[("a", &[]), ("b", &["a"]), ("c", &["a", "b"])];

    #[test]
    fn a_clean_graph_passes() {
        let read = files(&[
            ("lib.rs", "pub mod a;\npub mod b;\nmod c;"),
            ("a.rs", "pub struct A;"),
            ("b/mod.rs", "mod inner;\nuse crate::a::A;"),
            (
                "b/inner.rs",
                "pub fn f() -> super::super::a::A { crate::a::A }",
            ),
            ("c.rs", "use crate::{a::A, b};"),
        ]);
        let g = graph(Path::new("src"), &read).unwrap();
        assert_eq!(edges(&g), ["b->a", "c->a", "c->b"]);
        let site = |f: &str, t: &str| g.edges[&(f.to_owned(), t.to_owned())].clone();
        assert_eq!(
            site("b", "a").file,
            Path::new("b/inner.rs"),
            "the first in file order"
        );
        assert_eq!(
            (site("c", "b").file, site("c", "b").line),
            ("c.rs".into(), 1)
        );
        assert!(problems(&g, TABLE).is_empty(), "{:?}", problems(&g, TABLE));
    }

    #[test]
    fn a_cycle_is_found_with_where_each_edge_is() {
        let read = files(&[
            ("lib.rs", "pub mod a;\npub mod b;\npub mod c;"),
            ("a.rs", "fn f() {\n    crate::c::g();\n}"),
            ("b.rs", "use crate::a;"),
            ("c.rs", "use crate::b::X;"),
        ]);
        let g = graph(Path::new("src"), &read).unwrap();
        let c = cycles(&g);
        assert_eq!(c.len(), 1, "{c:?}");
        let mut nodes = c[0].clone();
        nodes.pop();
        nodes.sort();
        assert_eq!(nodes, ["a", "b", "c"]);
        let p = problems(&g, TABLE);
        assert!(
            p.iter().any(|l| l.starts_with("`a` uses `c` (a.rs:2)")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|l| l.starts_with("cycle ") && l.contains("a -> c at a.rs:2")),
            "{p:?}"
        );
    }

    #[test]
    fn test_code_comments_and_strings_are_not_uses() {
        let read = files(&[
            ("lib.rs", "pub mod a;\npub mod b;"),
            (
                "a.rs",
                r##"
//! See [`crate::b`].
/* crate::b::X, /* nested */ crate::b */
const S: &str = "crate::b::X";
const R: &str = r#"crate::b"#;
fn f<'a>(x: &'a str) -> char { let _ = b'"'; '"' }
#[cfg(test)]
use crate::b::Y;
#[cfg(test)]
mod tests {
    use crate::b::Z;
}
#[cfg(test)]
#[path = "a_tests.rs"]
mod more_tests;
"##,
            ),
            ("b.rs", "use crate::a;"),
        ]);
        let g = graph(Path::new("src"), &read).unwrap();
        assert_eq!(edges(&g), ["b->a"]);
    }

    #[test]
    fn the_binary_is_a_node_and_path_attributes_are_followed() {
        let read = files(&[
            ("lib.rs", "pub mod a;\npub mod b;"),
            ("a.rs", "#[path = \"a_impl.rs\"]\nmod imp;"),
            ("a_impl.rs", "use crate::b::B;"),
            ("b.rs", "pub struct B;"),
            (
                "main.rs",
                "use enforcer_agent::a;\n#[arg(default_value = enforcer_agent::b::B)]\nstruct X;",
            ),
        ]);
        let g = graph(Path::new("src"), &read).unwrap();
        assert_eq!(edges(&g), ["a->b", "main->a", "main->b"]);
        let table: &[(&str, &[&str])] = &[("a", &[]), ("b", &[]), ("main", &["*"])];
        let p = problems(&g, table);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("`a` uses `b` (a_impl.rs:1)"), "{p:?}");
    }

    #[test]
    fn modules_missing_from_the_table_and_names_that_are_no_module_fail() {
        let read = files(&[
            ("lib.rs", "pub mod a;\npub mod new;"),
            ("a.rs", ""),
            ("new.rs", ""),
        ]);
        let g = graph(Path::new("src"), &read).unwrap();
        let p = problems(&g, &[("a", &[]), ("gone", &[])]);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].contains("`new` is not in the table"));
        assert!(p[1].contains("names `gone`"));
        // A `mod` without its file is an error, not a smaller graph.
        let read = files(&[("lib.rs", "pub mod a;")]);
        assert!(graph(Path::new("src"), &read)
            .unwrap_err()
            .contains("mod a;"));
    }

    #[test]
    fn the_table_itself_has_no_cycle() {
        let mut g = Graph::default();
        for (m, _) in ALLOWED {
            g.modules.insert((*m).to_owned());
        }
        for (from, _) in ALLOWED {
            for (to, _) in ALLOWED {
                if from != to && allowed(ALLOWED, from, to) {
                    let site = Site {
                        file: PathBuf::new(),
                        line: 0,
                    };
                    g.edges.insert(((*from).into(), (*to).into()), site);
                }
            }
        }
        assert_eq!(cycles(&g), Vec::<Vec<String>>::new());
    }

    #[test]
    fn the_agent_crate_keeps_the_direction() {
        let ws = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let g = agent_graph(ws).unwrap();
        assert_eq!(problems(&g, ALLOWED), Vec::<String>::new());
        assert!(g.modules.contains("flows") && g.edges.len() > 10);
    }
}
