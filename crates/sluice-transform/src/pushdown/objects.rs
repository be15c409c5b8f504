//! The temporary objects one model's warehouse session creates before its `SELECT`
//! runs: the hash and encryption keys (bound parameters, never SQL text),
//! `encrypt`/`decrypt`, the currency rates with `convert_currency`, and a `pii:`
//! policy view per D1 table the model reads. All live in `pg_temp` and end with the
//! session.

use std::collections::BTreeSet;

use sluice_core::pushdown::{Warehouse, WarehouseSession};

use super::dialect::{
    self, literal, quote, CONVERT_FUNCTION, DECRYPT_FUNCTION, ENCRYPT_FUNCTION, KEYS_TABLE,
};
use super::policy_action;
use crate::error::TransformError;
use crate::pii::PiiAction;
use crate::project::{Model, ModelProject};

/// The session's temporary objects: the hash key, the currency rates and
/// `convert_currency`, and a policy view per D1 table the model reads.
pub(super) async fn setup(
    session: &mut dyn WarehouseSession,
    project: &ModelProject,
    model: &Model,
    warehouse: &dyn Warehouse,
    unread: Option<&BTreeSet<String>>,
) -> Result<(), TransformError> {
    // Without a key the table stays empty and `hmac_sha256()` is NULL, as locally.
    session
        .execute(
            "CREATE TEMP TABLE _sluice_keys (ipad bytea NOT NULL, opad bytea NOT NULL) ON COMMIT DROP",
            &[],
        )
        .await?;
    if let Some((inner, outer)) = project.pii.keys.hmac_pads() {
        session
            .execute(
                &format!("INSERT INTO {KEYS_TABLE} (ipad, opad) VALUES ($1, $2)"),
                &[&inner[..], &outer[..]],
            )
            .await?;
    }
    cipher_functions(session, project).await?;
    session
        .execute(
            "CREATE TEMP TABLE _sluice_rates (day date NOT NULL, src text NOT NULL, \
             dst text NOT NULL, rate numeric NOT NULL) ON COMMIT DROP",
            &[],
        )
        .await?;
    let values: Vec<String> = project
        .rates
        .entries()
        .map(|(day, from, to, rate)| {
            format!("(DATE '{day}', {}, {}, {rate})", literal(from), literal(to))
        })
        .collect();
    for chunk in values.chunks(1000) {
        session
            .execute(
                &format!(
                    "INSERT INTO pg_temp._sluice_rates VALUES {}",
                    chunk.join(", ")
                ),
                &[],
            )
            .await?;
    }
    // The rate on or before the day, else the inverse pair; the same rule as local.
    session
        .execute(
            "CREATE FUNCTION pg_temp._sluice_rate(f text, t text, d date) RETURNS numeric \
             LANGUAGE sql STABLE AS $$ SELECT coalesce( \
             (SELECT rate FROM pg_temp._sluice_rates WHERE src = f AND dst = t AND day <= d ORDER BY day DESC LIMIT 1), \
             (SELECT CAST(1 AS numeric(60, 40)) / rate FROM pg_temp._sluice_rates \
              WHERE src = t AND dst = f AND day <= d AND rate <> 0 ORDER BY day DESC LIMIT 1)) $$",
            &[],
        )
        .await?;
    session
        .execute(
            &format!(
                "CREATE FUNCTION {CONVERT_FUNCTION}(amount numeric, f text, t text, d date) RETURNS numeric \
                 LANGUAGE sql STABLE AS $$ SELECT round(amount * CASE WHEN upper(f) = upper(t) THEN 1 \
                 ELSE coalesce(pg_temp._sluice_rate(upper(f), upper(t), d), \
                 pg_temp._sluice_rate(upper(f), 'USD', d) * pg_temp._sluice_rate('USD', upper(t), d)) END, 6) $$"
            ),
            &[],
        )
        .await?;
    for dep in super::d1_tables(model) {
        create_d1_view(session, project, warehouse, dep, unread).await?;
    }
    Ok(())
}

/// `encrypt` and `decrypt` of the `enc:v3:` format (AES_256_CBC_HMAC_SHA_512, see
/// [`crate::pii`]): the same values as locally, so a value encrypted by either engine
/// is decrypted by both. PostgreSQL computes them with pgcrypto's `encrypt_iv`,
/// `decrypt_iv` and `hmac`; the keys are in a temp table, bound as parameters, and
/// reach the functions as arguments read once per query (see
/// [`dialect::CIPHER_KEY_ARGS`]), not looked up per row (25 % of a decrypt's time).
/// `enc:v2:` (AES-GCM) values and anything altered or moved decrypt to NULL.
///
/// Without pgcrypto in the database, both functions fail with what to do, when a
/// model calls one or reads an encrypted column; they are IMMUTABLE then, so a view's
/// encrypted column that nothing reads is dropped by the planner, not evaluated.
async fn cipher_functions(
    session: &mut dyn WarehouseSession,
    project: &ModelProject,
) -> Result<(), TransformError> {
    // The call sites read this table whether or not pgcrypto is there.
    session
        .execute(
            "CREATE TEMP TABLE _sluice_cipher_keys (key_id text PRIMARY KEY, active boolean NOT NULL, \
             mac_key bytea NOT NULL, aes_key bytea NOT NULL) ON COMMIT DROP",
            &[],
        )
        .await?;
    for (id, active, key) in project.pii.keys.cipher_keys() {
        session
            .execute(
                &format!(
                    "INSERT INTO pg_temp._sluice_cipher_keys VALUES ({}, {active}, $1, $2)",
                    literal(id)
                ),
                &[key.mac_key(), key.aes_key()],
            )
            .await?;
    }
    // The keys: ids, MAC keys and AES keys in one order, and the id that encrypts.
    let args =
        "value text, context text, ids text[], mac_keys bytea[], aes_keys bytea[], active text";
    let pgcrypto = session
        .query_text(
            "SELECT quote_ident(n.nspname) FROM pg_extension e \
             JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'pgcrypto'",
        )
        .await?
        .into_iter()
        .find_map(|row| row.into_iter().next().flatten());
    // `p`: pgcrypto's schema, which qualifies its functions below.
    let Some(p) = pgcrypto else {
        for function in [ENCRYPT_FUNCTION, DECRYPT_FUNCTION] {
            session
                .execute(
                    &format!(
                        "CREATE FUNCTION {function}({args}) RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$ \
                         BEGIN RAISE EXCEPTION 'encrypt() and decrypt() in the warehouse need the pgcrypto extension, \
                         which database % does not have: run CREATE EXTENSION pgcrypto there (once, as a user allowed to), \
                         or give this model engine: local', current_database(); END $$"
                    ),
                    &[],
                )
                .await?;
        }
        return Ok(());
    };
    let v3 = literal(crate::pii::ENCRYPTED_PREFIX);
    // RFC 7518 §5.2.2.1: T = HMAC-SHA-512(MAC_KEY, A ‖ IV ‖ E ‖ AL) cut to 32 bytes,
    // A = prefix ‖ key id ‖ ':' ‖ context, AL = A's length in bits (64-bit big-endian).
    let tag = format!(
        "substring({p}.hmac(a || iv || e || int8send(8 * octet_length(a)), mac_keys[i], 'sha512') FROM 1 FOR 32)"
    );
    session
        .execute(
            &format!(
                "CREATE FUNCTION {ENCRYPT_FUNCTION}({args}) RETURNS text \
                 LANGUAGE plpgsql VOLATILE AS $$ \
                 DECLARE i int; iv bytea; e bytea; a bytea; \
                 BEGIN \
                   i := array_position(ids, active); \
                   IF value IS NULL OR context IS NULL OR i IS NULL THEN RETURN NULL; END IF; \
                   iv := {p}.gen_random_bytes(16); \
                   e := {p}.encrypt_iv(convert_to(value, 'UTF8'), aes_keys[i], iv, 'aes-cbc/pad:pkcs'); \
                   a := convert_to({v3} || active || ':' || context, 'UTF8'); \
                   RETURN {v3} || active || ':' || rtrim(translate(replace(encode( \
                     iv || e || {tag}, 'base64'), E'\\n', ''), '+/', '-_'), '='); \
                 END $$"
            ),
            &[],
        )
        .await?;
    // No exception handler (it would open a subtransaction per row): what could throw
    // is checked first, and the clear text is only decrypted once the tag matched.
    session
        .execute(
            &format!(
                "CREATE FUNCTION {DECRYPT_FUNCTION}({args}) RETURNS text \
                 LANGUAGE plpgsql IMMUTABLE AS $$ \
                 DECLARE i int; id text; data text; raw bytea; n int; iv bytea; e bytea; a bytea; \
                 BEGIN \
                   IF value IS NULL OR context IS NULL OR left(value, {len}) <> {v3} THEN RETURN NULL; END IF; \
                   id := split_part(substr(value, {len} + 1), ':', 1); \
                   data := split_part(substr(value, {len} + 1), ':', 2); \
                   i := array_position(ids, id); \
                   IF i IS NULL OR data !~ '^[A-Za-z0-9_-]+$' OR length(data) % 4 = 1 \
                      OR value <> {v3} || id || ':' || data THEN RETURN NULL; END IF; \
                   raw := decode(translate(data, '-_', '+/') || repeat('=', (4 - length(data) % 4) % 4), 'base64'); \
                   n := octet_length(raw); \
                   IF n < 64 OR (n - 48) % 16 <> 0 THEN RETURN NULL; END IF; \
                   iv := substring(raw FROM 1 FOR 16); \
                   e := substring(raw FROM 17 FOR n - 48); \
                   a := convert_to({v3} || id || ':' || context, 'UTF8'); \
                   IF {tag} <> substring(raw FROM n - 31) THEN RETURN NULL; END IF; \
                   RETURN convert_from({p}.decrypt_iv(e, aes_keys[i], iv, 'aes-cbc/pad:pkcs'), 'UTF8'); \
                 END $$",
                len = crate::pii::ENCRYPTED_PREFIX.len(),
            ),
            &[],
        )
        .await?;
    Ok(())
}

/// `pg_temp."_sluice_d1__<table>"`: the published D1 table as models see it, with the
/// `pii:` policy applied and a `dt` date column (the partition column's date, or the
/// load date of an unpartitioned table, as the lake's `dt=` folders hold). A column
/// the policy encrypts is left out when the model does not read it (`unread`): the
/// encryption is VOLATILE (a random IV), so PostgreSQL would compute it for every
/// row of the view even though nothing reads it.
async fn create_d1_view(
    session: &mut dyn WarehouseSession,
    project: &ModelProject,
    warehouse: &dyn Warehouse,
    table: &str,
    unread: Option<&BTreeSet<String>>,
) -> Result<(), TransformError> {
    let published = warehouse.published_table("d1", table);
    let columns: Vec<String> = session
        .query_text(&format!(
            "SELECT CAST(attname AS TEXT) FROM pg_attribute WHERE attrelid = to_regclass({}) \
             AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            literal(&published)
        ))
        .await?
        .into_iter()
        .filter_map(|row| row.into_iter().next().flatten())
        .collect();
    if columns.is_empty() {
        return Err(TransformError::engine(
            format!("d1.{table}"),
            format!("{published} is not in the destination: run its stream first"),
        ));
    }
    let mut select = Vec::new();
    for column in columns.iter().filter(|c| *c != "dt") {
        let value = format!("CAST(t.{} AS TEXT)", quote(column));
        match policy_action(project, table, column) {
            None => select.push(format!("t.{}", quote(column))),
            Some(PiiAction::Encrypt)
                if unread.is_some_and(|u| u.contains(&format!("d1.{table}.{column}"))) => {}
            Some(action) => {
                match dialect::policy_expr(action, &value, &format!("{table}.{column}")) {
                    Ok(Some(expr)) => select.push(format!("{expr} AS {}", quote(column))),
                    Ok(None) => {}
                    // Not read by the model (validate refused it otherwise): not shown.
                    Err(_) => select.push(format!("CAST(NULL AS TEXT) AS {}", quote(column))),
                }
            }
        }
    }
    let dt = project
        .d1_tables
        .get(table)
        .and_then(|d| d.partition_column.clone())
        .filter(|c| columns.contains(c))
        .map(|c| format!("CAST(t.{} AS DATE)", quote(&c)))
        .unwrap_or_else(|| {
            if columns.iter().any(|c| c == "dt") {
                "CAST(t.\"dt\" AS DATE)".into()
            } else {
                "CAST(t.\"_sluice_loaded_at\" AS DATE)".into()
            }
        });
    select.push(format!("{dt} AS \"dt\""));
    session
        .execute(
            &format!(
                "CREATE TEMP VIEW {} AS SELECT {} FROM {published} AS t",
                quote(&format!("_sluice_d1__{table}")),
                select.join(", ")
            ),
            &[],
        )
        .await?;
    Ok(())
}
