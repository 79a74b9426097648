//! Stamps the git revision into the binary for `hexwatch --version` and the
//! startup log. Builds without a git checkout (a source tarball, a container
//! build context without `.git`) take `HEXWATCH_GIT_REVISION` from the
//! environment, else say "unknown".

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=HEXWATCH_GIT_REVISION");
    for path in [".git/HEAD", ".git/refs/heads", ".git/packed-refs"] {
        println!("cargo:rerun-if-changed={path}");
    }
    let revision = std::env::var("HEXWATCH_GIT_REVISION")
        .ok()
        .filter(|r| !r.is_empty())
        .or_else(git_revision)
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=HEXWATCH_GIT_REVISION={revision}");
}

fn git_revision() -> Option<String> {
    let out = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()?;
    let rev = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !rev.is_empty()).then_some(rev)
}
