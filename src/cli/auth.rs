//! `rebuy auth`: authorising a portal over OAuth (or printing a signed link for `rebuy serve`).

use super::*;

pub(super) async fn cmd_auth(cfg: &Config, args: &AuthArgs) -> Result<ExitCode> {
    let p = cfg
        .portal(&args.portal)
        .with_context(|| format!("unknown portal {:?}: not in the config", args.portal))?;
    if !matches!(p.auth, rebuy::config::AuthConfig::OAuth { .. }) {
        // A long-lived token or an inbound webhook URL is already the authorisation.
        println!(
            "portal {}: {} needs no authorization: its credentials come from the environment",
            p.id,
            match p.auth {
                rebuy::config::AuthConfig::LongLivedToken { .. } => "a long-lived token",
                _ => "an inbound webhook",
            }
        );
        return Ok(ExitCode::SUCCESS);
    }
    if args.link {
        // Signed with the key `serve` checks, from the data directory; no store is opened, so
        // this works while the server runs.
        let key = rebuy::server::oauth::LinkKey::load_or_create(&cfg.data_dir)
            .with_context(|| format!("reading the link key in {}", cfg.data_dir.display()))?;
        let base = cfg
            .server
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", cfg.server.listen));
        let valid = std::time::Duration::from_secs(args.valid_hours * 3600);
        println!(
            "Open this link within {} hour(s) to connect portal {} (it works for anyone who has it):\n\n  {}\n",
            args.valid_hours,
            p.id,
            key.start_link(&base, &p.id.0, valid)
        );
        return Ok(ExitCode::SUCCESS);
    }
    let store = Store::open(&cfg.data_dir, &p.id)?;
    let state = portal::random_state();
    let url = portal::authorize_url(p, &state)?;
    let code = match &args.code {
        Some(c) => c.clone(),
        None => match portal::try_automatic_code(&url, &state).await {
            Some(code) => {
                println!(
                    "authorised automatically (the CRM at {} is an emulator)",
                    p.base_url
                );
                code
            }
            None => {
                println!(
                    "Open this URL, allow access, and paste the `code` parameter of the page you are sent to:\n\n  {url}\n"
                );
                print!("code: ");
                use std::io::Write;
                std::io::stdout().flush().ok();
                let mut line = String::new();
                std::io::stdin()
                    .read_line(&mut line)
                    .context("reading the code from stdin")?;
                line.trim().to_owned()
            }
        },
    };
    if code.is_empty() {
        bail!("no authorization code given");
    }
    let tokens = portal::exchange_code(p, &store, &code).await?;
    println!(
        "portal {}: authorised; access token valid until {}",
        p.id,
        tokens
            .expires_at
            .map(|t| t.to_string())
            .unwrap_or_else(|| "unknown".into())
    );
    Ok(ExitCode::SUCCESS)
}
