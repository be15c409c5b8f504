# Shared by bench/load/run.sh and bench/load/compare.sh: the benchmark's columns,
# its pipeline and the timing of one command.

# The reference table's columns (`psql \copy` loads the same rows into it).
COLUMNS="account_id text, campaign_id text, adset_id text, ad_id text, ad_name text, date_start date, date_stop date, impressions bigint, clicks bigint, spend numeric(12,2), reach bigint, account_currency text, actions jsonb"

write_pipeline() { # file lake-dir schema-prefix postgres-url → the load's pipeline.yaml
  cat > "$1" <<YAML
name: bench
lake: $2
destination: { type: postgres, url: "$4", schema_prefix: "$3" }
sources:
  fb:
    type: files
    streams:
      insights:
        path: data/insights.ndjson
        table: insights
        infer_columns: false
        columns: { account_id: text, campaign_id: text, adset_id: text, ad_id: text, ad_name: text, date_start: date, date_stop: date, impressions: bigint, clicks: bigint, spend: "numeric(12,2)", reach: bigint, account_currency: text, actions: jsonb }
        write_mode: append
YAML
}

measure() { # command… → prints "seconds maxrss_kib" (GNU time writes them to a file in $WORK)
  local report="$WORK/time.txt"
  /usr/bin/time -o "$report" -f '%e %M' "$@" >/dev/null 2>"$WORK/stderr.txt" \
    || { cat "$WORK/stderr.txt" >&2; echo "bench: command failed: $*" >&2; exit 1; }
  tail -n 1 "$report"
}
