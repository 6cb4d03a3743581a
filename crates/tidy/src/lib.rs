//! Helpers for the tidy tests (`tests/tidy.rs`): they check invariants of the workspace's
//! structure that the compiler does not, in the manner of rust-analyzer's tidy tests. The
//! checks read the sources and `cargo metadata`; they build nothing.

use std::path::{Path, PathBuf};

/// The workspace's root directory.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("the workspace root")
}

/// Every `.rs` file under `dir`, recursively, sorted.
pub fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The source files of every crate of the workspace (`crates/*/src/**.rs`).
pub fn source_files() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(root().join("crates")) else { return out };
    for e in rd.flatten() {
        out.extend(rust_files(&e.path().join("src")));
    }
    out.sort();
    out
}

/// `path` relative to the workspace root, for messages.
pub fn shown(path: &Path) -> String {
    path.strip_prefix(root()).unwrap_or(path).display().to_string()
}

/// A version such as `1.90` or `1.82.0` as comparable numbers (missing parts are 0).
pub fn version(v: &str) -> (u64, u64, u64) {
    let mut parts = v.trim().split(['.', '-']).map(|p| p.parse::<u64>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// Lines of code in `text` (comments aside) that contain `needle`, as `(line number, line)`.
pub fn code_lines_with<'a>(text: &'a str, needle: &str) -> Vec<(usize, &'a str)> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| {
            let t = l.trim_start();
            !t.starts_with("//") && t.contains(needle)
        })
        .map(|(i, l)| (i + 1, l))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_by_number_not_text() {
        assert!(version("1.90") > version("1.9.5"));
        assert_eq!(version("1.82"), version("1.82.0"));
        assert!(version("1.100.0") > version("1.90.1"));
    }

    #[test]
    fn comments_are_not_code() {
        let text = "// say! here is prose\nlet x = 1; say!(\"x\");\n  /// say!";
        assert_eq!(code_lines_with(text, "say!"), vec![(2, "let x = 1; say!(\"x\");")]);
    }
}
