//! Times the data generator and a 250-record page: `cargo run --release -p rebuy-emulator
//! --example gen_bench [contacts] [deals]`.
use rebuy_emulator::amocrm::{AmoConfig, AmoEmulator};
use rebuy_emulator::seed::{self, SeedConfig};
use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let contacts: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let deals: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(300_000);
    let cfg = SeedConfig::new(42, contacts, deals);
    let t = Instant::now();
    let ds = seed::generate(&cfg);
    println!(
        "generate: {} contacts, {} companies, {} deals in {:.2?}",
        ds.contacts.len(),
        ds.companies.len(),
        ds.deals.len(),
        t.elapsed()
    );
    let t = Instant::now();
    let emu = AmoEmulator::new(AmoConfig {
        seed: cfg,
        ..AmoConfig::default()
    });
    println!("emulator (generate + map + index): {:.2?}", t.elapsed());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        emu.set_rate_limit(0);
        let running = emu.clone().start().await.expect("start");
        let code = emu.issue_authorization_code();
        let c = emu.config().clone();
        let http = reqwest::Client::new();
        let tok: serde_json::Value = http
            .post(format!("{}/oauth2/access_token", running.base_url))
            .json(&serde_json::json!({"client_id": c.client_id, "client_secret": c.client_secret, "grant_type": "authorization_code", "code": code, "redirect_uri": c.redirect_uri}))
            .send()
            .await
            .expect("token")
            .json()
            .await
            .expect("json");
        let access = tok["access_token"].as_str().unwrap_or_default().to_owned();
        for (label, extra) in [("leads", "with=contacts,catalog_elements"), ("contacts", ""), ("leads", "order[updated_at]=asc")] {
            let t = Instant::now();
            let mut page = 1;
            let mut records = 0usize;
            let mut per_page = Vec::new();
            loop {
                let tp = Instant::now();
                let r = http
                    .get(format!("{}/api/v4/{label}?limit=250&page={page}&{extra}", running.base_url))
                    .bearer_auth(&access)
                    .send()
                    .await
                    .expect("page");
                if r.status() == 204 {
                    break;
                }
                let bytes = r.bytes().await.expect("body");
                per_page.push(tp.elapsed());
                let v: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
                records += v["_embedded"][label].as_array().map_or(0, Vec::len);
                page += 1;
            }
            per_page.sort();
            let median = per_page.get(per_page.len() / 2).copied().unwrap_or_default();
            let min = per_page.first().copied().unwrap_or_default();
            let el = t.elapsed();
            println!(
                "GET /api/v4/{label} ({extra}): {records} records in {} pages, {:.2?} => {:.0} records/s; per page (until the body is received): mean {:.2} ms, median {median:.2?}, min {min:.2?}",
                page - 1,
                el,
                records as f64 / el.as_secs_f64(),
                el.as_secs_f64() * 1000.0 / page as f64
            );
        }
        // Four clients paging disjoint ranges of leads at once.
        let t = Instant::now();
        let mut tasks = Vec::new();
        for k in 0..4u64 {
            let (http, base, access) = (http.clone(), running.base_url.clone(), access.clone());
            tasks.push(tokio::spawn(async move {
                let mut n = 0usize;
                for page in (1 + k * 300)..=((k + 1) * 300) {
                    let r = http.get(format!("{base}/api/v4/leads?limit=250&page={page}")).bearer_auth(&access).send().await.expect("page");
                    n += r.bytes().await.expect("body").len();
                }
                n
            }));
        }
        let mut bytes = 0;
        for t in tasks {
            bytes += t.await.expect("join");
        }
        let el = t.elapsed();
        println!("4 concurrent clients, 1200 pages of 250 leads: {el:.2?} => {:.0} records/s ({} MB)", 300_000.0 / el.as_secs_f64(), bytes / 1_000_000);
    });
}
