//! The `avwarden` command: a thin shell over the library. Parses arguments, sets up logging,
//! and hands over to `app`. Exit codes: 0 ok, 1 runtime failure, 2 bad config or usage, 3 a
//! file that is not a calendar (`bookings expand`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use avwarden::app::{self, Daemon, StartOptions};
use avwarden::clock::Clock;
use avwarden::config::{parse_site, Env, SiteConfig};
use avwarden::profile::ProfileSet;

/// The demo site, embedded so `avwarden demo` works from any directory, with the files it
/// names (written next to it, in the demo's temporary directory, at start).
const DEMO_CONFIG: &str = include_str!("../config/demo.toml");
const DEMO_FILES: [(&str, &str); 2] = [
    (
        "demo-playbook.toml",
        include_str!("../config/demo-playbook.toml"),
    ),
    (
        "demo-bookings.ics",
        include_str!("../config/demo-bookings.ics"),
    ),
];
/// `avwarden demo --fast`: five minutes of the story in five seconds.
const DEMO_FAST_FACTOR: f64 = 60.0;

#[derive(Parser)]
#[command(name = "avwarden", version = app::LONG_VERSION, about = "Keeps meeting rooms working")]
struct Cli {
    /// Log filter (overrides RUST_LOG), e.g. "info" or "avwarden=debug".
    #[arg(long, global = true)]
    log: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon for a site.
    Run {
        #[arg(long, short)]
        config: PathBuf,
        /// Also run the simulator of every `simulated = true` device in this process.
        #[arg(long)]
        with_simulators: bool,
    },
    /// Run the demo: the embedded six-room site with every device simulated and a scripted
    /// story (a battery, a lamp, a howl, an alert) told within five minutes.
    Demo {
        /// API address on this machine (default 127.0.0.1:8080, or a free port if that is
        /// taken).
        #[arg(long)]
        bind: Option<SocketAddr>,
        /// Run the story at 60×: five minutes in five seconds.
        #[arg(long)]
        fast: bool,
        /// Keep the store in this file (default: a temporary directory removed at exit).
        #[arg(long)]
        db: Option<PathBuf>,
    },
    /// Validate a site config: every problem with file, line and key path; exit 2 on any.
    CheckConfig { file: PathBuf },
    /// List the device profiles known (embedded, plus a directory) and what each supports.
    Profiles {
        /// Extra profiles directory.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// The maintenance logbook: verify the hash chain, export, record maintenance, show the
    /// equipment archive.
    Logbook {
        #[command(flatten)]
        store: StoreArg,
        #[command(subcommand)]
        command: avwarden::records::cli::LogbookCommand,
    },
    /// Copy the store while the daemon runs (SQLite's online backup), verify the copy
    /// (integrity check and logbook chain) and only then put it at FILE. Exit 1 when the copy
    /// does not verify, 2 when it could not be made.
    Backup {
        #[command(flatten)]
        store: StoreArg,
        /// Where the verified copy goes (replaced only once the new copy verified).
        #[arg(long)]
        to: PathBuf,
    },
    /// Reports from the logbook (the monthly maintenance report).
    Report {
        #[command(flatten)]
        store: StoreArg,
        #[command(subcommand)]
        command: avwarden::records::cli::ReportCommand,
    },
    /// Run a room's self-test now in the running daemon (it owns the device links) and print
    /// the verdict. Exit 0 ready, 1 degraded, 2 not ready; 3 when no test could run.
    Selftest {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        room: String,
        /// Test for this booking's needs (else for everything the room has).
        #[arg(long)]
        booking: Option<String>,
        /// The daemon's API address, when it is not the config's `[api] bind`.
        #[arg(long)]
        api: Option<SocketAddr>,
        /// A file whose first line is an API token (technician or admin), when the daemon
        /// has `[[api.tokens]]`. Without it the token comes from $AVWARDEN_TOKEN, never
        /// from the command line (which every user of the machine can read).
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Print the verdict as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Start a simulator for every simulated device of a site, at the addresses its config
    /// names, until interrupted.
    Simulate {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Bookings: check what the daemon understands of an iCalendar feed.
    Bookings {
        #[command(subcommand)]
        command: BookingsCommand,
    },
    /// The contingency playbook: what it would do for a fault (a dry run; no device is
    /// touched).
    Playbook {
        #[command(subcommand)]
        command: PlaybookCommand,
    },
    /// Maintenance windows in the running daemon: alerts of a room or device in one are kept
    /// but nobody is told until it ends.
    Maintenance {
        #[command(flatten)]
        daemon: DaemonArgs,
        #[command(subcommand)]
        command: MaintenanceCommand,
    },
}

/// How a CLI command reaches the running daemon's API.
#[derive(clap::Args)]
struct DaemonArgs {
    /// The site config: the API address (`[api] bind`) and the time zone of local times.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// The daemon's API address, when it is not the config's `[api] bind`.
    #[arg(long, global = true)]
    api: Option<SocketAddr>,
    /// A file whose first line is an API token (admin to add or remove), when the daemon has
    /// `[[api.tokens]]`. Without it the token comes from $AVWARDEN_TOKEN.
    #[arg(long, global = true)]
    token_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum MaintenanceCommand {
    /// Open a window from now until `--until`.
    Add {
        #[arg(long, conflicts_with = "device", required_unless_present = "device")]
        room: Option<String>,
        #[arg(long)]
        device: Option<String>,
        /// RFC 3339, or a local time in the site's zone (`2026-12-07T18:00`).
        #[arg(long)]
        until: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// The windows the daemon holds.
    List,
    /// End a window now.
    Remove { id: u64 },
}

#[derive(Subcommand)]
enum PlaybookCommand {
    /// Show the rule, class, deadlines, recipients and steps for a fault in a context.
    Test {
        /// A fault of the taxonomy (`battery_critical`, `unreachable`, `projector_lamp`, …).
        #[arg(long)]
        fault: String,
        #[arg(long)]
        room: String,
        /// `in_meeting`, `before_meeting` or `idle`.
        #[arg(long, default_value = "in_meeting")]
        context: String,
        /// The meeting is marked important.
        #[arg(long)]
        important: bool,
        /// The faulty device (its capabilities select rules); default: any device of the room.
        #[arg(long)]
        device: Option<String>,
        /// The component (`channel 2`, `zone main`) for the step texts.
        #[arg(long, default_value = "")]
        component: String,
        /// The site config (its playbook, roster and devices); default: the shipped playbook,
        /// the plan's roster in UTC and a device that can do everything.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

fn playbook(command: PlaybookCommand) -> ExitCode {
    use avwarden::model::Capability;
    use avwarden::playbook::{
        dry_run, roster::Roster, rules::Rules, Context, FaultKind, Importance,
    };
    let PlaybookCommand::Test {
        fault,
        room,
        context,
        important,
        device,
        component,
        config,
    } = command;
    let Some(kind) = FaultKind::parse(&fault) else {
        let names: Vec<&str> = FaultKind::ALL.iter().map(|k| k.as_str()).collect();
        eprintln!(
            "error: unknown fault {fault:?}; one of: {}",
            names.join(", ")
        );
        return ExitCode::from(2);
    };
    let Some(ctx) = Context::parse(&context) else {
        eprintln!("error: unknown context {context:?}; one of: in_meeting, before_meeting, idle");
        return ExitCode::from(2);
    };
    let (rules, roster, caps) = match &config {
        Some(path) => {
            let cfg = match load(path) {
                Ok(c) => c,
                Err(code) => return code,
            };
            if !cfg.rooms.iter().any(|r| r.id.as_str() == room) {
                eprintln!("error: {}: no room {room:?}", path.display());
                return ExitCode::from(2);
            }
            let mut caps: Vec<Capability> = cfg
                .devices
                .iter()
                .filter(|d| d.room.as_str() == room)
                .filter(|d| device.as_deref().is_none_or(|id| d.id.as_str() == id))
                .flat_map(|d| d.profile.capabilities.iter().copied())
                .collect();
            caps.sort();
            caps.dedup();
            ((*cfg.playbook).clone(), cfg.roster.clone(), caps)
        }
        None => match Rules::embedded() {
            Ok(r) => (r, Roster::of_plan(chrono_tz::UTC), Capability::ALL.to_vec()),
            Err(problems) => {
                for p in problems {
                    eprintln!("error: {p}");
                }
                return ExitCode::from(2);
            }
        },
    };
    let device = device.unwrap_or_else(|| format!("a device of {room}"));
    let q = dry_run::Question {
        fault: kind,
        room: &room,
        device: &device,
        component: &component,
        context: ctx,
        importance: if important {
            Importance::Important
        } else {
            Importance::Normal
        },
        capabilities: &caps,
    };
    let (_, text) = dry_run::dry_run(&q, &rules, &roster, avwarden::clock::Clock::system().now());
    print!("{text}");
    ExitCode::SUCCESS
}

#[derive(Subcommand)]
enum BookingsCommand {
    /// Print every instance of a calendar file in a window, one JSON object a line, sorted by
    /// start. Exit 0; 3 when the file is not a calendar.
    Expand {
        file: PathBuf,
        /// Window start (RFC 3339); instances that end after it are shown.
        #[arg(long, value_parser = rfc3339)]
        from: chrono::DateTime<chrono::Utc>,
        /// Window end (RFC 3339); instances that start before it are shown.
        #[arg(long, value_parser = rfc3339)]
        to: chrono::DateTime<chrono::Utc>,
        /// The zone of floating times and all-day dates (IANA or Windows name), unless the
        /// calendar names one in X-WR-TIMEZONE.
        #[arg(long, default_value = "UTC", value_parser = zone)]
        floating_tz: chrono_tz::Tz,
    },
}

fn rfc3339(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| format!("not an RFC 3339 time ({e})"))
}

fn zone(s: &str) -> Result<chrono_tz::Tz, String> {
    avwarden::schedule::ical::resolve_tzid(s).ok_or_else(|| format!("unknown time zone {s:?}"))
}

fn bookings(command: BookingsCommand) -> ExitCode {
    let BookingsCommand::Expand {
        file,
        from,
        to,
        floating_tz,
    } = command;
    if to <= from {
        eprintln!("error: --to must be after --from");
        return ExitCode::from(2);
    }
    let text = match std::fs::read(&file) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    // A technician checks a file on purpose: allow far more than a polled feed's default.
    let limits = avwarden::schedule::ical::Limits {
        max_bytes: 256 * 1024 * 1024,
        ..Default::default()
    };
    let cal = match avwarden::schedule::ical::parse_with_limits(&text, floating_tz, limits) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {}: {e}", file.display());
            return ExitCode::from(3);
        }
    };
    let (instances, expand_problems) = cal.expand_with_problems(from, to);
    for p in cal.problems.iter().chain(&expand_problems) {
        eprintln!("warning: {}: {p}", file.display());
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for i in &instances {
        if std::io::Write::write_all(&mut out, format!("{}\n", i.to_json_line()).as_bytes())
            .is_err()
        {
            return ExitCode::FAILURE;
        }
    }
    if std::io::Write::flush(&mut out).is_err() {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// Which store a logbook command reads: `--db`, or the storage path of `--config`.
#[derive(clap::Args)]
struct StoreArg {
    /// The SQLite store.
    #[arg(long, global = true)]
    db: Option<PathBuf>,
    /// A site config whose `[storage] path` names the store.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
}

impl StoreArg {
    fn resolve(&self) -> Result<PathBuf, ExitCode> {
        match (&self.db, &self.config) {
            (Some(db), _) => Ok(db.clone()),
            (None, Some(cfg)) => load(cfg).map(|c| c.storage.path),
            (None, None) => {
                eprintln!("error: name the store with --db PATH or --config SITE.toml");
                Err(ExitCode::from(2))
            }
        }
    }
}

fn run_store_command(
    store: &StoreArg,
    run: impl FnOnce(&Path, &mut dyn std::io::Write) -> anyhow::Result<avwarden::records::cli::Status>,
) -> ExitCode {
    let db = match store.resolve() {
        Ok(db) => db,
        Err(code) => return code,
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let res = run(&db, &mut out);
    let _ = std::io::Write::flush(&mut out);
    match res {
        Ok(status) => status.into(),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn main() -> ExitCode {
    // A SIGTERM in the first milliseconds (systemd stopping a unit that just started) killed
    // the process with 143 before its handlers existed (issue 16.5). Stop signals are held
    // from here until the daemon's handlers are installed, then delivered to them.
    hold_stop_signals(true);
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run { .. } | Command::Demo { .. }) {
        hold_stop_signals(false);
    } else {
        // A daemon may use what its hard limit allows (a shell's soft 1,024 is too few for a
        // large fleet); the API's connection limit is then fitted to it at start.
        avwarden::api::server::raise_descriptor_limit();
    }
    init_logging(cli.log.as_deref());
    match cli.command {
        Command::CheckConfig { file } => check_config(&file),
        Command::Profiles { dir } => profiles(dir.as_deref()),
        Command::Run {
            config,
            with_simulators,
        } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            run_daemon(
                cfg,
                StartOptions {
                    with_simulators,
                    api_bind: None,
                    demo_bookings: false,
                },
                None,
            )
        }
        Command::Demo { bind, fast, db } => demo(bind, fast, db),
        Command::Logbook { store, command } => {
            run_store_command(&store, |db, out| command.run(db, out))
        }
        Command::Backup { store, to } => run_store_command(&store, |db, out| {
            avwarden::records::cli::backup(db, &to, out)
        }),
        Command::Report { store, command } => {
            run_store_command(&store, |db, out| command.run(db, out))
        }
        Command::Selftest {
            config,
            room,
            booking,
            api,
            token_file,
            json,
        } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let addr = api.unwrap_or(cfg.api.bind);
            let token = match api_token(token_file.as_deref()) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(3);
                }
            };
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(selftest(addr, token, room, booking, json)),
                Err(e) => {
                    eprintln!("error: cannot start the runtime: {e}");
                    ExitCode::from(3)
                }
            }
        }
        Command::Bookings { command } => bookings(command),
        Command::Playbook { command } => playbook(command),
        Command::Maintenance { daemon, command } => runtime_block_on(maintenance(daemon, command)),
        Command::Simulate { config } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            runtime_block_on(simulate(cfg))
        }
    }
}

/// The variable `avwarden selftest` reads its API token from when no `--token-file` is given.
const TOKEN_ENV: &str = "AVWARDEN_TOKEN";

/// The token for the daemon's API: `--token-file`'s first line, else `$AVWARDEN_TOKEN`, else
/// none (an open local API).
fn api_token(file: Option<&Path>) -> anyhow::Result<Option<String>> {
    if let Some(f) = file {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("cannot read the token file {}", f.display()))?;
        let t = text.lines().next().unwrap_or("").trim().to_owned();
        anyhow::ensure!(!t.is_empty(), "the token file {} is empty", f.display());
        return Ok(Some(t));
    }
    Ok(std::env::var(TOKEN_ENV)
        .ok()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty()))
}

/// `avwarden maintenance`: add, list or remove windows through the running daemon's API.
async fn maintenance(args: DaemonArgs, command: MaintenanceCommand) -> anyhow::Result<()> {
    use avwarden::api::client;
    use avwarden::playbook::alerts::Target;
    let cfg = match &args.config {
        Some(path) => Some(SiteConfig::load(path).map_err(|e| anyhow::anyhow!("{e}"))?),
        None => None,
    };
    let addr = args
        .api
        .or(cfg.as_ref().map(|c| c.api.bind))
        .context("name the daemon: --config FILE (its [api] bind) or --api ADDRESS")?;
    let tz = cfg.as_ref().map_or(chrono_tz::UTC, |c| c.site.time_zone);
    let token = api_token(args.token_file.as_deref())?;
    let timeout = std::time::Duration::from_secs(30);
    match command {
        MaintenanceCommand::Add {
            room,
            device,
            until,
            reason,
        } => {
            let target = match (room, device) {
                (Some(r), None) => Target::Room(avwarden::model::RoomId::new(&r)),
                (None, Some(d)) => Target::Device(avwarden::model::DeviceId::new(&d)),
                _ => anyhow::bail!("name exactly one of --room and --device"),
            };
            let until = avwarden::records::cli::parse_time(&until, tz)?;
            let w = client::add_window(addr, token.as_deref(), &target, until, &reason, timeout)
                .await?;
            print!("{}", client::render_windows(std::slice::from_ref(&w), tz));
        }
        MaintenanceCommand::List => {
            let windows = client::list_windows(addr, token.as_deref(), timeout).await?;
            print!("{}", client::render_windows(&windows, tz));
        }
        MaintenanceCommand::Remove { id } => {
            client::remove_window(addr, token.as_deref(), id, timeout).await?;
            println!("window {id} removed");
        }
    }
    Ok(())
}

/// `avwarden selftest`: ask the running daemon, print its verdict, exit by readiness.
async fn selftest(
    addr: SocketAddr,
    token: Option<String>,
    room: String,
    booking: Option<String>,
    json: bool,
) -> ExitCode {
    use avwarden::model::Verdict;
    let path = format!("/api/v1/rooms/{room}/selftest");
    let body = serde_json::json!({ "booking": booking });
    // A projector's warm-up and a setpoint read-back take minutes at most.
    let timeout = std::time::Duration::from_secs(600);
    let answer = avwarden::api::client::request_as(
        addr,
        token.as_deref(),
        avwarden::api::client::Method::POST,
        &path,
        Some(body),
        timeout,
    )
    .await;
    let (status, bytes) = match answer {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(3);
        }
    };
    if status != 200 {
        let detail = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v.get("detail").and_then(|d| d.as_str()).map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
        eprintln!("error: the daemon answered {status}: {detail}");
        return ExitCode::from(3);
    }
    match serde_json::from_slice::<Verdict>(&bytes) {
        Ok(v) => {
            if json {
                println!("{}", String::from_utf8_lossy(&bytes));
            } else {
                print!("{}", avwarden::schedule::render_verdict(&v));
            }
            ExitCode::from(v.readiness.exit_code() as u8)
        }
        Err(e) => {
            eprintln!("error: the daemon's answer is not a verdict: {e}");
            ExitCode::from(3)
        }
    }
}

fn init_logging(filter: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = match filter {
        Some(f) => EnvFilter::new(f),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| {
            // rumqttd logs every probe or client hang-up of the embedded broker as an error
            // (and a normal shutdown as one), so its log stays off unless asked for.
            EnvFilter::new("info,rumqttd=off")
        }),
    };
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

fn load(path: &Path) -> Result<SiteConfig, ExitCode> {
    SiteConfig::load(path).map_err(|e| {
        eprintln!("{e}");
        eprintln!(
            "{}: {} problem(s); nothing was started",
            path.display(),
            e.problems.len()
        );
        ExitCode::from(2)
    })
}

fn check_config(path: &Path) -> ExitCode {
    match load(path) {
        Ok(cfg) => {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let label = path.display().to_string();
            let problems = avwarden::config::storage_problems(&text, &label, &cfg.storage.path);
            if !problems.is_empty() {
                for p in &problems {
                    eprintln!("{p}");
                }
                eprintln!("{label}: {} problem(s)", problems.len());
                return ExitCode::from(2);
            }
            print!("{}", cfg.summary());
            println!("{}: ok", path.display());
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

fn profiles(dir: Option<&Path>) -> ExitCode {
    let mut set = match ProfileSet::embedded() {
        Ok(s) => s,
        Err(errs) => {
            for e in errs {
                eprintln!("{e}");
            }
            return ExitCode::from(2);
        }
    };
    if let Some(d) = dir {
        let errs = set.load_dir(d);
        if !errs.is_empty() {
            for e in errs {
                eprintln!("{e}");
            }
            return ExitCode::from(2);
        }
    }
    println!(
        "{:<26} {:<10} {:<9} {:<8} {:<32} capabilities",
        "profile", "kind", "driver", "link", "vendor / family"
    );
    for p in set.iter() {
        let caps: Vec<&str> = p.capabilities.iter().map(|c| c.as_str()).collect();
        println!(
            "{:<26} {:<10} {:<9} {:<8} {:<32} {}",
            p.id.as_str(),
            p.kind.as_str(),
            p.driver.as_str(),
            format!("{:?}", p.link.kind).to_lowercase(),
            format!("{} {}", p.vendor, p.family),
            caps.join(", ")
        );
    }
    ExitCode::SUCCESS
}

fn runtime_block_on(fut: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    runtime_block_on_flavor(false, fut)
}

fn runtime_block_on_flavor(
    current_thread: bool,
    fut: impl std::future::Future<Output = anyhow::Result<()>>,
) -> ExitCode {
    let mut builder = if current_thread {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let res = rt.block_on(fut);
    // A blocking SQLite call (a store locked by another process) must not hold the exit past
    // the shutdown deadline: whatever still runs on a blocking thread is abandoned (issue 16.1).
    rt.shutdown_timeout(std::time::Duration::from_millis(500));
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Block (hold) or unblock SIGTERM and SIGINT for this thread and the threads it starts
/// afterwards. A held signal stays pending, it is not lost.
fn hold_stop_signals(hold: bool) {
    use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    let how = if hold {
        SigmaskHow::SIG_BLOCK
    } else {
        SigmaskHow::SIG_UNBLOCK
    };
    let _ = pthread_sigmask(how, Some(&set), None);
}

/// What `avwarden demo` adds to a daemon run: its token, its story, its clock.
struct DemoRun {
    token: String,
    fast: bool,
    tz: chrono_tz::Tz,
}

/// `avwarden demo`: the embedded site in a temporary directory (removed at exit, whatever
/// happens, as the `TempDir` is dropped), on free ports of this machine only, with a fresh
/// admin token.
fn demo(bind: Option<SocketAddr>, fast: bool, db: Option<PathBuf>) -> ExitCode {
    let dir = match tempfile::Builder::new().prefix("avwarden-demo-").tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: cannot make the demo's temporary directory: {e}");
            return ExitCode::FAILURE;
        }
    };
    for (name, text) in DEMO_FILES {
        if let Err(e) = std::fs::write(dir.path().join(name), text) {
            eprintln!("error: cannot write the demo's {name}: {e}");
            return ExitCode::FAILURE;
        }
    }
    let mut cfg = match parse_site(
        DEMO_CONFIG,
        "config/demo.toml",
        dir.path(),
        &Env::fixed(&[("AVWARDEN_DEMO_PJLINK_PASSWORD", "demo")]),
    ) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if let Some(db) = db {
        cfg.storage.path = db;
    }
    // The demo must start on any machine, next to another demo too: its broker, which only
    // the demo's own devices use, takes a free port (checking the configured one and then
    // binding it raced with a second demo starting at the same time).
    if let Some(e) = cfg.mqtt.as_mut().and_then(|m| m.settings.embedded.as_mut()) {
        if let Ok(free) = std::net::TcpListener::bind(("127.0.0.1", 0)).and_then(|l| l.local_addr())
        {
            e.bind = free;
        }
    }
    let bind = match bind {
        Some(b) if !b.ip().is_loopback() => {
            eprintln!("error: the demo listens on this machine only (127.0.0.1 or ::1), not {b}");
            return ExitCode::from(2);
        }
        Some(b) => b,
        None => {
            let preferred = cfg.api.bind;
            if std::net::TcpListener::bind(preferred).is_ok() {
                preferred
            } else {
                SocketAddr::from(([127, 0, 0, 1], 0))
            }
        }
    };
    // A token of this run only: the dashboard's login takes it, nobody else knows it.
    let token = hex::encode(rand::random::<[u8; 16]>());
    cfg.api.tokens.push(avwarden::config::ApiToken {
        name: "demo".to_owned(),
        role: avwarden::config::Role::Admin,
        hash: avwarden::config::TokenHash::of(&token),
    });
    if fast {
        // The retained MQTT state is a courtesy to other systems, not part of the story: at
        // 60× it would publish 60 times as often and starve the one thread the fast clock
        // runs on, so its pace stays a real second.
        if let Some(m) = cfg.mqtt.as_mut() {
            m.settings.state_debounce_ms =
                (m.settings.state_debounce_ms as f64 * DEMO_FAST_FACTOR) as u64;
        }
    }
    let tz = cfg.site.time_zone;
    let code = run_daemon(
        cfg,
        StartOptions {
            with_simulators: true,
            api_bind: Some(bind),
            demo_bookings: true,
        },
        Some(DemoRun { token, fast, tz }),
    );
    if let Err(e) = dir.close() {
        eprintln!("warning: the demo's temporary directory was not removed: {e}");
    }
    code
}

fn run_daemon(cfg: SiteConfig, opts: StartOptions, demo: Option<DemoRun>) -> ExitCode {
    // Tokio pauses time (the demo's fast clock) only on a current-thread runtime.
    let current_thread = demo.as_ref().is_some_and(|d| d.fast);
    runtime_block_on_flavor(current_thread, async move {
        use tokio_util::sync::CancellationToken;
        use tokio_util::task::TaskTracker;
        let signals = app::Signals::install()?;
        // The handlers exist: a stop signal held since exec is delivered to them now.
        hold_stop_signals(false);
        // The demo's own tasks (the fast clock's pacer, the story), stopped after the daemon.
        let demo_tasks = TaskTracker::new();
        let demo_stop = CancellationToken::new();
        let (fast, clock) = match &demo {
            Some(d) if d.fast => {
                // Real time while the daemon starts (opening the store, first connects), so
                // start-up timeouts keep their meaning; 60× from the story's T+0.
                let (fast, clock) =
                    avwarden::clock::FastTime::start(1.0, &demo_tasks, demo_stop.clone())?;
                (Some(fast), clock)
            }
            _ => (None, Clock::system()),
        };
        let daemon = Daemon::start(cfg, opts, clock).await?;
        if demo.is_some() {
            // The demo's first screen shows its bookings: made before the URLs are printed.
            daemon
                .schedule
                .started(std::time::Duration::from_secs(15))
                .await;
        }
        // A closed stdout (the reader went away) must not take the daemon down: these lines
        // are a courtesy, the daemon is the point.
        let mut banner = format!(
            "avwarden {} running for site {:?}\n",
            app::LONG_VERSION,
            daemon.site()
        );
        for (id, ep) in &daemon.simulators {
            banner += &format!("  simulator for {id}: {ep}\n");
        }
        banner += &format!("dashboard: http://{}/\n", daemon.api_addr);
        if let Some(d) = &demo {
            banner += &format!("token: {}\n", d.token);
        }
        banner += &format!("status: http://{}/api/v1/health\n", daemon.api_addr);
        banner += &format!("board: http://{}/api/v1/board\n", daemon.api_addr);
        banner += &format!("devices: http://{}/api/v1/devices\n", daemon.api_addr);
        if let Some(d) = &demo {
            banner += &format!(
                "the story{}: watch this space or the dashboard; Ctrl-C ends the demo\n",
                if d.fast { " at 60×" } else { "" }
            );
        }
        {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(banner.as_bytes());
            let _ = out.flush();
        }
        if let Some(d) = &demo {
            if let Some(fast) = &fast {
                fast.set_factor(DEMO_FAST_FACTOR);
            }
            avwarden::demo::scenario::Scenario::from_daemon(&daemon, d.tz).start(
                Box::new(std::io::stdout()),
                &demo_tasks,
                demo_stop.clone(),
            );
        }
        let report = app::run_until_signal_then(daemon, signals, || {
            // The shutdown deadline is in real seconds, whatever the demo's clock did.
            if let Some(fast) = &fast {
                fast.set_factor(1.0);
            }
        })
        .await?;
        demo_stop.cancel();
        demo_tasks.close();
        demo_tasks.wait().await;
        if !report.within_deadline {
            anyhow::bail!("shutdown did not finish within the deadline");
        }
        Ok(())
    })
}

async fn simulate(cfg: SiteConfig) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    use tokio_util::sync::CancellationToken;
    // Installed before anything is printed: a signal sent right after the banner must stop
    // us cleanly, not kill us by the default action.
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let clock = Clock::system();
    let cancel = CancellationToken::new();
    let mut n = 0;
    for d in cfg.devices.iter().filter(|d| d.simulated) {
        let link = d
            .link
            .as_ref()
            .with_context(|| format!("device {}: simulate needs a fixed link address", d.id))?;
        let bind = match link {
            avwarden::transport::LinkSpec::Tcp(t) => avwarden::sim::SimBind::Tcp(
                format!("{}:{}", t.host, t.port)
                    .parse()
                    .with_context(|| format!("device {}: host must be an IP address", d.id))?,
            ),
            avwarden::transport::LinkSpec::Udp { host, port } => avwarden::sim::SimBind::Udp(
                format!("{host}:{port}")
                    .parse()
                    .with_context(|| format!("device {}: host must be an IP address", d.id))?,
            ),
            avwarden::transport::LinkSpec::Serial(s) => avwarden::sim::SimBind::Pty {
                link: Some(s.path.clone().into()),
            },
            avwarden::transport::LinkSpec::Mqtt { topic } => {
                let (host, port) = cfg
                    .mqtt
                    .as_ref()
                    .map(|m| m.settings.broker_address())
                    .with_context(|| format!("device {}: needs the site's [mqtt] broker", d.id))?;
                avwarden::sim::SimBind::Mqtt {
                    host,
                    port,
                    topic: topic.clone(),
                }
            }
        };
        let ep = avwarden::sim::spawn(&d.profile, &d.simulator, bind, clock, cancel.child_token())
            .await
            .with_context(|| format!("device {}", d.id))?;
        println!("{}: {} simulator at {ep}", d.id, d.profile.id);
        n += 1;
    }
    if n == 0 {
        anyhow::bail!("no device has simulated = true");
    }
    println!("{n} simulator(s) running; Ctrl-C to stop");
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    cancel.cancel();
    Ok(())
}
