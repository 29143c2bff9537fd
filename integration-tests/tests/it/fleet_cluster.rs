//! Fleet mode on a Redis Cluster of three masters (`--store redis+cluster://…`): the
//! central rules of `fleet`, run against the Cluster — a job known everywhere, a Set a
//! FRESH hit everywhere, one fetch for a storm split across daemons, writes winning over a
//! fetch in flight, invalidations seen everywhere. The tests share one Cluster.

use crate::fleet::rules;
use crate::fleet_support::{RedisCluster, Shared};

/// The Cluster the tests of this module share.
static CLUSTER: Shared<RedisCluster> = Shared::new(RedisCluster::start);

#[tokio::test]
async fn cluster_job_registered_on_one_daemon_is_known_on_every_other() {
    let c = CLUSTER.get();
    rules::job_registered_on_one_daemon_is_known_on_every_other(&c.url()).await;
}

#[tokio::test]
async fn cluster_set_on_one_daemon_is_a_fresh_hit_on_every_other() {
    let c = CLUSTER.get();
    rules::set_on_one_daemon_is_a_fresh_hit_on_every_other(&c.url()).await;
}

#[tokio::test]
async fn cluster_concurrent_gets_of_a_missing_item_across_daemons_cause_one_fetch() {
    let c = CLUSTER.get();
    rules::concurrent_gets_of_a_missing_item_across_daemons_cause_one_fetch(&c.url()).await;
}

#[tokio::test]
async fn cluster_set_on_another_daemon_during_a_fetch_wins_on_every_daemon() {
    let c = CLUSTER.get();
    rules::set_on_another_daemon_during_a_fetch_wins_on_every_daemon(&c.url()).await;
}

#[tokio::test]
async fn cluster_delete_on_another_daemon_during_a_fetch_wins_on_every_daemon() {
    let c = CLUSTER.get();
    rules::delete_on_another_daemon_during_a_fetch_wins_on_every_daemon(&c.url()).await;
}

#[tokio::test]
async fn cluster_invalidate_on_one_daemon_is_stale_on_every_other_at_once() {
    let c = CLUSTER.get();
    rules::invalidate_on_one_daemon_is_stale_on_every_other_at_once(&c.url()).await;
}

#[tokio::test]
async fn cluster_invalidate_job_on_one_daemon_is_seen_on_every_other() {
    let c = CLUSTER.get();
    rules::invalidate_job_on_one_daemon_is_seen_on_every_other(&c.url()).await;
}

#[tokio::test]
async fn cluster_invalidate_tags_on_one_daemon_is_seen_on_every_other() {
    let c = CLUSTER.get();
    rules::invalidate_tags_on_one_daemon_is_seen_on_every_other(&c.url()).await;
}

#[tokio::test]
async fn cluster_subscribe_on_one_daemon_hears_writes_made_on_another() {
    let c = CLUSTER.get();
    rules::subscribe_on_one_daemon_hears_writes_made_on_another(&c.url()).await;
}

#[tokio::test]
async fn cluster_invalidate_on_another_daemon_during_a_fetch_triggers_one_more_refresh() {
    let c = CLUSTER.get();
    rules::invalidate_on_another_daemon_during_a_fetch_triggers_one_more_refresh(&c.url()).await;
}
