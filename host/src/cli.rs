//! The `plughost` command line.

use std::{io::IsTerminal, process::ExitCode, sync::Arc};

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::{
    auth::AuthService,
    config::{Settings, SettingsArgs},
    runtime::Core,
};

/// plughost: a web host that loads plugins as native libraries.
#[derive(Debug, Parser)]
#[command(name = "plughost", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Load the plugin dir and serve HTTP until SIGINT/SIGTERM.
    Serve(SettingsArgs),
    /// Run a SQL script on the host database in one transaction. Allowed:
    /// SELECT, INSERT, SET, DO; with --destroy also DROP, DELETE, ALTER.
    Sql {
        /// The script.
        file: std::path::PathBuf,
        /// Also allow DROP, DELETE and ALTER (for destroy scripts).
        #[arg(long)]
        destroy: bool,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Manage users (same --data-dir and DATABASE_URL as `serve`).
    User {
        #[command(subcommand)]
        action: UserAction,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Manage roles and their permissions.
    Role {
        #[command(subcommand)]
        action: RoleAction,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Manage plugins in the plugin dir, with the same checks, rollback and
    /// lifecycle lock as the HTTP API (a running server with the same plugin
    /// dir serves CLI installs from its next start; use the HTTP API to
    /// change a running server live).
    Plugin {
        #[command(subcommand)]
        action: PluginAction,
    },
    /// Build plugin catalogs: signed indexes of plugin packages that hosts
    /// list and install from by name (PLUGHOST_CATALOG).
    Catalog {
        #[command(subcommand)]
        action: CatalogAction,
    },
    /// Opens one library and prints the plugin it declares (the host runs
    /// this in a child process before it maps a library itself).
    #[command(name = crate::plugin::loading::libcache::PROBE_COMMAND, hide = true)]
    ProbeLibrary {
        /// The library.
        library: std::path::PathBuf,
    },
    /// Runs one isolated plugin for a serving host, over its socket (the
    /// host runs this as a supervised child process).
    #[command(name = "isolated-plugin", hide = true)]
    IsolatedPlugin {
        /// The host's socket.
        #[arg(long)]
        socket: std::path::PathBuf,
        /// The library's private copy.
        #[arg(long)]
        library: std::path::PathBuf,
        /// The plugin's name.
        #[arg(long)]
        name: String,
        /// This binary compared the library's layout already.
        #[arg(long)]
        layout_checked: bool,
        /// The address space cap, MiB (0: none).
        #[arg(long, default_value_t = 0)]
        memory_mb: u64,
        /// The cgroup to join, its memory limit set by the host.
        #[arg(long)]
        cgroup: Option<std::path::PathBuf>,
        #[command(flatten)]
        settings: SettingsArgs,
    },
}

#[derive(Debug, Subcommand)]
enum CatalogAction {
    /// Write DIR/index.json, the catalog of the packages (*.zip) in DIR,
    /// each read with the install's own checks (one that fails them is
    /// named and left out); serve DIR with any static web server, or point
    /// hosts at it as a path.
    Build {
        /// The folder of packages.
        dir: std::path::PathBuf,
        /// Sign the index with this secret key (index.json.minisig; its
        /// password, if any, from PLUGHOST_SIGNING_PASSWORD).
        #[arg(long, value_name = "KEY_FILE")]
        sign: Option<std::path::PathBuf>,
        /// The URL DIR is served at: package URLs are written under it
        /// (default: relative to the index).
        #[arg(long, value_name = "URL")]
        base_url: Option<String>,
        /// A public key file to check the packages' signatures with (repeat
        /// for several).
        #[arg(long = "trusted-key", value_name = "FILE")]
        trusted_keys: Vec<std::path::PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum PluginAction {
    /// List every plugin found, with its state.
    List {
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// List what the plugin catalogs offer (PLUGHOST_CATALOG), or those
    /// whose name, summary, description, author or tags contain TERM.
    Search {
        /// What to look for (case does not matter).
        term: Option<String>,
        /// Read this catalog (a URL or path) instead of PLUGHOST_CATALOG
        /// (repeat for several).
        #[arg(long = "catalog", value_name = "URL|PATH")]
        catalogs: Vec<String>,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Install (or upgrade) a plugin from a ZIP package, a Git repository
    /// or a catalog.
    Add {
        /// The package.
        #[arg(long, conflicts_with_all = ["git", "catalog"], required_unless_present_any = ["git", "catalog"])]
        zip: Option<std::path::PathBuf>,
        /// The plugin to install (or upgrade) by name from the catalogs
        /// (PLUGHOST_CATALOG).
        #[arg(long, value_name = "NAME", conflicts_with = "git")]
        catalog: Option<String>,
        /// With --catalog: the version (default: the newest compatible one).
        #[arg(long, requires = "catalog")]
        version: Option<String>,
        /// The repository URL (https://, or a local path with --git-allow-local).
        #[arg(long)]
        git: Option<String>,
        /// Branch, tag or commit to install.
        #[arg(long = "ref", requires = "git")]
        reference: Option<String>,
        /// Replace an installed older version.
        #[arg(long)]
        upgrade: bool,
        /// Replace it even with an older or the same version.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Uninstall a plugin (a backup is kept).
    Remove {
        /// The plugin.
        name: String,
        /// Also drop its tables (runs its destroy script).
        #[arg(long)]
        purge: bool,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Enable a plugin.
    Enable {
        /// The plugin.
        name: String,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Disable a plugin.
    Disable {
        /// The plugin.
        name: String,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Write an installed plugin's package (as downloaded from the API).
    Pack {
        /// The plugin.
        name: String,
        /// The file to write.
        #[arg(short, long)]
        output: std::path::PathBuf,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Create a new plugin crate that builds and loads as is.
    New {
        /// The plugin's name.
        name: String,
        /// App-level (own top-level routes) or extend-level (inside the admin app).
        #[arg(long, value_enum, default_value = "app")]
        kind: crate::plugin::scaffold::Kind,
        /// Where to create it (default: ./NAME).
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
        /// The plugin-api dependency: a version from a registry or the path of a plugin-api checkout (default: this host's own contract, written into the crate as plugin-api/).
        #[arg(long, value_name = "VERSION|PATH")]
        plugin_api: Option<String>,
    },
    /// Write the plugin-api source of this host's contract into DIR (a
    /// crate that builds on its own), for plugin crates to depend on by path.
    Sdk {
        /// Where to write it (created; must be empty).
        dir: std::path::PathBuf,
    },
    /// Build a plugin crate (release) and write its installable package,
    /// checked as an install checks it, optionally signed.
    Package {
        /// The plugin crate (with Cargo.toml, plugin.toml and README.md).
        crate_dir: std::path::PathBuf,
        /// The package to write.
        #[arg(short, long)]
        output: std::path::PathBuf,
        /// Sign it with this secret key (from `plughost plugin keygen`; its
        /// password, if any, from PLUGHOST_SIGNING_PASSWORD).
        #[arg(long, value_name = "KEY_FILE")]
        sign: Option<std::path::PathBuf>,
    },
    /// Check a plugin as an install would, without a host: a plugin.toml, a
    /// plugin directory, a lone library, a crate (built first) or a package
    /// ZIP. Prints each problem with what to do; exits 0 when it would install.
    Check {
        /// What to check.
        path: std::path::PathBuf,
        /// A public key file to trust (repeat for several); with it, the
        /// signature is checked as a host with these keys checks it.
        #[arg(long = "trusted-key", value_name = "FILE")]
        trusted_keys: Vec<std::path::PathBuf>,
        /// Also refuse a package that is not signed by a trusted key.
        #[arg(long)]
        require_signed: bool,
    },
    /// Write a new signing key pair: FILE (secret) and FILE.pub (public, for
    /// the hosts' PLUGHOST_TRUSTED_KEYS).
    Keygen {
        /// The secret key file.
        #[arg(long, value_name = "FILE")]
        out: std::path::PathBuf,
        /// Leave the secret key without a password (else PLUGHOST_SIGNING_PASSWORD, or asked).
        #[arg(long)]
        no_password: bool,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
}

impl PluginAction {
    /// The host settings of an action that runs against a plugin dir.
    fn settings(&self) -> Option<&SettingsArgs> {
        match self {
            Self::List { settings }
            | Self::Search { settings, .. }
            | Self::Add { settings, .. }
            | Self::Remove { settings, .. }
            | Self::Enable { settings, .. }
            | Self::Disable { settings, .. }
            | Self::Pack { settings, .. } => Some(settings),
            Self::New { .. }
            | Self::Sdk { .. }
            | Self::Package { .. }
            | Self::Keygen { .. }
            | Self::Check { .. } => None,
        }
    }
}

#[derive(Debug, Subcommand)]
enum UserAction {
    /// Create a user.
    Add {
        /// Login name.
        name: String,
        /// Password (8 to 1024 characters).
        #[arg(long)]
        password: String,
        /// Roles to hold (repeat for several).
        #[arg(long = "role")]
        roles: Vec<String>,
        /// Make the user a superuser (passes every permission check).
        #[arg(long)]
        superuser: bool,
    },
    /// Set a user's password.
    Passwd {
        /// Login name.
        name: String,
        /// New password (8 to 1024 characters).
        #[arg(long)]
        password: String,
    },
    /// Give a user roles or take them away.
    #[command(group(clap::ArgGroup::new("change").required(true).multiple(true).args(["add", "remove"])))]
    Roles {
        /// Login name.
        name: String,
        /// A role to give (repeat for several).
        #[arg(long = "add")]
        add: Vec<String>,
        /// A role to take away (repeat for several).
        #[arg(long = "remove")]
        remove: Vec<String>,
    },
    /// Disable a user: no login, and every token issued before is refused
    /// on every instance, also after the user is enabled again.
    Disable {
        /// Login name.
        name: String,
    },
    /// Enable a disabled user (who logs in again for a new token).
    Enable {
        /// Login name.
        name: String,
    },
    /// List users and their roles.
    List,
}

#[derive(Debug, Subcommand)]
enum RoleAction {
    /// Create a role.
    Add {
        /// Role name.
        name: String,
    },
    /// Give a role permissions (e.g. sys:dict:add).
    Grant {
        /// Role name.
        name: String,
        /// Permission strings.
        #[arg(required = true)]
        permissions: Vec<String>,
    },
    /// Take permissions from a role; tokens in use lose them on every
    /// instance.
    Revoke {
        /// Role name.
        name: String,
        /// Permission strings.
        #[arg(required = true)]
        permissions: Vec<String>,
    },
    /// Delete a role; its holders lose its permissions on every instance.
    Delete {
        /// Role name.
        name: String,
    },
    /// List roles, their permissions and how many users hold each.
    List,
}

type Action = std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>>>>;

/// Runs a management action against the database the server would use.
fn manage(
    args: &SettingsArgs,
    action: impl FnOnce(Arc<AuthService>) -> Action,
) -> anyhow::Result<()> {
    let settings = Settings::resolve(args)?;
    actix_web::rt::System::new().block_on(async move {
        let core = Core::open(settings).await?;
        action(core.auth).await
    })
}

async fn user(auth: Arc<AuthService>, action: UserAction) -> anyhow::Result<()> {
    match action {
        UserAction::Add {
            name,
            password,
            roles,
            superuser,
        } => {
            let id = auth.add_user(&name, &password, superuser, &roles).await?;
            println!("created user '{name}' (id {id})");
        }
        UserAction::Passwd { name, password } => {
            auth.set_password(&name, &password).await?;
            println!("password of '{name}' changed");
        }
        UserAction::Roles { name, add, remove } => {
            let roles = auth.set_roles(&name, &add, &remove).await?;
            if roles.is_empty() {
                println!("user '{name}' holds no role");
            } else {
                println!("user '{name}' holds {}", roles.join(", "));
            }
        }
        UserAction::Disable { name } => {
            if auth.set_active(&name, false).await? {
                println!("user '{name}' disabled; its tokens are refused");
            } else {
                println!("user '{name}' was disabled already");
            }
        }
        UserAction::Enable { name } => {
            if auth.set_active(&name, true).await? {
                println!("user '{name}' enabled; it logs in for a new token");
            } else {
                println!("user '{name}' was enabled already");
            }
        }
        UserAction::List => {
            println!(
                "{:<20} {:<24} {:<9} {:<6} roles",
                "id", "username", "superuser", "active"
            );
            for u in auth.list_users().await? {
                println!(
                    "{:<20} {:<24} {:<9} {:<6} {}",
                    u.id,
                    u.username,
                    if u.superuser { "yes" } else { "no" },
                    if u.status == 1 { "yes" } else { "no" },
                    u.roles.join(",")
                );
            }
        }
    }
    Ok(())
}

async fn sql(
    auth: Arc<AuthService>,
    file: std::path::PathBuf,
    destroy: bool,
) -> anyhow::Result<()> {
    use crate::plugin::lifecycle::sql::{DESTROY_KINDS, INIT_KINDS, check_kinds, run_script};
    let db = auth.db();
    let script = std::fs::read_to_string(&file)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
    let statements = crate::db::split::split(&script, db.backend().escapes())
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let allowed: Vec<&str> = if destroy {
        INIT_KINDS.iter().chain(DESTROY_KINDS).copied().collect()
    } else {
        INIT_KINDS.to_vec()
    };
    check_kinds(&statements, &allowed)
        .map_err(|e| anyhow::anyhow!("{}: {e}; nothing was run", file.display()))?;
    let n = run_script(db, &script, None).await.map_err(|e| {
        anyhow::anyhow!(
            "{} failed {e}; the transaction was rolled back",
            file.display()
        )
    })?;
    println!(
        "ran {n} statements from {} on {}",
        file.display(),
        db.backend().name()
    );
    Ok(())
}

async fn role(auth: Arc<AuthService>, action: RoleAction) -> anyhow::Result<()> {
    match action {
        RoleAction::Add { name } => {
            let id = auth.add_role(&name).await?;
            println!("created role '{name}' (id {id})");
        }
        RoleAction::Grant { name, permissions } => {
            auth.grant(&name, &permissions).await?;
            println!("role '{name}' holds {}", permissions.join(", "));
        }
        RoleAction::Revoke { name, permissions } => {
            let absent = auth.revoke(&name, &permissions).await?;
            let taken: Vec<&str> = permissions
                .iter()
                .filter(|p| !absent.contains(p))
                .map(String::as_str)
                .collect();
            if !taken.is_empty() {
                println!("role '{name}' no longer holds {}", taken.join(", "));
            }
            if !absent.is_empty() {
                println!("role '{name}' did not hold {}", absent.join(", "));
            }
        }
        RoleAction::Delete { name } => {
            auth.delete_role(&name).await?;
            println!("deleted role '{name}'");
        }
        RoleAction::List => {
            println!("{:<24} {:<6} permissions", "role", "users");
            for r in auth.roles().await? {
                println!("{:<24} {:<6} {}", r.name, r.users, r.permissions.join(","));
            }
        }
    }
    Ok(())
}

/// Runs a plugin action on the plugin dir, through the same plugin host a
/// server runs.
fn plugin(args: &SettingsArgs, action: PluginAction) -> anyhow::Result<()> {
    use crate::plugin::lifecycle::InstallOptions;
    let settings = Settings::resolve(args)?;
    if let PluginAction::Search { term, catalogs, .. } = action {
        let catalogs = if catalogs.is_empty() {
            settings.catalogs.clone()
        } else {
            catalogs
                .iter()
                .map(|c| crate::plugin::lifecycle::catalog::Location::catalog(c))
                .collect::<Result<_, _>>()?
        };
        return actix_web::rt::System::new().block_on(search(
            catalogs,
            term.as_deref(),
            &settings.trust,
            settings.catalog_timeout,
        ));
    }
    actix_web::rt::System::new().block_on(async move {
        let host = Core::open(settings).await?.plugins().await?;
        match action {
            PluginAction::Search { .. } => unreachable!("searched without a host"),
            PluginAction::List { .. } => {
                println!("{:<24} {:<10} {:<9} {:<8} error", "name", "version", "state", "enabled");
                for item in host.list().await {
                    let text = |p: &str| item.pointer(p).and_then(|v| v.as_str()).unwrap_or("").to_owned();
                    println!(
                        "{:<24} {:<10} {:<9} {:<8} {}",
                        text("/plugin/name"),
                        text("/plugin/version"),
                        text("/state"),
                        if text("/plugin/enable") == "1" { "yes" } else { "no" },
                        text("/error"),
                    );
                }
            }
            PluginAction::Add {
                zip,
                git,
                catalog,
                version,
                reference,
                upgrade,
                force,
                ..
            } => {
                let options = InstallOptions {
                    upgrade,
                    force,
                    installed_by: "cli".into(),
                    ..InstallOptions::default()
                };
                let installed = match (zip, git) {
                    _ if catalog.is_some() => {
                        let name = catalog.unwrap_or_default();
                        eprintln!("installing plugin '{name}' from the catalogs");
                        host.install_from_catalog(&name, version.as_deref(), &options)
                            .await?
                    }
                    (Some(file), _) => {
                        let size = std::fs::metadata(&file)
                            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?
                            .len();
                        if size > host.package_limit() {
                            anyhow::bail!(
                                "{} is {size} bytes, more than the limit of {} (PLUGHOST_MAX_PACKAGE)",
                                file.display(),
                                host.package_limit()
                            );
                        }
                        eprintln!("installing {} ({size} bytes)", file.display());
                        let bytes = std::fs::read(&file)
                            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
                        host.install_zip(bytes, &options).await?
                    }
                    (None, Some(url)) => {
                        eprintln!("cloning {} (progress in the log)", crate::db::redact_url(&url));
                        host.install_git(&url, reference.as_deref(), &options).await?
                    }
                    (None, None) => anyhow::bail!("give --zip FILE, --git URL or --catalog NAME"),
                };
                match installed.previous {
                    Some(previous) => println!(
                        "upgraded plugin '{}' from {previous} to {}",
                        installed.name, installed.version
                    ),
                    None => println!("installed plugin '{}' {}", installed.name, installed.version),
                }
            }
            PluginAction::Remove { name, purge, .. } => {
                let done = host.uninstall(&name, purge).await?;
                println!(
                    "removed plugin '{name}' (backup: {}{})",
                    done.backup_text(),
                    if done.purged { "; tables dropped" } else { "" }
                );
            }
            PluginAction::Enable { name, .. } => set_enabled(&host, &name, true).await?,
            PluginAction::Disable { name, .. } => set_enabled(&host, &name, false).await?,
            PluginAction::Pack { name, output, .. } => {
                let bytes = host.pack(&name)?;
                std::fs::write(&output, &bytes)
                    .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", output.display()))?;
                println!("wrote {} ({} bytes)", output.display(), bytes.len());
            }
            PluginAction::New { .. }
            | PluginAction::Sdk { .. }
            | PluginAction::Package { .. }
            | PluginAction::Keygen { .. }
            | PluginAction::Check { .. } => unreachable!("handled without a host"),
        }
        Ok(())
    })
}

/// Runs a plugin action that needs no host: scaffold, package, keys.
fn author(action: PluginAction) -> anyhow::Result<()> {
    use crate::plugin::authoring;
    match action {
        PluginAction::New {
            name,
            kind,
            dir,
            plugin_api,
        } => {
            let dir = crate::plugin::scaffold::create(&name, kind, dir, plugin_api)?;
            println!(
                "created plugin crate '{name}' in {}; package it with `plughost plugin package {} -o {name}.zip` and install the package, or push it to Git and `plughost plugin add --git URL`",
                dir.display(),
                dir.display()
            );
        }
        PluginAction::Sdk { dir } => {
            let dir = crate::plugin::scaffold::write_sdk(&dir)?;
            println!(
                "wrote plugin-api {} into {}; depend on it with plugin-api = {{ path = \"{}\" }}",
                plugin_api::CONTRACT_VERSION,
                dir.display(),
                dir.display()
            );
        }
        PluginAction::Package {
            crate_dir,
            output,
            sign,
        } => {
            eprintln!("building {} (release)", crate_dir.display());
            let done = authoring::package(&crate_dir, &output, sign.as_deref())?;
            println!(
                "wrote {} ({} bytes): plugin '{}' {} built against plugin-api {}, {}",
                output.display(),
                done.size,
                done.name,
                done.version,
                done.contract,
                done.key_id.map_or_else(
                    || "unsigned".to_owned(),
                    |id| format!("signed with key {id}")
                )
            );
        }
        PluginAction::Keygen {
            out,
            no_password,
            force,
        } => {
            let key = authoring::keygen(&out, no_password, force)?;
            println!(
                "wrote secret key {} ({}) and public key {} (key id {}); sign with `plughost plugin package CRATE_DIR -o OUT.zip --sign {}`, and trust it on hosts with PLUGHOST_TRUSTED_KEYS={}",
                key.secret.display(),
                if key.encrypted {
                    "password-protected"
                } else {
                    "no password"
                },
                key.public.display(),
                key.key_id,
                key.secret.display(),
                key.public.display()
            );
        }
        PluginAction::Check {
            path,
            trusted_keys,
            require_signed,
        } => {
            let trust =
                crate::plugin::loading::trust::TrustPolicy::load(&trusted_keys, require_signed)?;
            let report = authoring::check(&path, &trust)?;
            let what = match (&report.version, &report.contract) {
                (Some(v), Some(c)) => format!("plugin '{}' {v} (plugin-api {c})", report.name),
                (Some(v), None) => format!("plugin '{}' {v}", report.name),
                _ => format!("plugin '{}'", report.name),
            };
            for problem in &report.problems {
                println!("problem: {problem}");
            }
            for note in &report.notes {
                println!("note: {note}");
            }
            if !report.problems.is_empty() {
                anyhow::bail!(
                    "{what} would be refused ({} problem{})",
                    report.problems.len(),
                    if report.problems.len() == 1 { "" } else { "s" }
                );
            }
            println!(
                "ok: {what} would install, {}",
                report
                    .signer
                    .map_or_else(|| "unsigned".to_owned(), |id| format!("signed by key {id}"))
            );
        }
        other => unreachable!("{other:?} needs a host"),
    }
    Ok(())
}

/// `plughost catalog build`: fails when a package was left out.
fn build_catalog(
    dir: &std::path::Path,
    sign: Option<&std::path::Path>,
    base_url: Option<&str>,
    trusted_keys: &[std::path::PathBuf],
) -> anyhow::Result<()> {
    let trust = crate::plugin::loading::trust::TrustPolicy::load(trusted_keys, false)?;
    let built = crate::plugin::authoring::build_catalog(dir, sign, base_url, &trust)?;
    for (file, problems) in &built.refused {
        for problem in problems {
            println!("left out {file}: {problem}");
        }
    }
    println!(
        "wrote {} ({} entr{}, {})",
        built.index.display(),
        built.entries,
        if built.entries == 1 { "y" } else { "ies" },
        built.signer.as_ref().map_or_else(
            || "unsigned".to_owned(),
            |id| format!("signed with key {id}")
        )
    );
    if !built.refused.is_empty() {
        anyhow::bail!(
            "{} package(s) in {} failed the install's checks and were left out of the index; fix or remove them and build again",
            built.refused.len(),
            dir.display()
        );
    }
    Ok(())
}

/// Prints what `catalogs` offer, or the entries matching `term`.
async fn search(
    catalogs: Vec<crate::plugin::lifecycle::catalog::Location>,
    term: Option<&str>,
    trust: &crate::plugin::loading::trust::TrustPolicy,
    timeout: std::time::Duration,
) -> anyhow::Result<()> {
    use crate::plugin::lifecycle::catalog::{Catalog, CatalogError};
    if catalogs.is_empty() {
        anyhow::bail!(CatalogError::NotConfigured.to_string());
    }
    let term = term.map(str::to_lowercase);
    let mut readable = 0;
    println!(
        "{:<24} {:<10} {:<10} {:<18} {:<24} summary",
        "name", "version", "contract", "signer", "tags"
    );
    for location in &catalogs {
        let catalog = match Catalog::read(location.clone(), trust, timeout).await {
            Ok(catalog) => catalog,
            Err(e) => {
                eprintln!("{e}");
                continue;
            }
        };
        readable += 1;
        for entry in &catalog.index.entries {
            let about = &entry.plugin;
            let found = term.as_deref().is_none_or(|term| {
                [
                    &entry.name,
                    &about.summary,
                    &about.description,
                    &about.author,
                ]
                .iter()
                .any(|text| text.to_lowercase().contains(term))
                    || about.tags.iter().any(|t| t.to_lowercase().contains(term))
            });
            if found {
                println!(
                    "{:<24} {:<10} {:<10} {:<18} {:<24} {}",
                    entry.name,
                    about.version,
                    entry.contract.as_deref().unwrap_or("-"),
                    entry.signer.as_deref().unwrap_or("unsigned"),
                    about.tags.join(","),
                    about.summary
                );
            }
        }
    }
    if readable == 0 {
        anyhow::bail!("none of the {} catalog(s) could be read", catalogs.len());
    }
    Ok(())
}

async fn set_enabled(
    host: &crate::plugin::PluginHost,
    name: &str,
    enabled: bool,
) -> anyhow::Result<()> {
    let word = if enabled { "enabled" } else { "disabled" };
    if host.is_enabled(name)? == enabled {
        println!("plugin '{name}' is {word} already");
    } else {
        host.toggle(name).await?;
        println!("plugin '{name}' {word}");
    }
    Ok(())
}

/// Logs to stderr, with the trace id of the request on lines a request
/// causes (access lines are written by `observe::access_line`).
fn init_logging() {
    let ansi = std::io::stderr().is_terminal();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("PLUGHOST_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .event_format(crate::observe::WithTraceId(
            tracing_subscriber::fmt::format().with_ansi(ansi),
        ))
        .init();
}

/// Runs the command line; the exit code says whether it worked.
pub fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::ProbeLibrary { library } => {
            return crate::plugin::loading::libcache::run_probe(&library);
        }
        Command::IsolatedPlugin {
            socket,
            library,
            name,
            layout_checked,
            memory_mb,
            cgroup,
            settings,
        } => {
            let settings = match Settings::resolve(&settings) {
                Ok(settings) => settings,
                Err(e) => {
                    tracing::error!("isolated plugin {name}: {e}");
                    return ExitCode::FAILURE;
                }
            };
            return crate::plugin::isolation::child::main(
                crate::plugin::isolation::child::ChildArgs {
                    socket,
                    library,
                    name,
                    layout_checked,
                    memory_mb,
                    cgroup,
                },
                settings,
            );
        }
        Command::Serve(args) => {
            // An isolated plugin's child is given the same settings.
            crate::plugin::isolation::remember_serve_args(std::env::args_os().skip(2).collect());
            Settings::resolve(&args)
        }
        .map_err(anyhow::Error::from)
        .and_then(|settings| actix_web::rt::System::new().block_on(crate::http::serve(settings))),
        Command::Sql {
            file,
            destroy,
            settings,
        } => manage(&settings, |auth| Box::pin(sql(auth, file, destroy))),
        Command::User { action, settings } => {
            manage(&settings, |auth| Box::pin(user(auth, action)))
        }
        Command::Role { action, settings } => {
            manage(&settings, |auth| Box::pin(role(auth, action)))
        }
        Command::Catalog {
            action:
                CatalogAction::Build {
                    dir,
                    sign,
                    base_url,
                    trusted_keys,
                },
        } => build_catalog(&dir, sign.as_deref(), base_url.as_deref(), &trusted_keys),
        Command::Plugin { action } => match action.settings() {
            Some(settings) => plugin(&settings.clone(), action),
            None => author(action),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
