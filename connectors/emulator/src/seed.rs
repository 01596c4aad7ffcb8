//! The deterministic, CRM-neutral data generator.
//!
//! [`generate`] turns a [`SeedConfig`] into a [`Dataset`]: users, companies, contacts,
//! pipelines with stages, a product catalog and deals with product rows. The same config always
//! gives the same dataset, byte for byte, so tests can compare exact records. Nothing here knows
//! amoCRM or Bitrix24 names: each CRM emulator maps the dataset into its own wire shapes (amoCRM
//! maps won/lost stages to its shared statuses 142/143, phones to `PHONE` custom fields, ...).
//!
//! # What the data looks like
//! The generator aims at the mess of a real small-business CRM that repeat-sales analytics must
//! survive:
//! - Russian first and last names (feminine surname forms for women), a few contacts with only a
//!   first name or written "Last First";
//! - phones typed by people: `8 (912) 345-67-89`, `+79123456789`, `7-912-345-67-89`,
//!   `9123456789`, `+7 912 345 67 89`, some with an extension, a few garbage values;
//! - emails for about half of the contacts, some in upper case;
//! - duplicate people: about 3% of contacts reuse the phone of an earlier contact, written in
//!   another format (the same person entered twice, or a family sharing a phone);
//! - about 10% of contacts belong to a company (B2B);
//! - three pipelines: the main sales funnel, a repeat-sales funnel and a wholesale funnel;
//! - about three years of deals with real buying patterns ([`BuyerProfile`]): most people buy
//!   once; regulars buy on their own cycle (and some of them fall asleep); seasonal buyers come in
//!   spring and autumn (tyres); consumable buyers order water in 19 l bottles: the mean interval
//!   between orders follows the quantity they buy, and the gaps are Erlang-k distributed with a
//!   regularity `k` of their own ([`Contact::gap_shape`]), some of them stopped ordering;
//! - won (~80% of closed), lost and open deals (open ones are recent), amounts in whole roubles
//!   (`i64`, never `f64`), product rows (name, price, quantity) on most deals.
//!
//! Ids grow with creation time, as in a real CRM, and have small random gaps so that no client
//! can assume contiguous ids.
use crate::rng::Rng;
use jiff::Timestamp;
use jiff::civil;
use jiff::tz::{self, TimeZone};
use serde::Serialize;

const DAY: i64 = 86_400;

/// What to generate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedConfig {
    /// The seed: the same seed (and the same other fields) gives the same data.
    pub seed: u64,
    /// Number of contacts.
    pub contacts: usize,
    /// Number of deals (exact).
    pub deals: usize,
    /// Number of users (managers), at least 1.
    pub users: usize,
    /// Start of the history: the oldest record is created at or after this instant.
    pub start: Timestamp,
    /// "Now" of the dataset: no record is created or updated after it. An input, so tests are
    /// reproducible.
    pub now: Timestamp,
}

/// The fixed default "now" of generated data: 2026-03-01T09:00:00Z.
pub const DEFAULT_NOW_SECS: i64 = 1_772_355_600;

impl Default for SeedConfig {
    /// Seed 1, 1,000 contacts, 3,000 deals, 8 users, three years of history ending at
    /// [`DEFAULT_NOW_SECS`].
    fn default() -> Self {
        Self::new(1, 1_000, 3_000)
    }
}

impl SeedConfig {
    /// The generated history's period for a banner, with how far its end lies before today:
    /// a history that ended months ago makes every customer look lapsed.
    pub fn period_line(&self) -> String {
        let day = |t: Timestamp| t.to_zoned(jiff::tz::TimeZone::UTC).date();
        let behind = (Timestamp::now().as_second() - self.now.as_second()) / 86_400;
        let note = if behind > 1 {
            format!("; it ends {behind} days before today, so recent-activity figures look dated")
        } else {
            String::new()
        };
        format!("{} .. {}{note}", day(self.start), day(self.now))
    }

    /// A config with the given seed and sizes, 8 users, and three years of history ending
    /// today ([`today`]): what `rebuy emulate` and `rebuy demo` generate unless an end date is
    /// pinned. The data is the same all day and changes at the next UTC midnight.
    pub fn ending_today(seed: u64, contacts: usize, deals: usize) -> Self {
        Self::new(seed, contacts, deals).with_now(today())
    }

    /// The same config with the history ending at the start (00:00 UTC) of `date`, three years
    /// long: a pinned end for reproducible runs (`rebuy emulate --history-end DATE`).
    pub fn ending_on(self, date: civil::Date) -> Self {
        let end = date
            .to_zoned(TimeZone::UTC)
            .map(|z| z.timestamp())
            .unwrap_or(ts(DEFAULT_NOW_SECS));
        self.with_now(end)
    }

    /// A config with the given seed and sizes, 8 users, and three years of history ending at the
    /// fixed [`DEFAULT_NOW_SECS`] (pinned, so tests are reproducible on any date).
    pub fn new(seed: u64, contacts: usize, deals: usize) -> Self {
        let now = ts(DEFAULT_NOW_SECS);
        Self {
            seed,
            contacts,
            deals,
            users: 8,
            start: ts(DEFAULT_NOW_SECS - 3 * 365 * DAY),
            now,
        }
    }

    /// The same config with `now` moved (and `start` kept three years before it).
    pub fn with_now(mut self, now: Timestamp) -> Self {
        self.now = now;
        self.start = ts(now.as_second() - 3 * 365 * DAY);
        self
    }
}

/// The start (00:00 UTC) of the current day: the end of a history that ends today.
pub fn today() -> Timestamp {
    ts(Timestamp::now().as_second().div_euclid(DAY) * DAY)
}

/// Everything the generator produced. All vectors are sorted by id.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Dataset {
    /// Managers.
    pub users: Vec<User>,
    /// Companies (B2B customers).
    pub companies: Vec<Company>,
    /// People.
    pub contacts: Vec<Contact>,
    /// Pipelines with their stages, main pipeline first.
    pub pipelines: Vec<Pipeline>,
    /// The product catalog.
    pub products: Vec<Product>,
    /// Deals, sorted by id (which is also creation order).
    pub deals: Vec<Deal>,
}

/// A manager.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct User {
    /// Id.
    pub id: u64,
    /// Display name.
    pub name: String,
    /// Login email, lower case.
    pub email: String,
    /// Account administrator (the first user).
    pub is_admin: bool,
    /// Still working; an inactive manager may still be responsible for old records.
    pub active: bool,
}

/// What a phone or email is (mapped to each CRM's own codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ContactKind {
    /// Work.
    Work,
    /// Mobile.
    Mobile,
    /// Home / private.
    Home,
    /// Other.
    Other,
}

/// A phone exactly as a person typed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Phone {
    /// The raw text.
    pub raw: String,
    /// Work, mobile...
    pub kind: ContactKind,
}

/// An email as typed (may be upper case).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Email {
    /// The raw text.
    pub value: String,
    /// Work, private...
    pub kind: ContactKind,
}

/// How a contact buys; drives the deal timeline. Exposed so tests can check the analytics
/// against the truth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BuyerProfile {
    /// Buys once (or tries once and is lost).
    OneTime,
    /// A few purchases at random moments.
    Occasional,
    /// Buys on a personal cycle (`cycle_days`); may have stopped ("sleeping").
    Regular,
    /// Buys in spring and autumn.
    Seasonal,
    /// Orders a consumable (water, 19 l bottles); the next order follows the quantity.
    Consumable,
}

/// A person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Contact {
    /// Id.
    pub id: u64,
    /// First name (may be empty).
    pub first_name: String,
    /// Last name (may be empty).
    pub last_name: String,
    /// Display name as entered.
    pub name: String,
    /// Phones as typed.
    pub phones: Vec<Phone>,
    /// Emails as typed.
    pub emails: Vec<Email>,
    /// The company the person belongs to.
    pub company_id: Option<u64>,
    /// Responsible manager.
    pub responsible_user_id: u64,
    /// Created.
    pub created_at: Timestamp,
    /// Last modified.
    pub updated_at: Timestamp,
    /// The buying pattern behind this contact's deals.
    pub profile: BuyerProfile,
    /// The personal purchase cycle in days (regulars and consumable buyers).
    pub cycle_days: Option<u32>,
    /// Consumable buyers: the shape `k` of the Erlang-k distribution of the gaps between their
    /// orders (mean `cycle_days`); the larger, the more regular (the gaps' coefficient of
    /// variation is `1/sqrt(k)`). Varies across buyers, so a model must estimate it.
    pub gap_shape: Option<u32>,
    /// When this contact reuses the phone of an earlier contact: that contact's id.
    pub duplicate_of: Option<u64>,
}

/// A company.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Company {
    /// Id.
    pub id: u64,
    /// Name, e.g. `ООО «Вектор»`.
    pub name: String,
    /// Phones as typed.
    pub phones: Vec<Phone>,
    /// Emails as typed.
    pub emails: Vec<Email>,
    /// Web site.
    pub web: Option<String>,
    /// Responsible manager.
    pub responsible_user_id: u64,
    /// Created.
    pub created_at: Timestamp,
    /// Last modified.
    pub updated_at: Timestamp,
}

/// What a pipeline is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PipelineKind {
    /// The main sales funnel (new customers).
    Sales,
    /// The repeat-sales funnel.
    Repeat,
    /// Wholesale (B2B).
    Wholesale,
}

/// The kind of a stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StageKind {
    /// The "unsorted" inbox stage.
    Unsorted,
    /// An intermediate stage.
    Open,
    /// Closed, won.
    Won,
    /// Closed, lost.
    Lost,
}

/// A pipeline stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stage {
    /// Id, unique across pipelines (CRM emulators may remap won/lost ids).
    pub id: u64,
    /// Name.
    pub name: String,
    /// Sort order.
    pub sort: i64,
    /// Unsorted, open, won or lost.
    pub kind: StageKind,
    /// Display colour (`#rrggbb`).
    pub color: String,
}

/// A pipeline (deal funnel).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pipeline {
    /// Id.
    pub id: u64,
    /// Name.
    pub name: String,
    /// What it is for.
    pub kind: PipelineKind,
    /// The account's main pipeline.
    pub is_main: bool,
    /// Sort order.
    pub sort: i64,
    /// Stages in sort order: unsorted, open stages, won, lost.
    pub stages: Vec<Stage>,
}

impl Pipeline {
    /// The stage of the given kind (first one for `Open`).
    pub fn stage(&self, kind: StageKind) -> Option<&Stage> {
        self.stages.iter().find(|s| s.kind == kind)
    }
}

/// A catalog product.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Product {
    /// Id.
    pub id: u64,
    /// Name.
    pub name: String,
    /// Article number.
    pub sku: String,
    /// Unit price in whole roubles.
    pub price: i64,
    /// Unit of measure (`шт`, `комплект`, `услуга`...).
    pub unit: String,
}

/// A product row of a deal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProductRow {
    /// The catalog product.
    pub product_id: u64,
    /// Its name.
    pub name: String,
    /// Unit price in whole roubles.
    pub price: i64,
    /// Quantity.
    pub quantity: u32,
}

/// Open, won or lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DealOutcome {
    /// In progress.
    Open,
    /// Closed, won.
    Won,
    /// Closed, lost.
    Lost,
}

/// A deal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Deal {
    /// Id (grows with `created_at`).
    pub id: u64,
    /// Title.
    pub name: String,
    /// Pipeline.
    pub pipeline_id: u64,
    /// Stage within the pipeline.
    pub stage_id: u64,
    /// Open, won or lost (agrees with the stage kind).
    pub outcome: DealOutcome,
    /// Amount in whole roubles (sum of the rows when there are rows; 0 = no amount set).
    pub amount: i64,
    /// The contact (every generated deal has one).
    pub contact_id: u64,
    /// The contact's company, when any.
    pub company_id: Option<u64>,
    /// Responsible manager.
    pub responsible_user_id: u64,
    /// Created.
    pub created_at: Timestamp,
    /// Last modified.
    pub updated_at: Timestamp,
    /// Closed (won or lost); `None` while open.
    pub closed_at: Option<Timestamp>,
    /// Product rows (may be empty: services sold by amount only).
    pub products: Vec<ProductRow>,
    /// Tags.
    pub tags: Vec<String>,
    /// Lead source (`сайт`, `звонок`, `рекомендация`, `авито`), when known.
    pub source: Option<String>,
}

fn ts(secs: i64) -> Timestamp {
    Timestamp::from_second(secs).unwrap_or(Timestamp::UNIX_EPOCH)
}

const MALE_FIRST: &[&str] = &[
    "Александр",
    "Дмитрий",
    "Максим",
    "Сергей",
    "Андрей",
    "Алексей",
    "Артём",
    "Илья",
    "Кирилл",
    "Михаил",
    "Никита",
    "Иван",
    "Егор",
    "Роман",
    "Владимир",
    "Павел",
    "Денис",
    "Евгений",
    "Олег",
    "Игорь",
    "Николай",
    "Виктор",
    "Юрий",
    "Антон",
    "Григорий",
    "Степан",
    "Тимур",
    "Руслан",
];
const FEMALE_FIRST: &[&str] = &[
    "Анна",
    "Мария",
    "Елена",
    "Ольга",
    "Наталья",
    "Татьяна",
    "Ирина",
    "Екатерина",
    "Светлана",
    "Юлия",
    "Анастасия",
    "Дарья",
    "Полина",
    "Ксения",
    "Виктория",
    "Алина",
    "Марина",
    "Людмила",
    "Галина",
    "Вера",
    "Софья",
    "Валентина",
    "Надежда",
    "Оксана",
];
const LAST: &[&str] = &[
    "Иванов",
    "Смирнов",
    "Кузнецов",
    "Попов",
    "Васильев",
    "Петров",
    "Соколов",
    "Михайлов",
    "Новиков",
    "Фёдоров",
    "Морозов",
    "Волков",
    "Алексеев",
    "Лебедев",
    "Семёнов",
    "Егоров",
    "Павлов",
    "Козлов",
    "Степанов",
    "Николаев",
    "Орлов",
    "Андреев",
    "Макаров",
    "Никитин",
    "Захаров",
    "Зайцев",
    "Соловьёв",
    "Борисов",
    "Яковлев",
    "Григорьев",
    "Романов",
    "Воробьёв",
    "Сергеев",
    "Кузьмин",
    "Фролов",
    "Александров",
    "Дмитриев",
    "Королёв",
    "Гусев",
    "Киселёв",
    "Ильин",
    "Максимов",
    "Поляков",
    "Сорокин",
    "Виноградов",
    "Ковалёв",
    "Белов",
    "Медведев",
    "Антонов",
    "Тарасов",
    "Жуков",
    "Баранов",
    "Филиппов",
    "Комаров",
    "Давыдов",
    "Беляев",
    "Герасимов",
    "Богданов",
    "Осипов",
    "Сидоров",
    "Матвеев",
    "Титов",
    "Марков",
    "Миронов",
    "Крылов",
    "Куликов",
    "Карпов",
    "Власов",
    "Мельников",
    "Денисов",
    "Гаврилов",
    "Тихонов",
    "Казаков",
    "Афанасьев",
    "Данилов",
    "Савельев",
    "Тимофеев",
    "Фомин",
    "Чернов",
    "Абрамов",
    "Мартынов",
    "Ефимов",
    "Федотов",
    "Щербаков",
    "Назаров",
    "Калинин",
    "Исаев",
    "Чернышёв",
    "Быков",
    "Маслов",
    "Родионов",
    "Коновалов",
    "Лазарев",
    "Воронин",
    "Климов",
    "Филатов",
    "Пономарёв",
    "Голубев",
    "Кудрявцев",
    "Прохоров",
    "Наумов",
    "Потапов",
    "Журавлёв",
    "Овчинников",
    "Трофимов",
    "Леонов",
    "Соболев",
    "Ермаков",
    "Колесников",
    "Гончаров",
    "Емельянов",
    "Никифоров",
    "Грачёв",
    "Котов",
    "Гришин",
    "Ефремов",
    "Архипов",
    "Громов",
    "Кириллов",
    "Малышев",
    "Панов",
    "Моисеев",
    "Румянцев",
    "Акимов",
    "Кондратьев",
    "Бирюков",
    "Горбунов",
    "Анисимов",
    "Ерёмин",
    "Тихомиров",
    "Галкин",
    "Лукьянов",
    "Михеев",
    "Скворцов",
    "Юдин",
    "Белоусов",
    "Нестеров",
    "Симонов",
    "Прокофьев",
    "Харитонов",
    "Князев",
    "Цветков",
    "Левин",
    "Митрофанов",
    "Воронов",
    "Аксёнов",
    "Софронов",
    "Мальцев",
    "Логинов",
    "Горшков",
    "Савин",
    "Краснов",
    "Майоров",
    "Демидов",
    "Елисеев",
    "Рыбаков",
    "Сафонов",
    "Плотников",
    "Дёмин",
    "Хохлов",
    "Жданов",
    "Островский",
    "Вишневский",
    "Шевченко",
    "Бондаренко",
    "Ким",
    "Ли",
    "Гарипов",
    "Хабибуллин",
];
const COMPANY_FORMS: &[&str] = &["ООО", "ООО", "ООО", "ИП", "АО", "ЗАО"];
const COMPANY_NAMES: &[&str] = &[
    "Ромашка",
    "Вектор",
    "СтройМаркет",
    "Аквалайн",
    "Северный ветер",
    "ТехноСервис",
    "Глобус",
    "Меридиан",
    "Альфа-Трейд",
    "Лидер",
    "Восток",
    "Уралснаб",
    "Сибирь-Логистик",
    "Феникс",
    "Горизонт",
    "Кристалл",
    "Прогресс",
    "Стандарт",
    "Монолит",
    "Эталон",
    "Дельта",
    "Орбита",
    "Атлант",
    "Нева",
    "Волга-Агро",
    "Мегаполис",
    "Автодом",
    "Профи",
    "Капитал",
    "Гранит",
];
const EMAIL_DOMAINS: &[&str] = &[
    "mail.ru",
    "yandex.ru",
    "gmail.com",
    "bk.ru",
    "inbox.ru",
    "list.ru",
    "rambler.ru",
    "ya.ru",
];
const SOURCES: &[&str] = &["сайт", "звонок", "рекомендация", "авито"];

/// Product groups: (name, sku, price, unit). Indices below refer to this table.
const CATALOG: &[(&str, &str, i64, &str)] = &[
    // 0..=1: water (consumable)
    ("Вода питьевая «Родник» 19 л", "W-19-R", 290, "бутыль"),
    ("Вода минеральная «Горная» 19 л", "W-19-G", 350, "бутыль"),
    // 2..=3: water equipment (first order)
    ("Помпа механическая", "W-PUMP", 450, "шт"),
    ("Кулер напольный с нагревом", "W-COOL", 8_900, "шт"),
    // 4..=7: seasonal (tyres)
    ("Шиномонтаж, комплект 4 колеса", "T-FIT", 3_200, "услуга"),
    ("Хранение шин, сезон", "T-STORE", 4_000, "услуга"),
    ("Шины летние R16, комплект", "T-SUM16", 28_000, "комплект"),
    ("Шины зимние R16, комплект", "T-WIN16", 32_000, "комплект"),
    // 8..=11: regular (office supplies)
    ("Кофе в зёрнах, 1 кг", "O-COFFEE", 1_450, "шт"),
    ("Бумага А4, коробка 5 пачек", "O-A4", 1_900, "коробка"),
    ("Картридж для принтера", "O-CART", 3_400, "шт"),
    ("Набор чистящих средств", "O-CLEAN", 1_200, "набор"),
    // 12..=19: one-off goods and services
    ("Кирпич облицовочный, поддон", "B-BRICK", 18_500, "поддон"),
    ("Цемент М500, 50 кг", "B-CEM", 520, "мешок"),
    ("Профнастил кровельный, лист", "B-ROOF", 890, "лист"),
    ("Диван угловой «Комфорт»", "F-SOFA", 45_900, "шт"),
    ("Консультация специалиста", "S-CONS", 2_500, "услуга"),
    ("Ноутбук 15.6\"", "E-NB15", 64_990, "шт"),
    ("Монтаж и пусконаладка", "S-MOUNT", 7_500, "услуга"),
    ("Годовое сервисное обслуживание", "S-YEAR", 12_000, "услуга"),
];
const PRODUCT_ID_BASE: u64 = 900_001;

/// Generates the dataset for `cfg`. Deterministic; fast enough for 100k contacts and 300k deals
/// in well under a few seconds in release mode.
pub fn generate(cfg: &SeedConfig) -> Dataset {
    let mut rng = Rng::new(cfg.seed);
    let now = cfg.now.as_second();
    let start = cfg.start.as_second().min(now - DAY);
    let span = (now - start).max(DAY);

    let users = gen_users(&mut rng.fork(1), cfg.users.max(1));
    let user_weights: Vec<u32> = users
        .iter()
        .map(|u| if u.active { 10 } else { 3 })
        .collect();
    let pipelines = gen_pipelines();
    let products: Vec<Product> = CATALOG
        .iter()
        .enumerate()
        .map(|(i, &(name, sku, price, unit))| Product {
            id: PRODUCT_ID_BASE + i as u64,
            name: name.to_owned(),
            sku: sku.to_owned(),
            price,
            unit: unit.to_owned(),
        })
        .collect();

    // Contacts: creation times with growth (more recent contacts than old ones), then ids in
    // creation order.
    let mut crng = rng.fork(2);
    let mut created: Vec<i64> = (0..cfg.contacts)
        .map(|_| {
            let t = start + (span as f64 * 0.97 * crng.unit().sqrt()) as i64;
            work_hours(&mut crng, t)
        })
        .collect();
    created.sort_unstable();
    let n_companies = if cfg.contacts == 0 {
        0
    } else {
        (cfg.contacts / 25).max(1)
    };
    let mut company_first_member: Vec<Option<i64>> = vec![None; n_companies];
    let company_ids = ids(&mut crng, 35_000_001, n_companies);
    let contact_ids = ids(&mut crng, 21_000_001, cfg.contacts);
    let mut contacts = Vec::with_capacity(cfg.contacts);
    // National 10-digit numbers of earlier contacts, for duplicates.
    let mut numbers: Vec<u64> = Vec::with_capacity(cfg.contacts);
    for (i, &created_at) in created.iter().enumerate() {
        let profile = match crng.weighted(&[58, 17, 10, 8, 7]) {
            0 => BuyerProfile::OneTime,
            1 => BuyerProfile::Occasional,
            2 => BuyerProfile::Regular,
            3 => BuyerProfile::Seasonal,
            _ => BuyerProfile::Consumable,
        };
        let female = crng.chance(0.5);
        let (mut first, mut last) = person(&mut crng, female);
        let mut duplicate_of = None;
        let mut phones = Vec::new();
        if i > 10 && crng.chance(0.03) {
            let j = crng.below(i as u64) as usize;
            if let Some(&number) = numbers.get(j) {
                duplicate_of = contact_ids.get(j).copied();
                if crng.chance(0.5)
                    && let Some(other) = contacts
                        .get(j)
                        .map(|c: &Contact| (c.first_name.clone(), c.last_name.clone()))
                {
                    (first, last) = other;
                }
                phones.push(Phone {
                    raw: format_phone(&mut crng, number),
                    kind: ContactKind::Mobile,
                });
                numbers.push(number);
            }
        }
        if phones.is_empty() {
            let number = 9_000_000_000 + crng.below(999_999_999);
            numbers.push(number);
            if crng.chance(0.93) {
                let kind = if crng.chance(0.8) {
                    ContactKind::Mobile
                } else {
                    ContactKind::Work
                };
                phones.push(Phone {
                    raw: format_phone(&mut crng, number),
                    kind,
                });
            }
        }
        if crng.chance(0.12) {
            let kind = if crng.chance(0.5) {
                ContactKind::Work
            } else {
                ContactKind::Home
            };
            let other = 9_000_000_000 + crng.below(999_999_999);
            phones.push(Phone {
                raw: format_phone(&mut crng, other),
                kind,
            });
        }
        let mut emails = Vec::new();
        if crng.chance(0.55) {
            let mut email = format!(
                "{}.{}{}@{}",
                translit(&first),
                translit(&last),
                if crng.chance(0.4) {
                    (crng.below(99) + 1).to_string()
                } else {
                    String::new()
                },
                crng.pick(EMAIL_DOMAINS).copied().unwrap_or("mail.ru")
            );
            if crng.chance(0.08) {
                email = email.to_uppercase();
            }
            let kind = if crng.chance(0.75) {
                ContactKind::Home
            } else {
                ContactKind::Work
            };
            emails.push(Email { value: email, kind });
        }
        let name = match crng.below(20) {
            0 => first.clone(),
            1 | 2 => format!("{last} {first}"),
            _ => format!("{first} {last}"),
        };
        let (first_name, last_name) = if name == first {
            (first, String::new())
        } else {
            (first, last)
        };
        let company_id = if n_companies > 0 && crng.chance(0.10) {
            let k = crng.below(n_companies as u64) as usize;
            if let Some(slot) = company_first_member.get_mut(k) {
                *slot = Some(slot.map_or(created_at, |t| t.min(created_at)));
            }
            company_ids.get(k).copied()
        } else {
            None
        };
        let responsible_user_id = users.get(crng.weighted(&user_weights)).map_or(0, |u| u.id);
        let cycle_days = match profile {
            BuyerProfile::Regular => Some(crng.range(14, 90) as u32),
            BuyerProfile::Consumable => Some(crng.range(2, 4) as u32), // days per bottle for now
            _ => None,
        };
        let updated_at = (created_at + crng.range(0, 60 * DAY)).min(now);
        contacts.push(Contact {
            id: contact_ids.get(i).copied().unwrap_or_default(),
            first_name,
            last_name,
            name,
            phones,
            emails,
            company_id,
            responsible_user_id,
            created_at: ts(created_at),
            updated_at: ts(updated_at),
            profile,
            cycle_days,
            gap_shape: None,
            duplicate_of,
        });
    }

    let mut corng = rng.fork(3);
    let companies: Vec<Company> = company_ids
        .iter()
        .zip(&company_first_member)
        .map(|(&id, first)| {
            let created_at = match first {
                Some(t) => (t - corng.range(0, 30 * DAY)).max(start),
                None => start + corng.below(span as u64) as i64,
            };
            let name = format!(
                "{} «{}»",
                corng.pick(COMPANY_FORMS).copied().unwrap_or("ООО"),
                corng.pick(COMPANY_NAMES).copied().unwrap_or("Вектор")
            );
            let number = 9_000_000_000 + corng.below(999_999_999);
            let domain = format!("company{}.ru", id % 100_000);
            Company {
                id,
                name,
                phones: vec![Phone {
                    raw: format_phone(&mut corng, number),
                    kind: ContactKind::Work,
                }],
                emails: if corng.chance(0.7) {
                    vec![Email {
                        value: format!("info@{domain}"),
                        kind: ContactKind::Work,
                    }]
                } else {
                    vec![]
                },
                web: corng.chance(0.5).then(|| format!("https://{domain}")),
                responsible_user_id: users.get(corng.weighted(&user_weights)).map_or(0, |u| u.id),
                created_at: ts(created_at),
                updated_at: ts((created_at + corng.range(0, 90 * DAY)).min(now)),
            }
        })
        .collect();

    let deals = gen_deals(
        &mut rng.fork(4),
        cfg,
        &mut contacts,
        &pipelines,
        &products,
        &users,
        start,
        now,
    );
    Dataset {
        users,
        companies,
        contacts,
        pipelines,
        products,
        deals,
    }
}

/// `n` increasing ids from `base` with small random gaps.
fn ids(rng: &mut Rng, base: u64, n: usize) -> Vec<u64> {
    let mut next = base;
    (0..n)
        .map(|_| {
            let id = next;
            next += 1 + rng.below(3);
            id
        })
        .collect()
}

/// Moves `t` to a random moment between 09:00 and 21:00 Moscow time of the same UTC day.
fn work_hours(rng: &mut Rng, t: i64) -> i64 {
    t.div_euclid(DAY) * DAY + 6 * 3600 + rng.below(12 * 3600) as i64
}

fn gen_users(rng: &mut Rng, n: usize) -> Vec<User> {
    let mut next = 6_100_001u64;
    (0..n)
        .map(|i| {
            let female = rng.chance(0.6);
            let (first, last) = person(rng, female);
            let id = next;
            next += 1 + rng.below(5);
            let initial: String = translit(&first).chars().take(1).collect();
            User {
                id,
                name: format!("{first} {last}"),
                email: format!(
                    "{initial}.{}{}@rebuy-demo.ru",
                    translit(&last),
                    if i > 0 { i.to_string() } else { String::new() }
                ),
                is_admin: i == 0,
                active: !(n > 3 && i == n - 1),
            }
        })
        .collect()
}

fn person(rng: &mut Rng, female: bool) -> (String, String) {
    let first = if female {
        rng.pick(FEMALE_FIRST)
    } else {
        rng.pick(MALE_FIRST)
    }
    .copied()
    .unwrap_or("Иван");
    let last = rng.pick(LAST).copied().unwrap_or("Иванов");
    let last = if female {
        feminine(last)
    } else {
        last.to_owned()
    };
    (first.to_owned(), last)
}

fn feminine(last: &str) -> String {
    if last.ends_with("ов")
        || last.ends_with("ев")
        || last.ends_with("ёв")
        || last.ends_with("ин")
        || last.ends_with("ын")
    {
        format!("{last}а")
    } else if let Some(stem) = last.strip_suffix("ий") {
        format!("{stem}ая")
    } else {
        last.to_owned()
    }
}

/// Lower-case Latin transliteration for emails.
fn translit(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars().flat_map(char::to_lowercase) {
        let t = match c {
            'а' => "a",
            'б' => "b",
            'в' => "v",
            'г' => "g",
            'д' => "d",
            'е' => "e",
            'ё' => "e",
            'ж' => "zh",
            'з' => "z",
            'и' => "i",
            'й' => "y",
            'к' => "k",
            'л' => "l",
            'м' => "m",
            'н' => "n",
            'о' => "o",
            'п' => "p",
            'р' => "r",
            'с' => "s",
            'т' => "t",
            'у' => "u",
            'ф' => "f",
            'х' => "kh",
            'ц' => "ts",
            'ч' => "ch",
            'ш' => "sh",
            'щ' => "shch",
            'ъ' | 'ь' => "",
            'ы' => "y",
            'э' => "e",
            'ю' => "yu",
            'я' => "ya",
            c if c.is_ascii_alphanumeric() => {
                out.push(c);
                continue;
            }
            _ => "",
        };
        out.push_str(t);
    }
    out
}

/// Formats a 10-digit national number (9xx...) the way people type it.
fn format_phone(rng: &mut Rng, national: u64) -> String {
    let d = format!("{national:010}");
    let (a, b, c, e) = (&d[0..3], &d[3..6], &d[6..8], &d[8..10]);
    match rng.weighted(&[30, 25, 10, 12, 12, 5, 3, 3]) {
        0 => format!("8 ({a}) {b}-{c}-{e}"),
        1 => format!("+7{d}"),
        2 => format!("7-{a}-{b}-{c}-{e}"),
        3 => d.clone(),
        4 => format!("+7 {a} {b} {c} {e}"),
        5 => format!("8{d}"),
        6 => format!("8 ({a}) {b}-{c}-{e} доб. {}", 100 + rng.below(900)),
        // Garbage seen in real CRMs: a truncated number or a note instead of a number.
        _ => {
            if rng.chance(0.5) {
                format!("+7 ({a}) {b}-{c}")
            } else {
                "нет телефона".to_owned()
            }
        }
    }
}

fn gen_pipelines() -> Vec<Pipeline> {
    let mut next_stage = 61_000_001u64;
    let mut make = |id: u64, name: &str, kind: PipelineKind, sort: i64, open: &[(&str, &str)]| {
        let mut stages = vec![Stage {
            id: next_stage,
            name: "Неразобранное".into(),
            sort: 10,
            kind: StageKind::Unsorted,
            color: "#c1c1c1".into(),
        }];
        next_stage += 1;
        for (i, (name, color)) in open.iter().enumerate() {
            stages.push(Stage {
                id: next_stage,
                name: (*name).into(),
                sort: 20 + 10 * i as i64,
                kind: StageKind::Open,
                color: (*color).into(),
            });
            next_stage += 1;
        }
        stages.push(Stage {
            id: next_stage,
            name: "Успешно реализовано".into(),
            sort: 10_000,
            kind: StageKind::Won,
            color: "#CCFF66".into(),
        });
        stages.push(Stage {
            id: next_stage + 1,
            name: "Закрыто и не реализовано".into(),
            sort: 11_000,
            kind: StageKind::Lost,
            color: "#D5D8DB".into(),
        });
        next_stage += 2;
        Pipeline {
            id,
            name: name.into(),
            kind,
            is_main: kind == PipelineKind::Sales,
            sort,
            stages,
        }
    };
    vec![
        make(
            7_100_001,
            "Воронка продаж",
            PipelineKind::Sales,
            1,
            &[
                ("Первичный контакт", "#99ccff"),
                ("Переговоры", "#ffff99"),
                ("Принимают решение", "#ffcc66"),
                ("Согласование договора", "#deff81"),
            ],
        ),
        make(
            7_100_002,
            "Повторные продажи",
            PipelineKind::Repeat,
            2,
            &[
                ("Напомнить о покупке", "#98cbff"),
                ("Связались", "#fffeb2"),
                ("Счёт выставлен", "#ffce5a"),
            ],
        ),
        make(
            7_100_003,
            "Опт",
            PipelineKind::Wholesale,
            3,
            &[
                ("Заявка", "#d6eaff"),
                ("КП отправлено", "#ffdc7f"),
                ("Договор", "#87f2c0"),
            ],
        ),
    ]
}

/// The spring (Mar 15 - Apr 30) and autumn (Sep 1 - Oct 15) windows, Moscow time, that lie
/// within `[from, to]`.
fn season_windows(from: i64, to: i64) -> Vec<(i64, i64)> {
    let msk = TimeZone::fixed(tz::offset(3));
    let year_of = |t: i64| ts(t).to_zoned(msk.clone()).year();
    let at = |y: i16, m: i8, d: i8| {
        civil::date(y, m, d)
            .at(0, 0, 0, 0)
            .to_zoned(msk.clone())
            .map(|z| z.timestamp().as_second())
            .unwrap_or(0)
    };
    let mut out = Vec::new();
    for y in year_of(from)..=year_of(to) {
        for (lo, hi) in [(at(y, 3, 15), at(y, 4, 30)), (at(y, 9, 1), at(y, 10, 15))] {
            let (lo, hi) = (lo.max(from), hi.min(to));
            if hi - lo >= DAY {
                out.push((lo, hi));
            }
        }
    }
    out
}

/// A deal before ids are assigned.
struct Draft {
    contact: usize,
    created_at: i64,
    rows: Vec<(usize, u32)>,
    amount_only: i64,
    seq: u32,
}

#[allow(clippy::too_many_arguments)]
fn gen_deals(
    rng: &mut Rng,
    cfg: &SeedConfig,
    contacts: &mut [Contact],
    pipelines: &[Pipeline],
    products: &[Product],
    users: &[User],
    start: i64,
    now: i64,
) -> Vec<Deal> {
    // 1. How many deals each contact would make by its profile.
    let natural: Vec<u64> = contacts
        .iter()
        .map(|c| {
            let avail_days = ((now - c.created_at.as_second()) / DAY).max(1) as u64;
            match c.profile {
                BuyerProfile::OneTime => 1,
                BuyerProfile::Occasional => 2 + rng.below(3),
                BuyerProfile::Regular => {
                    let cycle = c.cycle_days.unwrap_or(30) as u64;
                    (avail_days / cycle * (30 + rng.below(71)) / 100).clamp(2, 60)
                }
                BuyerProfile::Seasonal => (avail_days / 182 + 1).clamp(1, 8),
                BuyerProfile::Consumable => {
                    (avail_days / 14 * (40 + rng.below(61)) / 100).clamp(2, 120)
                }
            }
        })
        .collect();
    // 2. Scale to exactly `cfg.deals`. One-time buyers keep their single deal when there are
    // enough deals for everyone (so "most buy once" holds at any size); the rest is shared in
    // proportion to the natural counts (largest-remainder by cumulative sums, exact).
    let n_one: u64 = contacts
        .iter()
        .filter(|c| c.profile == BuyerProfile::OneTime)
        .count() as u64;
    let total = cfg.deals as u64;
    let mut counts = vec![0u64; contacts.len()];
    let (fixed_one, pool_total, pool_natural): (bool, u64, u64) = if total >= contacts.len() as u64
    {
        let rest: u64 = contacts
            .iter()
            .zip(&natural)
            .filter(|(c, _)| c.profile != BuyerProfile::OneTime)
            .map(|(_, &n)| n)
            .sum();
        (true, total - n_one, rest)
    } else {
        (false, total, natural.iter().sum())
    };
    let mut cum = 0u128;
    let mut given = 0u64;
    for (i, c) in contacts.iter().enumerate() {
        if fixed_one && c.profile == BuyerProfile::OneTime {
            counts[i] = 1;
            continue;
        }
        cum += natural[i] as u128;
        let upto = if pool_natural == 0 {
            0
        } else {
            (cum * pool_total as u128 / pool_natural as u128) as u64
        };
        counts[i] = upto - given;
        given = upto;
    }
    if fixed_one && pool_natural == 0 && pool_total > 0 {
        // Only one-time buyers exist: hand out the remaining deals round-robin.
        let n = counts.len().max(1);
        for k in 0..pool_total as usize {
            counts[k % n] += 1;
        }
    }

    // 3. Timelines.
    let mut drafts: Vec<Draft> = Vec::with_capacity(cfg.deals);
    let horizon = now - 3600;
    for (ci, c) in contacts.iter_mut().enumerate() {
        let k = counts[ci] as usize;
        if k == 0 {
            continue;
        }
        let created = c.created_at.as_second();
        let first = (created + rng.range(0, 3 * DAY)).min(horizon);
        let avail = (horizon - first).max(DAY);
        let mut times: Vec<i64> = Vec::with_capacity(k);
        let mut qty_per_order = None;
        match c.profile {
            BuyerProfile::OneTime | BuyerProfile::Occasional => {
                times.push(first);
                for _ in 1..k {
                    times.push(first + rng.below(avail as u64) as i64);
                }
            }
            BuyerProfile::Consumable => {
                // Periodic buyers: Erlang-k gaps around the cycle the quantity sets, k varying
                // across buyers (2: irregular, 12: nearly clockwork).
                let per_unit = c.cycle_days.unwrap_or(3) as i64;
                let q = rng.range(2, 8);
                let shape = *rng.pick(&[2u32, 3, 4, 6, 8, 12]).unwrap_or(&4);
                let mean = (q * per_unit * DAY) as f64;
                let mut gaps: Vec<f64> = (0..k).map(|_| erlang(rng, shape, mean)).collect();
                let used: f64 = gaps.iter().sum();
                let mut cycle = mean;
                if used > avail as f64 {
                    // Too many orders for the time this contact has: shorter gaps, same shape.
                    let scale = avail as f64 / used;
                    gaps.iter_mut().for_each(|g| *g *= scale);
                    cycle *= scale;
                }
                let used = gaps.iter().sum::<f64>() as i64;
                // Active buyers are due again about now; the others stopped ("sleeping").
                let begin = if used < avail * 8 / 10 && rng.chance(0.6) {
                    horizon - used
                } else {
                    first
                };
                let mut t = begin as f64;
                for g in &gaps {
                    times.push((t as i64).clamp(first, horizon));
                    t += g;
                }
                let cycle_days = (cycle / DAY as f64).round().max(1.0) as i64;
                qty_per_order = Some(((cycle_days / per_unit).max(1), per_unit));
                c.cycle_days = Some(cycle_days as u32);
                c.gap_shape = Some(shape);
            }
            BuyerProfile::Regular => {
                let mut cycle = c.cycle_days.unwrap_or(30) as i64 * DAY;
                if cycle * k as i64 > avail {
                    cycle = (avail / k as i64).max(DAY);
                }
                // Active customers end near "now"; the others stopped buying ("sleeping").
                let used = cycle * k as i64;
                let begin = if used < avail * 8 / 10 && rng.chance(0.6) {
                    horizon - used
                } else {
                    first
                };
                for j in 0..k as i64 {
                    let jitter = rng.range(-(cycle * 15 / 100), cycle * 15 / 100);
                    times.push((begin + j * cycle + jitter).clamp(first, horizon));
                }
                c.cycle_days = Some((cycle / DAY) as u32);
            }
            BuyerProfile::Seasonal => {
                let windows = season_windows(first, horizon);
                if windows.is_empty() {
                    for _ in 0..k {
                        times.push(first + rng.below(avail as u64) as i64);
                    }
                } else {
                    // Skip a few seasons at random when there are more seasons than purchases.
                    let w = windows.len();
                    let offset = if k < w {
                        rng.below((w - k + 1) as u64) as usize
                    } else {
                        0
                    };
                    for j in 0..k {
                        let (lo, hi) = windows[(offset + j) % w];
                        times.push(lo + rng.below((hi - lo) as u64) as i64);
                    }
                }
            }
        }
        times.sort_unstable();
        for (seq, &t) in times.iter().enumerate() {
            let t = work_hours(rng, t).clamp(start, horizon);
            let (rows, amount_only) =
                deal_rows(rng, c.profile, seq, t, qty_per_order.map(|(q, _)| q));
            drafts.push(Draft {
                contact: ci,
                created_at: t,
                rows,
                amount_only,
                seq: seq as u32,
            });
        }
    }
    drafts.sort_by_key(|d| (d.created_at, d.contact, d.seq));

    // 4. Ids, outcomes, stages.
    let deal_ids = ids(rng, 11_000_001, drafts.len());
    let find = |kind: PipelineKind| {
        pipelines
            .iter()
            .find(|p| p.kind == kind)
            .or(pipelines.first())
    };
    let active_users: Vec<u64> = users.iter().filter(|u| u.active).map(|u| u.id).collect();
    drafts
        .into_iter()
        .zip(deal_ids)
        .filter_map(|(d, id)| {
            let c = contacts.get(d.contact)?;
            let repeat_profile =
                matches!(c.profile, BuyerProfile::Regular | BuyerProfile::Consumable);
            let age = now - d.created_at;
            let outcome = if age < 30 * DAY && rng.chance(if repeat_profile { 0.3 } else { 0.55 }) {
                DealOutcome::Open
            } else if rng.chance(if repeat_profile { 0.93 } else { 0.78 }) {
                DealOutcome::Won
            } else {
                DealOutcome::Lost
            };
            let amount_rows: i64 = d
                .rows
                .iter()
                .map(|&(p, q)| products.get(p).map_or(0, |p| p.price) * q as i64)
                .sum();
            let amount = if d.rows.is_empty() {
                d.amount_only
            } else {
                amount_rows
            };
            let pipeline = if c.company_id.is_some() && amount >= 20_000 && rng.chance(0.6) {
                find(PipelineKind::Wholesale)
            } else if d.seq > 0 && rng.chance(0.75) {
                find(PipelineKind::Repeat)
            } else {
                find(PipelineKind::Sales)
            }?;
            let stage = match outcome {
                DealOutcome::Won => pipeline.stage(StageKind::Won),
                DealOutcome::Lost => pipeline.stage(StageKind::Lost),
                DealOutcome::Open => {
                    if rng.chance(0.1) {
                        pipeline.stage(StageKind::Unsorted)
                    } else {
                        let open: Vec<&Stage> = pipeline
                            .stages
                            .iter()
                            .filter(|s| s.kind == StageKind::Open)
                            .collect();
                        rng.pick(&open).copied()
                    }
                }
            }?;
            let close_days = if c.profile == BuyerProfile::Consumable {
                2
            } else {
                14
            };
            let closed_at = match outcome {
                DealOutcome::Open => None,
                _ => Some((d.created_at + rng.range(600, close_days * DAY)).min(now)),
            };
            let updated_at = match closed_at {
                Some(t) => (t + if rng.chance(0.1) {
                    rng.range(0, 20 * DAY)
                } else {
                    0
                })
                .min(now),
                None => (d.created_at + rng.range(0, age.max(0))).min(now),
            };
            let responsible_user_id = if rng.chance(0.85) {
                c.responsible_user_id
            } else {
                rng.pick(&active_users)
                    .copied()
                    .unwrap_or(c.responsible_user_id)
            };
            let rows: Vec<ProductRow> = d
                .rows
                .iter()
                .filter_map(|&(p, q)| {
                    let p = products.get(p)?;
                    Some(ProductRow {
                        product_id: p.id,
                        name: p.name.clone(),
                        price: p.price,
                        quantity: q,
                    })
                })
                .collect();
            let name = match rows.first() {
                _ if rng.chance(0.35) => format!("Сделка #{id}"),
                Some(r) if r.quantity > 1 => format!("{} × {}", r.name, r.quantity),
                Some(r) => r.name.clone(),
                None => "Заказ услуг".to_owned(),
            };
            let source = (d.seq == 0 && rng.chance(0.7))
                .then(|| rng.pick(SOURCES).copied().unwrap_or("сайт").to_owned());
            let mut tags = Vec::new();
            if source.as_deref() == Some("сайт") {
                tags.push("сайт".to_owned());
            }
            if pipeline.kind == PipelineKind::Wholesale {
                tags.push("опт".to_owned());
            }
            if d.seq > 0 && rng.chance(0.3) {
                tags.push("повторная".to_owned());
            }
            Some(Deal {
                id,
                name,
                pipeline_id: pipeline.id,
                stage_id: stage.id,
                outcome,
                amount,
                contact_id: c.id,
                company_id: c.company_id,
                responsible_user_id,
                created_at: ts(d.created_at),
                updated_at: ts(updated_at.max(d.created_at)),
                closed_at: closed_at.map(ts),
                products: rows,
                tags,
                source,
            })
        })
        .collect()
}

/// One Erlang-`k` draw with the given mean: the sum of `k` exponential draws of mean `mean / k`.
fn erlang(rng: &mut Rng, k: u32, mean: f64) -> f64 {
    let k = k.max(1);
    let rate_mean = mean / f64::from(k);
    (0..k)
        .map(|_| -(1.0 - rng.unit()).max(f64::MIN_POSITIVE).ln() * rate_mean)
        .sum()
}

/// Product rows (catalog index, quantity) of a deal, or an amount without rows.
fn deal_rows(
    rng: &mut Rng,
    profile: BuyerProfile,
    seq: usize,
    t: i64,
    qty: Option<i64>,
) -> (Vec<(usize, u32)>, i64) {
    match profile {
        BuyerProfile::Consumable => {
            let q = (qty.unwrap_or(4) + rng.range(-1, 1)).max(1) as u32;
            let water = if rng.chance(0.8) { 0 } else { 1 };
            let mut rows = vec![(water, q)];
            if seq == 0 {
                if rng.chance(0.5) {
                    rows.push((2, 1));
                } else if rng.chance(0.2) {
                    rows.push((3, 1));
                }
            }
            (rows, 0)
        }
        BuyerProfile::Seasonal => {
            let msk = TimeZone::fixed(tz::offset(3));
            let spring = ts(t).to_zoned(msk).month() <= 6;
            let mut rows = vec![(4, 1)];
            if rng.chance(0.3) {
                rows.push((if spring { 6 } else { 7 }, 1));
            }
            if rng.chance(0.4) {
                rows.push((5, 1));
            }
            (rows, 0)
        }
        BuyerProfile::Regular => {
            let mut rows = vec![(8 + rng.below(4) as usize, rng.range(1, 5) as u32)];
            if rng.chance(0.3) {
                rows.push((8 + rng.below(4) as usize, rng.range(1, 3) as u32));
            }
            rows.dedup_by_key(|r| r.0);
            (rows, 0)
        }
        BuyerProfile::OneTime | BuyerProfile::Occasional => {
            if rng.chance(0.2) {
                // A service sold by amount only; a few deals have no amount at all.
                let amount = if rng.chance(0.1) {
                    0
                } else {
                    // Log-uniform between 1,000 and 150,000 roubles, rounded to 100.
                    let x = (1_000f64.ln() + rng.unit() * (150_000f64.ln() - 1_000f64.ln())).exp();
                    (x / 100.0).round() as i64 * 100
                };
                return (vec![], amount);
            }
            let p = 12 + rng.below(8) as usize;
            let q = match p {
                13 => rng.range(10, 40),
                14 => rng.range(20, 100),
                12 => rng.range(1, 4),
                _ => 1,
            } as u32;
            (vec![(p, q)], 0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feminine_forms() {
        assert_eq!(feminine("Иванов"), "Иванова");
        assert_eq!(feminine("Островский"), "Островская");
        assert_eq!(feminine("Шевченко"), "Шевченко");
        assert_eq!(translit("Соловьёв"), "solovev");
    }

    #[test]
    fn seasons_cover_spring_and_autumn() {
        let cfg = SeedConfig::default();
        let w = season_windows(cfg.start.as_second(), cfg.now.as_second());
        assert!(w.len() >= 5, "{w:?}");
        assert!(w.iter().all(|(lo, hi)| hi > lo));
    }
}
