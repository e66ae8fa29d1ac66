//! The crate graph as `cargo metadata` reports it, against the rules of the
//! layers and the graph drawn in the README's Layout section.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// Crate (its directory) → the workspace crates it depends on directly.
type Graph = BTreeMap<String, BTreeSet<String>>;

/// The workspace's internal dependencies, normal and dev, by directory name.
fn workspace_graph() -> Graph {
    graph_of_kinds(true)
}

/// The same without dev-dependencies: what each crate needs to run.
fn runtime_graph() -> Graph {
    graph_of_kinds(false)
}

fn graph_of_kinds(with_dev: bool) -> Graph {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("running cargo metadata");
    assert!(output.status.success(), "cargo metadata failed");
    let metadata: Value = serde_json::from_slice(&output.stdout).expect("metadata is JSON");
    let packages = metadata["packages"].as_array().expect("packages");
    let directory_of: BTreeMap<&str, String> = packages
        .iter()
        .map(|package| {
            let manifest = Path::new(package["manifest_path"].as_str().expect("a manifest"));
            let directory = manifest
                .parent()
                .and_then(Path::file_name)
                .expect("a crate directory")
                .to_string_lossy()
                .into_owned();
            (package["name"].as_str().expect("a name"), directory)
        })
        .collect();
    let mut graph = Graph::new();
    for package in packages {
        let from = &directory_of[package["name"].as_str().expect("a name")];
        let to = graph.entry(from.clone()).or_default();
        for dependency in package["dependencies"].as_array().expect("dependencies") {
            let kind = dependency["kind"].as_str();
            if kind == Some("build") || (!with_dev && kind == Some("dev")) {
                continue;
            }
            if let Some(directory) = directory_of.get(dependency["name"].as_str().expect("a name"))
                && directory != from
            {
                to.insert(directory.clone());
            }
        }
    }
    graph
}

/// The edges of the ```mermaid block of the README's Layout section:
/// `a --> b` and `a -.-> b`.
fn readme_graph() -> Graph {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .expect("reading README.md");
    let layout = readme
        .split("\n## Layout\n")
        .nth(1)
        .expect("a Layout section");
    let block = layout
        .split("```mermaid\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a mermaid block in the Layout section");
    let mut graph = Graph::new();
    for line in block.lines() {
        let line = line.trim();
        if let Some((from, to)) = line.split_once("-.->").or_else(|| line.split_once("-->")) {
            graph
                .entry(from.trim().to_owned())
                .or_default()
                .insert(to.trim().to_owned());
            graph.entry(to.trim().to_owned()).or_default();
        }
    }
    graph
}

/// Everything each crate reaches.
fn closure(graph: &Graph) -> Graph {
    graph
        .keys()
        .map(|start| {
            let mut reached = BTreeSet::new();
            let mut pending: Vec<&String> = graph[start].iter().collect();
            while let Some(next) = pending.pop() {
                if reached.insert(next.clone()) {
                    pending.extend(graph.get(next).into_iter().flatten());
                }
            }
            (start.clone(), reached)
        })
        .collect()
}

#[test]
fn nothing_depends_on_the_binary_and_the_harnesses_stand_apart() {
    let reached = closure(&workspace_graph());
    for (krate, reaches) in &reached {
        assert!(!reaches.contains("cli"), "{krate} depends on cli");
    }
    assert!(
        !reached["cluster"].contains("faults"),
        "cluster depends on faults"
    );
    assert!(
        reached["core"].is_empty(),
        "core depends on {:?}",
        reached["core"]
    );
    assert_eq!(
        reached["client"],
        BTreeSet::from(["core".to_owned()]),
        "client may depend on core alone"
    );
    // A service's own tests may drive it with the producer client; the
    // service itself needs neither another service nor a client.
    let runs_with = closure(&runtime_graph());
    for service in ["ingest", "processor", "api"] {
        for other in ["ingest", "processor", "api", "client", "harness"] {
            assert!(
                !runs_with[service].contains(other),
                "{service} depends on {other}"
            );
        }
        assert!(
            !reached[service].contains("harness"),
            "{service}'s tests depend on the harness"
        );
    }
}

#[test]
fn the_readme_draws_the_crate_graph_of_the_manifests() {
    let actual = workspace_graph();
    let drawn = readme_graph();
    for (from, tos) in &drawn {
        for to in tos {
            assert!(
                actual.get(from).is_some_and(|deps| deps.contains(to)),
                "the README draws {from} → {to}, which no manifest declares"
            );
        }
    }
    assert_eq!(
        closure(&drawn),
        closure(&actual),
        "what each crate reaches in the README's graph differs from the manifests"
    );
}
