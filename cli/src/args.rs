//! The command line of `roost`: every subcommand, flag and help text.

use clap::{Args, Parser, Subcommand};
use proto::ids::{BadJobId, JobId};
use std::path::PathBuf;
use std::str::FromStr;

const AFTER_HELP: &str = "\
Start here:
  roost demo                                   the one-command demo
  eval \"$(roost pool up --dir ~/roost-pool)\"   start a personal pool, point this shell at it
  roost submit job.toml                        queue the jobs a job file describes
  roost q                                      see them
  roost wait 1.0                               wait for one; exit with its exit code
  roost pool down --dir ~/roost-pool           stop the pool

Environment:
  ROOST_POOL         the pool directory (same as --pool)
  ROOST_SCHEDD_SOCK  the schedd's socket (default: $ROOST_POOL/submit/schedd.sock)
  ROOST_MATCHMAKER   the matchmaker's IP:PORT (default: from $ROOST_POOL/pool.toml)
  ROOST_BIN_DIR      where roost-schedd, roost-matchmaker, roost-ownerd,
                     roost-starter and libroost_shim.so are (default: next to roost)";

/// Run batch jobs on idle workstations; every file a job touches stays on
/// the submit host.
#[derive(Debug, Parser)]
#[command(name = "roost", version, after_help = AFTER_HELP, max_term_width = 100)]
pub struct Cli {
    /// The pool to talk to: the directory `roost pool up --dir DIR` made.
    #[arg(
        long,
        global = true,
        env = "ROOST_POOL",
        value_name = "DIR",
        help_heading = "Global options"
    )]
    pub pool: Option<PathBuf>,

    /// The schedd's Unix socket, if not DIR/submit/schedd.sock of the pool.
    #[arg(
        long,
        global = true,
        env = "ROOST_SCHEDD_SOCK",
        value_name = "PATH",
        help_heading = "Global options"
    )]
    pub schedd_sock: Option<PathBuf>,

    /// The matchmaker's address, if not the one in DIR/pool.toml.
    #[arg(
        long,
        global = true,
        env = "ROOST_MATCHMAKER",
        value_name = "IP:PORT",
        help_heading = "Global options"
    )]
    pub matchmaker: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Make, start, stop and inspect a personal pool.
    #[command(subcommand)]
    Pool(PoolCommand),
    /// Queue the jobs a job description file describes; print their ids.
    Submit(SubmitArgs),
    /// List the jobs in the queue.
    Q(QArgs),
    /// List the pool's machines as the matchmaker sees them.
    Status(StatusArgs),
    /// Remove jobs from the queue; running ones are stopped.
    Rm(RmArgs),
    /// Show a job's event log.
    Log(LogArgs),
    /// Wait until jobs end, then exit with the last one's exit code.
    Wait(WaitArgs),
    /// Checkpoint running jobs now; they go on running.
    #[command(after_help = "\
The job's starter takes the image and sends it to the schedd; `roost log JOB` shows
`checkpointed` (size, seconds) or why the job could not be checkpointed, and the CKPT
column of `roost q` the checkpoints taken so far. With --wait, a progress bar with MB/s
shows the image arriving (on stderr) until the job's log says `checkpointed` (exit
status 0), `checkpoint_refused` or `checkpoint_failed` (1); that event is printed.")]
    Checkpoint(CkptArgs),
    /// Move running jobs off their hosts: checkpoint, leave, run again elsewhere.
    #[command(after_help = "\
Each job is checkpointed, leaves its execute host and goes back to the queue; it
resumes from that image on the next machine it is matched with. A job that cannot be
checkpointed at that moment is stopped and restarts from its last image (or from the
beginning); `roost log JOB` says which. With --wait, a progress bar with MB/s shows the
image arriving (on stderr) until the job's log says `vacated` (exit status 0) or
`evicted` (left without a checkpoint: 1); that event is printed.")]
    Vacate(CkptArgs),
    /// Keep jobs from running until released; running ones are vacated first.
    Hold(HoldArgs),
    /// Let held jobs run again.
    Release(JobsArgs),
    /// List finished (completed and removed) jobs, the most recent first.
    History(HistoryArgs),
    /// Explain why a job is not running: which requirement clauses reject
    /// which machines.
    #[command(after_help = "\
Asks the schedd for the job's ad and the matchmaker to evaluate it against every machine
it knows: per top-level `&&` clause of the job's requirements, how many machines it
rejects; which machines' own requirements reject the job, and by which clause; which
machines match now. If the matchmaker cannot explain, the same is computed here from
the machines `roost status` lists.")]
    Why(WhyArgs),
    /// Evaluate expressions against ads, as HTCondor's classad_eval does.
    #[command(after_help = "\
Ad files hold `Name = expression` lines (`#` starts a comment line) or one record
`[ Name = expression; ... ]`. An unscoped name is looked up in MY, then in TARGET.

  roost eval 'TARGET.Memory >= RequestMemory' --my job.ad --target machine.ad
  roost eval 'strcat(\"a\", 1 + 2)'")]
    Eval(EvalArgs),
    /// Run the demo: a personal pool, a job on an execute host, its files on
    /// the submit host.
    Demo(DemoArgs),
    /// Print the shell completion script for bash, zsh or fish.
    #[command(after_help = "\
  roost completions bash > /etc/bash_completion.d/roost
  roost completions zsh > \"${fpath[1]}/_roost\"
  roost completions fish > ~/.config/fish/completions/roost.fish")]
    Completions(CompletionsArgs),
    /// Write the man pages of roost, its subcommands and the daemons.
    #[command(after_help = "\
Writes roost.1, one page per subcommand (roost-submit.1, roost-pool-up.1, ...) and the
pages of roost-matchmaker, roost-schedd, roost-ownerd and roost-starter, which each
program makes from its own flags (they are looked for where `roost pool up` looks).

  roost man --out /usr/local/share/man/man1 && mandb")]
    Man(ManArgs),
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_name = "SHELL", value_parser = ["bash", "zsh", "fish"])]
    pub shell: String,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// The directory to write the pages into (made if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum PoolCommand {
    /// Make a pool directory: a pool CA, certificates and pool.toml.
    #[command(after_help = "\
Creates DIR/pki/ (ca, cm, submit, exec1..N, user) and DIR/pool.toml (host names and
127.0.0.1 addresses on free ports). `roost pool up` does this by itself.")]
    Init(PoolInitArgs),
    /// Start a personal pool in the background (making it first if needed).
    #[command(after_help = "\
Starts roost-matchmaker (host cm), roost-schedd (host submit) and one roost-ownerd
per execute host (exec1..N) in the background, each logging to DIR/HOST/*.log, and
waits until the schedd answers and every execute host has reported to the matchmaker.
Execute hosts start idle. Progress goes to stderr; stdout gets one line for your shell:

  eval \"$(roost pool up --dir DIR)\"")]
    Up(PoolUpArgs),
    /// Stop the pool's daemons (SIGTERM, then SIGKILL after --grace seconds).
    Down(PoolDownArgs),
    /// Make an execute host's owner look active (touch DIR/HOST/activity).
    Touch(PoolTouchArgs),
    /// Issue a host's certificate from the pool CA (DIR/pki/NAME.pem and NAME.key).
    #[command(after_help = "\
The role decides what the host's daemons may do: ownerd (an execute host: advertises a
machine, runs starters), schedd (a submit host: sends jobs, serves shadows) or matchmaker
(the central manager). Copy DIR/pki/ca.pem, DIR/pki/deny (if any) and NAME.pem/NAME.key to
the host and start its daemon with --pki DIR --name NAME.

  roost pool add-host exec7 --dir ~/pool
  roost pool add-host submit2 --role schedd --san 10.0.0.12 --dir ~/pool")]
    AddHost(PoolAddHostArgs),
    /// Issue a user's certificate from the pool CA (DIR/pki/NAME.pem and NAME.key).
    #[command(after_help = "\
A user certificate (role user) lets its holder query the matchmaker (roost status, roost
why); it is refused where a daemon's role is required. Give the user DIR/pki/ca.pem and
NAME.pem/NAME.key.

  roost pool add-user alice --dir ~/pool --days 90")]
    AddUser(PoolAddUserArgs),
    /// Put a certificate on the pool's deny list (DIR/pki/deny).
    #[command(after_help = "\
WHAT is a name with a certificate in DIR/pki or a serial number (hex, as `openssl x509
-serial` prints it). Every daemon re-reads its --pki DIR/deny when the file changes and
refuses the certificate from its next handshake, without a restart; copy the file to
hosts that keep their own pki directory.

  roost pool revoke exec7 --dir ~/pool")]
    Revoke(PoolRevokeArgs),
    /// List the pool's machines (same as `roost status`).
    Status(StatusArgs),
    /// Print every daemon's web endpoints: the pool page (with its token) and each /metrics.
    Urls(PoolUrlsArgs),
}

#[derive(Debug, Args)]
pub struct PoolUrlsArgs {
    /// The pool directory (default: --pool / $ROOST_POOL).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Print JSON: [{"daemon", "what", "url"}].
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PoolInitArgs {
    /// The pool directory (default: --pool / $ROOST_POOL).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Number of execute hosts (exec1..N).
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub hosts: u32,
    /// Make a new CA and certificates even if DIR already holds a pool.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct PoolUpArgs {
    /// The pool directory (default: --pool / $ROOST_POOL).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Number of execute hosts [default: 2, or as many as DIR/pool.toml has].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=64))]
    pub hosts: Option<u32>,
    /// An execute host's owner counts as active for this many seconds after
    /// its activity file was touched.
    #[arg(long, value_name = "SECS", default_value_t = 2)]
    pub idle_secs: u64,
    /// The matchmaker's negotiation cycle [default: the matchmaker's own].
    #[arg(long, value_name = "SECS")]
    pub cycle_secs: Option<u64>,
    /// Give up if the pool is not ready after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub timeout: u64,
}

#[derive(Debug, Args)]
pub struct PoolDownArgs {
    /// The pool directory (default: --pool / $ROOST_POOL).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Seconds to wait after SIGTERM before SIGKILL.
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    pub grace: u64,
}

#[derive(Debug, Args)]
pub struct PoolAddHostArgs {
    /// The host's name (its certificate's CN and DNS name), e.g. exec7.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// The pool directory (default: --pool / $ROOST_POOL).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// What the host runs: ownerd (execute host), schedd (submit host) or matchmaker.
    #[arg(long, value_name = "ROLE", default_value = "ownerd",
          value_parser = clap::builder::PossibleValuesParser::new(["ownerd", "schedd", "matchmaker"]))]
    pub role: String,
    /// A further DNS name or IP address the certificate is valid for (repeatable).
    #[arg(long = "san", value_name = "NAME|IP")]
    pub sans: Vec<String>,
    /// Days the certificate is valid.
    #[arg(long, value_name = "N", default_value_t = 365)]
    pub days: u32,
    /// Replace NAME's existing certificate (the old one stays valid until revoked).
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct PoolAddUserArgs {
    /// The user's name (the certificate's CN), e.g. alice.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// The pool directory (default: --pool / $ROOST_POOL).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Days the certificate is valid.
    #[arg(long, value_name = "N", default_value_t = 365)]
    pub days: u32,
    /// Replace NAME's existing certificate (the old one stays valid until revoked).
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct PoolRevokeArgs {
    /// A name with a certificate in DIR/pki, or a certificate's serial number.
    #[arg(value_name = "WHAT")]
    pub what: String,
    /// The pool directory (default: --pool / $ROOST_POOL).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct PoolTouchArgs {
    /// The execute host, e.g. exec1.
    #[arg(value_name = "HOST")]
    pub host: String,
    /// The pool directory (default: --pool / $ROOST_POOL).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print the machine ads as JSON.
    #[arg(long)]
    pub json: bool,
    /// List only machines whose ad makes EXPR true, e.g.
    /// 'State == "Unclaimed" && Memory >= 2048'.
    #[arg(long, value_name = "EXPR")]
    pub constraint: Option<String>,
}

#[derive(Debug, Args)]
pub struct WhyArgs {
    /// The job, CLUSTER.PROC (CLUSTER means CLUSTER.0).
    #[arg(value_name = "JOB")]
    pub job: JobSel,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The expressions; each value is printed on its own line.
    #[arg(value_name = "EXPR", required = true)]
    pub exprs: Vec<String>,
    /// The ad that is MY (an ad file).
    #[arg(long, value_name = "FILE")]
    pub my: Option<PathBuf>,
    /// The ad that is TARGET (an ad file).
    #[arg(long, value_name = "FILE")]
    pub target: Option<PathBuf>,
}

#[derive(Debug, Args)]
#[command(after_help = "\
A job file is TOML, e.g.:

  executable = \"analyse.sh\"
  arguments = [\"in.$(Process).csv\"]
  output = \"out.$(Process)\"
  queue = 3

Relative paths are relative to the directory you submit from (or `initialdir`); the
job reads and writes them there, on this host, wherever it runs.")]
pub struct SubmitArgs {
    /// The job description file.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Check the file and print the jobs it describes, without submitting.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
#[command(after_help = "\
A job's ad holds its description's attributes (Owner, Cmd, Iwd, RequestCpus,
RequestMemory, RequestDisk, Requirements, Rank, custom attributes) and ClusterId,
ProcId, QDate, JobRuns, JobState (\"idle\", \"running\", \"held\", ...), RemoteHost
while it runs and HoldReason while held.")]
pub struct QArgs {
    /// Print the job summaries as JSON.
    #[arg(long)]
    pub json: bool,
    /// Include completed and removed jobs.
    #[arg(long)]
    pub all: bool,
    /// List only jobs whose ad makes EXPR true, e.g. 'RequestMemory > 1024'.
    #[arg(long, value_name = "EXPR")]
    pub constraint: Option<String>,
    /// List only running jobs, with their hosts.
    #[arg(long, conflicts_with = "held")]
    pub run: bool,
    /// List only held jobs, with the reasons.
    #[arg(long)]
    pub held: bool,
    /// Redraw the list every interval until interrupted, with a progress
    /// bar and MB/s for each checkpoint or restart image on its way.
    #[arg(long, conflicts_with = "json")]
    pub watch: bool,
    /// Seconds between redraws of --watch.
    #[arg(long, value_name = "SECS", default_value_t = 1.0, requires = "watch")]
    pub interval: f64,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    /// Jobs to remove: CLUSTER.PROC, or CLUSTER for all of its jobs.
    #[arg(value_name = "JOB", required = true)]
    pub jobs: Vec<JobSel>,
}

#[derive(Debug, Args)]
pub struct JobsArgs {
    /// The jobs: CLUSTER.PROC, or CLUSTER for all of its jobs.
    #[arg(value_name = "JOB", required = true)]
    pub jobs: Vec<JobSel>,
}

#[derive(Debug, Args)]
pub struct CkptArgs {
    /// The jobs: CLUSTER.PROC, or CLUSTER for all of its jobs.
    #[arg(value_name = "JOB", required = true)]
    pub jobs: Vec<JobSel>,
    /// Show the image transfer's progress until the job's log records the
    /// outcome, then print it.
    #[arg(long)]
    pub wait: bool,
}

#[derive(Debug, Args)]
pub struct HoldArgs {
    /// The jobs: CLUSTER.PROC, or CLUSTER for all of its jobs.
    #[arg(value_name = "JOB", required = true)]
    pub jobs: Vec<JobSel>,
    /// Why, for `roost q` and the job's event log [default: held by USER].
    #[arg(
        long,
        value_name = "TEXT",
        default_value = "",
        hide_default_value = true
    )]
    pub reason: String,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Print the job summaries as JSON.
    #[arg(long)]
    pub json: bool,
    /// Show at most this many jobs.
    #[arg(long, value_name = "N")]
    pub limit: Option<u32>,
}

#[derive(Debug, Args)]
pub struct LogArgs {
    /// The job, CLUSTER.PROC (CLUSTER means CLUSTER.0).
    #[arg(value_name = "JOB")]
    pub job: JobSel,
    /// Print the log's JSON lines as they are.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(after_help = "\
Exit status: the last job's exit code; 128+N if it was killed by signal N; 1 if it
was removed; 124 on --timeout.")]
pub struct WaitArgs {
    /// Jobs to wait for: CLUSTER.PROC, or CLUSTER for all of its jobs.
    #[arg(value_name = "JOB", required = true)]
    pub jobs: Vec<JobSel>,
    /// Give up after this many seconds.
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<f64>,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where to put the pool and the job [default: a new temporary directory].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Number of execute hosts.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub hosts: u32,
    /// Leave the pool running afterwards.
    #[arg(long)]
    pub keep: bool,
}

/// A job on the command line: one job, or every job of a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobSel {
    Cluster(u64),
    Job(JobId),
}

impl JobSel {
    /// The job this names: `CLUSTER` alone means `CLUSTER.0`.
    pub fn first(self) -> JobId {
        match self {
            JobSel::Cluster(cluster) => JobId { cluster, proc: 0 },
            JobSel::Job(id) => id,
        }
    }

    pub fn matches(self, id: JobId) -> bool {
        match self {
            JobSel::Cluster(c) => id.cluster == c,
            JobSel::Job(j) => id == j,
        }
    }
}

impl std::fmt::Display for JobSel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JobSel::Cluster(c) => write!(f, "{c}"),
            JobSel::Job(j) => write!(f, "{j}"),
        }
    }
}

impl FromStr for JobSel {
    type Err = BadJobId;
    fn from_str(s: &str) -> Result<Self, BadJobId> {
        if s.contains('.') {
            s.parse().map(JobSel::Job)
        } else {
            s.parse()
                .map(JobSel::Cluster)
                .map_err(|_| BadJobId(s.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("roost").chain(args.iter().copied()))
    }

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn pool_up_flags_and_defaults() {
        let cli = parse(&["pool", "up", "--dir", "/tmp/p", "--hosts", "3"]).unwrap();
        let Command::Pool(PoolCommand::Up(a)) = cli.command else {
            panic!("not pool up: {cli:?}")
        };
        assert_eq!(a.dir, Some(PathBuf::from("/tmp/p")));
        assert_eq!(a.hosts, Some(3));
        assert_eq!(a.idle_secs, 2);
        assert_eq!(a.timeout, 30);

        let cli = parse(&["pool", "up", "--dir", "/tmp/p"]).unwrap();
        let Command::Pool(PoolCommand::Up(a)) = cli.command else {
            panic!("not pool up")
        };
        assert_eq!(a.hosts, None);
        assert!(parse(&["pool", "up", "--hosts", "0"]).is_err());
    }

    #[test]
    fn pool_init_defaults_to_two_hosts() {
        let cli = parse(&["pool", "init", "--dir", "d"]).unwrap();
        let Command::Pool(PoolCommand::Init(a)) = cli.command else {
            panic!("not pool init")
        };
        assert_eq!((a.hosts, a.force), (2, false));
    }

    #[test]
    fn global_pool_flag_goes_anywhere() {
        let cli = parse(&["q", "--pool", "/p", "--json"]).unwrap();
        assert_eq!(cli.pool, Some(PathBuf::from("/p")));
        let Command::Q(q) = cli.command else {
            panic!("not q")
        };
        assert!(q.json && !q.all);
        let cli = parse(&["--pool", "/p", "pool", "touch", "exec2"]).unwrap();
        assert_eq!(cli.pool, Some(PathBuf::from("/p")));
        let Command::Pool(PoolCommand::Touch(t)) = cli.command else {
            panic!("not touch")
        };
        assert_eq!((t.host.as_str(), t.dir), ("exec2", None));
    }

    #[test]
    fn job_selectors() {
        assert_eq!("12".parse::<JobSel>().unwrap(), JobSel::Cluster(12));
        assert_eq!(
            "12.3".parse::<JobSel>().unwrap(),
            JobSel::Job(JobId {
                cluster: 12,
                proc: 3
            })
        );
        assert_eq!(
            "x".parse::<JobSel>().unwrap_err().to_string(),
            "`x` is not a job id (expected CLUSTER or CLUSTER.PROC, e.g. 12.0)"
        );
        assert!("1.x".parse::<JobSel>().is_err());
        assert!(JobSel::Cluster(4).matches(JobId {
            cluster: 4,
            proc: 9
        }));
        assert!(
            !JobSel::Job(JobId {
                cluster: 4,
                proc: 0
            })
            .matches(JobId {
                cluster: 4,
                proc: 1
            })
        );
        assert_eq!(
            JobSel::Cluster(4).first(),
            JobId {
                cluster: 4,
                proc: 0
            }
        );
    }

    #[test]
    fn wait_rm_need_jobs_and_parse_them() {
        assert!(parse(&["wait"]).is_err());
        assert!(parse(&["rm"]).is_err());
        let err = parse(&["rm", "banana"]).unwrap_err().to_string();
        assert!(err.contains("`banana` is not a job id"), "{err}");
        let cli = parse(&["wait", "1.0", "2", "--timeout", "1.5"]).unwrap();
        let Command::Wait(w) = cli.command else {
            panic!("not wait")
        };
        assert_eq!(
            w.jobs,
            vec![
                JobSel::Job(JobId {
                    cluster: 1,
                    proc: 0
                }),
                JobSel::Cluster(2)
            ]
        );
        assert_eq!(w.timeout, Some(1.5));
    }

    #[test]
    fn checkpoint_vacate_hold_release_history() {
        for sub in ["checkpoint", "vacate", "hold", "release"] {
            assert!(parse(&[sub]).is_err(), "{sub} needs jobs");
        }
        let cli = parse(&["checkpoint", "1.0", "2"]).unwrap();
        let Command::Checkpoint(a) = cli.command else {
            panic!("not checkpoint")
        };
        assert_eq!(
            a.jobs,
            vec![
                JobSel::Job(JobId {
                    cluster: 1,
                    proc: 0
                }),
                JobSel::Cluster(2)
            ]
        );
        assert!(!a.wait);
        let cli = parse(&["vacate", "--wait", "1.0"]).unwrap();
        let Command::Vacate(a) = cli.command else {
            panic!("not vacate")
        };
        assert!(a.wait);
        assert!(parse(&["release", "--wait", "1"]).is_err());
        let cli = parse(&["q", "--watch"]).unwrap();
        let Command::Q(q) = cli.command else {
            panic!("not q")
        };
        assert!(q.watch);
        assert_eq!(q.interval, 1.0);
        let cli = parse(&["q", "--watch", "--interval", "0.5"]).unwrap();
        let Command::Q(q) = cli.command else {
            panic!("not q")
        };
        assert_eq!(q.interval, 0.5);
        assert!(
            parse(&["q", "--interval", "2"]).is_err(),
            "--interval needs --watch"
        );
        assert!(parse(&["q", "--watch", "--json"]).is_err());
        let cli = parse(&["hold", "3", "--reason", "input not ready"]).unwrap();
        let Command::Hold(h) = cli.command else {
            panic!("not hold")
        };
        assert_eq!(
            (h.jobs, h.reason.as_str()),
            (vec![JobSel::Cluster(3)], "input not ready")
        );
        let cli = parse(&["hold", "3"]).unwrap();
        let Command::Hold(h) = cli.command else {
            panic!("not hold")
        };
        assert_eq!(h.reason, "");
        let cli = parse(&["history", "--json", "--limit", "5"]).unwrap();
        let Command::History(h) = cli.command else {
            panic!("not history")
        };
        assert_eq!((h.json, h.limit), (true, Some(5)));
        assert!(matches!(
            parse(&["vacate", "4.1"]).unwrap().command,
            Command::Vacate(_)
        ));
        assert!(matches!(
            parse(&["release", "4"]).unwrap().command,
            Command::Release(_)
        ));
    }

    #[test]
    fn submit_log_demo() {
        let cli = parse(&["submit", "job.toml", "--dry-run"]).unwrap();
        let Command::Submit(s) = cli.command else {
            panic!("not submit")
        };
        assert_eq!((s.file, s.dry_run), (PathBuf::from("job.toml"), true));
        let cli = parse(&["log", "7", "--json"]).unwrap();
        let Command::Log(l) = cli.command else {
            panic!("not log")
        };
        assert_eq!((l.job, l.json), (JobSel::Cluster(7), true));
        let cli = parse(&["demo"]).unwrap();
        let Command::Demo(d) = cli.command else {
            panic!("not demo")
        };
        assert_eq!((d.dir, d.hosts, d.keep), (None, 2, false));
    }

    #[test]
    fn why_eval_and_filters() {
        let cli = parse(&["why", "4.1", "--json"]).unwrap();
        let Command::Why(w) = cli.command else {
            panic!("not why")
        };
        assert_eq!(
            (w.job, w.json),
            (
                JobSel::Job(JobId {
                    cluster: 4,
                    proc: 1
                }),
                true
            )
        );
        assert!(parse(&["why"]).is_err());
        assert!(parse(&["why", "x.y"]).is_err());

        let cli = parse(&[
            "eval", "1 + 2", "Memory", "--my", "j.ad", "--target", "m.ad",
        ])
        .unwrap();
        let Command::Eval(e) = cli.command else {
            panic!("not eval")
        };
        assert_eq!(e.exprs, ["1 + 2", "Memory"]);
        assert_eq!(e.my, Some(PathBuf::from("j.ad")));
        assert_eq!(e.target, Some(PathBuf::from("m.ad")));
        assert!(parse(&["eval"]).is_err(), "eval needs an expression");

        let cli = parse(&["q", "--constraint", "Owner == \"ann\"", "--held"]).unwrap();
        let Command::Q(q) = cli.command else {
            panic!("not q")
        };
        assert_eq!(q.constraint.as_deref(), Some("Owner == \"ann\""));
        assert!(q.held && !q.run && !q.all);
        let err = parse(&["q", "--run", "--held"]).unwrap_err().to_string();
        assert!(err.contains("cannot be used with"), "{err}");

        let cli = parse(&["status", "--constraint", "Memory > 1", "--json"]).unwrap();
        let Command::Status(s) = cli.command else {
            panic!("not status")
        };
        assert_eq!(
            (s.constraint.as_deref(), s.json),
            (Some("Memory > 1"), true)
        );
        let cli = parse(&["pool", "status", "--constraint", "true"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Pool(PoolCommand::Status(StatusArgs {
                constraint: Some(_),
                ..
            }))
        ));
    }

    #[test]
    fn completions_and_man() {
        let cli = parse(&["completions", "zsh"]).unwrap();
        let Command::Completions(c) = cli.command else {
            panic!("not completions")
        };
        assert_eq!(c.shell, "zsh");
        assert!(parse(&["completions", "tcsh"]).is_err());
        let cli = parse(&["man", "--out", "m"]).unwrap();
        let Command::Man(m) = cli.command else {
            panic!("not man")
        };
        assert_eq!(m.out, PathBuf::from("m"));
        assert!(parse(&["man"]).is_err(), "man needs --out");
    }

    #[test]
    fn every_subcommand_has_help() {
        let mut cmd = Cli::command();
        cmd.build();
        fn walk(c: &clap::Command, path: &str) {
            for s in c.get_subcommands() {
                let p = format!("{path} {}", s.get_name());
                assert!(s.get_about().is_some(), "`{p}` has no help text");
                for a in s.get_arguments() {
                    assert!(
                        a.get_help().is_some() || a.is_hide_set(),
                        "`{p}` argument {} has no help text",
                        a.get_id()
                    );
                }
                walk(s, &p);
            }
        }
        walk(&cmd, "roost");
    }
}
