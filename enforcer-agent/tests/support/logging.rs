//! The tests' log output (`RUST_LOG`, default `warn`), through the test harness's capture. Apart
//! from `support/mod.rs`, which the binary's tests include too (they have no tracing).

pub fn init_tracing() -> tracing::subscriber::DefaultGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .finish(),
    )
}
