//! Hash marks in a cluster of real `exchange` processes: every node checks
//! its own state hash against the leader's marks in the log, and a node
//! whose state differs stops loudly while the others go on.

#[path = "server/cluster.rs"]
mod cluster;
mod server;

use std::time::{Duration, Instant};

use cluster::{Cluster, Node, CATCH_UP_BOUND};
use serde_json::json;
use server::{Client, Key};

/// A small interval, so that a few hundred commands make several marks.
const INTERVAL_SEQS: u64 = 20;

/// The exit status of a node that diverged (`gateway::pipeline::DIVERGED_EXIT_CODE`).
const DIVERGED_EXIT_CODE: i32 = gateway::pipeline::DIVERGED_EXIT_CODE;

fn start(size: u64) -> Cluster {
    Cluster::start_configured(size, false, "", &format!("hash_mark_interval_seqs = {INTERVAL_SEQS}"))
}

/// Waits until every running node has applied `seq` and checked the mark of
/// the last marked point at or before it.
fn wait_marked(cluster: &Cluster, seq: u64) {
    let last_mark_seq = seq / INTERVAL_SEQS * INTERVAL_SEQS;
    let deadline = Instant::now() + CATCH_UP_BOUND;
    for node in cluster.nodes.iter().filter(|n| n.child.is_some()) {
        loop {
            let (_, marked, applied) = node.marks();
            if applied >= seq && marked >= last_mark_seq {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {} applied {applied}, checked a mark at {marked}; expected {seq} and {last_mark_seq}: {}",
                node.id,
                cluster.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Places `rounds` orders per key through `client`, at prices that cross now
/// and then (trades change the state too); returns the leader's last seq.
fn place_orders(client: &Client, keys: &[Key], rounds: usize) -> u64 {
    for round in 0..rounds {
        for (index, key) in keys.iter().enumerate() {
            let side = if index % 2 == 0 { "buy" } else { "sell" };
            let price = 100 + ((round * 7 + index * 3) % 11);
            let order = json!({ "market": "BTC-USDT", "side": side, "type": "limit",
                                "price": price.to_string(), "quantity": "0.01", "time_in_force": "GTC" });
            let (status, body) = client.place(key, order);
            assert_eq!(status, 200, "{body}");
        }
    }
    client.get("/health").1["seq"].as_u64().unwrap()
}

#[test]
fn every_node_checks_its_state_hash_against_the_leaders_marks() {
    let cluster = start(3);
    let leader = cluster.leader();
    let client = cluster.nodes[leader].client();
    let keys = client.demo(4);
    let seq = place_orders(&client, &keys, 25);
    assert!(seq >= 5 * INTERVAL_SEQS, "only {seq} commands");
    wait_marked(&cluster, seq);
    let marks: Vec<(u64, u64, u64)> = cluster.nodes.iter().map(Node::marks).collect();
    eprintln!("(checked, last mark seq, applied) per node after {seq} commands: {marks:?}");
    let last_mark_seq = seq / INTERVAL_SEQS * INTERVAL_SEQS;
    for (node, (checked, marked, _)) in cluster.nodes.iter().zip(&marks) {
        assert!(*checked > 0, "node {} checked no mark", node.id);
        assert_eq!(*marked, last_mark_seq, "node {}'s last mark", node.id);
        // The counter is in /metrics too.
        let (_, _, page) = server::try_raw(node.api, "GET", "/metrics", &[], b"").unwrap();
        let line = format!("exchange_hash_marks_checked_total {checked}");
        assert!(
            page.as_str().is_some_and(|p| p.contains(&line)),
            "node {}: no {line:?} in /metrics",
            node.id
        );
    }
    assert!(!cluster.stderr().contains("replicas diverged"), "{}", cluster.stderr());
}

#[test]
fn a_follower_whose_state_differs_stops_loudly_and_the_others_go_on() {
    let mut cluster = start(3);
    let leader = cluster.leader();
    let client = cluster.nodes[leader].client();
    let keys = client.demo(2);
    let seq = place_orders(&client, &keys, 10);
    wait_marked(&cluster, seq);

    // The follower restarts with a wrong hash recorded at a point still to
    // come: it replays the log (its earlier marks agree), then diverges.
    let bad = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    let corrupt_at = (seq / INTERVAL_SEQS + 3) * INTERVAL_SEQS;
    cluster.nodes[bad].kill();
    let corrupt = corrupt_at.to_string();
    cluster.nodes[bad].start_with_env(&[("TEST_EXCHANGE_CORRUPT_HASH_AT_SEQ", corrupt.as_str())]);
    wait_marked(&cluster, seq);
    let (checked_before, _, _) = cluster.nodes[other].marks();

    let seq = place_orders(&client, &keys, 40);
    assert!(seq > corrupt_at + INTERVAL_SEQS, "only {seq} commands");
    let status = cluster.nodes[bad].wait_exit(CATCH_UP_BOUND);
    assert_eq!(status.code(), Some(DIVERGED_EXIT_CODE), "{}", cluster.nodes[bad].stderr());
    let stderr = cluster.nodes[bad].stderr();
    let line = stderr.lines().find(|l| l.contains("replicas diverged")).unwrap_or_else(|| panic!("{stderr}"));
    let (leader_id, bad_id) = (cluster.nodes[leader].id, cluster.nodes[bad].id);
    for expected in [
        format!("at sequence {corrupt_at} "),
        format!("node {bad_id} is "),
        format!("hash mark of node {leader_id} says"),
    ] {
        assert!(line.contains(&expected), "{line:?} does not say {expected:?}");
    }
    eprintln!("the diverged node's last line: {line}");

    // The leader and the other follower take orders and check marks still.
    let seq = place_orders(&client, &keys, 10);
    wait_marked(&cluster, seq);
    for index in [leader, other] {
        let (checked, marked, _) = cluster.nodes[index].marks();
        assert!(checked > checked_before, "node {}: {checked} marks checked", cluster.nodes[index].id);
        assert_eq!(marked, seq / INTERVAL_SEQS * INTERVAL_SEQS);
    }
    let good = cluster.nodes[leader].stderr() + &cluster.nodes[other].stderr();
    assert!(!good.contains("replicas diverged"), "{good}");
}
