//! The `plughost` command line.

use std::{io::IsTerminal, process::ExitCode, sync::Arc};

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::{
    auth::AuthService,
    config::{Settings, SettingsArgs},
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
}

#[derive(Debug, Subcommand)]
enum UserAction {
    /// Create a user.
    Add {
        /// Login name.
        name: String,
        /// Password (at least 8 characters).
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
        /// New password (at least 8 characters).
        #[arg(long)]
        password: String,
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
}

type Action = std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>>>>;

/// Runs a management action against the database the server would use.
fn manage(
    args: &SettingsArgs,
    action: impl FnOnce(Arc<AuthService>) -> Action,
) -> anyhow::Result<()> {
    let settings = Settings::resolve(args)?;
    actix_web::rt::System::new().block_on(async move {
        let auth = crate::http::open_auth(&settings).await?;
        action(auth).await
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
    use crate::plugin::sql::{DESTROY_KINDS, INIT_KINDS, check_kinds, run_script};
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
    let n = run_script(db, &script).await.map_err(|e| {
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
    }
    Ok(())
}

/// Runs the command line; the exit code says whether it worked.
pub fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("PLUGHOST_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => Settings::resolve(&args)
            .map_err(anyhow::Error::from)
            .and_then(|settings| {
                actix_web::rt::System::new().block_on(crate::http::serve(settings))
            }),
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
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
