//! The Binance-compatible API driven by an unmodified Binance client
//! library: ccxt from PyPI, pinned in `tests/compat/requirements.txt`,
//! with its URLs pointed at the real `exchange` on free ports.
//!
//! The suite needs Python 3 with `venv`; the first run creates a private
//! environment under cargo's target directory and installs the pinned
//! ccxt there (`COMPAT_PYTHON` names an interpreter that already
//! has it). A missing Python or package index fails the test with the
//! reason: the suite never skips.

mod server;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use server::Exchange;

const REQUIREMENTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/compat/requirements.txt");
const SUITE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/compat/ccxt_suite.py");

fn run(command: &mut Command) -> Result<String, String> {
    let output = command.output().map_err(|e| format!("{command:?}: {e}"))?;
    let text =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    if output.status.success() {
        Ok(text)
    } else {
        Err(format!("{command:?} failed ({}):\n{text}", output.status))
    }
}

/// A Python interpreter with the pinned ccxt, installed on first use.
fn python() -> &'static Path {
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
                .unwrap_or_else(|e| panic!("the compatibility suite needs Python 3 with venv: {e}"));
            run(Command::new(&python).args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-r",
                REQUIREMENTS,
            ]))
            .unwrap_or_else(|e| panic!("cannot install the pinned client library: {e}"));
            std::fs::write(&stamp, &pinned).expect("stamp");
        }
        python
    })
}

#[test]
fn ccxt_trades_through_the_binance_api_and_streams_unmodified() {
    let python = python();
    let dir = tempfile::tempdir().unwrap();
    let exchange = Exchange::start(dir.path(), &[]);
    let keys = exchange.demo(2);
    let (maker, taker) = (&keys[0], &keys[1]);
    let result = run(Command::new(python)
        .arg(SUITE)
        .env("EXCHANGE_REST", format!("http://{}", exchange.address))
        .env("EXCHANGE_WS", format!("ws://{}", exchange.ws_address))
        .env("MAKER_KEY", &maker.api_key)
        .env("MAKER_SECRET", &maker.secret)
        .env("TAKER_KEY", &taker.api_key)
        .env("TAKER_SECRET", &taker.secret));
    match result {
        Ok(output) => {
            println!("{output}");
            assert!(output.contains("all checks passed"), "{output}");
        }
        Err(error) => panic!("{error}\nexchange stderr:\n{}", exchange.stderr()),
    }
}
