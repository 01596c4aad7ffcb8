//! Outgoing webhook delivery shared by the emulators: a background task per emulator that
//! POSTs queued bodies to their destinations, with timeouts, retries and seeded faults
//! (duplicates, drops, delays), as the real services may behave.
//!
//! Request handlers and library mutations only *enqueue* ([`Delivery::enqueue`] never blocks
//! and never awaits). The worker task is spawned lazily on the first delivery inside a tokio
//! runtime and stops when the emulator is dropped or [`Delivery::stop`] is called (pending
//! deliveries and retries are then abandoned).
//!
//! # Semantics
//! - One delivery = one POST of `body` with `Content-Type: {content_type}` to `url`; success is
//!   a 2xx answer within [`DeliveryConfig::timeout`] (amoCRM: 100–299 within 2 s).
//! - A failed attempt (other status, timeout, connection error) is retried after each entry of
//!   [`DeliveryConfig::retry_schedule`] in turn, when the emulator retries at all (amoCRM does,
//!   Bitrix24 does not: "a failed or unanswered delivery is logged and dropped").
//! - Faults are drawn per delivery from a generator seeded by [`DeliveryConfig::seed`]: a drop
//!   (`drop_rate`) sends nothing; a duplicate (`duplicate_rate`) sends the same body twice; a
//!   delay is drawn uniformly from `delay_ms`.
//! - Without a delay (`delay_ms == (0, 0)`), deliveries to one destination keep their order
//!   (first attempts are sent one after another; retries run beside the queue). With a delay,
//!   each delivery waits on its own and order is not kept.
use crate::rng::Rng;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio_util::sync::CancellationToken;

/// How an emulator delivers its outgoing webhooks.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryConfig {
    /// Probability that a delivery is sent twice (the copies are identical).
    pub duplicate_rate: f64,
    /// Probability that a delivery is silently lost (nothing is sent).
    pub drop_rate: f64,
    /// Delay before the first attempt, drawn uniformly from `[lo, hi]` milliseconds.
    /// `(0, 0)` = send at once and keep the order per destination.
    pub delay_ms: (u64, u64),
    /// Waits before the 1st, 2nd, ... retry of a failed delivery (amoCRM only; Bitrix24 never
    /// retries). The real amoCRM re-sends at +5 min and +15 min (answers 0–99 or 300+), then
    /// +15 min and +1 h (499, 500–599), and disables a hook after more than 100 invalid
    /// answers within 2 h; the default here is a short, test-friendly `[1 s, 5 s]`.
    pub retry_schedule: Vec<Duration>,
    /// Time allowed for an answer (amoCRM: 2 s).
    pub timeout: Duration,
    /// Seed of the fault generator.
    pub seed: u64,
}

impl Default for DeliveryConfig {
    /// Deliver once, promptly, without faults; retries at +1 s and +5 s; 2 s timeout.
    fn default() -> Self {
        Self {
            duplicate_rate: 0.0,
            drop_rate: 0.0,
            delay_ms: (0, 0),
            retry_schedule: vec![Duration::from_secs(1), Duration::from_secs(5)],
            timeout: Duration::from_secs(2),
            seed: 1,
        }
    }
}

/// Delivery counters of an emulator.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DeliveryStats {
    /// Deliveries queued (one per destination per change).
    pub queued: u64,
    /// HTTP attempts made (first attempts, retries and duplicate copies).
    pub sent: u64,
    /// Attempts answered with 2xx in time.
    pub delivered: u64,
    /// Attempts that failed (other status, timeout, connection error).
    pub failed: u64,
    /// Retry attempts among `sent`.
    pub retried: u64,
    /// Deliveries sent twice by the duplicate fault.
    pub duplicated: u64,
    /// Deliveries lost by the drop fault.
    pub dropped: u64,
    /// Deliveries given up after the last failed attempt.
    pub given_up: u64,
    /// Deliveries (and duplicate copies) not finished yet.
    pub in_flight: u64,
}

/// One queued POST.
#[derive(Debug, Clone)]
struct Job {
    url: String,
    content_type: &'static str,
    body: String,
}

struct Worker {
    tx: UnboundedSender<Job>,
    cancel: CancellationToken,
}

struct Shared {
    cfg: DeliveryConfig,
    rng: Rng,
}

/// The delivery engine of one emulator. Cheap to share behind the emulator's `Arc`.
pub struct Delivery {
    retries: bool,
    user_agent: &'static str,
    shared: Arc<Mutex<Shared>>,
    stats: Arc<Mutex<DeliveryStats>>,
    worker: Mutex<Option<Worker>>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("retries", &self.retries)
            .field("stats", &*lock(&self.stats))
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Delivery {
    /// A stopped engine: `retries` says whether failed deliveries are retried per the
    /// schedule; `user_agent` is sent with every POST.
    pub fn new(cfg: DeliveryConfig, retries: bool, user_agent: &'static str) -> Self {
        let rng = Rng::new(cfg.seed ^ 0xde11_7e57);
        Self {
            retries,
            user_agent,
            shared: Arc::new(Mutex::new(Shared { cfg, rng })),
            stats: Arc::new(Mutex::new(DeliveryStats::default())),
            worker: Mutex::new(None),
        }
    }

    /// Replaces the configuration (and reseeds the fault generator) for later deliveries.
    pub fn set_config(&self, cfg: DeliveryConfig) {
        let mut s = lock(&self.shared);
        s.rng = Rng::new(cfg.seed ^ 0xde11_7e57);
        s.cfg = cfg;
    }

    /// The current configuration.
    pub fn config(&self) -> DeliveryConfig {
        lock(&self.shared).cfg.clone()
    }

    /// A copy of the counters.
    pub fn stats(&self) -> DeliveryStats {
        lock(&self.stats).clone()
    }

    /// Queues a POST of `body` to `url`. Never blocks. Outside a tokio runtime nothing can be
    /// sent: the delivery is counted as queued and given up.
    pub fn enqueue(&self, url: &str, content_type: &'static str, body: String) {
        let job = Job {
            url: url.to_owned(),
            content_type,
            body,
        };
        lock(&self.stats).queued += 1;
        let mut w = lock(&self.worker);
        if let Some(worker) = w.as_ref()
            && !worker.cancel.is_cancelled()
            && worker.tx.send(job.clone()).is_ok()
        {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            lock(&self.stats).given_up += 1;
            tracing::warn!(url, "webhook not delivered: no tokio runtime");
            return;
        };
        let (tx, rx) = unbounded_channel();
        let cancel = CancellationToken::new();
        let _ = tx.send(job);
        let ctx = Ctx {
            retries: self.retries,
            user_agent: self.user_agent,
            shared: self.shared.clone(),
            stats: self.stats.clone(),
            cancel: cancel.clone(),
            client: reqwest::Client::builder()
                .pool_idle_timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
        };
        let token = cancel.clone();
        handle.spawn(async move {
            tokio::select! {
                () = token.cancelled() => {}
                () = run(ctx, rx) => {}
            }
        });
        *w = Some(Worker { tx, cancel });
    }

    /// Stops the worker: pending deliveries and retries are abandoned. A later
    /// [`Delivery::enqueue`] starts a new worker.
    pub fn stop(&self) {
        if let Some(w) = lock(&self.worker).take() {
            w.cancel.cancel();
        }
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        self.stop();
    }
}

#[derive(Clone)]
struct Ctx {
    retries: bool,
    user_agent: &'static str,
    shared: Arc<Mutex<Shared>>,
    stats: Arc<Mutex<DeliveryStats>>,
    cancel: CancellationToken,
    client: reqwest::Client,
}

impl Ctx {
    fn stat(&self, f: impl FnOnce(&mut DeliveryStats)) {
        f(&mut lock(&self.stats));
    }

    /// Spawns a task that ends with the worker.
    fn spawn(&self, fut: impl Future<Output = ()> + Send + 'static) {
        let token = self.cancel.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = token.cancelled() => {}
                () = fut => {}
            }
        });
    }

    /// One attempt: `true` on a 2xx answer within the timeout.
    async fn attempt(&self, job: &Job, timeout: Duration) -> bool {
        self.stat(|s| s.sent += 1);
        let r = self
            .client
            .post(&job.url)
            .timeout(timeout)
            .header(reqwest::header::CONTENT_TYPE, job.content_type)
            .header(reqwest::header::USER_AGENT, self.user_agent)
            .body(job.body.clone())
            .send()
            .await;
        let ok = matches!(&r, Ok(resp) if resp.status().is_success());
        if ok {
            self.stat(|s| s.delivered += 1);
        } else {
            self.stat(|s| s.failed += 1);
            match r {
                Ok(resp) => {
                    tracing::debug!(url = job.url, status = %resp.status(), "webhook refused")
                }
                Err(e) => tracing::debug!(url = job.url, error = %e, "webhook failed"),
            }
        }
        ok
    }

    /// The first attempt; on failure the retries run in their own task.
    async fn deliver(&self, job: Job) {
        let (timeout, schedule) = {
            let s = lock(&self.shared);
            (s.cfg.timeout, s.cfg.retry_schedule.clone())
        };
        if self.attempt(&job, timeout).await {
            self.stat(|s| s.in_flight -= 1);
            return;
        }
        if !self.retries || schedule.is_empty() {
            self.stat(|s| {
                s.given_up += 1;
                s.in_flight -= 1;
            });
            return;
        }
        let me = self.clone();
        self.spawn(async move {
            for wait in schedule {
                tokio::time::sleep(wait).await;
                me.stat(|s| s.retried += 1);
                if me.attempt(&job, timeout).await {
                    me.stat(|s| s.in_flight -= 1);
                    return;
                }
            }
            me.stat(|s| {
                s.given_up += 1;
                s.in_flight -= 1;
            });
        });
    }
}

/// The worker: draws faults and routes each delivery to its destination's queue (or to its
/// own delayed task).
async fn run(ctx: Ctx, mut rx: UnboundedReceiver<Job>) {
    let mut queues: HashMap<String, UnboundedSender<Job>> = HashMap::new();
    while let Some(job) = rx.recv().await {
        let (drop, copies, delay) = {
            let mut s = lock(&ctx.shared);
            let Shared { cfg, rng } = &mut *s;
            let drop = cfg.drop_rate > 0.0 && rng.chance(cfg.drop_rate);
            let dup = !drop && cfg.duplicate_rate > 0.0 && rng.chance(cfg.duplicate_rate);
            let (lo, hi) = cfg.delay_ms;
            let delay = if hi == 0 {
                0
            } else {
                rng.range(lo as i64, hi.max(lo) as i64) as u64
            };
            (drop, if dup { 2 } else { 1 }, delay)
        };
        if drop {
            ctx.stat(|s| s.dropped += 1);
            continue;
        }
        ctx.stat(|s| {
            s.in_flight += copies;
            if copies > 1 {
                s.duplicated += 1;
            }
        });
        let delayed = lock(&ctx.shared).cfg.delay_ms.1 > 0;
        for _ in 0..copies {
            let job = job.clone();
            if delayed {
                let c = ctx.clone();
                ctx.spawn(async move {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                    c.deliver(job).await;
                });
                continue;
            }
            let q = queues.entry(job.url.clone()).or_insert_with(|| {
                let (tx, mut qrx) = unbounded_channel::<Job>();
                let c = ctx.clone();
                ctx.spawn(async move {
                    while let Some(job) = qrx.recv().await {
                        c.deliver(job).await;
                    }
                });
                tx
            });
            let _ = q.send(job);
        }
    }
}
