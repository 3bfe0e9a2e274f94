//! Who belongs to the cluster: forming it, adding and removing members
//! (`exctl cluster add|remove|status` through the admin API), and the rule
//! that a node with a new log does not vote until it has caught up.
//!
//! Forming: the node configured with `bootstrap = true` forms the cluster
//! alone (it is its only voter), then adds every other configured member as
//! a learner and promotes the voting ones. Before it forms anything it asks
//! the other members' `/health` whether a cluster exists, and forms only
//! when a majority of the voting members answer that they hold no log: a
//! bootstrap node restarted with a wiped disk joins the cluster that exists
//! instead of forming a second one beside it.
//!
//! What this module must never do: let a node with a new log vote before it
//! holds the leader's committed log (it may have voted, or acknowledged
//! entries, before it lost its disk), or change the membership from a node
//! that is not the leader.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use replication::openraft::async_runtime::watch::WatchReceiver;
use replication::openraft::{ChangeMembers, ServerState};
use replication::{ExchangeNode, FreshNodeGate, NetConfig};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Cluster, ProposeError, Raft};
use crate::config::{ClusterConfig, MemberConfig};

/// How often a forming node asks its peers again, and a new node checks
/// whether it has caught up.
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// How long one `/health` request to a peer may take.
const HEALTH_TIMEOUT: Duration = Duration::from_millis(1_000);
/// The largest `/health` answer read from a peer.
const HEALTH_BYTES_MAX: u64 = 64 * 1024;
/// How long a fresh node waits for one voter's answer to its term query.
const TERM_QUERY_TIMEOUT: Duration = Duration::from_millis(500);
/// A learner is promoted to voter once its log is within this many entries
/// of the leader's: promoting one far behind would stall commits until it
/// caught up, if the majority needs it.
const PROMOTE_LAG_ENTRIES_MAX: u64 = 100;

/// A member to add, as `POST /admin/cluster/members` names it.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberChange {
    pub id: u64,
    /// Its Raft address, `HOST:PORT`.
    pub raft: String,
    /// Its REST API address, `HOST:PORT`.
    pub api: String,
    /// Add it as a learner (reads and market data, no vote).
    #[serde(default)]
    pub learner: bool,
}

/// Why a membership change was not made.
#[derive(Debug)]
pub enum MembershipError {
    /// Membership changes go through the leader.
    NotLeader { leader: Option<String> },
    /// This node leads but cannot change anything right now (says why).
    Unconfirmed(String),
    /// The request is not a change that can be made.
    Invalid(String),
    /// The node was added as a learner but did not catch up in time to be
    /// promoted.
    NotCaughtUp(String),
    /// Raft refused or could not finish the change.
    Failed(String),
}

/// One member as `GET /admin/cluster` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct MemberStatus {
    pub id: u64,
    pub role: &'static str,
    pub raft: String,
    pub api: String,
    /// The last log index the leader knows this member holds (on the
    /// leader only).
    pub matched_index: Option<u64>,
}

/// The cluster's membership as this node knows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct MembershipStatus {
    #[serde(flatten)]
    pub node: super::ClusterStatus,
    /// The log index of the membership in force.
    pub membership_index: Option<u64>,
    /// True while a change is under way (joint consensus).
    pub changing: bool,
    pub members: Vec<MemberStatus>,
}

impl Cluster {
    /// The membership in force and, on the leader, how far each member is.
    pub fn membership(&self) -> MembershipStatus {
        let metrics = self.raft.metrics().borrow_watched().clone();
        let stored = &metrics.membership_config;
        let membership = stored.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let matched = |id: &u64| {
            let replication = metrics.replication.as_ref()?;
            replication.get(id).and_then(|log_id| log_id.as_ref().map(|l| l.index))
        };
        let members = membership
            .nodes()
            .map(|(id, node)| MemberStatus {
                id: *id,
                role: if voters.contains(id) { "voter" } else { "learner" },
                raft: node.raft_addr.clone(),
                api: node.api_addr.clone(),
                matched_index: matched(id),
            })
            .collect();
        MembershipStatus {
            node: self.status(),
            membership_index: stored.log_id().as_ref().map(|l| l.index),
            changing: membership.get_joint_config().len() > 1,
            members,
        }
    }

    /// Adds a member: as a learner, then (unless it is to stay one) as a
    /// voter once its log is close to the leader's, or `NotCaughtUp` after
    /// `catch_up_timeout` (it stays a learner; ask again to promote it).
    pub async fn add_member(
        &self,
        change: MemberChange,
        catch_up_timeout: Duration,
    ) -> Result<MembershipStatus, MembershipError> {
        self.leading_for_membership()?;
        check_member(&change)?;
        let current = self.membership();
        if let Some(known) = current.members.iter().find(|m| m.id == change.id) {
            if known.raft != change.raft || known.api != change.api {
                return Err(MembershipError::Invalid(format!(
                    "node {} is already a member at raft {} / api {}: remove it first to change its addresses",
                    change.id, known.raft, known.api
                )));
            }
            if known.role == "voter" && change.learner {
                return Err(MembershipError::Invalid(format!(
                    "node {} is a voter: remove it, then add it as a learner",
                    change.id
                )));
            }
        }
        let node = ExchangeNode { raft_addr: change.raft.clone(), api_addr: change.api.clone() };
        self.raft.add_learner(change.id, node, false).await.map_err(|e| failed("adding the learner", e))?;
        tracing::info!("cluster: node {} added as a learner ({})", change.id, change.raft);
        if !change.learner {
            self.wait_caught_up(change.id, catch_up_timeout).await?;
            self.raft
                .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([change.id])), false)
                .await
                .map_err(|e| failed("promoting the learner to voter", e))?;
            tracing::info!("cluster: node {} is a voter", change.id);
        }
        Ok(self.membership())
    }

    /// Removes a member (voter or learner). The last voter cannot go.
    pub async fn remove_member(&self, id: u64) -> Result<MembershipStatus, MembershipError> {
        self.leading_for_membership()?;
        let current = self.membership();
        let Some(member) = current.members.iter().find(|m| m.id == id) else {
            return Err(MembershipError::Invalid(format!("node {id} is not a member of the cluster")));
        };
        let ids = BTreeSet::from([id]);
        let change = if member.role == "voter" {
            if current.members.iter().filter(|m| m.role == "voter").count() == 1 {
                return Err(MembershipError::Invalid(format!(
                    "node {id} is the last voter: a cluster needs one"
                )));
            }
            ChangeMembers::RemoveVoters(ids)
        } else {
            ChangeMembers::RemoveNodes(ids)
        };
        self.raft.change_membership(change, false).await.map_err(|e| failed("removing the member", e))?;
        tracing::info!("cluster: node {id} removed");
        Ok(self.membership())
    }

    fn leading_for_membership(&self) -> Result<(), MembershipError> {
        self.check_leading().map_err(|error| match error {
            ProposeError::NotLeader { leader } => MembershipError::NotLeader { leader },
            ProposeError::Unconfirmed(why) => MembershipError::Unconfirmed(why),
            ProposeError::Unknown(why) => MembershipError::Failed(why),
        })
    }

    async fn wait_caught_up(&self, id: u64, timeout: Duration) -> Result<(), MembershipError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let metrics = self.raft.metrics().borrow_watched().clone();
            let last = metrics.last_log_index.unwrap_or(0);
            let matched = metrics
                .replication
                .as_ref()
                .and_then(|r| r.get(&id).cloned().flatten())
                .map(|log_id| log_id.index);
            if matched.is_some_and(|m| m + PROMOTE_LAG_ENTRIES_MAX >= last) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(MembershipError::NotCaughtUp(format!(
                    "node {id} is a learner now, but its log ({}) is not within {PROMOTE_LAG_ENTRIES_MAX} entries of \
                     the leader's ({last}) after {} ms: check that it runs and reaches this node, then add it again \
                     to promote it",
                    matched.map_or("empty".to_string(), |m| format!("at index {m}")),
                    timeout.as_millis()
                )));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

fn check_member(change: &MemberChange) -> Result<(), MembershipError> {
    if change.id == 0 {
        return Err(MembershipError::Invalid("id: a member's id must be at least 1".into()));
    }
    for (name, address) in [("raft", &change.raft), ("api", &change.api)] {
        let valid = address.len() <= 255
            && address
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !valid {
            return Err(MembershipError::Invalid(format!("{name}: {address:?} is not HOST:PORT")));
        }
    }
    Ok(())
}

fn failed(what: &str, error: impl std::fmt::Display) -> MembershipError {
    MembershipError::Failed(format!("{what}: {error}"))
}

fn node_of(member: &MemberConfig) -> ExchangeNode {
    ExchangeNode { raft_addr: member.raft.clone(), api_addr: member.api.clone() }
}

/// Forms the cluster from this (bootstrap) node alone, once a majority of
/// the voting members answer that they hold no log, then adds the others.
/// If a member answers that it holds a log, a cluster exists: this node
/// joins it as a new node would, and forms nothing.
pub(super) async fn form(raft: Raft, config: ClusterConfig, gate: FreshNodeGate) {
    let voters_needed = config.members.iter().filter(|m| !m.learner).count() / 2 + 1;
    let mut waiting_logged = false;
    loop {
        let mut empty_voters = 1; // this node
        for member in config.members.iter().filter(|m| m.id != config.node_id) {
            let Ok(health) = health_of(&member.api).await else { continue };
            let cluster = &health["cluster"];
            if !cluster.is_object() {
                continue;
            }
            if !cluster["last_log_index"].is_null() {
                tracing::warn!(
                    "cluster: node {} already holds a log: a cluster exists, so this node (bootstrap = true, empty \
                     log) joins it instead of forming one; it votes once it has caught up",
                    member.id
                );
                return;
            }
            if !member.learner {
                empty_voters += 1;
            }
        }
        if empty_voters >= voters_needed {
            break;
        }
        if !waiting_logged {
            tracing::info!(
                "cluster: waiting until {voters_needed} voting members (this one included) answer that they hold \
                 no log before forming the cluster"
            );
            waiting_logged = true;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    let me = config.me();
    if let Err(error) = raft.initialize(BTreeMap::from([(me.id, node_of(me))])).await {
        tracing::error!("cluster: cannot form the cluster: {error}");
        return;
    }
    // A majority held no log: no term was ever used, nothing to forget.
    gate.set_term_floor(0);
    if let Err(error) = gate.open_votes() {
        // Without votes the cluster cannot elect; stopping says why.
        tracing::error!("cluster: formed, but cannot record that this node votes: {error}");
        return;
    }
    raft.runtime_config().elect(true);
    tracing::info!("cluster: formed with node {} as its only voter; adding the other members", me.id);
    finish_forming(raft, config).await;
}

/// On the bootstrap node: while the membership is this node alone (just
/// formed, or formed and then stopped before it could add anyone), adds
/// the configured members as learners and promotes the voting ones.
pub(super) async fn finish_forming(raft: Raft, config: ClusterConfig) {
    let others: Vec<&MemberConfig> = config.members.iter().filter(|m| m.id != config.node_id).collect();
    if others.is_empty() {
        return;
    }
    // Only this node can lead a membership of this node alone.
    let led = raft
        .wait(Some(Duration::from_secs(10)))
        .state(ServerState::Leader, "the bootstrap node leads the cluster it formed")
        .await;
    if led.is_err() {
        return;
    }
    let metrics = raft.metrics().borrow_watched().clone();
    let nodes: Vec<u64> = metrics.membership_config.membership().nodes().map(|(id, _)| *id).collect();
    if nodes != [config.node_id] {
        return;
    }
    for member in &others {
        while let Err(error) = raft.add_learner(member.id, node_of(member), false).await {
            tracing::warn!("cluster: cannot add node {} yet: {error}", member.id);
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
    let voters: BTreeSet<u64> = others.iter().filter(|m| !m.learner).map(|m| m.id).collect();
    if !voters.is_empty() {
        while let Err(error) = raft.change_membership(ChangeMembers::AddVoterIds(voters.clone()), false).await
        {
            tracing::warn!("cluster: cannot make nodes {voters:?} voters yet: {error}");
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
    tracing::info!(
        "cluster: members added: voters {:?}, learners {:?}",
        voters,
        others.iter().filter(|m| m.learner).map(|m| m.id).collect::<Vec<_>>()
    );
}

/// On a node whose log was new at start: asks the other configured voters
/// for their terms until enough have answered (`replication::gate`), and
/// sets the floor below which this node acknowledges no leader's log. A
/// node configured as a learner counts in no quorum and needs none.
pub(super) async fn learn_term_floor(config: ClusterConfig, net: NetConfig, gate: FreshNodeGate) {
    let me = config.me();
    let voters = config.members.iter().filter(|m| !m.learner).count();
    let others: BTreeMap<u64, String> = config
        .members
        .iter()
        .filter(|m| !m.learner && m.id != me.id)
        .map(|m| (m.id, m.raft.clone()))
        .collect();
    let needed = replication::gate::answers_needed(voters, !me.learner);
    if needed == 0 {
        gate.set_term_floor(0);
        return;
    }
    let peers: Vec<u64> = others.keys().copied().collect();
    replication::gate::learn_term_floor(&gate, &peers, needed, |peer| {
        let (addr, net) = (others[&peer].clone(), net.clone());
        async move { replication::net::query_term(&addr, &net, TERM_QUERY_TIMEOUT).await }
    })
    .await;
}

/// On a node whose log was new at start: once a leader (not this node) is
/// known and this node has applied up to the leader's committed index,
/// opens the vote gate and lets it stand for election.
pub(super) async fn open_votes_when_caught_up(raft: Raft, me: u64, gate: FreshNodeGate) {
    loop {
        tokio::time::sleep(POLL_INTERVAL).await;
        if gate.votes_open() {
            return;
        }
        let metrics = raft.metrics().borrow_watched().clone();
        if metrics.state == ServerState::Shutdown {
            return;
        }
        let Some(leader) = metrics.current_leader.filter(|leader| *leader != me) else { continue };
        let Some(node) = metrics.membership_config.membership().get_node(&leader).cloned() else { continue };
        let Ok(health) = health_of(&node.api_addr).await else { continue };
        let Some(target) = health["cluster"]["committed_index"].as_u64() else { continue };
        loop {
            let metrics = raft.metrics().borrow_watched().clone();
            if metrics.current_leader != Some(leader) || metrics.state == ServerState::Shutdown {
                break;
            }
            let caught_up = metrics.last_applied.is_some_and(|applied| applied.index >= target);
            // Caught up means acknowledged a leader's log, which needs the floor.
            if caught_up && gate.term_floor().is_some() {
                if let Err(error) = gate.open_votes() {
                    tracing::error!(
                        "cluster: caught up, but cannot record that this node votes (tried again): {error}"
                    );
                    tokio::time::sleep(POLL_INTERVAL).await;
                    continue;
                }
                raft.runtime_config().elect(true);
                tracing::info!(
                    "cluster: this node's new log has caught up with leader {leader} (index {target}): it votes \
                     and may stand for election from now on"
                );
                return;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

/// A peer's `GET /health` answer, over plain HTTP/1.1.
async fn health_of(api: &str) -> Result<Value, String> {
    let request = async {
        let mut stream = tokio::net::TcpStream::connect(api).await.map_err(|e| e.to_string())?;
        let head = format!("GET /health HTTP/1.1\r\nHost: {api}\r\nConnection: close\r\n\r\n");
        stream.write_all(head.as_bytes()).await.map_err(|e| e.to_string())?;
        let mut answer = Vec::new();
        stream.take(HEALTH_BYTES_MAX).read_to_end(&mut answer).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(answer)
    };
    let answer =
        tokio::time::timeout(HEALTH_TIMEOUT, request).await.map_err(|_| "timed out".to_string())??;
    let split = answer.windows(4).position(|w| w == b"\r\n\r\n").ok_or("no end of headers")?;
    if !answer.starts_with(b"HTTP/1.1 200") {
        return Err("not 200 OK".into());
    }
    serde_json::from_slice(&answer[split + 4..]).map_err(|e| e.to_string())
}
