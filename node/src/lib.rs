//! A shoal node: configuration, the supervision tree and the HTTP service.
//!
//! Start-up ([`run`]): open the store → load the model → start the supervisor (embedder actors,
//! ingest workers, one shard actor per collection) → serve HTTP → warm the model up (the node is
//! ready once it is warm and every shard is loaded) → resume ingest of documents accepted before
//! the last stop. A request goes: [`shoal_api::router`] → [`service::Node`] → store, shards,
//! embedder actors; every change of state goes through [`context::NodeContext::apply`].

pub mod actors;
pub mod config;
pub mod context;
pub mod embed_exec;
pub mod error;
pub mod ingest_queue;
pub mod metrics;
pub mod service;
pub mod shards;

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
use shoal_storage::Store;

use crate::actors::supervisor::{NodeSupervisor, SupervisorArgs, SupervisorMsg};
use crate::config::Config;
use crate::context::NodeContext;
use crate::metrics::Metrics;
use crate::service::Node;

/// Texts embedded once at start so the first real request does not pay for cold caches.
const WARM_UP: &[&str] = &[
    "warm up",
    "A longer warm-up passage makes the model touch the sizes of real chunks: several sentences \
     of ordinary text, long enough to fill a few dozen tokens, like a paragraph from a manual.",
];

/// Run a node until SIGINT or SIGTERM.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let data_dir = config.storage.data_dir.clone();
    std::fs::create_dir_all(data_dir.join("index"))
        .with_context(|| format!("cannot create the data folder {}", data_dir.display()))?;

    let store_dir = data_dir.join("store");
    let sync = config.storage.sync_writes;
    let store = tokio::task::spawn_blocking(move || Store::open(&store_dir, sync))
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
        ms = t.elapsed().as_millis() as u64,
        "model loaded"
    );
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

    let metrics = Arc::new(Metrics::new());
    let ctx = Arc::new(NodeContext::new(
        config.clone(),
        store,
        embedder,
        reranker,
        chunker,
        metrics,
    )?);
    let (supervisor, supervisor_handle) = Actor::spawn(
        Some("node-supervisor".into()),
        NodeSupervisor,
        SupervisorArgs { ctx: ctx.clone() },
    )
    .await
    .context("cannot start the supervision tree")?;
    let _ = ctx.supervisor.set(supervisor.clone());

    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.server.listen))?;
    let addr = listener.local_addr()?;
    let app = router(
        Arc::new(Node { ctx: ctx.clone() }),
        RouterLimits {
            max_body_bytes: config.server.max_body_bytes,
            request_timeout: Duration::from_millis(config.server.request_timeout_ms),
        },
    );
    tracing::info!(%addr, "listening");
    // Tests and scripts read this line to find the port when listening on port 0.
    println!("shoal listening on {addr}");

    let warm_ctx = ctx.clone();
    tokio::spawn(async move {
        let t = Instant::now();
        let embedder = warm_ctx.embedder.clone();
        match tokio::task::spawn_blocking(move || embedder.embed(WARM_UP)).await {
            Ok(Ok(_)) => {
                warm_ctx.warm.store(true, Ordering::Release);
                tracing::info!(ms = t.elapsed().as_millis() as u64, "model warm");
            }
            Ok(Err(e)) => tracing::error!(error = %e, "model warm-up failed"),
            Err(e) => tracing::error!(error = %e, "model warm-up task failed"),
        }
        if let Some(reranker) = warm_ctx.reranker.clone() {
            let t = Instant::now();
            match tokio::task::spawn_blocking(move || reranker.score(WARM_UP[0], WARM_UP)).await {
                Ok(Ok(_)) => {
                    warm_ctx.reranker_warm.store(true, Ordering::Release);
                    tracing::info!(ms = t.elapsed().as_millis() as u64, "reranker warm");
                }
                Ok(Err(e)) => tracing::error!(error = %e, "reranker warm-up failed"),
                Err(e) => tracing::error!(error = %e, "reranker warm-up task failed"),
            }
        }
        // Documents accepted before the last stop but not yet indexed.
        let store = warm_ctx.store.clone();
        match tokio::task::spawn_blocking(move || store.pending_documents()).await {
            Ok(Ok(pending)) if !pending.is_empty() => {
                tracing::info!(documents = pending.len(), "resuming ingest");
                warm_ctx.ingest.enqueue(pending);
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "cannot read pending documents"),
            Err(e) => tracing::error!(error = %e, "pending documents task failed"),
        }
    });

    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("HTTP server failed")?;

    tracing::info!("shutting down: stopping actors and dumping shards");
    let _ = actors::ask(
        &supervisor,
        "supervisor",
        Duration::from_secs(60),
        SupervisorMsg::Shutdown,
    )
    .await;
    supervisor.stop(Some("shutdown".into()));
    let _ = tokio::time::timeout(Duration::from_secs(30), supervisor_handle).await;
    ctx.store.flush()?;
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
