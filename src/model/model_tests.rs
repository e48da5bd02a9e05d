use super::*;

fn model() -> Model {
    Model::new(ModelConfig::default()).unwrap()
}

fn small(dim: usize) -> Model {
    Model::new(ModelConfig { dim, ..ModelConfig::default() }).unwrap()
}

fn assert_bounded(model: &Model) {
    let config = model.config();
    for row in 0..model.user_count() as u32 {
        let v = model.user_vector(UserRow(row));
        assert!(v.iter().all(|x| x.is_finite()), "user {row} not finite");
        assert!(vector::norm_squared(v).sqrt() <= config.max_norm * 1.0001, "user {row} unbounded");
    }
    for row in 0..model.item_count() as u32 {
        let v = model.item_vector(ItemRow(row));
        assert!(v.iter().all(|x| x.is_finite()), "item {row} not finite");
        assert!(vector::norm_squared(v).sqrt() <= config.max_norm * 1.0001, "item {row} unbounded");
        let c = model.context_vector(ItemRow(row));
        assert!(c.iter().all(|x| x.is_finite()), "context {row} not finite");
        assert!(
            vector::norm_squared(c).sqrt() <= config.max_norm * 1.0001,
            "context {row} unbounded"
        );
        let bias = model.item_bias(ItemRow(row));
        assert!(bias.is_finite() && bias.abs() <= config.max_bias, "item {row} bias {bias}");
        assert!(model.popularity_log(ItemRow(row)).is_finite());
    }
}

fn feed(model: &mut Model, events: &[(&str, &str, i64, f32)]) {
    for (index, (user, item, ts, weight)) in events.iter().enumerate() {
        model.apply(&format!("e{index}"), user, item, *ts, *weight);
    }
}

#[test]
fn same_events_give_bit_identical_state() {
    let events: Vec<(String, String, i64)> = (0..2000)
        .map(|i| (format!("u{}", i % 37), format!("i{}", (i * 7) % 101), 1_000_000_000_000 + i))
        .collect();
    let run = |seed| {
        let mut model = Model::new(ModelConfig { seed, ..ModelConfig::default() }).unwrap();
        for (index, (user, item, ts)) in events.iter().enumerate() {
            model.apply(&format!("e{index}"), user, item, *ts, 4.0);
        }
        model.digest()
    };
    assert_eq!(run(7), run(7));
    assert_ne!(run(7), run(8), "the seed must matter");
}

#[test]
fn digest_sees_a_single_changed_event() {
    let mut a = model();
    let mut b = model();
    feed(&mut a, &[("u1", "i1", 1, 1.0), ("u1", "i2", 2, 1.0), ("u2", "i1", 3, 1.0)]);
    feed(&mut b, &[("u1", "i1", 1, 1.0), ("u1", "i2", 2, 1.0), ("u2", "i1", 3, 2.0)]);
    assert_ne!(a.digest(), b.digest());
    assert_eq!(a.digest().len(), 64);
}

#[test]
fn initial_vectors_depend_only_on_seed_and_id() {
    let mut a = model();
    let mut b = model();
    feed(&mut a, &[("alice", "x", 1, 1.0), ("bob", "y", 2, 1.0)]);
    feed(&mut b, &[("bob", "z", 2, 1.0)]);
    let bob_a = a.user_vector(a.user_row("bob").unwrap()).to_vec();
    let bob_b = b.user_vector(b.user_row("bob").unwrap()).to_vec();
    // bob's single event had no negative to learn from in b (one item), so his vector is the
    // seeded initial one there; in a he trained, so only check the seeded start in b against a
    // fresh model.
    let mut fresh = model();
    feed(&mut fresh, &[("bob", "q", 9, 1.0)]);
    assert_eq!(bob_b, fresh.user_vector(fresh.user_row("bob").unwrap()).to_vec());
    assert_ne!(bob_a, bob_b);
}

#[test]
fn learning_ranks_the_positive_above_a_negative() {
    let mut model = small(16);
    for item in 0..50 {
        model.apply(&format!("warm{item}"), "other", &format!("i{item}"), 0, 1.0);
    }
    let user = "u";
    for step in 0..200 {
        model.apply(&format!("e{step}"), user, "i7", step, 4.0);
    }
    let user_row = model.user_row(user).unwrap();
    let target = model.score(user_row, model.item_row("i7").unwrap());
    let better = (0..50)
        .filter(|item| *item != 7)
        .filter(|item| {
            model.score(user_row, model.item_row(&format!("i{item}")).unwrap()) >= target
        })
        .count();
    assert_eq!(better, 0, "after 200 positives i7 must be the user's top item");
}

#[test]
fn one_user_with_100000_events_stays_bounded() {
    let mut model = small(32);
    for step in 0..100_000i64 {
        let item = format!("i{}", step % 5);
        model.apply(&format!("e{step}"), "heavy", &item, step, 8.0);
    }
    assert_eq!(model.events_applied(), 100_000);
    assert_bounded(&model);
}

#[test]
fn one_item_touched_by_every_user_stays_bounded() {
    let mut model = small(32);
    model.apply("seed", "u-seed", "other", 0, 1.0);
    for user in 0..20_000 {
        model.apply(&format!("e{user}"), &format!("u{user}"), "hub", user, 8.0);
    }
    let hub = model.item_row("hub").unwrap();
    assert_eq!(model.item_events(hub), 20_000);
    assert!(model.item_bias(hub) > 0.0);
    assert_bounded(&model);
}

#[test]
fn extreme_and_invalid_weights_never_produce_nan_or_inf() {
    let mut model = small(8);
    let weights =
        [f32::MAX, 1e30, 1000.0, f32::INFINITY, f32::NAN, -5.0, 0.0, f32::MIN_POSITIVE, 1e-30];
    for round in 0..500 {
        for (slot, weight) in weights.iter().enumerate() {
            let user = format!("u{}", round % 3);
            let item = format!("i{}", (round + slot) % 4);
            model.apply(&format!("e{round}-{slot}"), &user, &item, round as i64, *weight);
        }
    }
    assert_bounded(&model);
}

#[test]
fn a_single_users_burst_in_one_window_stays_bounded() {
    let mut model = small(64);
    for item in 0..100 {
        model.apply(&format!("w{item}"), "bg", &format!("i{item}"), 0, 1.0);
    }
    // 10,000 events of one user in the same millisecond, maximal weight
    for step in 0..10_000 {
        model.apply(&format!("b{step}"), "burst", &format!("i{}", step % 3), 1, 1000.0);
    }
    assert_bounded(&model);
}

#[test]
fn extreme_timestamps_keep_popularity_finite() {
    let mut model = model();
    feed(
        &mut model,
        &[("u", "old", 100_000_000_000, 1.0), ("u", "new", 99_999_999_999_999, 1000.0)],
    );
    assert_bounded(&model);
    let old = model.popularity_log(model.item_row("old").unwrap());
    let new = model.popularity_log(model.item_row("new").unwrap());
    assert!(new > old);
}

#[test]
fn recent_interest_outranks_old_interest_in_decayed_popularity() {
    let day = 24 * 3600 * 1000;
    let mut model = model();
    for step in 0..10 {
        model.apply(&format!("o{step}"), "u", "old-hit", step, 1.0);
    }
    for step in 0..3 {
        model.apply(&format!("n{step}"), "u", "new-hit", 60 * day + step, 1.0);
    }
    let old = model.popularity_log(model.item_row("old-hit").unwrap());
    let new = model.popularity_log(model.item_row("new-hit").unwrap());
    assert!(new > old, "3 events today beat 10 events two months ago (half-life 7 days)");
}

#[test]
fn invalid_config_is_refused_with_the_field_named() {
    let error = Model::new(ModelConfig { dim: 0, ..ModelConfig::default() }).unwrap_err();
    assert_eq!(error.field, "dim");
    let error =
        Model::new(ModelConfig { learning_rate: f32::NAN, ..ModelConfig::default() }).unwrap_err();
    assert_eq!(error.field, "learning_rate");
}

#[test]
fn evicted_users_restore_bit_identically() {
    let mut model = small(8);
    for step in 0..300 {
        let user = format!("u{}", step % 4);
        model.apply(&format!("e{step}"), &user, &format!("i{}", step % 9), step, 2.0);
    }
    let before = model.digest();
    let saved = model.user_state(model.user_row("u2").unwrap());
    assert!(!model.evict_user("u2"), "a user with unsaved changes must not be evicted");
    let _ = model.take_dirty();
    assert!(model.evict_user("u2"));
    assert!(model.user_row("u2").is_none());
    assert_eq!(model.user_count(), 3);
    model.restore_user(saved).unwrap();
    assert_eq!(model.digest(), before);
    // The cache can be emptied and refilled the same way.
    let states: Vec<UserState> =
        (0..model.user_count() as u32).map(|row| model.user_state(UserRow(row))).collect();
    let kept = model.evict_clean_users(|id| id == "u1");
    assert_eq!(kept.len(), 3, "every clean user but the one kept is dropped");
    assert_eq!(model.user_count(), 1);
    assert!(model.user_row("u1").is_some());
    assert_eq!(model.evict_clean_users(|_| false), vec!["u1".to_owned()]);
    assert_eq!(model.user_count(), 0);
    for state in states {
        model.restore_user(state).unwrap();
    }
    assert_eq!(model.digest(), before);
}

#[test]
fn a_flush_needs_only_the_seen_entries_changed_since_the_last_store() {
    let mut model = small(8);
    let mut step = 0;
    let mut touch = |model: &mut Model, item: &str| {
        step += 1;
        model.apply(&format!("e{step}"), "u", item, step, 2.0);
    };
    for item in ["a", "b", "c", "d"] {
        touch(&mut model, item);
    }
    let user = model.user_row("u").unwrap();
    assert_eq!(model.seen_write(user), SeenWrite::Whole, "a new user's list is all new");
    model.mark_seen_stored(user);
    assert_eq!(model.seen_write(user), SeenWrite::Newest(0));
    touch(&mut model, "b"); // moves to the end: [a, c, d, b]
    assert_eq!(model.seen_write(user), SeenWrite::Newest(1));
    touch(&mut model, "b"); // already the newest changed entry
    touch(&mut model, "e"); // [a, c, d, b, e]
    touch(&mut model, "b"); // [a, c, d, e, b]: b and e are still the changed tail
    assert_eq!(model.seen_write(user), SeenWrite::Newest(2));
    let seen: Vec<&str> = model.user_seen(user).map(|row| model.item_id(row)).collect();
    assert_eq!(seen, ["a", "c", "d", "e", "b"]);
    // Restored from the older layout: the next flush writes the list whole.
    let state = model.user_state(user);
    let _ = model.take_dirty();
    assert!(model.evict_user("u"));
    let row = model.restore_user_with(state, SeenWrite::Whole).unwrap();
    assert_eq!(model.seen_write(row), SeenWrite::Whole);
    model.mark_seen_stored(row);
    assert_eq!(model.seen_write(row), SeenWrite::Newest(0));
}
