//! The workspace's structural invariants (ARCHITECTURE.md, "Invariants"), checked on the
//! sources and on `cargo metadata`: the crate graph points down, every module says what it
//! is for, library code logs through `tracing`, no source file outgrows review, there is one
//! lock helper, and the declared `rust-version` is true.

use ferry_tidy::{code_lines_with, root, shown, source_files, version};
use serde_json::Value;
use std::collections::BTreeMap;
use std::process::Command;

/// Each crate's layer: a crate may depend (normally, or to build) only on crates of a lower
/// layer. Base crates (0) know no other ferry crate; the wire, the store and the scheduler
/// (1) sit on the base; the per-process runtime and the daemon (2) on those, and neither on
/// the other; the facade and the dashboard (3) wire them together, beside the test kit (which
/// needs nothing of ours); tools (4: the CLI, the benchmarks) may use anything.
const LAYERS: &[(&str, u8)] = &[
    ("ferry-types", 0),
    ("ferry-os", 0),
    ("ferry-macros", 0),
    ("ferry-proto", 1),
    ("ferry-store", 1),
    ("ferry-sched", 1),
    ("ferry-core", 2),
    ("ferry-node", 2),
    ("ferry", 3),
    ("ferry-dash", 3),
    ("ferry-testkit", 3),
    ("ferry-cli", 4),
    ("ferry-bench", 4),
    ("ferry-tidy", 4),
];

/// The compiler's version and host triple (`rustc -vV`).
fn rustc() -> (String, String) {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = Command::new(rustc).arg("-vV").output().expect("rustc runs");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let field = |k: &str| text.lines().find_map(|l| l.strip_prefix(k)).unwrap_or("").trim().to_string();
    (field("release:"), field("host:"))
}

/// Edges the layers allow but the design does not: the CLI is argument parsing and printing
/// over `ferry_node`'s daemon, control store and typed client; it speaks no wire itself and
/// embeds no runtime.
const FORBIDDEN: &[(&str, &str)] = &[("ferry-cli", "ferry-proto"), ("ferry-cli", "ferry-core")];

fn metadata() -> Value {
    // For this host only: other platforms' dependencies need not be downloaded.
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--locked", "--offline", "--filter-platform", &rustc().1])
        .arg("--manifest-path")
        .arg(root().join("Cargo.toml"))
        .output()
        .expect("cargo runs");
    assert!(out.status.success(), "cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON")
}

fn members(meta: &Value) -> Vec<&Value> {
    let ids: Vec<&str> = meta["workspace_members"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    meta["packages"].as_array().unwrap().iter().filter(|p| ids.contains(&p["id"].as_str().unwrap())).collect()
}

#[test]
fn the_crate_graph_points_down() {
    let meta = metadata();
    let layer: BTreeMap<&str, u8> = LAYERS.iter().copied().collect();
    let mut wrong = Vec::new();
    for p in members(&meta) {
        let name = p["name"].as_str().unwrap();
        let Some(&mine) = layer.get(name) else {
            wrong.push(format!("{name} has no layer: add it to LAYERS in crates/tidy/tests/tidy.rs"));
            continue;
        };
        for d in p["dependencies"].as_array().unwrap() {
            let dep = d["name"].as_str().unwrap();
            let Some(&theirs) = layer.get(dep) else { continue };
            // Tests may reach up (a store test may run a node); what ships may not.
            if d["kind"].as_str() == Some("dev") {
                continue;
            }
            if theirs >= mine {
                wrong.push(format!("{name} (layer {mine}) depends on {dep} (layer {theirs})"));
            }
            if FORBIDDEN.contains(&(name, dep)) {
                wrong.push(format!("{name} depends on {dep}, which the design forbids"));
            }
        }
    }
    assert!(wrong.is_empty(), "dependency edges that do not point down:\n{}", wrong.join("\n"));
}

#[test]
fn the_declared_rust_version_is_true() {
    let meta = metadata();
    let ours: Vec<(String, Option<String>)> = members(&meta)
        .iter()
        .map(|p| (p["name"].as_str().unwrap().to_string(), p["rust_version"].as_str().map(String::from)))
        .collect();
    let declared = ours[0].1.clone().expect("the workspace declares a rust-version");
    for (name, v) in &ours {
        assert_eq!(v.as_deref(), Some(declared.as_str()), "{name} does not inherit the workspace's rust-version");
    }
    // No dependency asks for a newer compiler than we say we need.
    let members: Vec<&str> = ours.iter().map(|(n, _)| n.as_str()).collect();
    let newer: Vec<String> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| !members.contains(&p["name"].as_str().unwrap()))
        .filter_map(|p| {
            let v = p["rust_version"].as_str()?;
            (version(v) > version(&declared)).then(|| format!("{} {} needs {v}", p["name"], p["version"]))
        })
        .collect();
    assert!(newer.is_empty(), "rust-version {declared} is false: {}", newer.join(", "));
    // And the compiler running this is at least that (`.ci/msrv` builds with exactly it).
    let running = rustc().0;
    assert!(version(&running) >= version(&declared), "rustc {running} is older than rust-version {declared}");
}

#[test]
fn every_module_says_what_it_is_for() {
    let missing: Vec<String> = source_files()
        .into_iter()
        .filter(|f| {
            let text = std::fs::read_to_string(f).unwrap_or_default();
            !text.lines().find(|l| !l.trim().is_empty()).is_some_and(|l| l.starts_with("//!"))
        })
        .map(|f| shown(&f))
        .collect();
    assert!(missing.is_empty(), "modules that do not begin with a `//!` doc comment:\n{}", missing.join("\n"));
}

#[test]
fn library_code_logs_through_tracing() {
    // Binaries print to their user; libraries log, so that the user can filter what they see
    // (FERRY_LOG) and collectors can take it.
    let binaries = ["crates/cli/src/", "crates/bench/src/"];
    let macros = [concat!("eprint", "ln!"), concat!("eprint", "!("), concat!("dbg", "!(")];
    let mut found = Vec::new();
    for f in source_files() {
        let name = shown(&f);
        if binaries.iter().any(|b| name.starts_with(b)) {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        for m in macros {
            for (n, line) in code_lines_with(&text, m) {
                found.push(format!("{name}:{n}: {}", line.trim()));
            }
        }
    }
    assert!(found.is_empty(), "library code writes to stderr directly (use tracing):\n{}", found.join("\n"));
}

#[test]
fn no_source_file_outgrows_review() {
    const MAX: usize = 1000;
    let big: Vec<String> = source_files()
        .into_iter()
        .filter_map(|f| {
            let n = std::fs::read_to_string(&f).unwrap_or_default().lines().count();
            (n > MAX).then(|| format!("{} has {n} lines", shown(&f)))
        })
        .collect();
    assert!(big.is_empty(), "files over {MAX} lines (split them by concern):\n{}", big.join("\n"));
}

#[test]
fn poisoned_locks_are_taken_in_one_place() {
    // `ferry_types::sync` takes a poisoned lock with its state; the macros write the same for
    // user crates, which do not depend on ferry-types.
    let allowed = ["crates/types/src/sync.rs", "crates/macros/src/lib.rs"];
    let idiom = concat!("|e| e.", "into_inner()");
    let mut found = Vec::new();
    for f in source_files() {
        let name = shown(&f);
        if allowed.contains(&name.as_str()) {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        for (n, line) in code_lines_with(&text, idiom) {
            found.push(format!("{name}:{n}: {}", line.trim()));
        }
    }
    assert!(found.is_empty(), "lock idiom outside ferry_types::sync (use MutexExt::locked):\n{}", found.join("\n"));
}

/// The state machines are pure: the owner table (`core::owner`) and the scheduler
/// (`ferry-sched`) take events and the time, and return effects; they read no clock, open
/// no socket or file, start no thread, and reach no global runtime. Their model and unit
/// tests run them without any of these (their `mod tests`, inline or in `tests.rs`, may).
#[test]
fn the_state_machines_are_pure() {
    let root = root();
    let mut files = ferry_tidy::rust_files(&root.join("crates/core/src/owner"));
    files.retain(|f| !f.ends_with("model.rs"));
    files.extend(ferry_tidy::rust_files(&root.join("crates/sched/src")));
    // Test modules in files of their own (`mod tests;`) may read the clock, as inline ones.
    files.retain(|f| !f.ends_with("tests.rs"));
    let impure = [
        "Instant::now(",
        "SystemTime::now(",
        "thread::spawn",
        "std::net",
        "std::fs",
        "std::os::unix::net",
        "Arc<Conn>",
        "ferry_proto::Conn",
        "runtime()",
    ];
    let mut found = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or("");
        for needle in impure {
            for (n, line) in code_lines_with(code, needle) {
                found.push(format!("{}:{n}: {}", shown(f), line.trim()));
            }
        }
    }
    assert!(files.len() >= 8, "the owner's and the scheduler's modules were not found: {files:?}");
    assert!(found.is_empty(), "effects inside a pure state machine:\n{}", found.join("\n"));
}
