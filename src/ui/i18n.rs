//! Interface language of the dashboard: English or Russian, chosen by `?lang=en|ru` (kept in
//! the `rebuy_lang` cookie), else by the browser's `Accept-Language`, else English.
//!
//! Texts are written in place as `l.t("English", "Русский")` pairs, so every page shows both
//! translations side by side in its source and a missing one is a compile error.
use crate::analytics::{CycleStatus, RfmSegment};
use axum::http::HeaderMap;

/// An interface language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Lang {
    /// English.
    #[default]
    En,
    /// Russian.
    Ru,
}

/// The cookie that keeps a `?lang=` choice.
pub const LANG_COOKIE: &str = "rebuy_lang";

impl Lang {
    /// Parses `en` / `ru` (case-insensitive, region suffixes allowed: `ru-RU`).
    pub fn parse(s: &str) -> Option<Lang> {
        let s = s.trim().to_ascii_lowercase();
        let primary = s.split(['-', '_']).next().unwrap_or("");
        match primary {
            "en" => Some(Lang::En),
            "ru" => Some(Lang::Ru),
            _ => None,
        }
    }

    /// `en` or `ru`.
    pub fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Ru => "ru",
        }
    }

    /// The language of a request: `?lang=` first, then the cookie, then `Accept-Language`
    /// (the first supported tag by quality), then English.
    pub fn detect(query: Option<&str>, headers: &HeaderMap) -> Lang {
        Lang::detect_or(query, headers, Lang::En)
    }

    /// [`detect`](Self::detect) with `default` when nothing in the request decides (the
    /// `[server.ui] default_lang`).
    pub fn detect_or(query: Option<&str>, headers: &HeaderMap, default: Lang) -> Lang {
        if let Some(l) = query.and_then(Lang::parse) {
            return l;
        }
        if let Some(l) =
            crate::server::request::cookie(headers, LANG_COOKIE).and_then(|v| Lang::parse(&v))
        {
            return l;
        }
        let accept = headers
            .get(axum::http::header::ACCEPT_LANGUAGE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        Lang::from_accept_language(accept).unwrap_or(default)
    }

    /// The best supported language of an `Accept-Language` value.
    pub fn from_accept_language(v: &str) -> Option<Lang> {
        let mut best: Option<(f32, Lang)> = None;
        for part in v.split(',') {
            let mut it = part.split(';');
            let tag = it.next().unwrap_or("").trim();
            let q = it
                .find_map(|p| p.trim().strip_prefix("q="))
                .and_then(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            if let Some(l) = Lang::parse(tag)
                && q > 0.0
                && best.is_none_or(|(bq, _)| q > bq)
            {
                best = Some((q, l));
            }
        }
        best.map(|(_, l)| l)
    }

    /// Picks the text of this language.
    pub fn t(self, en: &'static str, ru: &'static str) -> &'static str {
        match self {
            Lang::En => en,
            Lang::Ru => ru,
        }
    }

    /// The display name of an RFM segment.
    pub fn segment(self, s: RfmSegment) -> &'static str {
        use RfmSegment::*;
        match s {
            Champions => self.t("Champions", "Чемпионы"),
            Loyal => self.t("Loyal", "Лояльные"),
            PotentialLoyalists => self.t("Potential loyalists", "Потенциально лояльные"),
            New => self.t("New", "Новые"),
            Promising => self.t("Promising", "Перспективные"),
            NeedAttention => self.t("Need attention", "Требуют внимания"),
            AboutToSleep => self.t("About to sleep", "Засыпающие"),
            AtRisk => self.t("At risk", "В зоне риска"),
            CantLoseThem => self.t("Can't lose them", "Нельзя потерять"),
            Hibernating => self.t("Hibernating", "Спящие"),
            Lost => self.t("Lost", "Потерянные"),
        }
    }

    /// The display name of a cycle status.
    pub fn cycle(self, s: CycleStatus) -> &'static str {
        match s {
            CycleStatus::NotDue => self.t("not due", "не пора"),
            CycleStatus::DueSoon => self.t("due soon", "скоро"),
            CycleStatus::Overdue => self.t("overdue", "просрочен"),
            CycleStatus::Churned => self.t("churned", "ушёл"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_language_picks_the_best_supported_tag() {
        assert_eq!(
            Lang::from_accept_language("ru-RU,ru;q=0.9,en;q=0.8"),
            Some(Lang::Ru)
        );
        assert_eq!(
            Lang::from_accept_language("de;q=1, en;q=0.5, ru;q=0.7"),
            Some(Lang::Ru)
        );
        assert_eq!(Lang::from_accept_language("de, fr"), None);
        assert_eq!(Lang::from_accept_language("ru;q=0, en"), Some(Lang::En));
    }

    #[test]
    fn query_beats_cookie_beats_header() {
        let mut h = HeaderMap::new();
        h.insert("accept-language", "ru".parse().unwrap());
        assert_eq!(Lang::detect(None, &h), Lang::Ru);
        h.insert("cookie", "rebuy_lang=en".parse().unwrap());
        assert_eq!(Lang::detect(None, &h), Lang::En);
        assert_eq!(Lang::detect(Some("ru"), &h), Lang::Ru);
        let none = HeaderMap::new();
        assert_eq!(Lang::detect(None, &none), Lang::En);
        assert_eq!(Lang::detect_or(None, &none, Lang::Ru), Lang::Ru);
    }
}
