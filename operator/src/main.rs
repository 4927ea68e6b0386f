//! Entry point: parse arguments, start the runtime, hand over.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use tributary_operator::build::tenancy::NamespaceRules;

mod check_api;

/// The Tributary operator: turns Gateway, Queue, Worker and Sink resources into running
/// IoT data pipelines.
#[derive(Parser, Debug)]
#[command(name = "tributary-operator", version, about, long_about = None)]
struct Cli {
    /// Log format: `text` or `json`.
    #[arg(
        long,
        env = "TRIBUTARY_LOG_FORMAT",
        default_value = "text",
        global = true
    )]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Connect to the Kubernetes API (in-cluster or from the kubeconfig), verify TLS, and
    /// print the server's version. Exits non-zero when the API cannot be reached.
    CheckApi,
    /// Print the YAML of every CustomResourceDefinition the operator serves (what
    /// `hack/gen-crds.sh` writes to `crds/`).
    Crds {
        /// Write one `<name>.yaml` file per CRD into this directory instead of printing.
        #[arg(long)]
        out_dir: Option<std::path::PathBuf>,
    },
    /// Run the controllers (with leader election) until SIGTERM.
    Run(Box<RunArgs>),
    /// Print the field reference of the custom resources (markdown, generated from the CRD
    /// schemas; what `hack/gen-reference.sh` writes to `docs/resources.md`).
    Reference {
        /// Write the page to this file instead of printing it.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// Print the alert rules the operator would create for the Queues and Gateways in
    /// FILES (YAML manifests) as a plain Prometheus rules file, e.g. for
    /// `promtool check rules`.
    Rules {
        /// Manifests holding Queues and Gateways (other kinds are skipped).
        #[arg(required = true)]
        files: Vec<std::path::PathBuf>,
        /// Namespace of objects without one.
        #[arg(long, default_value = "default")]
        namespace: String,
    },
    /// Print Device manifests of a fleet as one multi-document YAML (for `kubectl apply -f
    /// -`): from a CSV file, or a numbered test fleet.
    Devices {
        #[command(subcommand)]
        command: DevicesCommand,
    },
}

/// The fleet subcommands of `devices`.
#[derive(Subcommand, Debug)]
enum DevicesCommand {
    /// One Device per line of a CSV file.
    ///
    /// The header names the columns: `id` (required; the resource name when it is a valid one, else a sanitised name plus `spec.deviceId`), `gateways`
    /// (`;`-separated, added to --gateway), `disabled` (true/false); every other column is
    /// an attribute (an empty cell sets none). Lines starting with `#` are comments.
    FromCsv {
        /// The CSV file, or `-` for standard input.
        file: std::path::PathBuf,
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// COUNT Devices named after a pattern, for test fleets and benchmarks.
    Generate {
        /// How many devices.
        #[arg(long)]
        count: u64,
        /// Their ids: one `{n}` placeholder, optionally zero-padded (`lamp-{n:04}`).
        #[arg(long)]
        name_pattern: String,
        /// The number of the first device.
        #[arg(long, default_value_t = 1)]
        first: u64,
        /// An attribute KEY=VALUE of every device (repeat for several).
        #[arg(long = "attribute")]
        attributes: Vec<String>,
        #[command(flatten)]
        fleet: FleetArgs,
    },
}

/// What every device of a fleet shares.
#[derive(clap::Args, Debug)]
struct FleetArgs {
    /// Namespace of the Devices; without it they go where `kubectl apply` puts them.
    #[arg(long)]
    namespace: Option<String>,
    /// A Gateway every device may use (repeat for several).
    #[arg(long = "gateway")]
    gateways: Vec<String>,
    /// The credential the operator issues each device: `generated` (a Secret
    /// `<name>-credentials` with `username` and `password`) or `certificate` (a TLS Secret
    /// `<name>-certificate`).
    #[arg(long, default_value = "generated")]
    credential: tributary_operator::fleet::CredentialKind,
}

impl FleetArgs {
    fn fleet(self) -> tributary_operator::fleet::Fleet {
        tributary_operator::fleet::Fleet {
            namespace: self.namespace,
            gateways: self.gateways,
            credential: self.credential,
        }
    }
}

/// Arguments of `run`.
#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Namespaces to watch (comma-separated or repeated); empty watches all.
    #[arg(
        long = "namespace",
        env = "TRIBUTARY_NAMESPACES",
        value_delimiter = ','
    )]
    namespaces: Vec<String>,
    /// Address of the /metrics, /healthz and /readyz endpoint.
    #[arg(long, env = "TRIBUTARY_LISTEN", default_value = "0.0.0.0:8080")]
    listen: std::net::SocketAddr,
    /// Default RabbitMQ image of managed brokers.
    #[arg(
        long,
        env = "TRIBUTARY_RABBITMQ_IMAGE",
        default_value = tributary_operator::build::DEFAULT_RABBITMQ_IMAGE
    )]
    rabbitmq_image: String,
    /// Default gateway image.
    #[arg(
        long,
        env = "TRIBUTARY_GATEWAY_IMAGE",
        default_value = tributary_operator::build::DEFAULT_GATEWAY_IMAGE
    )]
    gateway_image: String,
    /// Default worker image.
    #[arg(
        long,
        env = "TRIBUTARY_WORKER_IMAGE",
        default_value = tributary_operator::build::DEFAULT_WORKER_IMAGE
    )]
    worker_image: String,
    /// Default application API image.
    #[arg(
        long,
        env = "TRIBUTARY_API_IMAGE",
        default_value = tributary_operator::build::DEFAULT_API_IMAGE
    )]
    api_image: String,
    /// Namespace of the leader-election Lease; without it, no leader election (one replica).
    #[arg(long, env = "TRIBUTARY_LEASE_NAMESPACE")]
    lease_namespace: Option<String>,
    /// Name of the leader-election Lease.
    #[arg(
        long,
        env = "TRIBUTARY_LEASE_NAME",
        default_value = "tributary-operator"
    )]
    lease_name: String,
    /// This replica's identity in the Lease (the pod name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Extra label KEY=VALUE on every PodMonitor and PrometheusRule the operator creates
    /// (comma-separated or repeated), e.g. `release=kube-prometheus-stack` for the
    /// selectors of that chart's Prometheus.
    #[arg(
        long = "monitoring-label",
        env = "TRIBUTARY_MONITORING_LABELS",
        value_delimiter = ','
    )]
    monitoring_labels: Vec<String>,
    /// Let webhook Sinks point at loopback, link-local or unspecified addresses and at the
    /// Kubernetes API server (refused by default).
    #[arg(long, env = "TRIBUTARY_ALLOW_INTERNAL_WEBHOOKS")]
    allow_internal_webhooks: bool,
    /// Image allow-list per namespace: `NAMESPACE=PREFIX[,PREFIX...]` rules separated by
    /// `;`, `*` for every namespace not named, e.g.
    /// `tenant-a=registry.example.com/tenant-a/;*=registry.example.com/shared/`; a Gateway,
    /// Worker (custom container included) or managed broker image outside it makes the
    /// resource invalid. Empty: any image.
    #[arg(long, env = "TRIBUTARY_ALLOWED_IMAGES", default_value = "")]
    allowed_images: String,
    /// Gateway Service types per namespace, same syntax, e.g. `edge=LoadBalancer;*=ClusterIP`.
    /// Empty: any type.
    #[arg(long, env = "TRIBUTARY_ALLOWED_SERVICE_TYPES", default_value = "")]
    allowed_service_types: String,
    /// The namespace this operator's pod runs in (the chart sets it from the pod's
    /// metadata); brokers' NetworkPolicies admit the operator from there.
    #[arg(long, env = "TRIBUTARY_OPERATOR_NAMESPACE")]
    operator_namespace: Option<String>,
}

/// Prints all CRDs, or writes one file per CRD into `out_dir`.
fn print_crds(out_dir: Option<&std::path::Path>) -> anyhow::Result<()> {
    use anyhow::Context;
    use tributary_operator::crd;
    let Some(dir) = out_dir else {
        print!("{}", crd::all_yaml()?);
        return Ok(());
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for definition in crd::all() {
        let path = dir.join(crd::file_name(&definition));
        std::fs::write(&path, crd::to_yaml(&definition)?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// Prints the PrometheusRule specs of the Queues and Gateways in `files` as one rules file.
fn print_rules(files: &[std::path::PathBuf], namespace: &str) -> anyhow::Result<()> {
    use anyhow::Context;
    let mut groups = Vec::new();
    for file in files {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        groups.extend(
            tributary_operator::build::monitoring::rule_groups_of_manifests(&text, namespace)
                .with_context(|| file.display().to_string())?,
        );
    }
    print!(
        "{}",
        serde_yaml::to_string(&serde_json::json!({ "groups": groups }))?
    );
    Ok(())
}

/// Prints the resource reference, or writes it to `out`.
fn print_reference(out: Option<&std::path::Path>) -> anyhow::Result<()> {
    use anyhow::Context;
    let page = tributary_operator::reference::render(&tributary_operator::crd::all());
    match out {
        None => print!("{page}"),
        Some(path) => {
            std::fs::write(path, page).with_context(|| format!("writing {}", path.display()))?;
            eprintln!("wrote {}", path.display());
        }
    }
    Ok(())
}

/// Prints the Device manifests of a `devices` subcommand.
fn print_devices(command: DevicesCommand) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::io::{Read, Write};
    use tributary_operator::fleet;
    let devices = match command {
        DevicesCommand::FromCsv { file, fleet: args } => {
            let mut input = Vec::new();
            if file.as_os_str() == "-" {
                std::io::stdin()
                    .read_to_end(&mut input)
                    .context("reading standard input")?;
            } else {
                input =
                    std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            }
            fleet::devices_from_csv(&input, &args.fleet())
                .with_context(|| file.display().to_string())?
        }
        DevicesCommand::Generate {
            count,
            name_pattern,
            first,
            attributes,
            fleet: args,
        } => {
            let generated = fleet::Generated {
                count,
                first,
                pattern: name_pattern,
                attributes,
            };
            fleet::generate(&generated, &args.fleet())?
        }
    };
    let mut out = std::io::stdout().lock();
    out.write_all(fleet::to_yaml(&devices)?.as_bytes())?;
    out.flush()?;
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let identity = match args.identity {
        Some(identity) if !identity.is_empty() => identity,
        _ => format!("tributary-operator-{}", std::process::id()),
    };
    let settings = tributary_operator::run::Settings {
        namespaces: args
            .namespaces
            .into_iter()
            .filter(|n| !n.is_empty())
            .collect(),
        listen: args.listen,
        images: tributary_operator::build::Images {
            rabbitmq: args.rabbitmq_image,
            gateway: args.gateway_image,
            worker: args.worker_image,
            api: args.api_image,
        },
        lease_namespace: args.lease_namespace.filter(|n| !n.is_empty()),
        lease_name: args.lease_name,
        identity,
        monitoring_labels: tributary_operator::build::labels::parse(&args.monitoring_labels)
            .map_err(|reason| anyhow::anyhow!("--monitoring-label: {reason}"))?,
        allow_internal_webhooks: args.allow_internal_webhooks,
        tenancy: tributary_operator::build::tenancy::TenantPolicy {
            images: NamespaceRules::parse(&args.allowed_images)
                .map_err(|reason| anyhow::anyhow!("--allowed-images: {reason}"))?,
            service_types: NamespaceRules::parse(&args.allowed_service_types)
                .map_err(|reason| anyhow::anyhow!("--allowed-service-types: {reason}"))?,
        },
        operator_namespace: args.operator_namespace.filter(|n| !n.is_empty()),
    };
    tributary_operator::run::run(settings).await?;
    Ok(())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // lapin logs broker-side refusals the operator already reports as conditions.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,lapin=off"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cli.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::CheckApi => check_api::run().await,
            Command::Crds { out_dir } => print_crds(out_dir.as_deref()),
            Command::Rules { files, namespace } => print_rules(&files, &namespace),
            Command::Reference { out } => print_reference(out.as_deref()),
            Command::Run(args) => run(*args).await,
            Command::Devices { command } => print_devices(command),
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
