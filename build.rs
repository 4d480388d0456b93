//! Build script: sets `DUET_GIT_SHA` for the `duet_build_info` metric (src/metrics.rs) — the variable's value
//! when the build is given one (a Docker build has no .git), else `git rev-parse HEAD`, else "unknown". Uses only
//! std and the `git` command.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

fn main() {
    println!("cargo:rerun-if-env-changed=DUET_GIT_SHA");
    let sha = std::env::var("DUET_GIT_SHA")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .or_else(|| git(&["rev-parse", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    // Rebuilt when HEAD moves: the HEAD file and, on a branch, the branch's ref (loose or packed).
    for path in [Some("HEAD".to_string()), git(&["symbolic-ref", "-q", "HEAD"]), Some("packed-refs".into())]
        .into_iter()
        .flatten()
    {
        if let Some(file) = git(&["rev-parse", "--git-path", &path]) {
            if std::path::Path::new(&file).exists() {
                println!("cargo:rerun-if-changed={file}");
            }
        }
    }
    println!("cargo:rustc-env=DUET_GIT_SHA={sha}");
}
