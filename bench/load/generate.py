#!/usr/bin/env python3
"""Writes N rows shaped like Facebook ad-level daily insights, as NDJSON (what the
API sends: metrics as strings, ids above 2^53 as decimal strings, a nested
`actions` array, optional fields missing on some rows, names with quotes, commas,
newlines and unicode) and as the equivalent typed CSV for `psql \\copy`."""
import csv, json, random, sys

rows, ndjson_path, csv_path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
rnd = random.Random(42)
names = ['Brand "Summer", EU', 'Retargeting\nLookalike 2%', 'Café – Ünïcödé ✓', "O'Brien's sale", 'plain name']
with open(ndjson_path, 'w') as nd, open(csv_path, 'w', newline='') as cf:
    w = csv.writer(cf)
    for i in range(rows):
        ad_id = 23851234567890123 + i % 5000
        day = f"2024-{1 + (i // 150000) % 12:02d}-{1 + i % 28:02d}"
        impressions = rnd.randint(0, 50000)
        clicks = rnd.randint(0, impressions // 10 + 1)
        spend = f"{rnd.randint(0, 500000) / 100:.2f}"
        reach = rnd.randint(0, impressions) if i % 7 else None
        actions = [{"action_type": "link_click", "value": str(clicks), "1d_click": str(clicks)},
                   {"action_type": "purchase", "value": str(clicks // 20)}] if i % 3 else None
        rec = {"account_id": str(1234567890 + i % 3), "campaign_id": str(ad_id // 1000),
               "adset_id": str(ad_id // 10), "ad_id": str(ad_id), "ad_name": names[i % len(names)],
               "date_start": day, "date_stop": day, "impressions": str(impressions), "clicks": str(clicks),
               "spend": spend, "account_currency": "USD"}
        if reach is not None:
            rec["reach"] = str(reach)
        if actions is not None:
            rec["actions"] = actions
        nd.write(json.dumps(rec, ensure_ascii=False) + "\n")
        w.writerow([rec["account_id"], rec["campaign_id"], rec["adset_id"], rec["ad_id"], rec["ad_name"], day, day,
                    impressions, clicks, spend, "" if reach is None else reach, "USD",
                    "" if actions is None else json.dumps(actions)])
