//! quire-watchdog: watches the pipeline (lag, stalled blocks, dead instances); see
//! `quire_kafka::watch` for what it does.

use clap::Parser;
use quire_kafka::watch::WatchdogConfig;
use quire_kafka::KafkaArgs;

#[derive(Parser)]
#[command(version, about = "Watches the pipeline's consumer lag and health")]
struct Cli {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    watchdog: WatchdogConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    quire_kafka::telemetry::init_logging();
    let _export = quire_kafka::telemetry::otel::init("quire-watchdog");
    let cli = Cli::parse();
    let shutdown = quire_kafka::pipeline::service::shutdown_on_signals();
    Ok(quire_kafka::watch::run(cli.kafka, cli.watchdog, shutdown).await?)
}
