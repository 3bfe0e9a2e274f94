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

/// The engine's seeds reach deep states (the fuzzer mutates from there):
/// a book of many resting orders, partial fills, both kinds of amend,
/// self-trade prevention, cancels by client id, closed markets.
#[test]
fn the_engine_seeds_reach_deep_states() {
    let reaches: Vec<_> = hostile::fuzz::seeds("engine_commands")
        .iter()
        .map(|seed| hostile::fuzz::engine_commands_reach(seed))
        .collect();
    println!("{reaches:#?}");
    let best = |field: fn(&hostile::fuzz::EngineReach) -> u32| reaches.iter().map(field).max().unwrap_or(0);
    assert!(best(|r| r.resting_orders_max) >= 64, "a deep book");
    assert!(best(|r| r.partial_fills) >= 5, "partial fills");
    assert!(best(|r| r.amends_in_place) >= 1, "amends that keep their place");
    assert!(best(|r| r.amends_requeued) >= 1, "amends that lose it");
    assert!(best(|r| r.self_trade_cancels) >= 2, "self-trade prevention");
    assert!(best(|r| r.cancels_by_client_id) >= 1, "cancels by client order id");
    assert!(best(|r| r.refused_market_closed) >= 2, "a halted or winding-down market");
    // Stops, trailing stops, icebergs and order lists (the engine logic of
    // issue 17).
    assert!(best(|r| r.triggered) >= 3, "stops and take-profits that fire");
    assert!(best(|r| r.cascades) >= 1, "a trigger that fires another");
    assert!(best(|r| r.trailing_started) >= 1, "a trailing stop that tracks");
    assert!(best(|r| r.iceberg_refills) >= 2, "icebergs refilled");
    assert!(best(|r| r.lists_accepted) >= 3, "OCO and OTO lists");
    assert!(best(|r| r.contingent_cancels) >= 1, "a list order cancelled by the other");
}
