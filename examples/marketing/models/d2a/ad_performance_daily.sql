-- Facebook (ad level) and Google Ads (ad group level) performance, one row per ad / ad group per day.
-- Spend is exact: account currency (decimal) and the reporting currency (USD, via currency_rates.csv).
-- Reach is kept per ad per day as Facebook reports it; it is never summed (not additive).
WITH fb_conversions AS (
  SELECT account_id, ad_id, date_start, sum(value) AS conversions
  FROM d1.facebook_insights_actions
  WHERE metric = 'actions' AND action_type = 'purchase'
  GROUP BY account_id, ad_id, date_start
),
google_campaigns AS (
  SELECT customer_id, campaign_id, date, max(campaign_name) AS campaign_name
  FROM d1.google_campaign_daily
  GROUP BY customer_id, campaign_id, date
)
SELECT
  i.date_start                                            AS date,
  'facebook'                                              AS platform,
  i.account_id                                            AS account_id,
  i.account_name                                          AS account_name,
  i.campaign_id                                           AS campaign_id,
  i.campaign_name                                         AS campaign_name,
  i.adset_id                                              AS ad_group_id,
  i.adset_name                                            AS ad_group_name,
  i.ad_id                                                 AS ad_id,
  i.ad_name                                               AS ad_name,
  i.impressions                                           AS impressions,
  i.clicks                                                AS clicks,
  i.reach                                                 AS reach,
  CAST(i.spend AS DECIMAL(38, 6))                         AS spend,
  i.account_currency                                      AS currency,
  convert_currency(i.spend, i.account_currency, 'USD', i.date_start) AS spend_usd,
  i.account_timezone                                      AS time_zone,
  CAST(coalesce(c.conversions, 0) AS DOUBLE)              AS conversions
FROM d1.facebook_insights AS i
LEFT JOIN fb_conversions AS c
  ON c.account_id = i.account_id AND c.ad_id = i.ad_id AND c.date_start = i.date_start
UNION ALL
SELECT
  g.date,
  'google',
  g.customer_id,
  CAST(NULL AS VARCHAR),
  g.campaign_id,
  gc.campaign_name,
  g.ad_group_id,
  g.ad_group_name,
  CAST(NULL AS VARCHAR),
  CAST(NULL AS VARCHAR),
  g.impressions,
  g.clicks,
  CAST(NULL AS BIGINT),
  CAST(g.cost AS DECIMAL(38, 6)),
  g.customer_currency,
  convert_currency(g.cost, g.customer_currency, 'USD', g.date),
  g.customer_time_zone,
  CAST(g.conversions AS DOUBLE)
FROM d1.google_ad_group_daily AS g
LEFT JOIN google_campaigns AS gc
  ON gc.customer_id = g.customer_id AND gc.campaign_id = g.campaign_id AND gc.date = g.date
