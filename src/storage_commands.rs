//! The commands that work on the storage itself: `backup`, `migrate-storage`
//! and `redeliver`.

use std::path::PathBuf;
use std::process::ExitCode;

use hexwatch::config::Config;

use crate::load_offline;

pub fn backup(path: PathBuf, file: PathBuf) -> ExitCode {
    let config = match load_offline(&path) {
        Ok((c, _)) => c,
        Err(code) => return code,
    };
    if config.storage.url.is_some() {
        eprintln!(
            "error: storage is PostgreSQL: back it up with pg_dump (docs/operations.md, Backup and restore)"
        );
        return ExitCode::from(2);
    }
    match hexwatch_storage::sqlite::backup(&config.storage.path, &file) {
        Ok(bytes) => {
            println!(
                "backed up {} to {} ({bytes} bytes); keep ingest.secret, acme/, the rules and the config with it",
                config.storage.path.display(),
                file.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

pub fn migrate_storage(from: PathBuf, to: String, ca_file: Option<PathBuf>) -> ExitCode {
    use hexwatch_storage::{migrate, Storage};
    if hexwatch_storage::sqlite::ServeLock::is_held(&from) {
        eprintln!(
            "error: --from: {}",
            hexwatch_storage::StorageError::InUse(from.clone())
        );
        return ExitCode::from(2);
    }
    // The URL goes through the config's own checks (no password inside).
    let mut text = format!("[storage]\nurl = {}\n", toml_string(&to));
    if let Some(ca) = &ca_file {
        text.push_str(&format!(
            "ca_file = {}\n",
            toml_string(&ca.to_string_lossy())
        ));
    }
    let config = match Config::parse(
        std::path::Path::new("migrate-storage"),
        &text,
        &hexwatch::config::ProcessEnv,
    ) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: --to: {}", e.problem);
            return ExitCode::from(2);
        }
    };
    let copied = Storage::open(&config.storage).and_then(|storage| match storage {
        Storage::Postgres(pg) => migrate::sqlite_to_postgres(&from, &pg),
        _ => Err(migrate::MigrateError::NotPostgres.into()),
    });
    match copied {
        Ok(tables) => {
            for (table, rows) in tables {
                println!("{table}: {rows} rows");
            }
            println!(
                "copied {} into {}; point storage.url at it and start the replicas",
                from.display(),
                to
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// `s` as a TOML string literal.
fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

pub fn redeliver(path: PathBuf, destination: Option<String>, since: Option<String>) -> ExitCode {
    let config = match load_offline(&path) {
        Ok((c, _)) => c,
        Err(code) => return code,
    };
    if let Some(name) = &destination {
        if !config.destinations.iter().any(|d| &d.name == name) {
            let known: Vec<_> = config
                .destinations
                .iter()
                .map(|d| d.name.as_str())
                .collect();
            eprintln!(
                "error: --destination {name:?} is not in {} (destinations: {})",
                config.source.display(),
                known.join(", ")
            );
            return ExitCode::from(2);
        }
    }
    let since_ms = match since
        .as_deref()
        .map(|s| hexwatch::dispatch::parse_since(s, hexwatch_storage::now_ms()))
        .transpose()
    {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if config.storage.url.is_none() && !config.storage.path.exists() {
        eprintln!(
            "error: no database at {} (storage.path in {})",
            config.storage.path.display(),
            config.source.display()
        );
        return ExitCode::from(2);
    }
    use hexwatch_storage::{Role, Storage};
    let requeued = Storage::open(&config.storage).and_then(|storage| {
        storage
            .session(Role::Derived)?
            .requeue_failed(destination.as_deref(), since_ms)
    });
    match requeued {
        Ok(n) => {
            println!("{n} failed deliveries queued again");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: cannot re-queue the failed deliveries: {e}");
            ExitCode::from(2)
        }
    }
}
