//! A shoal node: configuration, the supervision tree and the HTTP service.
//!
//! Start-up ([`run`]): open the store → load the model → start the supervisor (embedder actors,
//! ingest workers, one shard actor per collection) → serve HTTP → warm the model up (the node is
//! ready once it is warm and every shard is loaded) → resume ingest of documents accepted before
//! the last stop. A request goes: [`shoal_api::router`] → [`service::Node`] → store, shards,
//! embedder actors; every change of state goes through [`context::NodeContext::apply`].

pub mod access;
pub mod actors;
pub mod admin_cli;
pub mod analytics;
pub mod bench;
pub mod cluster;
pub mod config;
pub mod context;
pub mod embed_exec;
pub mod error;
pub mod eval;
pub mod ingest_queue;
pub mod memory;
pub mod metrics;
pub mod mirror;
pub mod runtime;
pub mod service;
pub mod shards;
pub mod thread_sched;
pub mod uploads;
pub mod watermark;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ractor::Actor;
use shoal_api::{router, RouterLimits};
use shoal_inference::{
    Chunker, ChunkerParams, CrossEncoder, Embedder, EmbedderOptions, Isa, ModelFiles, Precision,
    RerankerOptions,
};
use shoal_storage::{Command, Store, StoreOptions};

use crate::actors::supervisor::{NodeSupervisor, SupervisorArgs, SupervisorMsg};
use crate::config::Config;
use crate::context::NodeContext;
use crate::metrics::Metrics;
use crate::runtime::Runtime;
use crate::service::Node;
use crate::watermark::IndexWatermark;

/// Texts embedded once at start so the first real request does not pay for cold caches.
const WARM_UP: &[&str] = &[
    "warm up",
    "A longer warm-up passage makes the model touch the sizes of real chunks: several sentences \
     of ordinary text, long enough to fill a few dozen tokens, like a paragraph from a manual.",
];

/// A started node without its HTTP listener: the context and the supervision tree.
pub struct RunningNode {
    pub ctx: Arc<NodeContext>,
    pub supervisor: ractor::ActorRef<SupervisorMsg>,
    supervisor_handle: tokio::task::JoinHandle<()>,
}

impl RunningNode {
    /// Resolves with the reason if consensus stops (the store failed): the node must stop.
    pub fn failed(&self) -> impl std::future::Future<Output = String> + Send + 'static {
        self.ctx.cluster.failed()
    }

    /// Stop every actor (shards dump their graphs) and flush the store.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = actors::ask(
            &self.supervisor,
            "supervisor",
            Duration::from_secs(60),
            SupervisorMsg::Shutdown,
        )
        .await;
        self.supervisor.stop(Some("shutdown".into()));
        let _ = tokio::time::timeout(Duration::from_secs(30), self.supervisor_handle).await;
        self.ctx.cluster.shutdown().await;
        // the search events of the last quarter second (bounded: the writer may be stuck)
        let _ = tokio::time::timeout(Duration::from_secs(5), self.ctx.recorder.flush()).await;
        self.ctx.store.flush()?;
        Ok(())
    }
}

/// Make the node of `config`'s data folder (which must be new) from a backup written by
/// `shoal snapshot create`: the backup's state, as the only member of a new cluster.
pub fn restore_backup(
    config: &Config,
    backup: &std::path::Path,
) -> anyhow::Result<shoal_cluster::backup::Restored> {
    let data_dir = &config.storage.data_dir;
    std::fs::create_dir_all(data_dir.join("index"))
        .with_context(|| format!("cannot create the data folder {}", data_dir.display()))?;
    let options = StoreOptions {
        sync_writes: true,
        cache_bytes: config.storage.cache_mb << 20,
    };
    let store = Store::open(&data_dir.join("store"), options).with_context(|| {
        format!(
            "cannot open the store in {}",
            data_dir.join("store").display()
        )
    })?;
    let settings = cluster::settings(config);
    let restored = shoal_cluster::backup::restore_as_new_cluster(
        &store,
        backup,
        settings.group,
        &settings.snapshot_dir,
        settings.node_id,
        settings.advertise,
    )?;
    store.sync()?;
    Ok(restored)
}

/// Open the store, load the models and start the supervision tree.
pub async fn start(config: Config) -> anyhow::Result<RunningNode> {
    let access = access::Access::new(
        &config.auth,
        config.cluster.secret.as_ref().map(|s| s.0.clone()),
    )?;
    if !config.auth.enabled {
        tracing::warn!(
            "authentication is OFF (--insecure-no-auth): anyone who reaches this node may read and write every collection; use it for local experiments only"
        );
    }
    let data_dir = config.storage.data_dir.clone();
    std::fs::create_dir_all(data_dir.join("index"))
        .with_context(|| format!("cannot create the data folder {}", data_dir.display()))?;

    let store_dir = data_dir.join("store");
    let options = StoreOptions {
        sync_writes: config.storage.sync_writes,
        cache_bytes: config.storage.cache_mb << 20,
    };
    let lock_wait = Duration::from_millis(config.storage.lock_wait_ms);
    let store = tokio::task::spawn_blocking(move || {
        Store::open_waiting_for_lock(&store_dir, options, lock_wait)
    })
    .await?
    .with_context(|| {
        format!(
            "cannot open the store in {}",
            data_dir.join("store").display()
        )
    })?;

    let t = Instant::now();
    let files = ModelFiles::locate(&config.model.path).context(
        "cannot load the embedding model (run scripts/fetch-model.sh to fetch the default one)",
    )?;
    let options = EmbedderOptions {
        max_tokens: config.model.max_tokens,
        batch_size: config.model.batch_size,
        max_batch_tokens: config.model.max_batch_tokens,
        engine: config.model.engine,
        precision: config.model.precision,
    };
    warn_if_bf16_is_emulated(options.precision);
    let embedder = tokio::task::spawn_blocking(move || Embedder::load(&files, options))
        .await?
        .context("cannot load the embedding model")?;
    tracing::info!(
        model = %config.model.path.display(),
        engine = embedder.engine().name(),
        precision = embedder.precision().name(),
        kernels = Isa::detect().name(),
        dimension = embedder.dimension(),
        max_tokens = embedder.max_tokens(),
        head = %embedder.head().describe(),
        ms = t.elapsed().as_millis() as u64,
        "model loaded"
    );
    // A chunk, its document prompt and the two special tokens must fit the model's limit, or
    // every chunk would lose its end.
    let prompt = embedder.prompt_tokens(&shoal_inference::TextKind::Document);
    if config.ingest.chunk_tokens + prompt + 2 > embedder.max_tokens() {
        anyhow::bail!(
            "ingest.chunk_tokens ({}) plus the model's document prompt ({prompt} tokens) and 2 special tokens exceed the model's limit of {} tokens: lower ingest.chunk_tokens",
            config.ingest.chunk_tokens,
            embedder.max_tokens()
        );
    }
    let reranker = match &config.reranker.path {
        None => None,
        Some(path) => {
            let t = Instant::now();
            let files = ModelFiles::locate(path).context("cannot load the reranker model")?;
            let options = RerankerOptions {
                max_tokens: config.reranker.max_tokens,
                batch_size: config.reranker.batch_size,
                max_batch_tokens: config.reranker.max_batch_tokens,
                engine: config.reranker.engine,
                precision: config.reranker.precision,
            };
            warn_if_bf16_is_emulated(options.precision);
            let model = tokio::task::spawn_blocking(move || CrossEncoder::load(&files, options))
                .await?
                .context("cannot load the reranker model")?;
            tracing::info!(
                model = %path.display(),
                max_tokens = model.max_tokens(),
                ms = t.elapsed().as_millis() as u64,
                "reranker loaded"
            );
            Some(model)
        }
    };
    let chunker = Chunker::new(
        embedder.counting_tokenizer().clone(),
        ChunkerParams {
            target_tokens: config.ingest.chunk_tokens,
            overlap_tokens: config.ingest.chunk_overlap_tokens,
        },
    );

    let events =
        Arc::new(shoal_storage::EventLog::open(&store).context("cannot open the search events")?);
    let metrics = Arc::new(Metrics::new());
    metrics.watch_system(data_dir.clone());
    // Consensus: the state machine applies committed entries to the store and hands their
    // effects to the mirror, which follows into the index.
    let watermark = Arc::new(IndexWatermark::new(store.applied_index()?));
    let (mirror_tx, mirror_rx) = tokio::sync::mpsc::unbounded_channel();
    let sink = Arc::new(mirror::NodeSink {
        watermark: watermark.clone(),
        tx: mirror_tx,
        store: store.clone(),
    });
    let cluster = cluster::start(&config, store.clone(), sink, metrics.clone()).await?;
    let runtime = Runtime::new(&config, embedder, reranker, chunker, metrics)?;
    let ctx = Arc::new(NodeContext::new(
        config.clone(),
        store,
        runtime,
        cluster,
        watermark,
        access,
        events,
    ));
    ctx.remove_orphan_dumps()?;
    let (supervisor, supervisor_handle) = Actor::spawn(
        Some("node-supervisor".into()),
        NodeSupervisor,
        SupervisorArgs { ctx: ctx.clone() },
    )
    .await
    .context("cannot start the supervision tree")?;
    let _ = ctx.actors.supervisor.set(supervisor.clone());
    tokio::spawn(mirror::run(ctx.clone(), mirror_rx));
    tokio::spawn(warm_up_and_resume(ctx.clone()));
    tokio::spawn(cluster::bootstrap_or_join(ctx.clone()));
    tokio::spawn(release_deferred_claims(ctx.clone()));
    tokio::spawn(expire_jobs(ctx.clone()));
    tokio::spawn(bootstrap_access(ctx.clone()));

    Ok(RunningNode {
        ctx,
        supervisor,
        supervisor_handle,
    })
}

/// Warm the models up (the node is ready once they are), then resume the ingest of documents
/// accepted before the last stop.
async fn warm_up_and_resume(ctx: Arc<NodeContext>) {
    let t = Instant::now();
    let embedder = ctx.runtime.embedder.clone();
    match tokio::task::spawn_blocking(move || embedder.embed(WARM_UP)).await {
        Ok(Ok(_)) => {
            ctx.warm.store(true, Ordering::Release);
            tracing::info!(ms = t.elapsed().as_millis() as u64, "model warm");
        }
        Ok(Err(e)) => tracing::error!(error = %e, "model warm-up failed"),
        Err(e) => tracing::error!(error = %e, "model warm-up task failed"),
    }
    if let Some(reranker) = ctx.runtime.reranker.clone() {
        let t = Instant::now();
        match tokio::task::spawn_blocking(move || reranker.score(WARM_UP[0], WARM_UP)).await {
            Ok(Ok(_)) => {
                ctx.reranker_warm.store(true, Ordering::Release);
                tracing::info!(ms = t.elapsed().as_millis() as u64, "reranker warm");
            }
            Ok(Err(e)) => tracing::error!(error = %e, "reranker warm-up failed"),
            Err(e) => tracing::error!(error = %e, "reranker warm-up task failed"),
        }
    }
    // Documents accepted before the last stop but not yet indexed (keys only: the text stays in
    // the store until a worker takes the document).
    let store = ctx.store.clone();
    match tokio::task::spawn_blocking(move || store.pending_documents()).await {
        Ok(Ok(pending)) if !pending.is_empty() => {
            tracing::info!(documents = pending.len(), "resuming ingest");
            ctx.actors.ingest.enqueue(pending);
        }
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "cannot read pending documents"),
        Err(e) => tracing::error!(error = %e, "pending documents task failed"),
    }
}

/// Documents another node claimed are looked at again once its claim expires (it may be gone).
async fn release_deferred_claims(ctx: Arc<NodeContext>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        ctx.actors.ingest.release_due(actors::ingest::now_ms());
    }
}

/// With auth on, the first leader of a cluster makes the secret its tokens are signed with and,
/// when no user exists and no `auth.admin_key` is set, the first admin user, whose password it
/// prints once on standard output (the only place it is ever shown).
async fn bootstrap_access(ctx: Arc<NodeContext>) {
    if !ctx.config.auth.enabled {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match ctx.store.signing_secret() {
            Ok(Some(_)) => return,
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the signing secret");
                continue;
            }
        }
        if !ctx.cluster.is_leader() {
            continue;
        }
        let wants_admin = ctx.config.auth.admin_key.is_none()
            && ctx.store.users().map(|u| u.is_empty()).unwrap_or(false);
        let made = tokio::task::spawn_blocking(move || {
            let mut secret = vec![0u8; 32];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut secret);
            let admin = if wants_admin {
                let password = access::random_alnum(20);
                let now = actors::ingest::now_ms();
                let user = shoal_storage::UserRecord {
                    name: "admin".into(),
                    password_hash: access::hash_password(&password)?,
                    role: shoal_storage::Role::Admin,
                    collections: vec!["*".into()],
                    epoch: uuid::Uuid::new_v4().to_string(),
                    created_at_ms: now,
                    updated_at_ms: now,
                };
                Some((user, password))
            } else {
                None
            };
            Ok::<_, error::NodeError>((secret, admin))
        })
        .await;
        let (secret, admin) = match made {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot make the first admin");
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot make the first admin");
                continue;
            }
        };
        let (user, password) = match admin {
            Some((u, p)) => (Some(u), Some(p)),
            None => (None, None),
        };
        match ctx
            .apply(Command::BootstrapAccess {
                signing_secret: secret,
                admin: user,
            })
            .await
        {
            Ok(c) => {
                let applied = matches!(
                    c.outcome,
                    shoal_storage::Outcome::AccessBootstrapped { applied: true }
                );
                if let (true, Some(password)) = (applied, password) {
                    let addr = ctx
                        .config
                        .cluster
                        .advertise
                        .clone()
                        .unwrap_or_else(|| format!("http://{}", ctx.config.server.listen));
                    tracing::warn!("auth is on and the cluster had no users: made the admin user `admin`; its password is printed once on standard output");
                    println!("shoal: made the admin user `admin` with password {password} (shown this once; change it with PATCH /api/v1/auth/users/admin)");
                    println!("shoal: get a token: curl -X POST {addr}/api/v1/auth/token -d '{{\"username\":\"admin\",\"password\":\"{password}\"}}'");
                    println!("shoal: then send it: curl -H 'Authorization: Bearer TOKEN' {addr}/api/v1/collections");
                } else if applied {
                    tracing::info!("made the cluster's token-signing secret");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot make the cluster's token-signing secret yet")
            }
        }
    }
}

/// How long the staged parts of a request that never finished are kept.
const STAGED_RETENTION: Duration = Duration::from_secs(3600);

/// On the leader only (one node proposes it, every node applies it): forget finished jobs older
/// than `ingest.job_retention_s` (0 keeps them), checking every tenth of it (at least every
/// second, at most every minute), and the staged parts of requests that never finished. Expiry
/// is a command like any other change.
async fn expire_jobs(ctx: Arc<NodeContext>) {
    let retention = Duration::from_secs(ctx.config.ingest.job_retention_s);
    let every = (retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !ctx.cluster.is_leader() {
            continue;
        }
        let now = actors::ingest::now_ms();
        let before_ms = if retention.is_zero() {
            0
        } else {
            now.saturating_sub(retention.as_millis() as u64)
        };
        let staged_before_ms = now.saturating_sub(STAGED_RETENTION.as_millis() as u64);
        let store = ctx.store.clone();
        let due = tokio::task::spawn_blocking(move || {
            Ok::<_, shoal_storage::StoreError>(
                store.expirable_jobs(before_ms)? + store.expirable_staged(staged_before_ms)?,
            )
        })
        .await;
        if !matches!(due, Ok(Ok(n)) if n > 0) {
            continue;
        }
        match ctx
            .apply(Command::ExpireJobs {
                before_ms,
                staged_before_ms,
            })
            .await
        {
            Ok(c) => tracing::info!(outcome = ?c.outcome, "expired old jobs"),
            Err(e) => tracing::warn!(error = %e, "could not expire old jobs"),
        }
    }
}

/// Run a node until SIGINT or SIGTERM.
pub async fn run(mut config: Config) -> anyhow::Result<()> {
    // Listen first: the address (port 0 picks one) is what the node tells the cluster.
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.server.listen))?;
    let addr = listener.local_addr()?;
    if config.cluster.advertise.is_none() {
        config.cluster.advertise = Some(format!("http://{addr}"));
    }
    let node = start(config.clone()).await?;
    let ctx = node.ctx.clone();
    let app = router(
        Arc::new(Node { ctx: ctx.clone() }),
        RouterLimits {
            max_body_bytes: config.server.max_body_bytes,
            request_timeout: Duration::from_millis(config.server.request_timeout_ms),
        },
    )
    .merge(shoal_cluster::internal_router(ctx.cluster.clone()));
    tracing::info!(%addr, "listening");
    // Tests and scripts read this line to find the port when listening on port 0.
    println!("shoal listening on {addr}");

    let (failed_tx, failed_rx) = tokio::sync::oneshot::channel();
    let failed = node.failed();
    let cluster = ctx.cluster.clone();
    let stop = async move {
        tokio::select! {
            _ = shutdown_signal() => {
                // Consensus stops first. A leader that went on sending heartbeats while it
                // drains its requests and dumps its shards would hold up every write and strong
                // read of the cluster until it is gone (31 s seen in a chaos campaign); stopped,
                // it lets the others elect a new leader within an election timeout. What is in
                // flight here and needs consensus fails, as it would a moment later.
                tracing::info!("stopping: consensus first, so that the others can elect a leader");
                if tokio::time::timeout(Duration::from_secs(10), cluster.shutdown())
                    .await
                    .is_err()
                {
                    tracing::warn!("consensus did not stop within 10 s; stopping the rest anyway");
                }
            }
            reason = failed => {
                let _ = failed_tx.send(reason);
            }
        }
    };
    // The peer's address reaches the handlers (sign-in attempts are limited per address).
    // Answers go out at once: with Nagle's algorithm a response could wait for the client's
    // acknowledgement of the one before.
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY: {e}");
        }
    });
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(stop)
    .await
    .context("HTTP server failed")?;

    tracing::info!("shutting down: stopping actors and dumping shards");
    node.stop().await?;
    if let Ok(reason) = failed_rx.await {
        anyhow::bail!("stopped because the store failed: {reason}");
    }
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

fn warn_if_bf16_is_emulated(precision: Precision) {
    if precision == Precision::Bf16 && !Isa::detect().has_bf16() {
        tracing::warn!(
            kernels = Isa::detect().name(),
            "bf16 precision without AVX512-BF16 is emulated and slower than f32"
        );
    }
}
