#![allow(clippy::unwrap_used)]

use super::*;

fn users(count: usize) -> impl Iterator<Item = String> {
    (0..count).map(|index| format!("user-{index}"))
}

fn experiment(variants: &[(&str, u32, Option<f32>)]) -> Experiment {
    Experiment {
        name: "blend-weight".to_owned(),
        variants: variants
            .iter()
            .map(|(name, weight, session_weight)| Variant {
                name: (*name).to_owned(),
                weight: *weight,
                session_weight: *session_weight,
            })
            .collect(),
    }
}

#[test]
fn defaults_are_all_on_in_control() {
    let decisions = FlagsDoc::default().decide("anyone");
    assert_eq!(
        decisions,
        Decisions {
            personalization: true,
            session_blending: true,
            ann: true,
            redis_reads: true,
            variant: "control".to_owned(),
            session_weight: None,
        }
    );
}

#[test]
fn bucket_is_a_fixed_function_of_salt_and_user() {
    // Pinned values: a change of hash, seed or key format would silently reshuffle every user
    // across a deploy.
    let pinned: Vec<u64> = ["u1", "u2", "u3"].iter().map(|user| bucket("ann", user, 100)).collect();
    assert_eq!(pinned, vec![77, 87, 4]);
    assert_eq!(bucket("ann", "u1", 100), xxh3_64(b"ann:u1") % 100);
    assert_ne!(bucket("ann", "u1", 10_000), bucket("personalization", "u1", 10_000));
}

#[test]
fn rollout_30_percent_hits_30_percent_of_users_stably() {
    let doc = FlagsDoc { ann: Flag { enabled: true, rollout_percent: 30 }, ..FlagsDoc::default() };
    let on: Vec<bool> = users(10_000).map(|user| doc.decide(&user).ann).collect();
    let share = on.iter().filter(|on| **on).count() as f64 / 10_000.0;
    assert!((0.28..=0.32).contains(&share), "share {share}");
    let again: Vec<bool> = users(10_000).map(|user| doc.decide(&user).ann).collect();
    assert_eq!(on, again);
    // Other flags at 100 % stay on for everyone.
    assert!(users(1000).all(|user| doc.decide(&user).personalization));
}

#[test]
fn rollout_grows_monotonically_and_flags_bucket_independently() {
    let mut low = FlagsDoc::default();
    low.ann.rollout_percent = 20;
    low.personalization.rollout_percent = 20;
    let mut high = low.clone();
    high.ann.rollout_percent = 50;
    for user in users(5000) {
        if low.decide(&user).ann {
            assert!(high.decide(&user).ann, "raising the rollout turned {user} off");
        }
    }
    // Salted by flag name: the two 20 % populations are not the same users.
    let both = users(10_000)
        .filter(|user| {
            let decisions = low.decide(user);
            decisions.ann && decisions.personalization
        })
        .count();
    assert!((300..=500).contains(&both), "overlap {both}, independent would be ~400");
}

#[test]
fn disabled_or_zero_percent_is_off_for_everyone() {
    let mut doc = FlagsDoc::default();
    doc.personalization.enabled = false;
    doc.redis_reads.rollout_percent = 0;
    for user in users(2000) {
        let decisions = doc.decide(&user);
        assert!(!decisions.personalization && !decisions.redis_reads);
        assert!(decisions.ann && decisions.session_blending);
    }
}

#[test]
fn variant_weights_are_respected_and_stable() {
    let doc = FlagsDoc {
        experiment: Some(experiment(&[
            ("control", 20, None),
            ("treatment", 60, Some(0.5)),
            ("off", 0, None),
            ("other", 20, Some(0.0)),
        ])),
        ..FlagsDoc::default()
    };
    let mut counts = std::collections::HashMap::new();
    for user in users(10_000) {
        let decisions = doc.decide(&user);
        assert_eq!(decisions, doc.decide(&user));
        let expected_weight = match decisions.variant.as_str() {
            "treatment" => Some(0.5),
            "other" => Some(0.0),
            _ => None,
        };
        assert_eq!(decisions.session_weight, expected_weight);
        *counts.entry(decisions.variant).or_insert(0usize) += 1;
    }
    let share = |name: &str| counts.get(name).copied().unwrap_or(0) as f64 / 10_000.0;
    assert!((0.18..=0.22).contains(&share("control")), "{counts:?}");
    assert!((0.58..=0.62).contains(&share("treatment")), "{counts:?}");
    assert!((0.18..=0.22).contains(&share("other")), "{counts:?}");
    assert_eq!(share("off"), 0.0);
}

#[test]
fn the_issue_example_document_parses() {
    let text = r#"{"personalization": {"enabled": true, "rollout_percent": 100},
        "session_blending": {"enabled": true, "rollout_percent": 100},
        "ann": {"enabled": true, "rollout_percent": 100},
        "redis_reads": {"enabled": true, "rollout_percent": 100},
        "experiment": {"name": "blend-weight", "variants": [{"name": "control", "weight": 50},
            {"name": "treatment", "weight": 50, "session_weight": 0.5}]}}"#;
    let doc = FlagsDoc::from_json(text).unwrap();
    assert_eq!(doc.experiment.as_ref().unwrap().variants[1].session_weight, Some(0.5));
    assert_eq!(FlagsDoc::from_json(&doc.to_json()).unwrap(), doc);
    // Missing flags default to on; a missing rollout to 100.
    let partial = FlagsDoc::from_json(r#"{"ann": {"enabled": false}}"#).unwrap();
    assert_eq!(partial.ann, Flag { enabled: false, rollout_percent: 100 });
    assert_eq!(partial.personalization, Flag::default());
    assert_eq!(FlagsDoc::from_json("{}").unwrap(), FlagsDoc::default());
}

#[test]
fn validation_refuses_bad_documents() {
    let refused = |text: &str| FlagsDoc::from_json(text).unwrap_err();
    assert!(matches!(refused(r#"{"anny": {"enabled": true}}"#), FlagsError::Shape(_)));
    assert!(matches!(refused(r#"{"ann": {"enabled": "yes"}}"#), FlagsError::Shape(_)));
    assert!(matches!(
        refused(r#"{"ann": {"enabled": true, "rollout_percent": -1}}"#),
        FlagsError::Shape(_)
    ));
    assert!(matches!(
        refused(r#"{"ann": {"enabled": true, "rollout_percent": 101}}"#),
        FlagsError::Percent { flag: "ann", value: 101 }
    ));
    assert!(matches!(
        refused(r#"{"experiment": {"name": "x", "variants": [{"name": "a", "weight": 0}]}}"#),
        FlagsError::Weights { count: 1, sum: 0 }
    ));
    assert!(matches!(
        refused(r#"{"experiment": {"name": "x", "variants": []}}"#),
        FlagsError::Weights { count: 0, sum: 0 }
    ));
    assert!(matches!(
        refused(
            r#"{"experiment": {"name": "x", "variants": [{"name": "a", "weight": 1}, {"name": "a", "weight": 1}]}}"#
        ),
        FlagsError::DuplicateVariant(_)
    ));
    assert!(matches!(
        refused(
            r#"{"experiment": {"name": "x", "variants": [{"name": "a", "weight": 1, "session_weight": 1.5}]}}"#
        ),
        FlagsError::SessionWeight { .. }
    ));
    assert!(matches!(
        refused(r#"{"experiment": {"name": "", "variants": [{"name": "a", "weight": 1}]}}"#),
        FlagsError::Name { .. }
    ));
    assert!(matches!(
        refused(r#"{"experiment": {"name": "x", "variants": [{"name": "a b", "weight": 1}]}}"#),
        FlagsError::Name { .. }
    ));
}

#[test]
fn a_key_given_twice_is_refused_not_read_as_its_last_value() {
    for text in [
        r#"{"ann": {"enabled": false}, "ann": {"enabled": true}}"#,
        r#"{"ann": {"enabled": false, "enabled": true}}"#,
        r#"{"experiment": {"name": "x", "name": "y", "variants": [{"name": "a", "weight": 1}]}}"#,
        r#"{"experiment": {"name": "x", "variants": [{"name": "a", "weight": 1, "weight": 0}]}}"#,
    ] {
        match FlagsDoc::from_json(text) {
            Err(FlagsError::Shape(message)) => {
                assert!(message.contains("duplicate field"), "{text}: {message}")
            }
            other => panic!("{text}: {other:?}"),
        }
    }
}

#[test]
fn flag_names_parse() {
    for name in FlagName::ALL {
        assert_eq!(name.as_str().parse::<FlagName>().unwrap(), name);
    }
    assert!(matches!("ANN".parse::<FlagName>(), Err(FlagsError::UnknownFlag(_))));
}

#[test]
fn arrays_are_never_read_as_structs() {
    let refused = |text: &str| match FlagsDoc::from_json(text) {
        Err(FlagsError::NotAnObject { path }) => path,
        other => panic!("{text}: {other:?}"),
    };
    assert_eq!(refused("[]"), "the document");
    assert_eq!(refused(r#"[{"enabled": false, "rollout_percent": 0}]"#), "the document");
    assert_eq!(refused("3"), "the document");
    assert_eq!(refused(r#"{"ann": [false, 0]}"#), "ann");
    assert_eq!(refused(r#"{"experiment": ["x", []]}"#), "experiment");
    assert_eq!(
        refused(
            r#"{"experiment": {"name": "x", "variants": [{"name": "a", "weight": 1}, ["b", 1]]}}"#
        ),
        "experiment.variants[1]"
    );
    assert!(FlagsDoc::from_json(r#"{"experiment": null}"#).is_ok());
}
