//! Every fuzz target on its seed corpus and on every input kept in
//! `fuzz/regressions/<target>/` (each crash a fuzzer found, once fixed):
//! what the fuzzers found stays found, in every test run.

use std::path::Path;

#[test]
fn every_target_holds_on_its_seeds_and_its_regressions() {
    let regressions = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions");
    for (name, target) in hostile::TARGETS {
        let seeds = hostile::fuzz::seeds(name);
        assert!(!seeds.is_empty(), "{name} has a seed corpus");
        for seed in &seeds {
            target(seed);
        }
        let mut kept = 0;
        if let Ok(entries) = std::fs::read_dir(regressions.join(name)) {
            for entry in entries.flatten() {
                let input = std::fs::read(entry.path()).expect("regression input");
                target(&input);
                kept += 1;
            }
        }
        println!("{name}: {} seeds, {kept} regressions", seeds.len());
    }
}

#[test]
fn every_target_has_a_cargo_fuzz_binary() {
    let targets = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/fuzz_targets");
    for (name, _) in hostile::TARGETS {
        let path = targets.join(format!("{name}.rs"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            text.contains(&format!("hostile::fuzz::{name}(")),
            "{} runs hostile::fuzz::{name}",
            path.display()
        );
    }
}
