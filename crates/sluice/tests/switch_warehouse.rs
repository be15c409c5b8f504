//! After a `replaces: … switch: true`, the warehouse keeps the old D1 name: a view
//! of the replacing table (mapped columns renamed, columns the new stream lacks as
//! typed NULLs), made in the replacing table's load transaction, with the replaced
//! table's last data kept as `<old>__replaced_<YYYYMMDD>`. Real files, lake, SQLite
//! and PostgreSQL.

mod common;

use common::{assert_exit, pg_url, sqlite_text_rows, unique_prefix, Pg, Project};

/// The vendor feed (with a `phone` the in-house stream lacks) and its replacement
/// (with a `tier` the vendor lacks, two columns named otherwise).
fn pipeline(switch: bool, destination: &str) -> String {
    let vendor = if switch {
        ""
    } else {
        r#"  vendor:
    type: files
    streams:
      customers:
        path: data/vendor.csv
        columns: { id: bigint, email: text, phone: text, balance: "numeric(12,2)" }
        infer_columns: false
        primary_key: [id]
"#
    };
    format!(
        r#"name: switchwh
{destination}
sources:
{vendor}  crm:
    type: files
    streams:
      customers:
        path: data/crm/*.csv
        columns: {{ customer_id: bigint, email_address: text, balance: "numeric(12,2)", tier: text }}
        infer_columns: false
        primary_key: [customer_id]
        replaces:
          stream: vendor.customers
          columns: {{ customer_id: id, email_address: email }}
          switch: {switch}
"#
    )
}

const VENDOR_CSV: &str = "id,email,phone,balance
1,ann@example.com,555-1,10.00
2,bob@example.com,555-2,20.00
";

fn crm_csv(rows: &str) -> String {
    format!("customer_id,email_address,balance,tier\n{rows}")
}

/// Runs the switch on a project whose destination `query` reads (rows `|`-joined, NULL
/// as `∅`), naming tables as `table("vendor_customers")` gives them.
fn scenario(
    project: &Project,
    destination: &str,
    query: &dyn Fn(&str) -> Vec<String>,
    table: &dyn Fn(&str) -> String,
    before_switch: &dyn Fn(),
) {
    project.write("data/vendor.csv", VENDOR_CSV);
    project.write("data/crm/1.csv", crm_csv("1,ann@example.com,10.00,gold\n"));
    assert_exit(&project.run(&[]), 0);
    let old = table("vendor_customers");
    let select = format!("SELECT id, email, phone, balance FROM {old} ORDER BY id");
    assert_eq!(
        query(&select),
        [
            "1|ann@example.com|555-1|10.00",
            "2|bob@example.com|555-2|20.00"
        ]
    );

    before_switch();
    // The switch, with the in-house stream's next load.
    project.write("pipeline.yaml", pipeline(true, destination));
    project.write("data/crm/2.csv", crm_csv("3,cy@example.com,30.00,\n"));
    assert_exit(&project.run(&[]), 0);
    // The old name reads the new stream: its columns under the old names, `phone`
    // (which it lacks) NULL, `tier` (which the vendor lacked) added.
    assert_eq!(
        query(&select),
        ["1|ann@example.com|∅|10.00", "3|cy@example.com|∅|30.00"]
    );
    assert_eq!(
        query(&format!("SELECT tier FROM {old} WHERE id = 1")),
        ["gold"]
    );
    // The vendor's last data is kept, renamed.
    let retired = table(&format!(
        "vendor_customers__replaced_{}",
        chrono::Utc::now().format("%Y%m%d")
    ));
    assert_eq!(
        query(&format!("SELECT id, phone FROM {retired} ORDER BY id")),
        ["1|555-1", "2|555-2"]
    );

    // Another incremental run: the view follows, the retired table stays as it was.
    project.write(
        "data/crm/3.csv",
        crm_csv("4,dee@example.com,40.00,silver\n5,eve@example.com,,gold\n"),
    );
    assert_exit(&project.run(&[]), 0);
    assert_eq!(
        query(&select),
        [
            "1|ann@example.com|∅|10.00",
            "3|cy@example.com|∅|30.00",
            "4|dee@example.com|∅|40.00",
            "5|eve@example.com|∅|∅"
        ]
    );
    assert_eq!(query(&format!("SELECT count(*) FROM {retired}")), ["2"]);
}

#[test]
fn sqlite_keeps_the_old_name_as_a_view_of_the_new_table() {
    let project = Project::new(&pipeline(false, ""));
    let query = |sql: &str| sqlite_text_rows(&project.sqlite(), sql);
    // A report of the user's reading the old name keeps reading it after the switch.
    let report = || {
        project
            .sqlite()
            .execute_batch("CREATE VIEW report AS SELECT id, email FROM d1__vendor_customers")
            .unwrap()
    };
    scenario(&project, "", &query, &|t| format!("\"d1__{t}\""), &report);
    assert_eq!(
        query("SELECT id, email FROM report ORDER BY id"),
        [
            "1|ann@example.com",
            "3|cy@example.com",
            "4|dee@example.com",
            "5|eve@example.com"
        ]
    );
    assert_eq!(
        query("SELECT type FROM sqlite_master WHERE name = 'd1__vendor_customers'"),
        ["view"]
    );
}

#[test]
fn postgres_keeps_the_old_name_as_a_view_of_the_new_table() {
    let pg = Pg::connect();
    let prefix = unique_prefix("relswitch_wh");
    let destination = format!(
        "destination:\n  type: postgres\n  url: {}\n  schema_prefix: {prefix}",
        pg_url()
    );
    let project = Project::new(&pipeline(false, &destination));
    let query = |sql: &str| {
        pg.strings(&format!(
            "SELECT (SELECT string_agg(coalesce(v, '∅'), '|') FROM json_each_text(row_to_json(q)) AS j(k, v)) FROM ({sql}) AS q"
        ))
    };
    scenario(
        &project,
        &destination,
        &query,
        &|t| format!("\"{prefix}d1\".\"{t}\""),
        &|| {},
    );
    assert_eq!(
        pg.strings(&format!(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = '\"{prefix}d1\".vendor_customers'::regclass AND attname = 'phone'"
        )),
        ["text"]
    );
    pg.drop_schemas(&prefix);
}
