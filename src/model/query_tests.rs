//! The query (user vector plus recent items' context), the softmax loss with its log-Q
//! correction, AdaGrad state and their restore.

use super::*;

fn trained(config: ModelConfig) -> Model {
    let mut model = Model::new(config).unwrap();
    for step in 0..3000u32 {
        let user = format!("u{}", step % 23);
        let item = format!("i{}", (step * 7 + step / 23) % 61);
        model.apply(&format!("e{step}"), &user, &item, i64::from(step), 4.0);
    }
    model
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn query_is_the_user_vector_plus_recency_weighted_contexts() {
    let model = trained(ModelConfig::default());
    let config = model.config().clone();
    let user = model.user_row("u5").unwrap();
    let seen: Vec<ItemRow> = model.user_seen(user).collect();
    assert!(seen.len() > config.context_items, "the test needs a full context");
    let recent: Vec<ItemRow> = seen.iter().rev().take(config.context_items).copied().collect();
    let raw: Vec<f32> = (0..recent.len()).map(|k| config.context_decay.powi(k as i32)).collect();
    let norm = raw.iter().sum::<f32>().powf(config.context_exponent);
    let mut expected = model.user_vector(user).to_vec();
    for (row, weight) in recent.iter().zip(&raw) {
        for (q, c) in expected.iter_mut().zip(model.context_vector(*row)) {
            *q += weight / norm * c;
        }
    }
    let query = model.query_vector(user);
    for (a, b) in query.iter().zip(&expected) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }
    assert!(model.context_vector(recent[0]).iter().any(|c| *c != 0.0), "contexts must learn");
    let item = ItemRow(3);
    let score = dot(&query, model.item_vector(item)) + model.item_bias(item);
    assert_eq!(model.score(user, item).to_bits(), score.to_bits());
}

#[test]
fn serving_query_from_stored_state_is_bit_identical_to_the_training_query() {
    let model = trained(ModelConfig::default());
    for row in 0..model.user_count() as u32 {
        let state = model.user_state(UserRow(row));
        assert_eq!(bits(&model.query_from_state(&state)), bits(&model.query_vector(UserRow(row))));
    }
}

#[test]
fn without_context_the_query_is_the_user_vector() {
    let model = trained(ModelConfig { context_items: 0, ..ModelConfig::default() });
    let user = model.user_row("u1").unwrap();
    assert_eq!(bits(&model.query_vector(user)), bits(model.user_vector(user)));
    assert!(model.context_vector(ItemRow(0)).iter().all(|c| *c == 0.0));
}

#[test]
fn an_item_seen_again_moves_to_the_most_recent_place() {
    let mut model = Model::new(ModelConfig::default()).unwrap();
    for (step, item) in ["a", "b", "c", "a"].iter().enumerate() {
        model.apply(&format!("e{step}"), "u", item, step as i64, 1.0);
    }
    let user = model.user_row("u").unwrap();
    let seen: Vec<&str> = model.user_seen(user).map(|row| model.item_id(row)).collect();
    assert_eq!(seen, ["b", "c", "a"]);
}

/// Learns "users who take a take b next" from many users, plus a more popular unrelated c; a
/// new user who took only a must then rank b above c. Only the context can carry this: the
/// new user's own vector has seen one event.
fn sequence_model(config: ModelConfig) -> (Model, f32, f32) {
    let mut model = Model::new(config).unwrap();
    let mut step = 0i64;
    for round in 0..3 {
        for user in 0..150 {
            for item in ["a", "b"] {
                let user_id = format!("s{user}");
                model.apply(&format!("e{round}-{step}"), &user_id, item, step, 4.0);
                step += 1;
            }
            for filler in 0..3 {
                let user_id = format!("p{user}-{filler}");
                model.apply(&format!("e{round}-{step}"), &user_id, "c", step, 4.0);
                step += 1;
                let other = format!("x{}", (user * 3 + filler) % 40);
                model.apply(&format!("e{round}-{step}"), &user_id, &other, step, 4.0);
                step += 1;
            }
        }
    }
    model.apply("new-a", "newcomer", "a", step, 4.0);
    let user = model.user_row("newcomer").unwrap();
    let b = model.score(user, model.item_row("b").unwrap());
    let c = model.score(user, model.item_row("c").unwrap());
    (model, b, c)
}

#[test]
fn the_context_carries_item_to_item_structure_to_a_new_user() {
    let (model, b, c) = sequence_model(ModelConfig::default());
    assert!(b > c, "after a, b ({b}) must outrank the more popular c ({c})");
    let a = model.item_row("a").unwrap();
    assert!(vector::norm_squared(model.context_vector(a)) > 0.0);
}

#[test]
fn log_q_correction_is_zero_under_uniform_sampling_and_grows_with_pool_share() {
    let uniform = trained(ModelConfig::default());
    assert_eq!(uniform.sampling_log_odds(0), 0.0);
    let mixed = trained(ModelConfig { uniform_negative_share: 0.5, ..ModelConfig::default() });
    let items = mixed.item_count() as u32;
    let odds: Vec<f32> = (0..items).map(|row| mixed.sampling_log_odds(row)).collect();
    assert!(odds.iter().all(|x| x.is_finite()));
    // An item absent from the pool is sampled at half the uniform rate: ln 0.5.
    let (pool, _) = mixed.negative_pool();
    let absent = (0..items).find(|row| !pool.contains(row));
    if let Some(row) = absent {
        assert!((odds[row as usize] - 0.5f32.ln()).abs() < 1e-6);
    }
    let busiest = (0..items).max_by_key(|row| pool.iter().filter(|p| *p == row).count()).unwrap();
    assert!(odds[busiest as usize] > 0.0, "a frequent pool item is oversampled");
}

#[test]
fn every_loss_and_optimizer_stays_deterministic_and_bounded() {
    for loss in [Loss::Bpr, Loss::Softmax] {
        for optimizer in [Optimizer::Sgd, Optimizer::Adagrad] {
            let config = ModelConfig {
                loss,
                optimizer,
                learning_rate: 0.5,
                negatives: 64,
                ..ModelConfig::default()
            };
            let a = trained(config.clone());
            let b = trained(config.clone());
            assert_eq!(a.digest(), b.digest(), "{loss:?} {optimizer:?}");
            for row in 0..a.item_count() as u32 {
                let c = a.context_vector(ItemRow(row));
                assert!(c.iter().all(|x| x.is_finite()));
                assert!(vector::norm_squared(c).sqrt() <= config.max_norm * 1.0001);
                assert!(a.item_vector(ItemRow(row)).iter().all(|x| x.is_finite()));
            }
            for row in 0..a.user_count() as u32 {
                assert!(a.query_vector(UserRow(row)).iter().all(|x| x.is_finite()));
            }
        }
    }
}

#[test]
fn a_restored_model_continues_bit_identically() {
    let mut original = trained(ModelConfig::default());
    let mut restored = Model::new(ModelConfig::default()).unwrap();
    for row in 0..original.item_count() as u32 {
        restored.restore_item(original.item_state(ItemRow(row))).unwrap();
    }
    for row in 0..original.user_count() as u32 {
        restored.restore_user(original.user_state(UserRow(row))).unwrap();
    }
    let (pool, next) = original.negative_pool();
    restored.restore_negative_pool(pool.to_vec(), next);
    restored.restore_events_applied(original.events_applied());
    assert_eq!(restored.digest(), original.digest());
    for step in 0..500u32 {
        let (user, item) = (format!("u{}", step % 29), format!("i{}", step % 67));
        for model in [&mut original, &mut restored] {
            model.apply(&format!("later{step}"), &user, &item, 10_000 + i64::from(step), 2.0);
        }
    }
    assert_eq!(restored.digest(), original.digest());
}

#[test]
fn a_context_longer_than_the_seen_list_is_refused() {
    let config = ModelConfig { seen_items_per_user: 5, context_items: 6, ..ModelConfig::default() };
    assert_eq!(Model::new(config).unwrap_err().field, "context_items");
    let decay = ModelConfig { context_decay: 0.0, ..ModelConfig::default() };
    assert_eq!(Model::new(decay).unwrap_err().field, "context_decay");
}
