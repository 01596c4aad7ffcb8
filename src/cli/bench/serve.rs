//! `rebuy bench ingest` and `rebuy bench route`: webhook ingest into the durable inbox, and the
//! webhook -> routed task latency through the server.
use super::*;

/// Starts a server with one amoCRM portal (inbox on or off) on loopback; returns its hook URL.
async fn ingest_server(
    durable: bool,
    dir: &std::path::Path,
) -> Result<(String, tokio_util::sync::CancellationToken)> {
    let text = format!(
        "data_dir = {:?}\n[[portal]]\nid = \"bench\"\nkind = \"amocrm\"\nbase_url = \"http://127.0.0.1:9\"\n\
         [portal.auth]\ntype = \"long_lived_token\"\ntoken_env = \"T\"\n[portal.webhooks]\nsecret_env = \"S\"\n",
        dir.display().to_string()
    );
    let env = |k: &str| match k {
        "T" => Some("token".to_owned()),
        "S" => Some("bench-secret".to_owned()),
        _ => None,
    };
    let cfg = rebuy::config::resolve_toml(&text, "<bench>", &env)
        .map_err(|p| anyhow::anyhow!("{}", rebuy::config::format_problems(&p)))?;
    let state = rebuy::server::AppState::new(&cfg, durable)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!(
        "http://{}/hooks/amocrm/bench/bench-secret",
        listener.local_addr()?
    );
    let cancel = tokio_util::sync::CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        rebuy::server::serve(
            listener,
            state.clone(),
            Some(rebuy::ui::router_from_config(state)),
            c.cancelled_owned(),
        )
        .await
    });
    Ok((url, cancel))
}

fn hook_body(i: u64) -> String {
    format!(
        "leads[update][0][id]={i}&leads[update][0][status_id]=142&leads[update][0][updated_at]={i}\
         &account[subdomain]=bench&account[id]=1&account[_links][self]=https://bench.amocrm.ru"
    )
}

async fn ingest_throughput(url: &str, requests: u64, concurrency: usize) -> Result<f64> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()?;
    let next = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (client, next, url) = (client.clone(), next.clone(), url.to_owned());
        tasks.spawn(async move {
            let mut failed = 0u64;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= requests {
                    return failed;
                }
                let ok = client
                    .post(&url)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(hook_body(i))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                failed += u64::from(!ok);
            }
        });
    }
    let mut failed = 0;
    while let Some(r) = tasks.join_next().await {
        failed += r?;
    }
    if failed > 0 {
        bail!("{failed} webhook requests failed");
    }
    Ok(requests as f64 / started.elapsed().as_secs_f64())
}

async fn ingest_latency(
    url: &str,
    rate: u64,
    seconds: u64,
    offset: u64,
) -> Result<(f64, f64, f64)> {
    let client = reqwest::Client::new();
    let total = rate * seconds;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        ticker.tick().await;
        let (client, url) = (client.clone(), url.to_owned());
        tasks.spawn(async move {
            let t = Instant::now();
            let ok = client
                .post(&url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(hook_body(offset + i))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            (t.elapsed(), ok)
        });
    }
    let mut lat = Vec::with_capacity(total as usize);
    while let Some(r) = tasks.join_next().await {
        let (d, ok) = r?;
        if !ok {
            bail!("a webhook request failed in the latency run");
        }
        lat.push(d.as_secs_f64() * 1000.0);
    }
    lat.sort_by(f64::total_cmp);
    let q = |p: f64| lat[((lat.len() as f64 - 1.0) * p).round() as usize];
    Ok((q(0.5), q(0.99), lat[lat.len() - 1]))
}

pub(super) async fn bench_ingest(
    requests: u64,
    concurrency: usize,
    rate: u64,
    seconds: u64,
) -> Result<()> {
    println!(
        "bench ingest: {requests} webhooks from {concurrency} senders; latency at {rate}/s for {seconds} s (loopback, same machine)"
    );
    let mut throughput = Vec::new();
    for durable in [true, false] {
        let dir = tempfile::tempdir()?;
        let (url, cancel) = ingest_server(durable, dir.path()).await?;
        let rps = ingest_throughput(&url, requests, concurrency).await?;
        let (p50, p99, max) = ingest_latency(&url, rate, seconds, requests).await?;
        cancel.cancel();
        println!(
            "  inbox {:<9} {:>8.0} requests/s   latency at {rate}/s: p50 {p50:.2} ms  p99 {p99:.2} ms  max {max:.1} ms",
            if durable { "fsync'd" } else { "off" },
            rps
        );
        throughput.push(rps);
    }
    println!(
        "  durable / upper bound: {:.2}",
        throughput[0] / throughput[1]
    );
    Ok(())
}

pub(super) async fn bench_route(rate: u64, seconds: u64, crm_rps: u32) -> Result<()> {
    let mut emu_cfg = rebuy_emulator::amocrm::AmoConfig::default();
    emu_cfg.seed.contacts = 2000;
    emu_cfg.seed.deals = 6000;
    emu_cfg.rate_limit_per_sec = crm_rps;
    emu_cfg.block_after_violations = 0;
    let emu = rebuy_emulator::amocrm::AmoEmulator::spawn(emu_cfg.clone()).await?;
    let mut p = emulator_portal(
        "route",
        &emu.base_url,
        &emu_cfg.client_id,
        &emu_cfg.redirect_uri,
        crm_rps,
    )?;
    p.mapping = serde_json::json!({"repeat_pipeline": "Повторные продажи"});
    p.webhook_secret = Some(secrecy::SecretString::from("bench-secret"));
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path(), &p.id)?;
    authorize_automatically(&p, &store).await?;
    let handle = portal::open(&p, store.clone())?;
    rebuy::sync::sync_portal(
        handle.connector,
        store.clone(),
        &rebuy::portal::sync_options(&p, true),
        std::sync::Arc::new(rebuy::sync::NoProgress),
    )
    .await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let state = rebuy::server::AppState::from_stores(vec![(p.clone(), store.clone())], true);
    let cancel = tokio_util::sync::CancellationToken::new();
    let settings = rebuy::config::ServerSettings::default();
    let tasks = rebuy::server::runtime::spawn_all(&state, &settings, cancel.clone());
    let c = cancel.clone();
    tokio::spawn(async move {
        rebuy::server::serve(
            listener,
            state.clone(),
            Some(rebuy::ui::router_from_config(state)),
            c.cancelled_owned(),
        )
        .await
    });
    let e = &emu.emulator;
    e.register_webhook(
        &format!("{url}/hooks/amocrm/route/bench-secret"),
        &["add_lead", "update_lead", "status_lead"],
    );
    let (buyers, pipeline, status) = e.with_data(|d| {
        let mut buyers: Vec<u64> = d
            .leads
            .values()
            .filter(|l| l.status_id == 142 && !l.contacts.is_empty())
            .map(|l| l.contacts[0].id)
            .collect();
        buyers.sort_unstable();
        buyers.dedup();
        let main = d
            .pipelines
            .values()
            .find(|p| p.name != "Повторные продажи")
            .map(|m| {
                (
                    m.id,
                    m.statuses
                        .iter()
                        .find(|s| s.id != 142 && s.id != 143)
                        .map(|s| s.id),
                )
            });
        (buyers, main.map(|m| m.0), main.and_then(|m| m.1))
    });
    let (Some(pipeline), Some(status)) = (pipeline, status) else {
        bail!("no main pipeline in the emulated account")
    };
    if buyers.is_empty() {
        bail!("no past buyers in the emulated account");
    }
    // Warm the server's cached analysis with one lead before measuring.
    let total = rate * seconds;
    let mut created: std::collections::HashMap<u64, Instant> = std::collections::HashMap::new();
    let mut latencies = Vec::with_capacity(total as usize);
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    let started = Instant::now();
    let mut i = 0u64;
    let deadline = started + Duration::from_secs(seconds + 30);
    while (latencies.len() as u64) < total && Instant::now() < deadline {
        if i < total {
            ticker.tick().await;
            let buyer = buyers[(i as usize) % buyers.len()];
            if let Some(lead) = e.add_lead(buyer, 1000, pipeline, status) {
                created.insert(lead, Instant::now());
            }
            i += 1;
        } else {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for t in e.writes().tasks_created.iter() {
            if let Some(at) = t.entity_id.and_then(|id| created.remove(&id)) {
                latencies.push(at.elapsed().as_secs_f64() * 1000.0);
            }
        }
    }
    cancel.cancel();
    tasks.wait().await;
    if latencies.is_empty() {
        bail!("no lead was routed");
    }
    latencies.sort_by(f64::total_cmp);
    let q = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "bench route: {total} new leads of past buyers at {rate}/s (emulated amoCRM at {crm_rps} req/s), webhook delivered by the emulator"
    );
    println!(
        "  routed           {} of {total} (moved + tasked)",
        latencies.len()
    );
    println!(
        "  webhook -> task  p50 {:.0} ms  p99 {:.0} ms  max {:.0} ms",
        q(0.5),
        q(0.99),
        latencies[latencies.len() - 1]
    );
    Ok(())
}
