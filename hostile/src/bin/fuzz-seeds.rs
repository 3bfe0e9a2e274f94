//! Writes each fuzz target's seed corpus into `<dir>/<target>/`, for
//! `cargo fuzz run <target> <dir>/<target>` (see `fuzz/run.sh`).

fn main() -> std::process::ExitCode {
    let Some(dir) = std::env::args_os().nth(1).map(std::path::PathBuf::from) else {
        eprintln!("usage: fuzz-seeds <corpus directory>");
        return std::process::ExitCode::from(2);
    };
    for (name, _) in hostile::TARGETS {
        let target = dir.join(name);
        if let Err(error) = std::fs::create_dir_all(&target) {
            eprintln!("error: {}: {error}", target.display());
            return std::process::ExitCode::FAILURE;
        }
        for (index, seed) in hostile::fuzz::seeds(name).iter().enumerate() {
            let path = target.join(format!("seed-{index}"));
            if let Err(error) = std::fs::write(&path, seed) {
                eprintln!("error: {}: {error}", path.display());
                return std::process::ExitCode::FAILURE;
            }
        }
    }
    std::process::ExitCode::SUCCESS
}
