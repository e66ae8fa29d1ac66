//! Every "docs/design.md §N" in the workspace names a section that exists.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the e2e crate lives in the workspace")
        .to_path_buf()
}

/// Section numbers of the design's headings: `## 3. …` gives `3`, `### 1.2 …`
/// gives `1.2`.
fn sections(design: &str) -> BTreeSet<String> {
    design
        .lines()
        .filter_map(|line| {
            line.strip_prefix("## ")
                .or_else(|| line.strip_prefix("### "))
        })
        .filter_map(|title| title.split_whitespace().next())
        .map(|number| number.trim_end_matches('.').to_owned())
        .filter(|number| number.starts_with(|c: char| c.is_ascii_digit()))
        .collect()
}

/// The source and documentation files of the workspace, outside build output
/// and installed tools.
fn files(dir: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if path.is_dir() {
            if !name.starts_with('.') && !["target", "node_modules"].contains(&name.as_ref()) {
                files(&path, found);
            }
        } else if ["rs", "md", "lua", "ts"]
            .iter()
            .any(|ext| name.ends_with(&format!(".{ext}")))
        {
            found.push(path);
        }
    }
}

#[test]
fn every_reference_into_the_design_names_one_of_its_sections() {
    let root = workspace_root();
    let design = std::fs::read_to_string(root.join("docs/design.md")).expect("docs/design.md");
    let known = sections(&design);
    assert!(known.contains("2.1") && known.contains("9"), "{known:?}");
    let mut found = Vec::new();
    files(&root, &mut found);
    let mut references = 0;
    for path in found {
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        for line in text
            .lines()
            .filter(|line| line.contains("docs/design.md §"))
        {
            for reference in line.split('§').skip(1) {
                let number: String = reference
                    .chars()
                    .take_while(|c| c.is_ascii_digit() || *c == '.')
                    .collect();
                let number = number.trim_end_matches('.');
                if number.is_empty() {
                    continue;
                }
                references += 1;
                assert!(
                    known.contains(number),
                    "{} cites docs/design.md §{number}, which has no such section",
                    path.display()
                );
            }
        }
    }
    assert!(references > 10, "only {references} references found");
}
