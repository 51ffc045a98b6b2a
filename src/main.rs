//! The `sandgate` binary: `run`, `check` (validate like `nginx -t`) and `demo`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

use sandgate::{accesslog, app, config, demo, metrics, sockets, upgrade};

#[derive(Parser)]
#[command(
    name = "sandgate",
    version,
    about = "A reverse proxy for fleets of sandbox workers"
)]
struct Cli {
    /// Log format: human-readable text or one JSON object per line.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy with a config file.
    Run {
        /// Path of the YAML config.
        #[arg(short, long, default_value = "/etc/sandgate/sandgate.yaml")]
        config: PathBuf,
    },
    /// Validate a config file: prints `ok` and exits 0, or prints one line per error and exits 1.
    Check {
        /// Path of the YAML config.
        #[arg(short, long, default_value = "/etc/sandgate/sandgate.yaml")]
        config: PathBuf,
        /// Print the resolved config, every default filled in, as YAML (secrets redacted)
        /// instead of `ok`.
        #[arg(long)]
        dump: bool,
    },
    /// Start three demo sandbox backends and the proxy on 127.0.0.1:8080 (admin 127.0.0.1:9900).
    Demo,
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn runtime(worker_threads: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    // `worker_threads: N`: this is the first of N single-threaded runtimes (`app` starts the
    // others, `sandgate::worker`). Unset: one work-stealing runtime with a thread per core.
    let mut b = match worker_threads {
        Some(_) => tokio::runtime::Builder::new_current_thread(),
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    b.enable_all().build()
}

fn check(path: &Path, dump: bool) -> ExitCode {
    match config::load(path) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                eprintln!("warning: {w}");
            }
            if dump {
                print!("{}", config::dump::dump(&loaded.config));
            } else {
                println!("ok");
            }
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("{e}");
            }
            eprintln!(
                "{}: {} error(s), config rejected",
                path.display(),
                errors.0.len()
            );
            ExitCode::from(1)
        }
    }
}

fn serve(
    loaded: config::Loaded,
    path: PathBuf,
    format: LogFormat,
    inherited: sockets::Inherited,
) -> ExitCode {
    let idle = loaded.config.runtime.metrics_idle_timeout;
    let rt = match runtime(loaded.config.runtime.worker_threads) {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            return ExitCode::from(1);
        }
    };
    let prometheus = match metrics::install(idle) {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "cannot install the metrics recorder");
            return ExitCode::from(1);
        }
    };
    if let Err(e) = accesslog::init(format == LogFormat::Json) {
        tracing::error!(error = %e, "cannot start the access log writer");
        return ExitCode::from(1);
    }
    let result = rt.block_on(app::run(loaded, Some(path), prometheus, inherited));
    accesslog::flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::from(1)
        }
    }
}

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config, dump } => check(&config, dump),
        Command::Run { config } => {
            // Before any thread starts: both read and clear environment variables.
            upgrade::init();
            let inherited = sockets::Inherited::from_env();
            init_logging(cli.log_format);
            let inherited = match inherited {
                Ok(i) => i,
                Err(e) => {
                    tracing::error!("{e}");
                    return ExitCode::from(1);
                }
            };
            match config::load(&config) {
                Ok(loaded) => serve(loaded, config, cli.log_format, inherited),
                Err(errors) => {
                    for e in &errors.0 {
                        tracing::error!(path = %config.display(), "config error: {e}");
                    }
                    ExitCode::from(1)
                }
            }
        }
        Command::Demo => {
            init_logging(cli.log_format);
            run_demo(cli.log_format)
        }
    }
}

fn run_demo(format: LogFormat) -> ExitCode {
    let rt = match runtime(None) {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            return ExitCode::from(1);
        }
    };
    let prometheus = match metrics::install(std::time::Duration::from_secs(600)) {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "cannot install the metrics recorder");
            return ExitCode::from(1);
        }
    };
    if let Err(e) = accesslog::init(format == LogFormat::Json) {
        tracing::error!(error = %e, "cannot start the access log writer");
        return ExitCode::from(1);
    }
    let result = rt.block_on(async {
        let mut addrs = Vec::new();
        for i in 1..=3 {
            addrs.push(
                demo::spawn_sandbox(format!("sandbox-{i}"))
                    .await
                    .map_err(|e| format!("cannot start demo sandbox: {e}"))?,
            );
        }
        let yaml = demo::config_yaml(&addrs);
        let loaded = config::parse_str(&yaml, Path::new(".")).map_err(|e| e.to_string())?;
        println!(
            "sandgate demo: proxy on http://{p}, admin on http://{a}\n  sandboxes: {s}\n\n  try:\n    \
             curl -i http://{p}/hello            # weighted 2:1:1 across the sandboxes\n    \
             curl -N http://{p}/stream           # a response streamed chunk by chunk\n    \
             curl --http2-prior-knowledge http://{p}/h2\n    \
             for i in 1 2; do curl -s -o /dev/null -D - http://{p}/cached | grep -i cache-status; done\n    \
                                                  # a miss, then a hit from sandgate's cache\n    \
             curl http://{a}/admin/backends\n    curl http://{a}/metrics\n\n  Ctrl-C stops it.",
            p = demo::PROXY_ADDR,
            a = demo::ADMIN_ADDR,
            s = addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", "),
        );
        app::run(loaded, None, prometheus, sockets::Inherited::default()).await
    });
    accesslog::flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::from(1)
        }
    }
}
