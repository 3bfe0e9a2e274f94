//! The Raft transport against hostile peers and dead ones: a bad frame closes only its own
//! connection, the server keeps serving; a client never reuses a connection after a timeout;
//! pre-vote really asks the peer; a bad snapshot is refused and changes nothing; a node whose
//! log is new answers term queries and acknowledges no leader below its term floor.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use engine_core::EngineLimits;
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{RPCError, ReplicationClosed, StreamingError};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, VoteRequest};
use openraft::storage::Snapshot;
use openraft::RaftNetworkV2;
use replication::types::{SnapshotData, SnapshotMeta, Vote};
use replication::{ExchangeNode, FreshNodeGate, NetConfig, NetworkFactory};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CLOSE_BOUND: Duration = Duration::from_secs(5);

fn node_at(addr: &str) -> ExchangeNode {
    ExchangeNode { raft_addr: addr.to_string(), api_addr: String::new() }
}

async fn client_to(addr: &str, target: u64) -> replication::net::PeerClient {
    NetworkFactory::new(99, NetConfig::default()).new_client(target, &node_at(addr)).await
}

/// Starts one initialized node (a leader of one) with the given server limits.
async fn single_node(dir: &std::path::Path, net: NetConfig) -> TestNode {
    let node = TestNode::start_with(1, dir, "127.0.0.1:0", EngineLimits::default(), net).await;
    node.raft.initialize(BTreeMap::from([(1, node.node())])).await.unwrap();
    let nodes = [Some(node)];
    wait_leader(&nodes).await;
    let [node] = nodes;
    node.unwrap()
}

/// Sends `bytes` on a fresh connection and returns how the server ended it: `true` when it
/// closed the connection within the bound.
async fn closes_after(addr: &str, bytes: &[u8], shutdown_write: bool) -> bool {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    if shutdown_write {
        stream.shutdown().await.unwrap();
    }
    let mut buf = [0u8; 64];
    match tokio::time::timeout(CLOSE_BOUND, stream.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) => false, // it answered: not what a bad frame deserves
        Err(_) => false,
    }
}

/// A vote request the node answers (refusing or granting, either is an answer).
async fn answers_a_vote(addr: &str) -> bool {
    let mut client = client_to(addr, 1).await;
    let request = VoteRequest::new(Vote::new(1, 7), None);
    client.vote(request, RPCOption::new(Duration::from_secs(5))).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_frames_close_only_their_own_connection() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let net = NetConfig { frame_bytes_max: 1 << 20, frame_read_timeout_ms: 300, ..NetConfig::default() };
    let node = single_node(dir.path(), net).await;
    let addr = node.addr.clone();

    // An idle connection held open all along must not stop anyone else.
    let _idle = TcpStream::connect(&addr).await.unwrap();

    // A length far over the limit: refused from the header alone (nothing allocated).
    assert!(closes_after(&addr, &u32::MAX.to_le_bytes(), false).await, "oversize frame");
    assert!(closes_after(&addr, &((1u32 << 20) + 1).to_le_bytes(), false).await, "frame one byte over");
    // Garbage that does not decode as a request.
    let mut garbage = 6u32.to_le_bytes().to_vec();
    garbage.extend_from_slice(&[0xff, 0xee, 0xdd, 0xcc, 0xbb, 0xaa]);
    assert!(closes_after(&addr, &garbage, false).await, "garbage frame");
    // A valid request followed by trailing bytes inside the frame.
    // A frame cut short: the header promises 100 bytes, 10 come, then the peer's end closes.
    let mut truncated = 100u32.to_le_bytes().to_vec();
    truncated.extend_from_slice(&[0u8; 10]);
    assert!(closes_after(&addr, &truncated, true).await, "truncated frame");
    // Half a length, then silence: cut off after frame_read_timeout_ms.
    let started = Instant::now();
    assert!(closes_after(&addr, &[7, 0], false).await, "stalled frame");
    assert!(started.elapsed() >= Duration::from_millis(250), "stalled frame closed before its timeout");
    // A snapshot chunk (variant 5 of the request enum, an empty byte string) without a begin.
    let mut chunk = 2u32.to_le_bytes().to_vec();
    chunk.extend_from_slice(&[5, 0]);
    assert!(closes_after(&addr, &chunk, false).await, "chunk without a snapshot");
    // An empty frame.
    assert!(closes_after(&addr, &0u32.to_le_bytes(), false).await, "empty frame");

    // Many at once, with good requests among them.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let addr = addr.clone();
        let garbage = garbage.clone();
        tasks.push(tokio::spawn(async move {
            if i % 4 == 0 {
                answers_a_vote(&addr).await
            } else {
                closes_after(&addr, &garbage, false).await
            }
        }));
    }
    for task in tasks {
        assert!(task.await.unwrap());
    }

    // The node is still up, still leader, and still answers.
    assert!(answers_a_vote(&addr).await, "the server stopped answering after hostile frames");
    assert!(node.raft.as_leader().is_ok());
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_call_never_reuses_its_connection() {
    init_tracing();
    // A peer that reads requests and never answers, counting connections.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let silent = tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut sink = [0u8; 1024];
                while let Ok(n) = stream.read(&mut sink).await {
                    if n == 0 {
                        break;
                    }
                }
            });
        }
    });
    let mut client = client_to(&addr, 2).await;
    for call in 1..=3 {
        let request = VoteRequest::new(Vote::new(3, 99), None);
        let result = client.vote(request, RPCOption::new(Duration::from_millis(200))).await;
        assert!(matches!(result, Err(RPCError::Timeout(_))), "call {call}: {result:?}");
        // Each call after a timeout opened a new connection (an answer arriving late on the
        // old one would otherwise be taken for the next call's).
        assert_eq!(accepted.load(Ordering::SeqCst), call);
    }
    // Nobody listening: an error, never an answer.
    silent.abort();
    let _ = silent.await;
    let mut nobody = client_to(&addr, 2).await;
    let result = nobody
        .pre_vote(VoteRequest::new(Vote::new(3, 99), None), RPCOption::new(Duration::from_secs(2)))
        .await;
    assert!(result.is_err(), "a pre-vote to a dead address was answered: {result:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_vote_asks_the_peer_and_a_follower_with_a_leader_refuses() {
    init_tracing();
    let root = tempfile::tempdir().unwrap();
    let nodes = start_cluster(root.path(), 3, EngineLimits::default()).await;
    let leader = wait_leader(&nodes).await;
    let follower = nodes.iter().flatten().find(|n| n.raft.as_leader().is_err()).unwrap();
    let metrics = follower.raft.metrics().borrow_watched().clone();
    let mut client = client_to(&follower.addr, follower.id).await;
    // A would-be candidate one term ahead with the same log: a follower that hears from its
    // leader refuses (openraft's default client would have granted it without asking).
    let term = metrics.current_term + 1;
    let request = VoteRequest::new(Vote::new(term, 99), metrics.last_applied);
    let deadline = Instant::now() + PATIENCE;
    let response = loop {
        match client.pre_vote(request.clone(), RPCOption::new(Duration::from_secs(2))).await {
            Ok(response) => break response,
            Err(e) => {
                assert!(Instant::now() < deadline, "pre-vote not answered: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    assert!(!response.vote_granted, "a follower with a live leader granted a pre-vote: {response:?}");
    // And pre-vote changed nothing: the leader is still the leader, in the same term.
    assert!(nodes[leader].as_ref().unwrap().raft.as_leader().is_ok());
    assert_eq!(follower.raft.metrics().borrow_watched().current_term, metrics.current_term);
    for node in nodes.into_iter().flatten() {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_or_oversize_snapshot_is_refused_and_changes_nothing() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let net = NetConfig { snapshot_bytes_max: 1 << 20, snapshot_chunk_bytes: 4096, ..NetConfig::default() };
    let node = single_node(dir.path(), net).await;
    let before = node.sm.status().unwrap();
    let metrics = node.raft.metrics().borrow_watched().clone();
    let vote = metrics.vote;
    let mut client = client_to(&node.addr, 1).await;
    let never = std::future::pending::<ReplicationClosed>();

    // Garbage where an image should be: refused by the envelope check, before openraft.
    let meta = SnapshotMeta { last_log_id: metrics.last_applied, last_membership: Default::default() };
    let snapshot = Snapshot { meta: meta.clone(), snapshot: SnapshotData::new(vec![0xab; 10_000]) };
    let result = client.full_snapshot(vote, snapshot, never, RPCOption::new(Duration::from_secs(5))).await;
    assert!(matches!(result, Err(StreamingError::Unreachable(_))), "{result:?}");

    // Larger than the server accepts: refused from the announced size.
    let never = std::future::pending::<ReplicationClosed>();
    let snapshot = Snapshot { meta, snapshot: SnapshotData::new(vec![0; (1 << 20) + 1]) };
    let result = client.full_snapshot(vote, snapshot, never, RPCOption::new(Duration::from_secs(5))).await;
    assert!(result.is_err(), "{result:?}");

    assert_eq!(node.sm.status().unwrap(), before);
    assert!(node.raft.as_leader().is_ok(), "the node fell over on a bad snapshot");
    assert!(answers_a_vote(&node.addr).await);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_closes_the_connections_it_had() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let node = single_node(dir.path(), NetConfig::default()).await;
    let addr = node.addr.clone();
    assert!(answers_a_vote(&addr).await);
    // A peer's connection, open and idle when the node stops.
    let mut held = TcpStream::connect(&addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    node.stop().await;
    let mut buf = [0u8; 8];
    let read = tokio::time::timeout(CLOSE_BOUND, held.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "a stopped node kept a connection open: {read:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_log_acknowledges_no_leader_below_the_term_floor_it_learned() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let gate = FreshNodeGate::new(true);
    let node = TestNode::start_with(
        2,
        dir.path(),
        "127.0.0.1:0",
        EngineLimits::default(),
        NetConfig { gate: gate.clone(), ..NetConfig::default() },
    )
    .await;
    let net = NetConfig::default();
    let timeout = Duration::from_secs(5);
    let append = |term: u64| AppendEntriesRequest {
        vote: Vote::new_committed(term, 1),
        prev_log_id: None,
        entries: vec![],
        leader_commit: None,
    };
    let mut leader = client_to(&node.addr, 2).await;
    let option = || RPCOption::new(Duration::from_secs(5));

    // Floor unknown: the term is answered, every append refused, and Raft never sees it.
    assert_eq!(replication::net::query_term(&node.addr, &net, timeout).await, Some(0));
    let refused = leader.append_entries(append(5), option()).await;
    assert!(
        matches!(&refused, Err(RPCError::Unreachable(e)) if e.to_string().contains("acknowledges no leader's log yet")),
        "{refused:?}"
    );
    assert_eq!(node.raft.metrics().borrow_watched().current_term, 0, "the refused append reached Raft");

    // Floor 6 (what the other voters said): a leader of term 5 is still refused, one of 6 heard.
    gate.set_term_floor(6);
    assert_eq!(replication::net::query_term(&node.addr, &net, timeout).await, Some(6));
    let refused = leader.append_entries(append(5), option()).await;
    assert!(
        matches!(&refused, Err(RPCError::Unreachable(e)) if e.to_string().contains("below this node's term floor 6")),
        "{refused:?}"
    );
    let accepted = leader.append_entries(append(6), option()).await;
    assert!(matches!(accepted, Ok(AppendEntriesResponse::Success)), "{accepted:?}");
    // Raft's metrics follow its answer, not before it.
    let term_6 =
        node.raft.wait(Some(timeout)).metrics(|m| m.current_term == 6, "term 6 in the metrics").await;
    assert!(term_6.is_ok(), "{term_6:?}");

    // Votes stay closed until the node opens them (once caught up): the gate answers, echoing
    // the candidate; once open, Raft answers with the node's own vote (its leader's lease).
    let mut candidate = client_to(&node.addr, 2).await;
    let vote = candidate.vote(VoteRequest::new(Vote::new(7, 3), None), option()).await.unwrap();
    assert!(!vote.vote_granted && vote.vote == Vote::new(7, 3), "{vote:?}");
    gate.open_votes().unwrap();
    let vote = candidate.vote(VoteRequest::new(Vote::new(7, 3), None), option()).await.unwrap();
    assert_eq!(vote.vote, Vote::new_committed(6, 1), "{vote:?}");

    // A node past its floor answers its own term.
    assert_eq!(replication::net::query_term(&node.addr, &net, timeout).await, Some(6));
    node.stop().await;
}
