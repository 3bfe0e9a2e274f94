//! The files in `deploy/` work as shipped: the systemd unit passes
//! `systemd-analyze verify` (no error and no warning) with its `ExecStart`
//! pointed at the binary just built.

use std::path::Path;
use std::process::Command;

#[test]
fn the_systemd_unit_verifies_cleanly() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let unit = std::fs::read_to_string(root.join("deploy/exchange.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/local/bin/exchange "),
        "the unit's ExecStart moved: update this test"
    );
    let unit = unit.replace("/usr/local/bin/exchange", env!("CARGO_BIN_EXE_exchange"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("exchange.service");
    std::fs::write(&path, unit).unwrap();
    let output = match Command::new("systemd-analyze").arg("verify").arg(&path).output() {
        Ok(output) => output,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("systemd-analyze is not installed: the unit was not verified");
            return;
        }
        Err(error) => panic!("systemd-analyze: {error}"),
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "systemd-analyze verify failed: {stderr}");
    assert!(stderr.trim().is_empty(), "systemd-analyze verify warned: {stderr}");
}
