//! Property: whatever happens to a `files` stream's folder between runs — files
//! added, touched, grown, rewritten, deleted — the warehouse and `sluice query`
//! hold exactly the rows a reference model of the rules says (issue 14).
//!
//! The rules modelled: a new file loads whole; the same bytes load nothing; old
//! bytes plus new lines load the new lines; anything else loads whole again
//! (`on_changed_file: append_all`); a deleted file's rows stay (append).

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use proptest::prelude::*;

const FILES: usize = 3;

#[derive(Debug, Clone)]
enum Op {
    /// Writes the file anew with `n` fresh lines (a rewrite when it exists).
    Write(usize, u8),
    Touch(usize),
    Append(usize, u8),
    Delete(usize),
    Run,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..FILES, 1u8..4).prop_map(|(f, n)| Op::Write(f, n)),
        (0..FILES).prop_map(Op::Touch),
        (0..FILES, 1u8..4).prop_map(|(f, n)| Op::Append(f, n)),
        (0..FILES).prop_map(Op::Delete),
        Just(Op::Run),
    ]
}

const PIPELINE: &str = r#"name: shop
lake: ./lake
sources:
  shop:
    type: files
    streams:
      events:
        path: data/*.ndjson
        columns: { id: bigint }
        on_changed_file: append_all
        allow_empty: true
"#;

/// The reference: what each file held when last loaded, and the ids loaded (with repeats).
#[derive(Default)]
struct Reference {
    loaded: BTreeMap<String, String>,
    rows: BTreeMap<u64, u64>,
}

impl Reference {
    fn run(&mut self, files: &BTreeMap<String, String>) {
        for (name, now) in files {
            let new_text = match self.loaded.get(name) {
                None => now.as_str(),
                Some(before) if before == now => "",
                Some(before) if now.starts_with(before.as_str()) && before.ends_with('\n') => {
                    &now[before.len()..]
                }
                Some(_) => now.as_str(),
            };
            for id in ids(new_text) {
                *self.rows.entry(id).or_default() += 1;
            }
        }
        self.loaded = files.clone();
    }
}

fn ids(text: &str) -> Vec<u64> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["id"].as_u64().unwrap()
        })
        .collect()
}

fn lines(next_id: &mut u64, n: u8) -> String {
    let mut out = String::new();
    for _ in 0..n {
        *next_id += 1;
        out.push_str(&format!("{{\"id\": {next_id}}}\n"));
    }
    out
}

fn warehouse_rows(project: &Project) -> BTreeMap<u64, u64> {
    let db = project.sqlite();
    let exists: i64 = db
        .query_row(
            "select count(*) from sqlite_master where name = 'd1__shop_events'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    if exists == 0 {
        return BTreeMap::new();
    }
    let mut statement = db
        .prepare("select id, count(*) from d1__shop_events group by id")
        .unwrap();
    let rows = statement
        .query_map([], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
        })
        .unwrap();
    rows.map(Result::unwrap).collect()
}

fn lake_rows(project: &Project) -> BTreeMap<u64, u64> {
    if !project.path().join("lake/d1/shop_events").exists() {
        return BTreeMap::new();
    }
    let out = project
        .cmd()
        .args([
            "query",
            "--format",
            "csv",
            "select id, count(*) as n from d1.shop_events group by id",
        ])
        .output()
        .unwrap();
    assert_exit(&out, 0);
    stdout(&out)
        .lines()
        .skip(1)
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (id, n) = l.split_once(',').unwrap();
            (id.parse().unwrap(), n.parse().unwrap())
        })
        .collect()
}

fn check(ops: &[Op]) -> Result<(), TestCaseError> {
    let project = Project::new(PIPELINE);
    std::fs::create_dir_all(project.path().join("data")).unwrap();
    let mut files: BTreeMap<String, String> = BTreeMap::new();
    let mut reference = Reference::default();
    let mut next_id = 0u64;
    let mut touched_at = std::time::SystemTime::now();
    let ops = ops.iter().chain(std::iter::once(&Op::Run));
    for op in ops {
        let name = |f: &usize| format!("data/f{f}.ndjson");
        match op {
            Op::Write(f, n) => {
                let text = lines(&mut next_id, *n);
                project.write(&name(f), &text);
                files.insert(name(f), text);
            }
            Op::Append(f, n) if files.contains_key(&name(f)) => {
                let more = lines(&mut next_id, *n);
                use std::io::Write;
                let mut file = std::fs::File::options()
                    .append(true)
                    .open(project.path().join(name(f)))
                    .unwrap();
                file.write_all(more.as_bytes()).unwrap();
                files.get_mut(&name(f)).unwrap().push_str(&more);
            }
            Op::Touch(f) if files.contains_key(&name(f)) => {
                touched_at += std::time::Duration::from_secs(7);
                std::fs::File::options()
                    .append(true)
                    .open(project.path().join(name(f)))
                    .unwrap()
                    .set_modified(touched_at)
                    .unwrap();
            }
            Op::Delete(f) if files.contains_key(&name(f)) => {
                std::fs::remove_file(project.path().join(name(f))).unwrap();
                files.remove(&name(f));
            }
            Op::Run => {
                let out = project.run(&[]);
                prop_assert_eq!(
                    out.status.code(),
                    Some(0),
                    "{}{}",
                    stdout(&out),
                    stderr(&out)
                );
                reference.run(&files);
                prop_assert_eq!(
                    &warehouse_rows(&project),
                    &reference.rows,
                    "warehouse after {:?}",
                    files.keys().collect::<BTreeSet<_>>()
                );
                prop_assert_eq!(&lake_rows(&project), &reference.rows, "sluice query");
            }
            _ => {}
        }
    }
    Ok(())
}

proptest! {
    // Each case runs the binary a few times: a handful of cases covers the
    // transitions (new → same → grown → rewritten → deleted) in well under a minute.
    #![proptest_config(ProptestConfig {
        cases: 12,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn destination_and_query_equal_the_reference_after_any_file_operations(
        ops in proptest::collection::vec(op(), 1..10)
    ) {
        check(&ops)?;
    }
}
