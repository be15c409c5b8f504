"""Checks the sandbox against the official clients (see run.sh).

- facebook-business: Graph URL pointed at the sandbox; lists ad accounts,
  pages through insights synchronously and as an async report run; totals
  must equal `truth`.
- google-ads: every response and error body must parse strictly
  (unknown fields rejected) into the v26 protobuf types.
"""
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from decimal import Decimal

BIN, PREFIX = sys.argv[1], json.loads(sys.argv[2])
SEED, TODAY, SINCE, UNTIL = "7", "2024-10-01", "2024-07-01", "2024-09-30"
FB_TOKEN = "sandbox-facebook-token"
G_DEV, G_CLIENT, G_SECRET, G_REFRESH = (
    "sandbox-developer-token",
    "sandbox-client-id.apps.googleusercontent.com",
    "sandbox-client-secret",
    "sandbox-refresh-token",
)
MANAGER = "8145550100"
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what)


def sandbox(*flags):
    p = subprocess.Popen([BIN, *PREFIX, "serve", "--port", "0", "--seed", SEED, "--today", TODAY, *flags],
                         stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline().strip()
    assert line.startswith("sandbox listening on "), line
    return p, line.rsplit(" ", 1)[1]


def truth():
    out = subprocess.run([BIN, *PREFIX, "truth", "--seed", SEED, "--today", TODAY, "--since", SINCE, "--until", UNTIL],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


# ------------------------------------------------------------------ facebook
def facebook(base, t):
    from facebook_business.api import FacebookAdsApi
    from facebook_business.session import FacebookSession
    from facebook_business.adobjects.user import User
    from facebook_business.adobjects.adreportrun import AdReportRun

    FacebookSession.GRAPH = base  # the documented class attribute for the Graph URL
    FacebookAdsApi.init(access_token=FB_TOKEN, api_version="v26.0")
    accounts = list(User(fbid="me").get_ad_accounts(fields=["id", "currency", "timezone_name"]))
    check(sorted(a["id"] for a in accounts) == sorted(x["account_id"] for x in t["facebook"]["accounts"]),
          "facebook: /me/adaccounts lists truth's accounts")
    expected = {(d["account_id"], d["date"]): (d["impressions"], Decimal(d["spend"])) for d in t["facebook"]["days"]}
    fields = ["account_id", "ad_id", "impressions", "clicks", "spend"]
    params = {"level": "ad", "time_range": {"since": SINCE, "until": UNTIL}, "time_increment": 1, "limit": 500}
    for mode in ("sync", "async"):
        got = {}
        for acct in accounts:
            if mode == "sync":
                rows = acct.get_insights(fields=fields, params=params)
            else:
                job = acct.get_insights(fields=fields, params=params, is_async=True)
                delay = 0.05
                for _ in range(50):
                    job = job.api_get()
                    if job[AdReportRun.Field.async_status] in ("Job Completed", "Job Failed"):
                        break
                    time.sleep(delay)
                    delay = min(delay * 2, 1)
                check(job[AdReportRun.Field.async_status] == "Job Completed", "facebook: async job completes")
                rows = job.get_result(params={"limit": 500})
            for r in rows:
                k = (acct["id"], r["date_start"])
                imp, spend = got.get(k, (0, Decimal(0)))
                got[k] = (imp + int(r["impressions"]), spend + Decimal(r["spend"]))
        check(got == expected, f"facebook: {mode} insights totals equal truth ({len(got)} account-days)")
    print("facebook-business SDK: ok" if not failures else "facebook-business SDK: mismatches")


# ------------------------------------------------------------------ google
def http(method, url, body=None, headers=None, form=None):
    data = None
    hdrs = dict(headers or {})
    if form is not None:
        data = urllib.parse.urlencode(form).encode()
        hdrs["Content-Type"] = "application/x-www-form-urlencoded"
    elif body is not None:
        data = json.dumps(body).encode()
        hdrs["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, headers=hdrs, method=method)
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def google(base, t, faulty_base):
    import urllib.parse  # noqa: F401  (used by http)
    from google.protobuf import json_format
    from google.ads.googleads.v26.services.types.google_ads_service import (
        SearchGoogleAdsResponse, SearchGoogleAdsStreamResponse)
    from google.ads.googleads.v26.errors.types.errors import GoogleAdsFailure

    def strict(text, cls, what):
        try:
            return json_format.Parse(text, cls.pb()(), ignore_unknown_fields=False)
        except json_format.ParseError as e:
            check(False, f"google: {what} does not parse into {cls.__name__}: {e}")

    def parse_error(text, what, want=None):
        v = json.loads(text)
        err = v["error"]
        check(all(k in err for k in ("code", "message", "status", "details")), f"google: {what} is a google.rpc.Status")
        det = dict(err["details"][0])
        check(det.pop("@type").endswith("/google.ads.googleads.v26.errors.GoogleAdsFailure"), f"google: {what} @type")
        f = strict(json.dumps(det), GoogleAdsFailure, what)
        if f is not None and want:
            codes = json_format.MessageToDict(f)["errors"][0]["errorCode"]
            check(want in codes.values(), f"google: {what} carries {want} (got {codes})")

    def token(b):
        s, body = http("POST", f"{b}/token", form={"grant_type": "refresh_token", "client_id": G_CLIENT,
                                                  "client_secret": G_SECRET, "refresh_token": G_REFRESH})
        check(s == 200, "google: token refresh")
        return json.loads(body)["access_token"]

    def call(b, tok, cust, method, query, login=MANAGER, extra=None):
        h = {"Authorization": f"Bearer {tok}", "developer-token": G_DEV}
        if login:
            h["login-customer-id"] = login
        body = {"query": query, **(extra or {})}
        return http("POST", f"{b}/v26/customers/{cust}/googleAds:{method}", body=body, headers=h)

    tok = token(base)
    s, body = call(base, tok, MANAGER, "searchStream",
                   "SELECT customer_client.id, customer_client.client_customer, customer_client.manager, "
                   "customer_client.level, customer_client.descriptive_name, customer_client.currency_code, "
                   "customer_client.time_zone, customer_client.status FROM customer_client "
                   "WHERE customer_client.level <= 1", login=None)
    check(s == 200, "google: customer_client on the manager")
    clients = []
    for batch in json.loads(body):
        m = strict(json.dumps(batch), SearchGoogleAdsStreamResponse, "customer_client stream batch")
        for row in (m.results if m else []):
            if not row.customer_client.manager:
                clients.append(str(row.customer_client.id))
    check(len(clients) == len(t["google"]["customers"]), "google: clients listed")
    q = ("SELECT customer.id, customer.currency_code, customer.time_zone, campaign.id, campaign.name, campaign.status, "
         "campaign.advertising_channel_type, metrics.impressions, metrics.clicks, metrics.cost_micros, "
         "metrics.conversions, metrics.ctr, metrics.average_cpc, segments.date, segments.day_of_week FROM campaign "
         f"WHERE segments.date BETWEEN '{SINCE}' AND '{UNTIL}' ORDER BY segments.date")
    sums = {}
    for c in clients:
        s, body = call(base, tok, c, "searchStream", q)
        check(s == 200, f"google: searchStream {c}")
        for batch in json.loads(body):
            m = strict(json.dumps(batch), SearchGoogleAdsStreamResponse, "campaign stream batch")
            for row in (m.results if m else []):
                k = (c, row.segments.date)
                i, cl, cost = sums.get(k, (0, 0, 0))
                sums[k] = (i + row.metrics.impressions, cl + row.metrics.clicks, cost + row.metrics.cost_micros)
    expected = {(d["customer_id"], d["date"]): (d["impressions"], d["clicks"], d["cost_micros"]) for d in t["google"]["days"]}
    check(sums == expected, f"google: searchStream sums equal truth ({len(sums)} customer-days)")
    for query in ("SELECT ad_group.id, ad_group.name, ad_group.status, ad_group.type, ad_group.campaign, "
                  "metrics.clicks, metrics.conversions_value, segments.date FROM ad_group "
                  f"WHERE segments.date BETWEEN '{SINCE}' AND '2024-07-15'",
                  "SELECT ad_group_ad.ad.id, ad_group_ad.ad.name, ad_group_ad.ad.type, ad_group_ad.status, "
                  "ad_group_ad.ad_group, metrics.impressions, metrics.average_cpm, metrics.interactions, segments.date "
                  "FROM ad_group_ad WHERE segments.date = '2024-07-02'",
                  "SELECT customer.id, customer.descriptive_name, customer.manager, customer.test_account, "
                  "customer.status FROM customer"):
        token_ = None
        while True:
            s, body = call(base, tok, clients[0], "search", query, extra={"pageToken": token_} if token_ else None)
            check(s == 200, f"google: search {query[:40]}")
            m = strict(body, SearchGoogleAdsResponse, "search page")
            token_ = m.next_page_token if m else None
            if not token_:
                break
    s, body = http("GET", f"{base}/v26/customers:listAccessibleCustomers",
                   headers={"Authorization": f"Bearer {tok}", "developer-token": G_DEV})
    check(s == 200 and json.loads(body)["resourceNames"], "google: listAccessibleCustomers")

    # Every error body we emit.
    errors = [
        (call(base, tok, clients[0], "search", q, login=None), "USER_PERMISSION_DENIED"),
        (call(base, tok, MANAGER, "search", q, login=None), "REQUESTED_METRICS_FOR_MANAGER"),
        (call(base, tok, clients[0], "search", "SELECT campaign.nope FROM campaign"), "UNRECOGNIZED_FIELD"),
        (call(base, tok, clients[0], "search", "SELECT campaign.id, segments.date FROM campaign"), "EXPECTED_FILTERS_ON_DATE_RANGE"),
        (call(base, tok, clients[0], "search", "SELECT campaign.id FROM nothing"), "BAD_RESOURCE_TYPE_IN_FROM_CLAUSE"),
        (call(base, tok, clients[0], "search", "SELECT ad_group.id FROM campaign"), "PROHIBITED_RESOURCE_TYPE_IN_SELECT_CLAUSE"),
        (call(base, tok, clients[0], "search", "campaign.id FROM campaign"), "EXPECTED_SELECT"),
        (call(base, tok, clients[0], "search", "SELECT campaign.id FROM campaign LIMIT x"), "BAD_LIMIT_VALUE"),
        (call(base, tok, clients[0], "search", "SELECT campaign.id FROM campaign WHERE"), "UNEXPECTED_END_OF_QUERY"),
        (call(base, "ya29.bogus", clients[0], "search", q), "OAUTH_TOKEN_INVALID"),
        (http("POST", f"{base}/v26/customers/{clients[0]}/googleAds:search", body={"query": q}), "OAUTH_TOKEN_HEADER_INVALID"),
        (http("POST", f"{base}/v26/customers/{clients[0]}/googleAds:search", body={"query": q},
              headers={"Authorization": f"Bearer {tok}", "developer-token": "wrong"}), "DEVELOPER_TOKEN_INVALID"),
    ]
    ftok = token(faulty_base)  # faulty sandbox: rate limit every 2nd, 5xx every 3rd, quota 6
    for _ in range(8):
        errors.append((call(faulty_base, ftok, clients[0], "search", q), None))
    for (s, body), want in errors:
        if s == 200:
            continue
        parse_error(body, f"error {s} {want or ''}", want)
    # A broken stream: batches then an error element.
    for _ in range(3):
        s, body = call(faulty_base, ftok, clients[0], "searchStream", q)
        if s == 200 and '"error"' in body:
            arr = json.loads(body)
            for b in arr[:-1]:
                strict(json.dumps(b), SearchGoogleAdsStreamResponse, "partial stream batch")
            parse_error(json.dumps(arr[-1]), "stream error element")
    print("google-ads v26 types: ok" if not failures else "google-ads v26 types: mismatches")


def main():
    t = truth()
    procs = []
    try:
        p, base = sandbox()
        procs.append(p)
        p2, faulty = sandbox("--rate-limit-every", "2", "--server-error-every", "3", "--google-daily-quota", "12")
        procs.append(p2)
        facebook(base, t)
        google(base, t, faulty)
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=10)
    if failures:
        print(f"{len(failures)} check(s) failed", file=sys.stderr)
        sys.exit(1)
    print("all SDK checks passed")


if __name__ == "__main__":
    import urllib.parse  # noqa: F401
    main()
