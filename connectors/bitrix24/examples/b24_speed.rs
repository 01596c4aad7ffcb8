//! Speed check (not a timed test): a full listing of contacts and deals at the cloud's default
//! limits (bucket 50, drain 2/s), in records per second after the burst, against the ceiling
//! 2 requests/s x 50 commands x 50 rows = 5,000 records/s.
//!
//! ```text
//! cargo run --release -p rebuy-bitrix24 --example b24_emulate -- 8899 100000 300000 &   # own process
//! B24_WEBHOOK=http://127.0.0.1:8899/rest/1/8g9l071eismy9q2l/ cargo run --release -p rebuy-bitrix24 --example b24_speed
//! cargo run --release -p rebuy-bitrix24 --example b24_speed      # emulator in-process
//! ```
//! `B24_CONTACTS`, `B24_DEALS` size the in-process emulator; `B24_PRODUCTS=1` also fetches the
//! product rows of won deals.
use rebuy_bitrix24::{B24Client, B24Settings};
use rebuy_core::Connector;
use rebuy_core::connector::ListQuery;
use rebuy_emulator::bitrix24::{B24Config, B24Emulator};
use rebuy_emulator::seed::SeedConfig;
use std::time::Instant;

fn env_usize(k: &str, d: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

#[tokio::main]
async fn main() {
    let products = std::env::var("B24_PRODUCTS").is_ok_and(|v| v == "1");
    let (_running, webhook, stats_url) = match std::env::var("B24_WEBHOOK") {
        Ok(w) => {
            let base = w.split("/rest/").next().unwrap_or("").to_owned();
            (None, w, format!("{base}/_emulator/stats"))
        }
        Err(_) => {
            let (c, d) = (
                env_usize("B24_CONTACTS", 100_000),
                env_usize("B24_DEALS", 300_000),
            );
            let t = Instant::now();
            let run = B24Emulator::spawn(B24Config {
                seed: SeedConfig::new(1, c, d),
                ..B24Config::default()
            })
            .await
            .unwrap();
            println!(
                "emulator: {c} contacts, {d} deals generated in {:.1?}",
                t.elapsed()
            );
            let w = run.webhook_url();
            let s = format!("{}/_emulator/stats", run.base_url);
            (Some(run), w, s)
        }
    };
    let mut settings = B24Settings::webhook(&webhook).unwrap();
    settings.product_rows = products;
    let capacity = settings.bucket_capacity as u64;
    let client = B24Client::new(settings, None).unwrap();
    let q = ListQuery::default();
    let start = Instant::now();
    let mut records = 0u64;
    let mut burst_mark: Option<(Instant, u64)> = None;
    let mut mark = |records: u64, client: &B24Client| {
        // The burst is the first `capacity - 2` requests.
        if burst_mark.is_none() && client.stats().requests >= capacity - 2 {
            burst_mark = Some((Instant::now(), records));
        }
    };
    let mut cursor = None;
    loop {
        let p = client.contacts(&q, cursor.as_ref()).await.unwrap();
        records += p.items.len() as u64;
        mark(records, &client);
        match p.next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let contacts = records;
    let mut cursor = None;
    loop {
        let p = client.deals(&q, cursor.as_ref()).await.unwrap();
        records += p.items.len() as u64;
        mark(records, &client);
        match p.next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let end = Instant::now();
    let total = end - start;
    let stats = client.stats();
    println!(
        "listed {contacts} contacts + {} deals = {records} records in {:.1?} ({} requests, {} rate-limited answers, {} retries)",
        records - contacts,
        total,
        stats.requests,
        stats.rate_limited,
        stats.retries
    );
    if let Some((t, r)) = burst_mark {
        let rate = (records - r) as f64 / (end - t).as_secs_f64();
        println!(
            "after the burst: {:.0} records/s; ceiling 5000 records/s; ratio {:.3}",
            rate,
            rate / 5000.0
        );
    }
    let emu: serde_json::Value = reqwest::get(&stats_url)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    println!(
        "emulator: QUERY_LIMIT_EXCEEDED 503s = {}, OPERATION_TIME_LIMIT 429s = {}",
        emu["query_limit_503"], emu["operation_limit_429"]
    );
    println!(
        "peak RSS of this process: {:.1} MB{}",
        peak_rss_mb(),
        if std::env::var("B24_WEBHOOK").is_ok() {
            " (connector only)"
        } else {
            " (connector + in-process emulator)"
        }
    );
}
