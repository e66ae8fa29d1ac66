//! Where the `sessionfold` binary is.
//!
//! `CARGO_BIN_EXE_sessionfold` exists only in the tests of the package that
//! owns the binary (`sessionfold`, in `cli/`), so this suite finds it itself:
//!
//! 1. `SESSIONFOLD_BIN`, when set, names it (any build, any place);
//! 2. otherwise it is `target/<profile>/sessionfold`, next to the `deps/`
//!    directory holding this test executable — the binary of the same
//!    profile. `cargo test` of this package alone does not build it, so run
//!    `cargo build -p sessionfold` first (`cargo test --workspace` builds it,
//!    for the e2e tests of `cli/`). A binary older than the service libraries
//!    in `target/<profile>/deps` is reported as possibly stale.

use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::Duration;

use anyhow::{Context, bail};

/// The `sessionfold` binary to run ingest and the processors from.
pub fn sessionfold_bin() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("SESSIONFOLD_BIN").filter(|v| !v.is_empty()) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!("SESSIONFOLD_BIN={} is not a file", path.display());
        }
        return Ok(path);
    }
    let exe = std::env::current_exe().context("locating the test executable")?;
    // target/<profile>/deps/<test executable>
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .context("the test executable is not in target/<profile>/deps")?;
    let path = profile_dir.join(format!("sessionfold{}", std::env::consts::EXE_SUFFIX));
    if !path.is_file() {
        bail!(
            "{} does not exist: run `cargo build -p sessionfold` (same profile) first, \
             or point SESSIONFOLD_BIN at a sessionfold binary",
            path.display()
        );
    }
    warn_if_stale(&path, profile_dir);
    Ok(path)
}

/// Warns (once) when a service library was built after the binary: the
/// binary may then not contain the code under test.
fn warn_if_stale(bin: &Path, profile_dir: &Path) {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let Some(built) = modified(bin) else { return };
        let Ok(entries) = std::fs::read_dir(profile_dir.join("deps")) else {
            return;
        };
        let newest = entries
            .flatten()
            .filter(|entry| {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                name.ends_with(".rlib")
                    && ["core", "common", "ingest", "processor", "api"]
                        .iter()
                        .any(|lib| name.starts_with(&format!("libsessionfold_{lib}-")))
            })
            .filter_map(|entry| Some((modified(&entry.path())?, entry.file_name())))
            .max();
        if let Some((when, name)) = newest
            && when > built + Duration::from_secs(1)
        {
            eprintln!(
                "warning: {} was built after {}: run `cargo build -p sessionfold` so that the \
                 processes under test run the current code",
                name.to_string_lossy(),
                bin.display()
            );
        }
    });
}
