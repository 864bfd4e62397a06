//! The repository is self-contained: no tracked text file refers to documents outside it (a
//! sibling `shared` folder, or sections of a product specification a clone does not carry).
//! The policy is `docs/policy.md`, the record schema `docs/access-record.schema.json`, and the
//! contract (commands, configuration, metrics) the README.

use std::path::Path;
use std::process::Command;

/// What a reference outside the repository looks like. Built from pieces so this file does not
/// match itself.
fn outside_references() -> Vec<(String, &'static str)> {
    vec![
        (
            [".", "./shared"].concat(),
            "a sibling folder a clone does not have",
        ),
        (
            ["/work", "/shared"].concat(),
            "a path on one development machine",
        ),
        (
            ["SPEC", " §"].concat(),
            "a section of a specification the repository does not carry",
        ),
        (
            ["SPEC", ".md"].concat(),
            "a specification the repository does not carry",
        ),
        (
            ["POLICY", ".md"].concat(),
            "the policy under a name the repository does not use",
        ),
        (
            ["peer", "bench"].concat(),
            "a benchmark tool the repository does not carry",
        ),
    ]
}

/// The tracked files, or `None` when git or the repository's history is not there (a source
/// archive): then there is nothing to check against.
fn tracked_files(root: &Path) -> Option<Vec<String>> {
    let out = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["ls-files", "-z"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let list = String::from_utf8(out.stdout).ok()?;
    Some(
        list.split('\0')
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect(),
    )
}

#[test]
fn no_tracked_text_file_refers_to_documents_outside_the_repository() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let Some(files) = tracked_files(root) else {
        eprintln!("skipped: git or the repository's history is not available");
        return;
    };
    assert!(
        files.iter().any(|f| f == "Cargo.toml"),
        "git ls-files lists the repository"
    );
    let patterns = outside_references();
    let mut found = Vec::new();
    let mut text_files = 0;
    for file in &files {
        // Binary files (the GeoIP database) and files removed from the work tree are skipped.
        let Ok(text) = std::fs::read_to_string(root.join(file)) else {
            continue;
        };
        text_files += 1;
        for (n, line) in text.lines().enumerate() {
            for (pattern, what) in &patterns {
                if line.contains(pattern.as_str()) {
                    found.push(format!("{file}:{}: {what}: {}", n + 1, line.trim()));
                }
            }
        }
    }
    assert!(text_files > 50, "only {text_files} text files read");
    assert!(
        found.is_empty(),
        "references outside the repository:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_documents_code_and_tests_cite_are_in_the_repository() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for doc in [
        "README.md",
        "LICENSE",
        "docs/policy.md",
        "docs/access-record.schema.json",
    ] {
        assert!(root.join(doc).is_file(), "{doc} is missing");
    }
    // Every clause id the policy page defines, P1 to P14, each once as a table row.
    let policy = std::fs::read_to_string(root.join("docs/policy.md")).unwrap();
    for id in 1..=14 {
        let rows = policy
            .lines()
            .filter(|l| l.starts_with(&format!("| P{id} |")))
            .count();
        assert_eq!(rows, 1, "docs/policy.md defines P{id} once");
    }
}
