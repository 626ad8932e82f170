//! `tessera check-data`: reads every record of the two stores in the data directory, the token
//! store (`tessera.redb`) and the broker's state (`broker.redb`), and says what they hold and
//! whether anything is damaged. The server must be stopped: a running one holds the files.

use std::path::Path;
use std::process::ExitCode;

use serde_json::{Value, json};
use tessera_auth::redb_store::RedbStore;
use tessera_auth::service::TokenService;
use tessera_config::Config;

pub fn run(config: &Config, as_json: bool) -> ExitCode {
    let tokens = config.data_dir.join("tessera.redb");
    let broker = config.data_dir.join("broker.redb");
    let mut sound = true;
    let mut report = serde_json::Map::new();
    match check_tokens(&tokens, config) {
        Ok(counts) => {
            report.insert("tokens".into(), counts);
        }
        Err(e) => {
            sound = false;
            report.insert("tokens".into(), json!({ "error": e }));
        }
    }
    if broker.exists() {
        match tessera_store::check(&broker) {
            Ok(r) => {
                sound &= r.dangling == 0;
                report.insert(
                    "broker".into(),
                    json!({
                        "file": broker.display().to_string(),
                        "schema_version": r.schema_version,
                        "retained": r.retained,
                        "messages": r.messages,
                        "sessions": r.sessions,
                        "subscriptions": r.subscriptions,
                        "queued": r.entries,
                        "entries without their message": r.dangling,
                        "messages nothing references": r.orphans,
                    }),
                );
            }
            Err(e) => {
                sound = false;
                report.insert("broker".into(), json!({ "error": in_use(&e.to_string()) }));
            }
        }
    }
    if as_json {
        report.insert("sound".into(), json!(sound));
        println!("{}", Value::Object(report));
    } else {
        for (store, v) in &report {
            println!("{store}:");
            if let Some(m) = v.as_object() {
                for (k, v) in m {
                    println!(
                        "  {k}: {}",
                        v.as_str().map_or(v.to_string(), str::to_string)
                    );
                }
            }
        }
        println!("{}", if sound { "sound" } else { "DAMAGED" });
    }
    if sound {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn check_tokens(path: &Path, config: &Config) -> Result<Value, String> {
    if !path.exists() {
        return Ok(json!({ "file": path.display().to_string(), "records": 0 }));
    }
    let store = RedbStore::open(path).map_err(|e| in_use(&e.to_string()))?;
    let service = TokenService::new(store, config.oauth.clone());
    let counts = service.check_records().map_err(|e| e.to_string())?;
    let mut m = serde_json::Map::new();
    m.insert("file".into(), json!(path.display().to_string()));
    for (what, n) in counts {
        m.insert(what.into(), json!(n));
    }
    Ok(Value::Object(m))
}

/// redb's "already open" means a running server holds the file.
fn in_use(e: &str) -> String {
    if e.contains("already open") {
        format!("{e} (a running server holds it: stop it first)")
    } else {
        e.to_string()
    }
}
