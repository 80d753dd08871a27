//! Finds the programs some integration tests need on `PATH`, so that a test whose
//! program is missing is marked ignored at build time and the harness says so.
//!
//! For each program below, `has_<name>` (dashes as underscores, `has_redis` for
//! `redis-server`) is set when it is on `PATH`, and `MISSING_TEST_PROGRAMS` names
//! the missing ones for `tests/programs.rs`. The script runs again when `PATH`
//! changes or a program is added to or removed from one of its folders (their
//! mtimes), not on every build.

use std::path::{Path, PathBuf};

/// Each program and its cfg.
const PROGRAMS: &[(&str, &str)] = &[
    ("redis-server", "has_redis"),
    ("redis-sentinel", "has_redis_sentinel"),
    ("promtool", "has_promtool"),
    ("prometheus", "has_prometheus"),
    ("chromium", "has_chromium"),
    ("chromedriver", "has_chromedriver"),
    ("openssl", "has_openssl"),
    ("jq", "has_jq"),
    ("zsh", "has_zsh"),
    ("fish", "has_fish"),
    ("prlimit", "has_prlimit"),
];

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=PATH");
    let dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect())
        .unwrap_or_default();
    for dir in &dirs {
        // A path that does not exist would make Cargo run this script every time.
        if dir.is_absolute() && dir.is_dir() {
            println!("cargo::rerun-if-changed={}", dir.display());
        }
    }
    let mut missing = Vec::new();
    for (program, cfg) in PROGRAMS {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
        if dirs.iter().any(|dir| is_executable(&dir.join(program))) {
            println!("cargo::rustc-cfg={cfg}");
        } else {
            missing.push(*program);
        }
    }
    println!(
        "cargo::rustc-env=MISSING_TEST_PROGRAMS={}",
        missing.join(" ")
    );
}

/// Whether `path` is a file that may be run.
fn is_executable(path: &Path) -> bool {
    #[cfg(unix)]
    use std::os::unix::fs::PermissionsExt;
    path.metadata().is_ok_and(|m| {
        #[cfg(unix)]
        let runnable = m.permissions().mode() & 0o111 != 0;
        #[cfg(not(unix))]
        let runnable = true;
        m.is_file() && runnable
    })
}
