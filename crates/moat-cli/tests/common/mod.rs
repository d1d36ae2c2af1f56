//! What several of moat-cli's test files share: running the real binary in a folder.

use std::path::Path;
use std::process::{Command, Output};

/// Runs `moat ARGS` in `dir` and waits for it.
pub(crate) fn moat(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_moat"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run moat")
}

/// [`moat`] that must succeed: its standard output.
#[track_caller]
pub(crate) fn ok(dir: &Path, args: &[&str]) -> String {
    let out = moat(dir, args);
    assert!(
        out.status.success(),
        "moat {} failed ({:?}):\n{}\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
