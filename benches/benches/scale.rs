//! Cost curves (issue 23): what one operation costs as the state grows to 10k, 100k and 1M
//! entries. Subscriptions: matching a PUBLISH's topic. Tokens in the store: validating one,
//! issuing one, the first page of `token list`, and revoking a user's tokens. Each should stay flat (or grow with the
//! logarithm of a B-tree's depth); `benches/scale.sh` runs this and draws the curves.
//! Run: `cargo bench -p tessera-bench --bench scale` (`SCALE_MAX=100000` stops there).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use tessera_auth::redb_store::RedbStore;
use tessera_auth::service::{Page, TokenService};
use tessera_broker::codec::SubscriptionOptions;
use tessera_broker::{Session, SessionGauges, Subscriber, SubscriptionTree};

fn main() {
    divan::main();
}

/// The sizes, up to `SCALE_MAX` (default 1,000,000).
fn sizes() -> Vec<usize> {
    let max: usize = std::env::var("SCALE_MAX")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    [10_000, 100_000, 1_000_000]
        .into_iter()
        .filter(|n| *n <= max)
        .collect()
}

/// `n` subscriptions as a fleet makes them: per device one exact filter and one with `+`
/// (`n / 2` devices), plus ten `#` watchers.
fn tree(n: usize) -> SubscriptionTree {
    let gauges = Arc::new(SessionGauges::default());
    let mut t = SubscriptionTree::default();
    let sub = |session: &Arc<Session>| Subscriber {
        session: session.clone(),
        options: SubscriptionOptions::default(),
        subscription_id: None,
    };
    for i in 0..(n / 2) as u64 {
        let s = Session::new(i, format!("c{i}").into(), 0, 0, &gauges);
        t.insert(&format!("devices/d{i}/telemetry/temp"), None, sub(&s));
        t.insert(&format!("devices/d{i}/+/status"), None, sub(&s));
    }
    for i in 0..10u64 {
        let s = Session::new(u64::MAX - i, format!("w{i}").into(), 0, 0, &gauges);
        t.insert(&format!("devices/d{i}/#"), None, sub(&s));
    }
    t
}

#[divan::bench(args = sizes())]
fn match_topic(bencher: divan::Bencher, n: usize) {
    let t = tree(n);
    let devices = (n / 2) as u64;
    let mut i = 0u64;
    bencher.bench_local(|| {
        i = (i + 7919) % devices;
        let topic = format!("devices/d{i}/telemetry/temp");
        let mut found = 0;
        t.for_each_match(divan::black_box(topic.as_bytes()), &mut |_| found += 1);
        found
    });
}

/// A token store holding `n` access tokens of ten users, and 1,000 of the tokens.
struct Tokens {
    _dir: tempfile::TempDir,
    service: TokenService,
    sample: Vec<String>,
}

/// Filled once per size and shared by the token benchmarks. The fill goes through the
/// service's own issuance, one durable commit per token, as the OAuth endpoint does.
fn tokens(n: usize) -> Arc<Tokens> {
    static FILLED: OnceLock<Mutex<HashMap<usize, Arc<Tokens>>>> = OnceLock::new();
    let mut filled = FILLED.get_or_init(Default::default).lock().unwrap();
    filled
        .entry(n)
        .or_insert_with(|| {
            let dir = tempfile::tempdir().unwrap();
            let store = RedbStore::open(&dir.path().join("scale.redb")).unwrap();
            let service = TokenService::new(store, tessera_config::OAuthConfig::default());
            for u in 0..10 {
                service.add_user(&format!("u{u}"), "pw").unwrap();
            }
            let mut sample = Vec::new();
            for i in 0..n {
                let t = service
                    .issue(
                        &format!("u{}", i % 10),
                        None,
                        vec!["mqtt".into()],
                        Some(86_400),
                        false,
                        None,
                    )
                    .unwrap()
                    .access_token;
                if i % (n / 1000).max(1) == 0 {
                    sample.push(t);
                }
            }
            // For the Sizing table: what a token costs on disk (scale.sh reads this line).
            let bytes = std::fs::metadata(dir.path().join("scale.redb")).map_or(0, |m| m.len());
            eprintln!("token store: {n} tokens, {bytes} bytes");
            // Validation's tail, which divan's summary does not give: 10,000 timed one by one.
            let mut took: Vec<u128> = (0..10_000)
                .map(|i| {
                    let started = std::time::Instant::now();
                    let _ = service.validate(&sample[i % sample.len()]);
                    started.elapsed().as_nanos()
                })
                .collect();
            took.sort_unstable();
            eprintln!(
                "token validation p99: {n} tokens, {} ns",
                took[took.len() * 99 / 100]
            );
            Arc::new(Tokens {
                _dir: dir,
                service,
                sample,
            })
        })
        .clone()
}

#[divan::bench(args = sizes())]
fn validate_token(bencher: divan::Bencher, n: usize) {
    let t = tokens(n);
    let mut i = 0;
    bencher.bench_local(|| {
        i = (i + 1) % t.sample.len();
        t.service
            .validate(divan::black_box(&t.sample[i]))
            .unwrap()
            .unwrap()
    });
}

#[divan::bench(args = sizes(), sample_count = 20, sample_size = 10)]
fn issue_token(bencher: divan::Bencher, n: usize) {
    let t = tokens(n);
    bencher.bench_local(|| {
        t.service
            .issue("u1", None, vec!["mqtt".into()], Some(60), false, None)
            .unwrap()
    });
}

#[divan::bench(args = sizes(), sample_count = 20, sample_size = 5)]
fn token_list_first_page(bencher: divan::Bencher, n: usize) {
    let t = tokens(n);
    let page = Page {
        after: None,
        limit: 1000,
    };
    bencher.bench_local(|| t.service.list_tokens(None, &page).unwrap().len());
}

/// `token revoke --user` (and a password change, a user's deletion) for a user with one token
/// among `n`: without an index of tokens by user it reads every token, so this one grows.
#[divan::bench(args = sizes(), sample_count = 5, sample_size = 1)]
fn revoke_user_with_one_token(bencher: divan::Bencher, n: usize) {
    let t = tokens(n);
    let _ = t.service.add_user("solo", "pw");
    bencher
        .with_inputs(|| {
            t.service
                .issue("solo", None, vec!["mqtt".into()], Some(60), false, None)
                .unwrap()
        })
        .bench_local_values(|_| assert_eq!(t.service.revoke_user("solo").unwrap(), 1));
}
