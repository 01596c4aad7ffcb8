//! Runs the Bitrix24 emulator in its own process (for `b24_speed` RSS figures):
//! `cargo run --release -p rebuy-bitrix24 --example b24_emulate -- PORT CONTACTS DEALS`.
use rebuy_emulator::bitrix24::{B24Config, run_bitrix24};
use rebuy_emulator::seed::SeedConfig;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    let n = |i: usize, d: usize| a.get(i).and_then(|v| v.parse().ok()).unwrap_or(d);
    let cfg = B24Config {
        seed: SeedConfig::new(1, n(2, 100_000), n(3, 300_000)),
        ..B24Config::default()
    };
    run_bitrix24(cfg, n(1, 8899) as u16, None, &[]).await
}
