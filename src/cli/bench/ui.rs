//! `rebuy bench ui`: dashboard page render times on a synthetic 1M-customer portal.
use super::*;

/// Target render time of a dashboard page.
const UI_TARGET: Duration = Duration::from_millis(200);

/// `rebuy bench ui`: builds the dashboard's cached view of a synthetic portal (the analysis and
/// its monthly trend), fills its outbox, then times each page through the real router (session
/// cookie, every middleware) and prints p50 / p99 per page. The CRM is not reachable (the
/// mapping page shows the cached pipelines, as it does when a CRM is down).
pub(super) async fn bench_ui(
    customers: usize,
    deals: usize,
    requests: usize,
    outbox: usize,
) -> Result<()> {
    use axum::body::Body;
    use rebuy::analytics::synthetic::{SYNTHETIC_AS_OF, synthetic_dataset};
    use rebuy::outbox::{Action, ActionState};
    use rebuy_core::{DealId, PipelineId, Stage, StageId, StageKind, User, UserId, WriteOp};
    use tower::ServiceExt as _;

    let requests = requests.max(2);
    let dir = tempfile::tempdir()?;
    // Port 1 on loopback: nothing listens, so the CRM is unreachable at once.
    let portal = rebuy::emulated::emulator_portal(
        "bench",
        "http://127.0.0.1:1",
        "bench-client",
        "http://127.0.0.1:1/callback",
        7,
    )?;
    let store = Store::open(dir.path(), &portal.id)?;
    let t0 = Instant::now();
    let (view, pipelines) = {
        let cfg = portal.clone();
        tokio::task::spawn_blocking(move || {
            let data = synthetic_dataset(customers, deals, 42);
            let as_of: jiff::Timestamp = SYNTHETIC_AS_OF.parse().expect("valid instant");
            let analysis =
                rebuy::analytics::analyse(&data, &cfg.analytics, as_of, jiff::tz::TimeZone::UTC);
            let months = rebuy::ui::monthly(&data, &analysis, &cfg, 12);
            let pipelines: Vec<rebuy_core::Pipeline> = data
                .pipeline_ids()
                .iter()
                .map(|id| rebuy_core::Pipeline {
                    id: PipelineId(*id),
                    name: format!("Pipeline {id}"),
                    is_main: *id == 1,
                    sort: 0,
                    stages: data
                        .stage_ids()
                        .iter()
                        .enumerate()
                        .map(|(i, s)| Stage {
                            id: StageId(s.clone()),
                            name: format!("Stage {s}"),
                            sort: i as i64,
                            kind: match s.as_str() {
                                "142" => StageKind::Won,
                                "143" => StageKind::Lost,
                                _ => StageKind::Open,
                            },
                        })
                        .collect(),
                })
                .collect();
            (rebuy::ui::PortalView::new(analysis, months), pipelines)
        })
        .await?
    };
    let built = t0.elapsed();
    let users: Vec<User> = (1..=20)
        .map(|i| User {
            id: UserId(i),
            name: format!("Manager {i}"),
            email: None,
            active: true,
        })
        .collect();
    let actions: Vec<Action> = (0..outbox)
        .map(|i| Action {
            merged: Vec::new(),
            key: format!("bench/after_purchase_7/contact:{i}/2025-01-01"),
            op: WriteOp::MoveDeal {
                deal: DealId(i as u64 + 1),
                pipeline: PipelineId(1),
                stage: StageId("2".into()),
            },
            rule: "after_purchase_7".into(),
            customer: format!("contact:{i}"),
            summary: format!("move deal {} to stage 2", i + 1),
        })
        .collect();
    let failed_keys: Vec<String> = actions.iter().step_by(100).map(|a| a.key.clone()).collect();
    store
        .blocking(move |s| {
            s.write(|w| {
                w.put_all(&pipelines)?;
                w.put_all(&users)
            })?;
            s.outbox_enqueue(actions)?;
            let mut failed = Vec::new();
            for k in &failed_keys {
                if let Some(mut e) = s.outbox_get(k)? {
                    e.state = ActionState::Failed {
                        code: "rejected".into(),
                        message: "stage is closed".into(),
                        at: jiff::Timestamp::now(),
                    };
                    failed.push(e);
                }
            }
            s.outbox_update(&failed)
        })
        .await?;

    let buyers = view.analysis.customers.len();
    let state = rebuy::server::AppState::from_stores(vec![(portal.clone(), store)], true);
    // What the pages' background refresh of the outbox costs (at most once per OUTBOX_TTL).
    let rt = state.portal("bench").context("bench portal")?.clone();
    let t1 = Instant::now();
    tokio::task::spawn_blocking(move || rebuy::ui::OutboxSnapshot::read(&rt)).await??;
    let outbox_read = t1.elapsed();
    let mut settings = rebuy::ui::UiSettings::single("bench", "bench");
    settings.cache_ttl = Duration::from_secs(24 * 3600);
    let ui = rebuy::ui::UiState::new(state, settings);
    ui.put_view(&portal.id, view);
    let (sid, _) = ui
        .sessions
        .create(Some("bench".into()), Duration::from_secs(3600));
    let cookie = format!("{}={sid}", rebuy::ui::auth::SESSION_COOKIE);
    let app = axum::Router::new().nest("/ui", rebuy::ui::router_with(ui));

    let pages = [
        ("portals", "/ui".to_string()),
        ("overview", "/ui/p/bench".into()),
        ("rfm heatmap + abc/xyz", "/ui/p/bench/rfm".into()),
        ("rfm by revenue", "/ui/p/bench/rfm?by=revenue".into()),
        ("segments, all (page 1)", "/ui/p/bench/segments".into()),
        (
            "segments, all (page 5000)",
            "/ui/p/bench/segments?page=5000".into(),
        ),
        (
            "segments, champions",
            "/ui/p/bench/segments?segment=champions".into(),
        ),
        (
            "segments, heat cell r5 f5",
            "/ui/p/bench/segments?r=5&f=5".into(),
        ),
        (
            "segments, search by phone",
            "/ui/p/bench/segments?q=79000012345".into(),
        ),
        (
            "segments, search by name",
            "/ui/p/bench/segments?q=%D0%BA%D0%BB%D0%B8%D0%B5%D0%BD%D1%82+99999".into(),
        ),
        ("touches", "/ui/p/bench/touches".into()),
        ("touches, failed", "/ui/p/bench/touches?state=failed".into()),
        ("mapping (CRM offline)", "/ui/p/bench/mapping".into()),
    ];
    println!(
        "bench ui: {customers} customers, {deals} deals ({buyers} buyers), outbox {outbox}; cached view built in {:.1} s; {requests} requests per page",
        built.as_secs_f64()
    );
    println!(
        "  outbox snapshot read in {:.0} ms (in the background, at most every {} s)",
        outbox_read.as_secs_f64() * 1e3,
        rebuy::ui::OUTBOX_TTL.as_secs()
    );
    println!(
        "  {:<28} {:>9} {:>9} {:>9} {:>10}",
        "page", "p50 ms", "p99 ms", "max ms", "bytes"
    );
    let mut over = Vec::new();
    for (name, path) in &pages {
        let mut times = Vec::with_capacity(requests);
        let mut bytes = 0;
        // One warm-up request, not counted.
        for i in 0..=requests {
            let req = axum::http::Request::get(path.as_str())
                .header("cookie", &cookie)
                .body(Body::empty())?;
            let started = Instant::now();
            let res = app.clone().oneshot(req).await?;
            let status = res.status();
            let body = axum::body::to_bytes(res.into_body(), usize::MAX).await?;
            let took = started.elapsed();
            if status != axum::http::StatusCode::OK {
                bail!(
                    "{path}: status {status}: {}",
                    String::from_utf8_lossy(&body[..body.len().min(300)])
                );
            }
            bytes = body.len();
            if i > 0 {
                times.push(took);
            }
        }
        times.sort();
        let q = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize];
        let (p50, p99, max) = (q(0.5), q(0.99), times[times.len() - 1]);
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "  {name:<28} {:>9.1} {:>9.1} {:>9.1} {bytes:>10}",
            ms(p50),
            ms(p99),
            ms(max)
        );
        if p99 > UI_TARGET {
            over.push(*name);
        }
    }
    if over.is_empty() {
        println!("  every page p99 <= {} ms", UI_TARGET.as_millis());
    } else {
        println!(
            "  over {} ms at p99: {}",
            UI_TARGET.as_millis(),
            over.join(", ")
        );
    }
    Ok(())
}
