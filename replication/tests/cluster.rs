//! Clusters of real Raft nodes (own directories, own engines, TCP on loopback): they elect,
//! commit batches of real commands to equal state hashes, survive the leader's death, let the
//! dead node catch up after a restart, and bring an empty learner up by snapshot install.

mod common;

use std::time::{Duration, Instant};

use common::*;
use openraft::async_runtime::WatchReceiver;
use openraft::ChangeMembers;

const BATCH_COMMANDS: usize = 64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_fail_over_restart_and_bring_a_learner_up_by_snapshot() {
    init_tracing();
    let root = tempfile::tempdir().unwrap();
    let (limits, commands) = workload(3_000, 15);
    let mut batches = commands.chunks(BATCH_COMMANDS);
    let mut nodes = start_cluster(root.path(), 3, limits).await;

    // Elect, then commit a first part.
    let mut sent = 0;
    for batch in batches.by_ref().take(20) {
        write_batch(&nodes, batch).await;
        sent = batch.last().unwrap().seq;
    }
    let hashes = wait_applied(&nodes, sent).await;
    let expected = reference_hash(limits, &commands[..sent as usize]);
    assert!(hashes.iter().all(|(_, h)| *h == expected), "hashes {hashes:?}, expected {expected:016x}");

    // The leader dies; a new one commits within the bound.
    let mut failovers = Vec::new();
    for round in 0..3 {
        let old = wait_leader(&nodes).await;
        let dead = nodes[old].take().unwrap();
        let killed = Instant::now();
        let (id, dir, addr) = dead.stop().await;
        let batch = batches.next().unwrap();
        let new = write_batch(&nodes, batch).await;
        let took = killed.elapsed();
        sent = batch.last().unwrap().seq;
        assert_ne!(new, old);
        assert!(took < Duration::from_secs(5), "round {round}: a new leader committed only after {took:?}");
        failovers.push(took);
        // More while the old leader is down, then it comes back on the same directory and port.
        for batch in batches.by_ref().take(5) {
            write_batch(&nodes, batch).await;
            sent = batch.last().unwrap().seq;
        }
        nodes[old] = Some(TestNode::start(id, &dir, &addr, limits).await);
        let hashes = wait_applied(&nodes, sent).await;
        let expected = reference_hash(limits, &commands[..sent as usize]);
        assert!(
            hashes.iter().all(|(_, h)| *h == expected),
            "round {round}: {hashes:?}, expected {expected:016x}"
        );
    }
    println!("failover (leader stopped -> first commit on the new leader): {failovers:?}");

    // A snapshot on every node, the log purged behind it; then an empty node joins as a
    // learner: the leader no longer has the entries it lacks, so it must send the snapshot.
    for node in nodes.iter().flatten() {
        node.raft.trigger().snapshot().await.unwrap();
    }
    let leader = wait_leader(&nodes).await;
    let leader_raft = nodes[leader].as_ref().unwrap().raft.clone();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let purged = nodes.iter().flatten().all(|n| {
            let m = n.raft.metrics().borrow_watched().clone();
            m.purged.is_some() && m.purged == m.snapshot
        });
        if purged {
            break;
        }
        assert!(Instant::now() < deadline, "snapshots and purge not done within {PATIENCE:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let learner = TestNode::start(4, &root.path().join("n4"), "127.0.0.1:0", limits).await;
    leader_raft.add_learner(4, learner.node(), true).await.expect("add learner");
    nodes.push(Some(learner));
    for batch in batches.by_ref().take(5) {
        write_batch(&nodes, batch).await;
        sent = batch.last().unwrap().seq;
    }
    let hashes = wait_applied(&nodes, sent).await;
    let expected = reference_hash(limits, &commands[..sent as usize]);
    assert!(
        hashes.iter().all(|(_, h)| *h == expected),
        "after the learner: {hashes:?}, expected {expected:016x}"
    );
    let learner_metrics = nodes[3].as_ref().unwrap().raft.metrics().borrow_watched().clone();
    assert!(
        learner_metrics.snapshot.is_some(),
        "the learner caught up without a snapshot: {learner_metrics:?}"
    );

    // Promoted to voter, it counts in the quorum: with one old voter removed and another
    // stopped, the leader and the new voter (two of three) still commit.
    let leader = wait_leader(&nodes).await;
    let leader_raft = nodes[leader].as_ref().unwrap().raft.clone();
    leader_raft
        .change_membership(ChangeMembers::AddVoterIds([4].into()), false)
        .await
        .expect("promote the learner");
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let removed = nodes[others[0]].as_ref().unwrap().id;
    leader_raft
        .change_membership(ChangeMembers::RemoveVoters([removed].into()), false)
        .await
        .expect("remove a voter");
    nodes[others[0]].take().unwrap().stop().await;
    nodes[others[1]].take().unwrap().stop().await;
    for batch in batches.by_ref().take(2) {
        write_batch(&nodes, batch).await;
        sent = batch.last().unwrap().seq;
    }
    let voters: Vec<u64> = leader_raft.voter_ids().collect();
    assert!(voters.contains(&4) && !voters.contains(&removed), "voters {voters:?}");
    let hashes = wait_applied(&nodes, sent).await;
    let expected = reference_hash(limits, &commands[..sent as usize]);
    assert!(hashes.iter().all(|(_, h)| *h == expected), "after the promotion: {hashes:?}");

    for node in nodes.into_iter().flatten() {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_survive_two_failures() {
    init_tracing();
    let root = tempfile::tempdir().unwrap();
    let (limits, commands) = workload(1_000, 5);
    let mut batches = commands.chunks(BATCH_COMMANDS);
    let mut nodes = start_cluster(root.path(), 5, limits).await;
    let mut sent = 0;
    for batch in batches.by_ref().take(5) {
        write_batch(&nodes, batch).await;
        sent = batch.last().unwrap().seq;
    }
    // The leader and one follower die: three of five still commit.
    let leader = wait_leader(&nodes).await;
    let follower = (leader + 1) % 5;
    nodes[leader].take().unwrap().stop().await;
    nodes[follower].take().unwrap().stop().await;
    for batch in batches.by_ref().take(5) {
        write_batch(&nodes, batch).await;
        sent = batch.last().unwrap().seq;
    }
    let hashes = wait_applied(&nodes, sent).await;
    assert_eq!(hashes.len(), 3);
    let expected = reference_hash(limits, &commands[..sent as usize]);
    assert!(hashes.iter().all(|(_, h)| *h == expected), "{hashes:?}, expected {expected:016x}");
    for node in nodes.into_iter().flatten() {
        node.stop().await;
    }
}
