//! Sets `STRANGLER_COMMIT` for `strangler_build_info{commit}` (src/metrics.rs):
//! `STRANGLER_COMMIT` from the build's environment if set (a Docker build,
//! whose context has no `.git`, passes `--build-arg STRANGLER_COMMIT=...`),
//! else `git rev-parse --short=12 HEAD`, else `unknown` (a source tarball, no
//! git installed). Never fails the build.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=STRANGLER_COMMIT");
    println!("cargo:rerun-if-changed=build.rs");
    let commit = match std::env::var("STRANGLER_COMMIT") {
        Ok(given) if !given.trim().is_empty() => given.trim().to_string(),
        _ => git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into()),
    };
    println!("cargo:rustc-env=STRANGLER_COMMIT={commit}");
    for file in files_that_move_head() {
        println!("cargo:rerun-if-changed={}", file.display());
    }
}

/// The output of a git command run in this package, if it succeeds.
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_string())
}

/// HEAD, the branch it points at and packed-refs: a commit or a checkout
/// changes one of them, and the build script runs again. Only files that
/// exist are named (cargo would otherwise rerun the script on every build).
fn files_that_move_head() -> Vec<PathBuf> {
    let (Some(git_dir), Some(common_dir)) = (git(&["rev-parse", "--git-dir"]), git(&["rev-parse", "--git-common-dir"]))
    else {
        return Vec::new();
    };
    let (git_dir, common_dir) = (PathBuf::from(git_dir), PathBuf::from(common_dir));
    let mut files = vec![git_dir.join("HEAD"), common_dir.join("packed-refs")];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        files.push(common_dir.join(branch));
    }
    files.retain(|f| Path::new(f).exists());
    files
}
