//! Resolution and checking of mappings and playbooks: every problem named with file, key and
//! reason.
use super::*;
use crate::plan::tests::{pipelines, users};
use serde_json::json;

fn check_json(mapping: serde_json::Value) -> Vec<Problem> {
    let p = pipelines();
    let u = users();
    check(
        "shop",
        &mapping,
        None,
        CrmFacts {
            crm: CrmKind::Amocrm,
            pipelines: &p,
            users: &u,
            fields: None,
            customers: None,
            company_customers: false,
        },
    )
}

#[test]
fn every_built_in_playbook_resolves() {
    let names: Vec<&str> = BUILT_IN.iter().map(|(n, _)| *n).collect();
    assert_eq!(check_json(json!({"playbooks": names})), vec![]);
}

#[test]
fn a_playbook_with_unknown_names_is_refused_listing_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"
[funnel]
pipeline = "Цикл клиента"
stages = ["Больше 30 дней", "Нет такой стадии", "7 дней", "Пора покупать"]

[[after_purchase]]
id = "call"
days = 7
goal = "Звонок"
responsible = "user:Никто Никтович"
time = "25:00"
segments = ["champions", "vip"]

[[after_purchase]]
id = "call"
days = 30
goal = "Звонок"
responsible = "team:sales"
text = "{{ nmae }}"
"#,
    )
    .unwrap();
    let problems = check_json(json!({
        "playbooks": [path.display().to_string(), "no_such_playbook"],
        "repeat_pipeline": "Нет такой воронки",
        "default_responsible": "Уволенный Сотрудник",
    }));
    let file = path.display().to_string();
    let keys: Vec<(&str, &str)> = problems
        .iter()
        .map(|p| (p.file.as_str(), p.key.as_str()))
        .collect();
    for want in [
        (file.as_str(), "funnel.stages[1]"),
        (file.as_str(), "after_purchase[0].responsible"),
        (file.as_str(), "after_purchase[0].time"),
        (file.as_str(), "after_purchase[0].segments[1]"),
        (file.as_str(), "after_purchase[1].id"),
        (file.as_str(), "after_purchase[1].responsible"),
        (file.as_str(), "after_purchase[1].text"),
        ("portal shop mapping", "repeat_pipeline"),
        ("portal shop mapping", "default_responsible"),
        ("portal shop mapping", "playbooks[1]"),
    ] {
        assert!(keys.contains(&want), "missing {want:?} in {problems:#?}");
    }
    let stage = problems
        .iter()
        .find(|p| p.key == "funnel.stages[1]")
        .unwrap();
    assert!(
        stage.reason.contains("unknown stage \"Нет такой стадии\"")
            && stage.reason.contains("Больше 30 дней (31)"),
        "{}",
        stage.reason
    );
    let shown = format_problems(&problems);
    assert!(shown.contains(&format!("{file}: funnel.stages[1]: unknown stage")));
    assert!(shown.contains("deactivated"));
}

#[test]
fn unknown_keys_in_a_playbook_are_errors_with_their_path() {
    let src = Source {
        file: "x.toml".into(),
        text: "[[after_purchase]]\nid = \"a\"\ndays = 1\ngoal = \"g\"\ndelay = 3\n".into(),
    };
    let e = parse_playbook(&src).unwrap_err();
    assert_eq!(e[0].key, "after_purchase[0].delay");
    assert!(e[0].reason.contains("delay"), "{}", e[0].reason);
}

#[test]
fn funnel_windows_must_fit_the_stages() {
    let problems = check_json(json!({
        "funnel": {"pipeline": 3, "stages": ["31", "32", "33"], "windows_days": [30, 7, 0]},
    }));
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert_eq!(problems[0].key, "funnel.windows_days");
    let problems = check_json(json!({
        "funnel": {"pipeline": 3, "stages": ["31", "142"]},
    }));
    assert!(
        problems
            .iter()
            .any(|p| p.reason.contains("closed (won/lost)"))
    );
}

#[test]
fn fields_by_name_need_the_crm_field_list() {
    let problems = check_json(json!({"fields": {"rfm_segment": "Сегмент", "abc": 264_999}}));
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].key, "fields.rfm_segment");
}

#[test]
fn funnel_stage_for_days_left() {
    let f = Funnel {
        entity: crate::playbooks::mapping::FunnelEntity::Leads,
        pipeline: PipelineId(1),
        stages: vec![],
        windows_days: vec![30, 7, 0],
    };
    assert_eq!(
        [45, 31, 30, 8, 7, 1, 0, -10].map(|d| f.stage_for(d)),
        [0, 0, 1, 1, 2, 2, 3, 3]
    );
}
