use super::*;

#[test]
fn every_key_has_exactly_one_shard_and_shares_are_even() {
    let shards: Vec<Shard> = (0..3).map(|k| format!("{k}/3").parse().unwrap()).collect();
    let mut counts = [0usize; 3];
    for account in 0..16 {
        for day in 0..30 {
            let key = slice_key("facebook.insights", Some(&format!("act_{account}/{day}")));
            let owners: Vec<usize> = (0..3).filter(|&k| shards[k].owns(&key)).collect();
            assert_eq!(owners.len(), 1, "{key}");
            counts[owners[0]] += 1;
        }
    }
    // 480 keys: a hash spreads them within a few percent of 160 each.
    assert!(
        counts.iter().all(|&c| (130..190).contains(&c)),
        "{counts:?}"
    );
}

#[test]
fn a_planning_time_does_not_move_a_slice_to_another_shard() {
    let shard: Shard = "0/1".parse().unwrap();
    assert!(shard.owns(&slice_key("crm.customers", Some("deletes@20240701T000000"))));
    assert_eq!(
        slice_key("crm.customers", Some("deletes@20240701T000000")),
        slice_key("crm.customers", Some("deletes@20240702T120000"))
    );
}

#[test]
fn shard_arguments_are_checked() {
    assert_eq!(
        "2/3".parse::<Shard>().unwrap(),
        Shard { index: 2, count: 3 }
    );
    for bad in ["3/3", "1", "a/3", "0/0", "-1/3"] {
        assert!(bad.parse::<Shard>().is_err(), "{bad}");
    }
}

#[tokio::test]
async fn one_of_two_takers_wins_and_a_released_or_taken_over_lease_moves_on() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(dir.path().to_str().unwrap(), dir.path()).unwrap();
    let ledger = ShardLedger::new(lake, "p");
    let shard: Shard = "1/3".parse().unwrap();
    let lease = Duration::from_secs(60);
    let (a, b) = tokio::join!(
        ledger.acquire("r", shard, "run-a", lease, false),
        ledger.acquire("r", shard, "run-b", lease, false)
    );
    assert_eq!(a.is_ok() as u8 + b.is_ok() as u8, 1, "{a:?} {b:?}");
    let first = a.or(b).unwrap();
    let held = ledger.acquire("r", shard, "run-c", lease, false).await;
    assert!(matches!(held, Err(ShardError::Held { .. })), "{held:?}");
    // --take-over: the first owner is fenced and must not publish.
    let second = ledger
        .acquire("r", shard, "run-d", lease, true)
        .await
        .unwrap();
    assert!(matches!(
        first.check().await,
        Err(ShardError::Fenced { .. })
    ));
    second.check().await.unwrap();
    second.release().await.unwrap();
    ledger
        .acquire("r", shard, "run-e", lease, false)
        .await
        .unwrap();
}

#[tokio::test]
async fn the_other_shards_runs_are_every_lease_holder_of_the_other_shards() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(dir.path().to_str().unwrap(), dir.path()).unwrap();
    let ledger = ShardLedger::new(lake, "p");
    let (first, second): (Shard, Shard) = ("0/2".parse().unwrap(), "1/2".parse().unwrap());
    let lease = Duration::from_secs(60);
    ledger
        .acquire("r", first, "run-a", lease, false)
        .await
        .unwrap();
    ledger
        .acquire("r", second, "run-b", lease, false)
        .await
        .unwrap();
    let taken = ledger
        .acquire("r", second, "run-c", lease, true)
        .await
        .unwrap();
    assert_eq!(
        ledger.other_shards_runs("r", first).await.unwrap(),
        BTreeSet::from(["run-b".to_string(), "run-c".to_string()])
    );
    assert_eq!(
        ledger.other_shards_runs("r", second).await.unwrap(),
        BTreeSet::from(["run-a".to_string()])
    );
    // The fence a shard's loads carry: its lease generation, per pipeline, round and shard.
    let run = ShardRun {
        shard: second,
        round: "r".into(),
        lease: Arc::new(taken),
        ledger: ledger.clone(),
    };
    assert_eq!(
        run.fence("p"),
        Fence {
            round: "p/r".into(),
            shard: "1-of-2".into(),
            token: 2
        }
    );
}

#[tokio::test]
async fn every_shard_assigns_by_the_first_planners_slice_list_in_even_shares() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(dir.path().to_str().unwrap(), dir.path()).unwrap();
    let ledger = ShardLedger::new(lake, "p");
    let keys = |list: &[&str]| list.iter().map(|k| k.to_string()).collect::<Vec<_>>();
    let first = ledger
        .slice_order("r", "fb.insights", keys(&["a/w", "b/w", "c/w", "d/w"]))
        .await
        .unwrap();
    assert_eq!(first, keys(&["a/w", "b/w", "c/w", "d/w"]));
    // A later shard planned another order (and a new account): the stored list wins.
    let later = ledger
        .slice_order(
            "r",
            "fb.insights",
            keys(&["b/w", "a/w", "e/w", "c/w", "d/w"]),
        )
        .await
        .unwrap();
    assert_eq!(later, first);
    let shards: Vec<Shard> = (0..3).map(|k| format!("{k}/3").parse().unwrap()).collect();
    // Five streams of 16 accounts each: every slice has one owner, the first 15
    // accounts go round the shards the same way in every stream, and the 16th
    // account's five slices spread over the shards (2, 2, 1) instead of all on shard 0.
    let mut slices_per_shard = [0; 3];
    let mut sixteenth_per_shard = [0; 3];
    for stream in 0..5 {
        for i in 0..16 {
            let owners: Vec<usize> = (0..3)
                .filter(|&k| shards[k].owns_position(i, 16, stream))
                .collect();
            assert_eq!(
                owners.len(),
                1,
                "slice {i} of stream {stream}: owners {owners:?}"
            );
            slices_per_shard[owners[0]] += 1;
            if i < 15 {
                assert_eq!(owners[0], i % 3, "account {i} of stream {stream}");
            } else {
                sixteenth_per_shard[owners[0]] += 1;
            }
        }
    }
    assert_eq!(sixteenth_per_shard, [2, 2, 1]);
    assert_eq!(slices_per_shard, [27, 27, 26]);
}
