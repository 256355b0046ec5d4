//! A cluster of real `shoal` processes on loopback: node 1 makes the cluster, the others join it
//! through node 1 (voters ask to be promoted once caught up). Every node has a fixed id (its
//! place + 1), its own data folder and a port it keeps across restarts.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{wait_until, Node, Resp};

/// The secret every test cluster shares.
pub const SECRET: &str = "test-cluster-secret-0123456789";

pub struct Cluster {
    pub nodes: Vec<Node>,
}

/// Settings every cluster node gets: the secret, quick elections, fault injection.
pub fn cluster_env(extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![("SHOAL_CLUSTER__SECRET".into(), SECRET.into())];
    for (k, v) in extra {
        env.retain(|(key, _)| key != k);
        env.push((k.to_string(), v.to_string()));
    }
    env
}

impl Cluster {
    /// `voters` voters (node 1 first, alone, then the others join and are promoted) and
    /// `learners` learners. `env` goes to every node.
    pub fn start(voters: usize, learners: usize, env: &[(&str, &str)]) -> Cluster {
        Self::start_each(voters, learners, |_| {
            env.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
    }

    /// [`Cluster::start`] with each node's own settings (`env(i)` for node `i`).
    pub fn start_each(
        voters: usize,
        learners: usize,
        env: impl Fn(usize) -> Vec<(String, String)>,
    ) -> Cluster {
        assert!(voters >= 1);
        let mut nodes: Vec<Node> = Vec::new();
        for i in 0..voters + learners {
            let own = env(i);
            let own_ref: Vec<(&str, &str)> =
                own.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let mut node_env = cluster_env(&own_ref);
            let id = (i + 1).to_string();
            let mut args = vec!["--node-id".to_string(), id, "--fault-injection".to_string()];
            if i == 0 {
                node_env.push(("SHOAL_CLUSTER__BOOTSTRAP".into(), "true".into()));
            } else {
                args.push("--join".into());
                args.push(nodes[0].base.clone());
                if i < voters {
                    args.push("--voter".into());
                }
            }
            let env_ref: Vec<(&str, &str)> = node_env
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let args_ref: Vec<&str> = args.iter().map(String::as_str).collect();
            nodes.push(Node::start(&env_ref, &args_ref));
        }
        let c = Cluster { nodes };
        c.wait_members(voters, learners, Duration::from_secs(60));
        c
    }

    /// Node `i` (0-based) has id `i + 1`.
    pub fn id(i: usize) -> u64 {
        i as u64 + 1
    }

    pub fn status(&self, i: usize) -> Value {
        let r = self.nodes[i].get("/api/v1/cluster");
        assert_eq!(r.status, 200, "cluster status: {}", r.text);
        r.body
    }

    /// Wait until a running node's view has `voters` voters and `learners` learners, all of
    /// them applying.
    pub fn wait_members(&self, voters: usize, learners: usize, limit: Duration) {
        let i = self.running()[0];
        wait_until(limit, "the cluster's membership", || {
            let s = self.nodes[i].get("/api/v1/cluster").body;
            let members = s["members"].as_array().cloned().unwrap_or_default();
            let count = |role: &str| members.iter().filter(|m| m["role"] == role).count();
            count("voter") == voters && count("learner") == learners && !s["leader"].is_null()
        });
    }

    /// Indexes of the nodes whose process runs.
    pub fn running(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].is_running())
            .collect()
    }

    /// The index of the leader, as the running nodes agree on it (waits for an election).
    pub fn leader(&self, limit: Duration) -> usize {
        let mut found = None;
        wait_until(limit, "a leader the running nodes agree on", || {
            let views: Vec<Option<u64>> = self
                .running()
                .iter()
                .map(|i| self.nodes[*i].get("/api/v1/cluster").body["leader"].as_u64())
                .collect();
            let first = views[0];
            if first.is_some() && views.iter().all(|v| *v == first) {
                let id = first.unwrap_or_default();
                let i = (id - 1) as usize;
                if self.nodes.get(i).is_some_and(|n| n.is_running()) {
                    found = Some(i);
                    return true;
                }
            }
            false
        });
        found.unwrap_or_default()
    }

    /// A running node that is not the leader.
    pub fn follower(&self) -> usize {
        let leader = self.leader(Duration::from_secs(30));
        self.running()
            .into_iter()
            .find(|i| *i != leader)
            .expect("a running follower")
    }

    /// Each running node's (applied index, digest).
    pub fn digests(&self) -> Vec<(usize, u64, String)> {
        self.running()
            .into_iter()
            .map(|i| {
                let d = self.nodes[i].get("/api/v1/admin/digest").body;
                (
                    i,
                    d["applied_index"].as_u64().unwrap_or(0),
                    d["digest"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    /// Wait until every running node has applied the same index and their stores are equal.
    pub fn wait_converged(&self, limit: Duration) {
        let start = Instant::now();
        loop {
            let d = self.digests();
            if d.windows(2).all(|w| w[0].1 == w[1].1 && w[0].2 == w[1].2) {
                return;
            }
            assert!(
                start.elapsed() < limit,
                "the replicas did not converge within {limit:?}: {d:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Cut node `i` off from every other node (both ways), or heal every link.
    pub fn isolate(&self, i: usize) {
        let others: Vec<u64> = (0..self.nodes.len())
            .filter(|j| *j != i)
            .map(Self::id)
            .collect();
        self.cut(i, &others);
        for j in self.running() {
            if j != i {
                self.cut(j, &[Self::id(i)]);
            }
        }
    }

    pub fn heal(&self) {
        for j in self.running() {
            self.cut(j, &[]);
        }
    }

    /// Make node `i` drop the cluster's requests to the nodes `ids` (through its fault switch);
    /// an empty list heals it.
    pub fn cut(&self, i: usize, ids: &[u64]) {
        let r = self.nodes[i].request(
            "PUT",
            "/api/v1/admin/faults/links",
            Some(&json!({ "cut": ids })),
        );
        assert_eq!(r.status, 200, "cut links: {}", r.text);
    }

    /// Search on node `i`.
    pub fn search(&self, i: usize, collection: &str, body: Value) -> Resp {
        self.nodes[i].search(collection, body)
    }
}
