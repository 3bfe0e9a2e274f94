//! A cluster of real `exchange` processes: elections, order entry through
//! the leader only, every node applying the same commands, and failover
//! when the leader is killed (SIGKILL), paused (SIGSTOP) or cut off (a
//! partition between network namespaces), with every acknowledged order
//! still there afterwards.

#[path = "server/cluster.rs"]
mod cluster;
mod server;

use std::time::{Duration, Instant};

use cluster::{
    market_trades, place_some, wait_for_other_leader, wait_written, Acked, Cluster, Namespaces, Node,
    Partition, SIGCONT, SIGKILL, SIGSTOP,
};
use serde_json::json;
use server::{Client, Key};

#[test]
fn three_nodes_take_orders_through_the_leader_and_survive_losing_it() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.leader();
    let keys = cluster.nodes[leader].client().demo(4);
    let mut acked = Vec::new();
    place_some(&cluster.nodes[leader].client(), &keys, 0, &mut acked);

    // A follower refuses order entry and names the leader, in both APIs.
    let follower = (leader + 1) % 3;
    let leader_api = cluster.nodes[leader].api.to_string();
    let client = cluster.nodes[follower].client();
    let body = json!({ "market": "BTC-USDT", "side": "buy", "type": "limit", "price": "1", "quantity": "1" });
    let (status, answer) = client.place(&keys[0], body);
    assert_eq!(status, 421, "{answer}");
    assert_eq!(answer["error"]["code"], "not_leader");
    assert_eq!(answer["error"]["leader"], leader_api.as_str());
    let (status, head, answer) = client.binance(
        &keys[0],
        "POST",
        "/api/v3/order",
        "symbol=BTCUSDT&side=BUY&type=LIMIT&timeInForce=GTC&price=1&quantity=1",
    );
    assert_eq!((status, answer["code"].as_i64()), (503, Some(-1001)), "{answer}");
    assert!(head.to_lowercase().contains(&format!("x-leader: {leader_api}")), "{head}");

    // Every node applies the same commands: same book, same balances, and
    // each authenticates the keys created through the leader.
    cluster.assert_converged(&cluster.nodes[leader].client(), &keys, "the first orders");

    // Failovers: the leader is killed (or paused), another takes over, and
    // every order acknowledged so far is there; the old one rejoins.
    let mut failovers = Vec::new();
    for round in 1..=10 {
        let old = cluster.leader();
        let cut_at = Instant::now();
        if round % 2 == 0 {
            cluster.nodes[old].signal(SIGSTOP);
        } else {
            cluster.nodes[old].signal(SIGKILL);
            cluster.nodes[old].kill();
        }
        let new = wait_for_other_leader(&cluster, old);
        let client = cluster.nodes[new].client();
        place_some(&client, &keys, round, &mut acked);
        // From the fault to the first orders acknowledged by the new leader
        // (printed, never asserted: the machine is shared).
        failovers.push((round % 2 == 0, cut_at.elapsed()));
        for order in &acked {
            let (status, found) = client.signed(
                &keys[order.key],
                "GET",
                "/order",
                &format!("order_id={}", order.order_id),
                None,
            );
            assert_eq!(status, 200, "order {} lost after failover {round}: {found}", order.order_id);
        }
        if round % 2 == 0 {
            cluster.nodes[old].signal(SIGCONT);
        } else {
            cluster.nodes[old].start();
        }
        cluster.assert_converged(&client, &keys, &format!("failover {round}"));
    }
    for (paused, name) in [(false, "SIGKILL"), (true, "SIGSTOP")] {
        let mut times: Vec<Duration> =
            failovers.iter().filter(|(p, _)| *p == paused).map(|(_, t)| *t).collect();
        times.sort();
        eprintln!(
            "failover after {name} of the leader, to the new leader's first acknowledged orders: \
             median {:?}, max {:?} ({} times)",
            times[times.len() / 2],
            times[times.len() - 1],
            times.len()
        );
    }
}

#[test]
fn a_leader_cut_off_from_the_others_is_replaced_and_loses_nothing_acknowledged() {
    if let Err(why) = Namespaces::available() {
        eprintln!("skipped: a partition between network namespaces cannot be made here: {why}");
        return;
    }
    let cluster = Cluster::start(3);
    assert!(cluster.in_namespaces());
    let leader = cluster.leader();
    let keys = cluster.nodes[leader].client().demo(2);
    let mut acked = Vec::new();
    place_some(&cluster.nodes[leader].client(), &keys, 0, &mut acked);

    let old_id = cluster.nodes[leader].id;
    let others: Vec<u64> = cluster.nodes.iter().map(|n| n.id).filter(|id| *id != old_id).collect();
    let partition = Partition::isolate(&cluster, &[old_id], &others);
    let new = wait_for_other_leader(&cluster, leader);
    // The old leader no longer hears a majority: it takes no order (a
    // refusal, or at worst "unknown" if it took one just as it was cut off).
    let (status, answer) = cluster.nodes[leader].client().place(
        &keys[0],
        json!({ "market": "BTC-USDT", "side": "buy", "type": "limit", "price": "50", "quantity": "0.01",
                "client_order_id": "cut-off-1" }),
    );
    // 421: refused as not applied; 504: taken just as it was cut off, outcome unknown.
    assert!(matches!(status, 421 | 504), "a leader cut off from the majority answered {status}: {answer}");
    if status == 421 {
        // It still leads its own term (nothing newer reached it): the refusal names the cause.
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("has heard from no majority"), "{answer}");
    }
    place_some(&cluster.nodes[new].client(), &keys, 1, &mut acked);
    drop(partition);

    // Healed: the old leader follows the new one and holds what it holds.
    let client = cluster.nodes[new].client();
    place_some(&client, &keys, 2, &mut acked);
    cluster.assert_converged(&client, &keys, "the partition healed");
    for node in &cluster.nodes {
        for order in &acked {
            let (status, found) = node.client().signed(
                &keys[order.key],
                "GET",
                "/order",
                &format!("order_id={}", order.order_id),
                None,
            );
            assert_eq!(status, 200, "node {}: acknowledged order {} lost: {found}", node.id, order.order_id);
        }
    }
    if status == 421 {
        // Refused as not applied: it must be nowhere.
        let (found, _) = client.signed(&keys[0], "GET", "/order", "client_order_id=cut-off-1", None);
        assert_eq!(found, 404, "an order refused as not applied was applied");
    }
}

#[test]
fn five_nodes_keep_trading_with_two_of_them_down() {
    let mut cluster = Cluster::start(5);
    let leader = cluster.leader();
    let keys = cluster.nodes[leader].client().demo(2);
    let mut acked = Vec::new();
    place_some(&cluster.nodes[leader].client(), &keys, 0, &mut acked);
    // Two followers down, then the leader too: three of five still decide.
    let followers: Vec<usize> = (0..5).filter(|i| *i != leader).take(2).collect();
    for &i in &followers {
        cluster.nodes[i].kill();
    }
    place_some(&cluster.nodes[leader].client(), &keys, 1, &mut acked);
    for &i in &followers {
        cluster.nodes[i].start();
    }
    let seq = cluster.nodes[leader].health().unwrap()["seq"].as_u64().unwrap();
    cluster.wait_applied(seq);
    cluster.nodes[leader].kill();
    let new = wait_for_other_leader(&cluster, leader);
    let client = cluster.nodes[new].client();
    place_some(&client, &keys, 2, &mut acked);
    for order in &acked {
        let (status, found) =
            client.signed(&keys[order.key], "GET", "/order", &format!("order_id={}", order.order_id), None);
        assert_eq!(status, 200, "order {} lost: {found}", order.order_id);
    }
    cluster.nodes[leader].start();
    cluster.assert_converged(&client, &keys, "the old leader restarted");
}

/// Every order in `acked` is found through `client`.
fn assert_all_found(client: &Client, keys: &[Key], acked: &[Acked], after: &str) {
    for order in acked {
        let (status, found) =
            client.signed(&keys[order.key], "GET", "/order", &format!("order_id={}", order.order_id), None);
        assert_eq!(status, 200, "order {} lost after {after}: {found}", order.order_id);
    }
}

#[test]
fn a_node_restarted_with_a_wiped_disk_votes_only_once_it_has_caught_up() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.leader();
    let keys = cluster.nodes[leader].client().demo(2);
    let mut acked = Vec::new();
    place_some(&cluster.nodes[leader].client(), &keys, 0, &mut acked);

    // A follower loses its disk while orders go on: it comes back empty,
    // the leader sends it the whole log, and it votes once caught up.
    let wiped = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    cluster.nodes[wiped].kill();
    cluster.nodes[wiped].wipe();
    place_some(&cluster.nodes[leader].client(), &keys, 1, &mut acked);
    cluster.nodes[wiped].start();
    cluster.nodes[wiped].wait_voting();
    cluster.assert_converged(&cluster.nodes[leader].client(), &keys, "the wiped follower rejoined");
    assert_all_found(&cluster.nodes[wiped].client(), &keys, &acked, "the wipe");

    // The hazard a wiped node must not create: it may have acknowledged
    // entries before it lost them. With the leader down, the wiped node and
    // the remaining follower must not elect a leader between them on the
    // strength of the wiped node's vote.
    for node in &mut cluster.nodes {
        node.kill();
    }
    cluster.nodes[wiped].wipe();
    cluster.nodes[wiped].start();
    cluster.nodes[other].start();
    // Ten election timeouts and more (behaviour, not speed: a vote would
    // elect a leader in one).
    std::thread::sleep(Duration::from_secs(3));
    for index in [wiped, other] {
        let health = cluster.nodes[index].health().unwrap();
        assert_ne!(
            health["cluster"]["role"], "leader",
            "node {index} leads without a caught-up majority: {health}"
        );
    }
    assert_eq!(cluster.nodes[wiped].health().unwrap()["cluster"]["votes"], false);

    // The old leader returns: a leader is elected, the wiped node catches
    // up and votes, and nothing acknowledged is lost.
    cluster.nodes[leader].start();
    let leader = cluster.leader();
    cluster.nodes[wiped].wait_voting();
    let client = cluster.nodes[leader].client();
    place_some(&client, &keys, 2, &mut acked);
    cluster.assert_converged(&client, &keys, "the second wipe");
    for node in &cluster.nodes {
        assert_all_found(&node.client(), &keys, &acked, "the second wipe");
    }
}

#[test]
fn a_wiped_voter_never_helps_a_stale_leader_overwrite_what_a_newer_term_committed() {
    if let Err(why) = Namespaces::available() {
        eprintln!("skipped: a partition between network namespaces cannot be made here: {why}");
        return;
    }
    let mut cluster = Cluster::start(3);
    let old = cluster.leader();
    let keys = cluster.nodes[old].client().demo(2);
    let mut acked = Vec::new();
    place_some(&cluster.nodes[old].client(), &keys, 0, &mut acked);

    // The leader is cut off; the other two elect one of them in a newer
    // term and commit orders together.
    let ids: Vec<u64> = cluster.nodes.iter().map(|n| n.id).collect();
    let id = |index: usize| ids[index];
    let others: Vec<u64> = (0..3).filter(|i| *i != old).map(id).collect();
    let first = Partition::isolate(&cluster, &[id(old)], &others);
    let new = wait_for_other_leader(&cluster, old);
    place_some(&cluster.nodes[new].client(), &keys, 1, &mut acked);
    let wiped = (0..3).find(|i| *i != old && *i != new).unwrap();

    // The node that helped commit them loses its disk; the old leader
    // restarts (and restores its leadership of the old term); the new
    // leader is cut off from both. The old leader's appends reach only the
    // wiped node, which has forgotten the newer term: were it to
    // acknowledge them, the two would be a majority in the old term and
    // overwrite what the newer one committed.
    cluster.nodes[old].kill();
    cluster.nodes[wiped].kill();
    cluster.nodes[wiped].wipe();
    let second = Partition::isolate(&cluster, &[id(new)], &[id(old), id(wiped)]);
    drop(first);
    cluster.nodes[old].start();
    cluster.nodes[wiped].start();
    // Many heartbeats (behaviour, not speed: an acknowledgement takes one).
    std::thread::sleep(Duration::from_secs(2));
    let health = cluster.nodes[wiped].health().unwrap();
    assert!(
        health["cluster"]["term_floor"].is_null() && health["cluster"]["last_log_index"].is_null(),
        "the wiped node acknowledged a log before it could learn the newer term: {health}"
    );
    let (status, answer) = cluster.nodes[old].client().place(
        &keys[0],
        json!({ "market": "BTC-USDT", "side": "buy", "type": "limit", "price": "50", "quantity": "0.01",
                "client_order_id": "stale-term-1" }),
    );
    // 421: refused as not applied; 504: proposed, never committed.
    assert!(
        matches!(status, 421 | 504),
        "the stale leader took an order with the wiped node's help: {status} {answer}"
    );

    // Healed: the wiped node learns the newer term, catches up and votes;
    // everything acknowledged is on every node.
    drop(second);
    cluster.nodes[wiped].wait_voting();
    let leader = cluster.leader();
    let client = cluster.nodes[leader].client();
    place_some(&client, &keys, 2, &mut acked);
    cluster.assert_converged(&client, &keys, "the stale leader met the wiped node");
    for node in &cluster.nodes {
        assert_all_found(&node.client(), &keys, &acked, "the stale leader met the wiped node");
    }
    let floor = cluster.nodes[wiped].health().unwrap()["cluster"]["term_floor"].as_u64();
    assert!(floor.is_some_and(|f| f >= 2), "the wiped node's term floor: {floor:?}");
}

#[test]
fn learners_and_voters_join_and_leave_through_the_admin_api() {
    // On loopback: the nodes added later need no namespace of their own.
    let mut cluster = Cluster::start_with(3, false, "");
    let leader = cluster.leader();
    let keys = cluster.nodes[leader].client().demo(2);
    let mut acked = Vec::new();
    place_some(&cluster.nodes[leader].client(), &keys, 0, &mut acked);
    let admin = cluster.nodes[leader].client();
    let member = |node: &Node, learner: bool| {
        json!({ "id": node.id, "raft": format!("{}:{}", node.raft_ip, raft_port(node)),
                "api": node.api.to_string(), "learner": learner })
    };

    // A learner: added through the leader, it follows the log, serves
    // reads, and refuses order entry naming the leader.
    let learner = cluster.new_node(true);
    cluster.nodes[learner].start();
    let body = member(&cluster.nodes[learner], true);
    let (status, refused) =
        cluster.nodes[(leader + 1) % 3].client().admin("POST", "/admin/cluster/members", body.clone());
    assert_eq!((status, refused["error"]["code"].as_str()), (421, Some("not_leader")), "{refused}");
    let membership = admin.admin_ok("POST", "/admin/cluster/members", body);
    let roles: Vec<(u64, String)> = membership["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["id"].as_u64().unwrap(), m["role"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(roles, [(1, "voter".into()), (2, "voter".into()), (3, "voter".into()), (4, "learner".into())]);
    cluster.assert_converged(&admin, &keys, "a learner joined");
    let learner_client = cluster.nodes[learner].client();
    assert_eq!(learner_client.get("/health").1["cluster"]["role"], "learner");
    let (status, answer) = learner_client.place(
        &keys[0],
        json!({ "market": "BTC-USDT", "side": "buy", "type": "limit", "price": "1", "quantity": "1" }),
    );
    assert_eq!(status, 421, "{answer}");
    assert_eq!(answer["error"]["leader"], cluster.nodes[leader].api.to_string().as_str());

    // A voter added while orders go on; then both leave again.
    let voter = cluster.new_node(false);
    cluster.nodes[voter].start();
    let membership = admin.admin_ok("POST", "/admin/cluster/members", member(&cluster.nodes[voter], false));
    let voters = membership["members"].as_array().unwrap().iter().filter(|m| m["role"] == "voter").count();
    assert_eq!(voters, 4, "{membership}");
    cluster.nodes[voter].wait_voting();
    place_some(&admin, &keys, 1, &mut acked);
    cluster.assert_converged(&admin, &keys, "a voter joined");
    let (status, refused) = admin.admin("DELETE", "/admin/cluster/members", json!({ "id": 99 }));
    assert_eq!((status, refused["error"]["code"].as_str()), (400, Some("invalid_member")), "{refused}");
    for index in [learner, voter] {
        let id = cluster.nodes[index].id;
        let membership = admin.admin_ok("DELETE", "/admin/cluster/members", json!({ "id": id }));
        assert!(membership["members"].as_array().unwrap().iter().all(|m| m["id"] != id), "{membership}");
        cluster.nodes[index].kill();
    }

    // Three voters again: losing the leader still leaves a majority.
    cluster.nodes[leader].kill();
    let new = wait_for_other_leader(&cluster, leader);
    let client = cluster.nodes[new].client();
    place_some(&client, &keys, 2, &mut acked);
    assert_all_found(&client, &keys, &acked, "the members left and the leader died");
}

/// The Raft port in a node's configuration file.
fn raft_port(node: &Node) -> u16 {
    let config = std::fs::read_to_string(&node.config_path).unwrap();
    let line = config.lines().find(|l| l.starts_with("raft_listen")).unwrap();
    line.trim_end_matches('"').rsplit(':').next().unwrap().parse().unwrap()
}

/// Every signed change carries its signature into the log (its replay
/// mark), and every node remembers the signatures of the commands it
/// applies: a new leader refuses the same signed bytes, whatever the time
/// they were signed at. Two of the three requests are signed by a clock
/// 900 ms ahead of the servers' (within the 1 s allowed): by time alone the
/// new leader could not tell them from requests signed after the failover.
#[test]
fn a_change_signed_for_the_old_leader_is_not_executed_again_by_the_new_one() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.leader();
    let keys = cluster.nodes[leader].client().demo(1);
    // Signed orders, kept byte for byte: what a client retries after its
    // leader died under it, or what anyone who saw them could replay.
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    let ahead_ms = now_ms + 900;
    let native = |price: &str| {
        Some(
            json!({ "market": "BTC-USDT", "side": "buy", "type": "limit", "price": price, "quantity": "0.1" }),
        )
    };
    let requests = [
        ("/order", format!("recvWindow=60000&timestamp={now_ms}"), native("90")),
        ("/order", format!("recvWindow=60000&timestamp={ahead_ms}"), native("89")),
        (
            "/api/v3/order",
            format!(
                "symbol=BTCUSDT&side=BUY&type=LIMIT&timeInForce=GTC&quantity=0.1&price=88\
                 &recvWindow=60000&timestamp={ahead_ms}"
            ),
            None,
        ),
    ];
    for (path, query, body) in &requests {
        let (status, first) =
            cluster.nodes[leader].client().signed_raw(&keys[0], "POST", path, query, body.clone());
        assert_eq!(status, 200, "{path}: {first}");
    }

    cluster.nodes[leader].kill();
    let new = wait_for_other_leader(&cluster, leader);
    let client = cluster.nodes[new].client();
    let deadline = Instant::now() + cluster::ELECTION_BOUND;
    for (path, query, body) in &requests {
        let (status, again) = loop {
            let (status, again) = client.signed_raw(&keys[0], "POST", path, query, body.clone());
            if status != 421 || Instant::now() > deadline {
                break (status, again);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if path.starts_with("/api/v3") {
            // Binance's answer to a duplicate order.
            assert_eq!((status, again["code"].as_i64()), (400, Some(-2010)), "{path}: {again}");
            assert_eq!(again["msg"], "Duplicate order sent.", "{again}");
        } else {
            assert_eq!(
                (status, again["error"]["code"].as_str()),
                (401, Some("replayed_signature")),
                "{again}"
            );
        }
    }
    let (_, open) = client.signed(&keys[0], "GET", "/orders/open", "market=BTC-USDT", None);
    assert_eq!(open["orders"].as_array().map(Vec::len), Some(3), "executed twice: {open}");

    // A request signed now is taken at once.
    let mut acked = Vec::new();
    place_some(&client, &keys, 1, &mut acked);
    assert_eq!(acked.len(), 1);
}

/// Images every 20 entries and 5 entries kept behind each: a follower down
/// for a few dozen orders finds the leader's log purged past its own.
const SMALL_IMAGES: &str = "snapshot_every_entries = 20\nlog_kept_after_snapshot_entries = 5\n";

/// Places orders through `leader` for at least 25 rounds and until its log
/// is purged past `index`; returns the next round.
fn place_until_purged_past(
    cluster: &Cluster,
    leader: usize,
    keys: &[Key],
    acked: &mut Vec<Acked>,
    index: u64,
) -> usize {
    let client = cluster.nodes[leader].client();
    // A liveness bound, not a speed assertion.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut round = 1;
    loop {
        place_some(&client, keys, round, acked);
        round += 1;
        let health = cluster.nodes[leader].health().unwrap();
        let purged = health["cluster"]["purged_index"].as_u64().unwrap_or(0);
        if round > 25 && purged > index {
            return round;
        }
        assert!(Instant::now() < deadline, "the log the follower needs is still there: {health}");
    }
}

#[test]
fn a_follower_behind_a_purged_log_catches_up_from_the_leaders_snapshot_image() {
    let mut cluster = Cluster::start_configured(3, false, "", SMALL_IMAGES);
    let leader = cluster.leader();
    let client = cluster.nodes[leader].client();
    let keys = client.demo(2);
    let mut acked = Vec::new();
    place_some(&client, &keys, 0, &mut acked);

    let behind = (leader + 1) % 3;
    let follower_applied =
        cluster.nodes[behind].health().unwrap()["cluster"]["applied_index"].as_u64().unwrap();
    cluster.nodes[behind].kill();
    // The leader purges behind its images only while no replication to the
    // dead follower is in flight: orders until it has.
    let round = place_until_purged_past(&cluster, leader, &keys, &mut acked, follower_applied);

    // Only the image can bring it back: the entries after its position are gone.
    cluster.nodes[behind].start();
    cluster.assert_converged(&client, &keys, "the follower installed the leader's image");
    let stderr = cluster.nodes[behind].stderr();
    assert!(stderr.contains("installed the snapshot image"), "{stderr}");
    // The image carries the read views: closed (filled) orders and open ones alike.
    assert_all_found(&cluster.nodes[behind].client(), &keys, &acked, "the install");
    let (status, trades) = cluster.nodes[behind].client().get("/trade/history?market=BTC-USDT&limit=1000");
    assert_eq!(status, 200);
    assert_eq!(trades, client.get("/trade/history?market=BTC-USDT&limit=1000").1, "its trades differ");

    // Keys created before the image authenticate on it, and orders after
    // it apply on top of it.
    place_some(&client, &keys, round, &mut acked);
    cluster.assert_converged(&client, &keys, "orders after the install");

    // A wiped follower comes back from the image too.
    let wiped = (leader + 2) % 3;
    cluster.nodes[wiped].kill();
    cluster.nodes[wiped].wipe();
    place_some(&client, &keys, round + 1, &mut acked);
    cluster.nodes[wiped].start();
    cluster.nodes[wiped].wait_voting();
    cluster.assert_converged(&client, &keys, "the wiped follower installed the image");
    assert_all_found(&cluster.nodes[wiped].client(), &keys, &acked, "the wipe");

    // Every node restarts from its own image and the log after it, with
    // nothing acknowledged lost.
    for node in &mut cluster.nodes {
        node.kill();
    }
    for node in &mut cluster.nodes {
        node.start();
    }
    let leader = cluster.leader();
    let client = cluster.nodes[leader].client();
    place_some(&client, &keys, round + 2, &mut acked);
    cluster.assert_converged(&client, &keys, "a restart of every node from its image");
    for node in &cluster.nodes {
        assert_all_found(&node.client(), &keys, &acked, "the restart");
        let health = node.health().unwrap();
        assert!(
            health["cluster"]["snapshot_index"].as_u64().is_some(),
            "no image on node {}: {health}",
            node.id
        );
    }
}

#[test]
fn a_node_that_installed_an_image_refuses_changes_signed_before_it() {
    if let Err(why) = Namespaces::available() {
        eprintln!("skipped: a partition between network namespaces cannot be made here: {why}");
        return;
    }
    let mut cluster = Cluster::start_configured(3, true, "", SMALL_IMAGES);
    let leader = cluster.leader();
    let client = cluster.nodes[leader].client();
    let keys = client.demo(2);
    let mut acked = Vec::new();
    place_some(&client, &keys, 0, &mut acked);

    // Cut off, not killed or paused: a restarted node refuses every change
    // signed before its start (its replay cache starts empty), and a paused
    // one finds the entries sent meanwhile in its sockets. Only a node that
    // stays up and never receives the entry shows what the image tells it.
    let behind = (leader + 1) % 3;
    let behind_id = cluster.nodes[behind].id;
    let others: Vec<u64> = cluster.nodes.iter().map(|n| n.id).filter(|id| *id != behind_id).collect();
    let partition = Partition::isolate(&cluster, &[behind_id], &others);
    let follower_applied =
        cluster.nodes[behind].health().unwrap()["cluster"]["applied_index"].as_u64().unwrap();
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    let query = format!("recvWindow=60000&timestamp={now_ms}");
    let order =
        json!({ "market": "BTC-USDT", "side": "buy", "type": "limit", "price": "80", "quantity": "0.1" });
    let (status, first) = client.signed_raw(&keys[0], "POST", "/order", &query, Some(order.clone()));
    assert_eq!(status, 200, "{first}");

    // The entry that executed it is purged behind an image before the
    // follower hears from the leader again: it gets the effect, never the
    // signature.
    let round = place_until_purged_past(&cluster, leader, &keys, &mut acked, follower_applied + 1);
    partition.heal_resetting_connections(&cluster, &[behind_id], &others);
    cluster.assert_converged(&client, &keys, "the follower installed the leader's image");
    let stderr = cluster.nodes[behind].stderr();
    assert!(stderr.contains("received from the leader"), "{stderr}");

    // Authentication is the same on every node: the follower refuses the
    // replay before it would send the client to the leader (421).
    let (status, again) =
        cluster.nodes[behind].client().signed_raw(&keys[0], "POST", "/order", &query, Some(order.clone()));
    assert_eq!((status, again["error"]["code"].as_str()), (401, Some("signed_before_restart")), "{again}");

    // And so does whichever node leads once the old leader is gone: the
    // follower by its image, the other by the signature it applied.
    cluster.nodes[leader].kill();
    let new = wait_for_other_leader(&cluster, leader);
    let client = cluster.nodes[new].client();
    let deadline = Instant::now() + cluster::ELECTION_BOUND;
    let (status, again) = loop {
        let (status, again) = client.signed_raw(&keys[0], "POST", "/order", &query, Some(order.clone()));
        if status != 421 || Instant::now() > deadline {
            break (status, again);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let expected = if new == behind { "signed_before_restart" } else { "replayed_signature" };
    assert_eq!((status, again["error"]["code"].as_str()), (401, Some(expected)), "{again}");
    let (_, open) = client.signed(&keys[0], "GET", "/orders/open", "market=BTC-USDT", None);
    let at_80 = open["orders"].as_array().unwrap().iter().filter(|o| o["price"] == "80").count();
    assert_eq!(at_80, 1, "executed twice: {open}");
    // A change signed now is taken once the node's bound has passed (the
    // follower's, from its image, may still be up to 1 s ahead: a client
    // re-signs, as after -1021).
    let from_ms = cluster.nodes[new].health().unwrap()["signed_changes_from_ms"].as_u64().unwrap();
    loop {
        let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
        if now_ms > u128::from(from_ms) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    place_some(&client, &keys, round, &mut acked);
    assert_all_found(&client, &keys, &acked, "the failover");
}

#[test]
fn concurrent_orders_share_entries_and_each_is_applied_once_on_every_node() {
    // Enough clients at once that proposals arrive while an entry is being
    // written, each with its own user (so no two requests sign alike).
    const CLIENTS: usize = 16;
    const ORDERS_PER_CLIENT: usize = 25;
    let cluster = Cluster::start_with(3, false, "");
    let leader = cluster.leader();
    let keys = cluster.nodes[leader].client().demo(CLIENTS);
    let api = cluster.nodes[leader].api;
    // Resting buys at a price per client, never crossing: every order
    // acknowledged must be open, once, on every node.
    let acked: Vec<Vec<u64>> = std::thread::scope(|scope| {
        let clients: Vec<_> = keys
            .iter()
            .enumerate()
            .map(|(index, key)| {
                scope.spawn(move || {
                    let client = Client::new(api);
                    (0..ORDERS_PER_CLIENT)
                        .map(|n| {
                            let order = json!({ "market": "BTC-USDT", "side": "buy", "type": "limit",
                                                "price": (100 + index).to_string(), "quantity": "0.01",
                                                "client_order_id": format!("packed-{index}-{n}") });
                            let (status, answer) = client.place(key, order);
                            assert_eq!(status, 200, "client {index}, order {n}: {answer}");
                            answer["order_id"].as_u64().unwrap()
                        })
                        .collect()
                })
            })
            .collect();
        clients.into_iter().map(|c| c.join().unwrap()).collect()
    });
    cluster.assert_converged(&cluster.nodes[leader].client(), &keys, "the concurrent orders");
    for node in &cluster.nodes {
        let client = node.client();
        for (key, acked) in keys.iter().zip(&acked) {
            let (status, open) =
                client.signed(key, "GET", "/orders/open", "market=BTC-USDT&limit=1000", None);
            assert_eq!(status, 200, "{open}");
            let mut found: Vec<u64> =
                open["orders"].as_array().unwrap().iter().map(|o| o["order_id"].as_u64().unwrap()).collect();
            found.sort_unstable();
            let mut expected = acked.clone();
            expected.sort_unstable();
            assert_eq!(found, expected, "node {}: user {}'s open orders", node.id, key.user_id);
        }
    }

    // The orders went out in fewer entries than orders.
    let (status, _, metrics) = server::try_raw(api, "GET", "/metrics", &[], b"").unwrap();
    assert_eq!(status, 200);
    let metrics = metrics.as_str().unwrap();
    let value = |name: &str| -> u64 {
        let line = metrics.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| {
            panic!("/metrics has no {name}: {metrics}");
        });
        line[name.len() + 1..].parse::<f64>().unwrap() as u64
    };
    let entries = value("exchange_cluster_entries_proposed_total");
    let commands = value("exchange_cluster_commands_proposed_total");
    let orders = (CLIENTS * ORDERS_PER_CLIENT) as u64;
    eprintln!("{commands} commands in {entries} entries; {orders} of them concurrent orders");
    assert!(commands >= orders, "{commands} commands proposed, {orders} orders acknowledged");
    assert!(entries < commands, "every entry held one command: {entries} entries, {commands} commands");
    assert!(value("exchange_cluster_commands_per_entry_max") > 1);
}

/// The last entry a node's log records as purged (`RAFT_SEGMENTS`).
fn purged_through(journal: &std::path::Path) -> Option<u64> {
    let bytes = std::fs::read(journal.join(journal::RAFT_SEGMENTS_FILE_NAME)).ok()?;
    journal::decode_raft_segments_file(&bytes).unwrap().map(|position| position.index)
}

#[test]
fn a_follower_feeds_postgresql_from_the_replicated_log_across_images_a_crash_and_a_database_outage() {
    use persistence::cluster::Database;
    let database = Database::on_own_cluster().expect("a database");
    let postgres = database.cluster().expect("a database server of our own");
    let mut cluster = Cluster::start_configured(3, false, "", SMALL_IMAGES);
    let leader = cluster.leader();
    // Any replica may feed the database: here a follower.
    let feeder = (leader + 1) % 3;
    let env = [("DATABASE_URL", database.url.as_str())];
    cluster.nodes[feeder].kill();
    cluster.nodes[feeder].start_with_env(&env);
    let client = cluster.nodes[leader].client();
    let keys = client.demo(2);
    let mut acked = Vec::new();
    place_some(&client, &keys, 0, &mut acked);
    let snapshot_index = |node: &Node| node.health().unwrap()["cluster"]["snapshot_index"].as_u64();
    let mut round = 1;
    while round < 10 || snapshot_index(&cluster.nodes[feeder]).is_none() {
        place_some(&client, &keys, round, &mut acked);
        round += 1;
        assert!(round < 200, "the feeder takes no image");
    }
    wait_written(&cluster, feeder, leader);

    // The database goes away while the nodes take images and purge their
    // logs: the feeder keeps the log its writer still needs, and the image
    // the writer can start from.
    // The throwaway server runs without synchronous commits; a checkpoint
    // first makes its crash one of a durable database (which keeps what
    // it committed).
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let (db, connection) = tokio_postgres::connect(&database.url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        db.batch_execute("CHECKPOINT").await.unwrap();
    });
    postgres.kill_server().expect("the database server stops");
    let snapshots = cluster.nodes[feeder].data_dir.join("snapshots");
    let journal = cluster.nodes[feeder].journal_dir();
    let outage_index = snapshot_index(&cluster.nodes[feeder]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        place_some(&client, &keys, round, &mut acked);
        round += 1;
        let index = snapshot_index(&cluster.nodes[feeder]).unwrap();
        if snapshots.join("writer-base.img").exists() && index > outage_index + 40 {
            break;
        }
        assert!(Instant::now() < deadline, "no image was taken past the writer's cursor");
    }
    // openraft asked for purges behind the new images; the log still
    // holds everything after the writer's base.
    assert!(
        purged_through(&journal).is_none_or(|purged| purged <= outage_index),
        "{:?}",
        purged_through(&journal)
    );
    // A crash on top: the events the writer held in memory are gone; the
    // log and the images on disk are all it has.
    cluster.nodes[feeder].kill();
    place_some(&client, &keys, round, &mut acked);
    round += 1;
    postgres.start_server().expect("the database server starts again");
    cluster.nodes[feeder].start_with_env(&env);
    let seq = wait_written(&cluster, feeder, leader);

    // The database holds exactly what the cluster did: every trade once
    // (the same as the leader's read views), every acknowledged order.
    let feeder_client = cluster.nodes[feeder].client();
    let from_database = market_trades(&feeder_client, "&from=0");
    let from_views = market_trades(&client, "");
    assert!(from_views.len() > 20 && from_views.len() < 1000, "{} trades", from_views.len());
    assert_eq!(from_database, from_views, "the database's trades differ from the cluster's");
    runtime.block_on(async {
        let (db, connection) = tokio_postgres::connect(&database.url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        let cursor: i64 = db.query_one("SELECT last_seq FROM writer_cursor", &[]).await.unwrap().get(0);
        assert_eq!(cursor as u64, seq);
        let ids: Vec<i64> = db
            .query("SELECT order_id FROM orders", &[])
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        let mut ids: Vec<u64> = ids.into_iter().map(|id| id as u64).collect();
        ids.sort_unstable();
        let mut expected: Vec<u64> = acked.iter().map(|order| order.order_id).collect();
        expected.sort_unstable();
        assert_eq!(ids, expected, "the orders in the database are not the ones acknowledged");
    });

    // Caught up, the writer holds back no more than its base (the newest
    // image at or before its cursor): the log the outage held is purged.
    let held_purged = purged_through(&journal).unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        place_some(&client, &keys, round, &mut acked);
        round += 1;
        let purged = purged_through(&journal).unwrap_or(0);
        if purged > outage_index && purged > held_purged {
            break;
        }
        assert!(Instant::now() < deadline, "the writer's base image and held log were never released");
    }
    wait_written(&cluster, feeder, leader);
    let stderr = cluster.nodes[feeder].stderr();
    // It failed only to reach the database while it was down: never to
    // regenerate, never finding the database ahead of it.
    for never in ["regenerating from", "ahead of", "turning events into rows"] {
        assert!(!stderr.contains(never), "{never}: {stderr}");
    }
    assert!(
        stderr.contains("database writer: ") && stderr.contains("next try in"),
        "the outage was seen: {stderr}"
    );
}
