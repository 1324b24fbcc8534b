//! `quire stack up|down|status`: the local broker (nisshi) and schema registry
//! (rivven-schema) on loopback, with their data and logs in one directory.
//!
//! The programs are installed once by `scripts/install-tools.sh` into
//! `$QUIRE_TOOLS_DIR/bin` (default `~/.cache/quire/tools/bin`); `PATH` is the fallback.

use anyhow::{bail, Context};
use clap::{Subcommand, ValueEnum};
use quire_kafka::{Codec, KafkaArgs};
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

#[derive(Subcommand)]
pub enum StackCommand {
    /// Start the broker and the registry and wait until both answer.
    Up(UpArgs),
    /// Stop them.
    Down(DirArgs),
    /// Say whether they run and answer.
    Status(DirArgs),
    /// Restart the broker or the registry of a running stack (chaos tests).
    Restart(RestartArgs),
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Program {
    Broker,
    Registry,
}

#[derive(clap::Args, Clone)]
pub struct RestartArgs {
    #[command(flatten)]
    pub dir: DirArgs,
    /// Which program to restart.
    #[arg(value_enum)]
    pub program: Program,
    /// SIGKILL instead of a clean stop.
    #[arg(long)]
    pub kill: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum, Serialize, Deserialize, PartialEq, Eq)]
pub enum Storage {
    /// In memory: fast, gone when the broker stops.
    Memory,
    /// SQLite (libsql) in the stack directory: survives broker restarts.
    Sqlite,
}

#[derive(clap::Args, Clone)]
pub struct DirArgs {
    /// Directory for the stack's state, data and logs.
    #[arg(long, env = "QUIRE_STACK_DIR", default_value = ".stack")]
    pub dir: PathBuf,
}

#[derive(clap::Args, Clone)]
pub struct UpArgs {
    #[command(flatten)]
    pub dir: DirArgs,
    #[arg(long, value_enum, default_value = "memory")]
    pub storage: Storage,
    #[arg(long, default_value_t = 9092)]
    pub broker_port: u16,
    #[arg(long, default_value_t = 8081)]
    pub registry_port: u16,
}

/// What `up` started, kept in `<dir>/stack.json`.
#[derive(Debug, Serialize, Deserialize)]
pub struct StackState {
    pub broker_pid: u32,
    pub registry_pid: u32,
    pub bootstrap_servers: String,
    pub schema_registry_url: String,
    pub storage: Storage,
}

pub async fn run(command: StackCommand) -> anyhow::Result<ExitCode> {
    match command {
        StackCommand::Up(args) => {
            let state = up(&args).await?;
            println!("broker:   {} (pid {})", state.bootstrap_servers, state.broker_pid);
            println!("registry: {} (pid {})", state.schema_registry_url, state.registry_pid);
            Ok(ExitCode::SUCCESS)
        }
        StackCommand::Restart(args) => {
            let state = restart(&args).await?;
            println!("broker:   {} (pid {})", state.bootstrap_servers, state.broker_pid);
            println!("registry: {} (pid {})", state.schema_registry_url, state.registry_pid);
            Ok(ExitCode::SUCCESS)
        }
        StackCommand::Down(args) => {
            down(&args.dir)?;
            println!("stack stopped");
            Ok(ExitCode::SUCCESS)
        }
        StackCommand::Status(args) => {
            let Some(state) = read_state(&args.dir)? else {
                println!("no stack in {}", args.dir.display());
                return Ok(ExitCode::from(1));
            };
            let broker = broker_answers(&state.bootstrap_servers);
            let registry = Codec::new(&state.schema_registry_url)?.ping().await.is_ok();
            println!("broker:   {} pid {} {}", state.bootstrap_servers, state.broker_pid, if broker { "up" } else { "DOWN" });
            println!("registry: {} pid {} {}", state.schema_registry_url, state.registry_pid, if registry { "up" } else { "DOWN" });
            Ok(if broker && registry { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
    }
}

/// Where a stack program is: the tools cache first, then `PATH`.
pub fn find_tool(name: &str) -> anyhow::Result<PathBuf> {
    let tools = std::env::var_os("QUIRE_TOOLS_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/quire/tools")))
        .unwrap_or_default();
    let cached = tools.join("bin").join(name);
    if cached.is_file() {
        return Ok(cached);
    }
    if let Some(paths) = std::env::var_os("PATH") {
        if let Some(found) = std::env::split_paths(&paths).map(|p| p.join(name)).find(|p| p.is_file()) {
            return Ok(found);
        }
    }
    bail!("{name} is not installed in {} nor on PATH: run scripts/install-tools.sh", tools.join("bin").display())
}

fn state_path(dir: &Path) -> PathBuf {
    dir.join("stack.json")
}

pub fn read_state(dir: &Path) -> anyhow::Result<Option<StackState>> {
    match std::fs::read_to_string(state_path(dir)) {
        Ok(text) => Ok(Some(serde_json::from_str(&text).with_context(|| format!("reading {}", state_path(dir).display()))?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn spawn_logged(program: &Path, args: &[String], dir: &Path, log: &Path) -> anyhow::Result<u32> {
    use std::os::unix::process::CommandExt;
    let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let child = Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    Ok(child.id())
}

fn broker_answers(bootstrap: &str) -> bool {
    let consumer: Result<BaseConsumer, _> = KafkaArgs { bootstrap_servers: bootstrap.to_owned(), ..KafkaArgs::default() }
        .client_config()
        .set("socket.timeout.ms", "2000")
        .create();
    consumer.is_ok_and(|c| c.fetch_metadata(None, Duration::from_secs(2)).is_ok())
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.split_whitespace().nth(2) == Some("Z"))
}

/// Starts the broker and the registry; returns once both answer.
pub async fn up(args: &UpArgs) -> anyhow::Result<StackState> {
    let dir = &args.dir.dir;
    if let Some(state) = read_state(dir)? {
        if alive(state.broker_pid) || alive(state.registry_pid) {
            bail!("a stack already runs from {} (pids {}, {}): `quire stack down` first", dir.display(), state.broker_pid, state.registry_pid);
        }
    }
    std::fs::create_dir_all(dir)?;
    let dir = dir.canonicalize()?;
    let state = StackState {
        broker_pid: spawn_broker(&dir, args.broker_port, args.storage)?,
        registry_pid: spawn_registry(&dir, args.registry_port)?,
        bootstrap_servers: format!("127.0.0.1:{}", args.broker_port),
        schema_registry_url: format!("http://127.0.0.1:{}", args.registry_port),
        storage: args.storage,
    };
    std::fs::write(state_path(&dir), serde_json::to_string_pretty(&state)?)?;
    wait_until_answering(&dir, &state).await?;
    pin_schema_ids(&state).await?;
    Ok(state)
}

/// Registers Quire's schemas in one fixed order as soon as the registry is up. The
/// local registry keeps schemas in memory and numbers them in the order it first sees
/// them, so this gives every schema the same id at every start: records written before
/// a registry restart still decode after it, as with a registry that stores its schemas
/// durably (Confluent's, in Kafka).
async fn pin_schema_ids(state: &StackState) -> anyhow::Result<()> {
    let codec = Codec::new(&state.schema_registry_url)?;
    for (name, schema) in quire_kafka::io::codec::SCHEMAS {
        codec.register(&format!("quire-stack.{name}"), schema).await?;
    }
    Ok(())
}

fn port_of(address: &str) -> anyhow::Result<u16> {
    address.rsplit(':').next().and_then(|p| p.parse().ok()).with_context(|| format!("no port in {address}"))
}

/// The id the broker gives its cluster: new at every start of a broker that keeps
/// nothing (memory), the one kept in the stack directory for one that keeps its data
/// (SQLite). Stages tell a cluster by it, so their local ledger copies never outlive the
/// data they copy (nisshi's own default is one fixed name).
fn cluster_id(dir: &Path, storage: Storage) -> anyhow::Result<String> {
    let fresh = || format!("quire-local-{:016x}", rand::random::<u64>());
    match storage {
        Storage::Memory => Ok(fresh()),
        Storage::Sqlite => {
            let path = dir.join("cluster-id");
            match std::fs::read_to_string(&path) {
                Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_owned()),
                _ => {
                    let id = fresh();
                    std::fs::write(&path, &id).with_context(|| format!("writing {}", path.display()))?;
                    Ok(id)
                }
            }
        }
    }
}

fn spawn_broker(dir: &Path, port: u16, storage: Storage) -> anyhow::Result<u32> {
    let listener = format!("tcp://127.0.0.1:{port}");
    let cluster = cluster_id(dir, storage)?;
    let storage = match storage {
        Storage::Memory => "memory://nisshi/".to_owned(),
        // nisshi resolves the SQLite path against its working directory (the stack dir).
        Storage::Sqlite => "sqlite://nisshi.db".to_owned(),
    };
    let broker_args = vec![
        "broker".into(),
        "--listener-url".into(),
        listener.clone(),
        "--advertised-listener-url".into(),
        listener,
        "--storage-engine".into(),
        storage,
        "--cluster-id".into(),
        cluster,
        "--group-initial-rebalance-delay".into(),
        "100ms".into(),
        "--silent".into(),
    ];
    spawn_logged(&find_tool("nisshi")?, &broker_args, dir, &dir.join("broker.log"))
}

fn spawn_registry(dir: &Path, port: u16) -> anyhow::Result<u32> {
    let registry_args = vec!["serve".into(), "--host".into(), "127.0.0.1".into(), "--port".into(), port.to_string()];
    spawn_logged(&find_tool("rivven-schema")?, &registry_args, dir, &dir.join("registry.log"))
}

/// Waits until the broker and the registry of `state` answer; stops the stack and says
/// why if one exits or they stay silent for 60 s.
async fn wait_until_answering(dir: &Path, state: &StackState) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let codec = Codec::new(&state.schema_registry_url)?;
    loop {
        let broker_up = broker_answers(&state.bootstrap_servers);
        let registry_up = codec.ping().await.is_ok();
        if broker_up && registry_up {
            return Ok(());
        }
        for (pid, name, log) in [(state.broker_pid, "broker", "broker.log"), (state.registry_pid, "registry", "registry.log")] {
            if !alive(pid) {
                let tail = std::fs::read_to_string(dir.join(log)).unwrap_or_default();
                let _ = down(dir);
                bail!("the {name} exited at start-up; its log ({}):\n{}", dir.join(log).display(), tail.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n"));
            }
        }
        if Instant::now() > deadline {
            let _ = down(dir);
            bail!("stack did not answer within 60 s (broker up: {broker_up}, registry up: {registry_up}); logs in {}", dir.display());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Restarts one program of a running stack on its port with its storage: cleanly
/// (SIGTERM) or with SIGKILL; returns once the stack answers again.
pub async fn restart(args: &RestartArgs) -> anyhow::Result<StackState> {
    let dir = args.dir.dir.canonicalize().with_context(|| format!("no stack in {}", args.dir.dir.display()))?;
    let mut state = read_state(&dir)?.with_context(|| format!("no stack in {}", dir.display()))?;
    let pid = match args.program {
        Program::Broker => state.broker_pid,
        Program::Registry => state.registry_pid,
    };
    if args.kill {
        signal(pid, "-KILL");
        while alive(pid) {
            std::thread::sleep(Duration::from_millis(20));
        }
    } else {
        stop_process(pid, Duration::from_secs(10));
    }
    // The port may still be held for a while by connections of the stopped program
    // (TIME_WAIT, for a program that binds without SO_REUSEADDR): start it again until
    // it binds.
    let log = dir.join(match args.program {
        Program::Broker => "broker.log",
        Program::Registry => "registry.log",
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    let pid = loop {
        let pid = match args.program {
            Program::Broker => spawn_broker(&dir, port_of(&state.bootstrap_servers)?, state.storage)?,
            Program::Registry => spawn_registry(&dir, port_of(&state.schema_registry_url)?)?,
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        let port_busy = !alive(pid) && std::fs::read_to_string(&log).is_ok_and(|text| text.contains("Address already in use"));
        if !port_busy || Instant::now() > deadline {
            break pid;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    match args.program {
        Program::Broker => state.broker_pid = pid,
        Program::Registry => state.registry_pid = pid,
    }
    std::fs::write(state_path(&dir), serde_json::to_string_pretty(&state)?)?;
    wait_until_answering(&dir, &state).await?;
    if args.program == Program::Registry {
        pin_schema_ids(&state).await?;
    }
    Ok(state)
}

fn signal(pid: u32, signal: &str) {
    let _ = Command::new("kill").args([signal, &pid.to_string()]).stderr(Stdio::null()).status();
}

/// Stops a stack's processes: SIGTERM, then SIGKILL after 10 s.
pub fn down(dir: &Path) -> anyhow::Result<()> {
    let Some(state) = read_state(dir)? else { return Ok(()) };
    for pid in [state.broker_pid, state.registry_pid] {
        stop_process(pid, Duration::from_secs(10));
    }
    std::fs::remove_file(state_path(dir))?;
    Ok(())
}

/// SIGTERM, wait up to `grace`, then SIGKILL.
pub fn stop_process(pid: u32, grace: Duration) {
    if !alive(pid) {
        return;
    }
    signal(pid, "-TERM");
    let deadline = Instant::now() + grace;
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if alive(pid) {
        signal(pid, "-KILL");
    }
}
