//! The Python side of the tests: an interpreter with the pinned packages
//! of `requirements.txt` (ccxt, schemathesis), installed on first use.
//!
//! The first run creates a private environment under cargo's target
//! directory and installs the pinned packages there (`COMPAT_PYTHON` names
//! an interpreter that already has them; CI sets it). A missing Python or
//! package index fails the test with the reason: the suites never skip.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub const REQUIREMENTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/compat/requirements.txt");
pub const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/compat");

/// Runs `command`; its output, or why it failed with the output.
pub fn run(command: &mut Command) -> Result<String, String> {
    let output = command.output().map_err(|e| format!("{command:?}: {e}"))?;
    let text =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    if output.status.success() {
        Ok(text)
    } else {
        Err(format!("{command:?} failed ({}):\n{text}", output.status))
    }
}

/// A Python interpreter with the pinned packages.
pub fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        if let Ok(python) = std::env::var("COMPAT_PYTHON") {
            return PathBuf::from(python);
        }
        let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("compat-venv");
        let python = venv.join("bin").join("python");
        let pinned = std::fs::read_to_string(REQUIREMENTS).expect("requirements.txt");
        let stamp = venv.join("requirements.installed");
        if std::fs::read_to_string(&stamp).ok().as_deref() != Some(pinned.as_str()) {
            run(Command::new("python3").args(["-m", "venv", "--clear"]).arg(&venv))
                .unwrap_or_else(|e| panic!("the Python suites need Python 3 with venv: {e}"));
            run(Command::new(&python).args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-r",
                REQUIREMENTS,
            ]))
            .unwrap_or_else(|e| panic!("cannot install the pinned Python packages: {e}"));
            std::fs::write(&stamp, &pinned).expect("stamp");
        }
        python
    })
}
