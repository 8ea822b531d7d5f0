//! `cargo xtask layers`: the agent's modules depend on each other one way. Reads
//! monitor-user's sources with syn, builds the graph of `crate::` references between its
//! top-level modules (tests left out), and fails on any cycle, naming it; on a reference that
//! goes up [`LAYERS`]; and when a module other than the kernel layer (`bpf`) names aya's
//! `Ebpf` object: features ask the kernel layer, they never hold the object.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use syn::visit::Visit;

/// The module that owns the kernel object.
const KERNEL_LAYER: &str = "bpf";

/// monitor-user's top-level modules, from the entry points down. A module may use modules
/// of its own layer (without a cycle) or of any layer below, never one above.
const LAYERS: &[(&str, &[&str])] = &[
    ("entry points", &["agent", "cli", "floor", "report", "top"]),
    ("http", &["http", "client"]),
    ("metrics", &["metrics"]),
    ("features", &["tasks", "threads", "investigate", "wire"]),
    ("core model", &["model", "prom"]),
    ("host access and the kernel layer", &["host", "bpf"]),
    ("shared helpers", &["error", "shutdown"]),
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, ms)| ms.contains(&module))
}

pub fn run() -> Result<()> {
    let src = crate::util::workspace_root().join("monitor-user/src");
    let graph = Graph::read(&src)?;
    let mut problems = Vec::new();
    for cycle in graph.cycles() {
        problems.push(format!("import cycle: {}", cycle.join(" -> ")));
    }
    problems.extend(graph.upward());
    for (module, file) in &graph.ebpf_holders {
        problems.push(format!(
            "{} names aya's Ebpf object: only `{KERNEL_LAYER}` may hold it (module {module})",
            file.display()
        ));
    }
    if !problems.is_empty() {
        bail!(
            "monitor-user's layering is broken:\n  {}",
            problems.join("\n  ")
        );
    }
    eprintln!(
        "xtask layers: {} top-level modules of monitor-user in {} layers, used only downwards and without a cycle; only `{KERNEL_LAYER}` holds the Ebpf object",
        graph.modules.len(),
        LAYERS.len()
    );
    Ok(())
}

#[derive(Default)]
pub struct Graph {
    modules: BTreeSet<String>,
    edges: BTreeMap<String, BTreeSet<String>>,
    ebpf_holders: Vec<(String, PathBuf)>,
}

impl Graph {
    pub fn read(src: &Path) -> Result<Self> {
        let mut files = Vec::new();
        collect_files(src, &mut files)?;
        let mut graph = Graph::default();
        for f in &files {
            if let Some(m) = top_module(src, f) {
                graph.modules.insert(m);
            }
        }
        for f in &files {
            let Some(module) = top_module(src, f) else {
                continue;
            };
            let text =
                std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            let file =
                syn::parse_file(&text).with_context(|| format!("parsing {}", f.display()))?;
            let mut refs = Refs::default();
            refs.visit_file(&file);
            let targets = graph.edges.entry(module.clone()).or_default();
            for r in refs.crate_modules {
                if r != module && graph.modules.contains(&r) {
                    targets.insert(r);
                }
            }
            if refs.names_ebpf && module != KERNEL_LAYER {
                graph.ebpf_holders.push((module, f.clone()));
            }
        }
        Ok(graph)
    }

    /// References that go up the layers, and modules no layer names.
    pub fn upward(&self) -> Vec<String> {
        let mut out = Vec::new();
        for m in &self.modules {
            if layer_of(m).is_none() {
                out.push(format!(
                    "module `{m}` is in no layer: add it to LAYERS in xtask/src/layers.rs"
                ));
            }
        }
        for (from, targets) in &self.edges {
            for to in targets {
                if let (Some(a), Some(b)) = (layer_of(from), layer_of(to))
                    && b < a
                {
                    out.push(format!(
                        "`{from}` ({}) uses `{to}` ({}), a layer above it",
                        LAYERS[a].0, LAYERS[b].0
                    ));
                }
            }
        }
        out
    }

    /// Each set of modules that reach one another, as a path that closes on itself.
    pub fn cycles(&self) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        for component in self.strongly_connected() {
            if component.len() < 2 {
                continue;
            }
            out.push(self.closing_path(&component));
        }
        out
    }

    fn strongly_connected(&self) -> Vec<Vec<String>> {
        // Tarjan's algorithm; the graph has a few dozen nodes.
        struct State<'g> {
            graph: &'g Graph,
            index: BTreeMap<&'g str, usize>,
            low: BTreeMap<&'g str, usize>,
            stack: Vec<&'g str>,
            on_stack: BTreeSet<&'g str>,
            out: Vec<Vec<String>>,
        }
        fn visit<'g>(s: &mut State<'g>, v: &'g str) {
            let n = s.index.len();
            s.index.insert(v, n);
            s.low.insert(v, n);
            s.stack.push(v);
            s.on_stack.insert(v);
            for w in s.graph.edges.get(v).into_iter().flatten() {
                let w = w.as_str();
                if !s.index.contains_key(w) {
                    visit(s, w);
                    let lw = s.low[w];
                    let lv = s.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(lw);
                } else if s.on_stack.contains(w) {
                    let iw = s.index[w];
                    let lv = s.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(iw);
                }
            }
            if s.low[v] == s.index[v] {
                let mut component = Vec::new();
                while let Some(w) = s.stack.pop() {
                    s.on_stack.remove(w);
                    component.push(w.to_string());
                    if w == v {
                        break;
                    }
                }
                component.sort();
                s.out.push(component);
            }
        }
        let mut s = State {
            graph: self,
            index: BTreeMap::new(),
            low: BTreeMap::new(),
            stack: Vec::new(),
            on_stack: BTreeSet::new(),
            out: Vec::new(),
        };
        for m in &self.modules {
            if !s.index.contains_key(m.as_str()) {
                visit(&mut s, m);
            }
        }
        s.out
    }

    /// A shortest path from the component's first module back to itself, for the message.
    fn closing_path(&self, component: &[String]) -> Vec<String> {
        let inside: BTreeSet<&str> = component.iter().map(String::as_str).collect();
        let start = component[0].as_str();
        let mut prev: BTreeMap<&str, &str> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([start]);
        while let Some(v) = queue.pop_front() {
            for w in self.edges.get(v).into_iter().flatten() {
                let w = w.as_str();
                if w == start {
                    // v, its predecessors back to start, then reversed: start … v, start.
                    let mut path = vec![v.to_string()];
                    let mut at = v;
                    while at != start {
                        at = prev[at];
                        path.push(at.to_string());
                    }
                    path.reverse();
                    path.push(start.to_string());
                    return path;
                }
                if inside.contains(w) && !prev.contains_key(w) {
                    prev.insert(w, v);
                    queue.push_back(w);
                }
            }
        }
        component.to_vec()
    }
}

/// `src/foo.rs` and `src/foo/…` are module `foo`; lib.rs and main.rs are the crate roots.
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main")).then(|| name.to_string())
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// What one file refers to: the crate's top-level modules, and whether it names `Ebpf`.
#[derive(Default)]
struct Refs {
    crate_modules: BTreeSet<String>,
    names_ebpf: bool,
}

fn is_test_only(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && a.parse_args::<syn::Meta>()
                .is_ok_and(|m| m.path().is_ident("test"))
    })
}

impl<'ast> Visit<'ast> for Refs {
    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        if !is_test_only(&m.attrs) {
            syn::visit::visit_item_mod(self, m);
        }
    }

    fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
        if !is_test_only(&f.attrs) {
            syn::visit::visit_item_fn(self, f);
        }
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        let mut segments = p.segments.iter();
        if let (Some(first), Some(second)) = (segments.next(), segments.next())
            && first.ident == "crate"
        {
            self.crate_modules.insert(second.ident.to_string());
        }
        if p.segments.iter().any(|s| s.ident == "Ebpf") {
            self.names_ebpf = true;
        }
        syn::visit::visit_path(self, p);
    }

    fn visit_use_tree(&mut self, tree: &'ast syn::UseTree) {
        if let syn::UseTree::Path(p) = tree
            && p.ident == "crate"
        {
            let mut tops = Vec::new();
            first_names(&p.tree, &mut tops);
            self.crate_modules.extend(tops);
        }
        let mut leaves = Vec::new();
        leaf_names(tree, &mut leaves);
        if leaves.iter().any(|l| l == "Ebpf") {
            self.names_ebpf = true;
        }
    }
}

/// The first segment of each path under a `use crate::…` tree.
fn first_names(tree: &syn::UseTree, out: &mut Vec<String>) {
    match tree {
        syn::UseTree::Path(p) => out.push(p.ident.to_string()),
        syn::UseTree::Name(n) => out.push(n.ident.to_string()),
        syn::UseTree::Rename(r) => out.push(r.ident.to_string()),
        syn::UseTree::Group(g) => g.items.iter().for_each(|t| first_names(t, out)),
        syn::UseTree::Glob(_) => {}
    }
}

fn leaf_names(tree: &syn::UseTree, out: &mut Vec<String>) {
    match tree {
        syn::UseTree::Path(p) => leaf_names(&p.tree, out),
        syn::UseTree::Name(n) => out.push(n.ident.to_string()),
        syn::UseTree::Rename(r) => out.push(r.ident.to_string()),
        syn::UseTree::Group(g) => g.items.iter().for_each(|t| leaf_names(t, out)),
        syn::UseTree::Glob(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[(&str, &str)]) -> tempdir::Dir {
        let dir = tempdir::Dir::new();
        for (name, text) in files {
            let path = dir.0.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        dir
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Self {
                static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let p =
                    std::env::temp_dir().join(format!("xtask-layers-{}-{n}", std::process::id()));
                let _ = std::fs::remove_dir_all(&p);
                std::fs::create_dir_all(&p).unwrap();
                Self(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn a_cycle_through_a_use_group_is_found_and_named() {
        let dir = tree(&[
            ("lib.rs", "pub mod a; pub mod b; pub mod c;"),
            ("a.rs", "use crate::{b::Thing, c};"),
            ("b/mod.rs", "pub struct Thing; fn f() { crate::c::g(); }"),
            ("c.rs", "pub fn g() {} fn h() { let _ = crate::a::X; }"),
        ]);
        let g = Graph::read(&dir.0).unwrap();
        let cycles = g.cycles();
        assert_eq!(cycles.len(), 1, "{cycles:?}");
        let c = &cycles[0];
        assert_eq!(c.first(), c.last());
        assert!(c.contains(&"c".to_string()) && c.contains(&"a".to_string()));
    }

    #[test]
    fn references_from_tests_do_not_count_and_a_dag_passes() {
        let dir = tree(&[
            (
                "a.rs",
                "use crate::b; #[cfg(test)] mod tests { use crate::c; }",
            ),
            ("b.rs", "pub fn f() { crate::c::g() }"),
            (
                "c.rs",
                "pub fn g() {} #[cfg(test)] fn t() { crate::a::x(); }",
            ),
        ]);
        let g = Graph::read(&dir.0).unwrap();
        assert!(g.cycles().is_empty());
        assert!(g.ebpf_holders.is_empty());
    }

    #[test]
    fn a_reference_up_the_layers_is_named() {
        let dir = tree(&[
            ("bpf/mod.rs", "fn f() { crate::tasks::g(); }"),
            ("tasks/mod.rs", "pub fn g() {}"),
            ("mystery.rs", ""),
        ]);
        let g = Graph::read(&dir.0).unwrap();
        let up = g.upward();
        assert!(
            up.iter()
                .any(|p| p.contains("`bpf`") && p.contains("`tasks`")),
            "{up:?}"
        );
        assert!(
            up.iter().any(|p| p.contains("`mystery` is in no layer")),
            "{up:?}"
        );
    }

    #[test]
    fn only_the_kernel_layer_may_name_the_object() {
        let dir = tree(&[
            ("bpf/mod.rs", "use aya::Ebpf; pub struct Kernel(Ebpf);"),
            ("feature.rs", "fn f(e: &mut aya::Ebpf) {}"),
        ]);
        let g = Graph::read(&dir.0).unwrap();
        assert_eq!(g.ebpf_holders.len(), 1);
        assert_eq!(g.ebpf_holders[0].0, "feature");
    }
}
