//! The log store on real journal files: openraft's own storage conformance suite, and what
//! survives a reopen (entries once their callback ran, the vote once save_vote returned,
//! truncation and purge).

use std::time::Duration;

use engine_core::{Command, EngineLimits};
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::{EntryPayload, RaftLogReader, StorageError};
use replication::types::{Entry, LogId, TypeConfig, Vote};
use replication::{Batch, EngineStateMachine, LogStore, LogStoreConfig, Origin, Proposal, ReplayMark};

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, EngineStateMachine, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, EngineStateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = LogStore::open(dir.path(), LogStoreConfig::default()).expect("open the log store");
        Ok((dir, store, EngineStateMachine::in_memory(EngineLimits::default())))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite_passes_on_journal_files() {
    Suite::test_all(Builder).await.expect("openraft's storage suite");
}

fn commands_entry(term: u64, index: u64, first_seq: u64, n: u64) -> Entry {
    let commands = (first_seq..first_seq + n)
        .map(|seq| Proposal {
            origin: Origin { node: 1, incarnation: 1, request: seq },
            timestamp_ns: seq * 10,
            command: Command::CreateUser,
            // Every other command executes a signed request.
            replay_mark: (seq % 2 == 0)
                .then_some(ReplayMark { signature: [seq as u8; 32], expires_ms: seq * 1_000 }),
        })
        .collect();
    Entry {
        log_id: LogId::new_term_index(term, index),
        payload: EntryPayload::Normal(Batch::Commands(commands)),
    }
}

/// A flush callback and where its result arrives.
fn flush_signal() -> (IOFlushed<TypeConfig>, tokio::sync::oneshot::Receiver<std::io::Result<()>>) {
    use openraft::async_runtime::Oneshot;
    let (tx, rx) = <openraft::TokioRuntime as openraft::AsyncRuntime>::Oneshot::channel();
    (IOFlushed::signal(tx), rx)
}

/// Appends and waits for the flush callback.
async fn append_durably(store: &mut LogStore, entries: Vec<Entry>) {
    let (callback, rx) = flush_signal();
    store.append(entries, callback).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), rx).await.expect("flushed in time").unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_vote_truncation_and_purge_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let small = LogStoreConfig {
        // Small segments: the entries below span several, so truncation and purge cross them.
        limits: journal::RaftLogLimits { segment_bytes: 16 * 1024, max_entry_bytes: 4 * 1024 },
        ..LogStoreConfig::default()
    };
    let vote = Vote::new_committed(3, 2);
    {
        let mut store = LogStore::open(dir.path(), small.clone()).unwrap();
        assert!(store.was_fresh());
        let mut entries = vec![Entry { log_id: LogId::new_term_index(1, 1), payload: EntryPayload::Blank }];
        for index in 2..=60 {
            entries.push(commands_entry(1, index, (index - 2) * 10 + 1, 10));
        }
        append_durably(&mut store, entries).await;
        store.save_vote(&vote).await.unwrap();
        store.truncate_after(Some(LogId::new_term_index(1, 50))).await.unwrap();
        append_durably(&mut store, vec![commands_entry(3, 51, 491, 5)]).await;
        store.purge(LogId::new_term_index(1, 20)).await.unwrap();
        store.save_committed(Some(LogId::new_term_index(3, 51))).await.unwrap();
    }
    let mut store = LogStore::open(dir.path(), small).unwrap();
    assert!(!store.was_fresh());
    let state = store.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(LogId::new_term_index(1, 20)));
    assert_eq!(state.last_log_id, Some(LogId::new_term_index(3, 51)));
    let mut reader = store.get_log_reader().await;
    assert_eq!(reader.read_vote().await.unwrap(), Some(vote));
    let entries = reader.try_get_log_entries(0..100).await.unwrap();
    let indexes: Vec<u64> = entries.iter().map(|e| e.log_id.index).collect();
    assert_eq!(indexes, (21..=51).collect::<Vec<_>>());
    assert_eq!(entries.last().unwrap(), &commands_entry(3, 51, 491, 5));
    assert_eq!(entries[0], commands_entry(1, 21, 191, 10));
    // A limited read stops early but never returns nothing for a non-empty range.
    let limited = reader.limited_get_log_entries(21, 52).await.unwrap();
    assert!(!limited.is_empty());
    assert!(limited.iter().zip(21..).all(|(e, i)| e.log_id.index == i));
    // A replication read from purged entries gets nothing, not the entries after them: its
    // request would pair them with the purged entry before `start` as `prev_log_id`.
    assert_eq!(reader.limited_get_log_entries(15, 30).await.unwrap(), Vec::<Entry>::new());
    let skipped = reader.try_get_log_entries(15..30).await.unwrap();
    assert_eq!(skipped.first().map(|e| e.log_id.index), Some(21));
}

/// What `RAFT_STATE` holds on disk, read as a restarted node reads it.
fn committed_on_disk(dir: &std::path::Path) -> Option<u64> {
    let (_, state) = journal::RaftStateFile::open(dir).unwrap();
    state.and_then(|s| s.committed).map(|p| p.index)
}

/// `RAFT_STATE` never names a committed position above what the log reports on disk: openraft
/// saves one as soon as the entries are submitted, before their sync, and a state file written
/// at once could reach the disk before them (a power loss would then leave a committed index
/// above a torn log, which the log refuses to open).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_position_is_written_only_once_its_entries_are_durable() {
    let dir = tempfile::tempdir().unwrap();
    let vote = Vote::new_committed(1, 1);
    {
        let mut store = LogStore::open(dir.path(), LogStoreConfig::default()).unwrap();
        let entries = (1..=10).map(|index| commands_entry(1, index, index, 1)).collect();
        append_durably(&mut store, entries).await;
        store.save_committed(Some(LogId::new_term_index(1, 10))).await.unwrap();
        // A vote is saved synced, after every earlier job: the committed position goes with it.
        store.save_vote(&vote).await.unwrap();
        assert_eq!(committed_on_disk(dir.path()), Some(10));
        // Entries 11..=15 are not on disk (not even appended): their committed position waits.
        store.save_committed(Some(LogId::new_term_index(1, 15))).await.unwrap();
        store.save_vote(&vote).await.unwrap();
        assert_eq!(committed_on_disk(dir.path()), Some(10), "written before its entries are durable");
        assert_eq!(store.read_committed().await.unwrap(), Some(LogId::new_term_index(1, 15)));
        // Once they are durable, it is written (by the time the store is dropped).
        let entries = (11..=15).map(|index| commands_entry(1, index, index, 1)).collect();
        append_durably(&mut store, entries).await;
    }
    assert_eq!(committed_on_disk(dir.path()), Some(15));
    let mut store = LogStore::open(dir.path(), LogStoreConfig::default()).unwrap();
    assert_eq!(store.read_committed().await.unwrap(), Some(LogId::new_term_index(1, 15)));
    assert_eq!(store.get_log_reader().await.read_vote().await.unwrap(), Some(vote));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_run_in_submission_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = LogStore::open(dir.path(), LogStoreConfig::default()).unwrap();
    for round in 0..5u64 {
        let mut flushed = Vec::new();
        for i in 1..=100u64 {
            let index = round * 100 + i;
            let (callback, rx) = flush_signal();
            store.append(vec![commands_entry(1, index, index, 1)], callback).await.unwrap();
            flushed.push(rx);
        }
        // Once the last append of the round is reported durable, every earlier one must have
        // been reported already: callbacks run in submission order.
        let last = flushed.pop().unwrap();
        tokio::time::timeout(Duration::from_secs(10), last).await.expect("flushed in time").unwrap().unwrap();
        for (i, mut rx) in flushed.into_iter().enumerate() {
            match rx.try_recv() {
                Ok(result) => result.unwrap(),
                Err(e) => panic!("round {round}: append {} not reported when a later one was: {e:?}", i + 1),
            }
        }
    }
    let entries = store.get_log_reader().await.try_get_log_entries(1..=500).await.unwrap();
    assert_eq!(entries.len(), 500);
}

/// Entries written before replay marks were carried (kind `Commands`) still read, without marks;
/// entries written now carry them (kind `MarkedCommands`) and read back equal.
#[test]
fn commands_written_with_and_without_replay_marks_read_back() {
    use replication::log_store::decode_entry;
    use replication::types::UnmarkedProposal;
    let unmarked: Vec<UnmarkedProposal> = (1..=3)
        .map(|seq| UnmarkedProposal {
            origin: Origin { node: 1, incarnation: 1, request: seq },
            timestamp_ns: seq * 10,
            command: Command::CreateUser,
        })
        .collect();
    let mut payload = Vec::new();
    codec::encode_append(&unmarked, &mut payload).unwrap();
    let old = journal::LogEntry { index: 2, term: 1, kind: journal::EntryKind::Commands, payload };
    let EntryPayload::Normal(Batch::Commands(read)) = decode_entry(&old).unwrap().payload else {
        panic!("an old command entry reads as commands")
    };
    assert_eq!(read, unmarked.iter().map(|&p| Proposal::from(p)).collect::<Vec<_>>());
    assert!(read.iter().all(|p| p.replay_mark.is_none()));

    let entry = commands_entry(1, 2, 1, 4);
    let EntryPayload::Normal(Batch::Commands(proposals)) = &entry.payload else { unreachable!() };
    let mut payload = Vec::new();
    codec::encode_append(proposals, &mut payload).unwrap();
    let new = journal::LogEntry { index: 2, term: 1, kind: journal::EntryKind::MarkedCommands, payload };
    assert_eq!(decode_entry(&new).unwrap(), entry);
}
