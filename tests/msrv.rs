//! `rust-version` in Cargo.toml stays true: no dependency in Cargo.lock needs a newer
//! Rust than it says. (Clippy's `incompatible_msrv` lint checks our own code.)

use std::process::Command;

/// `1.89` or `1.89.0` as comparable numbers: major, minor, patch.
fn version(text: &str) -> [u32; 3] {
    let mut parts = text.split('.').map(|n| n.parse().unwrap_or(0));
    [0; 3].map(|_| parts.next().unwrap_or(0))
}

#[test]
fn no_dependency_needs_a_newer_rust_than_rust_version_says() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo metadata");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    let ours = env!("CARGO_PKG_RUST_VERSION");
    assert!(!ours.is_empty(), "Cargo.toml states no rust-version");
    let too_new: Vec<String> = metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .filter_map(|package| {
            let needs = package["rust_version"].as_str()?;
            (version(needs) > version(ours)).then(|| format!("{} needs {needs}", package["name"]))
        })
        .collect();
    assert!(
        too_new.is_empty(),
        "rust-version says {ours}, but {too_new:?}"
    );
}
