//! The workspace's own promises: it declares no dependency that no member uses.

use std::collections::BTreeSet;

#[test]
fn every_dependency_the_workspace_declares_is_used_by_a_member() {
    let root = env!("CARGO_MANIFEST_DIR");
    let read = |path: &str| -> toml::Table { std::fs::read_to_string(format!("{root}/{path}")).unwrap().parse().unwrap() };
    let workspace = read("Cargo.toml");
    let declared: BTreeSet<String> = workspace["workspace"]["dependencies"].as_table().unwrap().keys().cloned().collect();
    let members = workspace["workspace"]["members"].as_array().unwrap();
    let mut used = BTreeSet::new();
    for member in members {
        let manifest = read(&format!("{}/Cargo.toml", member.as_str().unwrap()));
        for section in ["dependencies", "dev-dependencies", "build-dependencies"] {
            used.extend(manifest.get(section).and_then(|s| s.as_table()).into_iter().flat_map(|s| s.keys().cloned()));
        }
    }
    let unused: Vec<_> = declared.difference(&used).collect();
    assert!(unused.is_empty(), "declared in [workspace.dependencies] but used by no member: {unused:?}");
}
